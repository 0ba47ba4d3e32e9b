"""Our own tools: their input models, their specs and the registry they are listed in.

`opsconductor.schema.tools` answers what a step's `tool` means, over these, upstream's tools
and its catalog; this module depends on neither, so they can build on it.

Each tool maps to a step kind (which executor runs it), an action class (which timeout policy
row applies) and an input model (what the planner must send). Plain command-line tools that
planners emit (`systemctl`, `df`, ...) map to the command kind with the command line built
from their inputs, so an executor only ever sees a finished command.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from opsconductor.schema.enums import ActionClass, StepKind


class SecretRef(BaseModel):
    """A reference to a secret; the value is resolved inside the activity that uses it."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["secret"]
    path: str = Field(min_length=1)
    key: str | None = None  # field inside a structured secret (Vault KV), optional


def is_secret_ref(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == "secret" and "path" in value


class _Inputs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str | None = None


class CommandInputs(_Inputs):
    command: str = Field(min_length=1)
    working_directory: str | None = None
    env: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: float | None = Field(default=None, gt=0)
    idempotent: bool = False


def _require_ref(v: Any) -> Any:
    """A secret-bearing input takes a reference only; a value here would enter history."""
    if isinstance(v, str | int | float) and not isinstance(v, bool):
        raise ValueError(PLAIN_SECRET_MESSAGE)
    return v


PLAIN_SECRET_MESSAGE = ('plain-text secret refused: it would enter workflow history; use a '
                        'reference {"type": "secret", "path": "..."}')
SecretInput = Annotated[SecretRef, BeforeValidator(_require_ref)]


def check_one_target(target: str | None, target_host: str | None,
                     target_hosts: list[str] | None) -> None:
    """A step names one host, however its tool spells it (raised as the model's error)."""
    if len({v for v in (target, target_host) if v}) > 1:
        raise ValueError("`target` and `target_host` name different hosts")
    if target_hosts is not None and len(target_hosts) != 1:
        raise ValueError("`target_hosts` takes one entry (a template such as "
                         "\"{{ip_address}}\" fans out over an asset query); write one step "
                         "per literal host")


class ConnectionInputs(_Inputs):
    """How the planner says to reach the host. Each key is used: `target_host` is the target;
    `username`, `port`, `asset_id` and `connection_type` must agree with the resolved asset
    (the step is refused otherwise); `use_asset_credentials` false with no credentials of the
    step's own is refused. Credentials of an SSH or local step come from its asset only."""

    target_host: str | None = None
    target_hosts: list[str] | None = None
    username: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    connection_type: Literal["ssh", "local"] | None = None
    use_asset_credentials: bool | None = None
    asset_id: int | str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> ConnectionInputs:
        check_one_target(self.target, self.target_host, self.target_hosts)
        if self.use_asset_credentials is False:
            raise ValueError("use_asset_credentials false: an SSH or local step has no "
                             "credentials of its own; they come from the asset's inventory "
                             "entry")
        return self


class CliInputs(ConnectionInputs):
    """A plain command-line tool: `args` appended to the tool name, or the whole `command`
    line, which must start with the tool's own name (so the tool decides the action class)."""

    args: str | list[str] | None = None
    command: str | None = None
    timeout_seconds: float | None = Field(default=None, gt=0)
    idempotent: bool | None = None

    @model_validator(mode="after")
    def _args_or_command(self) -> CliInputs:
        if self.args is not None and self.command is not None:
            raise ValueError("give `args` or `command`, not both")
        return self


SYSTEMCTL_READ_ACTIONS = frozenset({"status", "is-active", "is-enabled", "is-failed", "show", "cat",
                                    "list-units", "list-timers"})
SYSTEMCTL_ACTIONS = SYSTEMCTL_READ_ACTIONS | frozenset(
    {"start", "stop", "restart", "reload", "try-restart", "reload-or-restart", "enable",
     "disable", "mask", "unmask", "daemon-reload"}
)


class SystemctlInputs(ConnectionInputs):
    """`action` (default status), `unit` (upstream: `service`), `check_status`: after a
    changing action, also show the unit's status (the step fails if it is not active)."""

    action: str = "status"
    unit: str | None = None
    service: str | None = None
    check_status: bool = False
    command: str | None = None
    timeout_seconds: float | None = Field(default=None, gt=0)
    idempotent: bool | None = None

    @model_validator(mode="after")
    def _unit(self) -> SystemctlInputs:
        if self.unit and self.service and self.unit != self.service:
            raise ValueError("`unit` and `service` name different units")
        self.unit = self.unit or self.service
        if self.command is not None and (self.unit or self.check_status):
            raise ValueError("give the whole `command` or `action`/`unit`, not both")
        return self

    @field_validator("action")
    @classmethod
    def _known_action(cls, v: str) -> str:
        if v not in SYSTEMCTL_ACTIONS:
            raise ValueError(f"unknown systemctl action {v!r}; one of {sorted(SYSTEMCTL_ACTIONS)}")
        return v


JOURNAL_PRIORITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


class JournalctlInputs(ConnectionInputs):
    unit: str | None = None
    lines: int = Field(default=100, ge=1, le=100_000)
    since: str | None = None
    priority: Literal["emerg", "alert", "crit", "err", "error", "warning", "warn", "notice",
                      "info", "debug"] | None = None
    follow: bool = False
    command: str | None = None
    timeout_seconds: float | None = Field(default=None, gt=0)

    @field_validator("follow")
    @classmethod
    def _no_follow(cls, v: bool) -> bool:
        if v:
            raise ValueError("follow true never ends: a step must finish; use `lines`/`since`")
        return v


class HttpInputs(_Inputs):
    method: Literal["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str = Field(min_length=1)
    headers: dict[str, Any] = Field(default_factory=dict)
    query: dict[str, Any] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    body: Any = None
    expect_status: int | list[int] | None = None
    assertions: list[dict[str, Any]] = Field(default_factory=list)
    timeout_seconds: float | None = Field(default=None, gt=0)
    idempotent: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class SqlInputs(_Inputs):
    query: str = Field(min_length=1)
    params: list[Any] = Field(default_factory=list)
    row_limit: int = Field(default=1000, ge=1, le=100_000)
    timeout_seconds: float | None = Field(default=None, gt=0)
    idempotent: bool | None = None


class FileTransferInputs(_Inputs):
    direction: Literal["upload", "download"]
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)
    mode: str | None = None  # octal permission string for uploads, e.g. "0644"
    timeout_seconds: float | None = Field(default=None, gt=0)
    idempotent: bool = True


class ValidateInputs(_Inputs):
    """Checks over earlier steps' outputs, in the check expression form (see safety docs)."""

    checks: list[str | dict[str, Any]] = Field(min_length=1)


class NoopInputs(_Inputs):
    model_config = ConfigDict(extra="allow")
    sleep_seconds: float = Field(default=0, ge=0, le=3600)
    fail: bool = False  # for tests: fail the step with a clear error


@dataclass(frozen=True)
class ToolSpec:
    """`connector` forces how a command runs (the Automation Service for PowerShell tools)
    whatever the asset's own connector; `normalize` turns the tool's inputs into the input
    shape its executor reads; `dialect` is the command language (for quoting templates)."""

    name: str
    kind: StepKind
    inputs: type[BaseModel]
    action_class: Callable[[BaseModel], ActionClass]
    build_command: Callable[[BaseModel], str] | None = None
    connector: str | None = None
    normalize: Callable[[BaseModel], dict[str, Any]] | None = None
    dialect: Literal["sh", "powershell", "cmd"] | None = None
    description: str = ""
    # The command as an argument list (catalog tools); `build_command` is its rendering.
    build_argv: Callable[[BaseModel], list[str]] | None = None
    # The inputs that name the step's target, in order of precedence.
    target_keys: tuple[str, ...] = ("target", "target_host")
    service: str | None = None  # StepKind.SERVICE: the upstream service it is sent to
    service_tool: str | None = None  # ... and the tool name that service knows
    catalog: str | None = None  # the upstream catalog file it comes from
    # The step's time limit from its inputs (default: its `timeout_seconds` input).
    time_limit: Callable[[BaseModel], float | None] | None = None


def _fixed(ac: ActionClass) -> Callable[[BaseModel], ActionClass]:
    return lambda _inputs: ac


def _args(inputs: BaseModel) -> list[str]:
    args = getattr(inputs, "args", None)
    if args is None:
        return []
    return shlex.split(args) if isinstance(args, str) else [str(a) for a in args]


class CommandMismatch(ValueError):
    """A whole `command` line that does not run the tool the step names."""


def first_word(command: str) -> str:
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    while words and words[0] in ("sudo", "-n", "env"):
        words = words[1:]
    return words[0].rsplit("/", 1)[-1] if words else ""


def own_command(name: str, command: str) -> str:
    """`command` when it runs `name` (the tool decides the action class), else refuse."""
    if first_word(command) != name:
        raise CommandMismatch(f"`command` must run {name!r} (the step's tool), not "
                              f"{first_word(command)!r}: a tool's action class would not "
                              "describe it; use the `shell` tool for arbitrary commands")
    return command


def _cli(name: str) -> Callable[[BaseModel], str]:
    def build(inputs: BaseModel) -> str:
        command = getattr(inputs, "command", None)
        if command:
            return own_command(name, command)
        return shlex.join([name, *_args(inputs)])
    return build


def _systemctl_command(inputs: BaseModel) -> str:
    assert isinstance(inputs, SystemctlInputs)
    if inputs.command:
        return own_command("systemctl", inputs.command)
    parts = ["systemctl", inputs.action]
    if inputs.action == "status":
        parts.append("--no-pager")
    if inputs.unit:
        parts.append(inputs.unit)
    line = shlex.join(parts)
    if inputs.check_status and inputs.action != "status" and inputs.unit:
        line += " && " + shlex.join(["systemctl", "status", "--no-pager", inputs.unit])
    return line


def _journalctl_command(inputs: BaseModel) -> str:
    assert isinstance(inputs, JournalctlInputs)
    if inputs.command:
        return own_command("journalctl", inputs.command)
    parts = ["journalctl", "--no-pager", "-n", str(inputs.lines)]
    if inputs.unit:
        parts += ["-u", inputs.unit]
    if inputs.since:
        parts += ["--since", inputs.since]
    if inputs.priority:
        parts += ["-p", {"error": "err", "warn": "warning"}.get(inputs.priority, inputs.priority)]
    return shlex.join(parts)


def _systemctl_class(inputs: BaseModel) -> ActionClass:
    assert isinstance(inputs, SystemctlInputs)
    if inputs.command:
        words = inputs.command.split()
        action = words[1] if len(words) > 1 else "status"
        return ActionClass.READ if action in SYSTEMCTL_READ_ACTIONS else ActionClass.MODIFY
    return ActionClass.READ if inputs.action in SYSTEMCTL_READ_ACTIONS else ActionClass.MODIFY


def _http_class(inputs: BaseModel) -> ActionClass:
    assert isinstance(inputs, HttpInputs)
    return ActionClass.READ if inputs.method in {"GET", "HEAD", "OPTIONS"} else ActionClass.MODIFY


_SQL_READ = re.compile(r"^\s*(select|with|show|explain|values|table)\b", re.IGNORECASE)
_SQL_DDL = re.compile(r"^\s*(create|alter|drop|truncate|grant|revoke)\b", re.IGNORECASE)


def _sql_class(inputs: BaseModel) -> ActionClass:
    assert isinstance(inputs, SqlInputs)
    if _SQL_DDL.match(inputs.query):
        return ActionClass.DEPLOY
    return ActionClass.READ if _SQL_READ.match(inputs.query) else ActionClass.MODIFY


def _file_class(inputs: BaseModel) -> ActionClass:
    assert isinstance(inputs, FileTransferInputs)
    return ActionClass.READ if inputs.direction == "download" else ActionClass.MODIFY


# Plain command-line tools that only read state.
READ_ONLY_CLI = (
    "ps", "df", "du", "uptime", "free", "uname", "hostname", "whoami", "id", "date", "ls",
    "cat", "head", "tail", "grep", "find", "stat", "ss", "netstat", "ip", "lsblk", "mount",
    "vmstat", "iostat", "top", "who", "w", "env", "printenv", "ping", "dig", "nslookup",
    "curl", "wc", "nproc", "lscpu", "dmesg", "echo", "true", "test", "pgrep",
)
# Plain command-line tools that change state.
MODIFYING_CLI = ("kill", "pkill", "rm", "cp", "mv", "mkdir", "touch", "chmod", "chown", "ln",
                 "tar", "service", "kubectl")

TOOLS: dict[str, ToolSpec] = {}


def register(spec: ToolSpec, *aliases: str) -> None:
    for name in (spec.name, *aliases):
        TOOLS[name] = spec


register(ToolSpec("shell", StepKind.COMMAND, CommandInputs, _fixed(ActionClass.MODIFY)),
         "bash", "command", "script", "ssh_command")
# Upstream's Stage E test plans name a read-only SSH command `ssh_command_read`.
register(ToolSpec("ssh_command_read", StepKind.COMMAND, CommandInputs, _fixed(ActionClass.READ)))
register(ToolSpec("systemctl", StepKind.COMMAND, SystemctlInputs, _systemctl_class,
                  _systemctl_command))
register(ToolSpec("journalctl", StepKind.COMMAND, JournalctlInputs, _fixed(ActionClass.READ),
                  _journalctl_command))
for _name in (n for n in READ_ONLY_CLI if n != "ps"):
    register(ToolSpec(_name, StepKind.COMMAND, CliInputs, _fixed(ActionClass.READ), _cli(_name)))
for _name in MODIFYING_CLI:
    register(ToolSpec(_name, StepKind.COMMAND, CliInputs, _fixed(ActionClass.MODIFY), _cli(_name)))
register(ToolSpec("http_request", StepKind.HTTP, HttpInputs, _http_class), "http", "api_call")
register(ToolSpec("sql_query", StepKind.SQL, SqlInputs, _sql_class), "sql")
register(ToolSpec("file_transfer", StepKind.FILE_TRANSFER, FileTransferInputs, _file_class),
         "sftp", "copy_file")
register(ToolSpec("validate", StepKind.VALIDATE, ValidateInputs, _fixed(ActionClass.READ)),
         "check")
register(ToolSpec("noop", StepKind.NOOP, NoopInputs, _fixed(ActionClass.READ)))
