"""The upstream planner's tool catalog (andrewcho-dev/opsconductor-ng), mapped to our kinds.

Inputs are the ones upstream's planners write: its LLM planner prompt
(`pipeline/stages/stage_c/planner.py`: PowerShell/WinRM, Impacket, Linux/SSH, API requests,
asset-query with template variables), its rule-based step generator
(`pipeline/stages/stage_c/step_generator.py`: `ps`, `journalctl`, `systemctl`, `docker`,
`file_manager`, `config_manager`, `info_display`, `network_tools`) and its multi-step docs
(`conditional-check`). Every input key is either used to build what runs or refused by the
model (extra keys forbidden), so nothing a planner says is silently ignored.

| tool | runs as |
|---|---|
| `Invoke-Command`, `powershell`, `Verb-Noun` cmdlets, `windows-filesystem-manager` | PowerShell |
| `windows-impacket-executor` | a cmd.exe line (`connection_type` impacket) |
| `asset-query` | Asset Service query (inventory file when no service is set) |
| `api-request`, `http-get`, `http-post` | HTTP (basic or digest auth from a secret reference) |
| `psql` | SQL on the target's database |
| `conditional-check` | a check over an earlier step's result |
| `ps`, `docker`, `file_manager`, `config_manager`, `info_display`, `network_tools` | sh |

PowerShell and Impacket steps run through the Automation Service; `sh` means a shell command
built from the inputs, run on the target's own connector.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from opsconductor.schema.enums import ActionClass, StepKind
from opsconductor.schema.own_tools import (
    CommandMismatch,
    ConnectionInputs,
    SecretInput,
    ToolSpec,
    check_one_target,
    own_command,
)

Register = Callable[..., None]


def _fixed(ac: ActionClass) -> Callable[[BaseModel], ActionClass]:
    return lambda _inputs: ac


# ---------------------------------------------------------------- PowerShell / Windows

READ_CMDLET_VERBS = ("Get-", "Test-", "Measure-", "Select-", "Where-", "Sort-", "Format-",
                     "ConvertTo-", "Out-String", "Write-Host", "Write-Output", "Find-",
                     "Resolve-", "Compare-", "Group-")
_SEGMENTS = re.compile(r"[;|\n]")


def powershell_is_read_only(command: str) -> bool:
    """Every statement and pipeline stage starts with a reading cmdlet (Get-, Select-, ...).
    Anything else, or anything we cannot split safely, counts as a change."""
    if any(c in command for c in ("`", "$(", "&", "Invoke-Expression", "iex ")):
        return False
    parts = [p.strip() for p in _SEGMENTS.split(command) if p.strip()]
    return bool(parts) and all(p.startswith(READ_CMDLET_VERBS) for p in parts)


class PowerShellInputs(ConnectionInputs):
    """What upstream's planner writes for Windows/PowerShell/WinRM/Impacket steps."""

    command: str | None = None
    script: str | None = None
    args: str | None = None
    connection_type: Literal["powershell", "winrm", "impacket"] | None = None  # type: ignore[assignment]
    use_asset_credentials: bool | None = None
    password: SecretInput | None = None
    domain: str | None = None
    use_ssl: bool | None = None
    wait: bool | None = None
    interactive: bool | None = None
    timeout: float | None = Field(default=None, gt=0)
    timeout_seconds: float | None = Field(default=None, gt=0)
    working_directory: str | None = None
    idempotent: bool | None = None

    @model_validator(mode="after")
    def _one_target(self) -> PowerShellInputs:
        check_one_target(self.target, self.target_host, self.target_hosts)
        if self.command and self.script:
            raise ValueError("give `command` or `script`, not both")
        if self.use_asset_credentials is False and (self.username is None
                                                    or self.password is None):
            raise ValueError("use_asset_credentials false needs `username` and a `password` "
                             "reference")
        if self.password is not None and self.username is None:
            raise ValueError("a `password` reference needs its `username`")
        if self.timeout and self.timeout_seconds and self.timeout != self.timeout_seconds:
            raise ValueError("`timeout` and `timeout_seconds` disagree")
        self.timeout_seconds = self.timeout_seconds or self.timeout
        self.timeout = None
        return self


