"""bot.images against real images made with Pillow and a real local HTTP server."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import os
import random
import stat
import struct
import warnings
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pyvips
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import GifImagePlugin, Image

from bot.errors import (
    ImageError,
    ProviderBadResponse,
    ProviderNotFound,
    ProviderUnavailable,
)
from bot.images import (
    CORRUPT,
    RESULT_UNREADABLE,
    SUPPORTED,
    DiskRefused,
    ImageProcessor,
    ImageStore,
    UploadFile,
    download,
    sniff_mime,
)
from bot.images import codec as images_module
from bot.images.storage import Incoming
from bot.models import ReferenceImage, ResultImage

MIB = 1024 * 1024
SIDE = 2048


# --------------------------------------------------------------------------- helpers


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Incompressible pixels: the worst case for every codec."""
    length = len(Image.new(mode, (1, 1)).tobytes()) * size[0] * size[1]
    return Image.frombytes(mode, size, random.Random(seed).randbytes(length))


def photo_png(seed: int, side: int = SIDE) -> bytes:
    """Smooth gradients plus a little sensor-like noise: PNG compresses it badly
    (several MB at 2048²), lossy codecs well, like a real photo or render."""
    ramp = Image.linear_gradient("L").resize((side, side))
    base = Image.merge(
        "RGB", (ramp, ramp.rotate(90), ramp.transpose(Image.Transpose.FLIP_TOP_BOTTOM))
    )
    # compress_level=1 keeps fixture generation fast; it also makes the files bigger.
    return encode(Image.blend(base, noise((side, side), seed=seed), 0.04), "PNG", compress_level=1)


def result(data: bytes) -> ResultImage:
    with Image.open(io.BytesIO(data)) as im:
        mime = Image.MIME[im.format or "PNG"]
        return ResultImage(data=data, mime=mime, width=im.width, height=im.height)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width``×``height`` but holds almost no data:
    a decompression bomb that must be refused before any decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def solid(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    return encode(Image.new("RGB", size, color), "PNG")


def check_plan(
    messages: list[list[UploadFile]], count: int, max_bytes: int, max_files: int, grid: bool
) -> None:
    for message in messages:
        assert message, "no empty messages"
        assert sum(f.nbytes for f in message) <= max_bytes
        assert len(message) <= max_files
    names = [f.filename for message in messages for f in message]
    if grid and count > 1:
        assert names[0].startswith("grid.")
        names = names[1:]
    assert [name.rsplit(".", 1)[0] for name in names] == [f"image_{n}" for n in range(1, count + 1)]
    for upload in (f for message in messages for f in message):
        assert sniff_mime(upload.read_data()) == upload.mime
        with Image.open(io.BytesIO(upload.read_data())) as im:
            im.load()
            assert im.size == (upload.width, upload.height)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def processor() -> Iterator[ImageProcessor]:
    with ImageProcessor(max_input_bytes=25 * MIB, max_input_pixels=40_000_000) as proc:
        yield proc


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    data = [photo_png(seed) for seed in range(4)]
    for png in data:
        assert 4_000_000 <= len(png) <= 8_000_000  # the case the budget is about
    return data


# --------------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 8, "image/png"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 8, "image/jpeg"),
        (b"RIFF\x10\0\0\0WEBPVP8 ", "image/webp"),
        (b"GIF87a\x01\0", "image/gif"),
        (b"GIF89a\x01\0", "image/gif"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"PK\x03\x04\x14\0", "application/zip"),
        (b"\0\0\0\x18ftypmp42\0\0\0\0", "video/mp4"),
        (b"\0\0\0\x18ftypheic\0\0\0\0", "image/heic"),
        (b"RIFF\x10\0\0\0WAVEfmt ", "audio/wav"),
        (b"hello, this is a note\n", "text/plain"),
        (b"<!DOCTYPE html><html>", "text/html"),
        (b'{"status": "error"}', "application/json"),
        (b"\x00\x01\x02\x03\x04garbage", None),
        (b"", None),
    ],
)
def test_sniff_mime_reads_magic_bytes(data: bytes, expected: str | None) -> None:
    assert sniff_mime(data) == expected


async def test_png_named_jpg_is_accepted_as_png(processor: ImageProcessor) -> None:
    png = solid((10, 20, 30))
    ref = await processor.load_reference(png, filename="holiday.jpg", url="https://cdn/x")
    assert ref.mime == "image/png"
    assert ref.data == png
    assert ref.filename == "holiday.png"
    assert ref.url == "https://cdn/x"
    assert (ref.width, ref.height) == (64, 64)


async def test_pdf_named_png_is_rejected_naming_pdf(processor: ImageProcessor) -> None:
    with pytest.raises(ImageError) as info:
        await processor.load_reference(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj", filename="a.png")
    assert info.value.user_message == (
        "That file is a PDF, not an image. Use PNG, JPEG, WebP or GIF."
    )


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"PK\x03\x04" + b"\0" * 40, "ZIP archive"),
        (b"\0\0\0\x18ftypisom" + b"\0" * 40, "video (MP4)"),
        (b"just some words\n", "text file"),
        (b"\0\0\0\x18ftypheic" + b"\0" * 40, "HEIC image"),
        (b"\x13\x37garbage\x00\x01", "not a PNG, JPEG, WebP or GIF image"),
    ],
)
async def test_non_images_are_named(processor: ImageProcessor, data: bytes, named: str) -> None:
    with pytest.raises(ImageError, match=r"Use PNG, JPEG, WebP or GIF\.") as info:
        await processor.load_reference(data)
    assert named in info.value.user_message


# --------------------------------------------------------------------------- load_reference


