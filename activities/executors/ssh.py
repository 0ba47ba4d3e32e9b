"""Run a command on an asset over SSH (asyncssh), and own everything it starts.

How the remote process group is made killable and supervised: the remote login shell runs

    [env block read from stdin] ; cd DIR ;
    exec setsid -w sh -c 'echo @@opsc-pgid:$$ START; exec 3<&0;
        (watch fd 3, the channel's stdin; on EOF kill the group) &
        exec sh -c "$1" </dev/null' opsc CMD

so the command runs in a new session whose id (= its process group id) and start time (field
22 of /proc/PGID/stat) are the first stdout line. On timeout or cancellation a second channel
on the same connection sends SIGTERM, then SIGKILL, to that whole group: closing the channel
alone would leave a daemonised child or a pipeline running. After a normal exit the group is
killed too, so nothing a step started outlives it (the same rule as the local runner).

The remote side supervises itself: the channel's stdin stays open while the worker lives, and
a watcher in the group blocks on it; when the worker dies (or its connection drops) sshd
closes stdin, and the watcher SIGTERMs, then SIGKILLs, the group. The pgid and start time are
also reported to the step (`StepContext.on_process`), so a later attempt can stop a group that
escaped both (`stop_remote_leftover`). Without `setsid` on the host the login shell, which
OpenSSH makes a session leader, is the group, and only the kill by a later attempt applies.

Environment values (possibly secrets) go over stdin, not the command line, so they never show
up in the remote host's `ps`. The login shell's own environment is reset before anything else
runs (`exec /usr/bin/env -i PATH=<secure path> LANG=... HOME="$HOME" ... /bin/sh -c ...`), so
a command sees the fixed set of `safety.command_env` plus the step's variables only. A probe
arrives here as its argv quoted once (`Probe.remote_command()`).

Connections are cached per asset inside a worker and re-opened when they die. Host keys are
checked strictly by default against the asset's `known_hosts` file (else `OPSC_SSH_KNOWN_HOSTS`,
else ~/.ssh/known_hosts); `accept-new` trusts and records a host seen for the first time but
still refuses a changed key; `off` skips the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import shlex
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from opsconductor.activities.assets import resolve_credentials, secret_failure
from opsconductor.activities.executors.base import (
    OUTPUT_CAP_BYTES,
    ProcessRef,
    StepContext,
    StepOutcome,
    require_asset,
)
from opsconductor.safety.command_env import remote_reset_prefix
from opsconductor.safety.secrets import SecretError
from opsconductor.schema.assets import Asset
from opsconductor.schema.config import Settings, load_settings
from opsconductor.schema.errors import ErrorType

HEARTBEAT_INTERVAL = 1.0
KILL_GRACE_SECONDS = 2.0
CLOSE_GRACE_SECONDS = 2.0
CONNECT_TIMEOUT = 15.0
PGID_MARKER = b"@@opsc-pgid:"
_PGID_LINE = re.compile(rb"^@@opsc-pgid:(\d+)(?: (\d*))?\r?$")


class SshError(RuntimeError):
    """A failure before the command started: safe to retry unless said otherwise."""

    def __init__(self, message: str, kind: str, retryable: bool):
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable

    def outcome(self) -> StepOutcome:
        return StepOutcome(ok=False, error=str(self), error_type=self.kind,
                           retryable=self.retryable)


def known_hosts_path(asset: Asset, settings: Settings | None = None) -> Path:
    raw = (asset.known_hosts or (settings or load_settings()).ssh_known_hosts
           or "~/.ssh/known_hosts")
    return Path(raw).expanduser()


def _known_hosts_name(asset: Asset) -> str:
    return asset.host if asset.ssh_port == 22 else f"[{asset.host}]:{asset.ssh_port}"


def _has_entry(path: Path, asset: Asset) -> bool:
    if not path.is_file():
        return False
    known = asyncssh.read_known_hosts(str(path))
    host_keys, ca_keys, *_ = asyncssh.match_known_hosts(known, asset.host, "", asset.ssh_port)
    return bool(host_keys or ca_keys)


def _record_host_key(path: Path, asset: Asset, key: asyncssh.SSHKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = key.export_public_key("openssh").decode().split()
    with path.open("a") as fh:
        fh.write(f"{_known_hosts_name(asset)} {line[0]} {line[1]}\n")


async def _connect(asset: Asset) -> asyncssh.SSHClientConnection:
    try:
        creds, _values = await resolve_credentials(asset)
    except SecretError as err:
        kind, retryable = secret_failure(err)
        raise SshError(f"credentials of asset {asset.id!r}: {err}", kind,
                       retryable=retryable) from None
    options: dict[str, Any] = {
        "port": asset.ssh_port, "connect_timeout": CONNECT_TIMEOUT,
        "keepalive_interval": 30, "keepalive_count_max": 3,
    }
    user = asset.user or creds.get("username")
    if user:
        options["username"] = user
    if creds.get("private_key"):
        try:
            key = asyncssh.import_private_key(creds["private_key"], creds.get("passphrase"))
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as err:
            raise SshError(f"private key of asset {asset.id!r} cannot be loaded: "
                           f"{type(err).__name__}", ErrorType.CREDENTIAL_ERROR,
                           retryable=False) from None
        options["client_keys"] = [key]
    else:
        options["client_keys"] = None
    if creds.get("password"):
        options["password"] = creds["password"]
    if creds:
        options["agent_path"] = None  # only the asset's own credentials, predictably
    kh = known_hosts_path(asset)
    record_new = False
    if asset.host_key_checking == "off":
        options["known_hosts"] = None
    elif asset.host_key_checking == "accept-new" and not _has_entry(kh, asset):
        options["known_hosts"] = None
        record_new = True
    else:
        if not kh.is_file():
            raise SshError(f"host key of {asset.host} cannot be verified: known_hosts file {kh} "
                           "does not exist (set the asset's known_hosts or OPSC_SSH_KNOWN_HOSTS)",
                           ErrorType.HOST_KEY_VERIFICATION_FAILED, retryable=False)
        options["known_hosts"] = str(kh)
    try:
        conn = await asyncssh.connect(asset.host, **options)
    except asyncssh.HostKeyNotVerifiable as err:
        raise SshError(f"host key of {asset.host}:{asset.ssh_port} is not trusted "
                       f"({err.reason}); refusing to connect",
                       ErrorType.HOST_KEY_VERIFICATION_FAILED, retryable=False) from None
    except asyncssh.PermissionDenied:
        raise SshError(f"SSH authentication to {asset.host} as {user or 'default user'} failed",
                       ErrorType.AUTHENTICATION_FAILED, retryable=False) from None
    except (OSError, TimeoutError, asyncssh.Error) as err:
        raise SshError(f"cannot connect to {asset.host}:{asset.ssh_port}: "
                       f"{type(err).__name__}: {err}", ErrorType.SSH_CONNECT_ERROR,
                       retryable=True) from None
    if record_new:
        server_key = conn.get_server_host_key()
        if server_key is not None:
            _record_host_key(kh, asset, server_key)
    return conn


def _asset_key(asset: Asset) -> str:
    """Same asset, same settings: same connection. A changed inventory gets a new one."""
    basis = asset.model_dump_json(include={"id", "address", "hostname", "port", "user",
                                           "credentials", "host_key_checking", "known_hosts"})
    return f"{asset.id}:{hashlib.sha256(basis.encode()).hexdigest()[:16]}"


@dataclass
class _Entry:
    conn: asyncssh.SSHClientConnection
    loop: asyncio.AbstractEventLoop


class ConnectionPool:
    """One live SSH connection per asset per event loop, re-opened when it has died."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, asset: Asset) -> asyncssh.SSHClientConnection:
        key = _asset_key(asset)
        loop = asyncio.get_running_loop()
        lock = self._locks.setdefault(f"{key}@{id(loop)}", asyncio.Lock())
        async with lock:
            entry = self._entries.get(key)
            if entry and entry.loop is loop and not entry.conn.is_closed():
                return entry.conn
            if entry and entry.loop is loop:
                entry.conn.close()
            conn = await _connect(asset)
            self._entries[key] = _Entry(conn, loop)
            return conn

    def peek(self, asset: Asset) -> asyncssh.SSHClientConnection | None:
        entry = self._entries.get(_asset_key(asset))
        return entry.conn if entry else None

    def evict(self, asset: Asset, conn: asyncssh.SSHClientConnection | None = None) -> None:
        key = _asset_key(asset)
        entry = self._entries.get(key)
        if entry and (conn is None or entry.conn is conn):
            del self._entries[key]
            entry.conn.close()

    async def close_all(self) -> None:
        loop = asyncio.get_running_loop()
        entries, self._entries = self._entries, {}
        for entry in entries.values():
            entry.conn.close()
            if entry.loop is loop:
                with contextlib.suppress(Exception):
                    await entry.conn.wait_closed()