def _ps_line(name: str | None) -> Callable[[BaseModel], str]:
    def build(inputs: BaseModel) -> str:
        assert isinstance(inputs, PowerShellInputs)
        line = inputs.command or inputs.script
        if name is not None:  # a cmdlet tool: the line must run that cmdlet
            if line:
                return own_command(name, line)
            return f"{name} {inputs.args}".strip() if inputs.args else name
        if inputs.args is not None:
            raise CommandMismatch("`args` belongs to cmdlet tools; give the whole `command`")
        if not line:
            raise CommandMismatch("`command` (or `script`) is required")
        return line
    return build


def _ps_class(inputs: BaseModel) -> ActionClass:
    assert isinstance(inputs, PowerShellInputs)
    line = inputs.command or inputs.script or ""
    if inputs.connection_type == "impacket":
        return ActionClass.MODIFY
    return ActionClass.READ if powershell_is_read_only(line) else ActionClass.MODIFY


def cmdlet_tool(name: str) -> ToolSpec:
    """A tool named after a cmdlet (`Get-Service`, `Get-ComputerInfo`, ...)."""
    def action(inputs: BaseModel) -> ActionClass:
        assert isinstance(inputs, PowerShellInputs)
        line = inputs.command or inputs.script or name
        return ActionClass.READ if powershell_is_read_only(line) else ActionClass.MODIFY
    return ToolSpec(name, StepKind.COMMAND, PowerShellInputs, action, _ps_line(name),
                    connector="automation-service", dialect="powershell",
                    description="PowerShell cmdlet via the Automation Service")


# ---------------------------------------------------------------- asset-query

class AssetQueryInputs(BaseModel):
    """Upstream's asset-query: `query_type` list_all | filter | search | get_by_id |
    get_by_hostname, `filters`, `fields` to return, `limit`, and the key of the chosen type.
    The multi-step docs' top-level `tags` is a filter too."""

    model_config = ConfigDict(extra="forbid")
    query_type: Literal["list_all", "filter", "search", "get_by_id",
                        "get_by_hostname"] | None = None
    filters: dict[str, Any] = Field(default_factory=dict)
    fields: list[str] = Field(default_factory=list)
    limit: int = Field(default=100, ge=1, le=10_000)
    search_term: str | None = None
    asset_id: int | str | None = None
    hostname: str | None = None
    tags: str | list[str] | None = None

    @model_validator(mode="after")
    def _shape(self) -> AssetQueryInputs:
        if self.tags is not None:
            if "tags" in self.filters and self.filters["tags"] != self.tags:
                raise ValueError("`tags` and `filters.tags` disagree")
            self.filters = {**self.filters, "tags": self.tags}
            self.tags = None
        if self.query_type is None:
            self.query_type = ("get_by_id" if self.asset_id is not None else
                               "get_by_hostname" if self.hostname else
                               "search" if self.search_term else
                               "filter" if self.filters else "list_all")
        need = {"get_by_id": "asset_id", "get_by_hostname": "hostname", "search": "search_term"}
        key = need.get(self.query_type)
        if key and getattr(self, key) in (None, ""):
            raise ValueError(f"query_type {self.query_type} needs `{key}`")
        for other in ("asset_id", "hostname", "search_term"):
            if other != key and getattr(self, other) not in (None, ""):
                raise ValueError(f"`{other}` is not used by query_type {self.query_type}")
        return self


# ---------------------------------------------------------------- api-request

