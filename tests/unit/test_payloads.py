"""Large payloads travel compressed; ordinary ones stay readable JSON."""

from __future__ import annotations

import json

from temporalio.api.common.v1 import Payload

from opsconductor.schema.payloads import COMPRESS_ABOVE, DATA_CONVERTER, ENCODING


async def test_small_payloads_stay_plain_json() -> None:
    [payload] = await DATA_CONVERTER.encode([{"approver": "bob", "decision": "approve"}])
    assert payload.metadata["encoding"] == b"json/plain"
    assert json.loads(payload.data) == {"approver": "bob", "decision": "approve"}


async def test_large_payloads_are_compressed_and_decode_to_the_same_value() -> None:
    value = {"steps": [{"id": f"s{i}", "tool": "noop", "description": "restart nginx"}
                       for i in range(20_000)]}
    [payload] = await DATA_CONVERTER.encode([value])
    plain = len(json.dumps(value, separators=(",", ":")))
    assert plain > COMPRESS_ABOVE and payload.metadata["encoding"] == ENCODING
    assert payload.ByteSize() < plain // 10
    assert await DATA_CONVERTER.decode([payload], [dict]) == [value]


async def test_a_payload_from_the_plain_cli_passes_through() -> None:
    sent = Payload(metadata={"encoding": b"json/plain"}, data=b'{"actor": "alice"}')
    assert await DATA_CONVERTER.decode([sent], [dict]) == [{"actor": "alice"}]