POOL = ConnectionPool()


async def ssh_connection(asset: Asset) -> asyncssh.SSHClientConnection:
    """The worker's shared connection to `asset` (raises SshError)."""
    return await POOL.get(asset)


async def close_connections() -> None:
    """Close every cached SSH connection (worker shutdown, tests)."""
    await POOL.close_all()


class _Capped:
    def __init__(self, cap: int):
        self.cap = cap
        self.kept = bytearray()
        self.dropped = 0
        self.tap: Callable[[bytes], None] | None = None  # live output (`logs --follow`)

    def add(self, data: bytes) -> None:
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += data[:room]
            if self.tap is not None and data:
                self.tap(data[:room])
        self.dropped += max(0, len(data) - max(room, 0))

    def text(self) -> str:
        out = bytes(self.kept).decode("utf-8", "replace")
        return out + (f"\n...[truncated {self.dropped} bytes]" if self.dropped else "")


class _Session(asyncssh.SSHClientSession[bytes]):
    """Collects capped output, the remote pgid, and the exit, without blocking the sender."""

    def __init__(self) -> None:
        self.out = _Capped(OUTPUT_CAP_BYTES)
        self.err = _Capped(OUTPUT_CAP_BYTES)
        self._head = bytearray()
        self.pgid: int | None = None
        self.start_ticks: int | None = None
        self.head_done = False
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.lost: Exception | None = None
        self.exited = asyncio.Event()
        self.closed = asyncio.Event()
        self.pgid_known = asyncio.Event()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.err.add(data)
            return
        if self.head_done:
            self.out.add(data)
            return
        self._head += data
        if b"\n" in self._head:
            line, rest = bytes(self._head).split(b"\n", 1)
            m = _PGID_LINE.match(line)
            if m:
                self.pgid = int(m.group(1))
                self.start_ticks = int(m.group(2)) if m.group(2) else None
            else:
                rest = bytes(self._head)
            self._finish_head(rest)
        elif len(self._head) > len(PGID_MARKER) + 24:
            self._finish_head(bytes(self._head))

    def _finish_head(self, rest: bytes) -> None:
        self.head_done = True
        self._head.clear()
        self.out.add(rest)
        self.pgid_known.set()

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status
        self.exited.set()

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = signal
        self.exited.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head:
            self._finish_head(bytes(self._head))
        self.lost = exc
        self.exited.set()
        self.closed.set()
        self.pgid_known.set()

    @property
    def exit_code(self) -> int | None:
        if self.exit_status is not None:
            return self.exit_status
        if self.exit_signal:
            sig = getattr(signal, f"SIG{self.exit_signal}", None)
            return 128 + int(sig) if sig is not None else None
        return None


