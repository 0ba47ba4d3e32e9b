"""OIDC bearer tokens on the HTTP API and the codec, over real HTTP against a local test
issuer: every forgery or misfit token gets 401 on every protected route (counted), the JWKS
is refetched on a key rotation but not for every unknown `kid`, and a token sees only its
tenant."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsconductor.schema.config import load_settings
from opsconductor.starter.auth import Principal
from opsconductor.starter.auth_oidc import OidcAuth
from tests.api_auth.conftest import ApiFactory, oidc_auth
from tests.api_auth.issuer import (
    AUDIENCE,
    ISSUER,
    Issuer,
    Key,
    hmac_with_public_key,
    unsigned_token,
)
from tests.helpers import request, serving, shell

pytestmark = pytest.mark.asyncio(loop_scope="session")


def protected_routes(execution_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every route that needs a token, with a request that would succeed given one."""
    return [("GET", "/executions", {}), ("GET", f"/executions/{execution_id}", {}),
            ("GET", f"/executions/{execution_id}/steps/a/output", {}),
            ("GET", f"/executions/{execution_id}/events", {}),
            ("GET", "/metrics", {}), ("GET", "/openapi.json", {}),
            ("POST", "/codec/decode", {"json": {"payloads": []}}),
            ("POST", "/codec/encode", {"json": {"payloads": []}})]


async def status_of(http: httpx.AsyncClient, method: str, path: str, token: str | None,
                    **kw: Any) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.stream(method, path, headers=headers, **kw) as resp:
        return resp.status_code  # an SSE stream is closed without being read to its end


async def test_every_bad_token_gets_401_on_every_protected_route(
        engine: Any, api_with: ApiFactory, issuer: Issuer, keys: dict[str, Key],
        tmp_path: Path) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    done = await engine.execute(request([shell("a", "echo hello")], tenant=tenant), wait=True)
    auth = oidc_auth(tmp_path, str(issuer.write_jwks(tmp_path / "jwks.json")))
    now = int(time.time())
    k1, stranger = keys["k1"], keys["stranger"]
    good = issuer.claims(tenant=tenant)
    cases: dict[str, str | None] = {
        "no token": None,
        "expired": issuer.token(tenant=tenant, exp=now - 120, nbf=now - 600),
        "not yet valid (nbf)": issuer.token(tenant=tenant, nbf=now + 600, exp=now + 900),
        "wrong audience": issuer.token(tenant=tenant, aud="another-client"),
        "wrong issuer": issuer.token(tenant=tenant, iss="https://evil.test/realms/ops"),
        "alg none": unsigned_token(good, kid=k1.kid),
        "HS256 keyed with the public key": hmac_with_public_key(good, k1),
        "another key, the issuer's kid": issuer.token(stranger, kid=k1.kid, tenant=tenant),
        "another key, its own kid": issuer.token(stranger, tenant=tenant),
        "no exp": issuer.token(tenant=tenant, exp=None),
        "no tenant claim": issuer.token(tenant=None),
        "not a JWT": "not.a.jwt",
    }
    refused: Counter[str] = Counter()
    async with api_with(auth) as http:
        routes = protected_routes(done.execution_id)
        for method, path, kw in routes:  # the positive control: a good token passes
            assert await status_of(http, method, path, issuer.token(tenant=tenant), **kw) \
                == 200, (method, path)
        for case, token in cases.items():
            for method, path, kw in routes:
                code = await status_of(http, method, path, token, **kw)
                assert code == 401, (case, method, path, code)
                refused[case] += 1
        basic = await http.get("/executions", headers={"Authorization": "Basic YTpi"})
        assert basic.status_code == 401 and basic.headers["www-authenticate"].startswith(
            "Bearer")
        expired = await http.get("/executions",
                                 headers={"Authorization": f"Bearer {cases['expired']}"})
        assert 'error="invalid_token"' in expired.headers["www-authenticate"]
        assert "expired" in expired.json()["error"]
        for path in ("/healthz", "/readyz"):
            assert (await http.get(path)).status_code == 200  # public, by design
        spec = (await http.get("/openapi.json", headers={
            "Authorization": f"Bearer {issuer.token(tenant=tenant)}"})).json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearer": []}]
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    for case in cases:
        print(f"[oidc-401] {case}: {refused[case]}/{len(routes)} routes refused")
    print(f"[oidc-401] total {sum(refused.values())} refusals over {len(cases)} cases x "
          f"{len(routes)} routes")
    assert all(refused[c] == len(routes) for c in cases)


