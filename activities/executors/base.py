"""The contract between the step activity and the executors of each step kind.

The step activity resolves secrets, the target asset and the timeout, then calls one
executor. An executor acts, returns an honest outcome, and on cancellation (the activity's
task is cancelled) stops what it started before re-raising: nothing it launched outlives it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel

from opsconductor.schema.errors import ErrorType
from opsconductor.schema.spec import StepSpec

if TYPE_CHECKING:
    from opsconductor.safety.secrets import SecretResolver
    from opsconductor.schema.config import Settings

# Per stream and step: more is dropped and the end marked `...[truncated N bytes]`. The full
# (masked) stream is stored in Postgres; Temporal history only ever sees an excerpt.
OUTPUT_CAP_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class ProcessRef:
    """Where a step's command runs, so a later attempt can stop it if it is still alive.

    `host` is None for the worker's own machine, else the asset id; `start_ticks` is field 22
    of /proc/PGID/stat, which tells the group's leader apart from a later process that
    reused its pid.
    """

    host: str | None
    pgid: int
    start_ticks: int | None


@dataclass
class StepContext:
    execution_id: str
    workflow_id: str
    tenant: str
    environment: str
    step: StepSpec
    inputs: dict[str, Any]  # secret references already resolved: never return these raw
    timeout: float  # seconds this attempt may take
    asset: Any = None  # activities.assets.Asset, or None for the worker's own machine
    prior_outputs: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    heartbeat: Callable[..., None] = lambda *details: None
    settings: Settings | None = None  # the worker's; None: loaded where needed
    secrets: SecretResolver | None = None  # the worker's resolver, for asset credentials
    # Awaited by a runner once its command's process group exists (the attempt records it).
    on_process: Callable[[ProcessRef], Awaitable[None]] | None = None
    # Called by a runner with each chunk of output as it reads it ("stdout"/"stderr", bytes),
    # so `opsconductor logs --follow` can show a command's output while it runs.
    on_output: Callable[[str, bytes], None] | None = None
    # Authorizes whatever else the step runs on a host (command checks): None runs nothing.
    gate: Any = None  # activities.authorization.ActionGate


@dataclass
class StepOutcome:
    ok: bool
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    retryable: bool = True


class Executor(Protocol):
    async def run(self, ctx: StepContext) -> StepOutcome: ...


class CommandRunner(Protocol):
    """Runs a finished command line somewhere (locally, over SSH, via a service)."""

    async def run(self, ctx: StepContext, command: str, *, env: dict[str, str],
                  cwd: str | None, timeout: float) -> StepOutcome: ...


M = TypeVar("M", bound=BaseModel)


def parse_inputs(model: type[M], ctx: StepContext) -> M | StepOutcome:
    """The step's resolved inputs as `model`, or the failed outcome naming what is wrong."""
    try:
        return model.model_validate(ctx.inputs)
    except ValueError as err:
        return StepOutcome(ok=False, error=f"invalid {ctx.step.tool} inputs: {err}",
                           error_type=ErrorType.INVALID_STEP, retryable=False)


def require_asset(ctx: StepContext, runner: str) -> Any:
    """The target asset, or the failed outcome when a remote runner got a local step."""
    from opsconductor.schema.assets import Asset

    if isinstance(ctx.asset, Asset):
        return ctx.asset
    return StepOutcome(ok=False, error=f"{runner} runner needs a target asset",
                       error_type=ErrorType.INVALID_STEP, retryable=False)


_ALREADY_CAPPED = re.compile(rb"\n\.\.\.\[truncated \d+ bytes\]\Z")


def cap_text(data: bytes | str, cap: int = OUTPUT_CAP_BYTES) -> str:
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
    if len(raw) <= cap or (len(raw) <= cap + 64 and _ALREADY_CAPPED.search(raw[-64:])):
        return raw.decode("utf-8", "replace")  # a runner capped it already: keep its count
    return raw[:cap].decode("utf-8", "ignore") + f"\n...[truncated {len(raw) - cap} bytes]"
