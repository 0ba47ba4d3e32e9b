"""Secured Temporal for real: TLS, mutual TLS and API keys through a TLS-terminating proxy in
front of the session's dev server, configured only by the `temporal` CLI's own TEMPORAL_*
variables and temporal.toml profiles.

`OPSC_TEMPORAL_ADDRESS` points at a closed port throughout: everything that connects proves
that TEMPORAL_* / the profile come first. A failure is one line on stderr (no traceback) and
exit 4, the CLI's code for an unreachable server.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from opsconductor.starter.ports import free_port
from opsconductor.starter.temporal_server import TemporalDevServer
from tests.helpers import request, shell, wait_for
from tests.integration.helpers import Cli, opsc_env, run_cli, start_worker, stop_process
from tests.temporal_tls.proxy import GrpcProxy, server_context
from tests.tls_certs import Certs, make_certs

API_KEY = "opsc-test-key-4f1c"
EXIT_UNREACHABLE = 4


@dataclass
class Rig:
    dir: Path
    certs: Certs
    mtls: GrpcProxy  # server TLS, client certificate required
    keyed: GrpcProxy  # server TLS, API key required
    mtls_address: str
    keyed_address: str
    base: dict[str, str]


@pytest.fixture(scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory, temporal_server: TemporalDevServer,
              migrated_pg: str) -> AsyncIterator[Rig]:
    d = tmp_path_factory.mktemp("temporal-tls")
    certs = make_certs(d / "certs")
    mtls = GrpcProxy(temporal_server.address,
                     server_context(certs.server.cert, certs.server.key, certs.ca))
    keyed = GrpcProxy(temporal_server.address,
                      server_context(certs.server.cert, certs.server.key, None), api_key=API_KEY)
    mtls_address, keyed_address = await mtls.start(), await keyed.start()
    home = d / "home"
    home.mkdir()
    base = opsc_env(temporal_address=f"127.0.0.1:{free_port('127.0.0.1')}",
                    database_url=migrated_pg, task_queue=f"opsc-tls-{uuid.uuid4().hex[:8]}",
                    home=home)
    base["TEMPORAL_CONFIG_FILE"] = str(d / "no-profiles.toml")  # only what a test sets
    try:
        yield Rig(d, certs, mtls, keyed, mtls_address, keyed_address, base)
    finally:
        await mtls.stop()
        await keyed.stop()


def mtls_env(rig: Rig, *, ca: Path | None = None, client_cert: bool = True) -> dict[str, str]:
    env = {**rig.base, "TEMPORAL_ADDRESS": rig.mtls_address,
           "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(ca or rig.certs.ca),
           "TEMPORAL_TLS_SERVER_NAME": "localhost"}
    if client_cert:
        env |= {"TEMPORAL_TLS_CLIENT_CERT_PATH": str(rig.certs.client.cert),
                "TEMPORAL_TLS_CLIENT_KEY_PATH": str(rig.certs.client.key)}
    return env


def one_line_error(result: Cli) -> str:
    """The failure's own line: `error: ...`, the only one, and no traceback anywhere."""
    assert "Traceback" not in result.stderr + result.stdout, result
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, result
    return errors[0]


async def test_worker_and_cli_run_a_plan_over_mutual_tls(rig: Rig) -> None:
    env = mtls_env(rig)
    plan = rig.dir / "plan.json"
    plan.write_text(json.dumps(request([shell("hello", "echo over-mtls")])))
    log = rig.dir / "worker-mtls.log"
    worker = start_worker(env, log)
    try:
        await wait_for(lambda: log.exists() and "worker polling" in log.read_text(),
                       timeout=60, what=f"the worker to poll through the proxy (log {log})")
        result = await run_cli(env, "run", str(plan), "--wait", "--json")
        assert result.code == 0, result
        doc = result.json
        assert doc["result"]["status"] == "completed", doc
        status = await run_cli(env, "status", doc["execution_id"], "--json")
        assert status.code == 0 and status.json["status"] == "completed", status
    finally:
        stop_process(worker)
    print(f"[tls] mTLS: {rig.mtls.connections} proxied connections, "
          f"{len(rig.mtls.requests)} requests; the plan ran through the proxy")
    assert rig.mtls.connections >= 2  # the worker's and each command's
    paths = rig.mtls.header_values(":path")
    assert "/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution" in paths
    assert "/temporal.api.workflowservice.v1.WorkflowService/PollActivityTaskQueue" in paths


