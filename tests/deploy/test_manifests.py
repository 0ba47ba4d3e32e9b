"""The Kubernetes manifests (validated against the API's schemas by kubernetes-validate, which
ships them: offline) and the systemd units (`systemd-analyze verify` where systemd is
installed, and always parsed and checked): every setting they name is real, every command
they run is one our CLI parses, workers get longer to stop than they take to drain, each
component logs in with its own least-privilege role, the units are hardened."""

from __future__ import annotations

import asyncio
import configparser
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from opsconductor.safety import rbac
from opsconductor.schema.config import ENV_PREFIX, FILE_FIELDS, Settings, load_settings
from opsconductor.starter.cli import build_parser
from tests.helpers import REPO

K8S = REPO / "deploy" / "kubernetes"
SYSTEMD = REPO / "deploy" / "systemd"
KUBERNETES_VERSION = "1.31.0"
SETTING_VARIABLES = ({ENV_PREFIX + n.upper() for n in Settings.model_fields}
                     | {f"{ENV_PREFIX}{n.upper()}_FILE" for n in FILE_FIELDS})
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
             "PrivateTmp": "yes", "RestrictSUIDSGID": "yes", "CapabilityBoundingSet": "",
             "User": "opsconductor"}


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _documents() if d["kind"] == kind}


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return dict(spec["template"]["spec"])


def _check_command(argv: list[str]) -> None:
    """`argv` is an `opsconductor` command our CLI parses (prune: once it is registered)."""
    assert Path(argv[0]).name == "opsconductor", argv
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    if argv[1] == "prune" and "prune" not in commands:
        return  # `opsconductor prune` comes with the audit work (issue 23)
    parser.parse_args(argv[1:])


def test_every_manifest_validates_against_the_kubernetes_schemas() -> None:
    docs = _documents()
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml")
                                    if p.name != "kustomization.yaml")
    kinds = sorted(d["kind"] for d in docs)
    print(f"{len(docs)} manifests valid against Kubernetes {KUBERNETES_VERSION}: {kinds}")
    assert {"Deployment", "Service", "ConfigMap", "Secret", "Job", "CronJob"} <= set(kinds)


