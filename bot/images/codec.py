"""libvips decoding, conversion, encoding and shrinking to a byte budget.

Everything here runs on the pool owned by ``ImageProcessor``, never on the event
loop; libvips releases the GIL while it works, so the pool's threads run in
parallel. Loads are sequential (rows stream through, nothing is re-read), each
operation runs on one libvips thread, and nothing is cached between calls: the
pool's size is the only bound on how many images are in flight.

Pillow is kept for the two things libvips has no equal for: telling an
animated PNG (APNG) from a still one, header-level, which libvips's PNG loader
ignores, and a strict reader for GIF references (``verify_gif``): libvips's GIF
loader accepts damage that other decoders, such as the provider's reading the
member's original link, refuse. A PNG's chunk CRCs are checked here without
inflating its pixels (``verify_png``), with ISA-L's crc32.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyvips
from isal import isal_zlib
from PIL import Image

from bot.errors import ImageError
from bot.images.formats import _MIME_OF_FORMAT, _PIL_FORMAT, _megapixels

WEBP_MAX_SIDE = 16383
_MAX_SHRINK_STEPS = 60
# A size estimate from sampled rows replaces the first trial encode of an image at
# least this large, when it says the image is over budget by at least _FAR_OVER:
# well beyond the estimate's error, so nothing that would have fitted is downscaled.
_SAMPLE_MIN_PIXELS = 1_000_000
# 8 bands of 16 rows: within 1 % of the full encode of photos here, half the cost of 16.
_SAMPLE_BANDS = 8
_SAMPLE_ROWS = 16
_FAR_OVER = 1.5

# (format, libvips save options), tried in order; the smallest that fits wins.
_Profile = tuple[tuple[str, dict[str, Any]], ...]
# JPEG chroma subsampling stays on at every quality (libvips turns it off from Q 90,
# which made a 1377² photo 1.4× larger, as Pillow's default never did).
# References: JPEG is what every provider accepts; q=92 keeps detail the model may copy.
_REF_OPAQUE: _Profile = (("JPEG", {"Q": 92, "optimize_coding": True, "subsample_mode": "on"}),)
_REF_ALPHA: _Profile = (("WEBP", {"Q": 90, "effort": 4}),)
# Uploads: for photos WebP was never smaller than JPEG here (bench/RESULTS.md) yet
# took half the fitting time; optimize_coding costs a third more for ~2 % in size.
_UPLOAD_OPAQUE: _Profile = (("JPEG", {"Q": 90, "subsample_mode": "on"}),)
_UPLOAD_ALPHA: _Profile = (("WEBP", {"Q": 90, "effort": 0}),)
_GRID: _Profile = (("JPEG", {"Q": 85, "subsample_mode": "on"}),)
_GRID_TINY: _Profile = (("WEBP", {"Q": 85, "effort": 0}),)
# Downscaling uploads and grids: libvips's linear reduction (a triangle filter
# widened to the scale, so it does not alias) is a quarter faster than bicubic, and
# after JPEG q90 the difference does not show: against a Lanczos downscale of a
# photo, 2048² -> 1377², linear is at 50 dB PSNR, bicubic at 53 dB, the JPEG
# itself at 42 dB. References keep Lanczos: models copy the finest detail given.
_UPLOAD_RESAMPLE = "linear"
_REF_RESAMPLE = "lanczos3"

_LOADERS = {
    "image/png": pyvips.Image.pngload_source,
    "image/jpeg": pyvips.Image.jpegload_source,
    "image/webp": pyvips.Image.webpload_source,
    "image/gif": pyvips.Image.gifload_source,
}
_SAVERS = {"JPEG": "jpegsave_buffer", "WEBP": "webpsave_buffer", "PNG": "pngsave_buffer"}
# Pillow's PNG defaults (zlib level 6, adaptive filter per row): same sizes as before.
_PNG_OPTIONS: dict[str, Any] = {"compression": 6, "filter": "all"}


def _configure() -> None:
    # Loaders libvips marks untrusted (e.g. MATLAB, FITS) refused outright, even if
    # a format ever got past sniffing; no operation cache (it would keep decoded
    # images of past jobs alive); one libvips thread per operation, so that the
    # pool alone bounds the CPU and memory images take.
    pyvips.block_untrusted_set(True)
    pyvips.cache_set_max(0)
    pyvips.cache_set_max_mem(0)
    pyvips.cache_set_max_files(0)
    pyvips.concurrency_set(1)


_configure()


@dataclass(frozen=True, slots=True)
class _Encoded:
    data: bytes
    mime: str
    width: int
    height: int


class _CannotFit(Exception):
    """Even a 1x1 image does not fit the byte budget."""


def _source(data: bytes | Path) -> pyvips.Source:
    """Encoded bytes in memory, or a stored original read from its file as rows are needed."""
    if isinstance(data, Path):
        return pyvips.Source.new_from_file(str(data))
    return pyvips.Source.new_from_memory(data)


def _load(data: bytes | Path, mime: str) -> pyvips.Image:
    """The sniffed format's own loader, rows streamed, failing on truncation and
    decoder errors (libvips's default would fill missing rows with grey)."""
    return _LOADERS[mime](_source(data), access="sequential", fail_on="error")


def _open_checked(data: bytes, mime: str, max_pixels: int, *, corrupt: str) -> pyvips.Image:
    """Open (header only) and refuse anything over ``max_pixels`` before decoding."""
    try:
        im = _load(data, mime)
    except pyvips.Error as exc:
        # libvips refuses sides beyond its own limits at the header: name the
        # declared size when it is over ours.
        size = _header_size(data, mime)
        if size is not None and size[0] * size[1] > max_pixels:
            raise ImageError(_too_many(size, max_pixels)) from exc
        raise ImageError(corrupt) from exc
    if im.width <= 0 or im.height <= 0:
        raise ImageError(corrupt)
    if im.width * im.height > max_pixels:
        raise ImageError(_too_many((im.width, im.height), max_pixels))
    return im


def _too_many(size: tuple[int, int], max_pixels: int) -> str:
    return (
        f"The image is {size[0]}×{size[1]} pixels; "
        f"the most allowed is {_megapixels(max_pixels)} megapixels."
    )


def _header_size(data: bytes, mime: str) -> tuple[int, int] | None:
    """Declared size for the formats whose header puts it at a fixed offset."""
    if mime == "image/png" and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if mime == "image/gif" and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return width, height
    return None


def _decoded(im: pyvips.Image, *, corrupt: str) -> pyvips.Image:
    """All of ``im``'s pixels in memory: truncated or corrupt data fails here."""
    try:
        return im.copy_memory()
    except pyvips.Error as exc:
        raise ImageError(corrupt) from exc


def _check_decodes(im: pyvips.Image, *, corrupt: str) -> None:
    """Decode every row and keep none: a check, not a copy."""
    try:
        im.avg()
    except pyvips.Error as exc:
        raise ImageError(corrupt) from exc


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MAX_CHUNK = 0x7FFFFFFF  # the PNG spec's limit on a chunk's length


# Bit depths each PNG colour type allows (PNG spec, 11.2.2 IHDR).
_PNG_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}


