"""The `asset-query` tool: ask the Asset Service which assets match, so later steps can run
on each of them (template variables and fan-out, `schema/templates.py`).

Inputs (`schema.upstream_tools.AssetQueryInputs`): `query_type` list_all | filter | search |
get_by_id | get_by_hostname, `filters` (sent as query parameters), `search_term` (sent as
`search`), `limit`, `fields` (each returned asset keeps those plus `id`, `hostname` and
`ip_address`, which fan-out needs). With no Asset Service configured the inventory file
answers the same query (filters compare equal; `tags` means "has every tag").

Output: `assets`, `count`, `asset_count`, `hostnames`, `ip_addresses`, `source`.
"""

from __future__ import annotations

from typing import Any

from opsconductor.activities.assets import load_inventory
from opsconductor.activities.executors.base import StepContext, StepOutcome, parse_inputs
from opsconductor.activities.service_clients import (
    AssetNotFound,
    AssetServiceClient,
    AssetServiceError,
)
from opsconductor.schema.config import Settings, load_settings
from opsconductor.schema.errors import ErrorType
from opsconductor.schema.upstream_tools import AssetQueryInputs

IDENTITY_FIELDS = ("id", "hostname", "ip_address")


def tag_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    return [str(t) for t in value or []]


def _inventory_records(settings: Settings) -> list[dict[str, Any]]:
    path = settings.inventory_path()
    if path is None:
        return []
    return [{"id": a.id, "hostname": a.hostname, "ip_address": a.address or a.hostname,
             "os_type": a.os, "tags": list(a.tags), "connector": a.connector}
            for a in load_inventory(path).assets]


def matches(record: dict[str, Any], q: AssetQueryInputs) -> bool:
    """The inventory's answer to a query, by the rules in the module docstring."""
    for key, want in q.filters.items():
        if key == "tags":
            if not set(tag_list(want)) <= set(tag_list(record.get("tags"))):
                return False
        elif str(record.get(key, "")).lower() != str(want).lower():
            return False
    if q.query_type == "search":
        term = str(q.search_term).lower()
        return any(term in str(record.get(k, "")).lower() for k in IDENTITY_FIELDS)
    if q.query_type == "get_by_id":
        return str(record.get("id")) == str(q.asset_id)
    if q.query_type == "get_by_hostname":
        return str(record.get("hostname", "")).lower() == str(q.hostname).lower()
    return True


def project(record: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    if not fields:
        return dict(record)
    keep = dict.fromkeys([*IDENTITY_FIELDS, *fields])
    return {k: record[k] for k in keep if k in record}


async def query_service(client: AssetServiceClient, q: AssetQueryInputs) -> list[dict[str, Any]]:
    if q.query_type == "get_by_id":
        return [await client.get(str(q.asset_id))]
    if q.query_type == "get_by_hostname":
        return [await client.get_by_hostname(str(q.hostname))]
    params: dict[str, Any] = {k: (",".join(tag_list(v)) if k == "tags" else v)
                              for k, v in q.filters.items()}
    if q.query_type == "search":
        params["search"] = q.search_term
    params["limit"] = q.limit
    return await client.query(**params)


class AssetQueryExecutor:
    async def run(self, ctx: StepContext) -> StepOutcome:
        q = parse_inputs(AssetQueryInputs, ctx)
        if isinstance(q, StepOutcome):
            return q
        settings = ctx.settings or load_settings()
        client = AssetServiceClient.from_settings(settings)
        try:
            if client is not None:
                async with client:
                    records, source = await query_service(client, q), "asset-service"
            else:
                records = [r for r in _inventory_records(settings) if matches(r, q)]
                source = "inventory"
        except AssetNotFound:
            records, source = [], "asset-service"
        except AssetServiceError as err:
            return StepOutcome(ok=False, error=f"asset service: {err}",
                               error_type=ErrorType.EXECUTOR_ERROR, retryable=True)
        assets = [project(r, q.fields) for r in records[:q.limit]]
        output = {"assets": assets, "count": len(assets), "asset_count": len(assets),
                  "hostnames": [a.get("hostname") for a in assets if a.get("hostname")],
                  "ip_addresses": [a.get("ip_address") for a in assets if a.get("ip_address")],
                  "source": source}
        lines = [f"{a.get('id')}\t{a.get('hostname')}\t{a.get('ip_address', '')}" for a in assets]
        return StepOutcome(ok=True, output=output, stdout="\n".join(lines))
