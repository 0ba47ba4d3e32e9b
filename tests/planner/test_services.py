"""Upstream's Windows, asset-query and API plans against local stand-ins of the Automation
Service, the Asset Service and an HTTP-digest camera: the request each service receives is
checked field by field, so no planner input is lost on the way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from opsconductor.safety.probes import probe_for
from tests.planner.helpers import WINDOWS, load, run_plan, spec_of
from tests.planner.standins import ASSET_SERVICE, AUTOMATION, DIGEST_PASSWORD, DigestCamera

WIN_CREDS = {"password": {"type": "secret", "path": "planner/windows/admin"}}


@pytest.fixture
def windows_inventory(automation_service: str, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> Path:
    assets = [{"id": i, "hostname": ip, "connector": "automation-service", "os": "windows",
               "user": "stationadmin", "credentials": WIN_CREDS,
               "automation": {"base_url": automation_service}} for i, ip in WINDOWS]
    assets.append({"id": "win-1", "hostname": "win-1", "address": "10.0.0.5",
                   "connector": "automation-service", "os": "windows", "user": "stationadmin",
                   "credentials": WIN_CREDS, "automation": {"base_url": automation_service}})
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps({"assets": assets}))
    monkeypatch.setenv("OPSC_INVENTORY", str(path))
    monkeypatch.delenv("OPSC_ASSET_SERVICE_URL", raising=False)
    return path


def _plan_inputs(name: str) -> list[dict[str, Any]]:
    doc = load(name)
    return [s.get("inputs") or s.get("parameters") or {} for s in doc["plan"]["plan"]["steps"]]


@pytest.mark.parametrize("name", ["llm_powershell_auto_credentials.json",
                                  "llm_impacket_auto_credentials.json",
                                  "llm_powershell_multiple_hosts.json",
                                  "llm_powershell_asset_credentials.json",
                                  "llm_impacket_asset_credentials.json"])
async def test_windows_plan_reaches_the_automation_service_whole(
        name: str, windows_inventory: Path) -> None:
    outcomes = await run_plan(load(name))
    assert all(o.ok for o in outcomes.values()), {k: o.error for k, o in outcomes.items()}
    planned = _plan_inputs(name)
    assert len(AUTOMATION.calls) == len(planned)
    tools = [s["tool"] for s in load(name)["plan"]["plan"]["steps"]]
    for body, inputs, tool in zip(AUTOMATION.calls, planned, tools, strict=True):
        # a read the catalog knows is sent as its probe's fixed cmdlet line; other lines
        # (free text, authorized as `shell`) as the planner wrote them
        probe = probe_for(tool, inputs)
        assert body["command"] == (probe.powershell_command() if probe else inputs["command"])
        assert body["connection_type"] == inputs["connection_type"]
        expected_host = "10.0.0.5" if inputs["target_host"] == "win-1" else inputs["target_host"]
        assert body["target_host"] == expected_host
        assert body["credentials"] == {"username": "stationadmin", "password": "Win-Pass-1!"}
        for key in ("wait", "interactive", "use_ssl", "port", "domain"):
            assert body.get(key) == inputs.get(key)


async def test_cmdlet_named_tools_build_their_cmdlet(windows_inventory: Path) -> None:
    outcomes = await run_plan(load("llm_get_service_cmdlet.json"))
    assert all(o.ok for o in outcomes.values())
    # both are probes: the fixed cmdlet with typed parameters, never the planner's pipeline
    assert [c["command"] for c in AUTOMATION.calls] == [
        "Get-Service", "Get-ComputerInfo -Property 'CsName','OsName'"]
    assert {c["connection_type"] for c in AUTOMATION.calls} == {"powershell"}


async def test_a_plain_password_never_reaches_a_service(windows_inventory: Path) -> None:
    from opsconductor.schema.validation import RequestValidationError, validate_request

    with pytest.raises(RequestValidationError) as err:
        validate_request(load("llm_impacket_explicit_password.json"))
    assert [p.path for p in err.value.problems] == ["plan.plan.steps[0].inputs.password"]
    assert AUTOMATION.calls == []


def _windows_records(automation: str) -> list[dict[str, Any]]:
    return [{"id": i, "hostname": f"win10-{i}", "ip_address": ip, "connector": "automation-service",
             "os": "windows", "user": "stationadmin", "tags": ["win10"], "credentials": WIN_CREDS,
             "automation": {"base_url": automation}} for i, ip in WINDOWS] + [
        {"id": "99", "hostname": "linux-9", "ip_address": "192.168.50.99", "connector": "ssh",
         "tags": ["linux"]}]


@pytest.mark.parametrize(("name", "target_key"), [
    ("multistep_asset_query_fanout.json", "hostname"),
    ("cdrive_item_ip.json", "ip_address"),
    ("llm_multi_machine_template.json", "ip_address"),
])
async def test_asset_query_fans_out_to_every_returned_windows_host(
        name: str, target_key: str, asset_service: str, automation_service: str) -> None:
    ASSET_SERVICE.assets.extend(_windows_records(automation_service))
    spec = spec_of(load(name))
    query, step = spec.steps
    assert step.fan_out_from == query.id and query.id in step.depends_on
    outcomes = await run_plan(load(name))
    assert outcomes[query.id].ok and outcomes[query.id].output["count"] == 3
    query_call = ASSET_SERVICE.calls[0]
    assert query_call["path"] == "/api/v1/assets" and query_call["query"]["tags"] == "win10"
    fan = outcomes[step.id]
    assert fan.ok, fan.error
    assert [v["id"] for v in fan.output["variants"]] == [f"{step.id}#{n}" for n in (1, 2, 3)]
    records = {r[target_key]: r for r in ASSET_SERVICE.assets}
    assert [v["target"] for v in fan.output["variants"]] == [
        r[target_key] for r in _windows_records(automation_service)[:3]]
    hosts = sorted(c["target_host"] for c in AUTOMATION.calls)
    assert hosts == sorted(r["hostname"] for r in records.values() if "win10" in r["tags"])
    probe = probe_for(step.tool, step.inputs)  # a read cmdlet goes as its probe's line
    assert {c["command"] for c in AUTOMATION.calls} == {
        probe.powershell_command() if probe else step.command}


async def test_conditional_check_reads_the_asset_count(asset_service: str,
                                                       automation_service: str) -> None:
    ASSET_SERVICE.assets.extend({**r, "tags": ["production", "web"]}
                                for r in _windows_records(automation_service)[:2])
    outcomes = await run_plan(load("multistep_conditional.json"))
    _query, check, fan = outcomes.values()
    assert check.ok and check.output["passed"] == 1 and check.output["not_checked"] == 0
    assert fan.ok and fan.output["count"] == 2
    ASSET_SERVICE.assets.clear()
    AUTOMATION.calls.clear()
    outcomes = await run_plan(load("multistep_conditional.json"))
    _, check, _ = outcomes.values()
    assert not check.ok and "asset_count" in (check.error or "")


async def test_api_request_digest_auth_from_a_secret_reference(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.executors.conftest import secret_env_name
    from tests.executors.servers import serve

    monkeypatch.setenv(secret_env_name("axis/root"), DIGEST_PASSWORD)
    DigestCamera.calls.clear()
    with serve(DigestCamera) as url:
        doc = load("llm_api_request_digest.json")
        doc["plan"]["plan"]["steps"][0]["inputs"]["port"] = int(url.rsplit(":", 1)[1])
        outcomes = await run_plan(doc)
    (outcome,) = outcomes.values()
    assert outcome.ok, outcome.error
    assert outcome.output["body"] == {"ok": True, "query": {"autofocus": "on", "camera": "1"}}
    assert [c["authorization"][:7] for c in DigestCamera.calls] == ["", "Digest "]
    assert DIGEST_PASSWORD not in json.dumps(outcome.output)


async def test_rule_planner_asset_query_maps_every_input(asset_service: str) -> None:
    ASSET_SERVICE.assets.extend([
        {"id": "7", "hostname": "db-prod-1", "ip_address": "10.1.0.7", "connector": "ssh",
         "environment": "production", "service_type": "database", "os": "linux",
         "location": "rack-2"}])
    outcomes = await run_plan(load("rule_asset_query_production.json"))
    (outcome,) = outcomes.values()
    assert outcome.ok, outcome.error
    assert ASSET_SERVICE.calls[0] == {"path": "/api/v1/assets", "query": {
        "environment": "production", "service_type": "database", "search": "database",
        "limit": "10"}}
    # `fields` ["hostname"] keeps the identity fields fan-out needs, and drops the rest
    assert outcome.output["assets"] == [{"id": "7", "hostname": "db-prod-1",
                                         "ip_address": "10.1.0.7"}]