class ChunkBudgetSpent(Exception):
    """``verify_png`` met more chunks than its caller allowed (``max_chunks``)."""


def verify_png(data: bytes, *, corrupt: str, max_chunks: int | None = None) -> tuple[int, int]:
    """The PNG's width and height, once every chunk is whole, with a well-formed
    type and a matching CRC, from a valid IHDR through image data up to IEND.

    Catches truncation and corruption without inflating megapixels that fitting
    may never need (libvips checks CRCs only while it decodes), and reads the
    header itself: a result that fits as it is never reaches libvips at all.
    ISA-L's crc32 takes 0.03 ms for a 1.7 MB result where zlib's took 0.7 ms.
    The walk costs about a microsecond a chunk: past ``max_chunks`` it stops
    with ChunkBudgetSpent, so that a caller on the event loop can hand a file of
    many small chunks to a thread instead."""
    view = memoryview(data)
    size = len(view)
    if view[:8] != _PNG_SIGNATURE:
        raise ImageError(corrupt)
    pos = 8
    header: tuple[int, int] | None = None
    pixels = False
    chunks = 0
    while True:
        chunks += 1
        if max_chunks is not None and chunks > max_chunks:
            raise ChunkBudgetSpent
        if pos + 12 > size:
            raise ImageError(corrupt)  # cut off before IEND
        length, kind = struct.unpack_from(">I4s", view, pos)
        end = pos + 8 + length
        if length > _PNG_MAX_CHUNK or end + 4 > size or not kind.isalpha():
            raise ImageError(corrupt)
        (expected,) = struct.unpack_from(">I", view, end)
        if isal_zlib.crc32(view[pos + 4 : end]) != expected:
            raise ImageError(corrupt)
        if header is None:
            if kind != b"IHDR" or length != 13:
                raise ImageError(corrupt)
            header = _png_header(view[pos + 8 : end], corrupt=corrupt)
        elif kind == b"IDAT":
            pixels = True
        elif kind == b"IEND":
            if not pixels:
                raise ImageError(corrupt)
            return header
        pos = end + 4