async def test_a_rotated_key_is_fetched_once_and_unknown_kids_do_not_hammer_the_issuer(
        api_with: ApiFactory, issuer: Issuer, keys: dict[str, Key], tmp_path: Path) -> None:
    async with serving(issuer.app()) as jwks_url:
        auth = oidc_auth(tmp_path, f"{jwks_url}/certs", OPSC_OIDC_JWKS_REFRESH_SECONDS="60")
        async with api_with(auth) as http:
            async def get(token: str) -> int:
                return (await http.get("/executions", headers={
                    "Authorization": f"Bearer {token}"})).status_code

            assert await get(issuer.token(keys["k1"])) == 200
            assert issuer.jwks_fetches == 1
            assert await get(issuer.token(keys["k1"])) == 200
            assert issuer.jwks_fetches == 1  # cached
            issuer.keys = [keys["k1"], keys["k2"]]  # the issuer rotates in a new key
            assert await get(issuer.token(keys["k2"])) == 200
            assert issuer.jwks_fetches == 2  # refetched for the unknown kid
            forged = [await get(issuer.token(keys["stranger"], kid=f"forged-{i}"))
                      for i in range(20)]
            assert forged == [401] * 20
            assert issuer.jwks_fetches == 2  # within the refresh window: not refetched
            assert await get(issuer.token(keys["k2"])) == 200
    print(f"[oidc-jwks] rotation accepted after 1 refetch; 20 unknown kids refused with "
          f"{issuer.jwks_fetches - 2} further fetches; {issuer.jwks_fetches} fetches in all")


