"""httpx clients for OpsConductor's own services: the Asset Service, the Automation Service,
and `POST {service}/execute-plan` of any of them (catalog tools routed to a service).

Asset Service (read-only here, so every call is safe to repeat): connection errors and 5xx
answers are retried with exponential backoff; 404 and 401/403 are typed errors because they
mean different things to the caller (unknown asset vs. misconfigured token).

    GET /api/v1/assets/{id}                 one asset
    GET /api/v1/assets?hostname=NAME        assets by hostname (also any other filter)
    GET /api/v1/assets/{id}/credentials     the asset's credentials

Answers may be bare or wrapped as `{"data": ...}` / `{"assets": [...]}`; both are accepted.

Automation Service: `POST /execute` runs a command, so it is NOT repeated after the request
may have reached the service; only a failure to connect (nothing was sent) is retried.
`GET /status` is its health check.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict

from opsconductor.schema.config import Settings

DEFAULT_ATTEMPTS = 4
DEFAULT_BACKOFF = 0.2  # seconds; doubled per retry


class ServiceError(RuntimeError):
    """A service answered with an error, or could not be reached after retries."""

    def __init__(self, message: str, status: int | None = None, *, sent: bool = True):
        super().__init__(message)
        self.status = status
        self.sent = sent  # False: the request never left (connection failed), safe to repeat


class AssetServiceError(ServiceError):
    pass


class AssetNotFound(AssetServiceError):
    pass


class AssetServiceAuthError(AssetServiceError):
    pass


class AutomationServiceError(ServiceError):
    pass


def _unwrap(doc: Any) -> Any:
    if isinstance(doc, dict) and set(doc) & {"data", "result"} and len(doc) <= 4:
        inner = doc.get("data", doc.get("result"))
        if isinstance(inner, dict | list):
            return inner
    return doc


def _as_list(doc: Any) -> list[dict[str, Any]]:
    doc = _unwrap(doc)
    if isinstance(doc, dict):
        for key in ("assets", "items", "results"):
            if isinstance(doc.get(key), list):
                return [a for a in doc[key] if isinstance(a, dict)]
        return [doc]
    if isinstance(doc, list):
        return [a for a in doc if isinstance(a, dict)]
    return []


class _RetryingClient:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 10.0,
                 attempts: int = DEFAULT_ATTEMPTS, backoff: float = DEFAULT_BACKOFF,
                 transport: httpx.AsyncBaseTransport | None = None):
        headers = {"Accept": "application/json", "User-Agent": "opsconductor-execution"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers,
                                         timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, method: str, path: str, *, retry_5xx: bool, retry_transport: bool,
                    error: type[ServiceError], timeout: float | None = None,
                    **kw: Any) -> httpx.Response:
        last: str = ""
        sent = False
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                extra: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
                resp = await self._client.request(method, path, **kw, **extra)
            except httpx.ConnectError as err:
                last = f"cannot connect to {self.base_url}: {err}"
                continue  # nothing was sent: always safe to try again
            except httpx.TransportError as err:
                last = f"{type(err).__name__} talking to {self.base_url}{path}: {err}"
                sent = True
                if retry_transport:
                    continue
                raise error(last) from err
            if resp.status_code >= 500 and retry_5xx:
                last = f"{method} {path} answered {resp.status_code}"
                sent = True
                continue
            return resp
        raise error(f"{last} (after {self.attempts} attempts)", sent=sent)


class AssetServiceClient(_RetryingClient):
    """Read access to the Asset Service."""

    @classmethod
    def from_settings(cls, settings: Settings) -> AssetServiceClient | None:
        """A client when `asset_service_url` is configured, else None (inventory file)."""
        if not settings.asset_service_url:
            return None
        token = settings.asset_service_token
        return cls(settings.asset_service_url,
                   token=token.get_secret_value() or None if token else None)

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        resp = await self._send("GET", path, params=params, retry_5xx=True, retry_transport=True,
                                error=AssetServiceError)
        if resp.status_code == 404:
            raise AssetNotFound(f"asset service: {path} not found", 404)
        if resp.status_code in (401, 403):
            raise AssetServiceAuthError(
                f"asset service refused the request ({resp.status_code}): check "
                "OPSC_ASSET_SERVICE_TOKEN", resp.status_code)
        if resp.status_code >= 400:
            raise AssetServiceError(f"asset service: GET {path} answered {resp.status_code}",
                                    resp.status_code)
        try:
            return resp.json()
        except ValueError as err:
            raise AssetServiceError(f"asset service: GET {path} did not answer JSON") from err

    async def get(self, asset_id: str) -> dict[str, Any]:
        doc = _unwrap(await self._get(f"/api/v1/assets/{quote(asset_id, safe='')}"))
        if not isinstance(doc, dict):
            raise AssetServiceError(f"asset service: unexpected answer for asset {asset_id!r}")
        return doc

    async def query(self, **filters: Any) -> list[dict[str, Any]]:
        return _as_list(await self._get("/api/v1/assets", params=filters or None))

    async def get_by_hostname(self, hostname: str) -> dict[str, Any]:
        wanted = hostname.lower()
        # Host names are case-insensitive; the service's filter may not be.
        for candidate in dict.fromkeys([hostname, wanted]):
            for record in await self.query(hostname=candidate):
                names = {str(record.get(k, "")).lower()
                         for k in ("hostname", "name", "ip_address")}
                if wanted in names:
                    return record
        raise AssetNotFound(f"asset service: no asset with hostname {hostname!r}", 404)

    async def find(self, target: str) -> dict[str, Any]:
        """By id, then by hostname: the same rule as the inventory file."""
        try:
            return await self.get(target)
        except AssetNotFound:
            return await self.get_by_hostname(target)

    async def credentials(self, asset_id: str) -> dict[str, Any]:
        doc = _unwrap(await self._get(f"/api/v1/assets/{quote(asset_id, safe='')}/credentials"))
        return doc if isinstance(doc, dict) else {}


class AutomationResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    execution_id: str | None = None
    status: str = "unknown"
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    started_at: str | None = None
    completed_at: str | None = None
    error_message: str | None = None

    @property
    def succeeded(self) -> bool:
        return (self.status.lower() in ("completed", "success", "succeeded")
                and (self.exit_code in (0, None)) and not self.error_message)


class AutomationServiceClient(_RetryingClient):
    """The Automation Service runs commands on hosts it reaches (SSH, PowerShell, local)."""

    async def execute(self, *, command: str, target_host: str,
                      connection_type: Literal["ssh", "powershell", "local"],
                      credentials: dict[str, Any], timeout: float,
                      working_directory: str | None = None,
                      environment_vars: dict[str, str] | None = None) -> AutomationResult:
        body = {"command": command, "target_host": target_host,
                "connection_type": connection_type, "credentials": credentials,
                "timeout": int(max(1, timeout)), "working_directory": working_directory,
                "environment_vars": environment_vars or {}}
        # The service enforces `timeout` itself; give the HTTP call a margin to report it.
        resp = await self._send("POST", "/execute", json=body, retry_5xx=False,
                                retry_transport=False, error=AutomationServiceError,
                                timeout=timeout + 15)
        if resp.status_code in (401, 403):
            raise AutomationServiceError(
                f"automation service refused the request ({resp.status_code})", resp.status_code)
        try:
            doc = _unwrap(resp.json())
        except ValueError as err:
            raise AutomationServiceError(
                f"automation service answered {resp.status_code} without JSON",
                resp.status_code) from err
        if resp.status_code >= 400 and not (isinstance(doc, dict) and "status" in doc):
            detail = doc.get("detail") if isinstance(doc, dict) else None
            raise AutomationServiceError(
                f"automation service answered {resp.status_code}: {detail or doc}",
                resp.status_code)
        if not isinstance(doc, dict):
            raise AutomationServiceError("automation service: unexpected answer to /execute")
        return AutomationResult.model_validate(doc)

    async def status(self) -> dict[str, Any]:
        resp = await self._send("GET", "/status", retry_5xx=True, retry_transport=True,
                                error=AutomationServiceError)
        if resp.status_code >= 400:
            raise AutomationServiceError(f"automation service status: {resp.status_code}",
                                         resp.status_code)
        doc = _unwrap(resp.json())
        return doc if isinstance(doc, dict) else {"status": doc}


# ------------------------------------------------------------ POST {service}/execute-plan

class ExecutePlanRequest(BaseModel):
    """Upstream Stage E's call to a service: one step per call, earlier results beside it."""

    execution_id: str
    plan: dict[str, Any]  # {"steps": [step], "previous_results": [result, ...]}
    tenant_id: str
    actor_id: int


