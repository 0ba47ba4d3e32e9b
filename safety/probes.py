"""Read-only authority: a step's read tool becomes a typed probe, run as a fixed argument list.

What a principal without `shell` may run is not decided by reading a command line. It is a
catalog of typed, read-only probes (`safety.probe_catalog`): each a fixed absolute program
with fixed flags and `--` before its validated operands (or, on Windows, a fixed cmdlet with
typed parameters). A step is a probe when its tool maps onto one here and every input it
gives fits the probe's parameters; anything else — `shell`, a free-text `command`, a script,
an input the mapping does not consume — is not a probe and needs `shell`, always.

The API (stable; other modules use only these names):

- `PROBES: dict[str, ProbeSpec]` — the catalog, one row per probe (`safety.probe_catalog`).
- `Probe` — a pydantic model of one call: `name`, `params`, `platform`;
  `Probe.argv() -> list[str]` (POSIX: `[program, *args]`, exec'd, no shell);
  `Probe.remote_command() -> str` (that argv quoted once, by us, for an SSH login shell);
  `Probe.powershell_command() -> str` (the cmdlet with its typed parameters rendered as
  single-quoted literals of a charset that cannot close a quote); `Probe.display()`.
- `make_probe(name, params) -> Probe` — validate params against the probe's model
  (`ProbeError` naming the bad field).
- `probe_for(tool, inputs) -> Probe | None` — the probe a step's tool and inputs mean, or None
  (then the step is free text). `ProbeError` when the tool maps onto a probe but a value is
  refused (a path outside the allowed roots, a unit name that is an option, ...).
- `TOOL_PROBES: dict[str, Mapper]` — tool name -> mapper (inputs -> (probe, params) | None);
  adding a tool is one line: `"tool-name": fixed("uptime")`, `fields("journal", unit="unit")`,
  `named("disk_usage")` (inputs named as the probe's parameters), or an exact text form in
  `TEXT_FORMS` (`"df -h"`), see docs/probes.md.
- `Probe.env` — step `env` names a probe may take (`safety.command_env.PROBE_ENV`); any other
  `env`, a `working_directory` or a secret reference makes the step free text.
- `named(probe)`: the mapper for a tool whose inputs are named as the probe's parameters.
- `CONNECTION_KEYS` — inputs that say where the step runs, not what it does (ignored here).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from opsconductor.safety.command_env import probe_env_problems
from opsconductor.safety.probe_catalog import JSON_OUTPUT, PROBES, ProbeSpec
from opsconductor.safety.probe_params import ps_name

__all__ = ["CATALOG_NO_PROBE", "CATALOG_PROBES", "CONNECTION_KEYS", "PROBES", "TOOL_PROBES",
           "Probe", "ProbeError", "ProbeSpec", "catalog_form", "make_probe", "probe_for"]


class ProbeError(ValueError):
    """A step that names a probe with a value the probe refuses: refused, never run as text."""


class Probe(BaseModel):
    """One validated probe call; what runs is derived from it, never from text."""

    model_config = ConfigDict(frozen=True)
    name: str
    params: dict[str, Any]
    platform: Literal["posix", "powershell"]
    env: dict[str, str] = {}  # only `command_env.PROBE_ENV` names (a zone, a locale)

    @property
    def spec(self) -> ProbeSpec:
        return PROBES[self.name]

    def _typed(self) -> Any:
        return self.spec.params.model_validate(self.params)

    def parts(self) -> list[Probe]:
        """A summary's probes, in order (each runs as its own argv); [] for a plain probe."""
        if self.spec.parts is None:
            return []
        return [make_probe(name, params) for name, params in self.spec.parts(self._typed())]

    def argv(self) -> list[str]:
        """The exact argument vector: fixed absolute program, fixed flags, `--`, operands."""
        spec = self.spec
        if spec.parts is not None:
            raise ProbeError(f"probe {self.name} runs several probes: see parts()")
        if spec.program is None:
            raise ProbeError(f"probe {self.name} is a PowerShell cmdlet, not an argv")
        args = spec.build(self._typed())
        assert isinstance(args, list)
        return [spec.program, *args]

    def remote_command(self) -> str:
        """The argv quoted once for the remote login shell (POSIX `sh` word splitting)."""
        return shlex.join(self.argv())

    def powershell_command(self) -> str:
        """`Cmdlet -Name 'value'`: parameters come from typed values whose charset holds no
        quote of any kind (ASCII or typographic), so a literal can never be closed."""
        spec = self.spec
        if spec.cmdlet is None:
            raise ProbeError(f"probe {self.name} is a POSIX program, not a cmdlet")
        parameters = spec.build(self._typed())
        assert isinstance(parameters, dict)
        parts = [spec.cmdlet]
        as_json = bool(parameters.pop(JSON_OUTPUT, False))
        for key, value in parameters.items():
            parts.append(f"-{key}")
            values = value if isinstance(value, list) else [value]
            parts.append(",".join(_ps_literal(v) for v in values))
        return " ".join(parts) + (" | ConvertTo-Json -Depth 4" if as_json else "")

    def display(self) -> str:
        if self.spec.parts is not None:
            return " ; ".join(p.display() for p in self.parts())
        return (shlex.join(self.argv()) if self.platform == "posix"
                else self.powershell_command())


