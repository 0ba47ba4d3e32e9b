"""docker-compose.temporal.yml checked without Docker: parsed; every service's environment
names real settings (or a documented variable of the image it configures), every file it
names is mounted and exists here, every secret comes from a file that make-secrets.sh makes;
nothing is published beyond loopback, the API binds wider only behind OIDC; Temporal is
`temporalio/server` with its schema set up by admin-tools. The PostgreSQL init script and the
secrets script run for real against an embedded server, and the migrator they make migrates.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from opsconductor.schema.config import ENV_PREFIX, FILE_FIELDS, Settings, load_settings
from opsconductor.schema.migrate import migrate, migrations
from opsconductor.starter.embedded_postgres import EmbeddedPostgres
from tests.helpers import REPO

COMPOSE = REPO / "docker-compose.temporal.yml"
SETTING_VARIABLES = ({ENV_PREFIX + n.upper() for n in Settings.model_fields}
                     | {f"{ENV_PREFIX}{n.upper()}_FILE" for n in FILE_FIELDS})
# Variables of the images we configure, each documented by the image (or read by our script):
DOCUMENTED = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD_FILE",  # postgres image
                 "ROLES_SQL"},  # deploy/postgres/init.sh
    "temporal-schema": {"POSTGRES_SEEDS", "DB_PORT", "POSTGRES_USER",  # setup-schema.sh
                        "TEMPORAL_DB_PASSWORD_FILE"},
    "temporal": {"DB", "DB_PORT", "DBNAME", "VISIBILITY_DBNAME", "POSTGRES_SEEDS",
                 "POSTGRES_USER", "BIND_ON_IP", "DYNAMIC_CONFIG_FILE_PATH"},  # server image
    "temporal-ui": {"TEMPORAL_ADDRESS", "TEMPORAL_CODEC_ENDPOINT",
                    "TEMPORAL_CODEC_PASS_ACCESS_TOKEN"},  # ui image
}
SCRIPTS = {"postgres": REPO / "deploy/postgres/init.sh",
           "temporal-schema": REPO / "deploy/temporal/setup-schema.sh"}
PATH_SETTINGS = ("OPSC_RBAC_POLICY", "OPSC_INVENTORY", "OPSC_SSH_KNOWN_HOSTS")
def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def _ours(service: dict[str, Any]) -> bool:
    return "build" in service and service["build"]["dockerfile"] == "Dockerfile.worker"


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> repository file of the service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            out[target] = REPO / source
    return out


def test_our_services_name_only_settings_and_mount_every_file_they_name() -> None:
    compose = _compose()
    secrets = compose["secrets"]
    checked = 0
    for name, service in compose["services"].items():
        env = {k: str(v) for k, v in service.get("environment", {}).items()}
        mounts = _mounts(service)
        if _ours(service):
            assert set(env) <= SETTING_VARIABLES, (name, set(env) - SETTING_VARIABLES)
            assert "OPSC_DATABASE_URL" not in env, name  # a URL holds a password: from a file
            for var in (v for v in env if v.endswith("_FILE")):
                secret = env[var].removeprefix("/run/secrets/")
                assert env[var] == f"/run/secrets/{secret}" and secret in service["secrets"]
                assert secret in secrets, (name, secret)
            for var in (v for v in PATH_SETTINGS if v in env):
                assert mounts[env[var]].is_file(), (name, var)
            # the environment loads (secret files stood in for by their names)
            with_files = {k: v for k, v in env.items()
                          if not k.endswith("_FILE") and k in SETTING_VARIABLES}
            settings = load_settings({**with_files, "OPSC_HOME": "/nonexistent"})
            assert settings.namespace
            checked += 1
        else:
            documented = DOCUMENTED.get(name, set())
            assert set(env) <= documented, (name, set(env) - documented)
            script = SCRIPTS.get(name)
            if script:  # what our own script reads, it really reads
                own = {"ROLES_SQL", "TEMPORAL_DB_PASSWORD_FILE"} & set(env)
                assert all(v in script.read_text() for v in own), (name, own)
        for target, source in mounts.items():
            assert source.exists(), (name, target, source)
    assert checked == 4  # migrate, api, worker, prune


def test_every_secret_is_a_file_the_secrets_script_makes_and_no_password_is_inline() -> None:
    compose = _compose()
    script = (REPO / "deploy/compose/make-secrets.sh").read_text()
    for name, spec in compose["secrets"].items():
        assert spec == {"file": f"./secrets/{name}"}
        assert re.search(rf"\b{name}\b", script), name
    text = COMPOSE.read_text()
    assert not re.search(r"postgresql://[^@\s/]+:[^@\s/]+@", text)  # no password in a URL
    for service in compose["services"].values():
        for key, value in service.get("environment", {}).items():
            if str(value) not in ("true", "false"):  # a flag, not a credential
                assert not re.search(r"(PASSWORD|PWD|SECRET|_TOKEN)$", key), key
    assert (REPO / ".gitignore").read_text().count("secrets/") == 1


def test_nothing_is_published_beyond_loopback_and_the_api_binds_wider_only_behind_oidc() -> None:
    services = _compose()["services"]
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published), published
    api = services["api"]
    host = api["command"][api["command"].index("--host") + 1]
    assert host == "0.0.0.0"
    env = api["environment"]
    assert env["OPSC_OIDC_ISSUER"].startswith("https://") and env["OPSC_OIDC_AUDIENCE"]
    assert env["OPSC_OIDC_TENANT_CLAIM"]
    # the settings `serve` builds its authenticator from: OIDC, so it may bind 0.0.0.0
    from opsconductor.starter.auth import LocalTokenAuth, authenticator_from_settings

    settings = load_settings({k: str(v) for k, v in env.items() if not k.endswith("_FILE")}
                             | {"OPSC_HOME": "/nonexistent"})
    auth, new_token = authenticator_from_settings(settings)
    assert not isinstance(auth, LocalTokenAuth) and new_token is None


def test_temporal_is_the_server_image_with_its_schema_set_up_by_admin_tools() -> None:
    services = _compose()["services"]
    images = {n: s.get("image", "") for n, s in services.items()}
    assert not any("auto-setup" in i for i in images.values())
    assert images["temporal"].startswith("temporalio/server:")
    assert images["temporal-schema"].startswith("temporalio/admin-tools:")
    assert services["temporal"]["depends_on"]["temporal-schema"] == {
        "condition": "service_completed_successfully"}
    script = SCRIPTS["temporal-schema"].read_text()
    for db, folder in (("temporal", "temporal"), ("temporal_visibility", "visibility")):
        assert f"{db}:{folder}" in script
    assert "setup-schema -v 0.0" in script and "update-schema -d" in script
    temporal_env = services["temporal"]["environment"]
    assert temporal_env["DBNAME"] != "opsconductor" != temporal_env["VISIBILITY_DBNAME"]
    assert "POSTGRES_PWD" not in temporal_env  # from the secret file, in the entrypoint
    assert "/run/secrets/temporal_db_password" in " ".join(services["temporal"]["entrypoint"])
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"}


def test_workers_drain_before_docker_kills_them() -> None:
    worker = _compose()["services"]["worker"]
    grace = float(worker["stop_grace_period"].removesuffix("s"))
    assert grace > float(worker["environment"]["OPSC_GRACEFUL_SHUTDOWN_SECONDS"])
    assert worker["command"] == ["opsconductor", "worker"]  # it may not migrate


@pytest.fixture(scope="module")
def init_server(session_dir: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(session_dir / "pg-compose-init")
    server.start(timeout=60)
    try:
        yield server
    finally:
        server.discard()


async def test_the_init_script_makes_separate_databases_and_logins_and_the_migrator_migrates(
        init_server: EmbeddedPostgres, tmp_path: Path) -> None:
    admin = await asyncpg.connect(
        f"postgresql://postgres@{init_server.host}:{init_server.port}/postgres")
    try:  # a fresh server, as the postgres image's first start has it
        await admin.execute("DROP DATABASE IF EXISTS opsconductor")
    finally:
        await admin.close()
    secrets = tmp_path / "secrets"
    made = await asyncio.to_thread(
        subprocess.run, ["sh", str(REPO / "deploy/compose/make-secrets.sh"), str(secrets)],
        capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert set(_compose()["secrets"]) == {p.name for p in secrets.iterdir()}
    env = {**os.environ, "PATH": f"{init_server.binaries}:{os.environ['PATH']}",
           "SECRETS_DIR": str(secrets), "ROLES_SQL": str(REPO / "deploy/postgres/roles.sql"),
           "POSTGRES_USER": "postgres", "PGHOST": init_server.host,
           "PGPORT": str(init_server.port)}
    run = await asyncio.to_thread(
        subprocess.run, ["sh", str(REPO / "deploy/postgres/init.sh")], env=env,
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr

    def local(name: str) -> str:
        url = (secrets / name).read_text().strip()
        return url.replace("@postgres:5432/", f"@{init_server.host}:{init_server.port}/")

    assert await migrate(local("opsc_migrator_database_url")) == [
        m.version for m in migrations()]
    admin = await asyncpg.connect(
        f"postgresql://postgres@{init_server.host}:{init_server.port}/postgres")
    try:
        owners = dict(await admin.fetch(
            "SELECT datname, pg_get_userbyid(datdba) FROM pg_database"
            " WHERE datname IN ('temporal', 'temporal_visibility', 'opsconductor')"))
        members = dict(await admin.fetch(
            "SELECT m.rolname, g.rolname FROM pg_auth_members a"
            " JOIN pg_roles m ON m.oid = a.member JOIN pg_roles g ON g.oid = a.roleid"
            " WHERE m.rolname LIKE 'opsc\\_app\\_%' OR m.rolname = 'opsc_migrator'"))
        passwords = await admin.fetchval(
            "SELECT count(*) FROM pg_authid WHERE rolname IN ('temporal', 'opsc_migrator',"
            " 'opsc_app_worker', 'opsc_app_api', 'opsc_app_pruner') AND rolpassword IS NOT NULL")
    finally:
        await admin.close()
    assert owners == {"temporal": "temporal", "temporal_visibility": "temporal",
                      "opsconductor": "opsc_migrator"}
    assert members == {"opsc_migrator": "opsc_owner", "opsc_app_worker": "opsc_worker",
                       "opsc_app_api": "opsc_api_reader", "opsc_app_pruner": "opsc_pruner"}
    assert passwords == 5
    api = await asyncpg.connect(local("opsc_api_database_url"))
    try:
        assert await api.fetchval("SELECT count(*) FROM execution.executions") == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api.execute("DELETE FROM execution.rbac_audit")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # Temporal's is not ours
            await asyncpg.connect(local("opsc_api_database_url").replace(
                "/opsconductor", "/temporal"))
    finally:
        await api.close()
