"""PostgreSQL over TLS with CA verification: an embedded server with `ssl=on`, a test CA and a
server certificate made here, `hostssl`-only client authentication and PostgreSQL's durable
defaults. Our pool (and so the worker, the API and every command) takes `sslmode` and
`sslrootcert` from the URL, as libpq does."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsconductor.activities.db import DatabaseUnavailable, create_pool
from opsconductor.schema.migrate import migrate, status
from opsconductor.starter import cli
from opsconductor.starter.embedded_postgres import EmbeddedPostgres, ServerTls, ssl_bin_dir
from tests.tls_certs import Ca, Pair, make_ca, make_leaf


class TlsServer:
    def __init__(self, server: EmbeddedPostgres, ca: Ca, wrong_ca: Ca) -> None:
        self.server, self.ca, self.wrong_ca = server, ca, wrong_ca

    def url(self, query: str, host: str = "127.0.0.1") -> str:
        return f"postgresql://postgres@{host}:{self.server.port}/opsconductor?{query}"


@pytest.fixture(scope="module")
def tls_server(session_dir: Path) -> Iterator[TlsServer]:
    folder = session_dir / "pg-tls"
    ca = make_ca(folder / "ca" / "opsc-test-ca.crt", "opsc-test-ca")
    wrong = make_ca(folder / "other" / "someone-elses-ca.crt", "someone-elses-ca")
    pair = make_leaf(ca, Pair(folder / "server.crt", folder / "server.key"),
                     "opsc-test-postgres", server=True, ips=["127.0.0.1"])
    server = EmbeddedPostgres(folder / "pg", tls=ServerTls(cert_file=pair.cert,
                                                           key_file=pair.key),
                              durable=True, bin_dir=ssl_bin_dir())
    server.start(timeout=60)
    try:
        yield TlsServer(server, ca, wrong)
    finally:
        server.discard()


async def test_verify_full_with_the_right_ca_connects_over_tls(tls_server: TlsServer) -> None:
    url = tls_server.url(f"sslmode=verify-full&sslrootcert={tls_server.ca.cert_file}")
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            ssl, version = await conn.fetchrow(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            durable = {name: await conn.fetchval(f"SHOW {name}")
                       for name in ("synchronous_commit", "fsync", "full_page_writes")}
            await migrate(conn)  # the migrator over the same verified TLS connection
            state = await status(conn)
    finally:
        await pool.close()
    assert ssl is True and version.startswith("TLSv1."), version
    assert durable == {"synchronous_commit": "on", "fsync": "on", "full_page_writes": "on"}
    assert state.clean
    print(f"verify-full: {version}, {len(state.applied)} migrations applied over TLS, {durable}")


async def test_a_wrong_ca_is_one_clear_error(tls_server: TlsServer) -> None:
    url = tls_server.url(f"sslmode=verify-full&sslrootcert={tls_server.wrong_ca.cert_file}")
    with pytest.raises(DatabaseUnavailable) as refused:
        await create_pool(url, min_size=1, max_size=1)
    message = str(refused.value)
    assert "\n" not in message
    assert "failed TLS verification" in message and "unable to get local issuer" in message
    assert str(tls_server.wrong_ca.cert_file) in message
    print(f"wrong CA: {message}")


async def test_a_certificate_for_another_host_is_refused(tls_server: TlsServer) -> None:
    url = tls_server.url(f"sslmode=verify-full&sslrootcert={tls_server.ca.cert_file}",
                         host="localhost")  # the certificate names 127.0.0.1 only
    with pytest.raises(DatabaseUnavailable) as refused:
        await create_pool(url, min_size=1, max_size=1)
    message = str(refused.value)
    assert "failed TLS verification" in message and "'localhost'" in message
    print(f"wrong host: {refused.value}")


async def test_a_connection_without_tls_is_refused_by_hostssl(tls_server: TlsServer,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: Any,
                                                              tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailable) as refused:
        await create_pool(tls_server.url("sslmode=disable"), min_size=1, max_size=1)
    assert "no pg_hba.conf entry" in str(refused.value)
    assert "no encryption" in str(refused.value)
    # the same through a command: one line, exit 4 (unreachable)
    monkeypatch.setenv("OPSC_DATABASE_URL", tls_server.url("sslmode=disable"))
    monkeypatch.setenv("OPSC_HOME", str(tmp_path))
    code = await cli.cmd_db_status(argparse.Namespace(json=True))
    report = json.loads(capsys.readouterr().out)
    assert code == cli.EXIT_UNREACHABLE and "no encryption" in report["error"]
    print(f"sslmode=disable: {refused.value}")
