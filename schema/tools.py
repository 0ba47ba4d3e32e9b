"""The tool registry: what a plan step's `tool` means.

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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class CliInputs(_Inputs):
    """Inputs of a plain command-line tool; `args` are appended to the tool name."""

    model_config = ConfigDict(extra="allow")
    args: str | list[str] | None = None
    timeout_seconds: float | None = Field(default=None, gt=0)
    idempotent: bool | None = None


SYSTEMCTL_READ_ACTIONS = frozenset({"status", "is-active", "is-enabled", "is-failed", "show", "cat",
                                    "list-units", "list-timers"})
SYSTEMCTL_ACTIONS = SYSTEMCTL_READ_ACTIONS | frozenset(
    {"start", "stop", "restart", "reload", "try-restart", "reload-or-restart", "enable",
     "disable", "mask", "unmask", "daemon-reload"}
)


class SystemctlInputs(_Inputs):
    action: str
    unit: str | None = None
    timeout_seconds: float | None = Field(default=None, gt=0)
    idempotent: bool | None = None

    @field_validator("action")
    @classmethod
    def _known_action(cls, v: str) -> str:
        if v not in SYSTEMCTL_ACTIONS:
            raise ValueError(f"unknown systemctl action {v!r}; one of {sorted(SYSTEMCTL_ACTIONS)}")
        return v


class JournalctlInputs(_Inputs):
    unit: str | None = None
    lines: int = Field(default=100, ge=1, le=100_000)
    since: str | None = None
    timeout_seconds: float | None = Field(default=None, gt=0)


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
    name: str
    kind: StepKind
    inputs: type[BaseModel]
    action_class: Callable[[BaseModel], ActionClass]
    build_command: Callable[[BaseModel], str] | None = None


def _fixed(ac: ActionClass) -> Callable[[BaseModel], ActionClass]:
    return lambda _inputs: ac


def _args(inputs: BaseModel) -> list[str]:
    args = getattr(inputs, "args", None)
    if args is None:
        return []
    return shlex.split(args) if isinstance(args, str) else [str(a) for a in args]


def _cli(name: str) -> Callable[[BaseModel], str]:
    return lambda inputs: shlex.join([name, *_args(inputs)])


def _systemctl_command(inputs: BaseModel) -> str:
    assert isinstance(inputs, SystemctlInputs)
    parts = ["systemctl", inputs.action]
    if inputs.action == "status":
        parts.append("--no-pager")
    if inputs.unit:
        parts.append(inputs.unit)
    return shlex.join(parts)


def _journalctl_command(inputs: BaseModel) -> str:
    assert isinstance(inputs, JournalctlInputs)
    parts = ["journalctl", "--no-pager", "-n", str(inputs.lines)]
    if inputs.unit:
        parts += ["-u", inputs.unit]
    if inputs.since:
        parts += ["--since", inputs.since]
    return shlex.join(parts)


def _systemctl_class(inputs: BaseModel) -> ActionClass:
    assert isinstance(inputs, SystemctlInputs)
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
                 "tar", "service", "docker", "kubectl")

TOOLS: dict[str, ToolSpec] = {}


def register(spec: ToolSpec, *aliases: str) -> None:
    for name in (spec.name, *aliases):
        TOOLS[name] = spec


register(ToolSpec("shell", StepKind.COMMAND, CommandInputs, _fixed(ActionClass.MODIFY)),
         "bash", "command", "script")
register(ToolSpec("systemctl", StepKind.COMMAND, SystemctlInputs, _systemctl_class,
                  _systemctl_command))
register(ToolSpec("journalctl", StepKind.COMMAND, JournalctlInputs, _fixed(ActionClass.READ),
                  _journalctl_command))
for _name in READ_ONLY_CLI:
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


def lookup(tool: str) -> ToolSpec | None:
    return TOOLS.get(tool)