def wrap_command(command: str, *, env: dict[str, str], cwd: str | None) -> tuple[str, bytes]:
    """The remote command line and the stdin payload that carries the environment."""
    parts: list[str] = []
    env_block = b""
    if env:
        env_block = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()
                            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)).encode()
        parts.append(f'__opsc_env=$(dd bs=1 count={len(env_block)} 2>/dev/null) && '
                     'eval "$__opsc_env"; unset __opsc_env')
    if cwd:
        parts.append(f"cd -- {shlex.quote(cwd)} || exit 126")
    inner = ('c="$1"; s=""; if read -r l </proc/$$/stat 2>/dev/null; then set -- $l; '
             's="${22}"; fi; echo "@@opsc-pgid:$$ $s"; '
             "exec 3<&0; (trap '' TERM; cat <&3 >/dev/null; kill -TERM -$$; sleep 2; "
             'kill -KILL -$$) >/dev/null 2>&1 & exec /bin/sh -c "$c" </dev/null 3<&-')
    q_cmd = shlex.quote(command)
    parts.append("if command -v setsid >/dev/null 2>&1; then "
                 f"exec setsid -w /bin/sh -c {shlex.quote(inner)} opsc {q_cmd}; "
                 f'else echo "@@opsc-pgid:$$"; exec /bin/sh -c {q_cmd} </dev/null; fi')
    # The login shell's environment is reset first (safety.command_env): only the step's own
    # variables, read from stdin, are added to the fixed set.
    return f"{remote_reset_prefix()} {shlex.quote('; '.join(parts))}", env_block