class ApiRequestInputs(BaseModel):
    """Upstream's API request: `url`, or `host` + `path` (+ `protocol`, `port`); `method`,
    `params` (query string), `headers`, `body`; `username` + `password` reference with
    `auth_type` basic | digest."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    url: str | None = None
    host: str | None = None
    path: str = ""
    protocol: Literal["http", "https"] = "http"
    port: int | None = Field(default=None, ge=1, le=65535)
    method: Literal["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    params: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, Any] = Field(default_factory=dict)
    body: Any = None
    json_body: Any = Field(default=None, alias="json")
    username: str | None = None
    password: SecretInput | None = None
    auth_type: Literal["basic", "digest"] | None = None
    connection_type: Literal["api"] | None = None
    expect_status: int | list[int] | None = None
    timeout_seconds: float | None = Field(default=None, gt=0)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _where(self) -> ApiRequestInputs:
        if bool(self.url) == bool(self.host):
            raise ValueError("give `url`, or `host` (+ `path`, `protocol`, `port`), not both")
        if self.url and (self.path or self.port):
            raise ValueError("`path`/`port` build a URL from `host`; `url` is already whole")
        if (self.username is None) != (self.password is None):
            raise ValueError("`username` and a `password` reference go together")
        if self.auth_type and self.username is None:
            raise ValueError("`auth_type` needs `username` and a `password` reference")
        return self

    def full_url(self) -> str:
        if self.url:
            return self.url
        port = f":{self.port}" if self.port else ""
        path = self.path if self.path.startswith("/") or not self.path else "/" + self.path
        return f"{self.protocol}://{self.host}{port}{path}"


def _api_normalize(inputs: BaseModel) -> dict[str, Any]:
    assert isinstance(inputs, ApiRequestInputs)
    out: dict[str, Any] = {"method": inputs.method, "url": inputs.full_url(),
                           "headers": inputs.headers, "query": inputs.params}
    if inputs.json_body is not None:
        out["json"] = inputs.json_body
    if inputs.body is not None:
        out["body"] = inputs.body
    if inputs.expect_status is not None:
        out["expect_status"] = inputs.expect_status
    if inputs.timeout_seconds is not None:
        out["timeout_seconds"] = inputs.timeout_seconds
    if inputs.username is not None:
        out["auth"] = {"type": inputs.auth_type or "basic", "username": inputs.username,
                       "password": inputs.password.model_dump(exclude_none=True)
                       if inputs.password else None}
    return out


def _api_class(inputs: BaseModel) -> ActionClass:
    assert isinstance(inputs, ApiRequestInputs)
    return ActionClass.READ if inputs.method in {"GET", "HEAD", "OPTIONS"} else ActionClass.MODIFY


# ---------------------------------------------------------------- psql

class PsqlInputs(BaseModel):
    """`query` (or `sql`) on the target asset's database; connection details come from the
    asset's `database` entry, never from the step."""

    model_config = ConfigDict(extra="forbid")
    query: str | None = None
    sql: str | None = None
    target: str | None = None
    target_host: str | None = None
    params: list[Any] = Field(default_factory=list)
    row_limit: int = Field(default=1000, ge=1, le=100_000)
    timeout_seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> PsqlInputs:
        if bool(self.query) == bool(self.sql):
            raise ValueError("give `query` (or `sql`), exactly one")
        if self.target and self.target_host and self.target != self.target_host:
            raise ValueError("`target` and `target_host` name different hosts")
        return self


def _psql_normalize(inputs: BaseModel) -> dict[str, Any]:
    assert isinstance(inputs, PsqlInputs)
    out: dict[str, Any] = {"query": inputs.query or inputs.sql, "params": inputs.params,
                           "row_limit": inputs.row_limit}
    if inputs.target or inputs.target_host:
        out["target"] = inputs.target or inputs.target_host
    if inputs.timeout_seconds is not None:
        out["timeout_seconds"] = inputs.timeout_seconds
    return out


_SQL_READ = re.compile(r"^\s*(select|with|show|explain|values|table)\b", re.IGNORECASE)


def _psql_class(inputs: BaseModel) -> ActionClass:
    assert isinstance(inputs, PsqlInputs)
    return ActionClass.READ if _SQL_READ.match(inputs.query or inputs.sql or "") else \
        ActionClass.MODIFY


# ---------------------------------------------------------------- conditional-check

class ConditionalCheckInputs(BaseModel):
    """`condition`: `{{variable}} <op> <value>` over an earlier step's result."""

    model_config = ConfigDict(extra="forbid")
    condition: str = Field(min_length=1)
    target: str | None = None


# ---------------------------------------------------------------- rule-planner tools

PS_FORMATS = {"detailed": ["aux"], "full": ["auxww"], "basic": ["-e"], "simple": ["-e"]}
PS_SORT = {"cpu_usage": "--sort=-pcpu", "cpu": "--sort=-pcpu", "memory_usage": "--sort=-pmem",
           "memory": "--sort=-pmem", "pid": "--sort=pid", "start_time": "--sort=start_time"}


class PsInputs(ConnectionInputs):
    """Upstream's `ps`: `format` detailed | full | basic, `filter` all_processes (the formats
    already list every process), `sort_by` cpu_usage | memory_usage | pid | start_time."""

    format: Literal["detailed", "full", "basic", "simple"] | None = None
    filter: Literal["all_processes", "all"] | None = None
    sort_by: Literal["cpu_usage", "cpu", "memory_usage", "memory", "pid",
                     "start_time"] | None = None
    args: str | list[str] | None = None
    command: str | None = None
    timeout_seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_form(self) -> PsInputs:
        shaped = self.format or self.filter or self.sort_by
        if sum(bool(x) for x in (shaped, self.args is not None, self.command)) > 1:
            raise ValueError("give `format`/`filter`/`sort_by`, `args` or `command`, one form")
        return self


