"""Inputs and results of the lock activities (`activities/locks.py`), one model per call.

`opsconductor.schema.messages` exports them under their earlier names too (`LockRequest`,
`LockGrant`, `LockRelease`).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class AcquireLocksInput(BaseModel):
    """Take every asset, all or nothing, in canonical (sorted) order; FIFO per asset."""

    tenant: str
    execution_id: str
    assets: list[str]
    wait_timeout_seconds: float = Field(gt=0)
    lease_seconds: float = Field(default=60.0, gt=0)
    poll_interval_seconds: float = Field(default=1.0, gt=0)


class AcquireLocksResult(BaseModel):
    tokens: dict[str, int]  # asset -> fencing token
    waited_seconds: float = 0.0
    owner: str = ""


class RenewLocksInput(BaseModel):
    tenant: str
    execution_id: str
    assets: list[str]
    lease_seconds: float = Field(default=60.0, gt=0)


class RenewLocksResult(BaseModel):
    expires_at: dict[str, datetime]


class ReleaseLocksInput(BaseModel):
    """Release the execution's leases: `assets`, else the keys of `tokens`, else all of them."""

    tenant: str
    execution_id: str
    assets: list[str] | None = None
    tokens: dict[str, int] = Field(default_factory=dict)


class ReleaseLocksResult(BaseModel):
    released: list[str]