_PS_SAFE = re.compile(r"^[A-Za-z0-9_.*:\\ ()\-]*$")


def _ps_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "$true" if value else "$false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if not _PS_SAFE.match(text):
        raise ProbeError(f"{text!r} cannot be a PowerShell literal of a probe")
    return f"'{text}'"


def make_probe(name: str, params: Mapping[str, Any] | None = None) -> Probe:
    spec = PROBES.get(name)
    if spec is None:
        raise ProbeError(f"unknown probe {name!r}")
    try:
        typed = spec.params.model_validate(dict(params or {}))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'params'}: {e['msg']}"
                             for e in err.errors())
        raise ProbeError(f"probe {name}: {problems}") from None
    return Probe(name=name, params=typed.model_dump(mode="json"), platform=spec.platform)


# ---------------------------------------------------------------- tool -> probe mapping

# Inputs that say where a step runs or how long it may take, not what it does.
CONNECTION_KEYS = frozenset({"target", "target_host", "target_hosts", "host", "computer_name",
                             "server", "username", "port",
                             "connection_type", "use_asset_credentials", "asset_id",
                             "timeout_seconds", "timeout", "idempotent", "use_ssl", "domain",
                             "wait", "interactive"})

Mapped = tuple[str, dict[str, Any]] | None
Mapper = Callable[[dict[str, Any]], Mapped]


def _meaningful(inputs: Mapping[str, Any],
                ignored: frozenset[str] = CONNECTION_KEYS) -> dict[str, Any]:
    """The inputs that say what the step does (defaults of no effect dropped)."""
    out = {}
    for k, v in inputs.items():
        if k in ignored or v is None or v is False or v == [] or v == {}:
            continue
        out[k] = v
    return out


def fixed(probe: str, **params: Any) -> Mapper:
    """The tool means this probe and takes no inputs of its own."""
    return lambda inputs: (probe, dict(params)) if not inputs else None


def fields(probe: str, _defaults: Mapping[str, Any] | None = None,
           **renames: str | Callable[[Any], tuple[str, Any] | None]) -> Mapper:
    """Each input key is renamed onto a probe parameter (or converted by a function that
    returns (param, value), None to drop a no-op value); an unknown key: not this probe."""

    def mapper(inputs: dict[str, Any]) -> Mapped:
        params = dict(_defaults or {})
        for key, value in inputs.items():
            how = renames.get(key)
            if how is None:
                return None
            if callable(how):
                converted = how(value)
                if converted is None:
                    continue
                params[converted[0]] = converted[1]
            else:
                params[how] = value
        return probe, params
    return mapper


def named(probe: str) -> Mapper:
    """The tool's input keys are the probe's own parameter names (a catalog row that names its
    probe joins here with one line: `TOOL_PROBES[tool] = named(probe)`)."""
    allowed = set(PROBES[probe].params.model_fields)
    return lambda inputs: (probe, dict(inputs)) if set(inputs) <= allowed else None


def when(key: str, table: Mapping[Any, Mapper], default: Any = None) -> Mapper:
    """Dispatch on one input's value (`action: status` -> unit_status, ...); `default` is
    the value the tool assumes when the input is absent. Values not in the table: no probe."""

    def mapper(inputs: dict[str, Any]) -> Mapped:
        chosen = table.get(inputs.get(key, default))
        if chosen is None:
            return None
        return chosen({k: v for k, v in inputs.items() if k != key})
    return mapper