def _kill_script(pgid: int, grace: float) -> str:
    rounds = max(1, int(grace / 0.1))
    # `kill -SIG -PGID`, not `kill -SIG -- -PGID`: dash, a common /bin/sh, refuses the `--`.
    return (f"p={pgid}; kill -TERM -$p 2>/dev/null || exit 0; i=0; "
            f"while kill -0 -$p 2>/dev/null && [ $i -lt {rounds} ]; do sleep 0.1; "
            "i=$((i+1)); done; kill -KILL -$p 2>/dev/null; exit 0")


async def stop_remote_leftover(conn: asyncssh.SSHClientConnection, pgid: int,
                               start_ticks: int | None) -> str | None:
    """SIGKILL a remote group an earlier attempt left behind, unless its pid was reused.

    Returns "killed", "gone" or "reused"; raises SshError when the host cannot be asked.
    """
    check = ""
    if start_ticks:
        check = (f"if read -r l </proc/{pgid}/stat 2>/dev/null; then set -- $l; "
                 f'[ "${{22}}" = "{start_ticks}" ] || {{ echo reused; exit 0; }}; fi; ')
    script = (f"{check}if kill -KILL -{pgid} 2>/dev/null; then echo killed; "
              "else echo gone; fi")
    try:
        done = await asyncio.wait_for(conn.run(script, check=False), KILL_GRACE_SECONDS + 10)
    except (OSError, TimeoutError, asyncssh.Error) as err:
        raise SshError(f"could not stop leftover remote process group {pgid}: "
                       f"{type(err).__name__}: {err}", ErrorType.SSH_CONNECT_ERROR,
                       retryable=True) from None
    out = str(done.stdout or "").strip()
    return out or "gone"


async def kill_remote_group(conn: asyncssh.SSHClientConnection, pgid: int, *,
                            grace: float = KILL_GRACE_SECONDS) -> str | None:
    """SIGTERM, then SIGKILL, the remote group over a fresh channel; error text on failure."""
    script = (_kill_script(pgid, grace) if grace > 0
              else f"kill -KILL -{pgid} 2>/dev/null; exit 0")
    try:
        await asyncio.wait_for(conn.run(script, check=False), grace + 10)
    except (OSError, TimeoutError, asyncssh.Error) as err:
        return f"could not kill remote process group {pgid}: {type(err).__name__}: {err}"
    return None


