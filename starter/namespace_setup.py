"""Preparing an existing Temporal namespace: it exists, and it has our search attributes.

The dev server registers them at start; a production cluster or Temporal Cloud namespace
gets them once from `opsconductor setup` (through the operator service). A worker checks at
start and refuses a namespace without them: its workflows would otherwise fail every task
when they upsert an unregistered attribute, and hang (TEMPORAL_NOTES).
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from opsconductor.schema.search_attributes import SEARCH_ATTRIBUTES

KINDS: dict[str, IndexedValueType.ValueType] = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
}
VISIBLE_WAIT_SECONDS = 30.0


class NamespaceProblem(RuntimeError):
    """The namespace is missing, unreadable, or holds a conflicting attribute (one line)."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


class SetupReport(BaseModel):
    """What `opsconductor setup` found and did."""

    address: str
    namespace: str
    registered: list[str]
    already_registered: list[str]
    changed: bool


def _kind_name(value: int) -> str:
    name = IndexedValueType.Name(IndexedValueType.ValueType(value))
    return name.removeprefix("INDEXED_VALUE_TYPE_").title().replace("_", "")


async def registered_attributes(client: Client, namespace: str) -> dict[str, int]:
    """The namespace's custom search attributes (name -> indexed value type)."""
    try:
        resp = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace))
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise NamespaceProblem(f"namespace {namespace!r} does not exist on this server",
                                   not_found=True) from None
        raise NamespaceProblem(f"cannot list the search attributes of namespace "
                               f"{namespace!r}: {err.status.name if err.status else ''} "
                               f"{err.message}") from None
    return dict(resp.custom_attributes)


def _compare(have: dict[str, int]) -> tuple[list[str], list[str]]:
    """(missing, present) among ours; a same-named attribute of another type is a conflict."""
    missing, present = [], []
    for name, kind in SEARCH_ATTRIBUTES.items():
        if name not in have:
            missing.append(name)
        elif have[name] != KINDS[kind]:
            raise NamespaceProblem(f"search attribute {name} exists as {_kind_name(have[name])}"
                                   f", not {kind}: remove or rename it first")
        else:
            present.append(name)
    return missing, present


async def missing_search_attributes(client: Client, namespace: str) -> list[str]:
    """Ours that the namespace lacks (empty when it is ready)."""
    return _compare(await registered_attributes(client, namespace))[0]


async def check_namespace(client: Client, namespace: str) -> None:
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace))
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise NamespaceProblem(
                f"namespace {namespace!r} does not exist: create it first (`temporal operator "
                f"namespace create --namespace {namespace}`, or in Temporal Cloud)",
                not_found=True) from None
        raise NamespaceProblem(f"cannot describe namespace {namespace!r}: "
                               f"{err.status.name if err.status else ''} {err.message}") from None


async def setup_namespace(client: Client, address: str, namespace: str) -> SetupReport:
    """Register what is missing (nothing when all are there) and wait until it is listed."""
    await check_namespace(client, namespace)
    missing, present = _compare(await registered_attributes(client, namespace))
    if missing:
        try:
            await client.operator_service.add_search_attributes(AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={n: KINDS[SEARCH_ATTRIBUTES[n]] for n in missing}))
        except RPCError as err:
            raise NamespaceProblem(
                f"cannot register search attributes {', '.join(missing)} on {namespace!r}: "
                f"{err.status.name if err.status else ''} {err.message} (on Temporal Cloud, "
                f"add them with `tcld namespace search-attributes add` or the Cloud UI)") \
                from None
        deadline = time.monotonic() + VISIBLE_WAIT_SECONDS
        while await missing_search_attributes(client, namespace):
            if time.monotonic() > deadline:
                raise NamespaceProblem(f"registered {', '.join(missing)} on {namespace!r} but "
                                       f"they are not listed after {VISIBLE_WAIT_SECONDS:g}s")
            await asyncio.sleep(0.2)
    return SetupReport(address=address, namespace=namespace, registered=missing,
                       already_registered=present, changed=bool(missing))