# Exact text forms: a planner's `command`/`args` that equals one of these token templates,
# word for word, means that probe. `{name}` is one token that becomes parameter `name`
# (validated by the probe); nothing else is accepted. What runs is the probe's own argv.
Form = tuple[str, str, dict[str, Any]]


def _match(template: list[str], words: list[str]) -> dict[str, str] | None:
    if len(template) != len(words):
        return None
    got: dict[str, str] = {}
    for t, w in zip(template, words, strict=True):
        if t.startswith("{") and t.endswith("}"):
            got[t[1:-1]] = w
        elif t != w:
            return None
    return got


def match_form(text: str | list[str], table: tuple[Form, ...]) -> Mapped:
    try:
        words = shlex.split(text) if isinstance(text, str) else [str(w) for w in text]
    except ValueError:
        return None
    for template, probe, extra in table:
        got = _match(template.split(), words)
        if got is not None:
            params: dict[str, Any] = {**extra}
            for k, v in got.items():
                if k.endswith("#"):
                    params[k[:-1]] = int(v) if v.isdigit() else v
                elif k.endswith("[]"):
                    params[k[:-2]] = [v]
                else:
                    params[k] = v
            return probe, params
    return None


TEXT_FORMS: tuple[Form, ...] = (
    ("uptime", "uptime", {}), ("w", "uptime", {}),
    ("free", "memory", {}), ("free -m", "memory", {}), ("free -h", "memory", {"unit": "human"}),
    ("free -b", "memory", {"unit": "bytes"}), ("free -g", "memory", {"unit": "gibi"}),
    ("df", "disk_usage", {"human": False}), ("df -h", "disk_usage", {}),
    ("df -P", "disk_usage", {"human": False}), ("df -hP", "disk_usage", {}),
    ("df -Ph", "disk_usage", {}), ("df -i", "disk_usage", {"inodes": True, "human": False}),
    ("df -h {paths[]}", "disk_usage", {}), ("df {paths[]}", "disk_usage", {"human": False}),
    ("ps aux", "processes", {}), ("ps -ef", "processes", {}), ("ps -e", "processes", {}),
    ("ps aux --sort=-pcpu", "processes", {"sort": "cpu"}),
    ("ps aux --sort=-%cpu", "processes", {"sort": "cpu"}),
    ("ps aux --sort=-pmem", "processes", {"sort": "memory"}),
    ("ps aux --sort=-%mem", "processes", {"sort": "memory"}),
    ("ps -p {pids#[]}", "processes", {}),
    ("pgrep -a {name}", "process_find", {"exact": False}),
    ("pgrep -x {name}", "process_find", {}),
    ("uname", "kernel", {}), ("uname -a", "kernel", {}), ("uname -r", "kernel", {}),
    ("uname -n", "hostname", {}), ("hostname", "hostname", {}),
    ("cat /etc/os-release", "os_release", {}), ("lsb_release -a", "os_release", {}),
    ("cat /proc/loadavg", "load_average", {}),
    ("whoami", "identity", {}), ("id", "identity", {}), ("who", "logged_in_users", {}),
    ("date", "clock", {}), ("date -u", "clock", {}),
    ("nproc", "cpu_count", {}), ("lscpu", "cpu_info", {}), ("lsblk", "block_devices", {}),
    ("findmnt", "mounts", {}), ("mount", "mounts", {}),
    ("vmstat", "vmstat", {"count": 1}), ("vmstat {delay#} {count#}", "vmstat", {}),
    ("ss -tln", "listening_sockets", {"protocols": "tcp"}),
    ("ss -tlnp", "listening_sockets", {"protocols": "tcp", "processes": True}),
    ("ss -tunl", "listening_sockets", {}), ("ss -tulpn", "listening_sockets",
                                            {"processes": True}),
    ("ss -tunlp", "listening_sockets", {"processes": True}),
    ("ss -lntu", "listening_sockets", {}),
    ("netstat -tlnp", "listening_sockets", {"protocols": "tcp", "processes": True}),
    ("netstat -tulpn", "listening_sockets", {"processes": True}),
    ("netstat -tunlp", "listening_sockets", {"processes": True}),
    ("ip a", "addresses", {}), ("ip addr", "addresses", {}), ("ip addr show", "addresses", {}),
    ("ip -br a", "addresses", {}), ("ip route", "routes", {}), ("ip r", "routes", {}),
    ("ip route show", "routes", {}),
    ("systemctl status {unit}", "unit_status", {}),
    ("systemctl status --no-pager {unit}", "unit_status", {}),
    ("systemctl is-active {unit}", "unit_is_active", {}),
    ("systemctl is-enabled {unit}", "unit_is_enabled", {}),
    ("systemctl --failed", "unit_list", {"state": "failed"}),
    ("systemctl list-units --failed", "unit_list", {"state": "failed"}),
    ("journalctl -u {unit} -n {lines#} --no-pager", "journal", {}),
    ("journalctl -u {unit} -n {lines#}", "journal", {}),
    ("journalctl -n {lines#} --no-pager", "journal", {}),
    ("journalctl -n {lines#}", "journal", {}),
    ("stat {path}", "file_stat", {}), ("ls {path}", "list_directory", {}),
    ("ls -l {path}", "list_directory", {}), ("ls -la {path}", "list_directory", {}),
    ("ls -al {path}", "list_directory", {}),
    ("head {path}", "file_head", {"lines": 10}), ("tail {path}", "file_tail", {"lines": 10}),
    ("head -n {lines#} {path}", "file_head", {}), ("tail -n {lines#} {path}", "file_tail", {}),
    ("cat {path}", "file_head", {"lines": 10_000}),
    ("sha256sum {path}", "file_checksum", {}), ("wc -l {path}", "file_line_count", {}),
    ("getent hosts {name}", "dns_lookup", {}), ("getent ahosts {name}", "dns_lookup", {}),
    ("nslookup {name}", "dns_lookup", {}), ("host {name}", "dns_lookup", {}),
    ("dig {name}", "dns_lookup", {}), ("dig +short {name}", "dns_lookup", {}),
    ("ping -c {count#} {host}", "ping", {}),
    ("curl {url}", "http_health", {}), ("curl -s {url}", "http_health", {}),
    ("curl -sS {url}", "http_health", {}), ("curl -f {url}", "http_health", {}),
    ("curl -sf {url}", "http_health", {}), ("curl -fsS {url}", "http_health", {}),
    ("curl -sSf {url}", "http_health", {}), ("curl -I {url}", "http_health",
                                             {"method": "HEAD"}),
    ("docker ps", "containers", {}), ("docker ps -a", "containers", {"all": True}),
    ("docker ps --all", "containers", {"all": True}),
    ("docker inspect {container}", "container_inspect", {}),
    ("docker logs --tail {lines#} {container}", "container_logs", {}),
    ("dpkg-query -W {package}", "package_version", {}),
    ("rpm -q {package}", "package_version_rpm", {}),
)


