"""Bad image inputs at the ImageProcessor: each is refused with a message that
names the problem, and what is accepted becomes an upload any provider decodes."""

from __future__ import annotations

import asyncio
import io
import random
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import pyvips
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bot.errors import ImageError
from bot.images import (
    CORRUPT,
    EMPTY_FILE,
    RESULT_UNREADABLE,
    ImageProcessor,
    too_large_message,
)

MIB = 1024 * 1024
PROPERTY = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
# Every message a member can get for a bad input file; anything else is vague.
SPECIFIC = (
    EMPTY_FILE,
    CORRUPT,
    "That file is ",
    "The image is ",
    "The file is ",
)


@pytest.fixture(scope="module")
def processor() -> Iterator[ImageProcessor]:
    with ImageProcessor(max_input_bytes=25 * MIB, max_input_pixels=40_000_000) as proc:
        yield proc


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b""))  # no rows at all: decoding must fail
        + _chunk(b"IEND", b"")
    )


def noise(size: tuple[int, int], mode: str, seed: int) -> Image.Image:
    length = len(Image.new(mode, (1, 1)).tobytes()) * size[0] * size[1]
    return Image.frombytes(mode, size, random.Random(seed).randbytes(length))


# --------------------------------------------------------------------------- refusals


FOREIGN_MAGIC = (
    b"%PDF-1.4\n",
    b"PK\x03\x04",
    b"\x1f\x8b\x08",
    b"OggS",
    b"ID3\x03",
    b"8BPS",
    b"\x00\x00\x00\x18ftypheic",
    b"RIFF\x00\x00\x00\x00WAVE",
    b"<html>",
)


@st.composite
def hostile_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["damaged", "foreign", "random", "bomb"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "foreign":
        return draw(st.sampled_from(FOREIGN_MAGIC)) + draw(st.binary(max_size=64))
    if kind == "bomb":
        side = st.integers(1, 2**31 - 1)
        return png_declaring(draw(side), draw(side))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "GIF"]))
    size = (draw(st.integers(1, 32)), draw(st.integers(1, 32)))
    data = encode(noise(size, "RGB", draw(st.integers(0, 999))), fmt)
    cut = draw(st.integers(0, len(data) - 1))
    return data[:cut] + draw(st.binary(max_size=16))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@PROPERTY
@given(data=hostile_files())
def test_every_refusal_names_the_problem(processor: ImageProcessor, data: bytes) -> None:
    async def attempt() -> None:
        try:
            ref = await processor.load_reference(data, filename="x.png")
        except ImageError as error:
            assert error.user_message.startswith(SPECIFIC), error.user_message
            return
        assert ref.data is not None and ref.width and ref.height

    asyncio.run(attempt())


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@PROPERTY
@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1))
def test_declared_pixel_counts_are_checked_before_decoding(
    processor: ImageProcessor, width: int, height: int
) -> None:
    async def attempt() -> str:
        try:
            await processor.load_reference(png_declaring(width, height))
        except ImageError as error:
            return error.user_message
        raise AssertionError("a PNG with no pixel data was accepted")

    message = asyncio.run(attempt())
    if width * height > 40_000_000:
        assert message == (
            f"The image is {width}×{height} pixels; the most allowed is 40 megapixels."
        )
    else:
        assert message == CORRUPT  # small enough to try, and the data is not there


def test_too_large_message_uses_discords_units() -> None:
    assert too_large_message("huge.png", 30 * MIB, 25 * MIB) == (
        "huge.png is 30 MB; the most allowed is 25 MB."
    )
    # Just over the limit never reads as equal to it.
    assert too_large_message("a.png", 25 * MIB + 1, 25 * MIB) == (
        "a.png is 25.1 MB; the most allowed is 25 MB."
    )


# --------------------------------------------------------------------------- accepted inputs


def png_16_bit(width: int, height: int, pixel: tuple[int, ...]) -> bytes:
    """RGB (three samples) or RGBA (four) at 16 bits each, which Pillow cannot write."""
    row = b"\x00" + struct.pack(f">{len(pixel)}H", *pixel) * width
    color_type = 6 if len(pixel) == 4 else 2
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(row * height))
        + _chunk(b"IEND", b"")
    )