async def test_without_a_client_certificate_cli_and_worker_fail_in_one_line(rig: Rig) -> None:
    env = mtls_env(rig, client_cert=False)
    cli = await run_cli(env, "list")
    assert cli.code == EXIT_UNREACHABLE, cli
    line = one_line_error(cli)
    assert rig.mtls_address in line and "client certificate" in line, line
    worker = await run_cli(env, "worker", timeout=60)
    assert worker.code == EXIT_UNREACHABLE, worker
    assert "client certificate" in one_line_error(worker)
    print(f"[tls] no client certificate: {line}")


async def test_a_wrong_ca_fails_in_one_line(rig: Rig) -> None:
    env = mtls_env(rig, ca=rig.certs.other_ca)
    cli = await run_cli(env, "list")
    assert cli.code == EXIT_UNREACHABLE, cli
    line = one_line_error(cli)
    assert "not signed by the configured CA" in line, line
    worker = await run_cli(env, "worker", timeout=60)
    assert worker.code == EXIT_UNREACHABLE, worker
    assert "not signed by the configured CA" in one_line_error(worker)
    print(f"[tls] wrong CA: {line}")


async def test_a_missing_certificate_file_fails_in_one_line(rig: Rig) -> None:
    env = mtls_env(rig) | {"TEMPORAL_TLS_CLIENT_CERT_PATH": str(rig.dir / "nope.pem")}
    cli = await run_cli(env, "setup")
    assert cli.code == EXIT_UNREACHABLE, cli
    assert "nope.pem" in one_line_error(cli)


def profile_file(rig: Rig, key: str) -> Path:
    path = rig.dir / f"temporal-{key[-4:]}.toml"
    path.write_text(f"""
[profile.default]
address = "127.0.0.1:1"

[profile.cloud]
address = "{rig.keyed_address}"
namespace = "default"
api_key = "{key}"

[profile.cloud.tls]
server_name = "localhost"
server_ca_cert_path = "{rig.certs.ca}"

[profile.cloud.grpc_meta]
x-opsc-test = "from-the-profile"
""")
    return path


async def test_an_api_key_and_metadata_from_a_profile_reach_the_server(rig: Rig) -> None:
    env = {**rig.base, "TEMPORAL_CONFIG_FILE": str(profile_file(rig, API_KEY)),
           "TEMPORAL_PROFILE": "cloud"}
    setup = await run_cli(env, "setup", "--json")
    assert setup.code == 0, setup
    assert setup.json["changed"] is False and setup.json["namespace"] == "default"
    assert f"Bearer {API_KEY}" in rig.keyed.header_values("authorization")
    assert rig.keyed.header_values("x-opsc-test") == {"from-the-profile"}
    # a flag comes before the environment: --profile default names the closed port
    flagged = await run_cli(env, "setup", "--profile", "default")
    assert flagged.code == EXIT_UNREACHABLE and "127.0.0.1:1" in one_line_error(flagged)
    print(f"[tls] API key: {len(rig.keyed.requests)} requests seen by the proxy, each with "
          f"authorization {sorted(rig.keyed.header_values('authorization'))[0][:12]}…")


async def test_an_unauthorized_key_fails_in_one_line(rig: Rig) -> None:
    env = {**rig.base, "TEMPORAL_CONFIG_FILE": str(profile_file(rig, API_KEY)),
           "TEMPORAL_PROFILE": "cloud", "TEMPORAL_API_KEY": "not-the-key"}  # env over profile
    before = rig.keyed.rejected
    cli = await run_cli(env, "setup")
    assert cli.code == EXIT_UNREACHABLE, cli
    line = one_line_error(cli)
    assert "refused the credentials" in line and "UNAUTHENTICATED" in line, line
    assert rig.keyed.rejected > before
    worker = await run_cli(env, "worker", timeout=60)
    assert worker.code == EXIT_UNREACHABLE and "refused the credentials" in \
        one_line_error(worker), worker
    print(f"[tls] unauthorized key: {line}")
