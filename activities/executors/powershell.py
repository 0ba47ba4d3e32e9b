"""PowerShell, WinRM and Impacket steps through OpsConductor's Automation Service.

Upstream's planner writes these with `connection_type`, `use_ssl`, `port`, `domain`, `wait`,
`interactive` and either the asset's credentials (`use_asset_credentials`) or a `username`
with a `password` secret reference. All of them go into the `POST /execute` body beside the
contract fields (`command`, `target_host`, `connection_type`, `credentials`, `timeout`), so
the service, not us, decides how to reach the host; nothing the planner wrote is dropped.
"""

from __future__ import annotations

import asyncio
from typing import Any

from opsconductor.activities.assets import resolve_credentials, secret_failure
from opsconductor.activities.executors.automation import heartbeating
from opsconductor.activities.executors.base import StepContext, StepOutcome, cap_text, require_asset
from opsconductor.activities.service_clients import (
    AutomationResult,
    AutomationServiceClient,
    AutomationServiceError,
)
from opsconductor.safety.secrets import SecretError
from opsconductor.schema.assets import Asset
from opsconductor.schema.config import load_settings
from opsconductor.schema.errors import ErrorType

OPTION_KEYS = ("use_ssl", "port", "domain", "wait", "interactive")


def request_body(ctx: StepContext, asset: Asset, command: str,
                 credentials: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The `/execute` body for this step (credentials already resolved)."""
    inputs = ctx.inputs
    body: dict[str, Any] = {
        "command": command, "target_host": asset.host,
        "connection_type": inputs.get("connection_type") or "powershell",
        "credentials": credentials, "timeout": int(max(1, timeout)),
        "working_directory": inputs.get("working_directory"), "environment_vars": {},
    }
    body.update({k: inputs[k] for k in OPTION_KEYS if inputs.get(k) is not None})
    return body


class PowerShellRunner:
    """CommandRunner for tools whose spec forces the `automation-service` connector."""

    async def run(self, ctx: StepContext, command: str, *, env: dict[str, str],
                  cwd: str | None, timeout: float) -> StepOutcome:
        asset = require_asset(ctx, "PowerShell")
        if isinstance(asset, StepOutcome):
            return asset
        settings = ctx.settings or load_settings()
        base_url = ((asset.automation.base_url if asset.automation else None)
                    or settings.automation_service_url)
        if not base_url:
            return StepOutcome(ok=False, error="PowerShell steps run through the Automation "
                               "Service, but no URL is set (asset.automation.base_url or "
                               "OPSC_AUTOMATION_SERVICE_URL)",
                               error_type=ErrorType.CONFIGURATION_ERROR, retryable=False)
        try:
            if ctx.inputs.get("password") is not None:  # resolved from its reference
                credentials: dict[str, Any] = {"username": ctx.inputs.get("username"),
                                               "password": ctx.inputs["password"]}
            else:
                creds, _ = await resolve_credentials(asset, ctx.secrets, settings)
                credentials = dict(creds)
                if asset.user and "username" not in credentials:
                    credentials["username"] = asset.user
        except SecretError as err:
            kind, retryable = secret_failure(err)
            return StepOutcome(ok=False, error=f"credentials of asset {asset.id!r}: {err}",
                               error_type=kind, retryable=retryable)
        body = request_body(ctx, asset, command, credentials, timeout)
        client = AutomationServiceClient(base_url)
        call = asyncio.ensure_future(client._send(
            "POST", "/execute", json=body, retry_5xx=False, retry_transport=False,
            error=AutomationServiceError, timeout=timeout + 15))
        try:
            resp = await heartbeating(call, ctx, {"automation_service": base_url,
                                                  "host": asset.host})
            doc = resp.json()
        except AutomationServiceError as err:
            return StepOutcome(ok=False, error=f"automation service: {err}",
                               error_type=ErrorType.AUTOMATION_SERVICE_ERROR,
                               retryable=ctx.step.idempotent or not err.sent)
        except ValueError:
            return StepOutcome(ok=False, error=f"automation service answered {resp.status_code} "
                               "without JSON", error_type=ErrorType.AUTOMATION_SERVICE_ERROR,
                               retryable=False)
        finally:
            await client.aclose()
        if resp.status_code >= 400 and not (isinstance(doc, dict) and "status" in doc):
            return StepOutcome(ok=False, error=f"automation service answered {resp.status_code}",
                               error_type=ErrorType.AUTOMATION_SERVICE_ERROR, retryable=False)
        result = AutomationResult.model_validate(doc.get("data", doc) if isinstance(doc, dict)
                                                 else {})
        output = {"host": asset.host, "asset": asset.id, "via": "automation-service",
                  "connection_type": body["connection_type"], "status": result.status,
                  "execution_id": result.execution_id}
        if result.succeeded:
            return StepOutcome(ok=True, exit_code=result.exit_code or 0,
                               stdout=cap_text(result.stdout), stderr=cap_text(result.stderr),
                               output=output)
        return StepOutcome(ok=False, exit_code=result.exit_code, stdout=cap_text(result.stdout),
                           stderr=cap_text(result.stderr), output=output,
                           error_type=ErrorType.COMMAND_FAILED,
                           error=f"command {result.status} with exit code {result.exit_code} on "
                                 f"{asset.host}: {result.error_message or result.stderr[-500:]}")
