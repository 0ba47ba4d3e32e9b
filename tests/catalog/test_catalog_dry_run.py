"""One plan per file of upstream's tool catalog (222 files, 218 names), each step built from
the tool's example as Stage C builds it: every plan dry-runs clean, or is refused for a named,
intended reason (a plain-text credential; a Windows tool that names no host to run on).
Counts printed by catalog folder and by the service upstream routes the tool to."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from opsconductor.schema.catalog import ROUTES, by_name, catalog, location_of
from opsconductor.schema.catalog.specs import NEEDS_HOST
from opsconductor.schema.tools import PLAIN_SECRET_MESSAGE, lookup
from opsconductor.starter.dry_run import dry_run, render_text
from tests.catalog.helpers import STEPS, inventory_text, plan_for, stage_c_step, tally

SERVICES = {r.env: f"http://127.0.0.1:9/{r.location}" for r in ROUTES.values()}


@pytest.fixture
def catalog_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(inventory_text())
    monkeypatch.setenv("OPSC_INVENTORY", str(inv))
    for env, url in SERVICES.items():
        monkeypatch.setenv(env, url)
    return inv


def verdict(report: object) -> str:
    if report.would_run:  # type: ignore[attr-defined]
        return "clean"
    messages = [p.message for p in report.problems]  # type: ignore[attr-defined]
    if messages and all(m in (PLAIN_SECRET_MESSAGE, NEEDS_HOST) for m in messages):
        return "refused-for-reason"
    return "refused-wrongly"


async def test_every_catalog_plan_dry_runs_clean_or_is_refused_for_a_plain_secret(
        catalog_env: Path) -> None:
    rows, wrong, refused = [], [], []
    for entry in STEPS:
        report = await dry_run(plan_for(entry))
        v = verdict(report)
        rows.append((entry["group"], entry["location"], v))
        if v == "refused-wrongly":
            wrong.append(f"{entry['file']}: {render_text(report)}")
        elif v == "refused-for-reason":
            refused.append(entry["tool"])
            assert "password" in entry["inputs"] or entry["group"] == "windows"
        else:
            step = report.steps[0]
            routed = ROUTES[entry["location"]]
            if entry["tool"] == "asset-query":  # our Asset Service client (docs/catalog.md)
                assert step.executor == "Asset Service query"
            elif routed.sent:  # sent to its service, by tool name
                assert step.executor.startswith("service"), (entry["file"], step)
                assert step.connector == entry["location"]
            else:
                assert step.executor == "command", step
    print("\ncatalog dry runs:\n" + tally(rows))
    assert not wrong, "\n\n".join(wrong[:5])
    assert len(rows) == 222 and len({e["tool"] for e in STEPS}) == 218
    # the camera tools' examples carry a plain-text password; two Windows examples name no
    # host to run on: refused, and only those
    assert {t for t in refused if not t.startswith("Axis-VAPIX")} == {
        "powershell", "Test-Connection"}, refused
    assert sum(t.startswith("Axis-VAPIX") for t in refused) == 14


def test_data_file_restates_the_catalog_fixture() -> None:
    """The package's data file and the test's own fixture agree on every fact they share."""
    rows = catalog()
    assert [(r.file, r.name, r.group, r.location) for r in rows] == [
        (e["file"], e["tool"], e["group"], e["location"]) for e in STEPS]
    assert [r.example for r in rows] == [e["inputs"] for e in STEPS]
    assert location_of("slack_cli") == location_of("slack-cli") == "communication-service"
    assert location_of("no-such-tool") == "automation-service"  # upstream's default
    for row in rows:
        assert row.action in ("read", "modify", "deploy")
        assert set(row.example) <= set(row.inputs), row.name


@pytest.mark.parametrize(("tool", "inputs", "argv"), [
    ("ping", {"target": "web-server-01", "host": "bastion-host", "count": 4,
              "timeout_seconds": 5},
     ["ping", "--target", "web-server-01", "--count", "4", "--timeout-seconds", "5"]),
    ("ls", {"path": "/var/log/apache2", "host": "web-server-01", "show_hidden": False,
            "long_format": True, "human_readable": True},
     ["ls", "--path", "/var/log/apache2", "--long-format", "--human-readable"]),
    ("grep", {"pattern": "a b; rm -rf /", "target": "/var/log/app.log", "host": "h",
              "case_insensitive": False, "line_numbers": True},
     ["grep", "--pattern", "a b; rm -rf /", "--target", "/var/log/app.log",
      "--line-numbers"]),
    ("systemctl", {"service_name": "nginx", "host": "web-server-01"},
     ["systemctl", "--service-name", "nginx"]),
    ("ps", {"host": "app-server-01", "format": "aux", "sort_by": "cpu"},
     ["ps", "--format", "aux", "--sort-by", "cpu"]),
    ("dig", {"domain": "www.example.org", "host": "bastion-host", "short_output": True},
     ["dig", "--short-output"]),  # upstream leaves `domain` out: a connection input to it
    ("Restart-Service", {"host": "192.168.1.100", "service_name": "Spooler", "force": True},
     ["Restart-Service", "-Servicename", "Spooler", "-Force"]),
    ("Test-Connection", {"host": "192.168.1.100", "ComputerName": "WEB-SERVER-01", "Count": 4},
     ["Test-Connection", "-Computername", "WEB-SERVER-01", "-Count", "4"]),
])
def test_commands_follow_upstreams_convention_as_argument_lists(
        tool: str, inputs: dict[str, object], argv: list[str]) -> None:
    spec = lookup(tool, inputs)
    assert spec is not None and spec.build_argv is not None and spec.catalog
    model = spec.inputs.model_validate(inputs)
    assert spec.build_argv(model) == argv
    line = spec.build_command(model)  # type: ignore[misc]
    if spec.dialect == "sh":
        assert shlex.split(line) == argv  # each value stays one argument, nothing spliced
    else:
        assert line.startswith(argv[0] + " ") and "'" in line


def test_catalog_form_and_our_form_of_one_name() -> None:
    """`ps` as our rule planner writes it stays ours; with a catalog-only input it is the
    catalog's; an input neither knows is refused by name."""
    ours = lookup("ps", {"format": "detailed"})
    theirs = lookup("ps", {"host": "h", "format": "aux"})
    assert ours is not None and ours.catalog is None
    assert theirs is not None and theirs.catalog == "linux/ps.yaml"
    from opsconductor.schema.validation import RequestValidationError, validate_request

    with pytest.raises(RequestValidationError) as err:
        validate_request({"tenant": "t", "actor": "a", "environment": "dev", "plan": {
            "steps": [stage_c_step("df", {"host": "h", "colour": "red"})]}})
    assert [p.path for p in err.value.problems] == ["plan.plan.steps[0].inputs.colour"]


