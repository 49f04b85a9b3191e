"""Image uploads: handed to the socket in one write, and let go of once sent.

aiohttp sends an ``io.BytesIO`` part in 64 KiB pieces and yields to the event
loop between pieces, so a 2 MB result takes some thirty turns of a busy loop to
leave, each behind every other job's work: under load that stretched each
upload by several milliseconds of a member's wait (and its size is taken by
copying the buffer). The bytes are in memory already and the transport buffers
what the socket cannot take at once, so an image is written whole: one call,
no copy of our own, no waiting turns.

discord.py never closes a file object it did not open, and on the way out it
points the object's ``close`` at the object's own method: a reference cycle, so
every uploaded image stayed in memory until the cyclic garbage collector ran.
Under load that was hundreds of megabytes (bench: peak RSS of 50 jobs × 4 ×
2048² fell from about 600 to under 300 MB with ``DiscordUpload.close`` below).
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import discord
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import BufferedReaderPayload, IOBasePayload, Order, register_payload


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

    def _close(self) -> None:
        # aiohttp closes a file part in its default executor, for real files;
        # closing bytes in memory needs no thread woken for it on every upload.
        self._consumed = True
        self._value.close()

    async def close(self) -> None:
        self._close()


register_payload(_WholeBufferPayload, UploadBuffer, order=Order.try_first)


class DiscordUpload(discord.File):
    """A ``discord.File`` over an ``UploadBuffer`` that frees it when discord.py is done."""

    __slots__ = ()

    def __init__(self, data: bytes, filename: str) -> None:
        super().__init__(UploadBuffer(data), filename=filename)

    def close(self) -> None:
        super().close()
        # Break the cycle discord.py made (fp.close -> fp) and drop the bytes now.
        vars(self.fp).pop("close", None)
        self.fp.close()


# Pieces a stored original is sent in: a handful of thread hops per image (aiohttp's
# own file payload reads 64 KiB per hop), and never the whole file in memory.
_PIECE = 1 << 20


class StoredReader(io.BufferedReader):
    """A stored original opened for upload (see ``StoredUpload``)."""


class _StoredPayload(BufferedReaderPayload):
    _value: StoredReader

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        size = self.size  # known (fstat): no thread woken only to read the end of the file
        remaining = size if content_length is None or size is None else min(size, content_length)
        if remaining is None:
            remaining = content_length
        rewind = True
        while remaining is None or remaining > 0:
            want = _PIECE if remaining is None else min(_PIECE, remaining)
            piece = await asyncio.to_thread(self._read_piece, want, rewind)
            rewind = False
            if not piece:
                return
            await writer.write(piece)
            if remaining is not None:
                remaining -= len(piece)

    def _read_piece(self, size: int, rewind: bool) -> bytes:
        if rewind:  # to where this payload started, for a request sent again
            self._set_or_restore_start_position()
        return self._value.read(size)

    def _close(self) -> None:
        # StoredUpload closes the file once discord.py is done (aiohttp would wake
        # a thread of its default executor for a close discord.py stubs out).
        self._consumed = True

    async def close(self) -> None:
        self._close()


register_payload(_StoredPayload, StoredReader, order=Order.try_first)


def open_stored(path: str) -> StoredReader:
    """Open a stored original for ``StoredUpload`` (blocking: call it in a thread)."""
    return StoredReader(io.FileIO(path, "r"))


class StoredUpload(discord.File):
    """A ``discord.File`` that sends a stored original from its file, a piece at a
    time: a 7 MB original is never whole in memory (bench: peak RSS), and the
    file is closed when discord.py is done with it."""

    __slots__ = ()

    def __init__(self, reader: StoredReader, filename: str) -> None:
        super().__init__(reader, filename=filename)

    def close(self) -> None:
        super().close()
        vars(self.fp).pop("close", None)
        self.fp.close()
