"""Where the servers are: `OPSC_*` environment variables, falling back to a running dev stack.

(Policy, inventory and secret settings are read by the modules that use them, at the moment
of use, so a changed file or variable takes effect without restarting a worker.)

A running `opsconductor dev` writes `$OPSC_HOME/stack.json`; every command reads it when the
variables are unset, so nobody has to pass addresses by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

DEFAULT_TASK_QUEUE = "opsconductor-execution"
DEFAULT_NAMESPACE = "default"
STACK_FILE = "stack.json"


class Settings(BaseModel):
    home: Path
    temporal_address: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    task_queue: str = DEFAULT_TASK_QUEUE
    database_url: str | None = None
    ui_url: str | None = None
    idempotency_window_seconds: float = 86_400.0

    @property
    def stack_file(self) -> Path:
        return self.home / STACK_FILE


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    home = Path(env.get("OPSC_HOME") or "./.opsconductor").resolve()
    stack: dict[str, str] = {}
    stack_path = home / STACK_FILE
    if stack_path.exists():
        try:
            stack = json.loads(stack_path.read_text())
        except (OSError, ValueError):
            stack = {}
    return Settings(
        home=home,
        temporal_address=env.get("OPSC_TEMPORAL_ADDRESS") or stack.get("temporal_address"),
        namespace=env.get("OPSC_NAMESPACE") or stack.get("namespace") or DEFAULT_NAMESPACE,
        task_queue=env.get("OPSC_TASK_QUEUE") or stack.get("task_queue") or DEFAULT_TASK_QUEUE,
        database_url=env.get("OPSC_DATABASE_URL") or stack.get("database_url"),
        ui_url=stack.get("ui_url"),
        idempotency_window_seconds=float(env.get("OPSC_IDEMPOTENCY_WINDOW_SECONDS") or 86_400),
    )
