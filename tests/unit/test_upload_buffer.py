"""Result uploads leave in one write instead of 64 KiB turns of the event loop."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from pathlib import Path
from unittest import mock

from aiohttp import FormData
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import get_payload

from cogs._upload_buffer import DiscordUpload, StoredUpload, UploadBuffer, open_stored


async def test_an_upload_is_written_whole_in_one_call() -> None:
    data = os.urandom(3 * 1024 * 1024)
    payload = get_payload(UploadBuffer(data), filename="image_1.png")
    assert payload.size == len(data)
    writer = mock.create_autospec(AbstractStreamWriter, instance=True)
    await payload.write(writer)
    # Written again (discord.py retries an upload after a 429): the same bytes.
    await payload.write(writer)
    written = [call.args[0] for call in writer.write.await_args_list]
    assert written == [data, data]
    assert all(chunk is data for chunk in written)  # the member's bytes, never copied


async def test_discord_py_multipart_form_carries_the_whole_image() -> None:
    data = os.urandom(200_000)
    form = FormData()
    form.add_field("files[0]", UploadBuffer(data), filename="image_1.png")
    body = await form().as_bytes()
    assert data in body


def test_a_sent_upload_is_freed_without_waiting_for_the_collector() -> None:
    gc.disable()
    try:
        upload = DiscordUpload(os.urandom(100_000), "image_1.png")
        buffer = weakref.ref(upload.fp)
        upload.close()  # what discord.py does once the request is over
        del upload
        assert buffer() is None
    finally:
        gc.enable()


async def test_a_sent_form_closes_its_images_without_a_thread() -> None:
    """aiohttp closes file parts in its default executor (a thread woken per
    upload); bytes in memory close at once."""
    buffer = UploadBuffer(os.urandom(10_000))
    form = FormData()
    form.add_field("files[0]", buffer, filename="image_1.png")
    payload = form()
    loop = asyncio.get_running_loop()
    with mock.patch.object(loop, "run_in_executor", wraps=loop.run_in_executor) as executor:
        await payload.write(mock.create_autospec(AbstractStreamWriter, instance=True))
        await payload.close()
    assert executor.call_count == 0
    assert buffer.closed


async def test_a_stored_original_is_sent_from_its_file_in_pieces(tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    path = tmp_path / "1.png"
    await asyncio.to_thread(path.write_bytes, data)
    upload = StoredUpload(await asyncio.to_thread(open_stored, str(path)), "image_1.png")
    payload = get_payload(upload.fp, filename="image_1.png")
    assert payload.size == len(data)
    writer = mock.create_autospec(AbstractStreamWriter, instance=True)
    await payload.write(writer)
    pieces = [call.args[0] for call in writer.write.await_args_list]
    assert b"".join(pieces) == data
    assert max(len(piece) for piece in pieces) <= 1024 * 1024  # never the whole file
    # discord.py rewinds the file before it retries (after a 429): the same bytes again.
    upload.reset()
    writer.reset_mock()
    await get_payload(upload.fp, filename="image_1.png").write(writer)
    assert b"".join(call.args[0] for call in writer.write.await_args_list) == data
    upload.close()
    assert upload.fp.closed


async def test_a_stored_original_goes_whole_in_a_multipart_form(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    path = tmp_path / "1.png"
    await asyncio.to_thread(path.write_bytes, data)
    reader = await asyncio.to_thread(open_stored, str(path))
    form = FormData()
    form.add_field("files[0]", reader, filename="image_1.png")
    body = await form().as_bytes()
    assert data in body
    reader.close()
