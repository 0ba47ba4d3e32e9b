"""Which source gives each connection field (no server): flags, then TEMPORAL_*, then the
temporal.toml profile, then OPSC_* / stack.json, then the defaults; and bad configuration is
one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsconductor.schema.config import Settings
from opsconductor.starter.connect import TemporalConnectError, explain, plan_connection

PROFILES = """
[profile.default]
address = "profile-default:7233"
namespace = "ns-from-profile"

[profile.prod]
address = "profile-prod:7233"
api_key = "k-prod"

[profile.prod.tls]
server_name = "prod.example"

[profile.prod.grpc_meta]
x-team = "ops"
"""


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    path = tmp_path / "temporal.toml"
    path.write_text(PROFILES)
    return path


def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, temporal_address="opsc:7233", namespace="ns-from-opsc")


def test_opsc_settings_when_nothing_else_is_set(tmp_path: Path) -> None:
    env = {"TEMPORAL_CONFIG_FILE": str(tmp_path / "absent.toml")}
    plan = plan_connection(settings(tmp_path), environ=env)
    assert (plan.target.address, plan.target.namespace) == ("opsc:7233", "ns-from-opsc")
    assert plan.kwargs["tls"] is False and "api_key" not in plan.kwargs
    assert plan.target.address_from.startswith("OPSC_")


def test_profile_over_opsc_environment_over_profile_flags_over_all(tmp_path: Path,
                                                                    toml: Path) -> None:
    env = {"TEMPORAL_CONFIG_FILE": str(toml)}
    t = plan_connection(settings(tmp_path), environ=env).target
    assert (t.address, t.address_from) == ("profile-default:7233", "temporal.toml profile")
    assert (t.namespace, t.namespace_from) == ("ns-from-profile", "temporal.toml profile")
    env["TEMPORAL_ADDRESS"] = "env:7233"
    t = plan_connection(settings(tmp_path), environ=env).target
    assert (t.address, t.address_from) == ("env:7233", "TEMPORAL_* environment")
    assert t.namespace == "ns-from-profile"
    t = plan_connection(settings(tmp_path), environ=env, address="flag:7233",
                        namespace="ns-flag").target
    assert (t.address, t.namespace, t.address_from) == ("flag:7233", "ns-flag", "flag")


def test_a_named_profile_brings_tls_api_key_and_metadata(tmp_path: Path, toml: Path) -> None:
    env = {"TEMPORAL_CONFIG_FILE": str(toml), "TEMPORAL_PROFILE": "prod"}
    plan = plan_connection(settings(tmp_path), environ=env)
    assert plan.kwargs["api_key"] == "k-prod"
    assert plan.kwargs["tls"].domain == "prod.example"
    assert plan.kwargs["rpc_metadata"] == {"x-team": "ops"}
    assert plan.target.api_key and plan.target.tls and plan.target.metadata == ["x-team"]
    assert plan.target.namespace == "ns-from-opsc"  # the profile names none
    assert "k-prod" not in plan.target.model_dump_json()  # the key is never described
    # an API key alone turns TLS on, as the temporal CLI does
    plan = plan_connection(settings(tmp_path), environ={
        "TEMPORAL_CONFIG_FILE": str(tmp_path / "absent.toml"), "TEMPORAL_API_KEY": "k"})
    assert plan.kwargs["tls"] is True


def test_the_outage_bound_sets_the_client_retries(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, temporal_address="opsc:7233", temporal_outage_seconds=45)
    plan = plan_connection(s, environ={"TEMPORAL_CONFIG_FILE": str(tmp_path / "absent.toml")})
    assert plan.kwargs["retry_config"].max_elapsed_time_millis == 45_000


@pytest.mark.parametrize("env, needle", [
    ({"TEMPORAL_PROFILE": "nope"}, "Profile 'nope' not found"),
    ({"TEMPORAL_TLS_CLIENT_CERT_PATH": "/nonexistent/c.pem",
      "TEMPORAL_TLS_CLIENT_KEY_PATH": "/nonexistent/c.key"}, "/nonexistent/c.pem"),
    ({"TEMPORAL_TLS_CLIENT_CERT_PATH": "{cert}"}, "needs its key"),
])
def test_bad_configuration_is_one_line(tmp_path: Path, toml: Path, env: dict[str, str],
                                       needle: str) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    env = {k: v.format(cert=cert) for k, v in env.items()} | {"TEMPORAL_CONFIG_FILE": str(toml)}
    with pytest.raises(TemporalConnectError) as err:
        plan_connection(settings(tmp_path), environ=env)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_no_address_anywhere_says_where_to_set_one(tmp_path: Path) -> None:
    with pytest.raises(TemporalConnectError, match="TEMPORAL_ADDRESS"):
        plan_connection(Settings(home=tmp_path),
                        environ={"TEMPORAL_CONFIG_FILE": str(tmp_path / "absent.toml")})


def test_a_nested_bridge_error_becomes_one_line(tmp_path: Path) -> None:
    target = plan_connection(settings(tmp_path), environ={
        "TEMPORAL_CONFIG_FILE": str(tmp_path / "absent.toml")}).target
    raw = RuntimeError('Failed client connect: Server connection error:\n tonic::transport::'
                       'Error(Transport, hyper::Error(Connect, Custom { kind: InvalidData, '
                       'error: InvalidCertificate(NotValidForName) }))')
    line = explain(raw, target)
    assert "\n" not in line and "TEMPORAL_TLS_SERVER_NAME" in line and "opsc:7233" in line
