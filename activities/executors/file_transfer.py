"""Copy a file to or from an asset: SFTP over the asset's SSH connection, or a local copy.

Guarantees, the same for both paths:
* bytes go to a temporary name beside the destination (`.NAME.opsc-<random>.part`), which is
  renamed over the destination only after the copy is verified: a reader never sees half a
  file, and an existing destination survives a failed transfer untouched;
* the sha256 of the bytes read from the source is checked against the written copy (remote:
  `sha256sum` on the host, else the file is read back over SFTP; local: the copy is re-read);
* on any failure, timeout or cancellation the temporary file is removed.

`upload`: `source` is on the worker, `destination` on the target; `download`: the reverse.
For the worker's own machine (no target) both paths are local. A destination that is an
existing directory (or ends with `/`) receives the source's base name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import posixpath
import shlex
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import asyncssh

from opsconductor.activities.executors.base import StepContext, StepOutcome, parse_inputs
from opsconductor.activities.executors.ssh import SshError, ssh_connection
from opsconductor.schema.assets import Asset
from opsconductor.schema.errors import ErrorType
from opsconductor.schema.tools import FileTransferInputs

CHUNK = 256 * 1024
HEARTBEAT_INTERVAL = 1.0


class TransferError(RuntimeError):
    def __init__(self, message: str, kind: str = ErrorType.FILE_TRANSFER_FAILED,
                 retryable: bool = False):
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable


class _Progress:
    """Heartbeats with the byte count: at the first chunk, then at most once a second."""

    def __init__(self, beat: Callable[..., None], direction: str):
        self.beat = beat
        self.direction = direction
        self.bytes = 0
        self._last: float | None = None

    def add(self, n: int) -> None:
        self.bytes += n
        now = asyncio.get_running_loop().time()
        if self._last is None or now - self._last >= HEARTBEAT_INTERVAL:
            self._last = now
            self.beat({"direction": self.direction, "bytes": self.bytes})


def _tmp_name(dest_name: str) -> str:
    return f".{dest_name}.opsc-{uuid.uuid4().hex[:12]}.part"


def _mode(mode: str | None) -> int | None:
    if mode is None:
        return None
    try:
        value = int(mode, 8)
    except ValueError:
        raise TransferError(f"mode {mode!r} is not an octal permission string") from None
    if not 0 <= value <= 0o7777:
        raise TransferError(f"mode {mode!r} is out of range")
    return value


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _local_dest(destination: str, source_name: str) -> Path:
    dest = Path(destination).expanduser()
    if destination.endswith("/") or dest.is_dir():
        dest = dest / source_name
    if not dest.parent.is_dir():
        raise TransferError(f"destination directory {dest.parent} does not exist")
    return dest


def _as_bytes(chunk: str | bytes) -> bytes:
    """A chunk read in binary mode: asyncssh types it either way, it is always bytes."""
    return chunk if isinstance(chunk, bytes) else chunk.encode()


def _open_source(path: Path) -> BinaryIO:
    try:
        return path.open("rb", buffering=0)
    except FileNotFoundError:
        raise TransferError(f"source {path} does not exist", ErrorType.SOURCE_NOT_FOUND) from None
    except IsADirectoryError:
        raise TransferError(f"source {path} is a directory") from None
    except PermissionError:
        raise TransferError(f"source {path} is not readable", ErrorType.PERMISSION_DENIED) from None


def _commit_local(tmp: Path, dest: Path, expected: str, mode: int | None) -> None:
    """Verify the written copy, set its mode, rename it into place durably."""
    actual = _sha256_file(tmp)
    if actual != expected:
        raise TransferError(f"checksum mismatch writing {dest}: {actual} != {expected}",
                            "ChecksumMismatch", retryable=True)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, dest)
    dir_fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_all(fh: BinaryIO, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        n = fh.write(view)
        view = view[n or 0:]


async def _remote_sha256(conn: asyncssh.SSHClientConnection, sftp: asyncssh.SFTPClient,
                         path: str) -> str:
    """sha256sum on the host; without it, read the file back over SFTP."""
    result = await conn.run(f"sha256sum -- {shlex.quote(path)}", check=False)
    out = result.stdout if isinstance(result.stdout, str) else ""
    if result.exit_status == 0 and out.split():
        return out.split()[0]
    h = hashlib.sha256()
    async with sftp.open(path, "rb") as fh:
        while chunk := await fh.read(CHUNK):
            h.update(_as_bytes(chunk))
    return h.hexdigest()


class FileTransferExecutor:
    async def run(self, ctx: StepContext) -> StepOutcome:
        inputs = parse_inputs(FileTransferInputs, ctx)
        if isinstance(inputs, StepOutcome):
            return inputs
        asset = ctx.asset if isinstance(ctx.asset, Asset) else None
        progress = _Progress(ctx.heartbeat, inputs.direction)
        try:
            async with asyncio.timeout(ctx.timeout):
                if asset is None or asset.connector == "local":
                    output = await self._local(inputs, progress)
                elif asset.connector == "ssh":
                    output = await self._sftp(inputs, asset, progress)
                else:
                    return StepOutcome(ok=False, error=f"file transfer to asset {asset.id!r} "
                                       f"needs an ssh or local connector, not {asset.connector}",
                                       error_type=ErrorType.UNSUPPORTED_CONNECTOR, retryable=False)
        except TimeoutError:
            return StepOutcome(ok=False, error=f"file transfer timed out after {ctx.timeout:g}s "
                               f"({progress.bytes} bytes copied; partial file removed)",
                               error_type=ErrorType.STEP_TIMEOUT, output={"bytes": progress.bytes})
        except SshError as err:
            return err.outcome()
        except TransferError as err:
            return StepOutcome(ok=False, error=str(err), error_type=err.kind,
                               retryable=err.retryable)
        except asyncssh.SFTPError as err:
            kind = {asyncssh.sftp.FX_NO_SUCH_FILE: ErrorType.SOURCE_NOT_FOUND,
                    asyncssh.sftp.FX_PERMISSION_DENIED: ErrorType.PERMISSION_DENIED}.get(err.code)
            return StepOutcome(ok=False, error=f"SFTP: {err.reason}",
                               error_type=kind or ErrorType.FILE_TRANSFER_FAILED,
                               retryable=kind is None)
        except (OSError, asyncssh.Error) as err:
            return StepOutcome(ok=False, error=f"file transfer failed: {type(err).__name__}: "
                               f"{err}", error_type=ErrorType.FILE_TRANSFER_FAILED, retryable=True)
        if asset is not None:
            output["host"] = asset.host
        return StepOutcome(ok=True, output=output,
                           stdout=f"{output['bytes']} bytes -> {output['destination']} "
                                  f"sha256={output['sha256']}")

    async def _local(self, inputs: FileTransferInputs, progress: _Progress) -> dict[str, Any]:
        source = Path(inputs.source).expanduser()  # noqa: ASYNC240 (no I/O: string work)
        mode = _mode(inputs.mode)
        dest = _local_dest(inputs.destination, source.name)
        if dest.resolve() == source.resolve():
            raise TransferError("source and destination are the same file")
        tmp = dest.parent / _tmp_name(dest.name)
        h = hashlib.sha256()
        src = _open_source(source)
        try:
            with src, tmp.open("wb", buffering=0) as out:
                while chunk := await asyncio.to_thread(src.read, CHUNK):
                    await asyncio.to_thread(_write_all, out, chunk)
                    h.update(chunk)
                    progress.add(len(chunk))
                await asyncio.to_thread(os.fsync, out.fileno())
            digest = h.hexdigest()
            await asyncio.to_thread(_commit_local, tmp, dest, digest, mode)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return {"direction": inputs.direction, "source": str(source), "destination": str(dest),
                "bytes": progress.bytes, "sha256": digest, "verified": "sha256"}

    async def _sftp(self, inputs: FileTransferInputs, asset: Asset,
                    progress: _Progress) -> dict[str, Any]:
        mode = _mode(inputs.mode)
        conn = await ssh_connection(asset)
        async with conn.start_sftp_client() as sftp:
            if inputs.direction == "upload":
                return await self._upload(conn, sftp, inputs, mode, progress)
            return await self._download(conn, sftp, inputs, mode, progress)

    async def _upload(self, conn: asyncssh.SSHClientConnection, sftp: asyncssh.SFTPClient,
                      inputs: FileTransferInputs, mode: int | None,
                      progress: _Progress) -> dict[str, Any]:
        source = Path(inputs.source).expanduser()  # noqa: ASYNC240 (no I/O: string work)
        dest = inputs.destination
        if dest.endswith("/") or await sftp.isdir(dest):
            dest = posixpath.join(dest, source.name)
        tmp = posixpath.join(posixpath.dirname(dest) or ".", _tmp_name(posixpath.basename(dest)))
        h = hashlib.sha256()
        src = _open_source(source)
        try:
            with src:
                async with sftp.open(tmp, "wb") as out:
                    while chunk := await asyncio.to_thread(src.read, CHUNK):
                        await out.write(chunk)
                        h.update(chunk)
                        progress.add(len(chunk))
            digest = h.hexdigest()
            remote = await _remote_sha256(conn, sftp, tmp)
            if remote != digest:
                raise TransferError(f"checksum mismatch on {asset_label(conn)}:{dest}: "
                                    f"{remote} != {digest}", "ChecksumMismatch", retryable=True)
            if mode is not None:
                await sftp.chmod(tmp, mode)
            await self._rename(sftp, tmp, dest)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(sftp.remove(tmp))
            raise
        return {"direction": "upload", "source": str(source), "destination": dest,
                "bytes": progress.bytes, "sha256": digest, "verified": "sha256"}

    async def _download(self, conn: asyncssh.SSHClientConnection, sftp: asyncssh.SFTPClient,
                        inputs: FileTransferInputs, mode: int | None,
                        progress: _Progress) -> dict[str, Any]:
        source = inputs.source
        dest = _local_dest(inputs.destination, posixpath.basename(source))
        tmp = dest.parent / _tmp_name(dest.name)
        h = hashlib.sha256()
        try:
            async with sftp.open(source, "rb") as src:
                with tmp.open("wb", buffering=0) as out:
                    while chunk := await src.read(CHUNK):
                        data = _as_bytes(chunk)
                        await asyncio.to_thread(_write_all, out, data)
                        h.update(data)
                        progress.add(len(chunk))
                    await asyncio.to_thread(os.fsync, out.fileno())
            digest = h.hexdigest()
            remote = await _remote_sha256(conn, sftp, source)
            if remote != digest:
                raise TransferError(f"checksum mismatch reading {source}: the source changed "
                                    "during the transfer or bytes were lost", "ChecksumMismatch",
                                    retryable=True)
            await asyncio.to_thread(_commit_local, tmp, dest, digest, mode)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return {"direction": "download", "source": source, "destination": str(dest),
                "bytes": progress.bytes, "sha256": digest, "verified": "sha256"}

    @staticmethod
    async def _rename(sftp: asyncssh.SFTPClient, tmp: str, dest: str) -> None:
        try:
            await sftp.posix_rename(tmp, dest)  # atomic replace (OpenSSH extension)
        except asyncssh.SFTPOpUnsupported:
            await sftp.rename(tmp, dest, flags=asyncssh.FXR_OVERWRITE | asyncssh.FXR_ATOMIC)


def asset_label(conn: asyncssh.SSHClientConnection) -> str:
    peer = conn.get_extra_info("peername")
    return str(peer[0]) if peer else "remote"
