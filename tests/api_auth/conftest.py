"""The test issuer's keys (made once per module: RSA key generation is the slow part) and the
API served over real HTTP behind OIDC authentication."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsconductor.schema.config import load_settings
from opsconductor.starter.api import create_app
from opsconductor.starter.auth_oidc import OidcAuth
from tests.api_auth.issuer import AUDIENCE, ISSUER, Issuer, Key
from tests.helpers import serving


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    """k1, k2 published (k2 only after a rotation); `stranger` never published."""
    return {name: Key(kid=name) for name in ("k1", "k2", "stranger")}


def oidc_auth(tmp_home: Path, jwks: str, **env: str) -> OidcAuth:
    settings = load_settings({"OPSC_HOME": str(tmp_home), "OPSC_OIDC_ISSUER": ISSUER,
                              "OPSC_OIDC_AUDIENCE": AUDIENCE, "OPSC_OIDC_JWKS": jwks, **env})
    return OidcAuth.from_settings(settings)


ApiFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def api_with(engine: Any) -> ApiFactory:
    """`async with api_with(auth) as http`: the API over real HTTP behind `auth`."""
    @asynccontextmanager
    async def start(auth: Any) -> AsyncIterator[httpx.AsyncClient]:
        async with (serving(create_app(engine, auth=auth), lifespan="on") as url,
                    httpx.AsyncClient(base_url=url, timeout=30) as http):
            yield http

    return start


@pytest.fixture
def issuer(keys: dict[str, Key]) -> Issuer:
    return Issuer(keys=[keys["k1"]])
