"""Image uploads handed to the socket in one write.

aiohttp sends an ``io.BytesIO`` part in 64 KiB pieces and yields to the event
loop between pieces, so a 2 MB result takes some thirty turns of a busy loop to
leave, each behind every other job's work: under load that stretched each
upload by several milliseconds of a member's wait (and its size is taken by
copying the buffer). The bytes are in memory already and the transport buffers
what the socket cannot take at once, so an image is written whole: one call,
no copy of our own, no waiting turns.
"""

from __future__ import annotations

import io
from typing import Any

from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import IOBasePayload, Order, register_payload


class UploadBuffer(io.BytesIO):
    """An upload's bytes, always sent from the start (see the module's text)."""


class _WholeBufferPayload(IOBasePayload):
    def __init__(self, value: UploadBuffer, *args: Any, **kwargs: Any) -> None:
        super().__init__(value, *args, **kwargs)
        # The bytes the buffer was made from, not a copy: getvalue() of an
        # unmodified BytesIO hands them back as they are (getbuffer() would copy).
        self._data = value.getvalue()

    @property
    def size(self) -> int:
        return len(self._data)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._data.decode(encoding, errors)

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self._data

    async def write(self, writer: AbstractStreamWriter) -> None:
        await writer.write(self._data)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        data = self._data if content_length is None else self._data[:content_length]
        await writer.write(data)


register_payload(_WholeBufferPayload, UploadBuffer, order=Order.try_first)
