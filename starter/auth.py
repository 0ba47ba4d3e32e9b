"""Who is calling the HTTP API and the payload codec: bearer tokens, never an open door.

Two authenticators, chosen by the settings (`authenticator_from_settings`):

- **OIDC** (`OPSC_OIDC_ISSUER` set; `opsconductor.starter.auth_oidc`): a JWT signed by the
  issuer's keys, checked for signature, `iss`, `aud`, `exp`, `nbf` and an allowed asymmetric
  algorithm. The principal is the token's actor and roles, confined to the tenant its
  `OPSC_OIDC_TENANT_CLAIM` names.
- **Local token** (no issuer): a random token made on first start under `$OPSC_HOME` (mode
  0600) and compared in constant time. It is the machine's operator, so it sees every tenant;
  `serve` then binds only to loopback. A key derived from it (`codec_key`) authorizes only the
  codec, through the path `/codec/key/<key>/...`: the dev stack's Web UI cannot send a bearer
  token (its codec calls carry one only over https and only with UI login), so the endpoint it
  is started with carries this narrower credential instead.

`AuthMiddleware` puts the `Principal` at `request.state.principal` or answers 401 (RFC 6750
`WWW-Authenticate`) before any route runs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from opsconductor.schema.config import Settings
from opsconductor.starter.auth_types import (
    AuthConfigError,
    Authenticator,
    AuthError,
    AuthUnavailable,
    Principal,
    is_loopback,
)

__all__ = ["AuthConfigError", "AuthError", "AuthMiddleware", "AuthUnavailable", "Authenticator",
           "LocalTokenAuth", "Principal", "authenticator_from_settings", "is_loopback",
           "load_or_create_token", "principal_of", "token_path"]

TOKEN_FILE = "api-token"
TOKEN_BYTES = 32
MIN_TOKEN_CHARS = 32
LOCAL_ACTOR = "local-operator"
CODEC_KEY_CONTEXT = b"opsconductor codec key v1"
REALM = "opsconductor"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


# ---------------------------------------------------------------------------- local token

def token_path(settings: Settings) -> Path:
    return (settings.api_token_file or settings.home / TOKEN_FILE).expanduser()


def _read_token(path: Path) -> str:
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise AuthConfigError(f"the API token file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise AuthConfigError(f"the API token file {path} is readable by others (mode "
                         f"{info.st_mode & 0o777:o}); chmod 600 it or delete it for a new one")
    token = path.read_text().strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise AuthConfigError(f"the API token file {path} holds no token of at least "
                         f"{MIN_TOKEN_CHARS} characters; delete it for a new one")
    return token


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The token in `path`, or a new random one written there with mode 0600; and whether it
    was made now (then it is to be printed, once). Refuses a file others may read."""
    if path.exists():
        return _read_token(path), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:  # another process made it meanwhile: use that one
        return _read_token(path), False
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, True


class LocalTokenAuth:
    """The local token: one secret, compared in constant time; its holder sees all tenants."""

    def __init__(self, token: str, path: Path | None = None):
        self._token = token.encode()
        self.path = path
        self.codec_key = hmac.new(self._token, CODEC_KEY_CONTEXT, hashlib.sha256).hexdigest()

    @classmethod
    def from_settings(cls, settings: Settings) -> tuple[LocalTokenAuth, str | None]:
        """The authenticator and, when the token was made just now, the token to print."""
        path = token_path(settings)
        token, created = load_or_create_token(path)
        return cls(token, path), token if created else None

    async def authenticate(self, token: str) -> Principal:
        if not hmac.compare_digest(token.encode(), self._token):
            raise AuthError("the token is not this service's local token")
        return Principal(actor=LOCAL_ACTOR, tenant=None, roles=frozenset({LOCAL_ACTOR}))

    def codec_key_valid(self, key: str) -> bool:
        return hmac.compare_digest(key.encode(), self.codec_key.encode())


def authenticator_from_settings(settings: Settings) -> tuple[Authenticator, str | None]:
    """OIDC when an issuer is configured, else the local token (and the token to print once,
    when it was made now). AuthConfigError names a bad setting."""
    if settings.oidc_issuer:
        from opsconductor.starter.auth_oidc import OidcAuth

        return OidcAuth.from_settings(settings), None
    return LocalTokenAuth.from_settings(settings)


# ---------------------------------------------------------------------------- HTTP

def bearer(headers: Any) -> str:
    """The bearer token of an `Authorization` header; AuthError without one."""
    value = headers.get("authorization")
    if not value:
        raise AuthError("a bearer token is required (Authorization: Bearer <token>)",
                        error=None)
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("the Authorization header is not `Bearer <token>`", error=None)
    return token.strip()


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")


def refusal(err: AuthError | AuthUnavailable) -> JSONResponse:
    if isinstance(err, AuthUnavailable):
        return JSONResponse({"error": f"authentication is unavailable: {err}"},
                            status_code=503, headers={"Retry-After": "5"})
    challenge = f'Bearer realm="{REALM}"'
    if err.error:
        challenge += f', error="{err.error}", error_description="{_quoted(str(err))}"'
    return JSONResponse({"error": str(err)}, status_code=err.status,
                        headers={"WWW-Authenticate": challenge})


async def authenticate_request(auth: Authenticator, request: Request) -> Principal:
    return await auth.authenticate(bearer(request.headers))


def principal_of(request: Request) -> Principal:
    """The principal `AuthMiddleware` authenticated (a route behind it always has one)."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise AuthError("no authenticated principal")
    return principal


class AuthMiddleware:
    """Every HTTP request needs a valid bearer token, except the exact `public` paths and
    paths under `delegated` prefixes (a mounted app that authenticates itself: the codec)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *,
                 auth: Authenticator, public: Iterable[str] = (),
                 delegated: Iterable[str] = ()):
        self.app = app
        self.auth = auth
        self.public = frozenset(public)
        self.delegated = tuple(delegated)

    def _exempt(self, path: str) -> bool:
        return path in self.public or any(path == p or path.startswith(p + "/")
                                          for p in self.delegated)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            principal = await authenticate_request(self.auth, request)
        except (AuthError, AuthUnavailable) as err:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await refusal(err)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