def test_a_schema_violation_is_caught() -> None:
    worker = _by_kind("Deployment")["opsconductor-worker"]
    broken = yaml.safe_load(yaml.safe_dump(worker))
    broken["spec"]["template"]["spec"]["containers"][0]["terminationGracePeriod"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_workers_drain_probe_and_request_resources() -> None:
    worker = _by_kind("Deployment")["opsconductor-worker"]
    pod = _pod(worker)
    (container,) = pod["containers"]
    settings = _by_kind("ConfigMap")["opsconductor-settings"]["data"]
    drain = float(settings["OPSC_GRACEFUL_SHUTDOWN_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > drain
    health = ["opsconductor", "health", "--worker"]
    assert container["readinessProbe"]["exec"]["command"] == health
    assert container["livenessProbe"]["exec"]["command"] == health
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 120  # outages are not deaths
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_each_component_reads_only_its_own_login_and_names_real_settings() -> None:
    settings = _by_kind("ConfigMap")["opsconductor-settings"]["data"]
    files = _by_kind("ConfigMap")["opsconductor-files"]["data"]
    assert set(settings) <= SETTING_VARIABLES, set(settings) - SETTING_VARIABLES
    load_settings(dict(settings))  # the shared settings load
    expected_login = {"opsconductor-worker": "worker", "opsconductor-api": "api",
                      "opsconductor-migrate": "migrator", "opsconductor-prune": "pruner"}
    seen = {}
    for doc in _documents():
        if doc["kind"] not in ("Deployment", "Job", "CronJob"):
            continue
        pod = _pod(doc)
        (container,) = pod["containers"]
        _check_command(container["command"])
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert set(env) <= SETTING_VARIABLES, set(env) - SETTING_VARIABLES
        url_file = env["OPSC_DATABASE_URL_FILE"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        folder, key = url_file.rsplit("/", 1)
        secret = volumes[mounts[folder]]["secret"]
        assert secret["secretName"] == "opsconductor-database"
        assert [i["key"] for i in secret["items"]] == [key]  # this login only
        seen[doc["metadata"]["name"]] = key
        for path_var in ("OPSC_RBAC_POLICY", "OPSC_INVENTORY", "OPSC_SSH_KNOWN_HOSTS"):
            if path_var in settings and doc["metadata"]["name"] == "opsconductor-worker":
                path = Path(settings[path_var])
                assert volumes[mounts[str(path.parent)]]["configMap"]["name"] == (
                    "opsconductor-files") and path.name in files
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"]
    assert seen == expected_login
    urls = _by_kind("Secret")["opsconductor-database"]["stringData"]
    assert all("sslmode=verify-full" in u and "sslrootcert=" in u for u in urls.values())
    assert {u.split("//")[1].split(":")[0] for u in urls.values()} == {
        "opsc_app_worker", "opsc_app_api", "opsc_migrator", "opsc_app_pruner"}
    policy = rbac.build_policy(yaml.safe_load(files["rbac_policy.yaml"]))
    assert any("approver" in b.roles for b in policy.bindings)


def test_the_api_binds_wider_than_loopback_only_behind_oidc() -> None:
    api = _by_kind("Deployment")["opsconductor-api"]
    (container,) = _pod(api)["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    command = container["command"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert env["OPSC_OIDC_ISSUER"].startswith("https://") and env["OPSC_OIDC_AUDIENCE"]
    from opsconductor.starter.auth import LocalTokenAuth, authenticator_from_settings

    shared = _by_kind("ConfigMap")["opsconductor-settings"]["data"]
    settings = load_settings({**shared, **{k: v for k, v in env.items()
                                          if not k.endswith("_FILE")}})
    auth, new_token = authenticator_from_settings(settings)
    assert not isinstance(auth, LocalTokenAuth) and new_token is None
    service = _by_kind("Service")["opsconductor-api"]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def _unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def _service_lines(path: Path, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in path.read_text().splitlines()
            if line.startswith(f"{key}=")]


async def test_systemd_units_are_hardened_valid_and_name_real_settings(tmp_path: Path) -> None:
    services = sorted(SYSTEMD.glob("*.service"))
    assert {p.stem for p in services} == {"opsconductor-worker", "opsconductor-api",
                                          "opsconductor-migrate", "opsconductor-prune"}
    env_file = dict(line.split("=", 1) for line in
                    (SYSTEMD / "opsconductor.env").read_text().splitlines()
                    if line and not line.startswith("#"))
    assert set(env_file) <= SETTING_VARIABLES
    load_settings(env_file)
    for path in services:
        unit = _unit(path)
        for key, value in HARDENING.items():
            assert unit.get("Service", key) == value, (path.name, key)
        envs = dict(e.split("=", 1) for e in _service_lines(path, "Environment"))
        assert set(envs) <= SETTING_VARIABLES, (path.name, set(envs) - SETTING_VARIABLES)
        assert envs["OPSC_DATABASE_URL_FILE"] == "%d/database_url"
        creds = dict(c.split(":", 1) for c in _service_lines(path, "LoadCredential"))
        assert creds["database_url"].startswith("/etc/opsconductor/credentials/")
        (exec_start,) = _service_lines(path, "ExecStart")
        _check_command(shlex.split(exec_start))
    worker = _unit(SYSTEMD / "opsconductor-worker.service")
    assert float(worker.get("Service", "TimeoutStopSec")) > float(
        env_file["OPSC_GRACEFUL_SHUTDOWN_SECONDS"])
    assert worker.get("Service", "KillSignal") == "SIGTERM"
    timer = _unit(SYSTEMD / "opsconductor-prune.timer")
    assert timer.get("Timer", "Unit") == "opsconductor-prune.service"
    assert timer.get("Timer", "Persistent") == "true"
    assert "opsconductor" in (SYSTEMD / "opsconductor.sysusers").read_text().split()

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("systemd-analyze not installed: units parsed and checked only")
        return
    # verify copies whose ExecStart is this venv's opsconductor and whose env file exists
    binary = REPO / ".venv" / "bin" / "opsconductor"
    for path in [*services, SYSTEMD / "opsconductor-prune.timer"]:
        text = path.read_text().replace("/opt/opsconductor/venv/bin/opsconductor", str(binary))
        text = text.replace("/etc/opsconductor/opsconductor.env",
                            str(SYSTEMD / "opsconductor.env"))
        (tmp_path / path.name).write_text(text)
    units = sorted(str(p) for p in tmp_path.iterdir())
    run = await asyncio.to_thread(subprocess.run, [analyze, "verify", "--man=no", *units],
                                  capture_output=True, text=True, timeout=120)
    complaints = [line for line in (run.stdout + run.stderr).splitlines()
                  if "Unknown" in line or "rror" in line or "not executable" in line]
    assert run.returncode == 0 and complaints == [], run.stdout + run.stderr
    print(f"systemd-analyze verify: {len(units)} units clean")
