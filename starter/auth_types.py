"""What every authenticator shares: the principal it yields and the errors it raises.

Its own module so that the local-token and OIDC authenticators each build on it, and the
module choosing between them (`auth`) imports both without either importing it back.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

from pydantic import BaseModel, ConfigDict


class AuthError(Exception):
    """The request carries no acceptable credential (401), or one that may not do this
    (`status` 403). The message names what is wrong and never echoes the token."""

    def __init__(self, message: str, *, status: int = 401, error: str | None = "invalid_token"):
        super().__init__(message)
        self.status = status
        self.error = error


class AuthConfigError(ValueError):
    """A setting of authentication is missing or unsafe, or the token file unusable; the
    message names it. Nothing is served."""


class AuthUnavailable(Exception):
    """The issuer's keys could not be had: nobody can be authenticated right now (503)."""


class Principal(BaseModel):
    """An authenticated caller as RBAC sees one: `actor:<actor>` and `role:<role>`, within
    `tenant` (None: every tenant, only for the local token or the configured operator role)."""

    model_config = ConfigDict(frozen=True)

    actor: str
    tenant: str | None
    roles: frozenset[str] = frozenset()
    issuer: str | None = None
    expires_at: float | None = None  # the token's `exp` (+ leeway): long streams end there

    @property
    def subjects(self) -> frozenset[str]:
        """The RBAC subjects this principal matches (`actor:X`, `role:Y`)."""
        return frozenset({f"actor:{self.actor}", *(f"role:{r}" for r in self.roles)})

    def sees(self, tenant: str | None) -> bool:
        return self.tenant is None or tenant == self.tenant


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Principal: ...

    def codec_key_valid(self, key: str) -> bool: ...


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