def _text(inputs: dict[str, Any], tool: str) -> Mapped:
    """A whole `command` line, or `args` after the tool's name, in an exact text form."""
    command, args = inputs.get("command"), inputs.get("args")
    rest = {k: v for k, v in inputs.items() if k not in ("command", "args")}
    if rest or (command is None) == (args is None):
        return None
    if command is not None:
        return match_form(str(command), TEXT_FORMS)
    words = shlex.split(args) if isinstance(args, str) else [str(a) for a in args or ()]
    return match_form([*tool.split(), *words], TEXT_FORMS)


def text_or(typed: Mapper | None = None) -> Callable[[str], Mapper]:
    """A tool whose inputs are typed (`typed`), or a `command`/`args` in an exact form."""
    def for_tool(tool: str) -> Mapper:
        def mapper(inputs: dict[str, Any]) -> Mapped:
            if "command" in inputs or "args" in inputs:
                return _text(inputs, tool)
            if typed is None:
                return _text({"args": [], **inputs}, tool)
            return typed(inputs)
        return mapper
    return for_tool


# PowerShell text forms: exact, anchored; names and properties of the probes' charsets.
_PS_WORD = r"[A-Za-z0-9_.*\-]+"
PS_FORMS: tuple[tuple[re.Pattern[str], str, Callable[[re.Match[str]], dict[str, Any]]], ...] = (
    (re.compile(rf"^Get-Service(?:\s+(?:-Name\s+)?(?P<n>{_PS_WORD}(?:\s*,\s*{_PS_WORD})*))?$"),
     "ps_get_service", lambda m: {"names": _ps_list(m["n"])}),
    (re.compile(rf"^Get-Process(?:\s+(?:-Name\s+)?(?P<n>{_PS_WORD}(?:\s*,\s*{_PS_WORD})*))?$"),
     "ps_get_process", lambda m: {"names": _ps_list(m["n"])}),
    (re.compile(r"^Get-ComputerInfo(?:\s*\|\s*Select-Object\s+(?:-Property\s+)?"
                r"(?P<p>[A-Za-z][A-Za-z0-9_]*(?:\s*,\s*[A-Za-z][A-Za-z0-9_]*)*))?$"),
     "ps_get_computer_info", lambda m: {"properties": _ps_list(m["p"])}),
    (re.compile(r"^Get-ChildItem\s+(?:-(?:Literal)?Path\s+)?(?P<q>['\"]?)"
                r"(?P<path>[A-Za-z]:\\[A-Za-z0-9_. ()\\\-]*)(?P=q)$"),
     "ps_get_child_item", lambda m: {"path": m["path"]}),
    (re.compile(r"^Get-Volume(?:\s+-DriveLetter\s+(?P<d>[A-Za-z]))?"
                r"(?P<j>\s*\|\s*ConvertTo-Json)?$"), "ps_get_volume",
     lambda m: {"drive_letter": m["d"], "as_json": bool(m["j"])}),
    (re.compile(r"^Get-HotFix$"), "ps_get_hotfix", lambda m: {}),
    (re.compile(r"^Resolve-DnsName\s+(?:-Name\s+)?(?P<n>[A-Za-z0-9.\-]+)$"), "ps_dns_lookup",
     lambda m: {"name": m["n"]}),
    (re.compile(r"^Test-Connection\s+(?:-ComputerName\s+)?(?P<h>[A-Za-z0-9.\-]+)"
                r"\s+-Count\s+(?P<c>\d{1,2})$"), "ps_ping",
     lambda m: {"host": m["h"], "count": int(m["c"])}),
)


