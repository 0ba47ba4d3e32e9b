"""Builders of execution requests for tests."""

from __future__ import annotations

import uuid
from typing import Any


def step(sid: str, tool: str = "noop", deps: list[str] | None = None, **inputs: Any) -> dict:
    extra = {k: inputs.pop(k) for k in ("failure_handling", "estimated_duration",
                                        "description") if k in inputs}
    return {"id": sid, "tool": tool, "inputs": inputs, "depends_on": deps or [],
            "description": extra.pop("description", f"step {sid}"), **extra}


def request(steps: list[dict], *, tenant: str = "acme", actor: str = "alice",
            environment: str = "dev", unique: bool = True, **envelope: Any) -> dict:
    """A request envelope; `unique` puts a nonce in the plan so each call is a new execution."""
    plan_extra = envelope.pop("plan_extra", {})
    execution_metadata = {"nonce": uuid.uuid4().hex} if unique else {}
    return {"tenant": tenant, "actor": actor, "environment": environment,
            "plan": {"plan": {"steps": steps, **plan_extra},
                     "execution_metadata": execution_metadata}, **envelope}


def shell(sid: str, command: str, deps: list[str] | None = None, **kw: Any) -> dict:
    return step(sid, "shell", deps, command=command, **kw)
