"""`opsconductor`: the operator's command line.

Every command takes `--json` for scripts and exits non-zero on failure or refusal:
0 ok, 1 failed / refused, 2 bad input, 3 not found, 4 a server is unreachable.
Text output goes through `terminal.sanitize`: what callers wrote never drives the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from opsconductor.schema.enums import ExecutionStatus
from opsconductor.starter.cli_output import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    _err,
    _iso_time,
    _out,
)
from opsconductor.starter.terminal import lines, sanitize

SUCCESS_STATUSES = {"completed"}
RUN_EXAMPLES = """examples:
  opsconductor run plan.json                     submit and wait (immediate mode)
  opsconductor run plan.yaml --dry-run           how each step would run; nothing starts
  cat plan.json | opsconductor run - --no-wait   from stdin; print the execution id
  opsconductor run plan.json --follow            submit, then watch its progress
  opsconductor run plan.json --new -o json       a new run of a plan submitted before
"""


async def _with_client(args: argparse.Namespace,
                       fn: Callable[[Any], Awaitable[int]]) -> int:
    from opsconductor.activities.db import DatabaseUnavailable
    from opsconductor.safety.signatures import SignatureError
    from opsconductor.schema.validation import RequestValidationError
    from opsconductor.starter.client import ExecutionClient, ExecutionNotFound, SubmissionRefused

    try:
        client = await ExecutionClient.connect(**_client_options(args))
    except DatabaseUnavailable as err:
        return _err(args, str(err), EXIT_UNREACHABLE)
    except RuntimeError as err:
        return _err(args, str(err), EXIT_UNREACHABLE)
    except OSError as err:
        return _err(args, f"cannot reach Temporal: {err}", EXIT_UNREACHABLE)
    try:
        return await fn(client)
    except RequestValidationError as err:
        if getattr(args, "json", False):
            print(json.dumps({"error": "invalid request",
                              "problems": [p.model_dump() for p in err.problems]}, indent=2))
            return EXIT_INPUT
        print(lines(str(err).split("\n")), file=sys.stderr)
        return EXIT_INPUT
    except SubmissionRefused as err:
        return _err(args, str(err), EXIT_FAILED)
    except ExecutionNotFound as err:
        return _err(args, str(err), EXIT_NOT_FOUND)
    except SignatureError as err:
        return _err(args, f"cannot sign: {err}", EXIT_FAILED)
    finally:
        await client.close()


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    wait = getattr(args, "update_wait", None)
    return {} if wait is None else {"update_wait_seconds": wait}


# ---------------------------------------------------------------------- commands

def _load_request(args: argparse.Namespace) -> dict[str, Any]:
    from opsconductor.schema.limits import MAX_REQUEST_CHARS
    from opsconductor.starter.cli_conventions import PlanInputError, fresh_key, read_plan

    try:
        doc = read_plan(args.file, MAX_REQUEST_CHARS)
    except PlanInputError as err:
        raise SystemExit(_err(args, str(err), EXIT_INPUT)) from None
    if not isinstance(doc, dict):
        where = "stdin" if args.file == "-" else args.file
        raise SystemExit(_err(args, f"{where} must hold a JSON object (a YAML mapping)",
                              EXIT_INPUT))
    if "tenant" not in doc and "actor" not in doc:  # a bare PlanV1 or its plan object
        doc = {"plan": doc}
    overrides = {"tenant": args.tenant, "actor": args.actor, "environment": args.environment,
                 "approval_level": args.approval_level, "sla_class": args.sla_class,
                 "mode": args.mode}
    for key, value in overrides.items():
        if value is not None:
            doc[key] = value
    if getattr(args, "new", False):  # a new run, not the one this plan's key already names
        doc["idempotency_key"] = fresh_key()
    return doc


async def _read_only_db() -> tuple[Any, str | None]:
    """A connection for reads (the dry run's rule tables), or why there is none."""
    from opsconductor.activities.db import connect_once
    from opsconductor.schema.config import load_settings

    try:
        return await connect_once(load_settings().database_url), None
    except Exception as err:
        return None, f"database not reachable: {err or type(err).__name__}"


async def cmd_run(args: argparse.Namespace) -> int:
    doc = _load_request(args)
    if getattr(args, "dry_run", False):
        from opsconductor.starter.dry_run import dry_run, render_text

        conn, why = await _read_only_db()
        try:
            report = await dry_run(doc, conn, db_problem=why)
        finally:
            if conn is not None:
                await conn.close()
        _out(args, report, lambda: lines(render_text(report).split("\n")))
        return EXIT_OK if report.would_run else EXIT_INPUT

    async def go(client: Any) -> int:
        signed = (await client.sign_submission(doc, key=args.key) if args.key
                  and isinstance(doc, dict) else doc)
        follow = getattr(args, "follow", False)
        resp = await client.execute(signed, wait=False if follow else args.wait)
        if follow:
            from opsconductor.starter.progress_view import watch

            if not args.json:
                print(f"execution {resp.execution_id} ({resp.status.value})", flush=True)
            view = await watch(client, resp.execution_id, json_lines=args.json)
            return EXIT_OK if view["status"] in SUCCESS_STATUSES else EXIT_FAILED
        if resp.result is None:
            _out(args, resp, f"execution {resp.execution_id} ({resp.status.value})"
                 + (" — duplicate of an existing execution" if resp.duplicate else "")
                 + f"\nworkflow id {resp.workflow_id}")
            return EXIT_OK
        _out(args, resp, lambda: _result_text(resp.result, resp.duplicate))
        return EXIT_OK if resp.result.status.value in SUCCESS_STATUSES else EXIT_FAILED

    return await _with_client(args, go)


def _result_text(result: Any, duplicate: bool = False) -> str:
    rows = [f"execution {result.execution_id}: {result.status.value}"
            + (" (duplicate: existing execution)" if duplicate else "")]
    for s in result.steps:
        line = f"  {s.step_id:<28} {s.status.value:<10} attempts={s.attempts}"
        if s.exit_code is not None:
            line += f" exit={s.exit_code}"
        if s.error:
            line += f"  {_first_line(s.error)[:120]}"
        rows.append(line)
    if result.error:
        rows.append(f"error: {result.error}")
    return lines(rows)


def _first_line(text: object) -> str:
    """The first line of a multi-line message (only `\n` ends a line: a `\r` is shown)."""
    return str(text).split("\n", 1)[0]


def _status_text(view: dict[str, Any]) -> str:
    rows = [f"execution {view['execution_id']}  workflow {view['workflow_id']}",
            f"status {view['status']}  approval {view['approval_state']}"
            + (f"  ({view['percent']}%)" if "percent" in view else "")]
    if view.get("title"):
        rows.append(f"title  {view['title']}  [{view.get('tenant')}/{view.get('environment')}"
                    f" by {view.get('actor')}]")
    if view.get("waiting_on"):
        rows.append(f"waiting on {view['waiting_on']}")
    for gate in view.get("approvals", []):
        rows.append(f"gate {gate['gate']}: {gate['state']}")
        for d in gate["decisions"]:
            proof = ("UNSIGNED" if d.get("signed") is False
                     else "proof not checked" if d.get("signed") is None
                     else f"signed {d['key_fingerprint']}" if d["accepted"]
                     else f"key {d['key_fingerprint']}")
            rows.append(f"  {d['decision']:<8} {d['approver'] or '?':<16} "
                        f"{'accepted' if d['accepted'] else 'refused':<9} {proof}"
                        + (f"  {_first_line(d['reason'])[:100]}" if d.get("reason") else ""))
    for s in view["steps"]:
        rows.append(f"  {s['id']:<28} {s['status']:<10} attempts={s['attempts']}"
                    + (f" exit={s['exit_code']}" if s["exit_code"] is not None else "")
                    + (f"  {_first_line(s['error'])[:100]}" if s["error"] else "")
                    + (f"  {s['description']}" if s.get("description") else ""))
    if view.get("error"):
        rows.append(f"error: {view['error']}")
    return lines(rows)


async def cmd_status(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        view = await client.status(args.id)
        _out(args, view, lambda: _status_text(view))
        return EXIT_OK

    return await _with_client(args, go)


async def cmd_list(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        try:
            rows, cursor = await client.page(
                status=args.status, tenant=args.tenant, actor=args.actor, asset=args.asset,
                since=args.since, until=args.until, cursor=args.cursor, limit=args.limit)
        except ValueError as err:
            return _err(args, str(err), EXIT_INPUT)
        _out(args, rows, lambda: lines(
            f"{r['execution_id']}  {r['status']:<16} {r['tenant']:<12} {r['actor']:<12} "
            f"{r['steps_completed']}/{r['step_count']}  {r['title']}" for r in rows)
            or "no executions")
        if cursor:  # on stderr, so the JSON on stdout stays one list
            print(f"next page: --cursor {cursor}", file=sys.stderr)
        return EXIT_OK

    return await _with_client(args, go)


def _decision_cmd(kind: str) -> Callable[[argparse.Namespace], Awaitable[int]]:
    async def cmd(args: argparse.Namespace) -> int:
        async def go(client: Any) -> int:
            proof = {"key": args.key, "sign": False if args.unsigned else None}
            if kind == "cancel":
                outcome = await client.cancel(args.id, args.actor, args.reason, **proof)
            elif kind == "resolve":
                outcome = await client.resolve(args.id, args.actor, args.action, args.step,
                                               comment=args.comment, **proof)
            else:
                method = client.approve if kind == "approve" else client.reject
                outcome = await method(args.id, args.approver, args.comment, args.plan_hash,
                                       **proof)
            verdict = ("sent: " if getattr(outcome, "via_signal", False)
                       else "accepted: " if outcome.accepted else "refused: ")
            _out(args, outcome, verdict + sanitize(outcome.reason))
            return EXIT_OK if outcome.accepted else EXIT_FAILED

        return await _with_client(args, go)

    return cmd


def _read_key_file(path: str) -> str | None:
    try:
        return Path(path).expanduser().read_text()
    except OSError:
        return None


async def cmd_keys_add(args: argparse.Namespace) -> int:
    """Register a principal's SSH public key (table `rbac_signers`)."""
    from opsconductor.safety import rbac

    text = _read_key_file(args.file)
    if text is None:
        return _err(args, f"cannot read {args.file}", EXIT_INPUT)

    async def go(client: Any) -> int:
        from opsconductor.safety.signatures import SignatureError, attest_key_change

        try:
            signer = rbac.parse_allowed_signer(f"{args.principal} {text.strip()}")
            attestation = await attest_key_change(
                "keys-add", args.principal, signer.public_key, by=args.admin,
                key=args.key or client.settings.signing_key)
            signer = await rbac.register_signer(client.pool, args.principal, text,
                                                attestation=attestation,
                                                policy_file=client.settings.rbac_policy)
        except SignatureError as err:
            return _err(args, str(err), EXIT_INPUT)
        except rbac.PolicyError as err:
            return _err(args, str(err), EXIT_FAILED if "refused" in str(err) else EXIT_INPUT)
        view = {"principal": args.principal, "key_fingerprint": signer.fingerprint,
                "key_type": signer.key_type, "comment": signer.comment}
        _out(args, view, f"registered {signer.fingerprint} ({signer.key_type}) for "
                         f"{args.principal}")
        return EXIT_OK

    return await _with_client(args, go)


async def cmd_keys_list(args: argparse.Namespace) -> int:
    """The public keys decisions are verified against (policy file and table)."""
    async def go(client: Any) -> int:
        policy = await client.policy()
        rows = [{"principal": p, "key_fingerprint": s.fingerprint, "key_type": s.key_type,
                 "comment": s.comment, "options": s.options, "trusted": True}
                for s in policy.signers for p in s.principals]
        rows += [{"principal": i.principal, "key_fingerprint": i.fingerprint, "trusted": False,
                  "reason": i.reason} for i in policy.ignored_signers]
        _out(args, rows, lambda: lines(
            f"{r['principal']:<16} {r['key_fingerprint']}  {r['key_type']}  {r['comment']}"
            if r["trusted"] else
            f"{r['principal']:<16} {r['key_fingerprint']}  NOT TRUSTED: {r['reason']}"
            for r in rows) or "no keys registered")
        return EXIT_OK

    return await _with_client(args, go)


async def cmd_keys_remove(args: argparse.Namespace) -> int:
    from opsconductor.safety import rbac

    async def go(client: Any) -> int:
        from opsconductor.safety.signatures import SignatureError, attest_key_change

        async def attest(public_key: str) -> Any:
            return await attest_key_change("keys-remove", args.principal, public_key,
                                           by=args.admin,
                                           key=args.key or client.settings.signing_key)
        try:
            removed = await rbac.remove_signer(client.pool, args.principal, args.fingerprint,
                                               attest=attest,
                                               policy_file=client.settings.rbac_policy)
        except (SignatureError, rbac.PolicyError) as err:
            return _err(args, str(err), EXIT_FAILED)
        _out(args, {"removed": removed}, f"removed {removed} key(s) of {args.principal}")
        return EXIT_OK if removed else EXIT_NOT_FOUND

    return await _with_client(args, go)


async def cmd_sign(args: argparse.Namespace) -> int:
    """Print a signed decision payload, for `temporal workflow signal --input`."""
    async def go(client: Any) -> int:
        payload = await client.sign_decision(
            args.id, args.kind, args.principal, comment=args.comment,
            plan_hash=args.plan_hash, action=args.action, step_id=args.step, key=args.key)
        print(json.dumps(payload))
        return EXIT_OK

    if args.kind == "resolve" and not args.action:
        return _err(args, "resolve needs --action retry|skip|fail", EXIT_INPUT)
    return await _with_client(args, go)


async def cmd_pending(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        rows = await client.pending(args.approver, tenant=args.tenant)
        _out(args, rows, lambda: lines(
            f"{r['execution_id']}  gate={r['gate']:<20} needs {r['missing']}  "
            f"requested by {r['actor']}  expires {r['expires_at']}  {r['title']}"
            for r in rows) or "nothing waiting")
        return EXIT_OK

    return await _with_client(args, go)


async def cmd_watch(args: argparse.Namespace) -> int:
    from opsconductor.starter.progress_view import watch

    async def go(client: Any) -> int:
        view = await watch(client, args.id, json_lines=args.json)
        return EXIT_OK if view["status"] in SUCCESS_STATUSES else EXIT_FAILED

    return await _with_client(args, go)


def _event_text(ev: dict[str, Any]) -> str:
    moved = f" {ev['from_status'] or ''}->{ev['to_status']}" if ev["to_status"] else ""
    step = f" [{ev['step_id']}]" if ev["step_id"] else ""
    actor = f" by {ev['actor']}" if ev["actor"] else ""
    message = f": {_first_line(ev['message'])}" if ev["message"] else ""
    return sanitize(f"#{ev['id']} {ev['at']} {ev['type']}{step}{moved}{actor}{message}")


async def cmd_events(args: argparse.Namespace) -> int:
    from opsconductor.starter.events import EventHub

    async def go(client: Any) -> int:
        execution_id, _ = await client.resolve_ids(args.id)
        hub = EventHub(client.pool)
        try:
            stream = (hub.follow(execution_id, args.after) if args.follow
                      else _listed(await hub.read(execution_id, args.after, limit=1_000_000)))
            async for ev in stream:
                print(json.dumps(ev, default=str) if args.json else _event_text(ev),
                      flush=True)
        finally:
            await hub.close()
        return EXIT_OK

    return await _with_client(args, go)


async def _listed(items: list[dict[str, Any]]) -> Any:
    for item in items:
        yield item


async def cmd_stats(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from opsconductor.starter.stats import parse_window, stats

    try:
        window = parse_window(args.since)
    except ValueError as err:
        return _err(args, str(err), EXIT_INPUT)

    async def go(client: Any) -> int:
        data = await stats(client.pool, since=datetime.now(UTC) - window, tenant=args.tenant)
        _out(args, data, lambda: _stats_text(data))
        return EXIT_OK

    return await _with_client(args, go)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _stats_text(d: dict[str, Any]) -> str:
    w = d["waits_seconds"]
    rows = [f"since {d['since']}" + (f"  tenant {d['tenant']}" if d["tenant"] else ""),
            f"submitted {d['submitted']}  ended {d['ended']}  in flight {d['in_flight']}  "
            f"completed {d['completed']}  failed {d['failed']}  partial {d['partial']}  "
            f"cancelled {d['cancelled']}",
            f"success rate {_pct(d['success_rate'])}  SLA compliance "
            f"{_pct(d['sla_compliance'])}",
            f"waits p50/p95: queue {_secs(w['queue_p50'])}/{_secs(w['queue_p95'])}  "
            f"locks {_secs(w['lock_p50'])}/{_secs(w['lock_p95'])}  "
            f"approval {_secs(w['approval_p50'])}/{_secs(w['approval_p95'])}", "by SLA class:"]
    rows += [f"  {r['sla_class']:<8} n={r['ended']:<5} success {_pct(r['success_rate'])}  "
             f"p50 {_secs(r['p50'])} p95 {_secs(r['p95'])} p99 {_secs(r['p99'])}"
             for r in d["by_sla_class"]]
    rows.append("by tool:")
    rows += [f"  {r['tool']:<16} n={r['steps']:<5} failed {r['failed']:<4} "
             f"p50 {_secs(r['p50'])} p95 {_secs(r['p95'])} p99 {_secs(r['p99'])}"
             for r in d["by_tool"]]
    rows.append("top failing: " + ", ".join(
        f"{r['kind']} {r['name']} ({r['failures']})"
        for r in d["top_failing_tools"] + d["top_failing_assets"]) or "top failing: none")
    return lines(rows)


async def cmd_history(args: argparse.Namespace) -> int:
    from opsconductor.starter.stats import history

    async def go(client: Any) -> int:
        rows = await history(client.pool, args.asset, limit=args.limit)
        _out(args, rows, lambda: lines(
            f"{r['started_at'] or '-'}  {r['status']:<10} {r['step_id']:<20} {r['tool']:<12} "
            f"{r['execution_id']}  {r['tenant']}/{r['actor']}  {r['title']}" for r in rows)
            or f"nothing ran on {args.asset}")
        return EXIT_OK

    return await _with_client(args, go)


async def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from opsconductor.activities.telemetry import SCOPE, MirrorGauges
    from opsconductor.schema.config import load_settings
    from opsconductor.starter.api import create_app
    from opsconductor.starter.auth import (
        AuthConfigError,
        LocalTokenAuth,
        authenticator_from_settings,
        is_loopback,
        token_path,
    )
    from opsconductor.starter.codec_server import codec_endpoint
    from opsconductor.starter.telemetry import Telemetry
    from opsconductor.starter.worker import refreshing

    settings = load_settings()
    if not settings.oidc_issuer and not is_loopback(args.host):
        return _err(args, f"refusing to serve on {args.host}: without OPSC_OIDC_ISSUER the API "
                    "accepts only its local token and binds only to loopback (127.0.0.1, ::1, "
                    "localhost); set OPSC_OIDC_ISSUER and OPSC_OIDC_AUDIENCE to serve other "
                    "hosts", EXIT_INPUT)
    try:
        auth, new_token = authenticator_from_settings(settings)
    except (AuthConfigError, OSError) as err:
        return _err(args, str(err), EXIT_INPUT)
    base = f"http://{args.host}:{args.port}"
    note = f"bearer tokens of {settings.oidc_issuer}"
    if isinstance(auth, LocalTokenAuth):
        note = f"the local token in {token_path(settings)}"
        if new_token:
            print(f"API token (shown once; kept in {token_path(settings)}, mode 0600): "
                  f"{new_token}", file=sys.stderr, flush=True)
        print(f"Web UI codec endpoint: {codec_endpoint(base, auth.codec_key)}",
              file=sys.stderr, flush=True)

    async def go(client: Any) -> int:
        telemetry = Telemetry.create()
        gauges = MirrorGauges(client.pool, telemetry.meter_provider.get_meter(SCOPE))
        app = create_app(client, auth=auth, registry=telemetry.registry)
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                               log_level="warning", lifespan="on"))
        print(f"serving on {base} (OpenAPI at /openapi.json; requires {note})",
              file=sys.stderr, flush=True)
        async with refreshing(gauges, client.settings):
            await server.serve()
        return EXIT_OK

    return await _with_client(args, go)


async def cmd_logs(args: argparse.Namespace) -> int:
    from opsconductor.starter.logs import StepNotFound, print_logs

    async def go(client: Any) -> int:
        execution_id, _ = await client.resolve_ids(args.id)
        try:
            await print_logs(client.pool, execution_id, args.step, follow=args.follow,
                             as_json=args.json)
        except StepNotFound as err:
            return _err(args, str(err), EXIT_NOT_FOUND)
        return EXIT_OK

    return await _with_client(args, go)


async def cmd_dlq_list(args: argparse.Namespace) -> int:
    from opsconductor.starter.dlq import list_dlq

    async def go(client: Any) -> int:
        rows = await list_dlq(client, include_all=args.all, tenant=args.tenant)
        _out(args, rows, lambda: lines(
            f"{r['id']:>5}  {r['status']:<9} {r['execution_id']}  {r['step_id'] or '-':<24} "
            f"{r['reason'][:80]}" for r in rows) or "the DLQ is empty")
        return EXIT_OK

    return await _with_client(args, go)


async def cmd_dlq_discard(args: argparse.Namespace) -> int:
    from opsconductor.starter.dlq import discard

    async def go(client: Any) -> int:
        closed = await discard(client, args.id, args.actor)
        _out(args, {"discarded": closed}, f"discarded {closed} entr"
                                          f"{'y' if closed == 1 else 'ies'}")
        return EXIT_OK

    return await _with_client(args, go)


async def cmd_dlq_requeue(args: argparse.Namespace) -> int:
    from opsconductor.starter.dlq import requeue

    async def go(client: Any) -> int:
        resp = await requeue(client, args.id, args.actor, from_failed=args.from_failed)
        _out(args, resp, f"requeued as execution {resp.execution_id} "
                         f"(workflow {resp.workflow_id})")
        return EXIT_OK

    return await _with_client(args, go)


async def cmd_health(args: argparse.Namespace) -> int:
    """4 when a server is unreachable; 1 when both answer but no worker polls (a different
    fix: start a worker, not a server). Executions without progress and activities being
    retried are reported, not an exit status: they need an operator, not a restart."""
    from opsconductor.starter.health import SERVERS, check_health

    report = await check_health(this_host=args.worker)
    _out(args, report, lambda: lines(f"{k:<10} {'ok' if v['ok'] else 'DOWN'}  {v['detail']}"
                                     for k, v in report.items()))
    if not all(report[k]["ok"] for k in SERVERS):
        return EXIT_UNREACHABLE
    return EXIT_OK if all(v["ok"] for k, v in report.items()
                          if k not in ("progress", "retrying")) else EXIT_FAILED


async def cmd_migrate(args: argparse.Namespace) -> int:
    from opsconductor.schema.config import load_settings
    from opsconductor.schema.migrate import MigrationError, migrate

    url = load_settings().database_url
    if not url:
        return _err(args, "no database: set OPSC_DATABASE_URL or start `opsconductor dev`",
                    EXIT_UNREACHABLE)
    try:
        applied = await migrate(url)
    except OSError as err:
        return _err(args, f"cannot reach PostgreSQL: {err}", EXIT_UNREACHABLE)
    except MigrationError as err:
        return _err(args, str(err), EXIT_FAILED)
    _out(args, {"applied": applied},
         "applied: " + ", ".join(applied) if applied else "schema is up to date")
    return EXIT_OK


async def cmd_db_status(args: argparse.Namespace) -> int:
    """Applied, pending and changed migrations; 1 unless the schema is exactly this build's."""
    import asyncpg

    from opsconductor.activities.db import connect_once
    from opsconductor.schema.config import load_settings
    from opsconductor.schema.migrate import status

    url = load_settings().database_url
    if not url:
        return _err(args, "no database: set OPSC_DATABASE_URL or start `opsconductor dev`",
                    EXIT_UNREACHABLE)
    try:
        conn = await connect_once(url)
    except (TimeoutError, OSError, asyncpg.PostgresError) as err:
        return _err(args, f"cannot reach PostgreSQL: {err or type(err).__name__}",
                    EXIT_UNREACHABLE)
    try:
        state = await status(conn)
    finally:
        await conn.close()

    def text() -> str:
        rows = [f"database schema {state.database_version or '(empty)'}, this build "
                f"{state.code_version}"]
        rows += [f"{a.state:<8} {a.version:<32} {a.applied_at:%Y-%m-%d %H:%M:%S} "
                 f"sha256 {(a.checksum or 'not recorded')[:12]}" for a in state.applied]
        rows += [f"{'pending':<8} {v}" for v in state.pending]
        if state.changed:
            rows.append(f"CHANGED after being applied: {', '.join(state.changed)}")
        if state.unknown:
            rows.append(f"UNKNOWN to this build (database is newer): {', '.join(state.unknown)}")
        return lines(rows)

    _out(args, {**state.model_dump(mode="json"), "clean": state.clean}, text)
    return EXIT_OK if state.clean else EXIT_FAILED


async def cmd_worker(args: argparse.Namespace) -> int:
    import logging
    import signal

    from opsconductor.starter.worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from opsconductor.starter.cli_setup import apply_connection_flags
    from opsconductor.starter.namespace_setup import NamespaceProblem

    apply_connection_flags(args)
    try:
        await run_worker(stop=stop)
    except NamespaceProblem as err:
        return _err(args, str(err), EXIT_NOT_FOUND if err.not_found else EXIT_FAILED)
    except RuntimeError as err:
        return _err(args, str(err), EXIT_UNREACHABLE)
    return EXIT_OK


async def cmd_dev(args: argparse.Namespace) -> int:
    from opsconductor.starter.dev_stack import run_dev

    return await run_dev()


async def cmd_demo(args: argparse.Namespace) -> int:
    from opsconductor.starter.demo import run_demo

    return await run_demo(json_output=args.json)


# ---------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opsconductor",
                                description="OpsConductor Execution: run approved plans safely.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[..., Awaitable[int]], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(fn=fn)
        return sp

    add("dev", cmd_dev, "run the embedded stack (Temporal, Postgres, worker) in the foreground")
    add("demo", cmd_demo, "run the bundled example execution (starts a stack if none runs)")
    from opsconductor.starter import cli_setup

    cli_setup.add_connection_flags(
        add("worker", cmd_worker, "run a worker against the configured Temporal and Postgres"))
    cli_setup.register(add)
    db = sub.add_parser("db", help="database commands")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    mig = dbsub.add_parser("migrate", help="apply pending migrations")
    mig.add_argument("--json", action="store_true")
    mig.set_defaults(fn=cmd_migrate)
    dst = dbsub.add_parser("status", help="applied, pending and changed migrations (exit 1 "
                                          "unless the schema is this build's)")
    dst.add_argument("--json", action="store_true")
    dst.set_defaults(fn=cmd_db_status)

    run = add("run", cmd_run, "submit a plan (an envelope, a PlanV1 or its plan object)")
    run.formatter_class = argparse.RawDescriptionHelpFormatter
    run.epilog = RUN_EXAMPLES
    run.add_argument("file", metavar="PLAN",
                     help="the plan: a JSON or YAML (.yaml/.yml) file, or - for stdin; an "
                          "envelope (tenant, actor, environment, plan), a PlanV1, or its "
                          "plan object")
    run.add_argument("--tenant", help="the tenant the plan runs for (overrides the file's); "
                                      "RBAC and locks are per tenant")
    run.add_argument("--actor", help="who submits (overrides the file's): the principal RBAC "
                                     "judges and the audit names")
    run.add_argument("--environment", choices=["dev", "staging", "prod"],
                     help="where it runs (overrides the file's); prod may need signatures")
    run.add_argument("--approval-level", type=int, choices=[0, 1, 2, 3],
                     help="approvals required before it starts (0: none)")
    run.add_argument("--sla-class", choices=["fast", "medium", "long"],
                     help="the time budget class the SLA alerts measure against")
    run.add_argument("--mode", choices=["immediate", "background"],
                     help="immediate waits for the result by default; background does not")
    run.add_argument("--new", action="store_true",
                     help="run again even if this plan was submitted before (a fresh "
                          "idempotency key instead of the plan's)")
    run.add_argument("--follow", "-f", action="store_true",
                     help="submit, then show its progress until it ends (as `watch`)")
    run.add_argument("--dry-run", action="store_true",
                     help="validate, resolve, authorize and show how each step would run")
    run.add_argument("--wait", action="store_const", const=True, default=None,
                     help="wait for the result (the default in immediate mode)")
    run.add_argument("--no-wait", dest="wait", action="store_const", const=False,
                     help="return at once with the execution id, even in immediate mode")
    run.add_argument("--key", help="sign the submission with this SSH key (proves the actor "
                                   "where the policy requires signed submissions)")

    st = add("status", cmd_status, "show an execution")
    st.add_argument("id", help="execution id or workflow id")
    ls = add("list", cmd_list, "list executions")
    ls.add_argument("--status", choices=[s.value for s in ExecutionStatus])
    ls.add_argument("--tenant")
    ls.add_argument("--actor")
    ls.add_argument("--asset", help="an asset id the execution locks")
    ls.add_argument("--since", type=_iso_time, help="submitted at or after (ISO 8601)")
    ls.add_argument("--until", type=_iso_time, help="submitted before (ISO 8601)")
    ls.add_argument("--cursor", help="the next_cursor a previous page printed")
    ls.add_argument("--limit", type=int, default=50)

    for kind in ("approve", "reject"):
        sp = add(kind, _decision_cmd(kind), f"{kind} an execution waiting for approval")
        sp.add_argument("id")
        sp.add_argument("--approver", required=True)
        sp.add_argument("--comment", required=(kind == "reject"))
        sp.add_argument("--plan-hash", help="the plan hash you reviewed (refused on mismatch)")
        _add_update_wait(sp)
        _add_signing(sp)
    ca = add("cancel", _decision_cmd("cancel"), "cancel an execution (cleanup and rollback run)")
    ca.add_argument("id")
    ca.add_argument("--reason", required=True)
    ca.add_argument("--actor", default=_default_actor())
    _add_update_wait(ca)
    _add_signing(ca)
    rs = add("resolve", _decision_cmd("resolve"), "resolve a step whose outcome is unknown")
    rs.add_argument("id")
    rs.add_argument("--action", required=True, choices=["retry", "skip", "fail"])
    rs.add_argument("--actor", default=_default_actor())
    rs.add_argument("--step")
    rs.add_argument("--comment")
    _add_update_wait(rs)
    _add_signing(rs)
    sg = add("sign", cmd_sign, "print a signed decision payload (for `temporal workflow signal`)")
    sg.add_argument("kind", choices=["approve", "reject", "cancel", "resolve"])
    sg.add_argument("id")
    sg.add_argument("--as", dest="principal", required=True, help="who decides")
    sg.add_argument("--comment", help="the comment (the reason, for cancel)")
    sg.add_argument("--plan-hash", help="the plan hash you reviewed (default: the execution's)")
    sg.add_argument("--action", choices=["retry", "skip", "fail"], help="for resolve")
    sg.add_argument("--step", help="for resolve: the step (default: the one waiting)")
    sg.add_argument("--key", help="SSH private key, or a .pub whose key is in the ssh-agent")
    pe = add("pending", cmd_pending, "executions waiting for a decision")
    pe.add_argument("--approver", help="only those this approver may decide")
    pe.add_argument("--tenant")
    wa = add("watch", cmd_watch, "follow an execution until it ends")
    wa.add_argument("id")
    st = add("stats", cmd_stats, "success rate, percentiles, SLA compliance, waits, failures")
    st.add_argument("--since", default="24h", help="window: 30m, 24h, 7d (default 24h)")
    st.add_argument("--tenant")
    hi = add("history", cmd_history, "every step that ran on an asset, newest first")
    hi.add_argument("asset")
    hi.add_argument("--limit", type=int, default=50)
    sv = add("serve", cmd_serve, "read-only HTTP service: executions, events (SSE), /metrics")
    sv.add_argument("--host", default="127.0.0.1",
                    help="without OPSC_OIDC_ISSUER only a loopback address is accepted")
    sv.add_argument("--port", type=int, default=8080)
    ev = add("events", cmd_events, "an execution's events (one JSON object a line with --json)")
    ev.add_argument("id", help="execution id or workflow id")
    ev.add_argument("--follow", "-f", action="store_true",
                    help="print events as they are committed until the execution has ended")
    ev.add_argument("--after", type=int, default=0, metavar="N",
                    help="only events after event id N (resume where a stream stopped)")
    lg = add("logs", cmd_logs, "a step's full output (all steps without STEP)")
    lg.add_argument("id", help="execution id or workflow id")
    lg.add_argument("step", nargs="?", help="step id")
    lg.add_argument("--follow", "-f", action="store_true",
                    help="print output as it arrives until the step or execution ends")

    keys = sub.add_parser("keys", help="operators' SSH public keys for signed decisions")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    ka = ksub.add_parser("add", help="register a public key for a principal")
    ka.add_argument("principal")
    ka.add_argument("file", help="the public key file, e.g. ~/.ssh/id_ed25519.pub")
    ka.set_defaults(fn=cmd_keys_add)
    kl = ksub.add_parser("list", help="the keys decisions are verified against")
    kl.set_defaults(fn=cmd_keys_list)
    kr = ksub.add_parser("remove", help="remove a principal's keys (or one of them)")
    kr.add_argument("principal")
    kr.add_argument("--fingerprint", help="only the key with this SHA256:... fingerprint")
    kr.set_defaults(fn=cmd_keys_remove)
    for kp in (ka, kl, kr):
        kp.add_argument("--json", action="store_true")
    for kp in (ka, kr):  # a key change is a keys-admin's signed decision
        kp.add_argument("--as", dest="admin", default=_default_actor(),
                        help="the keys-admin making the change (default: OPSC_ACTOR / login)")
        kp.add_argument("--key", help="the admin's SSH private key, or a .pub whose key is in "
                                      "the ssh-agent (default: OPSC_SIGNING_KEY / the agent)")

    dlq = sub.add_parser("dlq", help="dead-letter queue of failed executions")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)
    dl = dsub.add_parser("list", help="list DLQ entries")
    dl.add_argument("--json", action="store_true")
    dl.add_argument("--all", action="store_true", help="include requeued and discarded")
    dl.add_argument("--tenant")
    dl.set_defaults(fn=cmd_dlq_list)
    dr = dsub.add_parser("requeue", help="run a DLQ entry's execution again")
    dr.add_argument("id", type=int)
    dr.add_argument("--json", action="store_true")
    dr.add_argument("--actor", default=_default_actor())
    dr.add_argument("--from-failed", action="store_true",
                    help="resume at the failed step: completed steps are not run again, "
                         "their results are taken over")
    dr.set_defaults(fn=cmd_dlq_requeue)
    dd = dsub.add_parser("discard", help="close a DLQ entry without running it again")
    dd.add_argument("id", type=int)
    dd.add_argument("--json", action="store_true")
    dd.add_argument("--actor", default=_default_actor())
    dd.set_defaults(fn=cmd_dlq_discard)

    he = add("health", cmd_health, "check Temporal, Postgres and workers")
    he.add_argument("--worker", action="store_true",
                    help="require a worker of THIS host to poll the task queue (a container's "
                         "health check)")
    from opsconductor.starter.cli_audit import register as register_audit

    register_audit(sub, add)
    from opsconductor.starter.cli_conventions import add_global_flags

    add_global_flags(p)
    return p


def _add_signing(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--key", help="sign with this SSH private key (or a .pub whose private key "
                                  "is in the ssh-agent); default OPSC_SIGNING_KEY, else the "
                                  "agent's key registered for you")
    sp.add_argument("--unsigned", action="store_true",
                    help="send the decision unsigned (refused where signatures are required)")


def _add_update_wait(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--update-wait", type=float, metavar="SECONDS",
                    help="how long to wait for a worker's answer before sending the decision "
                         "as a signal (default 30)")


def _default_actor() -> str:
    import getpass
    import os

    return os.environ.get("OPSC_ACTOR") or getpass.getuser()


def main(argv: list[str] | None = None) -> int:
    from opsconductor.starter.cli_conventions import normalize_output

    args = build_parser().parse_args(argv)
    normalize_output(args)
    try:
        return asyncio.run(args.fn(args))
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_OK
    except Exception as err:  # no input may end in a traceback: say what broke, in one line
        return _err(args, f"internal error: {type(err).__name__}: {err}", EXIT_FAILED)


def _drop_stdout() -> None:
    """The reader left (`opsconductor list | head -1`): that is its choice, not our failure.
    Point stdout at /dev/null so that no later flush raises again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def console_main() -> None:
    """The console script. It leaves with os._exit: the Temporal client's native threads can
    abort a normal interpreter shutdown, which would turn a good exit code into a crash.

    Output is line-buffered whatever stdout is: `watch`, `events --follow`, `logs --follow`
    and `dev` are read line by line through pipes and logs, as they happen."""
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