def _ps_list(text: str | None) -> list[str]:
    return [ps_name(x.strip()) for x in text.split(",")] if text else []


def ps_form(line: str) -> Mapped:
    line = line.strip()
    for pattern, probe, params in PS_FORMS:
        m = pattern.match(line)
        if m:
            return probe, params(m)
    return None


def cmdlet(probe: str) -> Mapper:
    """A cmdlet tool (`Get-Service`, ...): no inputs, `args` naming things, or an exact line."""
    def mapper(inputs: dict[str, Any]) -> Mapped:
        line = inputs.get("command") or inputs.get("script")
        rest = {k: v for k, v in inputs.items() if k not in ("command", "script", "args")}
        if rest:
            return None
        if line is not None:
            return ps_form(str(line))
        spec = PROBES[probe]
        if inputs.get("args") is not None:
            return ps_form(f"{spec.cmdlet} {inputs['args']}")
        return probe, {}
    return mapper


def powershell_line(inputs: dict[str, Any]) -> Mapped:
    """A generic PowerShell tool (`Invoke-Command`, ...): only an exact probe line."""
    line = inputs.get("command") or inputs.get("script")
    rest = {k: v for k, v in inputs.items() if k not in ("command", "script")}
    if rest or line is None:
        return None
    return ps_form(str(line))


def _priority(v: Any) -> tuple[str, Any]:
    return "priority", {"error": "err", "warn": "warning"}.get(v, v)


def _drop(v: Any) -> None:
    return None


_SYSTEMCTL = when("action", {
    "status": fields("unit_status", unit="unit", service="unit", check_status=_drop),
    "is-active": fields("unit_is_active", unit="unit", service="unit"),
    "is-enabled": fields("unit_is_enabled", unit="unit", service="unit"),
    "show": fields("unit_show", unit="unit", service="unit"),
}, default="status")
_PS_TOOL = fields("processes", {}, format=_drop, filter=_drop, sort_by=lambda v: (
    "sort", {"cpu_usage": "cpu", "memory_usage": "memory"}.get(v, v)))
_DOCKER = when("operation", {
    "ps": fields("containers", all="all"),
    "inspect": fields("container_inspect", container="container"),
    "logs": fields("container_logs", container="container", lines="lines"),
})
_NETWORK = when("tool", {
    "ping": fields("ping", destination="host", count="count"),
    "netstat": fields("listening_sockets", show_listening=_drop,
                      show_processes=lambda v: ("processes", bool(v)),
                      destination=lambda v: None if v == "localhost" else ("bad", v)),
    "nslookup": fields("dns_lookup", destination="name"),
    "dig": fields("dns_lookup", destination="name"),
})


