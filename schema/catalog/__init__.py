"""The facts of OpsConductor's tool catalog, re-stated in our own data file, and the one
routing table that says where each catalog tool runs.

`upstream_catalog.yaml` holds one row per catalog file (name, folder, category, platform,
the service upstream routes it to, our action class, its inputs and types, which input is
the target, the inputs of the step Stage C builds from it). `ROUTES` is the routing table:
each upstream service, the setting that names its URL here, and whether we run its tools
ourselves or send them by `POST {service}/execute-plan` (docs/catalog.md says why).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

DATA = Path(__file__).with_name("upstream_catalog.yaml")

Location = Literal["automation-service", "network-service", "asset-service",
                   "communication-service"]
InputType = Literal["string", "integer", "number", "boolean", "array", "object"]

# Upstream's unified executor: the inputs that say where and how to connect, never passed to
# the program; `host` and its aliases name the target, in this order.
TARGET_ALIASES = ("host", "target_host", "computer_name", "server")
CONNECTION_INPUTS = (*TARGET_ALIASES, "use_asset_credentials", "asset_id", "connection_type",
                     "timeout", "username", "password", "domain")


class CatalogTool(BaseModel):
    """One row of the data file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    file: str
    group: str
    category: str
    platform: str
    location: Location
    location_written: str | None
    action: Literal["read", "modify", "deploy"]
    probe: str | None  # the typed read-only probe a read tool means (safety.probes), if any
    target: str | None
    inputs: dict[str, InputType]
    example_from: Literal["first_example", "required_inputs", "host_only"]
    example: dict[str, Any]

    @property
    def windows(self) -> bool:
        return self.platform == "windows"


class Route(BaseModel):
    """Where the tools of one upstream service run."""

    model_config = ConfigDict(frozen=True)
    location: Location
    setting: str  # the Settings field holding the service's URL
    env: str  # ... and its environment variable
    sent: bool  # True: POST {url}/execute-plan; False: we run the tool on its target
    why: str


ROUTES: dict[str, Route] = {r.location: r for r in (
    Route(location="automation-service", setting="automation_service_url",
          env="OPSC_AUTOMATION_SERVICE_URL", sent=False,
          why="a program on a host: we run it on the target through our own connector (local, "
              "SSH; Windows through the Automation Service's /execute), so it is authorized "
              "for the program it runs, leased, supervised and killed with its process group"),
    Route(location="network-service", setting="network_service_url",
          env="OPSC_NETWORK_SERVICE_URL", sent=True,
          why="packet capture and device APIs live in the network service (its credentials, "
              "its capture hosts); we have no connector for them"),
    Route(location="asset-service", setting="asset_service_url", env="OPSC_ASSET_SERVICE_URL",
          sent=True, why="the asset inventory is the asset service's own data"),
    Route(location="communication-service", setting="communication_service_url",
          env="OPSC_COMMUNICATION_SERVICE_URL", sent=True,
          why="mail, Slack, Teams and webhooks go out through the communication service's "
              "accounts"),
)}

# The communication service knows these names only; the catalog writes them with dashes.
SERVICE_SPELLING = {"slack-cli": "slack_cli", "teams-cli": "teams_cli",
                    "webhook-sender": "webhook_sender"}


@cache
def catalog() -> tuple[CatalogTool, ...]:
    """Every row of the data file, in file order."""
    doc = yaml.safe_load(DATA.read_text())
    return tuple(CatalogTool.model_validate(row) for row in doc["tools"])


@cache
def by_name() -> dict[str, tuple[CatalogTool, ...]]:
    """Rows by tool name (four names have a linux and a windows row), plus the service's own
    spelling of the communication tools."""
    out: dict[str, tuple[CatalogTool, ...]] = {}
    for row in catalog():
        out[row.name] = (*out.get(row.name, ()), row)
    for dashed, underscored in SERVICE_SPELLING.items():
        if dashed in out:
            out[underscored] = out[dashed]
    return out


def location_of(tool: str) -> str:
    """Upstream's routing: by tool name through the catalog; unknown -> automation-service."""
    rows = by_name().get(tool)
    return rows[0].location if rows else "automation-service"


def route_of(tool: str) -> Route:
    return ROUTES[location_of(tool)]
