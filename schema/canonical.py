"""Canonical JSON and the plan hash that approvals and idempotency are bound to."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """Stable text for hashing: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def plan_hash(plan: dict[str, Any]) -> str:
    """Hash of the executable plan (steps, checks, rollback): what an approver signs off."""
    body = plan.get("plan", plan)
    executable = {k: body.get(k) for k in ("steps", "safety_checks", "rollback_plan")}
    return sha256_hex(canonical_json(executable))
