"""Upstream's tool catalog as input models and command builders: every input either shapes
what runs or is refused with its field path."""

from __future__ import annotations

from typing import Any

import pytest

from opsconductor.schema.enums import ActionClass, StepKind
from opsconductor.schema.templates import (
    TemplateError,
    expand,
    find_placeholders,
    powershell_quote,
)
from opsconductor.schema.tools import lookup
from opsconductor.schema.validation import RequestValidationError, validate_request


def build(tool: str, inputs: dict[str, Any]) -> tuple[str | None, ActionClass]:
    spec = lookup(tool)
    assert spec is not None
    model = spec.inputs.model_validate(inputs)
    command = spec.build_command(model) if spec.build_command else None
    return command, spec.action_class(model)


def problems(tool: str, inputs: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(RequestValidationError) as err:
        validate_request({"tenant": "t", "actor": "a", "environment": "dev",
                          "plan": {"steps": [{"id": "s", "tool": tool, "inputs": inputs}]}})
    return {p.path.removeprefix("plan.plan.steps[0]."): p.message for p in err.value.problems}


@pytest.mark.parametrize(("tool", "inputs", "command", "ac"), [
    ("file_manager", {"operation": "read", "path": "/etc/x y"}, "cat -- '/etc/x y'",
     ActionClass.READ),
    ("file_manager", {"operation": "backup", "path": "/etc/a", "backup_path": "/tmp/a.bak"},
     "cp -p -- /etc/a /tmp/a.bak", ActionClass.MODIFY),
    ("config_manager", {"operation": "read", "config_file": "/etc/ssh/sshd_config"},
     "cat -- /etc/ssh/sshd_config", ActionClass.READ),
    ("config_manager", {"operation": "validate", "config_file": "/etc/ssh/sshd_config",
                        "syntax_check": True}, "sshd -t -f /etc/ssh/sshd_config",
     ActionClass.READ),
    ("network_tools", {"tool": "ping", "target": "10.0.0.1", "count": 2},
     "ping -c 2 10.0.0.1", ActionClass.READ),
    ("network_tools", {"tool": "netstat", "show_listening": True}, "ss -tunl",
     ActionClass.READ),
    ("info_display", {"info_type": "system_status", "format": "summary"},
     "echo '== uptime'; uptime", ActionClass.READ),
    ("docker", {"operation": "logs", "container": "web", "lines": 50},
     "docker logs --tail 50 web", ActionClass.READ),
    ("docker", {"operation": "restart", "container": "web"}, "docker restart web",
     ActionClass.MODIFY),
    ("ps", {"format": "full", "sort_by": "memory_usage"}, "ps auxww --sort=-pmem",
     ActionClass.READ),
    ("Invoke-Command", {"command": "Write-Host 'Host: x'; Get-ChildItem C:\\"},
     "Write-Host 'Host: x'; Get-ChildItem C:\\", ActionClass.READ),
    ("Invoke-Command", {"command": "Get-Service x | Stop-Service"},
     "Get-Service x | Stop-Service", ActionClass.MODIFY),
    ("Get-Process", {"args": "-Name svchost"}, "Get-Process -Name svchost", ActionClass.READ),
])
def test_builders(tool: str, inputs: dict[str, Any], command: str, ac: ActionClass) -> None:
    assert build(tool, inputs) == (command, ac)


def test_network_tools_target_is_the_probe_not_the_host() -> None:
    req = validate_request({"tenant": "t", "actor": "a", "environment": "dev", "plan": {
        "steps": [{"id": "s", "tool": "network_tools",
                   "inputs": {"tool": "ping", "target": "8.8.8.8", "target_host": "web-1"}}]}})
    assert req.steps[0].target == "web-1"


@pytest.mark.parametrize(("tool", "inputs", "path", "fragment"), [
    ("docker", {"operation": "ps", "follow": True}, "inputs", "never ends"),
    ("docker", {"operation": "logs"}, "inputs", "needs `container`"),
    ("journalctl", {"follow": True}, "inputs.follow", "never ends"),
    ("ps", {"format": "detailed", "colour": "red"}, "inputs.colour", "Extra inputs"),
    ("ls", {"command": "rm -rf /"}, "inputs", "must run 'ls'"),
    ("Get-Service", {"command": "Stop-Service x"}, "inputs", "must run 'Get-Service'"),
    ("config_manager", {"operation": "validate", "config_file": "/etc/app.ini",
                        "syntax_check": True}, "inputs", "no syntax checker"),
    ("asset-query", {"query_type": "get_by_id"}, "inputs", "needs `asset_id`"),
    ("api-request", {"url": "http://x", "username": "root"}, "inputs", "go together"),
    ("api-request", {"url": "http://x", "username": "u", "password": "p"},
     "inputs.password", "plain-text secret refused"),
    ("windows-filesystem-manager", {"target_hosts": ["a", "b"], "command": "Get-ChildItem"},
     "inputs", "one entry"),
    ("psql", {"query": "select 1", "host": "db"}, "inputs.host", "Extra inputs"),
    ("conditional-check", {"condition": "always"}, "inputs.condition", "{{variable}}"),
])
def test_refusals_name_the_field(tool: str, inputs: dict[str, Any], path: str,
                                 fragment: str) -> None:
    found = problems(tool, inputs)
    assert path in found, found
    assert fragment in found[path]


def test_upstream_kinds() -> None:
    assert lookup("asset-query").kind is StepKind.ASSET_QUERY  # type: ignore[union-attr]
    assert lookup("api-request").kind is StepKind.HTTP  # type: ignore[union-attr]
    assert lookup("psql").kind is StepKind.SQL  # type: ignore[union-attr]
    assert lookup("conditional-check").kind is StepKind.VALIDATE  # type: ignore[union-attr]
    assert lookup("Get-ComputerInfo").connector == "automation-service"  # type: ignore[union-attr]
    assert lookup("not-a-tool") is None


def test_templates_are_pure_and_quote_for_their_shell() -> None:
    earlier = [("q", "asset-query")]
    found, bad = find_placeholders({"inputs": {"command": "Get-Item {{item.path}}",
                                               "target_hosts": ["{{ip_address}}"]}},
                                   step_id="s", earlier=earlier, known={"q", "s"})
    assert bad == [] and {p.source for p in found} == {"q"}
    results = {"q": {"output": {"assets": [{"ip_address": "10.0.0.1", "path": "C:\\it's"}]}}}
    (variant,) = expand("s", {"command": "Get-Item {{item.path}}",
                              "target_hosts": ["{{ip_address}}"]},
                        "Get-Item {{item.path}}", None, found, results, powershell_quote)
    assert variant.id == "s#1" and variant.target == "10.0.0.1"
    assert variant.command == "Get-Item 'C:\\it''s'"
    assert variant.inputs == {"command": "Get-Item 'C:\\it''s'", "target_host": "10.0.0.1"}
    with pytest.raises(TemplateError):
        expand("s", {"command": "x {{item.missing}}"}, "x {{item.missing}}", None,
               find_placeholders({"inputs": {"command": "x {{item.missing}}"}}, step_id="s",
                                 earlier=earlier, known={"q", "s"})[0], results)


def test_literal_authorization_header_refused_reference_accepted() -> None:
    assert "inputs.headers.Authorization" in problems(
        "http_request", {"url": "http://x", "headers": {"Authorization": "Bearer abc"}})
    validate_request({"tenant": "t", "actor": "a", "environment": "dev", "plan": {"steps": [
        {"id": "s", "tool": "http_request", "inputs": {
            "url": "http://x",
            "headers": {"Authorization": {"type": "secret", "path": "web/token"}}}}]}})