@pytest.mark.parametrize(
    ("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
async def test_supported_formats_pass_through_unchanged(
    processor: ImageProcessor, fmt: str, mime: str
) -> None:
    data = encode(noise((120, 80), seed=1), fmt)
    ref = await processor.load_reference(data, filename="in.bin")
    assert (ref.mime, ref.width, ref.height) == (mime, 120, 80)
    assert ref.data == data
    assert ref.filename.startswith("in.")
    assert mime in SUPPORTED


async def test_animated_gif_becomes_png_of_first_frame(processor: ImageProcessor) -> None:
    frames = [Image.new("RGB", (40, 30), color) for color in ((255, 0, 0), (0, 0, 255))]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(io.BytesIO(gif)) as check:
        assert isinstance(check, GifImagePlugin.GifImageFile)
        assert check.n_frames == 2
    ref = await processor.load_reference(gif, filename="anim.gif")
    assert ref.mime == "image/png"
    assert ref.filename == "anim.png"
    assert ref.data is not None
    with Image.open(io.BytesIO(ref.data)) as im:
        assert im.size == (40, 30)
        assert im.convert("RGB").getpixel((5, 5)) == (255, 0, 0)


async def test_cmyk_jpeg_is_accepted_and_normalised_on_demand(processor: ImageProcessor) -> None:
    data = encode(Image.new("CMYK", (50, 40), (0, 255, 255, 0)), "JPEG", quality=95)
    ref = await processor.load_reference(data)
    assert (ref.mime, ref.width, ref.height, ref.data) == ("image/jpeg", 50, 40, data)
    png = await processor.to_png(ref)
    assert png.mime == "image/png" and png.data is not None
    with Image.open(io.BytesIO(png.data)) as im:
        assert im.mode == "RGB"
        red, green, blue = im.getpixel((10, 10))  # type: ignore[misc]
        assert red > 200 and green < 60 and blue < 60


async def test_16_bit_png_is_accepted_and_scaled_not_clipped(processor: ImageProcessor) -> None:
    gray16 = Image.new("I;16", (32, 32), 0x8000)  # mid gray in 16 bits
    data = encode(gray16, "PNG")
    ref = await processor.load_reference(data)
    assert (ref.mime, ref.width, ref.data) == ("image/png", 32, data)
    png = await processor.to_png(ref)
    assert png.data is not None
    with Image.open(io.BytesIO(png.data)) as im:
        assert im.mode == "RGB"
        assert im.getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("mode", ["P", "LA", "L", "1", "RGBA"])
async def test_other_modes_are_accepted(processor: ImageProcessor, mode: str) -> None:
    data = encode(noise((33, 17), "L", seed=2).convert(mode), "PNG")
    ref = await processor.load_reference(data)
    assert (ref.mime, ref.width, ref.height) == ("image/png", 33, 17)
    fitted = await processor.fit_reference(ref, 200)  # forces a re-encode of any mode
    assert fitted.data is not None and len(fitted.data) <= 200


async def test_exif_orientation_is_applied_when_re_encoding(processor: ImageProcessor) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(noise((300, 100), seed=3), "JPEG", exif=exif.tobytes())
    ref = await processor.load_reference(data)
    assert (ref.width, ref.height) == (100, 300)  # as displayed
    fitted = await processor.fit_reference(ref, len(data) // 2)
    assert fitted.data is not None
    with Image.open(io.BytesIO(fitted.data)) as im:
        assert im.width < im.height


async def test_empty_file(processor: ImageProcessor) -> None:
    with pytest.raises(ImageError) as info:
        await processor.load_reference(b"")
    assert info.value.user_message == "The file is empty."


async def test_file_over_byte_cap() -> None:
    data = encode(noise((64, 64), seed=4), "PNG")
    small = ImageProcessor(max_input_bytes=4096, max_input_pixels=10_000_000, workers=1)
    with small, pytest.raises(ImageError) as info:
        await small.load_reference(data)
    expected_kb = math.ceil(len(data) / 1024 * 10) / 10
    assert info.value.user_message == f"The file is {expected_kb:g} KB; the most allowed is 4 KB."


async def test_pixel_cap_is_checked_before_decoding(processor: ImageProcessor) -> None:
    # The data could never decode (one tiny IDAT): the pixel message proves we
    # stopped at the header.
    with pytest.raises(ImageError) as info:
        await processor.load_reference(png_header_only(7000, 7000))
    assert info.value.user_message == (
        "The image is 7000×7000 pixels; the most allowed is 40 megapixels."
    )


async def test_pixel_cap_message_above_pillows_warning_level(processor: ImageProcessor) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageError) as info:
            await processor.load_reference(png_header_only(12000, 12000))
    assert info.value.user_message == (
        "The image is 12000×12000 pixels; the most allowed is 40 megapixels."
    )


async def test_decompression_bomb_pillow_refuses_is_still_an_image_error(
    processor: ImageProcessor,
) -> None:
    bomb = png_header_only(30000, 30000)
    assert len(bomb) < 200
    with pytest.raises(ImageError) as info:
        await processor.load_reference(bomb)
    assert info.value.user_message == (
        "The image is 30000×30000 pixels; the most allowed is 40 megapixels."
    )


async def test_bomb_warning_raised_as_error_is_still_an_image_error(
    processor: ImageProcessor,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageError) as info:
            await processor.load_reference(png_header_only(10000, 10000))
    assert info.value.user_message == (
        "The image is 10000×10000 pixels; the most allowed is 40 megapixels."
    )


async def test_highly_compressible_bomb_is_refused() -> None:
    # A real, valid, tiny file that would expand to 25 MB of pixels.
    data = encode(Image.new("L", (5000, 5000)), "PNG")
    assert len(data) < 100_000
    small = ImageProcessor(max_input_bytes=MIB, max_input_pixels=10_000_000, workers=1)
    with small, pytest.raises(ImageError, match=r"5000×5000 pixels; the most allowed is 10 mega"):
        await small.load_reference(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
async def test_truncated_images_are_corrupt(processor: ImageProcessor, fmt: str) -> None:
    data = encode(noise((200, 200), seed=5), fmt)
    with pytest.raises(ImageError) as info:
        await processor.load_reference(data[: len(data) // 2])
    assert info.value.user_message == CORRUPT == "The image data is corrupt or truncated."


async def test_extreme_aspect_ratio(processor: ImageProcessor) -> None:
    data = encode(noise((1, 8000), seed=6), "PNG")
    ref = await processor.load_reference(data)
    assert (ref.width, ref.height) == (1, 8000)
    fitted = await processor.fit_reference(ref, 2000)
    assert fitted.data is not None and len(fitted.data) <= 2000
    plan = await processor.fit_for_upload([result(data)] * 2, max_bytes=6000)
    check_plan(plan, 2, 6000, 10, grid=True)


# --------------------------------------------------------------------------- fit_reference


async def test_fit_reference_keeps_an_image_that_fits(processor: ImageProcessor) -> None:
    ref = await processor.load_reference(solid((1, 2, 3)))
    assert await processor.fit_reference(ref, 2_500_000) is ref


async def test_fit_reference_shrinks_a_big_noisy_png(
    processor: ImageProcessor, photos: list[bytes]
) -> None:
    ref = await processor.load_reference(photos[0], filename="big.png", url="https://cdn/big")
    fitted = await processor.fit_reference(ref, 2_500_000)
    assert fitted.data is not None and len(fitted.data) <= 2_500_000
    assert fitted.mime == "image/jpeg" and fitted.filename == "big.jpg"
    assert (fitted.width, fitted.height) == (SIDE, SIDE)  # re-encoding sufficed
    assert fitted.url == "https://cdn/big"


async def test_fit_reference_downscales_when_re_encoding_is_not_enough(
    processor: ImageProcessor,
) -> None:
    ref = await processor.load_reference(encode(noise((800, 600), seed=7), "PNG"))
    fitted = await processor.fit_reference(ref, 150_000)
    assert fitted.data is not None and len(fitted.data) <= 150_000
    assert fitted.width is not None and fitted.height is not None
    assert fitted.width < 800
    assert abs(fitted.width / fitted.height - 800 / 600) < 0.02


async def test_fit_reference_keeps_transparency(processor: ImageProcessor) -> None:
    im = noise((400, 400), "RGBA", seed=8)
    ref = await processor.load_reference(encode(im, "PNG"))
    fitted = await processor.fit_reference(ref, 100_000)
    assert fitted.mime == "image/webp" and fitted.data is not None
    assert len(fitted.data) <= 100_000
    with Image.open(io.BytesIO(fitted.data)) as out:
        assert out.mode == "RGBA"


# --------------------------------------------------------------------------- fit_for_upload


async def test_four_photos_fit_ten_mib(photos: list[bytes]) -> None:
    images = [result(png) for png in photos]
    with ImageProcessor(max_input_bytes=25 * MIB, max_input_pixels=40_000_000, workers=1) as one:
        plan = await one.fit_for_upload(images, max_bytes=10 * MIB)
    check_plan(plan, 4, 10 * MIB, 10, grid=True)
    grid = plan[0][0]
    assert grid.filename == "grid.jpg" and max(grid.width, grid.height) <= 1536
    # Each original fits a message on its own, so all four go untouched.
    originals = [f for message in plan for f in message][1:]
    assert [f.data for f in originals] == photos


async def test_four_photos_re_encoded_in_parallel_when_each_is_too_big(
    processor: ImageProcessor, photos: list[bytes]
) -> None:
    images = [result(png) for png in photos]
    plan = await processor.fit_for_upload(images, max_bytes=3 * MIB)
    check_plan(plan, 4, 3 * MIB, 10, grid=True)
    files = [f for message in plan for f in message][1:]
    assert all(f.mime in ("image/webp", "image/jpeg") for f in files)
    assert all((f.width, f.height) == (SIDE, SIDE) for f in files)  # no downscale needed
    assert len(plan) == 1  # re-encoded, they all fit with the grid


async def test_max_messages_trades_fidelity_for_one_message(
    processor: ImageProcessor, photos: list[bytes]
) -> None:
    images = [result(png) for png in photos]
    plan = await processor.fit_for_upload(images, max_bytes=10 * MIB, max_messages=1)
    assert len(plan) == 1
    check_plan(plan, 4, 10 * MIB, 10, grid=True)


async def test_tiny_limit_forces_downscale(processor: ImageProcessor) -> None:
    images = [result(encode(noise((512, 512), seed=s), "PNG")) for s in (9, 10)]
    plan = await processor.fit_for_upload(images, max_bytes=20_000, max_files=3)
    check_plan(plan, 2, 20_000, 3, grid=True)
    files = [f for message in plan for f in message][1:]
    assert all(f.width < 512 for f in files)


def record_work(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any]]:
    """(sizes of what gets encoded, (from, to) of every resize), from the pool too."""
    encoded: list[Any] = []
    resized: list[Any] = []
    real_encode = images_module._encode
    real_resize = images_module._resize

    def spy_encode(im: pyvips.Image, fmt: str, params: dict[str, Any]) -> bytes:
        encoded.append((im.width, im.height))
        return real_encode(im, fmt, params)

    def spy_resize(im: pyvips.Image, size: tuple[int, int], kernel: str) -> pyvips.Image:
        resized.append(((im.width, im.height), tuple(size)))
        return real_resize(im, size, kernel)

    monkeypatch.setattr(images_module, "_encode", spy_encode)
    monkeypatch.setattr(images_module, "_resize", spy_resize)
    return encoded, resized


async def test_far_over_budget_is_fitted_with_one_resize(
    processor: ImageProcessor, monkeypatch: pytest.MonkeyPatch
) -> None:
    png = encode(noise((1024, 1024), seed=20), "PNG")
    encoded, resized = record_work(monkeypatch)
    plan = await processor.fit_for_upload([result(png)], max_bytes=300_000)
    check_plan(plan, 1, 300_000, 10, grid=False)
    upload = plan[0][0]
    assert upload.mime == "image/jpeg" and 300 < upload.width < 1024
    # A sample of rows told it was far over: no full-size trial encode, one resize.
    assert (1024, 1024) not in encoded
    assert resized == [((1024, 1024), (upload.width, upload.height))]


async def test_image_that_fits_once_re_encoded_keeps_its_size(
    processor: ImageProcessor, monkeypatch: pytest.MonkeyPatch
) -> None:
    im = noise((1024, 1024), seed=21)
    budget = len(encode(im, "JPEG", quality=90))  # exactly what re-encoding needs
    encoded, resized = record_work(monkeypatch)
    plan = await processor.fit_for_upload([result(encode(im, "PNG"))], max_bytes=budget)
    assert (plan[0][0].width, plan[0][0].height) == (1024, 1024)
    assert (1024, 1024) in encoded and not resized


def test_size_estimate_tracks_the_full_encode() -> None:
    def vips(im: Image.Image) -> pyvips.Image:
        return pyvips.Image.new_from_buffer(encode(im, "PNG"), "").copy_memory()

    photo = pyvips.Image.new_from_buffer(photo_png(3, side=1024), "").copy_memory()
    half = Image.new("RGB", (1024, 1024), (90, 100, 110))
    half.paste(noise((1024, 512), seed=22))
    for im in (photo, vips(half), vips(noise((1200, 1100), seed=23))):
        for fmt, params in images_module._UPLOAD_OPAQUE + images_module._UPLOAD_ALPHA:
            estimate = images_module._estimate_size(im, fmt, params)
            assert estimate is not None
            full = len(images_module._encode(im, fmt, params))
            assert estimate == pytest.approx(full, rel=0.15)
    # Too small for a sample to save anything: the caller encodes it all instead.
    small = vips(noise((500, 500)))
    assert images_module._estimate_size(small, *images_module._UPLOAD_OPAQUE[0]) is None


async def test_grid_keeps_its_size_in_room_the_samples_leave(processor: ImageProcessor) -> None:
    images = [result(photo_png(seed, side=600)) for seed in range(4)]
    plan = await processor.fit_for_upload(images, max_bytes=1_000_000, max_messages=1)
    assert len(plan) == 1
    check_plan(plan, 4, 1_000_000, 10, grid=True)
    grid = plan[0][0]
    # More than the grid's own share (a tenth here), yet not downscaled.
    assert grid.nbytes > 1_000_000 // 10
    assert (grid.width, grid.height) == (2 * 600 + 8, 2 * 600 + 8)  # 8: the gap


async def test_grid_of_downscaled_samples_shows_each_in_its_cell(
    processor: ImageProcessor,
) -> None:
    colors = [(220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40)]
    images = [
        result(
            encode(Image.blend(Image.new("RGB", (1024, 1024), c), noise((1024, 1024)), 0.3), "PNG")
        )
        for c in colors
    ]
    plan = await processor.fit_for_upload(images, max_bytes=1_000_000, max_messages=1)
    check_plan(plan, 4, 1_000_000, 10, grid=True)
    samples = plan[0][1:]
    assert all(f.width < 1024 for f in samples)  # downscaled: the cells come from those
    grid = plan[0][0]
    with Image.open(io.BytesIO(grid.read_data())) as im:
        rgb = im.convert("RGB")
    for index, color in enumerate(colors):
        row, col = divmod(index, 2)
        x = (2 * col + 1) * grid.width // 4
        y = (2 * row + 1) * grid.height // 4
        cell = rgb.crop((x - 20, y - 20, x + 20, y + 20)).resize((1, 1), Image.Resampling.BOX)
        got = cell.getpixel((0, 0))
        assert isinstance(got, tuple)
        want = [0.7 * c + 0.3 * 127.5 for c in color]
        assert all(abs(a - b) < 12 for a, b in zip(got, want, strict=True)), (index, got)


async def test_single_image_has_no_grid(processor: ImageProcessor) -> None:
    png = solid((200, 100, 0))
    plan = await processor.fit_for_upload([result(png)], max_bytes=10 * MIB)
    assert [[f.filename for f in m] for m in plan] == [["image_1.png"]]
    assert plan[0][0].data == png


async def test_grid_off_and_file_count_limit(processor: ImageProcessor) -> None:
    images = [result(solid((n * 40, 0, 0))) for n in range(5)]
    plan = await processor.fit_for_upload(images, max_bytes=10 * MIB, max_files=2, grid=False)
    assert [[f.filename for f in m] for m in plan] == [
        ["image_1.png", "image_2.png"],
        ["image_3.png", "image_4.png"],
        ["image_5.png"],
    ]


async def test_make_grid_is_two_by_two_in_sample_order(processor: ImageProcessor) -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    grid = await processor.make_grid([result(solid(c, (512, 512))) for c in colors])
    assert grid.filename == "grid.jpg" and grid.mime == "image/jpeg"
    assert (grid.width, grid.height) == (1032, 1032)  # two 512 cells and a gap: no upscaling
    with Image.open(io.BytesIO(grid.read_data())) as im:
        rgb = im.convert("RGB")
        for (x, y), color in zip(
            [(256, 256), (776, 256), (256, 776), (776, 776)], colors, strict=True
        ):
            got = rgb.getpixel((x, y))
            assert isinstance(got, tuple)
            assert all(abs(a - b) < 12 for a, b in zip(got, color, strict=True)), (x, y, got)


async def test_plans_are_deterministic(processor: ImageProcessor) -> None:
    images = [result(encode(noise((300, 200), seed=s), "PNG")) for s in (11, 12, 13)]
    first = await processor.fit_for_upload(images, max_bytes=120_000)
    second = await processor.fit_for_upload(images, max_bytes=120_000)
    assert [[f.data for f in m] for m in first] == [[f.data for f in m] for m in second]


async def test_upload_file_repr_hides_bytes() -> None:
    upload = UploadFile(
        filename="a.png", data=b"\x89PNG" * 1000, mime="image/png", width=1, height=1
    )
    assert "PNG" not in repr(upload).replace("image/png", "")
    assert "bytes=4000" in repr(upload)


# --------------------------------------------------------------------------- properties

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"]
FORMATS = ["PNG", "JPEG", "WEBP", "GIF"]


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS))
    size = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    im = noise(size, mode, seed=draw(st.integers(0, 2**16)))
    try:
        data = encode(im, fmt)
    except (OSError, ValueError, KeyError):
        data = encode(im.convert("RGB"), fmt)
    damage = draw(st.sampled_from(["none", "truncate", "flip"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "flip":
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    return data


PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(data=st.one_of(image_bytes(), st.binary(max_size=300)))
def test_any_input_loads_or_raises_image_error(processor: ImageProcessor, data: bytes) -> None:
    async def attempt() -> None:
        try:
            ref = await processor.load_reference(data)
        except ImageError as exc:
            assert exc.user_message
            return
        assert ref.mime in SUPPORTED and ref.data is not None
        assert ref.width is not None and ref.width >= 1
        fitted = await processor.fit_reference(ref, 4096)
        assert fitted.data is not None and len(fitted.data) <= 4096

    asyncio.run(attempt())


@st.composite
def result_sets(draw: st.DrawFn) -> list[ResultImage]:
    images = []
    for _ in range(draw(st.integers(1, 4))):
        mode = draw(st.sampled_from(["RGB", "RGBA", "L", "P"]))
        fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "GIF"]))
        size = (draw(st.integers(1, 160)), draw(st.integers(1, 160)))
        im = noise(size, mode, seed=draw(st.integers(0, 2**16)))
        if fmt == "JPEG" and mode in ("RGBA", "P"):
            im = im.convert("RGB")
        images.append(result(encode(im, fmt)))
    return images


@PROPERTY_SETTINGS
@given(
    images=result_sets(),
    max_bytes=st.integers(20_000, 400_000),
    max_files=st.integers(1, 10),
    grid=st.booleans(),
    max_messages=st.one_of(st.none(), st.integers(1, 3)),
)
def test_upload_plans_stay_within_limits(
    processor: ImageProcessor,
    images: list[ResultImage],
    max_bytes: int,
    max_files: int,
    grid: bool,
    max_messages: int | None,
) -> None:
    plan = asyncio.run(
        processor.fit_for_upload(
            images, max_bytes=max_bytes, max_files=max_files, grid=grid, max_messages=max_messages
        )
    )
    check_plan(plan, len(images), max_bytes, max_files, grid)
    files = len(images) + (1 if grid and len(images) > 1 else 0)
    if max_messages is not None and files <= max_messages * max_files:
        assert len(plan) <= max_messages


# --------------------------------------------------------------------------- decode_result


async def test_decode_result_reports_size(processor: ImageProcessor) -> None:
    data = encode(noise((90, 60), seed=14), "WEBP")
    image = await processor.decode_result(data, source_url="https://x/1.webp")
    assert (image.mime, image.width, image.height) == ("image/webp", 90, 60)
    assert image.data == data and image.source_url == "https://x/1.webp"


@pytest.mark.parametrize(
    "wrap",
    [
        lambda b64: b"data:image/png;base64," + b64,
        lambda b64: b64,
        lambda b64: b"\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)) + b"\n",
        lambda b64: b'"' + b64 + b'"',
        lambda b64: b64.rstrip(b"="),
    ],
    ids=["data-url", "plain", "wrapped-lines", "json-string", "unpadded"],
)
async def test_decode_result_decodes_base64_bodies(processor: ImageProcessor, wrap: Any) -> None:
    png = solid((9, 9, 9), (37, 11))
    image = await processor.decode_result(wrap(base64.b64encode(png)))
    assert (image.data, image.mime, image.width, image.height) == (png, "image/png", 37, 11)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>Not found</html>",
        b'{"status":"error"}',
        b"bm90IGFuIGltYWdl",  # base64 of "not an image"
        encode(noise((50, 50), seed=15), "PNG")[:300],
    ],
)
async def test_decode_result_unreadable(processor: ImageProcessor, body: bytes) -> None:
    with pytest.raises(ImageError) as info:
        await processor.decode_result(body)
    assert info.value.user_message == RESULT_UNREADABLE


