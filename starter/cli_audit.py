"""`opsconductor audit export|verify|checkpoint` and `opsconductor prune`: the tamper-evident
audit's commands (docs/audit.md). They need PostgreSQL only, never Temporal."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from opsconductor.starter.cli_output import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_UNREACHABLE,
    _err,
    _iso_time,
    _out,
)
from opsconductor.starter.terminal import lines


async def _with_pool(args: argparse.Namespace, fn: Callable[[Any, Any], Awaitable[int]]) -> int:
    """Run `fn(pool, settings)`; an unreachable database or a signing failure is one line."""
    from opsconductor.activities.db import DatabaseUnavailable, open_pool
    from opsconductor.safety.audit_chain import AuditError
    from opsconductor.schema.config import load_settings

    settings = load_settings()
    try:
        pool = await open_pool(settings, min_size=1, max_size=4)
    except (DatabaseUnavailable, OSError) as err:
        return _err(args, f"cannot reach PostgreSQL: {err}", EXIT_UNREACHABLE)
    try:
        return await fn(pool, settings)
    except AuditError as err:
        return _err(args, str(err), EXIT_FAILED)
    finally:
        await pool.close()


def _key(args: argparse.Namespace, settings: Any) -> Path | None:
    return Path(args.key).expanduser() if getattr(args, "key", None) else settings.audit_signing_key


async def cmd_audit_export(args: argparse.Namespace) -> int:
    """The chained rows as JSONL, each with the exact text its hash covers."""
    from opsconductor.safety.audit_chain import export

    async def go(pool: Any, settings: Any) -> int:
        out = (await asyncio.to_thread(open, args.output, "w") if args.output
               else sys.stdout)
        count = 0
        try:
            async for row in export(pool, tenant=args.tenant, since=args.since,
                                    until=args.until):
                out.write(json.dumps(row, separators=(",", ":"), default=str) + "\n")
                count += 1
        finally:
            if args.output:
                out.close()
        if args.output:
            print(f"exported {count} row(s) to {args.output}", file=sys.stderr)
        return EXIT_OK

    return await _with_pool(args, go)


async def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every chain verifies; 1 naming each problem, the first one first."""
    from opsconductor.safety.audit_chain import trusted_audit_keys, verify

    async def go(pool: Any, settings: Any) -> int:
        trusted = None
        if not args.no_signatures:
            trusted = await trusted_audit_keys(_key(args, settings), settings.audit_trusted_keys)
            if not trusted:
                return _err(args, "no key to check checkpoint signatures with: set "
                                  "OPSC_AUDIT_TRUSTED_KEYS or OPSC_AUDIT_SIGNING_KEY (or pass "
                                  "--no-signatures to check the links only)", EXIT_INPUT)
        report = await verify(pool, tenant=args.tenant, trusted=trusted,
                              all_signatures=args.all_signatures)

        def text() -> str:
            out = [f"{c.stream}:{c.tenant}  {c.rows} rows, {c.gaps} gaps, {c.checkpoints} "
                   f"checkpoints, head seq {c.head_seq}: "
                   + ("ok" if not c.problems else f"{len(c.problems)} problem(s)")
                   for c in report.chains]
            out += [f"  {p.kind.upper()}: {p.stream}:{p.tenant}: {p.message}"
                    for p in report.problems]
            if not report.checkpoints_checked:
                out.append("checkpoint signatures were not checked (--no-signatures)")
            return lines(out) or "no chains"

        data = {"ok": report.ok, **report.model_dump(mode="json"),
                "first_problem": (report.problems[0].model_dump(mode="json")
                                  if report.problems else None)}
        _out(args, data, text)
        return EXIT_OK if report.ok else EXIT_FAILED

    return await _with_pool(args, go)


async def cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    """Sign a checkpoint of every chain (or one tenant's) at its head."""
    from opsconductor.safety.audit_chain import AuditError, checkpoint_all

    async def go(pool: Any, settings: Any) -> int:
        key = _key(args, settings)
        if key is None:
            raise AuditError("no checkpoint key: set OPSC_AUDIT_SIGNING_KEY or pass --key")
        cps = await checkpoint_all(pool, key, "manual", args.tenant)
        rows: list[dict[str, Any]] = [
                {"id": c.id, "tenant": c.tenant, "stream": c.stream, "seq": c.seq,
                 "hash": c.hash, "key_fingerprint": c.key_fingerprint} for c in cps]
        _out(args, rows, lambda: lines(
            f"checkpoint {r['id']}: {r['stream']}:{r['tenant']} at seq {r['seq']} "
            f"{r['hash'][:16]}… signed {r['key_fingerprint']}" for r in rows)
            or "no chains to checkpoint")
        return EXIT_OK

    return await _with_pool(args, go)