class ServiceStepResult(BaseModel):
    """One item of `step_results` as upstream's services write it (each service adds its
    own keys: `output` for asset/communication/network, `stdout`/`exit_code` for commands)."""

    model_config = ConfigDict(extra="allow")
    status: str = "failed"
    tool: str | None = None
    step_index: int | None = None
    output: Any = None
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    error: str | None = None
    message: str | None = None

    @property
    def completed(self) -> bool:
        """Upstream's Stage E counts a step done only when its status is `completed`."""
        return self.status == "completed"


class ExecutePlanResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    execution_id: str | None = None
    status: str = "failed"
    result: Any = None
    step_results: list[ServiceStepResult] = []
    error_message: str | None = None


class ServiceUnavailable(ServiceError):
    """The service could not take the request (no connection, 502/503/504): nothing ran."""


# Answers that mean the request was not taken: a gateway or an overloaded server said so.
NOT_TAKEN = frozenset({502, 503, 504})


class PlanServiceClient(_RetryingClient):
    """`POST /execute-plan` of an OpsConductor service. The call acts, so it is sent once:
    only a failure to connect or a 502/503/504 (the request was not taken) is repeated, by
    the caller, which knows how long the step may wait."""

    async def execute_plan(self, body: ExecutePlanRequest, *, timeout: float,
                           actor: str | None = None) -> ExecutePlanResponse:
        headers = {"X-OpsConductor-Actor": actor} if actor else {}
        try:
            resp = await self._client.post("/execute-plan", json=body.model_dump(mode="json"),
                                           timeout=timeout, headers=headers)
        except httpx.ConnectError as err:
            raise ServiceUnavailable(f"cannot connect to {self.base_url}: {err}",
                                     sent=False) from err
        except httpx.TransportError as err:
            raise ServiceError(f"{type(err).__name__} after sending to {self.base_url}"
                               f"/execute-plan: the outcome is unknown") from err
        if resp.status_code in NOT_TAKEN:
            raise ServiceUnavailable(f"{self.base_url}/execute-plan answered "
                                     f"{resp.status_code}", resp.status_code, sent=False)
        try:
            doc = resp.json()
        except ValueError as err:
            raise ServiceError(f"{self.base_url}/execute-plan answered {resp.status_code} "
                               "without JSON", resp.status_code) from err
        if resp.status_code >= 400:
            detail = doc.get("detail") if isinstance(doc, dict) else doc
            raise ServiceError(f"{self.base_url}/execute-plan answered {resp.status_code}: "
                               f"{detail}", resp.status_code)
        try:
            return ExecutePlanResponse.model_validate(doc)
        except ValueError as err:
            raise ServiceError(f"{self.base_url}/execute-plan: unexpected answer: {err}",
                               resp.status_code) from err


def service_url(settings: Settings, location: str) -> str | None:
    """The configured URL of an upstream service (schema.catalog.ROUTES names the field)."""
    from opsconductor.schema.catalog import ROUTES

    route = ROUTES.get(location)
    return getattr(settings, route.setting, None) or None if route else None


def unconfigured_services(steps: Any, settings: Settings) -> list[tuple[str, str]]:
    """(step id, why) for each step sent to a service whose URL is not set: refused at
    submission, naming the setting."""
    from opsconductor.schema.catalog import ROUTES
    from opsconductor.schema.enums import StepKind

    out = []
    for step in steps:
        if step.kind is StepKind.SERVICE and step.connector in ROUTES:
            route = ROUTES[step.connector]
            if not service_url(settings, route.location):
                out.append((step.id, f"{step.tool} is sent to the {route.location} "
                                     f"(POST /execute-plan), which is not configured: set "
                                     f"{route.env}"))
    return out