def _ps_command(inputs: BaseModel) -> str:
    assert isinstance(inputs, PsInputs)
    if inputs.command:
        return own_command("ps", inputs.command)
    if inputs.args is not None:
        args = shlex.split(inputs.args) if isinstance(inputs.args, str) else inputs.args
        return shlex.join(["ps", *args])
    parts = ["ps", *PS_FORMATS[inputs.format or "detailed"]]
    if inputs.sort_by:
        parts.append(PS_SORT[inputs.sort_by])
    return shlex.join(parts)


DOCKER_READ = frozenset({"ps", "logs", "inspect", "images", "stats", "top", "port"})


class DockerInputs(ConnectionInputs):
    """Upstream's `docker`: `operation` ps | logs | restart | start | stop | inspect | ...,
    `container` for the operations on one container, `lines` for logs (`follow` must stay
    false: a step has to finish)."""

    operation: Literal["ps", "logs", "inspect", "images", "stats", "top", "port", "restart",
                       "start", "stop"] | None = None
    container: str | None = None
    lines: int | None = Field(default=None, ge=1, le=100_000)
    follow: bool = False
    all: bool = False
    args: str | list[str] | None = None
    command: str | None = None
    timeout_seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _shape(self) -> DockerInputs:
        if self.follow:
            raise ValueError("follow true never ends: a step must finish; use `lines`")
        forms = sum(bool(x) for x in (self.operation, self.args is not None, self.command))
        if forms != 1:
            raise ValueError("give `operation` (with its inputs), `args` or `command`, one form")
        op = self.operation
        if op and op not in ("ps", "images") and not self.container:
            raise ValueError(f"docker {op} needs `container`")
        if op in ("ps", "images") and self.container:
            raise ValueError(f"docker {op} takes no `container`")
        if self.lines is not None and op != "logs":
            raise ValueError("`lines` belongs to operation logs")
        if self.all and op != "ps":
            raise ValueError("`all` belongs to operation ps")
        return self


def _docker_command(inputs: BaseModel) -> str:
    assert isinstance(inputs, DockerInputs)
    if inputs.command:
        return own_command("docker", inputs.command)
    if inputs.args is not None:
        args = shlex.split(inputs.args) if isinstance(inputs.args, str) else inputs.args
        return shlex.join(["docker", *args])
    parts = ["docker", inputs.operation or "ps"]
    if inputs.operation == "ps" and inputs.all:
        parts.append("--all")
    if inputs.operation == "stats":
        parts.append("--no-stream")
    if inputs.operation == "logs" and inputs.lines:
        parts += ["--tail", str(inputs.lines)]
    if inputs.container:
        parts.append(inputs.container)
    return shlex.join(parts)


def _docker_class(inputs: BaseModel) -> ActionClass:
    assert isinstance(inputs, DockerInputs)
    if inputs.operation:
        return ActionClass.READ if inputs.operation in DOCKER_READ else ActionClass.MODIFY
    return ActionClass.MODIFY


class FileManagerInputs(ConnectionInputs):
    """Upstream's `file_manager`: `operation` read | backup | restore | write on `path`;
    backup copies to `backup_path` (restore copies it back); write needs `content`."""

    operation: Literal["read", "backup", "restore", "write"] = "read"
    path: str = Field(min_length=1)
    backup_path: str | None = None
    content: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> FileManagerInputs:
        if self.operation in ("backup", "restore") and not self.backup_path:
            raise ValueError(f"operation {self.operation} needs `backup_path`")
        if self.operation in ("read", "write") and self.backup_path:
            raise ValueError(f"`backup_path` is not used by operation {self.operation}")
        if (self.operation == "write") != (self.content is not None):
            raise ValueError("`content` goes with operation write, and only with it")
        return self


def _file_manager_command(inputs: BaseModel) -> str:
    assert isinstance(inputs, FileManagerInputs)
    q = shlex.quote
    if inputs.operation == "read":
        return f"cat -- {q(inputs.path)}"
    if inputs.operation == "backup":
        return f"cp -p -- {q(inputs.path)} {q(inputs.backup_path or '')}"
    if inputs.operation == "restore":
        return f"cp -p -- {q(inputs.backup_path or '')} {q(inputs.path)}"
    return f"printf '%s' {q(inputs.content or '')} > {q(inputs.path)}"


