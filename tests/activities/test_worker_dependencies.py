"""One settings object owns the configuration; the worker builds its activities with their
dependencies, and two sets built with different settings share nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import asyncpg
import yaml
from temporalio import activity
from temporalio.testing import ActivityEnvironment

from opsconductor.activities.plan_checks import CheckActivities
from opsconductor.safety.masking import Masker
from opsconductor.safety.rbac import RbacEngine
from opsconductor.schema.config import (
    ENV_PREFIX,
    FILE_FIELDS,
    SECRET_ENV_PREFIX,
    Settings,
    load_settings,
    read_secret_variable,
)
from opsconductor.schema.messages import SafetyChecksInput
from opsconductor.schema.request import SafetyCheck
from opsconductor.starter.worker import build_activities

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("schema", "safety", "activities", "workflows", "starter", "tests", "bench")
FIELD_VARIABLES = ({ENV_PREFIX + name.upper() for name in Settings.model_fields}
                   | {f"{ENV_PREFIX}{name.upper()}_FILE" for name in FILE_FIELDS})


def test_every_opsc_variable_in_the_code_is_a_documented_setting() -> None:
    used: set[str] = set()
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            used |= set(re.findall(r"\bOPSC_[A-Z][A-Z0-9_]*", path.read_text()))
    assert "OPSC_DATABASE_URL" in used  # the scan sees the code
    strays = {v for v in used if v not in FIELD_VARIABLES and not v.startswith(SECRET_ENV_PREFIX)}
    assert strays == set()
    undocumented = [n for n, f in Settings.model_fields.items() if not f.description]
    assert undocumented == []


def test_variables_win_over_stack_json_and_empty_means_unset(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text(json.dumps({
        "temporal_address": "127.0.0.1:7233", "database_url": "postgresql://stack/db",
        "task_queue": "from-stack", "ui_url": "http://ui", "pid": 1}))
    env = {"OPSC_HOME": str(tmp_path), "OPSC_TASK_QUEUE": "from-env", "OPSC_NAMESPACE": "",
           "OPSC_RBAC_STRICT": "prod,staging", "OPSC_MASK_PATTERNS": '["corp_[a-z]{5}"]'}
    s = load_settings(env)
    assert (s.temporal_address, s.database_url, s.ui_url) == (
        "127.0.0.1:7233", "postgresql://stack/db", "http://ui")
    assert s.task_queue == "from-env" and s.namespace == "default"
    assert s.rbac_strict == "prod,staging" and s.mask_patterns == ["corp_[a-z]{5}"]
    assert load_settings({"OPSC_HOME": str(tmp_path / "none")}).temporal_address is None


def test_the_secret_family_is_read_only_through_its_prefix() -> None:
    env = {"OPSC_SECRET_DB_PROD": "v1", "OPSC_VAULT_TOKEN": "root"}
    assert load_settings(env).secret_variable("db/prod") == "v1"
    assert load_settings(env).secret_variable("OPSC_VAULT_TOKEN") is None
    try:
        read_secret_variable("OPSC_VAULT_TOKEN", env)
    except ValueError as err:
        assert "OPSC_SECRET_" in str(err)
    else:
        raise AssertionError("a configuration variable was readable as a secret")


async def test_activity_names_are_the_ones_the_workflow_calls(db_pool: asyncpg.Pool,
                                                               tmp_path: Path) -> None:
    names = {activity._Definition.must_from_callable(fn).name
             for fn in build_activities(load_settings({"OPSC_HOME": str(tmp_path)}), db_pool)}
    called: set[str] = set()
    for path in (ROOT / "workflows").rglob("*.py"):
        called |= set(re.findall(r"execute_(?:local_)?activity\(\s*\"(\w+)\"", path.read_text()))
    assert called and called <= names
    assert names == {"run_step", "mirror_write", "authorize", "run_cleanup",
                     "run_safety_checks", "acquire_locks", "renew_locks", "release_locks",
                     "cancel_own_run", "verify_submission", "window_policies"}


async def test_two_activity_sets_follow_their_own_settings(tmp_path: Path,
                                                          db_pool: asyncpg.Pool) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"assets": [{"id": "box-1", "hostname": "box-1.test",
                                                         "connector": "local"}]}))
    with_inventory = load_settings({"OPSC_HOME": str(tmp_path / "a"),
                                    "OPSC_INVENTORY": str(inventory)})
    without = load_settings({"OPSC_HOME": str(tmp_path / "b")})
    inp = SafetyChecksInput(execution_id="e", stage="before", checks=[
        SafetyCheck(check="command: true", target="box-1")], tenant="t", actor="alice",
        environment="dev")
    env = ActivityEnvironment()
    found = await env.run(CheckActivities(settings=with_inventory,
                                          masker=Masker.from_settings(with_inventory),
                                          rbac=RbacEngine(None), pool=db_pool)
                          .run_plan_safety_checks, inp)
    missing = await env.run(CheckActivities(settings=without,
                                            masker=Masker.from_settings(without),
                                            rbac=RbacEngine(None), pool=db_pool)
                            .run_plan_safety_checks, inp)
    assert not found.abort and found.outcomes[0].result.passed
    assert missing.abort and "unknown asset 'box-1'" in missing.outcomes[0].result.detail