async def cmd_prune(args: argparse.Namespace) -> int:
    """Delete what the retention policy no longer keeps (or count it, --dry-run)."""
    from opsconductor.safety.audit_chain import AuditError
    from opsconductor.safety.retention import RetentionPolicy, prune, run_scheduled

    async def go(pool: Any, settings: Any) -> int:
        policy = RetentionPolicy(
            outputs_days=args.outputs_days or settings.retention_outputs_days,
            events_days=args.events_days or settings.retention_events_days,
            audit_days=args.audit_days or settings.retention_audit_days)
        if policy == RetentionPolicy() and not args.every:
            return _err(args, "no retention configured: set OPSC_RETENTION_OUTPUTS_DAYS, "
                              "OPSC_RETENTION_EVENTS_DAYS, OPSC_RETENTION_AUDIT_DAYS (or the "
                              "--*-days flags); nothing is pruned by default", EXIT_INPUT)
        key = _key(args, settings)
        if args.every:
            if key is None:
                raise AuditError("the scheduled prune signs checkpoints: set "
                                 "OPSC_AUDIT_SIGNING_KEY or pass --key")
            reports = await run_scheduled(pool, policy, key=key, every_seconds=args.every,
                                          rounds=args.rounds, tenant=args.tenant)
            report = reports[-1]
        else:
            report = await prune(pool, policy, key=key, dry_run=args.dry_run,
                                 tenant=args.tenant)
        data = report.model_dump(mode="json")

        def text() -> str:
            verb = "would delete" if report.dry_run else "deleted"
            out = [f"{verb}: {report.outputs} step output(s), {report.output_chunks} "
                   f"output chunk(s)"]
            for c in report.chains:
                what = ", ".join(f"{n} {t}" for t, n in sorted(c.deleted.items())) or "nothing"
                out.append(f"{c.stream}:{c.tenant}: {verb} {what} in {c.ranges} range(s); "
                           f"kept {c.kept_dlq_or_running} old row(s) of executions running "
                           f"or in the DLQ" + (f"; checkpoint {c.checkpoint_id}"
                                               if c.checkpoint_id else "")
                           + (f"; REFUSED: {c.refused}" if c.refused else ""))
            if report.checkpoints:
                out.append(f"signed checkpoints: {', '.join(map(str, report.checkpoints))}")
            return lines(out)

        _out(args, data, text)
        return EXIT_FAILED if any(c.refused for c in report.chains) else EXIT_OK

    return await _with_pool(args, go)


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration (30s, 15m, 6h, 1d): {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the interval must be positive")
    return value


def register(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `audit` and `prune` to the top-level parser (`add(name, fn, help)` adds --json)."""
    audit = sub.add_parser("audit", help="the tamper-evident audit trail: export, verify, "
                                         "checkpoint")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    ex = asub.add_parser("export", help="chained rows as JSONL (tenant and time filters)")
    ex.add_argument("--tenant")
    ex.add_argument("--since", type=_iso_time, help="rows at or after (ISO 8601)")
    ex.add_argument("--until", type=_iso_time, help="rows before (ISO 8601)")
    ex.add_argument("--output", "-o", help="write to this file (default stdout)")
    ex.set_defaults(fn=cmd_audit_export)
    ve = asub.add_parser("verify", help="check every chain; name the first edited, deleted "
                                        "or reordered row and a truncated tail")
    ve.add_argument("--tenant")
    ve.add_argument("--no-signatures", action="store_true",
                    help="check links only, not the checkpoints' signatures")
    ve.add_argument("--all-signatures", action="store_true",
                    help="check every checkpoint's signature, not only the newest valid one")
    ve.set_defaults(fn=cmd_audit_verify)
    cp = asub.add_parser("checkpoint", help="sign a checkpoint of every chain at its head")
    cp.add_argument("--tenant")
    cp.set_defaults(fn=cmd_audit_checkpoint)
    for p in (ex, ve, cp):
        p.add_argument("--json", action="store_true", help="machine-readable output")
    for p in (ve, cp):
        p.add_argument("--key", help="the checkpoint key (default OPSC_AUDIT_SIGNING_KEY)")
    pr = add("prune", cmd_prune, "delete outputs, events and audit rows past their retention")
    pr.add_argument("--dry-run", action="store_true", help="count only, delete nothing")
    pr.add_argument("--outputs-days", type=float, help="override OPSC_RETENTION_OUTPUTS_DAYS")
    pr.add_argument("--events-days", type=float, help="override OPSC_RETENTION_EVENTS_DAYS")
    pr.add_argument("--audit-days", type=float, help="override OPSC_RETENTION_AUDIT_DAYS")
    pr.add_argument("--tenant", help="only this tenant")
    pr.add_argument("--key", help="the checkpoint key (default OPSC_AUDIT_SIGNING_KEY)")
    pr.add_argument("--every", type=_seconds, metavar="INTERVAL",
                    help="the scheduled prune: run now and then every INTERVAL (6h, 1d), "
                         "checkpointing every chain each round")
    pr.add_argument("--rounds", type=int, help="with --every: stop after N rounds")