def _png_header(ihdr: memoryview, *, corrupt: str) -> tuple[int, int]:
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", ihdr
    )
    if not (
        0 < width <= _PNG_MAX_CHUNK
        and 0 < height <= _PNG_MAX_CHUNK
        and depth in _PNG_DEPTHS.get(colour, ())
        and compression == 0
        and filtering == 0
        and interlace in (0, 1)
    ):
        raise ImageError(corrupt)
    return width, height


def verify_gif(data: bytes, *, corrupt: str) -> None:
    """The first frame decodes under Pillow too. libvips's GIF loader (libnsgif)
    accepts damaged LZW data and flipped header bytes that stricter decoders
    refuse, and a provider given the member's link reads the original GIF with a
    decoder we cannot see: forward only what both readers agree on. GIFs are
    small and capped by ``max_pixels`` before this runs."""
    try:
        with Image.open(io.BytesIO(data), formats=["GIF"]) as im:
            im.load()
    except Exception as exc:  # decoders fail with OSError, SyntaxError, ValueError, ...
        raise ImageError(corrupt) from exc


def _orientation(im: pyvips.Image) -> int:
    try:
        value = im.get("orientation") if im.get_typeof("orientation") else 1
    except pyvips.Error:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _oriented(im: pyvips.Image) -> pyvips.Image:
    if _orientation(im) == 1:
        return im
    try:
        return im.autorot()
    except pyvips.Error:
        return im  # a broken EXIF block must not cost a good image: show it unrotated


def _to_rgb(im: pyvips.Image) -> pyvips.Image:
    """8-bit sRGB, with alpha if it has one, whatever the source (CMYK, 16-bit,
    grey, palette, ...): 16-bit samples are scaled, not clipped."""
    if im.interpretation != "srgb" or im.format != "uchar" or im.bands not in (3, 4):
        im = im.colourspace("srgb")
        if im.format != "uchar":
            im = im.cast("uchar")
    return im


def _drop_opaque_alpha(im: pyvips.Image) -> pyvips.Image:
    """An alpha channel that is all 255 only stops us from using JPEG."""
    if im.bands == 4 and im.extract_band(3).min() == 255:
        return im.extract_band(0, n=3)
    return im


def _encode(im: pyvips.Image, fmt: str, params: dict[str, Any]) -> bytes:
    options = {**_PNG_OPTIONS, **params} if fmt == "PNG" else params
    data: bytes = getattr(im, _SAVERS[fmt])(keep="none", **options)
    return data


def _resize(im: pyvips.Image, size: tuple[int, int], kernel: str) -> pyvips.Image:
    """``im`` at exactly ``size``, in memory (later steps read it more than once)."""
    scaled = im.resize(size[0] / im.width, vscale=size[1] / im.height, kernel=kernel)
    return scaled.copy_memory()


