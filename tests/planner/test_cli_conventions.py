"""The CLI's shared habits: `--version`, `-o table|json|yaml|jsonl` and `--json` before or
after the subcommand, plans from stdin and YAML, `run --new`, help on every `run` argument.
A dry run needs no server, so these run the real binary against none."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from opsconductor.starter import cli
from tests.integration.helpers import OPSCONDUCTOR

PLAN = Path(__file__).resolve().parents[2] / "starter" / "examples" / "diagnostic_plan.json"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPSC_")}
    # No Temporal, no database: nothing here may need either.
    clean.update(OPSC_HOME=str(tmp_path / "home"), OPSC_TEMPORAL_ADDRESS="127.0.0.1:9",
                 OPSC_DATABASE_URL="postgresql://x@127.0.0.1:9/x")
    return clean


def opsc(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([OPSCONDUCTOR, *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=120, check=False)


def test_version(env: dict[str, str]) -> None:
    done = opsc(env, "--version")
    assert done.returncode == 0, done
    assert done.stdout.startswith("opsconductor 0.")


def test_output_format_before_or_after_the_subcommand(env: dict[str, str]) -> None:
    forms = {
        "yaml first": opsc(env, "-o", "yaml", "run", str(PLAN), "--dry-run"),
        "json first": opsc(env, "--json", "run", str(PLAN), "--dry-run"),
        "json after": opsc(env, "run", str(PLAN), "--dry-run", "--json"),
        "jsonl after": opsc(env, "run", "--dry-run", str(PLAN), "-o", "jsonl"),
        "table": opsc(env, "run", "--dry-run", str(PLAN)),
    }
    print({name: (d.returncode, len(d.stdout)) for name, d in forms.items()})
    assert all(d.returncode == 0 for d in forms.values()), forms
    from_yaml = yaml.safe_load(forms["yaml first"].stdout)
    from_json = json.loads(forms["json first"].stdout)
    assert from_yaml == from_json == json.loads(forms["json after"].stdout)
    assert from_json["would_run"] is True and from_json["steps"]
    jsonl = forms["jsonl after"].stdout.strip().split("\n")
    assert len(jsonl) == 1 and json.loads(jsonl[0]) == from_json
    assert forms["table"].stdout.rstrip().endswith("would run")
    assert not forms["table"].stdout.lstrip().startswith("{")


def test_an_unknown_output_format_is_refused_by_name(env: dict[str, str]) -> None:
    done = opsc(env, "-o", "xml", "run", str(PLAN), "--dry-run")
    assert done.returncode == 2
    assert "invalid choice: 'xml'" in done.stderr and "yaml" in done.stderr


def test_a_plan_from_stdin_as_json_or_yaml(env: dict[str, str]) -> None:
    text = PLAN.read_text()
    as_json = opsc(env, "run", "-", "--dry-run", "--json", stdin=text)
    as_yaml = opsc(env, "run", "-", "--dry-run", "--json",
                   stdin=yaml.safe_dump(json.loads(text)))
    assert as_json.returncode == 0 and as_yaml.returncode == 0, (as_json, as_yaml)
    assert json.loads(as_json.stdout) == json.loads(as_yaml.stdout)


def test_a_yaml_file(env: dict[str, str], tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(json.loads(PLAN.read_text())))
    done = opsc(env, "run", str(plan), "--dry-run", "-o", "json")
    assert done.returncode == 0, done
    assert json.loads(done.stdout)["would_run"] is True


def test_bad_plans_are_named_and_refused(env: dict[str, str], tmp_path: Path) -> None:
    twice = tmp_path / "twice.yml"
    twice.write_text("tenant: a\ntenant: b\nplan: {}\n")
    cases = {
        "key written twice": opsc(env, "run", str(twice), "--dry-run"),
        "not a mapping": opsc(env, "run", "-", "--dry-run", stdin="- a\n- b\n"),
        "empty stdin": opsc(env, "run", "-", "--dry-run", "--json"),
        "broken yaml": opsc(env, "run", "-", "--dry-run", stdin="plan: [unclosed\n"),
        "missing file": opsc(env, "run", str(tmp_path / "nope.yaml"), "--dry-run"),
    }
    print({name: (d.returncode, (d.stderr or d.stdout).strip()[:80]) for name, d in cases.items()})
    assert all(d.returncode == 2 for d in cases.values()), cases
    assert "key 'tenant' written twice" in cases["key written twice"].stderr
    assert "stdin must hold a JSON object" in cases["not a mapping"].stderr
    assert json.loads(cases["empty stdin"].stdout)["exit_code"] == 2
    assert "stdin is not valid YAML" in cases["broken yaml"].stderr
    assert "no such file" in cases["missing file"].stderr
    assert "Traceback" not in "".join(d.stderr for d in cases.values())


def test_new_gives_each_run_its_own_idempotency_key() -> None:
    parser = cli.build_parser()
    same = cli._load_request(parser.parse_args(["run", str(PLAN)]))
    first = cli._load_request(parser.parse_args(["run", str(PLAN), "--new"]))
    second = cli._load_request(parser.parse_args(["run", "--new", str(PLAN)]))
    assert "idempotency_key" not in same
    assert first["idempotency_key"].startswith("cli-new-")
    assert first["idempotency_key"] != second["idempotency_key"]


def test_every_run_argument_has_help_and_the_help_has_examples(env: dict[str, str]) -> None:
    parser = cli.build_parser()
    run = next(a for a in parser._actions if a.dest == "command").choices["run"]
    silent = [a.dest for a in run._actions if not a.help]
    assert not silent, f"run arguments without help: {silent}"
    done = opsc(env, "run", "--help")
    assert done.returncode == 0
    for words in ("--tenant", "--actor", "stdin", "YAML", "examples:", "--follow", "--new"):
        assert words in done.stdout, words