def test_read_and_change_classes_come_from_the_data_file() -> None:
    classes = {r.name: r.action for r in catalog()}
    assert classes["df"] == classes["Get-Service"] == classes["kubectl-get"] == "read"
    assert classes["iptables"] == classes["Stop-Service"] == classes["kubectl-exec"] == "modify"
    assert classes["helm-install"] == "deploy"
    spec = lookup("df", {"host": "h", "command": "df -h; rm -rf /"})
    assert spec is not None
    model = spec.inputs.model_validate({"host": "h", "command": "df -h; rm -rf /"})
    assert spec.action_class(model).value == "modify"  # free text is never a read
    assert len(by_name()) == 218 + 3  # the communication service's own spellings


async def test_unconfigured_service_is_refused_naming_the_setting(
        catalog_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for route in ROUTES.values():
        monkeypatch.delenv(route.env)
    for tool, env in (("nmap", "OPSC_NETWORK_SERVICE_URL"),
                      ("slack-cli", "OPSC_COMMUNICATION_SERVICE_URL"),
                      ("teams_cli", "OPSC_COMMUNICATION_SERVICE_URL"),
                      ("asset-create", "OPSC_ASSET_SERVICE_URL")):
        report = await dry_run(plan_for({"tool": tool, "inputs": {"host": "192.168.1.100"}}))
        assert not report.would_run
        assert [p.path for p in report.problems] == ["plan.plan.steps[0].tool"], report
        assert env in report.problems[0].message


async def test_read_tools_run_without_shell_and_change_tools_do_not(
        catalog_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A principal granted exactly the catalog's read tools and probes (no `shell`, strict):
    a read tool's plan is allowed when it is a probe (or sent to its service), else it needs
    `shell` and is denied; every change tool's plan is denied; free text on a read tool needs
    `shell`, so it is denied too."""
    import json

    reads = sorted({r.name for r in catalog() if r.action == "read"})
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps({
        "version": "readers", "strict": ["dev"],
        "roles": [{"actor": "viewer", "tenant": "*", "roles": ["reader"]}],
        "rules": [{"id": "readers-read", "effect": "allow", "subjects": ["role:reader"],
                   "actions": ["execute"], "tools": [*reads, "probe:*"]}]}))
    monkeypatch.setenv("OPSC_RBAC_POLICY", str(policy))
    action = {r.file: r.action for r in catalog()}
    runs = {r.file: r.probe is not None or ROUTES[r.location].sent for r in catalog()}
    counts = {"read allowed": 0, "read denied": 0, "change denied": 0, "change allowed": 0}
    for entry in STEPS:
        doc = {**plan_for(entry), "actor": "viewer"}
        report = await dry_run(doc)
        if any(p.message in (PLAIN_SECRET_MESSAGE, NEEDS_HOST) for p in report.problems):
            continue
        reading = action[entry["file"]] == "read"
        allowed = report.would_run
        key = ("read " if reading else "change ") + ("allowed" if allowed else "denied")
        counts[key] += 1
        if not allowed:
            assert all("denied" in p.message for p in report.problems), render_text(report)
            if reading:  # a read tool that is no probe: it would need `shell`
                assert "as shell (not a probe" in render_text(report), render_text(report)
        assert allowed == (reading and runs[entry["file"]]), (entry["file"],
                                                              render_text(report))
    print(f"\nprincipal without shell: {counts}")
    assert counts["read allowed"] >= 60 and counts["read denied"] <= 29
    assert counts["change denied"] > 100 and counts["change allowed"] == 0
    free = {**plan_for({"tool": "df", "inputs": {"host": "192.168.1.100",
                                                 "command": "df -h; touch /tmp/x"}}),
            "actor": "viewer"}
    report = await dry_run(free)
    assert not report.would_run and "shell" in render_text(report)


def test_read_tools_we_run_name_their_probe_where_one_exists() -> None:
    """The join with the typed probes (safety.probes): each read tool we run ourselves names
    the probe it means where there is one; change tools and tools sent to a service name
    none. Counts printed: what the probe layer still has to cover."""
    rows = catalog()
    ours = [r for r in rows if r.action == "read" and r.location == "automation-service"]
    assert all(r.probe is None for r in rows if r.action != "read" or
               r.location != "automation-service")
    mapped = [r for r in ours if r.probe]
    print(f"\nread tools we run: {len(ours)}; with a probe: {len(mapped)}; without: "
          f"{len(ours) - len(mapped)}")
    assert {r.name: r.probe for r in mapped if r.name in ("df", "Get-Service", "docker-ps")} \
        == {"df": "disk_usage", "Get-Service": "ps_get_service", "docker-ps": "containers"}
    assert len(mapped) >= 54


def test_templates_in_catalog_inputs_stay_one_argument() -> None:
    """A value an earlier step fills in is quoted by the renderer into one word: shell
    metacharacters in it do nothing."""
    from opsconductor.schema.spec import build_spec
    from opsconductor.schema.templates import expand, shell_quote
    from opsconductor.schema.validation import validate_request

    doc = {"tenant": "t", "actor": "a", "environment": "dev", "plan": {"steps": [
        {"id": "q", "tool": "asset-query", "inputs": {}},
        stage_c_step("grep", {"host": "{{hostname}}", "pattern": "ERR {{hostname}}",
                              "target": "/var/log/{{hostname}}.log"}, 1)]}}
    spec = build_spec(validate_request(doc), execution_id="e", workflow_id="w",
                      idempotency_key="k")
    step = spec.steps[1]
    evil = "h; touch /tmp/pwned '$(id)'"
    results = {"q": {"output": {"assets": [{"hostname": evil, "id": "x"}]}}}
    (variant,) = expand(step.id, step.inputs, step.command, step.target, step.placeholders,
                        results, shell_quote)
    assert shlex.split(variant.command or "") == [
        "grep", "--pattern", f"ERR {evil}", "--target", f"/var/log/{evil}.log"]


def test_windows_template_must_be_a_whole_value_and_ssh_tools_take_no_password() -> None:
    from opsconductor.schema.validation import RequestValidationError, validate_request

    def problems(step: dict[str, object]) -> dict[str, str]:
        with pytest.raises(RequestValidationError) as err:
            validate_request({"tenant": "t", "actor": "a", "environment": "dev",
                              "plan": {"steps": [{"id": "q", "tool": "asset-query",
                                                  "inputs": {}}, step]}})
        return {p.path: p.message for p in err.value.problems}

    found = problems(stage_c_step("Stop-Service", {"host": "{{hostname}}",
                                                   "service_name": "svc-{{hostname}}"}, 1))
    assert any("whole value" in m for m in found.values()), found
    found = problems(stage_c_step("df", {"host": "h", "password": {
        "type": "secret", "path": "x"}}, 1))
    assert list(found) == ["plan.plan.steps[1].inputs.password"], found


async def test_the_steps_own_execution_location_never_routes_it(catalog_env: Path) -> None:
    """Stage C may write any service as the step's location; the tool's name decides."""
    for written in ("network-service", "communication-service", "asset-service"):
        step = stage_c_step("uptime", {"host": "192.168.1.100"})
        step["execution_location"] = written
        report = await dry_run({"tenant": "t", "actor": "a", "environment": "dev",
                                "plan": {"steps": [step]}})
        assert report.would_run, render_text(report)
        assert report.steps[0].executor == "command"
        assert report.steps[0].connector == "ssh"


def test_upstreams_timeout_is_the_steps_limit_and_an_argument_stays_an_argument() -> None:
    from opsconductor.schema.spec import build_spec
    from opsconductor.schema.validation import validate_request

    doc = {"tenant": "t", "actor": "a", "environment": "dev", "plan": {"steps": [
        stage_c_step("ping", {"host": "h", "target": "x", "timeout_seconds": 5}, 0),
        stage_c_step("uptime", {"host": "h", "timeout": 42}, 1)]}}
    ping, uptime = build_spec(validate_request(doc), execution_id="e", workflow_id="w",
                              idempotency_key="k").steps
    assert ping.timeout_seconds is None and "--timeout-seconds" in (ping.argv or [])
    assert uptime.timeout_seconds == 42 and uptime.argv == ["uptime"]
