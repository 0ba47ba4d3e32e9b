"""The probe layer as pure logic: fixed argv shapes, typed refusals, the tool -> probe table,
PowerShell rendering, the reset environment and the worker's own secrets."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from opsconductor.activities.authorization import operation_of
from opsconductor.safety.command_env import (
    PROBE_HOME,
    SECURE_PATH,
    command_env,
    probe_env_problems,
    worker_held_secrets,
)
from opsconductor.safety.probes import PROBES, ProbeError, make_probe, probe_for

UP = "." * 2  # a parent-directory segment inside attack values (spelt so: no path of ours)

# Minimal valid parameters for the probes that need some.
SAMPLE: dict[str, dict[str, Any]] = {
    "unit_status": {"unit": "nginx.service"}, "unit_is_active": {"unit": "nginx"},
    "unit_is_enabled": {"unit": "nginx"}, "unit_show": {"unit": "nginx"},
    "process_find": {"name": "nginx"}, "file_stat": {"path": "/etc/hostname"},
    "file_head": {"path": "/var/log/syslog"}, "file_tail": {"path": "/var/log/syslog"},
    "list_directory": {"path": "/tmp"}, "file_checksum": {"path": "/etc/hosts"},
    "file_line_count": {"path": "/etc/hosts"}, "dns_lookup": {"name": "example.org"},
    "ping": {"host": "127.0.0.1"}, "tcp_connect": {"host": "127.0.0.1", "port": 22},
    "http_health": {"url": "http://127.0.0.1:8080/healthz"},
    "container_inspect": {"container": "web"}, "container_logs": {"container": "web"},
    "package_version": {"package": "openssl"}, "package_version_rpm": {"package": "openssl"},
    "ps_get_child_item": {"path": "C:\\Windows\\Logs"}, "ps_ping": {"host": "win-1"},
    "ps_dns_lookup": {"name": "example.org"}, "ps_tcp_connect": {"host": "db", "port": 5432},
    "disk_usage": {"paths": ["/var"]}, "processes": {"pids": [1]},
    "file_find": {"path": "/var/log", "name": "*.log", "size": "+100M"},
    "file_grep": {"pattern": "-e ERROR", "path": "/var/log/app.log"},
    "ps_get_content": {"path": "C:\\Temp\\report.txt"},
    "ps_get_item": {"path": "C:\\Temp\\report.txt"},
    "ps_select_string": {"pattern": "ERROR", "path": "C:\\Windows\\Logs\\cbs.log"},
}


@pytest.mark.parametrize("name", sorted(n for n in PROBES if PROBES[n].parts is None))
def test_every_probe_is_a_fixed_program_with_operands_after_dashdash(name: str) -> None:
    probe = make_probe(name, SAMPLE.get(name, {}))
    if probe.platform == "powershell":
        line = probe.powershell_command()
        assert line.split()[0] == PROBES[name].cmdlet
        assert not any(c in line for c in ";|&`$\n\"") or "$true" in line
        return
    argv = probe.argv()
    assert argv[0].startswith("/") and argv[0] == PROBES[name].program
    operands = [str(v) for v in SAMPLE.get(name, {}).values() if isinstance(v, str)]
    for operand in operands:
        assert "--" in argv and argv.index("--") < argv.index(operand), argv
    # quoted once for a remote shell, it splits back into exactly the argv
    assert shlex.split(probe.remote_command()) == argv


TOOLS = [
    ("df", {}, "disk_usage"), ("df", {"args": "-h"}, "disk_usage"),
    ("free", {"args": ["-m"]}, "memory"), ("uptime", {}, "uptime"), ("uname", {"args": "-a"},
                                                                       "kernel"),
    ("ps", {"format": "detailed", "sort_by": "cpu_usage"}, "processes"),
    ("ps", {"args": "aux"}, "processes"),
    ("systemctl", {"action": "status", "service": "nginx"}, "unit_status"),
    ("systemctl", {"action": "is-active", "unit": "nginx"}, "unit_is_active"),
    ("journalctl", {"unit": "ssh", "lines": 100, "priority": "warning",
                    "since": "1 hour ago"}, "journal"),
    ("docker", {"operation": "ps"}, "containers"),
    ("docker", {"operation": "logs", "container": "web", "lines": 50}, "container_logs"),
    ("network_tools", {"tool": "ping", "destination": "127.0.0.1", "count": 4}, "ping"),
    ("network_tools", {"tool": "netstat", "show_listening": True, "show_processes": True},
     "listening_sockets"),
    ("config_manager", {"operation": "read", "config_file": "/etc/nginx/nginx.conf"},
     "file_head"),
    ("ssh_command_read", {"command": "uptime"}, "uptime"),
    ("ls", {"command": "ls -la /tmp"}, "list_directory"),
    ("cat", {"args": ["/etc/os-release"]}, "os_release"),
    ("curl", {"args": ["-sf", "http://127.0.0.1:8080/health"]}, "http_health"),
    ("docker-ps", {"args": "-a"}, "containers"),
    ("docker-logs", {"container": "web", "lines": 20}, "container_logs"),
    ("Get-Service", {}, "ps_get_service"), ("Get-Service", {"args": "nginx,W32Time"},
                                            "ps_get_service"),
    ("Get-ComputerInfo", {"command": "Get-ComputerInfo | Select-Object CsName, OsName"},
     "ps_get_computer_info"),
    ("Invoke-Command", {"command": "Get-ChildItem C:\\"}, "ps_get_child_item"),
]


@pytest.mark.parametrize(("tool", "inputs", "probe"), TOOLS, ids=[f"{t[0]}-{i}" for i, t in
                                                                  enumerate(TOOLS)])
def test_read_tools_map_onto_probes(tool: str, inputs: dict[str, Any], probe: str) -> None:
    found = probe_for(tool, {**inputs, "target": "web-1", "timeout_seconds": 5})
    assert found is not None and found.name == probe


NOT_PROBES = [
    ("shell", {"command": "uptime"}), ("bash", {"command": "df -h"}),
    ("ssh_command_read", {"command": "uptime; touch /tmp/m"}),
    ("ssh_command_read", {"command": "/tmp/x/uptime"}),
    ("ssh_command_read", {"command": "uptime", "env": {"PATH": "/tmp/x"}}),
    ("ssh_command_read", {"command": "uptime", "working_directory": "/tmp/x"}),
    ("systemctl", {"action": "restart", "service": "nginx"}),
    ("systemctl", {"command": "systemctl -p status stop sshd"}),
    ("docker", {"args": "--config ps run --privileged -v /:/host alpine chroot /host id"}),
    ("docker", {"operation": "restart", "container": "web"}),
    ("curl", {"args": ["-s", "-H=", "-o/root/.ssh/authorized_keys", "http://h/key"]}),
    ("journalctl", {"command": "journalctl -n --vacuum-time=1s"}),
    ("ss", {"args": "-tK"}), ("ping", {"args": "-f -s 65507 127.0.0.1"}),
    ("Get-Service", {"command": "echo 'x\u2019; Stop-Computer; \u2018y'"}),
    ("Get-Process", {"command": "Get-Process | Stop-Process"}),
    ("file_manager", {"operation": "write", "path": "/tmp/x", "content": "y"}),
    ("uptime", {"command": "uptime", "env": {"TZ": ":/proc/self/environ"}}),
]


@pytest.mark.parametrize(("tool", "inputs"), NOT_PROBES, ids=[str(i) for i in
                                                              range(len(NOT_PROBES))])
def test_free_text_and_changes_are_not_probes_and_need_shell(tool: str,
                                                            inputs: dict[str, Any]) -> None:
    try:
        assert probe_for(tool, inputs) is None
    except ProbeError:
        pass
    op = operation_of(tool, "text", inputs=inputs)
    assert op.probe is None and "shell" in op.tools


REFUSED = [
    ("unit_status", {"unit": "--root=/tmp"}), ("unit_status", {"unit": "nginx; id"}),
    ("file_head", {"path": "/proc/self/environ"}), ("file_head", {"path": "/proc/1/environ"}),
    ("file_head", {"path": f"/var/log/{UP}/{UP}/etc/shadow"}),
    ("file_head", {"path": "/etc/shadow"}),
    ("file_head", {"path": "/etc/nginx/ssl/server.key"}), ("file_head", {"path": "var/log/x"}),
    ("list_directory", {"path": "/root/.ssh"}), ("ping", {"host": "-oProxyCommand=id"}),
    ("ping", {"host": "127.0.0.1", "count": 100000}),
    ("journal", {"lines": 10_000_000}), ("journal", {"since": "$(id)"}),
    ("http_health", {"url": "gopher://127.0.0.1:2375/_POST"}),
    ("http_health", {"url": "dict://127.0.0.1:6379/FLUSHALL"}),
    ("http_health", {"url": "file:///proc/self/environ"}),
    ("http_health", {"url": "http://a:b@127.0.0.1/"}),
    ("ps_get_service", {"names": ["x'; Stop-Computer; 'y"]}),
    ("ps_get_service", {"names": ["x\u2019; Stop-Computer"]}),
    ("ps_get_child_item", {"path": "C:\\Users\\admin\\secrets"}),
    ("vmstat", {"count": 100000}), ("processes", {"sort": "--write"}),
    ("disk_usage", {"paths": ["-x"]}), ("unit_status", {"unit": "nginx", "extra": 1}),
]


@pytest.mark.parametrize(("name", "params"), REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_bad_values_are_refused_with_the_field_named(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(ProbeError, match=name):
        make_probe(name, params)


def test_a_text_form_is_exact_word_for_word() -> None:
    assert probe_for("df", {"command": "df -h"}) is not None
    assert probe_for("df", {"command": "df -h -x /"}) is None
    with pytest.raises(ProbeError, match="option"):  # the form fits, the value does not
        probe_for("df", {"command": "df -h -x"})
    assert probe_for("df", {"command": "df  -h"}) is not None  # words, not bytes
    assert probe_for("cat", {"args": ["/var/log/syslog", "/etc/shadow"]}) is None


def test_probe_env_takes_only_zone_and_locale_names() -> None:
    assert probe_env_problems({"TZ": "Europe/Paris", "LC_ALL": "C.UTF-8"}) == []
    for bad in ({"PATH": "/tmp"}, {"LD_PRELOAD": "/tmp/x.so"}, {"TZ": ":/proc/self/environ"},
                {"LANG": f"{UP}/{UP}/tmp/x"}, {"BASH_FUNC_uptime%%": "() { id; }"}):
        assert probe_env_problems(bad), bad
    probe = probe_for("uptime", {"env": {"TZ": "UTC"}})
    assert probe is not None and probe.env == {"TZ": "UTC"}


def test_commands_never_see_the_worker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSC_DATABASE_URL", "postgresql://u:canary-pw@db/x")
    monkeypatch.setenv("VAULT_TOKEN", "canary-token")
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    for probe in (True, False):
        env = command_env({"FOO": "bar"}, probe=probe)
        assert env["PATH"] == SECURE_PATH and env["FOO"] == "bar"
        assert not {"OPSC_DATABASE_URL", "VAULT_TOKEN", "LD_PRELOAD"} & set(env)
    assert command_env({}, probe=True)["HOME"] == PROBE_HOME


def test_what_the_worker_holds_is_registered_for_masking() -> None:
    class S:
        vault_token = None
        asset_service_token = None
        alert_webhook_secret = None
        database_url = "postgresql://opsc:s3cr%40t-pw@db:5432/opsc"
        test_database_url = None

    held = worker_held_secrets(S(), {"MY_API_KEY": "k-123456789", "OPSC_HOME": "/x"})
    assert "s3cr@t-pw" in held and "s3cr%40t-pw" in held and "k-123456789" in held
    assert "/x" not in held


def test_a_catalog_tool_joins_its_probe_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from opsconductor.safety import probes

    monkeypatch.setitem(probes.TOOL_PROBES, "disk-usage-tool", probes.named("disk_usage"))
    found = probe_for("disk-usage-tool", {"paths": ["/var"], "target_host": "web-1"})
    assert found is not None and found.argv()[-2:] == ["--", "/var"]
    assert probe_for("disk-usage-tool", {"command": "df -h"}) is None  # not its parameters


def test_a_summary_is_several_probes_never_one_line() -> None:
    probe = probe_for("info_display", {"info_type": "diagnostic_info", "include_metrics": True})
    assert probe is not None and probe.name == "system_summary"
    names = [p.name for p in probe.parts()]
    assert names == ["kernel", "uptime", "disk_usage", "memory", "journal", "load_average"]
    assert all(p.argv()[0].startswith("/") for p in probe.parts())
    with pytest.raises(ProbeError, match="several"):
        probe.argv()


def test_the_workers_masker_hides_what_the_worker_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    from opsconductor.safety.masking import Masker
    from opsconductor.schema.config import Settings

    monkeypatch.setenv("OPSC_VAULT_TOKEN", "hvs.worker-vault-token-1234")
    settings = Settings(database_url="postgresql://opsc:db-pass-98765@db/opsc")
    masker = Masker.from_settings(settings).with_secrets(worker_held_secrets(settings))
    out = masker.mask_text("pw db-pass-98765 token hvs.worker-vault-token-1234")
    assert "db-pass-98765" not in out and "worker-vault-token" not in out


CATALOG_FORM_ATTACKS = [
    ("grep", {"pattern": "x", "target": "/proc/self/environ"}),
    ("grep", {"pattern": "x", "target": f"/var/log/{UP}/{UP}/etc/shadow"}),
    ("grep", {"pattern": "x", "target": "/var/log", "recursive": True}),
    ("grep", {"pattern": "x\n--file=/etc/shadow", "target": "/var/log/syslog"}),
    ("find", {"path": "/"}), ("find", {"path": "/root/.ssh"}),
    ("find", {"path": "/var/log", "name_pattern": "x' -exec touch y ;"}),
    ("find", {"path": "/var/log", "owner": "-exec"}),
    ("ls", {"path": "/var/log", "sort_by": "--dired"}),
    ("curl", {"url": "gopher://127.0.0.1:6379/_FLUSHALL"}),
    ("curl", {"url": "http://127.0.0.1/", "output_file": "/tmp/x"}),
    ("journalctl", {"service_name": "nginx", "action": "vacuum"}),
    ("journalctl", {"service_name": "--vacuum-time=1s"}),
    ("ps", {"format": "-o pid= -e", "sort_by": "cpu"}),
    ("top", {"iterations": 0}),
    ("df", {"exclude_type": "tmpfs --output=/tmp/x"}),
    ("Get-Content", {"path": "C:\\Temp\\x.txt:stream"}),
    ("Get-Content", {"path": "C:\\Users\\admin\\Desktop\\passwords.txt"}),
    ("Get-Content", {"path": "C:\\ProgramData\\app\\config.xml"}),
    ("Select-String", {"pattern": "x'; Stop-Computer; '", "path": "C:\\Temp\\r.txt"}),
    ("Get-ChildItem", {"path": "C:\\Windows\\..\\Users"}),
]


@pytest.mark.parametrize(("tool", "inputs"), CATALOG_FORM_ATTACKS,
                         ids=[f"{t}-{i}" for i, (t, _) in enumerate(CATALOG_FORM_ATTACKS)])
def test_catalog_form_values_outside_a_probe_are_not_probes(tool: str,
                                                          inputs: dict[str, Any]) -> None:
    """A catalog tool's input that a probe cannot take bounded — a secret or outside path, an
    option as a value, a write or an action — never becomes a probe: it needs `shell`."""
    op = operation_of(tool, "text", inputs={"host": "web-1", **inputs})
    assert op.probe is None and "shell" in op.tools, (tool, inputs, op)
