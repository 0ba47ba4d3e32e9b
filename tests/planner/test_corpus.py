"""Upstream planner plans (tests/planner/corpus, sources in index.json) read as upstream
writes them: every valid plan dry-runs clean, every invalid one is refused with each problem
named, and the dialect's meanings hold (failure prose, execution_location, wildcards)."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsconductor.schema.enums import FailureHandling
from opsconductor.schema.failure import interpret_failure_handling
from opsconductor.schema.spec import build_spec
from opsconductor.schema.validation import RequestValidationError, validate_request
from opsconductor.starter.dry_run import dry_run, render_text
from tests.planner.helpers import INDEX, load


@pytest.mark.parametrize("entry", INDEX, ids=[e["file"] for e in INDEX])
async def test_corpus_plan_dry_runs(entry: dict[str, object], inventory: Path) -> None:
    report = await dry_run(load(str(entry["file"])))
    text = render_text(report)
    if entry["valid"]:
        assert report.would_run, text
        assert report.steps and all(s.allowed for s in report.steps)
    else:
        assert not report.would_run
        assert report.problems, "a refusal lists its problems"
        assert f"{len(report.problems)} problem(s)" in text and "0 problem(s)" not in text


def test_failure_prose_is_read_by_the_table() -> None:
    assert interpret_failure_handling("Log error and continue").mode is FailureHandling.CONTINUE
    assert interpret_failure_handling("Attempt rollback to previous state").mode \
        is FailureHandling.ROLLBACK
    assert interpret_failure_handling("Log error and abort").mode is FailureHandling.ABORT
    assert interpret_failure_handling("Log error, do not continue").mode is FailureHandling.ABORT
    unknown = interpret_failure_handling("Check Docker daemon status and container existence")
    assert unknown.mode is FailureHandling.ABORT and unknown.rule.startswith("default")


def test_spec_keeps_failure_text_and_never_uses_execution_location_as_host() -> None:
    req = validate_request(load("rule_check_nginx_and_processes.json"))
    spec = build_spec(req, execution_id="e", workflow_id="w", idempotency_key="k")
    systemctl, ps = spec.steps
    assert ps.failure_handling is FailureHandling.CONTINUE
    assert ps.failure_handling_text == "Log error and attempt alternative process listing method"
    assert systemctl.failure_handling is FailureHandling.ABORT
    assert systemctl.failure_rule.startswith("default")
    assert all(s.execution_location == "automation-service" and s.target is None
               for s in spec.steps)
    assert spec.assets == []
    assert ps.depends_on == [systemctl.id]
    assert ps.depends_on_written == ["step_*_systemctl_*"]


def test_no_input_dropped_from_cli_tools() -> None:
    commands = {}
    for name in ("rule_monitor_nginx_systemctl_ps.json", "rule_troubleshoot_ssh.json",
                 "rule_docker_ps.json", "rule_restart_nginx.json",
                 "rule_complex_config_restart.json"):
        spec = build_spec(validate_request(load(name)), execution_id="e", workflow_id="w",
                          idempotency_key="k")
        commands.update({s.tool + ":" + s.id.rsplit("_", 1)[-1]: s.command for s in spec.steps})
    assert commands["ps:list"] == "ps aux --sort=-pcpu"
    assert commands["systemctl:status"] == "systemctl status --no-pager nginx"
    assert commands["systemctl:restart"] == ("systemctl restart nginx && systemctl status "
                                             "--no-pager nginx")
    assert commands["journalctl:logs"] == ("journalctl --no-pager -n 100 -u ssh --since "
                                           "'1 hour ago' -p warning")
    assert commands["network_tools:netstat"] == "ss -tunlp"
    assert commands["docker:ps"] == "docker ps"
    assert commands["config_manager:validate"] == (
        "cp -p -- /etc/nginx/nginx.conf /etc/nginx/nginx.conf.bak && nginx -t -c "
        "/etc/nginx/nginx.conf")
    with pytest.raises(RequestValidationError) as err:
        validate_request({"tenant": "t", "actor": "a", "environment": "dev", "plan": {"steps": [
            {"id": "s1", "tool": "ps", "inputs": {"format": "detailed", "colour": "red"}},
            {"id": "s2", "tool": "ls", "inputs": {"command": "rm -rf /tmp/x"}}]}})
    paths = {p.path for p in err.value.problems}
    assert "plan.plan.steps[0].inputs.colour" in paths
    assert "plan.plan.steps[1].inputs" in paths


def test_plain_and_malformed_secrets_refused_with_paths() -> None:
    with pytest.raises(RequestValidationError) as err:
        validate_request(load("multistep_doc_plain_password.json"))
    assert any(p.path == "plan.plan.steps[1].inputs.password" and '"type": "secret"' in p.message
               for p in err.value.problems)
    with pytest.raises(RequestValidationError) as err:
        validate_request({"tenant": "t", "actor": "a", "environment": "dev", "plan": {"steps": [
            {"id": "s1", "tool": "http_request", "inputs": {
                "url": "http://x", "headers": {"Authorization": {"type": "secret"}}}}]}})
    assert any(p.path == "plan.plan.steps[0].inputs.headers.Authorization"
               and "`path` is required" in p.message for p in err.value.problems)


def test_execution_location_that_is_a_host_is_refused() -> None:
    with pytest.raises(RequestValidationError) as err:
        validate_request({"tenant": "t", "actor": "a", "environment": "dev", "plan": {"steps": [
            {"id": "s1", "tool": "uptime", "execution_location": "web-1"}]}})
    assert [p.path for p in err.value.problems] == ["plan.plan.steps[0].execution_location"]


def test_wildcard_matching_nothing_and_bad_templates_named() -> None:
    with pytest.raises(RequestValidationError) as err:
        validate_request({"tenant": "t", "actor": "a", "environment": "dev", "plan": {"steps": [
            {"id": "s1", "tool": "uptime", "depends_on": ["step_*_docker_*"]},
            {"id": "s2", "tool": "shell", "inputs": {"command": "echo {{steps.s3.stdout}}"}},
            {"id": "s3", "tool": "shell", "inputs": {"command": "echo {{hostname}}"}}]}})
    msgs = {p.path: p.message for p in err.value.problems}
    assert "matches no step id" in msgs["plan.plan.steps[0].depends_on[0]"]
    assert "runs later" in msgs["plan.plan.steps[1].inputs.command"]
    assert "asset-query" in msgs["plan.plan.steps[2].inputs.command"]


def test_metadata_approval_points_merge_and_unknown_one_refused() -> None:
    req = validate_request(load("rule_complex_config_restart.json"))
    spec = build_spec(req, execution_id="e", workflow_id="w", idempotency_key="k")
    assert {p.step_id for p in spec.approval_points} == set(
        req.plan.execution_metadata.approval_points)  # type: ignore[arg-type]
    req = validate_request(load("approval_points_metadata.json"))
    spec = build_spec(req, execution_id="e", workflow_id="w", idempotency_key="k")
    assert [p.step_id for p in spec.approval_points] == ["step_005_restart_service"]
    assert spec.step("step_002_backup_config").checkpoint
    doc = load("approval_points_metadata.json")
    doc["plan"]["execution_metadata"]["approval_points"] = ["step_999"]  # type: ignore[index]
    with pytest.raises(RequestValidationError) as err:
        validate_request(doc)
    assert err.value.problems[0].path == "plan.execution_metadata.approval_points[0]"


# Why each invalid plan of the corpus is refused: every problem it gets must be that one.
REFUSED_FOR = {
    "dependency_cycle.json": ("a depends_on cycle", "depends_on cycle"),
    "llm_api_axis_example.json": ("a plain-text secret", ".inputs.password"),
    "llm_impacket_explicit_password.json": ("a plain-text secret", ".inputs.password"),
    "llm_linux_ssh_example.json": ("a plain-text secret", ".inputs.password"),
    "multistep_doc_plain_password.json": ("a plain-text secret", ".inputs.password"),
    "llm_multi_machine_wrong.json": ("literal hosts instead of the asset query's results "
                                     "(the planner prompt's own WRONG PLAN)", "target_hosts"),
}


async def test_corpus_refusals_are_for_their_named_reason(inventory: Path) -> None:
    counts = {"clean": 0, "refused for its reason": 0, "refused otherwise": 0}
    for entry in INDEX:
        report = await dry_run(load(str(entry["file"])))
        if report.would_run:
            counts["clean"] += 1
            assert entry["valid"], entry["file"]
            continue
        reason, mark = REFUSED_FOR[str(entry["file"])]
        wrong = [p for p in report.problems if mark not in p.path + " " + p.message
                 and not (mark == "target_hosts" and p.path.endswith(".asset_ids"))]
        counts["refused otherwise" if wrong else "refused for its reason"] += 1
        assert not wrong, (entry["file"], reason, wrong)
    print(f"\ncorpus of {len(INDEX)}: {counts}")
    assert counts == {"clean": 24, "refused for its reason": 6, "refused otherwise": 0}