def _netstat_listening(mapper: Mapper) -> Mapper:
    """netstat without `show_listening` lists every connection: not the sockets probe."""
    def guarded(inputs: dict[str, Any]) -> Mapped:
        if inputs.get("tool") == "netstat" and not inputs.get("show_listening"):
            return None
        return mapper(inputs)
    return guarded


def _read_op(probe: str, key: str) -> Mapper:
    return when("operation", {"read": fields(probe, {"lines": 10_000}, **{key: "path"})},
                default="read")


_TEXT_TOOLS = ("df", "free", "uptime", "uname", "hostname", "whoami", "id", "date", "ls", "cat",
               "head", "tail", "stat", "ss", "netstat", "ip", "lsblk", "mount", "vmstat", "who",
               "w", "nproc", "lscpu", "ping", "dig", "nslookup", "host", "curl", "pgrep",
               "getent", "findmnt", "sha256sum", "wc", "lsb_release", "dpkg-query", "rpm")

TOOL_PROBES: dict[str, Mapper] = {
    **{name: text_or()(name) for name in _TEXT_TOOLS},
    "ssh_command_read": lambda i: _text(i, ""),
    "systemctl": text_or(_SYSTEMCTL)("systemctl"),
    "journalctl": text_or(fields("journal", unit="unit", lines="lines", since="since",
                                 priority=_priority))("journalctl"),
    "ps": text_or(_PS_TOOL)("ps"),
    "docker": text_or(_DOCKER)("docker"),
    "network_tools": _netstat_listening(_NETWORK),
    "info_display": fields("system_summary", info_type="info_type", format="format",
                           include_metrics="include_metrics"),
    # upstream's catalog names for container reads: `args` follow `docker <verb>`
    "docker-ps": text_or(fields("containers", all="all"))("docker ps"),
    "docker-inspect": text_or(fields("container_inspect", container="container"))(
        "docker inspect"),
    "docker-logs": text_or(fields("container_logs", container="container", lines="lines"))(
        "docker logs"),
    "file_manager": _read_op("file_head", "path"),
    "config_manager": _read_op("file_head", "config_file"),
    "Get-Service": cmdlet("ps_get_service"),
    "Get-Process": cmdlet("ps_get_process"),
    "Get-ComputerInfo": cmdlet("ps_get_computer_info"),
    "Get-ChildItem": cmdlet("ps_get_child_item"),
    "Get-Volume": cmdlet("ps_get_volume"),
    "Get-HotFix": cmdlet("ps_get_hotfix"),
    "Get-WinEvent": cmdlet("ps_get_winevent"),
    "Get-NetTCPConnection": cmdlet("ps_listening_ports"),
    "Resolve-DnsName": cmdlet("ps_dns_lookup"),
    "Test-Connection": cmdlet("ps_ping"),
    "Invoke-Command": powershell_line,
    "powershell": powershell_line,
    "windows-filesystem-manager": powershell_line,
}


# ------------------------------------------------- upstream's catalog, in the catalog's form

# Upstream's connection inputs (schema.catalog.CONNECTION_INPUTS) say where a catalog tool runs;
# in the catalog's form `target` is what the tool acts on (ping's destination, grep's file),
# and `domain` is dig's name to resolve. A key a mapper does not name: not a probe.
CATALOG_CONNECTION_KEYS = frozenset({"host", "target_host", "computer_name", "server",
                                     "use_asset_credentials", "asset_id", "connection_type",
                                     "timeout", "username"})


def _only(value: Any, *accepted: Any) -> Callable[[Any], None]:
    """An input whose accepted values change nothing the probe does (dropped); any other
    value: not this probe (free text, so it needs `shell`)."""
    def check(v: Any) -> None:
        if v not in accepted:
            raise ValueError(f"{value}={v!r} is not what the probe does")
    return check


def _sort(v: Any) -> tuple[str, Any]:
    return "sort", {"mem": "memory", "memory_usage": "memory", "cpu_usage": "cpu",
                    "%cpu": "cpu", "%mem": "memory"}.get(v, v)


def _csv(param: str) -> Callable[[Any], tuple[str, Any]]:
    return lambda v: (param, [x.strip() for x in str(v).split(",") if x.strip()])