def _file_manager_class(inputs: BaseModel) -> ActionClass:
    assert isinstance(inputs, FileManagerInputs)
    return ActionClass.READ if inputs.operation == "read" else ActionClass.MODIFY


CONFIG_VALIDATORS: tuple[tuple[str, str], ...] = (
    ("nginx", "nginx -t -c {file}"),
    ("sshd_config", "sshd -t -f {file}"),
    ("haproxy", "haproxy -c -f {file}"),
    (".json", "python3 -m json.tool {file} >/dev/null"),
)


class ConfigManagerInputs(ConnectionInputs):
    """Upstream's `config_manager`: `operation` read | validate on `config_file`;
    `syntax_check` (validate) runs the file's own checker (nginx -t, sshd -t, haproxy -c,
    JSON); `backup_before_change` copies the file to `<file>.bak` first."""

    operation: Literal["read", "validate"] = "read"
    config_file: str = Field(min_length=1)
    syntax_check: bool | None = None
    backup_before_change: bool = False

    @model_validator(mode="after")
    def _shape(self) -> ConfigManagerInputs:
        if self.operation == "read" and self.syntax_check:
            raise ValueError("`syntax_check` belongs to operation validate")
        if self.operation == "validate" and self.syntax_check is not False \
                and config_checker(self.config_file) is None:
            raise ValueError(f"no syntax checker known for {self.config_file!r} (known: "
                             + ", ".join(k for k, _ in CONFIG_VALIDATORS) + ")")
        if self.operation == "validate" and self.syntax_check is False:
            raise ValueError("operation validate without `syntax_check` checks nothing")
        return self


def config_checker(path: str) -> str | None:
    for marker, template in CONFIG_VALIDATORS:
        if marker in path.rsplit("/", 1)[-1] or (marker.startswith(".") and path.endswith(
                marker)):
            return template.format(file=shlex.quote(path))
    return None


def _config_command(inputs: BaseModel) -> str:
    assert isinstance(inputs, ConfigManagerInputs)
    q = shlex.quote(inputs.config_file)
    parts: list[str | None] = []
    if inputs.backup_before_change:
        parts.append(f"cp -p -- {q} {shlex.quote(inputs.config_file + '.bak')}")
    parts.append(config_checker(inputs.config_file) if inputs.operation == "validate"
                 else f"cat -- {q}")
    return " && ".join(p for p in parts if p)


def _config_class(inputs: BaseModel) -> ActionClass:
    assert isinstance(inputs, ConfigManagerInputs)
    return ActionClass.MODIFY if inputs.backup_before_change else ActionClass.READ


INFO_COMMANDS = {
    "system_status": ["uptime", "df -h", "free -m"],
    "system_metrics": ["cat /proc/loadavg", "free -m", "df -h", "vmstat 1 2"],
    "diagnostic_info": ["uname -a", "uptime", "df -h", "free -m", "dmesg 2>/dev/null | tail -n 20"],
}


class InfoDisplayInputs(ConnectionInputs):
    """Upstream's `info_display`: `info_type` system_status | system_metrics |
    diagnostic_info; `format` detailed (every command's output) | summary (the first only);
    `include_metrics` adds the load average and memory counters."""

    info_type: Literal["system_status", "system_metrics", "diagnostic_info"] = "system_status"
    format: Literal["detailed", "summary"] = "detailed"
    include_metrics: bool = False


def _info_command(inputs: BaseModel) -> str:
    assert isinstance(inputs, InfoDisplayInputs)
    cmds = list(INFO_COMMANDS[inputs.info_type])
    if inputs.format == "summary":
        cmds = cmds[:1]
    if inputs.include_metrics:
        for extra in ("cat /proc/loadavg", "free -m"):
            if extra not in cmds:
                cmds.append(extra)
    return "; ".join(f"echo {shlex.quote('== ' + c)}; {c}" for c in cmds)


