"""A local OIDC issuer for the tests: its own RSA keys (made here with `cryptography`), its
JWKS as a file or served over HTTP, and tokens it signs — good ones and every forgery the API
must refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ISSUER = "https://id.test.invalid/realms/ops"
AUDIENCE = "opsconductor-api"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Key:
    kid: str
    private: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        doc = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**doc, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class Issuer:
    keys: list[Key]
    issuer: str = ISSUER
    audience: str = AUDIENCE
    jwks_fetches: int = 0

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys]}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()))
        return path

    def app(self) -> Starlette:
        """The issuer's JWKS endpoint (`/certs`), counting its fetches, and its discovery
        document (naming `/certs` under the base URL it was reached at)."""
        async def certs(_request: Request) -> JSONResponse:
            self.jwks_fetches += 1
            return JSONResponse(self.jwks())

        async def discovery(request: Request) -> JSONResponse:
            base = str(request.base_url).rstrip("/")
            return JSONResponse({"issuer": self.issuer, "jwks_uri": f"{base}/certs"})

        return Starlette(routes=[Route("/certs", certs),
                                 Route("/.well-known/openid-configuration", discovery)])

    def claims(self, tenant: str | None = "acme", **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        doc: dict[str, Any] = {
            "iss": self.issuer, "aud": self.audience, "sub": str(uuid.uuid4()),
            "preferred_username": "alice", "iat": now, "nbf": now - 5, "exp": now + 300,
            "realm_access": {"roles": ["sre"]},
            "resource_access": {self.audience: {"roles": ["reader"]},
                                "other-client": {"roles": ["not-ours"]}}}
        if tenant is not None:
            doc["tenant"] = tenant
        doc.update(extra)
        return {k: v for k, v in doc.items() if v is not None}

    def token(self, key: Key | None = None, *, kid: str | None = None,
              alg: str = "RS256", **claims: Any) -> str:
        key = key or self.keys[0]
        return jwt.encode(self.claims(**claims), key.private, algorithm=alg,
                          headers={"kid": kid or key.kid})


def unsigned_token(claims: dict[str, Any], kid: str) -> str:
    """`alg: none`: a token with no signature at all."""
    head = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{head}.{b64url(json.dumps(claims).encode())}."


def hmac_with_public_key(claims: dict[str, Any], key: Key) -> str:
    """HS256 keyed with the issuer's *public* key (which anyone has): the classic
    algorithm-confusion forgery."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    body = b64url(json.dumps(claims).encode())
    mac = hmac.new(key.public_pem(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(mac)}"