def _estimate_size(im: pyvips.Image, fmt: str, params: dict[str, Any]) -> int | None:
    """What encoding all of ``im`` would take, from encoding evenly spread bands of
    rows; None when ``im`` is too small for a sample to be much cheaper.

    With fixed Huffman tables (no ``optimize_coding``) a JPEG's size is the sum of
    its MCU rows', so a stratified sample of rows estimates it closely; WebP and
    PNG compress mostly within a few rows, which a band of 16 keeps.
    """
    rows = _SAMPLE_BANDS * _SAMPLE_ROWS
    if im.width * im.height < _SAMPLE_MIN_PIXELS or im.height < 4 * rows:
        return None
    bands = []
    for band in range(_SAMPLE_BANDS):
        # Starts on MCU rows (16 for 4:2:0 JPEG), as in the full encode.
        top = band * im.height // _SAMPLE_BANDS // _SAMPLE_ROWS * _SAMPLE_ROWS
        bands.append(im.crop(0, top, im.width, _SAMPLE_ROWS))
    sample = pyvips.Image.arrayjoin(bands, across=1)
    return int(len(_encode(sample, fmt, params)) * im.height // rows)


def _shrink_to_fit(
    im: pyvips.Image,
    max_bytes: int,
    *,
    opaque: _Profile,
    alpha: _Profile,
    resample: str = _REF_RESAMPLE,
    estimate: bool = True,
) -> _Encoded:
    """Re-encode, then downscale step by step, until the smallest candidate fits."""
    return _shrink(im, max_bytes, opaque=opaque, alpha=alpha, resample=resample, estimate=estimate)[
        0
    ]


def _shrink(
    im: pyvips.Image,
    max_bytes: int,
    *,
    opaque: _Profile,
    alpha: _Profile,
    resample: str,
    downscale: bool = True,
    estimate: bool = True,
) -> tuple[_Encoded, pyvips.Image]:
    """``_shrink_to_fit``, and the pixels it encoded: ``im`` or a downscale of it.
    Without ``downscale``, _CannotFit as soon as full size does not fit; without
    ``estimate``, the first trial is a full encode (for images that usually fit).
    ``im`` must be in memory: it is read once per trial."""
    im = _drop_opaque_alpha(_to_rgb(im))
    profile = alpha if im.bands == 4 else opaque
    current = im
    for step in range(_MAX_SHRINK_STEPS):
        usable = tuple(
            (fmt, params)
            for fmt, params in profile
            if fmt != "WEBP" or max(current.width, current.height) <= WEBP_MAX_SIDE
        ) or (("PNG", {}),)
        size, fmt = (None, "")
        if step == 0 and estimate:
            size, fmt = _far_over(current, usable, max_bytes)
        if size is None:
            encoded = [(_encode(current, fmt, params), fmt) for fmt, params in usable]
            encoded.sort(key=lambda item: len(item[0]))  # stable: ties keep profile order
            data, fmt = encoded[0]
            if len(data) <= max_bytes:
                enc = _Encoded(data, _MIME_OF_FORMAT[fmt], current.width, current.height)
                return enc, current
            size = len(data)
        if fmt != "PNG":
            # Later rounds only try the codec that did best: halves the encode time.
            profile = tuple(item for item in usable if item[0] == fmt)
        if (current.width, current.height) == (1, 1) or not downscale:
            break
        # Bytes scale roughly with pixel count; aim a little under.
        scale = min(0.9, max(0.05, math.sqrt(max_bytes / size) * 0.95))
        new_size = (max(1, int(current.width * scale)), max(1, int(current.height * scale)))
        # Always resample from the full image: repeated resampling compounds blur.
        current = _resize(im, new_size, resample)
    raise _CannotFit


def _far_over(im: pyvips.Image, usable: _Profile, max_bytes: int) -> tuple[int | None, str]:
    """(estimated size, format) of the best candidate when a sample says even that
    is far over ``max_bytes``, else (None, ""): a full-size trial encode of a large
    image costs about a third of its decode, only to learn it must be downscaled."""
    estimates = []
    for fmt, params in usable:
        size = _estimate_size(im, fmt, params)
        if size is None or size < _FAR_OVER * max_bytes:
            return None, ""
        estimates.append((size, fmt))
    return min(estimates, key=lambda item: item[0])


def _fit_size(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    scale = min(box[0] / size[0], box[1] / size[1], 1.0)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _thumbnail(im: pyvips.Image, box: tuple[int, int], *, prescaled: bool = False) -> pyvips.Image:
    """``im`` fitted into ``box``, in memory: a lazy one would keep its source alive."""
    size = _fit_size((im.width, im.height), box)
    if size == (im.width, im.height):
        return im.copy_memory()
    # ``im`` already a filtered downscale: a bilinear pass over it comes out about as
    # close to a Lanczos thumbnail of the original, in less time.
    return _resize(im, size, "linear" if prescaled else "lanczos3")


def _thumbnail_of(data: bytes | Path, mime: str, box: tuple[int, int]) -> pyvips.Image:
    """A thumbnail straight from encoded bytes: JPEG and WebP decode at a reduced
    scale, PNG rows are shrunk as they stream in; the full image never sits in memory."""
    size = _fit_size(_displayed_size(_load(data, mime)), box)
    thumb = pyvips.Image.thumbnail_source(
        _source(data),
        size[0],
        height=size[1],
        size="force",
        option_string="fail_on=error",
    )
    return _to_rgb(thumb).copy_memory()


def _displayed_size(im: pyvips.Image) -> tuple[int, int]:
    if _orientation(im) in (5, 6, 7, 8):
        return im.height, im.width
    return im.width, im.height


def _is_animated(im: pyvips.Image, data: bytes, mime: str) -> bool:
    """More than one frame. libvips counts GIF and WebP frames; APNG only Pillow
    knows (from the header: no frame is decoded)."""
    if mime == "image/png":
        try:
            with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[mime]]) as pil:
                return bool(getattr(pil, "is_animated", False))
        except Exception:  # noqa: BLE001 - libvips read it: treat it as a still
            return False
    try:
        pages = im.get("n-pages") if im.get_typeof("n-pages") else 1
    except pyvips.Error:
        return False
    return isinstance(pages, int) and pages > 1
