"""How our values travel through Temporal: pydantic JSON, compressed only when large.

Temporal refuses any payload above 2 MiB. The spec of a plan of thousands of steps (about a
kilobyte of JSON per step) and the state a long run carries into its next run are far above
that as JSON, and repetitive enough to shrink twenty-fold. Only payloads above
`COMPRESS_ABOVE` are compressed, so every ordinary input, signal, query and result stays
readable JSON in the Web UI and the `temporal` CLI; a payload without our encoding (what the
plain CLI sends) passes through untouched.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, PayloadCodec

ENCODING = b"binary/zlib"
COMPRESS_ABOVE = 128 * 1024  # bytes of encoded JSON
# What the server accepts for one payload; kept below 2 MiB for the envelope around it.
PAYLOAD_LIMIT = 2 * 1024 * 1024 - 64 * 1024


class LargePayloadCodec(PayloadCodec):
    """zlib for payloads above the threshold, with the original metadata kept inside."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._compress(p) if p.ByteSize() > COMPRESS_ABOVE else p for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return await self.decode_bounded(payloads, 0)

    @staticmethod
    def _compress(payload: Payload) -> Payload:
        return Payload(metadata={"encoding": ENCODING},
                       data=zlib.compress(payload.SerializeToString(), 6))

    @staticmethod
    def _decompress(payload: Payload, limit: int = 0) -> Payload:
        """`limit` (bytes; 0: none) refuses a payload that inflates past it, for a codec
        endpoint that decodes what anyone sends."""
        inflater = zlib.decompressobj()
        data = inflater.decompress(payload.data, limit)
        if limit and (inflater.unconsumed_tail or not inflater.eof):
            raise ValueError(f"the payload inflates past {limit} bytes")
        inner = Payload()
        inner.ParseFromString(data)
        return inner

    async def decode_bounded(self, payloads: Sequence[Payload], limit: int) -> list[Payload]:
        """`decode`, refusing any payload that inflates past `limit` bytes (0: no bound)."""
        return [self._decompress(p, limit) if p.metadata.get("encoding") == ENCODING else p
                for p in payloads]


DATA_CONVERTER: DataConverter = dataclasses.replace(pydantic_data_converter,
                                                    payload_codec=LargePayloadCodec())


async def encoded_size(value: object) -> int:
    """Bytes `value` takes as a Temporal payload (after compression)."""
    payloads = await DATA_CONVERTER.encode([value])
    return payloads[0].ByteSize()
