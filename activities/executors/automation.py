"""Run a command through OpsConductor's Automation Service (hosts we do not reach ourselves,
Windows/PowerShell included).

The asset's credentials are resolved from secrets at call time and sent only in the request
body. The service enforces the timeout on its side; the contract has no cancel call, so on
cancellation this runner stops waiting and says so in the error it raises — the service's own
timeout bounds the remote command. Because `POST /execute` is not idempotent, a failure after
the request was sent is only retryable for steps declared idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, TypeVar

from opsconductor.activities.assets import resolve_credentials, resolve_secret_refs, secret_failure
from opsconductor.activities.executors.base import StepContext, StepOutcome, cap_text, require_asset
from opsconductor.activities.service_clients import (
    AutomationResult,
    AutomationServiceClient,
    AutomationServiceError,
)
from opsconductor.safety.secrets import SecretError
from opsconductor.schema.assets import Asset
from opsconductor.schema.config import Settings, load_settings
from opsconductor.schema.errors import ErrorType

HEARTBEAT_INTERVAL = 1.0
T = TypeVar("T")


def _connection_type(asset: Asset) -> str:
    if asset.automation and asset.automation.connection_type:
        return asset.automation.connection_type
    return "powershell" if asset.is_windows else "ssh"


def _base_url(asset: Asset, settings: Settings | None) -> str | None:
    if asset.automation and asset.automation.base_url:
        return asset.automation.base_url
    return (settings or load_settings()).automation_service_url or None



async def heartbeating(call: asyncio.Future[T], ctx: StepContext, details: dict[str, Any]) -> T:
    """Await a service call, heartbeating meanwhile (so a cancel reaches the step); a cancel
    stops the call before it propagates."""
    try:
        while True:
            done, _ = await asyncio.wait({call}, timeout=HEARTBEAT_INTERVAL)
            if done:
                return call.result()
            ctx.heartbeat(details)
    except asyncio.CancelledError:
        call.cancel()
        with contextlib.suppress(BaseException):
            await call
        raise

class AutomationCommandRunner:
    """CommandRunner for assets whose connector is `automation-service`."""

    async def run(self, ctx: StepContext, command: str, *, env: dict[str, str],
                  cwd: str | None, timeout: float) -> StepOutcome:
        asset = require_asset(ctx, "automation")
        if isinstance(asset, StepOutcome):
            return asset
        base_url = _base_url(asset, ctx.settings)
        if not base_url:
            return StepOutcome(ok=False, error=f"asset {asset.id!r} uses the Automation Service "
                               "but no URL is set (asset.automation.base_url or "
                               "OPSC_AUTOMATION_SERVICE_URL)",
                               error_type=ErrorType.CONFIGURATION_ERROR, retryable=False)
        try:
            creds, _values = await resolve_credentials(asset, ctx.secrets, ctx.settings)
            token = None
            if asset.automation and asset.automation.api_token:
                token, _ = await resolve_secret_refs(asset.automation.api_token.model_dump(
                    exclude_none=True), ctx.secrets)
        except SecretError as err:
            kind, retryable = secret_failure(err)
            return StepOutcome(ok=False, error=f"credentials of asset {asset.id!r}: {err}",
                               error_type=kind, retryable=retryable)
        credentials: dict[str, str] = dict(creds)
        if asset.user and "username" not in credentials:
            credentials["username"] = asset.user
        client = AutomationServiceClient(base_url, token=str(token) if token else None)
        call = asyncio.ensure_future(client.execute(
            command=command, target_host=asset.host, connection_type=_connection_type(asset),  # type: ignore[arg-type]
            credentials=credentials, timeout=timeout, working_directory=cwd,
            environment_vars=env))
        try:
            result: AutomationResult = await heartbeating(
                call, ctx, {"automation_service": base_url, "host": asset.host})
        except AutomationServiceError as err:
            return StepOutcome(ok=False, error=f"automation service: {err}",
                               error_type=ErrorType.AUTOMATION_SERVICE_ERROR,
                               retryable=ctx.step.idempotent or not err.sent)
        finally:
            await client.aclose()
        return self._outcome(result, asset, timeout)

    @staticmethod
    def _outcome(result: AutomationResult, asset: Asset, timeout: float) -> StepOutcome:
        output = {"host": asset.host, "asset": asset.id, "execution_id": result.execution_id,
                  "status": result.status, "started_at": result.started_at,
                  "completed_at": result.completed_at, "via": "automation-service"}
        stdout, stderr = cap_text(result.stdout), cap_text(result.stderr)
        if result.succeeded:
            return StepOutcome(ok=True, exit_code=result.exit_code if result.exit_code is not None
                               else 0, stdout=stdout, stderr=stderr, output=output)
        status = result.status.lower()
        if status in ("timeout", "timed_out"):
            return StepOutcome(ok=False, exit_code=result.exit_code, stdout=stdout, stderr=stderr,
                               output=output, error_type=ErrorType.STEP_TIMEOUT,
                               error=f"command timed out after {timeout:g}s on {asset.host} "
                                     "(Automation Service)")
        detail = result.error_message or stderr.strip()[-2000:] or "(no stderr)"
        return StepOutcome(ok=False, exit_code=result.exit_code, stdout=stdout, stderr=stderr,
                           output=output, error_type=ErrorType.COMMAND_FAILED,
                           error=f"command {result.status} with exit code {result.exit_code} on "
                                 f"{asset.host}: {detail}")