async def test_a_token_sees_only_its_tenant(engine: Any, api_with: ApiFactory, issuer: Issuer,
                                            tmp_path: Path) -> None:
    a, b = f"tenant-a-{uuid.uuid4().hex[:8]}", f"tenant-b-{uuid.uuid4().hex[:8]}"
    mine = [await engine.execute(request([shell("a", f"echo a-{i}")], tenant=a), wait=True)
            for i in range(2)]
    theirs = await engine.execute(request([shell("a", "echo b-secret")], tenant=b), wait=True)
    jwks = str(issuer.write_jwks(tmp_path / "jwks.json"))
    counts: Counter[str] = Counter()

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async with api_with(oidc_auth(tmp_path, jwks)) as http:
        ta = bearer(issuer.token(tenant=a))
        listed = (await http.get("/executions", headers=ta, params={"limit": 1000})).json()
        assert {x["execution_id"] for x in listed["items"]} == {m.execution_id for m in mine}
        counts["A's list: A's executions"] = len(listed["items"])
        other = (await http.get("/executions", headers=ta, params={"tenant": b})).json()
        assert other == {"items": [], "next_cursor": None}
        counts["A's list asking for B"] = len(other["items"])
        for ident in (theirs.execution_id, theirs.workflow_id):
            paths = [f"/executions/{ident}", f"/executions/{ident}/steps/a/output",
                     f"/executions/{ident}/events"]
            for path in paths:
                resp = await http.get(path, headers=ta)
                assert resp.status_code == 404, (path, resp.text)
                assert resp.json() == {"error": f"no execution with id {ident!r}"}
                counts["404 for B's execution/output/events"] += 1
        own = mine[0].execution_id
        assert (await http.get(f"/executions/{own}", headers=ta)).status_code == 200
        out = (await http.get(f"/executions/{own}/steps/a/output", headers=ta)).json()
        assert any("a-0" in s["text"] for s in out["streams"])
        async with http.stream("GET", f"/executions/{own}/events", headers=ta) as events:
            body = "".join([line async for line in events.aiter_lines()])
        assert events.status_code == 200 and "event: end" in body
        # B's own token reads B's output: the 404s above were the tenancy, not absence.
        tb = bearer(issuer.token(tenant=b))
        out_b = (await http.get(f"/executions/{theirs.execution_id}/steps/a/output",
                                headers=tb)).json()
        assert any("b-secret" in s["text"] for s in out_b["streams"])
        # An operator role that is not configured as multi-tenant grants nothing more.
        op = bearer(issuer.token(tenant=a, roles=["ops-all-tenants"]))
        assert (await http.get(f"/executions/{theirs.execution_id}", headers=op)
                ).status_code == 404
        no_tenant = bearer(issuer.token(tenant=None, roles=["ops-all-tenants"]))
        assert (await http.get("/executions", headers=no_tenant)).status_code == 401
    explicit = oidc_auth(tmp_path, jwks, OPSC_OIDC_ALL_TENANTS_ROLE="ops-all-tenants")
    async with api_with(explicit) as http:
        seen = (await http.get("/executions", headers=no_tenant,
                               params={"limit": 1000})).json()["items"]
        assert {a, b} <= {x["tenant"] for x in seen}
        assert (await http.get(f"/executions/{theirs.execution_id}", headers=no_tenant)
                ).status_code == 200
        counts["operator (explicit all-tenants role): tenants seen"] = len(
            {x["tenant"] for x in seen})
    for what, n in counts.items():
        print(f"[tenancy] {what}: {n}")


async def test_claims_map_onto_rbac_principals(issuer: Issuer, tmp_path: Path) -> None:
    jwks = str(issuer.write_jwks(tmp_path / "jwks.json"))
    auth = oidc_auth(tmp_path, jwks)
    exp = int(time.time()) + 300
    p = await auth.authenticate(issuer.token(tenant="acme", roles=["approver"], exp=exp))
    assert p == Principal(actor="alice", tenant="acme", issuer=ISSUER, expires_at=exp + 30,
                          roles=frozenset({"sre", "reader", "approver"}))  # not "not-ours"
    assert p.subjects == {"actor:alice", "role:sre", "role:reader", "role:approver"}
    by_sub = await auth.authenticate(issuer.token(preferred_username=None, sub="svc-1"))
    assert by_sub.actor == "svc-1"
    custom = oidc_auth(tmp_path, jwks, OPSC_OIDC_TENANT_CLAIM="org",
                       OPSC_OIDC_ACTOR_CLAIM="email", OPSC_OIDC_CLIENT_ID="other-client")
    q = await custom.authenticate(issuer.token(tenant=None, org="o1", email="a@x.test"))
    assert (q.tenant, q.actor) == ("o1", "a@x.test") and "not-ours" in q.roles
    gated = oidc_auth(tmp_path, jwks, OPSC_API_ROLES="opsc-reader")
    with pytest.raises(Exception, match="holds none of the roles") as refused:
        await gated.authenticate(issuer.token())
    assert getattr(refused.value, "status", None) == 403
    assert (await gated.authenticate(issuer.token(roles=["opsc-reader"]))).actor == "alice"


