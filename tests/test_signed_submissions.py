"""Submissions signed by their actor: where the policy requires it (prod here), the worker
runs only an execution its actor signed, exactly as signed — proving `actor` too."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from temporalio.client import Client

from opsconductor.safety.signatures import ssh_keygen
from opsconductor.schema.config import Settings
from opsconductor.schema.spec import build_spec
from opsconductor.schema.submissions import SubmissionProof, canonical_request
from opsconductor.schema.validation import validate_request
from opsconductor.starter.client import ExecutionClient
from opsconductor.starter.worker import build_worker
from opsconductor.workflows.execution import ExecutionWorkflow
from tests.helpers import events, request, shell, unique_queue, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("submitter-keys")
    for name in ("rita", "bob"):
        subprocess.run([ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@ops",
                        "-f", str(folder / name)], check=True)
    return {name: folder / name for name in ("rita", "bob")}


@pytest.fixture(scope="module")
async def client(temporal_client: Client, db_pool: asyncpg.Pool, keys: dict[str, Path],
                 tmp_path_factory: pytest.TempPathFactory,
                 session_dir: Path) -> AsyncIterator[ExecutionClient]:
    policy = {"version": "signed-submissions",
              "roles": [{"actor": "rita", "roles": ["sre"]}],
              "rules": [{"id": "sre-execute", "effect": "allow", "subjects": ["role:sre"],
                         "actions": ["execute", "cancel"]}],
              "allowed_signers": [f"{n} {keys[n].with_suffix('.pub').read_text().strip()}"
                                  for n in ("rita", "bob")],
              "signatures": {"submissions": ["prod"]}}
    path = tmp_path_factory.mktemp("policy") / "rbac_policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    queue = unique_queue("opsc-submissions")
    settings = Settings(home=session_dir / "home-submissions", task_queue=queue,
                        temporal_address="unused", database_url="unused", rbac_policy=path)
    async with build_worker(temporal_client, queue, pool=db_pool, settings=settings):
        yield ExecutionClient(temporal=temporal_client, pool=db_pool, settings=settings)


def plan(marker: Path, environment: str = "prod") -> dict[str, Any]:
    return request([shell("touch", f"touch {marker}", idempotent=True)],
                   tenant=f"sub-{uuid.uuid4().hex[:6]}", actor="rita",
                   environment=environment)


async def ended(client: ExecutionClient, execution_id: str) -> str:
    return str(await wait_for(lambda: client.pool.fetchval(
        "SELECT status::text FROM execution.executions WHERE execution_id = $1"
        " AND status IN ('completed', 'failed', 'cancelled', 'timeout')",
        uuid.UUID(execution_id)), timeout=60, what="the run to end"))


async def refusal(client: ExecutionClient, execution_id: str) -> str:
    found = [e for e in await events(client.pool, execution_id)
             if e["event_type"] == "submission.refused"]
    assert found, "a refused submission is an event"
    return str(found[0]["message"])


async def test_a_signed_submission_runs_and_says_who_signed(
        client: ExecutionClient, keys: dict[str, Path], tmp_path: Path) -> None:
    signed = await client.sign_submission(plan(tmp_path / "ran"), key=keys["rita"])
    resp = await client.execute(signed, wait=False)
    status = await ended(client, resp.execution_id)
    assert status == "completed", [(e["event_type"], e["message"]) for e in await events(
        client.pool, resp.execution_id)]
    assert (tmp_path / "ran").exists()
    assert "submission.verified" in {e["event_type"] for e in await events(client.pool,
                                                                      resp.execution_id)}


async def test_an_unsigned_prod_submission_runs_nothing(client: ExecutionClient,
                                                        tmp_path: Path) -> None:
    resp = await client.execute(plan(tmp_path / "ran"), wait=False)
    assert await ended(client, resp.execution_id) == "failed"
    assert "unsigned submission" in await refusal(client, resp.execution_id)
    assert not (tmp_path / "ran").exists()


async def test_bob_signing_as_rita_is_impersonation(client: ExecutionClient,
                                                    keys: dict[str, Path],
                                                    tmp_path: Path) -> None:
    forged = await client.sign_submission(plan(tmp_path / "ran"), key=keys["bob"])
    resp = await client.execute(forged, wait=False)
    assert await ended(client, resp.execution_id) == "failed"
    assert "impersonation" in await refusal(client, resp.execution_id)
    assert not (tmp_path / "ran").exists()


async def test_a_borrowed_signature_on_a_forged_spec_runs_nothing(
        client: ExecutionClient, keys: dict[str, Path], tmp_path: Path) -> None:
    """Started directly in Temporal: rita's real signature over a harmless envelope, carried
    by a spec whose step is another one."""
    harmless = await client.sign_submission(plan(tmp_path / "harmless"), key=keys["rita"])
    hostile = plan(tmp_path / "hostile")
    hostile["tenant"] = harmless["tenant"]
    execution_id = str(uuid.uuid4())
    spec = build_spec(validate_request(hostile), execution_id=execution_id,
                      workflow_id=f"forged-{execution_id}", idempotency_key=uuid.uuid4().hex)
    signature = harmless["signature"]
    spec = spec.model_copy(update={"submission": SubmissionProof(
        issued_at=signature["issued_at"], nonce=signature["nonce"],
        signature=signature["signature"], signed_request=canonical_request(harmless))})
    await client.temporal.start_workflow(ExecutionWorkflow.run, spec, id=spec.workflow_id,
                                         task_queue=client.settings.task_queue)
    assert await ended(client, execution_id) == "failed"
    assert "not what the signed envelope asks for" in await refusal(client, execution_id)
    assert not (tmp_path / "hostile").exists() and not (tmp_path / "harmless").exists()


async def test_dev_does_not_require_it(client: ExecutionClient, tmp_path: Path) -> None:
    resp = await client.execute(plan(tmp_path / "ran", "dev"), wait=False)
    assert await ended(client, resp.execution_id) == "completed"
