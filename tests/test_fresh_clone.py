"""The suite depends on nothing outside the repository, so `make test` works on a fresh clone.

Two checks. A static one over every test source: no path built from `__file__` climbs above
the repository root, and no string holds a parent-directory segment. A dynamic one: the files
a commit of this tree would hold (tracked plus untracked-but-not-ignored, i.e. what a clone
gets once committed) are copied into a fresh temporary directory with nothing beside it, and
the server-free tests run there under an audit hook that records every file they open; none
may lie in this working tree (outside the package sources the editable install points at) or
next to it.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, TESTS

# Test modules that need no server: quick to run in the copy.
SERVERLESS = ["tests/unit"]
PARENT_SEGMENT = re.compile(r"(^|/)\.\./|/\.\.$")  # a path segment `..`


def _sources() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _from_file(node: ast.AST) -> bool:
    """The expression is built on `__file__`."""
    return any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(node))


def _parent_chain(node: ast.AST) -> int:
    """How many `.parent` steps end this expression (`x.parent.parent` -> 2)."""
    count = 0
    while isinstance(node, ast.Attribute) and node.attr == "parent":
        count += 1
        node = node.value
    return count


def escapes(text: str, rel: Path) -> list[str]:
    """Every place in `text`, the test source at `rel` (relative to the repository root), that
    reaches outside the repository; each as `name:line: what`."""
    depth = len(rel.parts) - 1  # directories between the file and the root
    found = []
    for node in ast.walk(ast.parse(text, str(rel))):
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "parents" and isinstance(node.slice, ast.Constant)
                and isinstance(node.slice.value, int) and _from_file(node)
                and node.slice.value >= depth + 1):
            found.append((node.lineno, f"parents[{node.slice.value}]"))
        elif (isinstance(node, ast.Attribute) and node.attr == "parent" and _from_file(node)
              and _parent_chain(node) > depth + 1):
            found.append((node.lineno, f"{_parent_chain(node)} x .parent"))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and PARENT_SEGMENT.search(node.value)):
            found.append((node.lineno, repr(node.value)))
    # a `.parent` chain is visited once per link: report each line once, in order
    return [f"{rel.name}:{line}: {what}" for line, what in sorted(dict(found).items())]


def test_the_scan_finds_what_it_looks_for() -> None:
    """The static check is not vacuous: each pattern it bans is reported, and only those."""
    text = ("from pathlib import Path\n"
            "A = Path(__file__).resolve().parents[3] / 'x'\n"
            "B = Path(__file__).parent.parent.parent.parent\n"
            "C = '" + ".." + "/elsewhere/examples'\n"
            "D = Path(__file__).resolve().parents[2] / 'inside'\n"
            "E = Path(__file__).parent.parent.parent\n")
    found = escapes(text, Path("tests/unit/sample.py"))
    assert [int(f.split(":")[1]) for f in found] == [2, 3, 4], found


def test_no_test_source_reaches_outside_the_repository() -> None:
    found = [hit for path in _sources()
             for hit in escapes(path.read_text(), path.relative_to(REPO))]
    assert found == [], "test sources that read outside the repository:\n" + "\n".join(found)


def test_no_test_module_imports_another_test_module() -> None:
    """Shared code lives in tests/helpers.py or a conftest, never in a test module."""
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            found += [f"{path.relative_to(REPO)}: {n}" for n in names
                      if n.startswith("tests.") and n.rsplit(".", 1)[-1].startswith("test_")]
    assert found == []


@pytest.fixture(scope="module")
def clone() -> Iterator[Path]:
    """What a commit of this tree holds, copied into a fresh directory with nothing beside it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    with tempfile.TemporaryDirectory(prefix="opsc-clone-") as d:
        root = Path(d) / "repo"
        for rel in filter(None, listed):
            src = REPO / rel
            if src.is_file():  # listed but deleted in the working tree: not in the commit
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, root / rel)
        yield root


AUDIT = """
import json, os, sys
opened = set()
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.add(os.path.abspath(os.fsdecode(args[0])))
sys.addaudithook(hook)
import pytest
code = pytest.main(sys.argv[2:])
with open(sys.argv[1], "w") as fh:
    json.dump(sorted(opened), fh)
sys.exit(code)
"""


def test_the_serverless_tests_pass_in_a_fresh_copy_reading_only_from_it(clone: Path) -> None:
    opened_file = clone.parent / "opened.json"
    proc = subprocess.run(
        [sys.executable, "-c", AUDIT, str(opened_file), "-q", "-p", "no:cacheprovider",
         *SERVERLESS], cwd=clone, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
    opened = [Path(p) for p in json.loads(opened_file.read_text())]
    assert any(p.is_relative_to(clone / "tests" / "data") for p in opened)  # the hook saw reads
    # the package sources the editable install serves (not tests, not anything beside them)
    packages = [REPO / name for name in ("schema", "safety", "activities", "workflows",
                                         "starter")]
    outside = sorted(str(p) for p in opened
                     if p.is_relative_to(REPO.parent) and not p.is_relative_to(clone)
                     and not any(p.is_relative_to(pkg) for pkg in packages)
                     and not p.is_relative_to(Path(sys.prefix)))
    assert outside == [], "read outside the copy:\n" + "\n".join(outside)