class SshCommandRunner:
    """CommandRunner for assets whose connector is `ssh`."""

    def __init__(self, pool: ConnectionPool | None = None):
        self.pool = pool or POOL

    async def _open(self, asset: Asset, remote: str) -> tuple[
            asyncssh.SSHClientConnection, asyncssh.SSHClientChannel[bytes], _Session]:
        for attempt in (1, 2):
            conn = await self.pool.get(asset)
            try:
                chan, session = await conn.create_session(_Session, remote, encoding=None)
                assert isinstance(session, _Session)
                return conn, chan, session
            except (OSError, asyncssh.Error) as err:
                # The command never started, so opening a fresh connection is safe.
                self.pool.evict(asset, conn)
                if attempt == 2:
                    raise SshError(f"cannot open an SSH session on {asset.host}: "
                                   f"{type(err).__name__}: {err}", ErrorType.SSH_CONNECT_ERROR,
                                   retryable=True) from None
        raise AssertionError("unreachable")

    async def run(self, ctx: StepContext, command: str, *, env: dict[str, str],
                  cwd: str | None, timeout: float) -> StepOutcome:
        asset = require_asset(ctx, "SSH")
        if isinstance(asset, StepOutcome):
            return asset
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        remote, env_block = wrap_command(command, env=env, cwd=cwd)
        try:
            conn, chan, session = await self._open(asset, remote)
        except SshError as err:
            return err.outcome()
        if (feed := ctx.on_output) is not None:  # before the env block lets the command run
            session.out.tap = lambda b: feed("stdout", b)
            session.err.tap = lambda b: feed("stderr", b)
        try:
            if env_block:
                chan.write(env_block)
            # stdin stays open: the remote watcher kills the group when it closes.
            finished = await self._wait(ctx, asset, session, deadline)
        except asyncio.CancelledError:
            await self._stop(conn, chan, session)
            raise
        output = {"host": asset.host, "asset": asset.id, "pgid": session.pgid}
        if not finished:
            kill_error = await self._stop(conn, chan, session)
            return StepOutcome(
                ok=False, exit_code=session.exit_code, stdout=session.out.text(),
                stderr=session.err.text(), output=output, error_type=ErrorType.STEP_TIMEOUT,
                error=f"command timed out after {timeout:g}s on {asset.host}; "
                      + (kill_error or f"remote process group {session.pgid} killed"))
        if session.exit_code is None:
            self.pool.evict(asset, conn)
            return StepOutcome(
                ok=False, stdout=session.out.text(), stderr=session.err.text(), output=output,
                error=f"SSH connection to {asset.host} was lost while the command ran; its "
                      "outcome is unknown", error_type=ErrorType.SSH_CONNECTION_LOST,
                retryable=ctx.step.idempotent)
        if session.pgid is not None:  # leftovers of the group die with the step
            await kill_remote_group(conn, session.pgid, grace=0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.closed.wait(), CLOSE_GRACE_SECONDS)
        chan.close()
        code = session.exit_code
        stderr = session.err.text()
        if code != 0:
            tail = stderr.strip()[-2000:] or "(no stderr)"
            return StepOutcome(ok=False, exit_code=code, stdout=session.out.text(),
                               stderr=stderr, output=output, error_type=ErrorType.COMMAND_FAILED,
                               error=f"command exited with {code} on {asset.host}: {tail}")
        return StepOutcome(ok=True, exit_code=0, stdout=session.out.text(), stderr=stderr,
                           output=output)

    async def _wait(self, ctx: StepContext, asset: Asset, session: _Session,
                    deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        beat: dict[str, Any] = {"host": asset.host, "asset": asset.id, "pgid": None}
        while not session.exited.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            # Beat as soon as the pgid is known (a canceller may need it), then every second.
            event = session.exited if session.pgid_known.is_set() else session.pgid_known
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, HEARTBEAT_INTERVAL))
            if beat["pgid"] is None and session.pgid is not None \
                    and ctx.on_process is not None:
                await ctx.on_process(ProcessRef(asset.id, session.pgid, session.start_ticks))
            beat["pgid"] = session.pgid
            ctx.heartbeat(beat)
        return True

    async def _stop(self, conn: asyncssh.SSHClientConnection,
                    chan: asyncssh.SSHClientChannel[bytes], session: _Session) -> str | None:
        """Kill the remote group; needs the pgid line, which arrives right after the start."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.pgid_known.wait(), 5)
        error = None
        if session.pgid is not None and not session.closed.is_set():
            error = await kill_remote_group(conn, session.pgid)
        elif session.pgid is None and not session.closed.is_set():
            error = "remote process group unknown; only the channel was closed"
        chan.close()
        return error
