"""file_transfer executor: SFTP round trip over the test sshd, and local copies."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from opsconductor.activities.executors.file_transfer import FileTransferExecutor
from opsconductor.schema.assets import Asset
from opsconductor.schema.enums import ActionClass, StepKind
from tests.executors.conftest import SshServer
from tests.executors.helpers import make_ctx


def leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.endswith(".part")]


def ctx_for(asset: Asset | None, heartbeat=lambda *d: None, **inputs: object):
    return make_ctx(StepKind.FILE_TRANSFER, dict(inputs), asset=asset,
                    action_class=ActionClass.MODIFY, idempotent=True, heartbeat=heartbeat)


async def test_sftp_round_trip_with_checksum(sshd: SshServer, tmp_path: Path) -> None:
    asset = Asset.model_validate(sshd.asset(id="sftp"))
    data = os.urandom(700_000)
    src = tmp_path / "payload.bin"
    src.write_bytes(data)
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    up = await FileTransferExecutor().run(ctx_for(
        asset, direction="upload", source=str(src), destination=str(remote_dir) + "/",
        mode="0640"))
    assert up.ok, up.error
    assert up.output["sha256"] == hashlib.sha256(data).hexdigest()
    assert up.output["bytes"] == len(data) and up.output["destination"].endswith("/payload.bin")
    assert (remote_dir / "payload.bin").read_bytes() == data
    assert (remote_dir / "payload.bin").stat().st_mode & 0o777 == 0o640
    back = tmp_path / "back.bin"
    down = await FileTransferExecutor().run(ctx_for(
        asset, direction="download", source=str(remote_dir / "payload.bin"),
        destination=str(back)))
    assert down.ok, down.error
    assert back.read_bytes() == data and down.output["sha256"] == up.output["sha256"]
    assert leftovers(tmp_path) == [] and leftovers(remote_dir) == []


async def test_sftp_failure_midway_removes_partial_file(sshd: SshServer, tmp_path: Path) -> None:
    asset = Asset.model_validate(sshd.asset(id="sftp"))
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3_000_000))
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    (remote_dir / "big.bin").write_text("old content")

    def boom(*details: object) -> None:
        raise RuntimeError("worker lost its lease")  # fails after the first chunk is written

    with pytest.raises(RuntimeError):
        await FileTransferExecutor().run(ctx_for(
            asset, direction="upload", source=str(src), destination=str(remote_dir / "big.bin"),
            heartbeat=boom))
    assert leftovers(remote_dir) == []
    assert (remote_dir / "big.bin").read_text() == "old content"


async def test_sftp_cancel_removes_partial_file(sshd: SshServer, tmp_path: Path) -> None:
    asset = Asset.model_validate(sshd.asset(id="sftp"))
    src = tmp_path / "huge.bin"
    src.write_bytes(os.urandom(20_000_000))
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    started = asyncio.Event()
    task = asyncio.create_task(FileTransferExecutor().run(ctx_for(
        asset, direction="upload", source=str(src), destination=str(remote_dir / "huge.bin"),
        heartbeat=lambda *d: started.set())))
    await asyncio.wait_for(started.wait(), 10)
    assert leftovers(remote_dir)  # the partial file exists while copying
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(remote_dir) == [] and not (remote_dir / "huge.bin").exists()


async def test_sftp_missing_source(sshd: SshServer, tmp_path: Path) -> None:
    asset = Asset.model_validate(sshd.asset(id="sftp"))
    out = await FileTransferExecutor().run(ctx_for(
        asset, direction="download", source=str(tmp_path / "nope"),
        destination=str(tmp_path / "x")))
    assert not out.ok and out.error_type == "SourceNotFound" and not out.retryable
    assert leftovers(tmp_path) == []


async def test_local_copy_and_timeout(tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text("hello\n")
    (tmp_path / "out").mkdir()
    out = await FileTransferExecutor().run(ctx_for(
        None, direction="upload", source=str(src), destination=str(tmp_path / "out")))
    assert out.ok, out.error
    assert (tmp_path / "out" / "a.txt").read_text() == "hello\n"
    assert out.output["sha256"] == hashlib.sha256(b"hello\n").hexdigest()
    out = await FileTransferExecutor().run(ctx_for(
        None, direction="upload", source=str(tmp_path / "missing"),
        destination=str(tmp_path / "out")))
    assert out.error_type == "SourceNotFound"
    big = tmp_path / "big"
    big.write_bytes(os.urandom(30_000_000))
    ctx = ctx_for(None, direction="upload", source=str(big), destination=str(tmp_path / "c"))
    ctx.timeout = 0.01
    out = await FileTransferExecutor().run(ctx)
    assert out.error_type == "StepTimeout"
    assert leftovers(tmp_path) == [] and not (tmp_path / "c").exists()
