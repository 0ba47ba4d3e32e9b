"""What every operator message (approve, reject, cancel, resolve) goes through: payload
validation with every problem named, and an audited RBAC decision made in the worker."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError

from opsconductor.schema.errors import ErrorType
from opsconductor.schema.messages import AuthorizeInput, AuthorizeResult
from opsconductor.schema.spec import ExecutionSpec
from opsconductor.workflows.options import AUTHZ_RETRY, AUTHZ_TIMEOUT


def describe_invalid(kind: str, err: ValidationError) -> str:
    """`malformed cancel: actor: Field required; ...`: every problem, with its field."""
    return f"malformed {kind}: " + "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in err.errors())


def validate_payload(model: type[BaseModel], payload: Any, kind: str) -> None:
    """An Update validator's check: refuse at once what is not a `model` at all."""
    try:
        model.model_validate(payload)
    except ValidationError as err:
        raise ApplicationError(describe_invalid(kind, err),
                               type=ErrorType.INVALID_PAYLOAD.value) from None


def payload_for_event(raw: Any) -> Any:
    """A refused payload as an event can carry it: plain JSON values, else a bounded repr."""
    return raw if isinstance(raw, dict | str | int | None) else str(raw)[:500]


async def authorize(spec: ExecutionSpec, actor: str, action: str,
                    step_id: str | None = None) -> AuthorizeResult:
    """RBAC (audited) for an operator's approve, cancel or resolve, in the worker."""
    return await workflow.execute_activity(
        "authorize",
        AuthorizeInput(tenant=spec.tenant, environment=spec.environment, actor=actor,
                       action=action, execution_id=spec.execution_id, step_id=step_id),
        result_type=AuthorizeResult, start_to_close_timeout=AUTHZ_TIMEOUT,
        retry_policy=AUTHZ_RETRY)