@pytest.mark.parametrize(("env", "named"), [
    ({"OPSC_OIDC_ALGORITHMS": "RS256,HS256"}, "HS256"),
    ({"OPSC_OIDC_ALGORITHMS": "none"}, "none"),
    ({"OPSC_OIDC_AUDIENCE": ""}, "OPSC_OIDC_AUDIENCE"),
    ({"OPSC_OIDC_ISSUER": "http://id.example.com/realms/ops"}, "OPSC_OIDC_ISSUER"),
    ({"OPSC_OIDC_JWKS": "http://id.example.com/certs"}, "OPSC_OIDC_JWKS"),
    ({"OPSC_OIDC_JWKS": "/nonexistent/jwks.json"}, "OPSC_OIDC_JWKS"),
])
async def test_unsafe_or_incomplete_configuration_is_refused(env: dict[str, str], named: str,
                                                             tmp_path: Path) -> None:
    settings = load_settings({"OPSC_HOME": str(tmp_path), "OPSC_OIDC_ISSUER": ISSUER,
                              "OPSC_OIDC_AUDIENCE": AUDIENCE,
                              "OPSC_OIDC_JWKS": str(tmp_path), **env})
    with pytest.raises(ValueError, match=named):
        OidcAuth.from_settings(settings)


async def test_http_off_loopback_only_when_allowed_explicitly(tmp_path: Path) -> None:
    settings = load_settings({"OPSC_HOME": str(tmp_path),
                              "OPSC_OIDC_ISSUER": "http://keycloak:8080/realms/ops",
                              "OPSC_OIDC_AUDIENCE": AUDIENCE, "OPSC_OIDC_ALLOW_HTTP": "true",
                              "OPSC_OIDC_JWKS": "http://keycloak:8080/realms/ops/certs"})
    assert OidcAuth.from_settings(settings).jwks.allow_http


async def test_keys_from_the_issuers_discovery_and_a_rotated_jwks_file(
        api_with: ApiFactory, keys: dict[str, Key], tmp_path: Path) -> None:
    published = Issuer(keys=[keys["k1"]])
    async with serving(published.app()) as base:
        published.issuer = base  # a local issuer: discovery at <issuer>/.well-known/...
        settings = load_settings({"OPSC_HOME": str(tmp_path), "OPSC_OIDC_ISSUER": base,
                                  "OPSC_OIDC_AUDIENCE": AUDIENCE})
        async with api_with(OidcAuth.from_settings(settings)) as http:
            resp = await http.get("/executions", headers={
                "Authorization": f"Bearer {published.token()}"})
            assert resp.status_code == 200, resp.text
        assert published.jwks_fetches == 1
    issuer = Issuer(keys=[keys["k1"]])
    jwks = issuer.write_jwks(tmp_path / "jwks.json")
    async with api_with(oidc_auth(tmp_path, str(jwks))) as http:
        def get(key: Key) -> Any:
            return http.get("/executions", headers={
                "Authorization": f"Bearer {issuer.token(key)}"})

        assert (await get(keys["k1"])).status_code == 200
        issuer.keys = [keys["k2"]]  # rotated: k1 withdrawn, k2 published in the file
        issuer.write_jwks(jwks)
        assert (await get(keys["k2"])).status_code == 200  # unknown kid: the file re-read
    print("[oidc-jwks] discovery found the keys; a rotated JWKS file was re-read on the new kid")