class NetworkToolsInputs(ConnectionInputs):
    """Upstream's `network_tools`: `tool` ping | netstat | traceroute | nslookup | dig against
    `destination` (upstream writes it as `target`: the host to probe, NOT where the step runs;
    the step runs on `target_host`), `count` for ping, `show_listening` / `show_processes`
    for netstat (run as `ss`)."""

    tool: Literal["ping", "netstat", "traceroute", "nslookup", "dig"] = "ping"
    destination: str | None = None
    count: int | None = Field(default=None, ge=1, le=100)
    show_listening: bool = False
    show_processes: bool = False

    @model_validator(mode="before")
    @classmethod
    def _probe(cls, v: Any) -> Any:
        """Upstream's `target` is the probe's destination here, not the step's host."""
        if isinstance(v, dict) and "target" in v:
            v = dict(v)
            if "destination" in v:
                raise ValueError("give `target` or `destination`, not both")
            v["destination"] = v.pop("target")
        return v

    @model_validator(mode="after")
    def _shape(self) -> NetworkToolsInputs:
        if self.tool != "netstat" and not self.destination:
            raise ValueError(f"{self.tool} needs `target` (the host to probe)")
        if self.tool == "netstat" and self.destination not in (None, "localhost"):
            raise ValueError("netstat lists this host's sockets; `target` is not used by it")
        if self.count is not None and self.tool != "ping":
            raise ValueError("`count` belongs to tool ping")
        if (self.show_listening or self.show_processes) and self.tool != "netstat":
            raise ValueError("`show_listening`/`show_processes` belong to tool netstat")
        if self.target_hosts is not None and len(self.target_hosts) != 1:
            raise ValueError("`target_hosts` takes one entry")
        return self


def _network_command(inputs: BaseModel) -> str:
    assert isinstance(inputs, NetworkToolsInputs)
    dest = inputs.destination or ""
    if inputs.tool == "ping":
        return shlex.join(["ping", "-c", str(inputs.count or 4), dest])
    if inputs.tool == "netstat":
        flags = "-tun" + ("l" if inputs.show_listening else "a") + ("p" if inputs.show_processes
                                                                   else "")
        return shlex.join(["ss", flags])
    if inputs.tool == "traceroute":
        return shlex.join(["traceroute", dest])
    return shlex.join([inputs.tool, dest])


def register_all(register: Register) -> None:
    ps_any = ToolSpec("Invoke-Command", StepKind.COMMAND, PowerShellInputs, _ps_class,
                      _ps_line(None), connector="automation-service", dialect="powershell",
                      description="PowerShell via the Automation Service")
    register(ps_any, "powershell", "windows-filesystem-manager", "winrm")
    register(ToolSpec("windows-impacket-executor", StepKind.COMMAND, PowerShellInputs,
                      _fixed(ActionClass.MODIFY), _ps_line(None), connector="automation-service",
                      dialect="cmd", description="cmd.exe line via the Automation Service "
                                                 "(Impacket WMI)"))
    register(ToolSpec("asset-query", StepKind.ASSET_QUERY, AssetQueryInputs,
                      _fixed(ActionClass.READ), description="Asset Service query"))
    register(ToolSpec("api-request", StepKind.HTTP, ApiRequestInputs, _api_class,
                      normalize=_api_normalize, description="HTTP request"),
             "http-get", "http-post", "api_request")
    register(ToolSpec("psql", StepKind.SQL, PsqlInputs, _psql_class, normalize=_psql_normalize,
                      description="SQL on the target's database"))
    register(ToolSpec("conditional-check", StepKind.VALIDATE, ConditionalCheckInputs,
                      _fixed(ActionClass.READ), description="check over an earlier result"))
    register(ToolSpec("ps", StepKind.COMMAND, PsInputs, _fixed(ActionClass.READ), _ps_command,
                      dialect="sh"))
    register(ToolSpec("docker", StepKind.COMMAND, DockerInputs, _docker_class, _docker_command,
                      dialect="sh"))
    register(ToolSpec("file_manager", StepKind.COMMAND, FileManagerInputs, _file_manager_class,
                      _file_manager_command, dialect="sh"))
    register(ToolSpec("config_manager", StepKind.COMMAND, ConfigManagerInputs, _config_class,
                      _config_command, dialect="sh"))
    register(ToolSpec("info_display", StepKind.COMMAND, InfoDisplayInputs,
                      _fixed(ActionClass.READ), _info_command, dialect="sh"))
    register(ToolSpec("network_tools", StepKind.COMMAND, NetworkToolsInputs,
                      _fixed(ActionClass.READ), _network_command, dialect="sh"))