@st.composite
def unusual_images(draw: st.DrawFn) -> tuple[bytes, tuple[int, int]]:
    size = (draw(st.integers(1, 64)), draw(st.integers(1, 64)))
    kind = draw(st.sampled_from(["cmyk", "gray16", "rgb48", "rgba64", "gif", "animated", "ycbcr"]))
    seed = draw(st.integers(0, 999))
    if kind == "cmyk":
        return encode(noise(size, "CMYK", seed), "JPEG"), size
    if kind == "ycbcr":
        return encode(noise(size, "YCbCr", seed), "JPEG"), size
    if kind == "gray16":
        return encode(Image.new("I;16", size, draw(st.integers(0, 0xFFFF))), "PNG"), size
    if kind in ("rgb48", "rgba64"):
        samples = draw(st.lists(st.integers(0, 0xFFFF), min_size=3, max_size=3))
        if kind == "rgba64":
            samples.append(draw(st.integers(0, 0xFFFF)))
        return png_16_bit(*size, tuple(samples)), size
    frames = [
        noise(size, "RGB", seed + n).convert("P") for n in range(3 if kind == "animated" else 1)
    ]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), size


@PROPERTY
@given(image=unusual_images(), budget=st.sampled_from([2_500_000, 3_000]))
def test_unusual_images_are_uploaded_as_8_bit_rgb(
    processor: ImageProcessor, image: tuple[bytes, tuple[int, int]], budget: int
) -> None:
    data, size = image

    async def attempt() -> bytes | None:
        ref = await processor.load_reference(data, filename="in.png")
        fitted = await processor.fit_reference(ref, budget)
        return fitted.data

    uploaded = asyncio.run(attempt())
    assert uploaded is not None and len(uploaded) <= budget
    with Image.open(io.BytesIO(uploaded)) as im:
        im.load()
        assert im.mode in ("RGB", "RGBA"), im.mode
        if budget > 1_000_000:
            assert im.size == size  # converted, not shrunk, when it fits


async def test_plain_images_that_fit_are_uploaded_untouched(processor: ImageProcessor) -> None:
    for mode in ("RGB", "RGBA", "L", "P"):
        data = encode(noise((40, 30), mode, 1), "PNG")
        ref = await processor.load_reference(data)
        assert (await processor.fit_reference(ref, 2_500_000)).data == data, mode


def test_libvips_guards_are_on(processor: ImageProcessor) -> None:
    """libvips's own limits back up the sniffing: loaders it marks untrusted are
    refused even if one were reached, and no decoded image outlives its job in
    its operation cache."""
    with pytest.raises(pyvips.Error, match="blocked"):
        pyvips.Image.vipsload_source(pyvips.Source.new_from_memory(b"\x08\xf2\xa6\xb6"))
    assert pyvips.cache_get_max() == 0
    assert pyvips.cache_get_max_mem() == 0


async def test_truncated_rows_are_not_filled_in(processor: ImageProcessor) -> None:
    """libvips would paint the rows a cut-off file lacks grey; here they are refused."""
    for fmt in ("PNG", "JPEG", "WEBP", "GIF"):
        data = encode(noise((300, 300), "RGB", 3), fmt)
        with pytest.raises(ImageError) as info:
            await processor.load_reference(data[: len(data) * 3 // 4])
        assert info.value.user_message == CORRUPT, fmt
        with pytest.raises(ImageError) as info:
            await processor.decode_result(data[: len(data) * 3 // 4])
        assert info.value.user_message == RESULT_UNREADABLE, fmt


async def test_a_gif_only_libvips_can_read_is_refused(processor: ImageProcessor) -> None:
    """libvips's GIF reader shrugs off damage stricter decoders refuse, and providers
    read the member's original GIF from its link: both readers must agree."""
    data = bytearray(encode(Image.linear_gradient("L").resize((20, 33)).convert("RGB"), "GIF"))
    data[210] ^= 0x01
    damaged = bytes(data)
    pyvips.Image.gifload_buffer(damaged, fail_on="error").copy_memory()  # libvips alone: fine
    with pytest.raises(ImageError) as info:
        await processor.load_reference(damaged, filename="damaged.gif")
    assert info.value.user_message == CORRUPT