_CATALOG_FIXED: dict[str, tuple[str, dict[str, Any]]] = {
    "podman-ps": ("podman_containers", {}),
    # as upstream runs them (a bare program): the same output
    "pg_isready": ("pg_ready", {}), "free": ("memory", {"unit": "kibi"}),
    "hostname": ("hostname", {}), "id": ("identity", {}), "whoami": ("user_name", {}),
    "ifconfig": ("addresses", {}),
    "ip": ("addresses", {}), "lsb_release": ("os_release", {}),
    "netstat": ("listening_sockets", {}), "ss": ("listening_sockets", {}),
    "systemd-timer": ("unit_list", {"type": "timer", "state": "all"}),
    "uname": ("kernel_name", {}), "uptime": ("uptime", {}),
    "Get-ComputerInfo": ("ps_get_computer_info", {}), "Get-HotFix": ("ps_get_hotfix", {}),
    "Get-NetTCPConnection": ("ps_listening_ports", {}), "Get-Process": ("ps_get_process", {}),
    "Get-Service": ("ps_get_service", {}), "Get-Volume": ("ps_get_volume", {}),
    "Get-WinEvent": ("ps_get_winevent", {}), "Get-EventLog": ("ps_get_eventlog", {}),
    "Get-Counter": ("ps_get_counter", {}), "Get-Disk": ("ps_get_disk", {}),
    "Get-NetAdapter": ("ps_net_adapters", {}), "Get-NetIPAddress": ("ps_ip_addresses", {}),
    "Get-NetIPConfiguration": ("ps_ip_configuration", {}),
    "Get-NetRoute": ("ps_net_routes", {}), "Get-LocalUser": ("ps_local_users", {}),
    "Get-LocalGroup": ("ps_local_groups", {}), "Get-ScheduledTask": ("ps_scheduled_tasks", {}),
    "Get-ADUser": ("ps_ad_users", {}), "Get-ADComputer": ("ps_ad_computers", {}),
    "Get-ADGroup": ("ps_ad_groups", {}), "systeminfo": ("ps_systeminfo", {}),
    "tasklist": ("ps_tasklist", {}), "ipconfig": ("ps_ipconfig", {}),
}

# A catalog tool in the catalog's form (its inputs as the catalog names them, built by
# upstream's convention as an argv) -> its probe. One line per tool; docs/probes.md lists the
# read tools that have none, and why.
CATALOG_PROBES: dict[str, Mapper] = {
    **{tool: fixed(probe, **params) for tool, (probe, params) in _CATALOG_FIXED.items()},
    # also as upstream's planner writes them, with `args` after `docker <verb>`
    "docker-ps": TOOL_PROBES["docker-ps"], "docker-inspect": TOOL_PROBES["docker-inspect"],
    "docker-logs": TOOL_PROBES["docker-logs"],
    "curl": fields("http_health", url="url", timeout_seconds="timeout_seconds",
                   insecure="insecure", follow_redirects="follow_redirects"),
    "df": fields("disk_usage", {"human": False}, human_readable="human",
                 show_inodes="inodes", check_inodes="inodes", show_type="show_type",
                 exclude_type=_csv("exclude_types"), exclude_types=_csv("exclude_types"),
                 filesystem_type=_csv("types"), filesystem=lambda v: ("paths", [v])),
    "dig": fields("dns_lookup", domain="name", short_output=_drop),
    "find": fields("file_find", path="path", name_pattern="name",
                   case_insensitive="ignore_case", max_depth="max_depth",
                   file_type=lambda v: ("type", {"file": "f", "directory": "d",
                                                 "link": "l"}.get(v, v)),
                   size_criteria="size", owner="owner", group="group"),
    "grep": fields("file_grep", pattern="pattern", target="path", log_path="path",
                   case_insensitive="ignore_case", line_numbers="line_numbers",
                   context_lines="context", count_only="count_only",
                   fixed_string="fixed_string", invert_match="invert", word_match="word",
                   max_matches="max_matches"),
    "journalctl": fields("journal", service_name="unit", lines="lines", priority=_priority,
                         since="since", until="until", kernel_only="kernel"),
    "ls": fields("list_directory", path="path", show_hidden=_drop, long_format=_drop,
                 human_readable="human", sort_by="sort"),
    "ping": fields("ping", target="host", count="count", timeout_seconds="timeout_seconds"),
    "ps": fields("processes", format=_only("format", "aux", "full", "detailed"),
                 sort_by=_sort, pid=lambda v: ("pids", [v])),
    "top": fields("processes", iterations=_only("iterations", 1), sort_by=_sort),
    "Get-ChildItem": fields("ps_get_child_item", path="path"),
    "Get-Content": fields("ps_get_content", path="path", head="head", tail="tail"),
    "Get-Item": fields("ps_get_item", path="path"),
    "Select-String": fields("ps_select_string", pattern="pattern", path="path"),
    "Test-Connection": fields("ps_ping", ComputerName="host", Count="count"),
}


