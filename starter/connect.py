"""Connections to Temporal, configured the way the `temporal` CLI is.

`temporalio.envconfig` reads the CLI's own `TEMPORAL_*` variables and `temporal.toml` profiles
(address, namespace, API key, TLS server CA and name, client certificate and key, gRPC
metadata), so an operator's existing set-up works unchanged for the worker and every command.

Precedence, field by field: explicit arguments (command-line flags), then `TEMPORAL_*`
variables, then the profile (`TEMPORAL_PROFILE`, default `default`, in `TEMPORAL_CONFIG_FILE`
or the CLI's default file), then `OPSC_TEMPORAL_ADDRESS` / `OPSC_NAMESPACE`, then a dev
stack's `stack.json`, then the defaults. TLS, the API key and metadata come only from the
first two sources: `OPSC_*` has none.

Every failure (bad configuration, an unreadable or bad certificate, a failed handshake, a
refused key, nothing listening) is a `TemporalConnectError` whose message is one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from temporalio.client import Client
from temporalio.client import Interceptor as ClientInterceptor
from temporalio.envconfig import ClientConfigProfile
from temporalio.runtime import Runtime
from temporalio.service import RetryConfig, RPCError, RPCStatusCode, TLSConfig

from opsconductor.schema.config import DEFAULT_NAMESPACE, Settings
from opsconductor.schema.payloads import DATA_CONVERTER

CONNECT_TIMEOUT = timedelta(seconds=10)


class ConnectionFlags(BaseModel):
    """What a command line gave explicitly (`--address`, `--namespace`, `--profile`,
    `--config-file`): the first source in the precedence."""

    address: str | None = None
    namespace: str | None = None
    profile: str | None = None
    config_file: Path | None = None


# Set once by the command line for the whole command (every client it makes).
FLAGS: ContextVar[ConnectionFlags | None] = ContextVar("opsc_temporal_flags", default=None)


class TemporalConnectError(RuntimeError):
    """Temporal cannot be reached with this configuration; the message is one line."""


class TemporalTarget(BaseModel):
    """Where a client connects and with what, and which source gave each field (for
    `setup`, `health` and error lines). Never carries the key or certificate contents."""

    address: str
    namespace: str
    tls: bool
    server_name: str | None = None
    server_ca: bool = False
    client_certificate: bool = False
    api_key: bool = False
    metadata: list[str] = []
    address_from: str
    namespace_from: str

    def summary(self) -> str:
        extras = [x for x, on in (("TLS", self.tls), ("client certificate",
                                                       self.client_certificate),
                                  ("API key", self.api_key)) if on]
        return (f"{self.address} (namespace {self.namespace}"
                + "".join(f", {x}" for x in extras) + f"; address from {self.address_from})")


@dataclass(frozen=True)
class ConnectPlan:
    """The resolved `Client.connect` arguments and their description."""

    target: TemporalTarget
    kwargs: dict[str, Any]


def _one_line(text: str, limit: int = 400) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _load_profile(profile: str | None, config_file: Path | None,
                  environ: Mapping[str, str] | None, *, disable_env: bool
                  ) -> ClientConfigProfile:
    try:
        return ClientConfigProfile.load(profile=profile, config_source=config_file,
                                        disable_env=disable_env, override_env_vars=environ)
    except Exception as err:  # the bridge's ConfigError: a missing profile, bad TOML
        where = f" in {config_file}" if config_file else ""
        raise TemporalConnectError(_one_line(
            f"Temporal configuration (TEMPORAL_* / temporal.toml{where}): {err}")) from None


def plan_connection(settings: Settings, *, address: str | None = None,
                    namespace: str | None = None, profile: str | None = None,
                    config_file: Path | None = None,
                    environ: Mapping[str, str] | None = None) -> ConnectPlan:
    """Resolve every connection field by the precedence above (`environ`: instead of the
    process's environment, for tests)."""
    flags = FLAGS.get() or ConnectionFlags()
    address, namespace = address or flags.address, namespace or flags.namespace
    profile, config_file = profile or flags.profile, config_file or flags.config_file
    merged = _load_profile(profile, config_file, environ, disable_env=False)
    # The profile alone (which file and profile are still chosen by the environment), to
    # tell which source gave a field.
    chooser = {k: v for k, v in (os.environ if environ is None else environ).items()
               if k in ("TEMPORAL_CONFIG_FILE", "TEMPORAL_PROFILE")}
    from_file = _load_profile(profile, config_file, chooser, disable_env=False)

    def pick(flag: str | None, value: str | None, file_value: str | None, opsc: str | None,
             opsc_name: str, default: str | None) -> tuple[str | None, str]:
        if flag:
            return flag, "flag"
        if value:
            return value, ("temporal.toml profile" if value == file_value
                           else "TEMPORAL_* environment")
        if opsc and opsc != default:
            return opsc, opsc_name
        return default, "default"

    addr, addr_from = pick(address, merged.address, from_file.address, settings.temporal_address,
                           "OPSC_TEMPORAL_ADDRESS or stack.json", None)
    if not addr:
        raise TemporalConnectError(
            "no Temporal server configured: set TEMPORAL_ADDRESS (or a temporal.toml profile, "
            "or OPSC_TEMPORAL_ADDRESS), or start `opsconductor dev`")
    ns, ns_from = pick(namespace, merged.namespace, from_file.namespace, settings.namespace,
                       "OPSC_NAMESPACE or stack.json", DEFAULT_NAMESPACE)
    assert ns is not None
    try:
        tls = _tls(merged)
    except OSError as err:
        raise TemporalConnectError(_one_line(
            f"cannot read a Temporal TLS file: {err.filename}: {err.strerror}")) from None
    kwargs: dict[str, Any] = {"target_host": addr, "namespace": ns, "tls": tls}
    if merged.api_key:
        kwargs["api_key"] = merged.api_key
    if merged.grpc_meta:
        kwargs["rpc_metadata"] = dict(merged.grpc_meta)
    outage = int(settings.temporal_outage_seconds * 1000)
    # Through a restart or rolling upgrade every call (a heartbeat, a step's result, a
    # signal) is retried for the configured bound instead of the SDK's 10 s.
    kwargs["retry_config"] = RetryConfig(initial_interval_millis=100, multiplier=1.5,
                                         max_interval_millis=2000,
                                         max_elapsed_time_millis=outage,
                                         max_retries=max(10, outage // 1000 + 10))
    tls_info = merged.tls
    target = TemporalTarget(
        address=addr, namespace=ns, tls=tls is not False,
        server_name=tls_info.server_name if tls_info else None,
        server_ca=bool(tls_info and tls_info.server_root_ca_cert),
        client_certificate=bool(tls_info and tls_info.client_cert),
        api_key=bool(merged.api_key), metadata=sorted(kwargs.get("rpc_metadata", {})),
        address_from=addr_from, namespace_from=ns_from)
    return ConnectPlan(target=target, kwargs=kwargs)


def _tls(profile: ClientConfigProfile) -> bool | TLSConfig:
    """TLS as the CLI decides it: configured TLS, else on with an API key, else off."""
    if profile.tls is not None:
        tls = profile.tls.to_connect_tls_config()
        if isinstance(tls, TLSConfig) and bool(tls.client_cert) != bool(tls.client_private_key):
            raise TemporalConnectError(
                "Temporal TLS: a client certificate needs its key and a key its certificate "
                "(TEMPORAL_TLS_CLIENT_CERT_* and TEMPORAL_TLS_CLIENT_KEY_*)")
        return tls
    return bool(profile.api_key)


def explain(err: BaseException, target: TemporalTarget) -> str:
    """One line that says what failed and which setting to look at."""
    text = str(err)
    where = f"cannot connect to Temporal at {target.summary()}"
    if isinstance(err, RPCError):
        if err.status in (RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.PERMISSION_DENIED):
            return _one_line(f"{where}: the server refused the credentials "
                             f"({err.status.name.replace('_', '')}: {err.message}); check "
                             "TEMPORAL_API_KEY or the client certificate")
        return _one_line(f"{where}: {err.status.name if err.status else 'error'}: "
                         f"{err.message}")
    status = re.search(r'code: (Unauthenticated|PermissionDenied), message: "([^"]*)"', text)
    if status:
        return _one_line(f"{where}: the server refused the credentials ({status[1].upper()}"
                         f"{': ' + status[2] if status[2] else ''}); check TEMPORAL_API_KEY "
                         "or the client certificate")
    if target.tls and any(n in text for n in ("UnexpectedEof", "ConnectionReset",
                                               "close_notify", "BrokenPipe", "Cancelled")):
        # A server that refuses a client's certificate (or its absence) just closes the TLS
        # connection after the handshake (the pending call then ends reset, at EOF or
        # cancelled); only a fatal alert, when one is sent, says more.
        why = ("the server closed the TLS connection: it may require a client certificate, "
               "and none is configured (TEMPORAL_TLS_CLIENT_CERT_PATH / "
               "TEMPORAL_TLS_CLIENT_KEY_PATH)") if not target.client_certificate else (
               "the server closed the TLS connection: it may not accept this client "
               "certificate (TEMPORAL_TLS_CLIENT_CERT_PATH)")
        return _one_line(f"{where}: {why} [{_detail(text)}]")
    rules = (
        (("UnknownIssuer", "BadSignature", "unknown ca", "UnknownCA"),
         "TLS handshake failed: the server's certificate is not signed by the configured CA "
         "(TEMPORAL_TLS_SERVER_CA_CERT_PATH)"),
        (("NotValidForName", "CertNotValidForName", "not valid for name"),
         "TLS handshake failed: the server's certificate does not name the server "
         "(TEMPORAL_TLS_SERVER_NAME)"),
        (("CertificateRequired", "certificate required", "HandshakeFailure", "BadCertificate",
          "bad certificate"),
         "TLS handshake failed: the server refused this client (a client certificate it "
         "trusts is required: TEMPORAL_TLS_CLIENT_CERT_PATH / TEMPORAL_TLS_CLIENT_KEY_PATH)"),
        (("CorruptMessage", "InvalidContentType", "wrong version number"),
         "TLS handshake failed: the server does not speak TLS here (TEMPORAL_TLS=false?)"),
        (("invalid peer certificate", "InvalidCertificate", "certificate"),
         "TLS handshake failed: the server's certificate was rejected"),
        (("Connection refused", "ConnectionRefused"), "nothing is listening there"),
        (("timed out", "deadline", "Timeout"), "no answer in time"),
    )
    for needles, meaning in rules:
        if any(n.lower() in text.lower() for n in needles):
            return _one_line(f"{where}: {meaning} [{_detail(text)}]")
    return _one_line(f"{where}: {_detail(text) or type(err).__name__}")


def _detail(text: str) -> str:
    """The innermost part of the bridge's nested error, which names the real cause."""
    found = re.findall(r"(?:error|kind): ([A-Za-z]+\([^()]*\)|[A-Za-z][\w ]+)", text)
    return _one_line(found[-1] if found else text, 160)


async def connect(settings: Settings, *, runtime: Runtime | None = None,
                  interceptors: Sequence[ClientInterceptor] = (), address: str | None = None,
                  namespace: str | None = None, profile: str | None = None,
                  config_file: Path | None = None) -> Client:
    """A client of the configured server (see the module docstring for the precedence);
    `runtime` carries a worker's metric buffer, `interceptors` the client's tracing."""
    plan = plan_connection(settings, address=address, namespace=namespace, profile=profile,
                           config_file=config_file)
    try:
        return await Client.connect(**plan.kwargs, data_converter=DATA_CONVERTER,
                                    runtime=runtime, interceptors=interceptors,
                                    connect_timeout=CONNECT_TIMEOUT)
    except TemporalConnectError:
        raise
    except Exception as err:
        raise TemporalConnectError(explain(err, plan.target)) from None
