"""OIDC bearer tokens (Keycloak or any issuer), verified with PyJWT against the issuer's JWKS.

A token is accepted only when its header names an allowed asymmetric algorithm (never `none`,
never HS*: a public key is never an HMAC secret), its `kid` is one of the issuer's signing keys
(RSA, EC or OKP; `oct` keys are ignored), the signature verifies with that key under that
algorithm, and `iss`, `aud`, `exp` (required) and `nbf` (when present) hold. The keys come
from a URL or a file, are cached for `OPSC_OIDC_JWKS_CACHE_SECONDS` and fetched again when a
token names an unknown `kid` (a rotation) — at most once per `OPSC_OIDC_JWKS_REFRESH_SECONDS`,
so a stream of forged `kid`s costs the issuer one request per window.

Claims to principal: tenant from `OPSC_OIDC_TENANT_CLAIM` (a token without it is refused,
unless it holds the explicitly configured `OPSC_OIDC_ALL_TENANTS_ROLE`), actor from
`OPSC_OIDC_ACTOR_CLAIM` (else `sub`), roles from Keycloak's `realm_access.roles` and
`resource_access.<client>.roles` and a plain `roles` claim.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from jwt.exceptions import PyJWKError, PyJWTError

from opsconductor.schema.config import Settings
from opsconductor.starter.auth_types import (
    AuthConfigError,
    AuthError,
    AuthUnavailable,
    Principal,
    is_loopback,
)

ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                        "ES256", "ES384", "ES512", "ES256K", "EdDSA"})
SIGNING_KTY = frozenset({"RSA", "EC", "OKP"})
MAX_JWKS_BYTES = 1024 * 1024
MAX_TOKEN_CHARS = 16 * 1024
FETCH_TIMEOUT_SECONDS = 10.0
RETRY_AFTER_FAILURE_SECONDS = 5.0
log = logging.getLogger(__name__)


def _commas(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _check_url(url: str, what: str, allow_http: bool = False) -> str:
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname and (
            allow_http or is_loopback(parts.hostname))):
        return url
    raise AuthConfigError(f"{what} must be an https URL (http only on loopback, or with "
                          f"OPSC_OIDC_ALLOW_HTTP inside a trusted network): {url!r}")


class JwksCache:
    """The issuer's signing keys by `kid`, from `source` (URL or file), fetched lazily."""

    def __init__(self, source: str | None, *, issuer: str, ttl: float, refresh: float,
                 allow_http: bool = False):
        self.source = source
        self.allow_http = allow_http
        self.issuer = issuer
        self.ttl = ttl
        self.refresh = refresh
        self.keys: dict[str, dict[str, Any]] = {}
        self.loaded_at: float | None = None
        self.last_refetch: float | None = None  # fetches on account of an unknown kid
        self.fetches = 0
        self.retry_at: float | None = None  # after a failed fetch, not before this
        self.failure: str | None = None
        self._lock = asyncio.Lock()

    async def _document(self, url: str) -> Any:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS,
                                     follow_redirects=False) as http:
            resp = await http.get(url, headers={"Accept": "application/json"})
        if resp.status_code != 200:
            raise AuthUnavailable(f"{url} answered {resp.status_code}")
        if len(resp.content) > MAX_JWKS_BYTES:
            raise AuthUnavailable(f"{url} sent more than {MAX_JWKS_BYTES} bytes")
        return resp.json()

    async def _jwks_url(self) -> str:
        if self.source:
            return self.source
        discovery = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await self._document(discovery)
        uri = doc.get("jwks_uri") if isinstance(doc, dict) else None
        if not isinstance(uri, str):
            raise AuthUnavailable(f"{discovery} names no jwks_uri")
        self.source = _check_url(uri, "the issuer's jwks_uri", self.allow_http)
        return self.source

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            if self.source and "://" not in self.source:
                raw = await asyncio.to_thread(Path(self.source).read_bytes)
                if len(raw) > MAX_JWKS_BYTES:
                    raise AuthUnavailable(f"{self.source} is over {MAX_JWKS_BYTES} bytes")
                doc = json.loads(raw)
            else:
                doc = await self._document(await self._jwks_url())
        except (OSError, ValueError, httpx.HTTPError) as err:
            raise AuthUnavailable(f"the signing keys could not be read: "
                                  f"{type(err).__name__}: {err}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise AuthUnavailable("the signing keys are not a JWKS document ({\"keys\": [...]})")
        keys = {}
        for entry in doc["keys"]:
            if (isinstance(entry, dict) and isinstance(entry.get("kid"), str)
                    and entry.get("kty") in SIGNING_KTY and entry.get("use", "sig") == "sig"):
                keys[entry["kid"]] = entry
        self.keys = keys
        self.loaded_at = time.monotonic()

    async def key(self, kid: str) -> dict[str, Any]:
        """The JWK named `kid`; AuthError when the issuer has no such signing key,
        AuthUnavailable when no keys could be had at all. After a failed fetch the next try
        waits `RETRY_AFTER_FAILURE_SECONDS` (the cached keys serve meanwhile)."""
        async with self._lock:
            now = time.monotonic()
            if self.retry_at is not None and now < self.retry_at:
                if not self.keys:
                    raise AuthUnavailable(self.failure or "the signing keys could not be read")
            else:
                stale = self.loaded_at is None or now - self.loaded_at > self.ttl
                unknown = kid not in self.keys and (self.last_refetch is None
                                                    or now - self.last_refetch >= self.refresh)
                if stale or unknown:
                    if not stale:
                        self.last_refetch = now
                    try:
                        await self._fetch()
                        self.retry_at = self.failure = None
                    except AuthUnavailable as err:
                        self.retry_at, self.failure = now + RETRY_AFTER_FAILURE_SECONDS, str(err)
                        if not self.keys:
                            raise
                        log.warning("keeping the cached signing keys: %s", err)
            found = self.keys.get(kid)
        if found is None:
            raise AuthError(f"the token's signing key {kid!r} is not one of the issuer's")
        return found


class OidcAuth:
    """Bearer JWTs of one issuer, turned into tenant-scoped principals."""

    def __init__(self, *, issuer: str, audiences: list[str], jwks: JwksCache,
                 algorithms: frozenset[str], tenant_claim: str = "tenant",
                 actor_claim: str = "preferred_username", clients: list[str] | None = None,
                 all_tenants_role: str | None = None, required_roles: frozenset[str] = frozenset(),
                 leeway: float = 30.0):
        self.issuer = issuer
        self.audiences = audiences
        self.jwks = jwks
        self.algorithms = algorithms
        self.tenant_claim = tenant_claim
        self.actor_claim = actor_claim
        self.clients = clients if clients is not None else audiences
        self.all_tenants_role = all_tenants_role
        self.required_roles = required_roles
        self.leeway = leeway

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcAuth:
        """AuthConfigError naming the setting that is missing or unsafe."""
        issuer = settings.oidc_issuer
        if not issuer:
            raise AuthConfigError("OPSC_OIDC_ISSUER is not set")
        allow_http = settings.oidc_allow_http
        _check_url(issuer, "OPSC_OIDC_ISSUER", allow_http)
        audiences = _commas(settings.oidc_audience)
        if not audiences:
            raise AuthConfigError("OPSC_OIDC_AUDIENCE is required with OPSC_OIDC_ISSUER (the API's "
                             "client id): a token for another client must not be accepted")
        algorithms = frozenset(_commas(settings.oidc_algorithms))
        unsafe = sorted(algorithms - ASYMMETRIC)
        if unsafe or not algorithms:
            raise AuthConfigError(f"OPSC_OIDC_ALGORITHMS may name only asymmetric algorithms "
                             f"({', '.join(sorted(ASYMMETRIC))}); refused: "
                             f"{', '.join(unsafe) or '(none named)'}")
        source = settings.oidc_jwks
        if source and "://" in source:
            _check_url(source, "OPSC_OIDC_JWKS", allow_http)
        elif source and not Path(source).is_file():
            raise AuthConfigError(f"OPSC_OIDC_JWKS is neither a URL nor a readable file: "
                                  f"{source!r}")
        clients = _commas(settings.oidc_client_id) or None
        return cls(issuer=issuer, audiences=audiences,
                   jwks=JwksCache(source, issuer=issuer, ttl=settings.oidc_jwks_cache_seconds,
                                  refresh=settings.oidc_jwks_refresh_seconds,
                                  allow_http=allow_http),
                   algorithms=algorithms, tenant_claim=settings.oidc_tenant_claim,
                   actor_claim=settings.oidc_actor_claim, clients=clients,
                   all_tenants_role=settings.oidc_all_tenants_role or None,
                   required_roles=frozenset(_commas(settings.api_roles)),
                   leeway=settings.oidc_leeway_seconds)

    async def claims(self, token: str) -> dict[str, Any]:
        """The verified claims; AuthError naming the first check that failed."""
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError(f"the token is over {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError as err:
            raise AuthError(f"the token is not a JWT: {err}") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise AuthError(f"the token's algorithm {alg!r} is not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise AuthError("the token names no signing key (`kid`)")
        entry = await self.jwks.key(kid)
        if entry.get("alg") not in (None, alg):
            raise AuthError(f"the signing key {kid!r} is for {entry['alg']}, not {alg}")
        try:
            key = jwt.PyJWK(entry, algorithm=alg)
        except PyJWKError as err:
            raise AuthError(f"the signing key {kid!r} does not fit {alg}: {err}") from None
        try:
            return dict(jwt.decode(
                token, key=key, algorithms=[alg], audience=self.audiences, issuer=self.issuer,
                leeway=self.leeway, options={"require": ["exp", "iss", "aud"]}))
        except PyJWTError as err:
            raise AuthError(f"the token is not valid: {err}") from None

    def roles(self, claims: dict[str, Any]) -> frozenset[str]:
        found: set[str] = set()

        def take(value: Any) -> None:
            if isinstance(value, list):
                found.update(v for v in value if isinstance(v, str))

        realm = claims.get("realm_access")
        if isinstance(realm, dict):
            take(realm.get("roles"))
        resources = claims.get("resource_access")
        if isinstance(resources, dict):
            for client in self.clients:
                entry = resources.get(client)
                if isinstance(entry, dict):
                    take(entry.get("roles"))
        take(claims.get("roles"))
        return frozenset(found)

    async def authenticate(self, token: str) -> Principal:
        claims = await self.claims(token)
        actor = claims.get(self.actor_claim) or claims.get("sub")
        if not isinstance(actor, str) or not actor:
            raise AuthError(f"the token names no actor ({self.actor_claim!r} or 'sub')")
        roles = self.roles(claims)
        if self.required_roles and not roles & self.required_roles:
            raise AuthError(f"the token holds none of the roles {sorted(self.required_roles)} "
                            "this API requires", status=403, error="insufficient_scope")
        tenant = claims.get(self.tenant_claim)
        if self.all_tenants_role and self.all_tenants_role in roles:
            tenant = None
        elif not isinstance(tenant, str) or not tenant:
            raise AuthError(f"the token has no tenant (claim {self.tenant_claim!r})")
        return Principal(actor=actor, tenant=tenant, roles=roles, issuer=self.issuer,
                         expires_at=float(claims["exp"]) + self.leeway)

    def codec_key_valid(self, key: str) -> bool:
        return False  # with an issuer, only its tokens