_NO_OPERAND = "the catalog declares no input naming {what} (only `host`): only a free-text " \
              "`command` could"
# Catalog read tools we run ourselves that no probe can be: why, each. They need `shell`
# (docs/probes.md and docs/catalog.md list them).
CATALOG_NO_PROBE: dict[str, str] = {
    **{t: _NO_OPERAND.format(what="the container") for t in ("docker-inspect", "docker-logs")},
    **{t: _NO_OPERAND.format(what="the file") for t in ("cat", "head", "tail", "Get-FileHash",
                                                       "Test-Path", "Get-Acl")},
    **{t: _NO_OPERAND.format(what="the name to resolve") for t in ("host", "nslookup",
                                                                  "Resolve-DnsName")},
    **{t: _NO_OPERAND.format(what="the destination") for t in ("traceroute", "tracert",
                                                              "Test-NetConnection")},
    "ping": "on Windows the catalog declares only `host` (the linux form names `target`)",
    "pgrep": _NO_OPERAND.format(what="the process"),
    "du": _NO_OPERAND.format(what="the directory") + "; du of the working directory reads "
          "any tree",
    "Get-ADGroupMember": _NO_OPERAND.format(what="the group"),
    **{t: "kubectl: no resource input, and its kubeconfig can run any program (exec "
          "credential plugins)" for t in ("kubectl-get", "kubectl-describe", "kubectl-logs")},
    **{t: "a text filter of its input (stdin or files named by free text); `sort -o` and "
          "`uniq IN OUT` write files" for t in ("cut", "sort", "uniq")},
    **{t: "a pipeline stage: does something only inside a free-text PowerShell pipeline"
       for t in ("Select-Object", "Sort-Object")},
    **{t: "queries any WMI/CIM class by free-text name or WQL, including credential stores"
       for t in ("Get-CimInstance", "Get-WmiObject")},
}


def _declared(tool: str) -> frozenset[str]:
    """The input names the catalog declares for a tool (`target` is ping's destination)."""
    from opsconductor.schema.catalog import by_name

    return frozenset(k for row in by_name().get(tool, ()) for k in row.inputs)


def catalog_form(tool: str, inputs: Mapping[str, Any]) -> bool:
    """The step is a catalog tool in the catalog's form (schema.tools decides, by names)."""
    from opsconductor.schema.tools import lookup

    spec = lookup(tool, dict(inputs))
    return spec is not None and spec.catalog is not None


def probe_for(tool: str, inputs: Mapping[str, Any] | None) -> Probe | None:
    """The probe this step means, or None: not a probe (free text), so it needs `shell`.

    A step in the catalog's form is read by `CATALOG_PROBES` (its connection inputs set
    aside) alone; our own tools' table `TOOL_PROBES` reads the rest. Both yield typed probes
    only. Raises `ProbeError` when the tool's inputs name a probe with a value it
    refuses."""
    mapper, ignored = TOOL_PROBES.get(tool), CONNECTION_KEYS
    if catalog_form(tool, inputs or {}) and tool in CATALOG_PROBES:
        mapper = CATALOG_PROBES[tool]
        ignored = CATALOG_CONNECTION_KEYS | (CONNECTION_KEYS - _declared(tool))
    return None if mapper is None else _mapped(mapper, inputs or {}, ignored)


def _mapped(mapper: Mapper, inputs: Mapping[str, Any], ignored: frozenset[str]
            ) -> Probe | None:
    meaningful = _meaningful(inputs, ignored)
    env = meaningful.pop("env", None) or {}
    if meaningful.get("working_directory") or not isinstance(env, dict) \
            or probe_env_problems(env):
        return None  # where a probe runs is fixed, and what it sees beyond PROBE_ENV names
    if any(isinstance(v, dict) and v.get("type") == "secret" for v in meaningful.values()):
        return None
    try:
        mapped = mapper(meaningful)
    except (ValueError, TypeError, KeyError):
        return None
    if mapped is None:
        return None
    name, params = mapped
    probe = make_probe(name, params)
    return probe.model_copy(update={"env": dict(env)}) if env else probe