async def test_an_event_stream_ends_when_its_token_expires_and_resumes_with_a_new_one(
        engine: Any, api_with: ApiFactory, issuer: Issuer, tmp_path: Path) -> None:
    from tests.helpers import events, pending, step, until

    tenant = f"t-{uuid.uuid4().hex[:8]}"
    resp = await engine.execute(request([step("a")], tenant=tenant, approval_level=1,
                                        environment="staging"), wait=False)
    await until(engine, resp.workflow_id, pending)
    auth = oidc_auth(tmp_path, str(issuer.write_jwks(tmp_path / "jwks.json")),
                     OPSC_OIDC_LEEWAY_SECONDS="0")
    path = f"/executions/{resp.execution_id}/events"
    async with api_with(auth) as http:
        short = issuer.token(tenant=tenant, exp=int(time.time()) + 3)
        started = time.monotonic()
        async with http.stream("GET", path, headers={"Authorization": f"Bearer {short}"}) as r:
            assert r.status_code == 200
            lines = [line async for line in r.aiter_lines()]
        took = time.monotonic() - started
        assert "event: token-expired" in lines, lines
        first = [int(x.removeprefix("id: ")) for x in lines if x.startswith("id: ")]
        assert first and took < 30
        assert (await engine.approve(resp.execution_id, "bob")).accepted
        fresh = {"Authorization": f"Bearer {issuer.token(tenant=tenant)}",
                 "Last-Event-ID": str(first[-1])}
        async with http.stream("GET", path, headers=fresh) as r:
            rest = [line async for line in r.aiter_lines()]
        assert "event: end" in rest
    second = [int(x.removeprefix("id: ")) for x in rest if x.startswith("id: ")]
    assert first + second == [e["id"] for e in await events(engine.pool, resp.execution_id)]
    print(f"[oidc-sse] the stream ended {took:.1f}s after a 3 s token was issued; "
          f"{len(first)} + {len(second)} events, none lost or repeated after reconnecting")


async def test_unreachable_keys_are_503_with_the_reason_and_metrics_public_only_when_set(
        engine: Any, issuer: Issuer, tmp_path: Path) -> None:
    from opsconductor.starter.api import create_app
    from opsconductor.starter.ports import free_port

    closed = f"http://127.0.0.1:{free_port('127.0.0.1')}/certs"  # nothing listens there
    auth = oidc_auth(tmp_path, closed)
    async with (serving(create_app(engine, auth=auth, metrics_public=True), lifespan="on")
                as url, httpx.AsyncClient(base_url=url, timeout=30) as http):
        resp = await http.get("/executions",
                              headers={"Authorization": f"Bearer {issuer.token()}"})
        assert resp.status_code == 503 and "signing keys could not be read" in resp.text
        assert resp.headers["retry-after"] == "5"
        for _ in range(10):  # within the retry delay: answered without trying again
            again = await http.get("/executions",
                                   headers={"Authorization": f"Bearer {issuer.token()}"})
            assert again.status_code == 503
        assert auth.jwks.fetches == 1
        assert (await http.get("/metrics")).status_code == 200  # configured public
        assert (await http.get("/openapi.json")).status_code == 401  # still not


async def test_the_serve_command_takes_the_issuers_tokens(
        engine: Any, temporal_server: Any, pg_url: str, issuer: Issuer,
        tmp_path: Path) -> None:
    import asyncio

    from opsconductor.starter.ports import free_port
    from tests.helpers import wait_for
    from tests.integration.helpers import OPSCONDUCTOR, opsc_env

    port = free_port("127.0.0.1")
    env = opsc_env(temporal_address=temporal_server.address, database_url=pg_url,
                   task_queue=engine.settings.task_queue, home=tmp_path / "home",
                   OPSC_OIDC_ISSUER=ISSUER, OPSC_OIDC_AUDIENCE=AUDIENCE,
                   OPSC_OIDC_JWKS=str(issuer.write_jwks(tmp_path / "jwks.json")))
    proc = await asyncio.create_subprocess_exec(
        OPSCONDUCTOR, "serve", "--port", str(port), env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            async def ready() -> bool:
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, what="`opsconductor serve` with an issuer to be ready")
            assert (await http.get("/executions")).status_code == 401
            expired = issuer.token(exp=int(time.time()) - 100, nbf=None)
            assert (await http.get("/executions", headers={
                "Authorization": f"Bearer {expired}"})).status_code == 401
            good = await http.get("/executions", headers={
                "Authorization": f"Bearer {issuer.token(tenant='no-such-tenant')}"})
            assert good.status_code == 200 and good.json()["items"] == []
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
    assert proc.stderr is not None
    said = (await proc.stderr.read()).decode()
    assert f"requires bearer tokens of {ISSUER}" in said, said
    assert not (tmp_path / "home" / "api-token").exists()  # no local token with an issuer