# --------------------------------------------------------------------------- download

PNG_BODY = solid((1, 2, 3))


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    release = asyncio.Event()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=PNG_BODY, content_type="image/png")

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=410)

    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=503, headers={"Retry-After": "7"})

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5000)

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for _ in range(20):
                await response.write(b"y" * 1000)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client hung up at its cap, as it should
        return response

    async def slow(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 5)
        return web.Response(body=PNG_BODY)

    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    async def outside(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://example.com/result.png")

    async def b64(request: web.Request) -> web.Response:
        return web.Response(text="data:image/png;base64," + base64.b64encode(PNG_BODY).decode())

    app = web.Application()
    for path, handler in {
        "/ok": ok,
        "/missing": missing,
        "/gone": gone,
        "/busy": busy,
        "/big": big,
        "/stream": stream,
        "/slow": slow,
        "/hop": hop,
        "/outside": outside,
        "/b64": b64,
    }.items():
        app.router.add_get(path, handler)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    try:
        yield test_server
    finally:
        release.set()
        await test_server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def fetch(
    session: aiohttp.ClientSession, url: str, *, max_bytes: int = 4096, seconds: float = 5.0
) -> bytes:
    return await download(session, url, max_bytes=max_bytes, timeout=seconds, allow_loopback=True)


async def test_download_ok_and_redirect(server: TestServer, session: aiohttp.ClientSession) -> None:
    assert await fetch(session, str(server.make_url("/ok"))) == PNG_BODY
    assert await fetch(session, str(server.make_url("/hop"))) == PNG_BODY


@pytest.mark.parametrize("path", ["/missing", "/gone"])
async def test_download_expired_link(
    server: TestServer, session: aiohttp.ClientSession, path: str
) -> None:
    with pytest.raises(ProviderNotFound) as info:
        await fetch(session, str(server.make_url(path)))
    assert info.value.user_message == "The provider's result link has expired or does not exist."
    assert not info.value.retryable and info.value.provider == "download"


async def test_download_server_error_is_retryable(
    server: TestServer, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(ProviderUnavailable) as info:
        await download(
            session,
            str(server.make_url("/busy")),
            max_bytes=4096,
            timeout=5,
            allow_loopback=True,
            provider="modelslab",
        )
    assert info.value.retryable and info.value.status == 503
    assert info.value.retry_after == 7 and info.value.provider == "modelslab"


async def test_download_over_cap_by_content_length(
    server: TestServer, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(ProviderBadResponse) as info:
        await fetch(session, str(server.make_url("/big")), max_bytes=2048)
    assert info.value.user_message == "The provider's result is larger than 2 KB."
    assert not info.value.retryable


async def test_download_over_cap_while_streaming(
    server: TestServer, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(ProviderBadResponse, match="larger than") as info:
        await fetch(session, str(server.make_url("/stream")), max_bytes=3000)
    assert not info.value.retryable


async def test_download_timeout(server: TestServer, session: aiohttp.ClientSession) -> None:
    with pytest.raises(ProviderUnavailable, match="too long") as info:
        await fetch(session, str(server.make_url("/slow")), seconds=0.3)
    assert info.value.retryable


@pytest.mark.parametrize(
    ("url", "allow_loopback"),
    [
        ("http://example.com/result.png", True),  # plain http off loopback
        ("http://127.0.0.1:9/result.png", False),  # loopback not allowed here
        ("ftp://example.com/result.png", True),
        ("file:///etc/passwd", True),
        ("not a url", True),
    ],
)
async def test_download_refuses_disallowed_urls(
    session: aiohttp.ClientSession, url: str, allow_loopback: bool
) -> None:
    with pytest.raises(ProviderBadResponse) as info:
        await download(session, url, max_bytes=4096, timeout=5, allow_loopback=allow_loopback)
    assert not info.value.retryable


async def test_download_refuses_redirect_to_plain_http_elsewhere(
    server: TestServer, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(ProviderBadResponse, match="not allowed"):
        await fetch(session, str(server.make_url("/outside")))


async def test_downloaded_base64_body_is_decoded(
    server: TestServer, session: aiohttp.ClientSession, processor: ImageProcessor
) -> None:
    body = await fetch(session, str(server.make_url("/b64")))
    assert body.startswith(b"data:image/png;base64,")
    image = await processor.decode_result(body)
    assert (image.data, image.mime, image.width, image.height) == (PNG_BODY, "image/png", 64, 64)


# --------------------------------------------------------------------------- ImageStore


def file_facts(path: Path) -> tuple[bytes, int, int]:
    """Contents, file mode and directory mode."""
    return (
        path.read_bytes(),
        stat.S_IMODE(path.stat().st_mode),
        stat.S_IMODE(path.parent.stat().st_mode),
    )


async def test_store_save_load_and_modes(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images", retention_days=7)
    png = solid((5, 6, 7), (20, 10))
    saved = await store.save("job-1", 0, ResultImage(png, "image/png", 20, 10))
    assert saved.path is not None
    path = Path(saved.path)
    assert path == tmp_path / "images" / "job-1" / "0.png"
    assert store.path_for("job-1", 0, saved) == path  # known before the write
    assert file_facts(path) == (png, 0o600, 0o700)
    loaded = await store.load("job-1", 0)
    assert loaded is not None
    assert (loaded.data, loaded.mime, loaded.width, loaded.height) == (png, "image/png", 20, 10)
    assert loaded.path == saved.path
    assert await store.load("job-1", 1) is None
    assert await store.load("job-2", 0) is None
    assert sorted(os.listdir(path.parent)) == ["0.png"]  # no temporary files left


async def test_store_incoming_download_is_installed_like_a_save(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images", retention_days=7)
    png = solid((5, 6, 7), (20, 10))
    old = await store.save("job-1", 0, ResultImage(solid((1, 2, 3)), "image/jpeg", 64, 64))
    incoming = store.incoming("job-1", 0)
    incoming.expect(Incoming.IN_MEMORY_BYTES + 1)  # announced large: to disk at once
    for start in range(0, len(png), 7):  # pieces as a download delivers them
        await incoming.write(png[start : start + 7])
    downloaded = await incoming.finish()
    assert (
        isinstance(downloaded, Path)
        and downloaded.name.startswith(".")
        and file_facts(downloaded)[:2] == (png, 0o600)
    )
    path = await incoming.install("image/png")
    assert path == store.path_for("job-1", 0, ResultImage(png, "image/png", 20, 10))
    assert file_facts(path) == (png, 0o600, 0o700)
    # Re-saved in another format: the old one is gone.
    assert sorted(os.listdir(path.parent)) == ["0.png"] and old.path != str(path)
    loaded = await store.load("job-1", 0)
    assert loaded is not None and loaded.data == png


async def test_store_incoming_download_discarded_leaves_nothing(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, retention_days=7)
    incoming = store.incoming("job", 1)
    await incoming.write(b"x" * (Incoming.IN_MEMORY_BYTES + 1))  # large: on disk already
    assert os.listdir(tmp_path / "job") != []
    incoming.discard()
    assert os.listdir(tmp_path / "job") == []
    incoming.discard()  # twice is harmless


async def test_store_incoming_download_on_a_refusing_disk(tmp_path: Path) -> None:
    (tmp_path / "images").write_text("a file where the image folder should be")
    incoming = ImageStore(tmp_path / "images", retention_days=7).incoming("job", 0)
    incoming.expect(None)  # no Content-Length: decided by what arrives
    await incoming.write(b"x" * 10)
    with pytest.raises(DiskRefused):
        await incoming.write(b"x" * Incoming.IN_MEMORY_BYTES)
    incoming.discard()


async def test_store_incoming_small_download_stays_in_memory(tmp_path: Path) -> None:
    incoming = ImageStore(tmp_path, retention_days=7).incoming("job", 0)
    incoming.expect(1000)
    await incoming.write(b"x" * 600)
    await incoming.write(b"y" * 400)
    assert await incoming.finish() == b"x" * 600 + b"y" * 400
    assert os.listdir(tmp_path) == []  # nothing written: the job keeps it like a save


async def test_plan_reads_originals_kept_on_disk(processor: ImageProcessor, tmp_path: Path) -> None:
    pngs = [encode(noise((300, 200), seed=s), "PNG") for s in (21, 22)]
    kept = []
    for index, png in enumerate(pngs):
        path = tmp_path / f"{index}.png"
        await asyncio.to_thread(path.write_bytes, png)
        kept.append(ResultImage(png, "image/png", 300, 200).on_disk(str(path)))
    assert all(
        image.data is None and image.nbytes == len(png)
        for image, png in zip(kept, pngs, strict=True)
    )
    plan = await processor.fit_for_upload(kept, max_bytes=10 * 1024 * 1024)
    files = [f for message in plan for f in message]
    assert files[0].filename == "grid.jpg" and files[0].data is not None
    assert [f.path for f in files[1:]] == [image.path for image in kept]  # sent from disk
    assert [await asyncio.to_thread(f.read_data) for f in files[1:]] == pngs
    small = await processor.fit_for_upload(kept, max_bytes=60_000, grid=False)
    assert all(f.data is not None and f.nbytes <= 60_000 for m in small for f in m)


async def test_store_with_zero_retention_keeps_nothing(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, retention_days=0)
    image = ResultImage(solid((1, 1, 1)), "image/png", 64, 64)
    assert await store.save("job", 0, image) is image
    assert os.listdir(tmp_path) == []


async def test_store_rejects_unsafe_keys(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, retention_days=1)
    image = ResultImage(solid((1, 1, 1)), "image/png", 64, 64)
    for job_id in ("../x", "a/b", "..", ".hidden", ""):
        with pytest.raises(ValueError):
            await store.save(job_id, 0, image)
    with pytest.raises(ValueError):
        await store.save("job", -1, image)


async def test_store_sweep_deletes_old_jobs_only(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, retention_days=7)
    image = ResultImage(solid((1, 1, 1)), "image/png", 64, 64)
    await store.save("old", 0, image)
    await store.save("new", 0, image)
    (tmp_path / "not-ours.txt").write_text("keep me")
    now = datetime.now(UTC)
    eight_days_ago = (now - timedelta(days=8)).timestamp()
    for target in (tmp_path / "old" / "0.png", tmp_path / "old"):
        os.utime(target, (eight_days_ago, eight_days_ago))
    assert await store.sweep(now) == 1
    assert not (tmp_path / "old").exists()
    assert (tmp_path / "new" / "0.png").exists()
    assert (tmp_path / "not-ours.txt").exists()
    assert await store.sweep(now + timedelta(days=8)) == 1
    assert not (tmp_path / "new").exists()
    assert await ImageStore(tmp_path / "absent", retention_days=1).sweep() == 0


async def test_reference_image_repr_stays_small(processor: ImageProcessor) -> None:
    ref: ReferenceImage = await processor.load_reference(solid((3, 3, 3)))
    assert len(repr(ref)) < 200


async def test_one_message_plan_is_given_up_without_shrinking_anything(
    processor: ImageProcessor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four results too big to share one message at full size: the answer is None,
    learnt without a single resize (the caller then posts them at full size)."""
    pngs = [encode(noise((1024, 1024), seed=30 + n), "PNG") for n in range(4)]
    encoded, resized = record_work(monkeypatch)
    budget = 4 * 400_000  # each gets under 400 kB of it: far below its JPEG size
    images = [result(p) for p in pngs]
    assert await processor.fit_in_one_message(images, max_bytes=budget, grid=False) is None
    # No downscale, and (the estimate being far over) not even a full-size encode.
    assert resized == []
    assert (1024, 1024) not in encoded


async def test_one_message_plan_when_every_sample_keeps_its_size(
    processor: ImageProcessor,
) -> None:
    pngs = [encode(noise((300, 200), seed=40 + n), "PNG") for n in range(3)]
    images = [result(p) for p in pngs]
    plan = await processor.fit_in_one_message(images, max_bytes=10 * 1024 * 1024)
    assert plan is not None and len(plan) == 1
    assert [(f.width, f.height) for f in plan[0][1:]] == [(300, 200)] * 3
    assert plan == await processor.fit_for_upload(
        images, max_bytes=10 * 1024 * 1024, max_messages=1
    )


async def test_plan_falling_back_to_several_messages_decodes_each_image_once(
    processor: ImageProcessor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One message at full size is impossible, several are not: the grid cells
    made while finding that out serve the second plan, so no image is decoded
    again for its cell."""
    from bot.images import planning

    pngs = [encode(noise((1024, 1024), seed=50 + n), "PNG") for n in range(4)]
    limit = max(len(p) for p in pngs) + 100_000  # each original fits a message alone
    loads: list[int] = []
    shrunk_on_load: list[int] = []
    real_load, real_thumbnail_of = images_module._load, images_module._thumbnail_of

    def spy_load(data: bytes, mime: str) -> pyvips.Image:
        loads.append(len(data))
        return real_load(data, mime)

    def spy_thumbnail_of(data: bytes, mime: str, box: tuple[int, int]) -> pyvips.Image:
        shrunk_on_load.append(len(data))
        return real_thumbnail_of(data, mime, box)

    monkeypatch.setattr(planning, "_load", spy_load)
    monkeypatch.setattr(planning, "_thumbnail_of", spy_thumbnail_of)
    images = [result(p) for p in pngs]
    plan = await processor.plan_messages(images, max_bytes=limit)
    check_plan(plan, 4, limit, 10, grid=True)
    assert [f.data for message in plan for f in message][1:] == pngs  # untouched
    assert sorted(loads) == sorted(len(p) for p in pngs) and not shrunk_on_load
    # The same plan as the two calls it replaces.
    assert await processor.fit_in_one_message(images, max_bytes=limit) is None
    assert plan == await processor.fit_for_upload(images, max_bytes=limit)


@st.composite
def damaged_pngs(draw: st.DrawFn) -> bytes:
    mode = draw(st.sampled_from(["RGB", "RGBA", "L", "P"]))
    size = (draw(st.integers(1, 64)), draw(st.integers(1, 64)))
    data = encode(noise(size, mode, seed=draw(st.integers(0, 2**16))), "PNG")
    at = draw(st.integers(0, len(data) - 1))
    if draw(st.booleans()):
        return data[:at]
    return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]


def _pillow_verifies(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            im.verify()
    except Exception:
        return False
    return True


@PROPERTY_SETTINGS
@given(data=damaged_pngs())
def test_png_check_refuses_what_pillow_s_verify_refuses(data: bytes) -> None:
    """The chunk walk that replaced Pillow's verify (for its speed) is no less
    strict: any cut or flipped byte Pillow catches, it catches too."""
    try:
        images_module.verify_png(data, corrupt=CORRUPT)
    except ImageError:
        return
    assert _pillow_verifies(data)


def test_png_check_accepts_whole_pngs_and_names_damage_as_corrupt() -> None:
    good = encode(noise((40, 30), "RGB", seed=3), "PNG")
    images_module.verify_png(good, corrupt=CORRUPT)
    iend = good.rindex(b"IEND")
    damaged = {
        "cut before IEND": good[:iend],
        "IEND's CRC wrong": good[:-1] + bytes([good[-1] ^ 1]),
        "a pixel byte flipped": good[:60] + bytes([good[60] ^ 0x10]) + good[61:],
        "not a PNG": b"GIF89a" + good[6:],
        "chunk type not letters": good[:12] + b"IH1R" + good[16:],
    }
    for what, data in damaged.items():
        with pytest.raises(ImageError) as info:
            images_module.verify_png(data, corrupt=CORRUPT)
        assert info.value.user_message == CORRUPT, what


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


async def test_a_result_s_pixel_cap_is_read_from_its_png_header(
    processor: ImageProcessor,
) -> None:
    with pytest.raises(ImageError) as info:
        await processor.decode_result(png_header_only(30000, 30000))
    assert info.value.user_message == (
        "The image is 30000×30000 pixels; the most allowed is 64 megapixels."
    )
    small = await processor.decode_result(encode(noise((33, 21), "RGB", seed=5), "PNG"))
    assert (small.width, small.height) == (33, 21)


@pytest.mark.parametrize(
    ("what", "ihdr"),
    [
        ("16-bit palette", struct.pack(">IIBBBBB", 8, 8, 16, 3, 0, 0, 0)),
        ("colour type 5", struct.pack(">IIBBBBB", 8, 8, 8, 5, 0, 0, 0)),
        ("zero width", struct.pack(">IIBBBBB", 0, 8, 8, 2, 0, 0, 0)),
        ("unknown compression", struct.pack(">IIBBBBB", 8, 8, 8, 2, 1, 0, 0)),
        ("unknown interlace", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 2)),
    ],
)
async def test_a_result_with_an_impossible_png_header_is_unreadable(
    processor: ImageProcessor, what: str, ihdr: bytes
) -> None:
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 200))
        + _png_chunk(b"IEND", b"")
    )
    with pytest.raises(ImageError) as info:
        await processor.decode_result(data)
    assert info.value.user_message == RESULT_UNREADABLE, what


async def test_a_result_png_without_image_data_is_unreadable(processor: ImageProcessor) -> None:
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")
    with pytest.raises(ImageError) as info:
        await processor.decode_result(data)
    assert info.value.user_message == RESULT_UNREADABLE


async def test_an_original_that_fits_as_it_is_is_planned_without_the_pool() -> None:
    """Nothing to decode, so no pool thread is woken for it; a second image (a
    grid cell to make) still goes to the pool."""
    from unittest import mock

    with ImageProcessor(max_input_bytes=25 * MIB, max_input_pixels=40_000_000) as processor:
        one = result(encode(noise((64, 48), seed=61), "PNG"))
        with mock.patch.object(processor._pool, "submit", wraps=processor._pool.submit) as pool:
            plan = await processor.plan_messages([one], max_bytes=10 * MIB)
            assert [[f.filename for f in part] for part in plan] == [["image_1.png"]]
            assert plan[0][0].data is one.data
            assert pool.call_count == 0
            two = result(encode(noise((64, 48), seed=62), "PNG"))
            await processor.plan_messages([one, two], max_bytes=10 * MIB)
            assert pool.call_count > 0


def _fragmented_png(png: bytes, chunks: int) -> bytes:
    """``png`` with its image data cut into ``chunks`` IDAT chunks (still valid)."""
    pos, ihdr, idat = 8, b"", b""
    while pos < len(png):
        length, kind = struct.unpack_from(">I4s", png, pos)
        body = png[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat += body
    step = max(1, -(-len(idat) // chunks))
    pieces = [idat[i : i + step] for i in range(0, len(idat), step)]
    return (
        png[:8]
        + _png_chunk(b"IHDR", ihdr)
        + b"".join(_png_chunk(b"IDAT", piece) for piece in pieces)
        + _png_chunk(b"IEND", b"")
    )


async def test_a_png_result_is_checked_on_the_loop_unless_its_chunks_are_many() -> None:
    """A small PNG's check (its chunks' CRCs) costs less than a thread hand-off;
    one cut into many chunks would hold the event loop, so the pool walks it."""
    from unittest import mock

    from bot.images.processor import INLINE_PNG_CHUNKS

    png = encode(noise((96, 64), seed=63), "PNG")
    fragmented = _fragmented_png(png, INLINE_PNG_CHUNKS + 50)
    assert fragmented.count(b"IDAT") > INLINE_PNG_CHUNKS
    processor = ImageProcessor(max_input_bytes=25 * MIB, max_input_pixels=40_000_000)
    with (
        processor,
        mock.patch.object(processor._pool, "submit", wraps=processor._pool.submit) as pool,
    ):
        small = await processor.decode_result(png)
        assert (small.width, small.height, small.data) == (96, 64, png)
        with pytest.raises(ImageError) as info:
            await processor.decode_result(png[:-20] + bytes(8) + png[-12:])
        assert info.value.user_message == RESULT_UNREADABLE
        assert pool.call_count == 0

        many = await processor.decode_result(fragmented)
        assert (many.width, many.height) == (96, 64)
        assert pool.call_count == 1
        # Damage deep in the many chunks is still found, in the pool.
        cut = len(fragmented) - 200
        broken = fragmented[:cut] + bytes([fragmented[cut] ^ 0xFF]) + fragmented[cut + 1 :]
        with pytest.raises(ImageError) as info:
            await processor.decode_result(broken)
        assert info.value.user_message == RESULT_UNREADABLE
        assert pool.call_count == 2
