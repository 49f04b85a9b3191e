"""Input validation, re-encoding, Discord upload planning, result downloads and storage.

Every Pillow call runs on the thread pool owned by ``ImageProcessor``: decoding a
4k PNG takes tens of milliseconds, which would stall the gateway heartbeat if it
ran on the event loop. Memory stays bounded because every decode is preceded by
a pixel-count check on the header, and the pool runs at most ``workers`` decodes
at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import contextlib
import dataclasses
import functools
import io
import logging
import math
import os
import re
import shutil
import struct
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar

import aiohttp
from PIL import ExifTags, Image, ImageOps
from yarl import URL

from bot.errors import (
    DeliveryError,
    ImageError,
    ProviderBadResponse,
    ProviderNotFound,
    ProviderUnavailable,
)
from bot.models import ReferenceImage, ResultImage

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

SUPPORTED = {"image/png", "image/jpeg", "image/webp", "image/gif"}

_PIL_FORMAT = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}
_MIME_OF_FORMAT = {fmt: mime for mime, fmt in _PIL_FORMAT.items()}
_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}

_USE_INSTEAD = "Use PNG, JPEG, WebP or GIF."
EMPTY_FILE = "The file is empty."
CORRUPT = "The image data is corrupt or truncated."
RESULT_UNREADABLE = "The provider returned an image that could not be read."

# What to call the things people attach by mistake.
_NOT_IMAGES = {
    "application/pdf": "a PDF",
    "application/zip": "a ZIP archive",
    "application/gzip": "a gzip archive",
    "application/x-rar": "a RAR archive",
    "application/x-7z-compressed": "a 7-Zip archive",
    "video/mp4": "a video (MP4)",
    "video/quicktime": "a video (QuickTime)",
    "video/webm": "a video (WebM)",
    "video/x-msvideo": "a video (AVI)",
    "audio/wav": "an audio file (WAV)",
    "audio/mpeg": "an audio file (MP3)",
    "audio/ogg": "an Ogg audio or video file",
    "text/html": "a web page (HTML)",
    "application/json": "a JSON file",
    "text/plain": "a text file",
}
_OTHER_IMAGES = {
    "image/heic": "a HEIC image",
    "image/avif": "an AVIF image",
    "image/bmp": "a BMP image",
    "image/tiff": "a TIFF image",
    "image/jxl": "a JPEG XL image",
    "image/svg+xml": "an SVG drawing",
    "image/vnd.adobe.photoshop": "a Photoshop (PSD) file",
    "image/x-icon": "an icon (ICO) file",
}

# WebP cannot store a side longer than this; larger images fall back to JPEG or PNG.
WEBP_MAX_SIDE = 16383
GRID_MAX_SIDE = 1536
_GRID_BACKGROUND = (32, 34, 37)
_MAX_SHRINK_STEPS = 60
# A size estimate from sampled rows replaces the first trial encode of an image at
# least this large, when it says the image is over budget by at least _FAR_OVER:
# well beyond the estimate's error, so nothing that would have fitted is downscaled.
_SAMPLE_MIN_PIXELS = 1_000_000
_SAMPLE_BANDS = 16
_SAMPLE_ROWS = 16
_FAR_OVER = 1.5
_MAX_REDIRECTS = 5
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}

# (Pillow format, save() parameters), tried in order; the smallest that fits wins.
_Profile = tuple[tuple[str, dict[str, Any]], ...]
# References: JPEG is what every provider accepts; q=92 keeps detail the model may copy.
_REF_OPAQUE: _Profile = (("JPEG", {"quality": 92, "optimize": True}),)
_REF_ALPHA: _Profile = (("WEBP", {"quality": 90, "method": 4}),)
# Uploads: for photos WebP was never smaller than JPEG here (bench/RESULTS.md) yet
# took half the fitting time; optimize=True costs a third more for ~2 % in size.
_UPLOAD_OPAQUE: _Profile = (("JPEG", {"quality": 90}),)
_UPLOAD_ALPHA: _Profile = (("WEBP", {"quality": 90, "method": 0}),)
_GRID: _Profile = (("JPEG", {"quality": 85}),)
_GRID_TINY: _Profile = (("WEBP", {"quality": 85, "method": 0}),)
# Downscaling uploads and grids: after JPEG q85-90, bicubic and Lanczos results of a
# photo differ far less than either differs from its JPEG, and bicubic takes a
# quarter less time. References keep Lanczos: models copy the finest detail given.
_UPLOAD_RESAMPLE = Image.Resampling.BICUBIC


# --------------------------------------------------------------------------- sniffing


def sniff_mime(data: bytes) -> str | None:
    """The MIME type from the leading magic bytes, or None when unrecognised.

    File names and declared content types lie (Discord derives them from the
    extension), so only the bytes are trusted. Common non-images are recognised
    too, so that rejections can say what the file actually is.
    """
    head = bytes(data[:64])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and len(head) >= 12:
        kind = head[8:12]
        return {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}.get(kind)
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "image/heic"
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand == b"qt  ":
            return "video/quicktime"
        return "video/mp4"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "application/zip"
    if head.startswith(b"\x1f\x8b"):
        return "application/gzip"
    if head.startswith(b"Rar!\x1a\x07"):
        return "application/x-rar"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "application/x-7z-compressed"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio/mpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    # "BM" alone also starts plenty of text; the DIB header size makes it specific.
    if head.startswith(b"BM") and len(head) >= 18 and head[14] in (12, 40, 52, 56, 108, 124):
        return "image/bmp"
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL "):
        return "image/jxl"
    if head.startswith(b"8BPS"):
        return "image/vnd.adobe.photoshop"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "image/x-icon"
    return _sniff_text(bytes(data[:1024]))


def _sniff_text(head: bytes) -> str | None:
    if not head:
        return None
    try:
        # final=False: a multi-byte character cut at the 1 KiB boundary is still text.
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    if any(ord(ch) < 32 and ch not in "\t\n\r\f" for ch in text):
        return None
    start = text.lstrip("\ufeff \t\r\n").lower()
    if start.startswith(("<!doctype html", "<html")):
        return "text/html"
    if start.startswith("<svg") or (start.startswith("<?xml") and "<svg" in start):
        return "image/svg+xml"
    if start.startswith(("{", "[")):
        return "application/json"
    return "text/plain"


def _unsupported_message(mime: str | None) -> str:
    if mime in _NOT_IMAGES:
        return f"That file is {_NOT_IMAGES[mime]}, not an image. {_USE_INSTEAD}"
    if mime in _OTHER_IMAGES:
        return f"That file is {_OTHER_IMAGES[mime]}, which is not supported. {_USE_INSTEAD}"
    return f"That file is not a PNG, JPEG, WebP or GIF image. {_USE_INSTEAD}"


def _human_bytes(n: int, *, round_up: bool = False) -> str:
    """Binary units, labelled MB like Discord does; sizes over a limit round up so
    that "26 MB is over 25 MB" never reads as "25 MB is over 25 MB"."""
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if n >= scale:
            value = n / scale
            value = math.ceil(value * 10) / 10 if round_up else round(value, 1)
            return f"{value:g} {unit}"
    return f"{n} bytes"


def too_large_message(what: str, size: int, limit: int) -> str:
    """E.g. 'photo.png is 30 MB; the most allowed is 25 MB.', in the units Discord
    shows, so a file Discord calls 25 MB is never said to be over a "26 MB" limit."""
    return (
        f"{what} is {_human_bytes(size, round_up=True)}; the most allowed is {_human_bytes(limit)}."
    )


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:.3g}"


def _with_ext(filename: str, ext: str) -> str:
    """The base name with ``ext``: providers and Discord go by the extension."""
    name = re.split(r"[\\/]", filename)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    stem = name.rsplit(".", 1)[0] if "." in name else name
    stem = stem.strip(". ")[:100] or "image"
    return f"{stem}.{ext}"


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class UploadFile:
    """One attachment of a planned Discord message."""

    filename: str
    data: bytes
    mime: str
    width: int
    height: int

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:  # keep megabytes of image data out of logs
        return (
            f"UploadFile(filename={self.filename!r}, mime={self.mime!r}, "
            f"size={self.width}x{self.height}, bytes={len(self.data)})"
        )


@dataclass(frozen=True, slots=True)
class _Encoded:
    data: bytes
    mime: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class _GridLayout:
    cols: int
    rows: int
    cell_w: int
    cell_h: int
    gap: int


class _CannotFit(Exception):
    """Even a 1x1 image does not fit the byte budget."""


# --------------------------------------------------------------------------- Pillow helpers
# Everything below runs on the pool, never on the event loop.


def _open_checked(data: bytes, mime: str, max_pixels: int, *, corrupt: str) -> Image.Image:
    """Open (header only) and refuse anything over ``max_pixels`` before decoding."""
    try:
        # Restricting to the sniffed format keeps Pillow's other parsers out of reach.
        im = Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[mime]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fires inside open() (the warning only when warnings are
        # errors), at a limit at least ours: name the size as well as we can.
        raise ImageError(_too_many_pixels(data, mime, max_pixels)) from exc
    except Exception as exc:  # Pillow raises many types on hostile input
        raise ImageError(corrupt) from exc
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise ImageError(corrupt)
    if width * height > max_pixels:
        im.close()
        raise ImageError(
            f"The image is {width}×{height} pixels; "
            f"the most allowed is {_megapixels(max_pixels)} megapixels."
        )
    return im


def _header_size(data: bytes, mime: str) -> tuple[int, int] | None:
    """Declared size for the formats whose header puts it at a fixed offset."""
    if mime == "image/png" and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if mime == "image/gif" and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return width, height
    return None


def _too_many_pixels(data: bytes, mime: str, max_pixels: int) -> str:
    allowed = f"the most allowed is {_megapixels(max_pixels)} megapixels."
    size = _header_size(data, mime)
    # A GIF frame may be larger than the screen size its header declares.
    if size is not None and size[0] * size[1] > max_pixels:
        return f"The image is {size[0]}×{size[1]} pixels; {allowed}"
    return f"The image is far too large; {allowed}"


def _load_checked(im: Image.Image, *, corrupt: str) -> None:
    """Decode fully (first frame): truncated or corrupt data fails here, not later."""
    try:
        im.load()
    except Exception as exc:  # decoder errors come as OSError, ValueError, ...
        raise ImageError(corrupt) from exc


def _verify_checked(im: Image.Image, *, corrupt: str) -> None:
    try:
        im.verify()
    except Exception as exc:  # decoders fail with OSError, SyntaxError, ValueError, ...
        raise ImageError(corrupt) from exc


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost a good image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _oriented(im: Image.Image) -> Image.Image:
    if _orientation(im) == 1:
        return im
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - as above: show it unrotated rather than fail
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB or RGBA, whatever the source mode (CMYK, 16-bit, palette, LA, ...)."""
    if im.mode in ("RGB", "RGBA"):
        return im
    if im.mode.startswith("I"):
        # 16-bit samples: convert("L") would clip everything above 255 to white.
        im = im.convert("I").point(lambda v: v / 256).convert("L")
    elif im.mode == "F":
        im = im.convert("L")
    has_alpha = "A" in im.mode or "a" in im.mode or "transparency" in im.info
    return im.convert("RGBA" if has_alpha else "RGB")


def _drop_opaque_alpha(im: Image.Image) -> Image.Image:
    """An alpha channel that is all 255 only stops us from using JPEG."""
    if im.mode == "RGBA":
        low, _high = im.getchannel("A").getextrema()
        if low == 255:
            return im.convert("RGB")
    return im


def _encode(im: Image.Image, fmt: str, params: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _estimate_size(im: Image.Image, fmt: str, params: dict[str, Any]) -> int | None:
    """What encoding all of ``im`` would take, from encoding evenly spread bands of
    rows; None when ``im`` is too small for a sample to be much cheaper.

    With fixed Huffman tables (no ``optimize``) a JPEG's size is the sum of its
    MCU rows', so a stratified sample of rows estimates it closely; WebP and PNG
    compress mostly within a few rows, which a band of 16 keeps.
    """
    rows = _SAMPLE_BANDS * _SAMPLE_ROWS
    if im.width * im.height < _SAMPLE_MIN_PIXELS or im.height < 4 * rows:
        return None
    sample = Image.new(im.mode, (im.width, rows))
    for band in range(_SAMPLE_BANDS):
        # Starts on MCU rows (16 for 4:2:0 JPEG), as in the full encode.
        top = band * im.height // _SAMPLE_BANDS // _SAMPLE_ROWS * _SAMPLE_ROWS
        sample.paste(im.crop((0, top, im.width, top + _SAMPLE_ROWS)), (0, band * _SAMPLE_ROWS))
    return len(_encode(sample, fmt, params)) * im.height // rows


def _shrink_to_fit(
    im: Image.Image,
    max_bytes: int,
    *,
    opaque: _Profile,
    alpha: _Profile,
    resample: Image.Resampling = Image.Resampling.LANCZOS,
) -> _Encoded:
    """Re-encode, then downscale step by step, until the smallest candidate fits."""
    return _shrink(im, max_bytes, opaque=opaque, alpha=alpha, resample=resample)[0]


def _shrink(
    im: Image.Image,
    max_bytes: int,
    *,
    opaque: _Profile,
    alpha: _Profile,
    resample: Image.Resampling,
    downscale: bool = True,
) -> tuple[_Encoded, Image.Image]:
    """``_shrink_to_fit``, and the pixels it encoded: ``im`` or a downscale of it.
    Without ``downscale``, _CannotFit as soon as full size does not fit."""
    im = _drop_opaque_alpha(_to_rgb(im))
    profile = alpha if im.mode == "RGBA" else opaque
    current = im
    for step in range(_MAX_SHRINK_STEPS):
        usable = tuple(
            (fmt, params)
            for fmt, params in profile
            if fmt != "WEBP" or max(current.size) <= WEBP_MAX_SIDE
        ) or (("PNG", {}),)
        size, fmt = _far_over(current, usable, max_bytes) if step == 0 else (None, "")
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
        if current.size == (1, 1) or not downscale:
            break
        # Bytes scale roughly with pixel count; aim a little under.
        scale = min(0.9, max(0.05, math.sqrt(max_bytes / size) * 0.95))
        new_size = (max(1, int(current.width * scale)), max(1, int(current.height * scale)))
        # Always resample from the full image: repeated resampling compounds blur.
        current = im.resize(new_size, resample, reducing_gap=3.0)
    raise _CannotFit


def _far_over(im: Image.Image, usable: _Profile, max_bytes: int) -> tuple[int | None, str]:
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


def _thumbnail(im: Image.Image, box: tuple[int, int], *, prescaled: bool = False) -> Image.Image:
    size = _fit_size(im.size, box)
    if size == im.size:
        return im.copy()
    if prescaled:
        # ``im`` is already a filtered downscale: a bilinear pass over it comes out
        # about as close to a Lanczos thumbnail of the original as the box-averaging
        # shortcut below (closer for photos and text), in less time.
        return im.resize(size, Image.Resampling.BILINEAR)
    # reducing_gap=1.0 box-averages by an integer factor first: a third of the time
    # of a full Lanczos pass, with no visible difference at preview size.
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.0)


def _is_animated(im: Image.Image) -> bool:
    try:
        return bool(getattr(im, "is_animated", False))
    except Exception:  # noqa: BLE001 - a damaged later frame: the first one still counts
        return False


def _load_reference(
    data: bytes, mime: str, filename: str, url: str | None, max_pixels: int
) -> ReferenceImage:
    im = _open_checked(data, mime, max_pixels, corrupt=CORRUPT)
    with im:
        _load_checked(im, corrupt=CORRUPT)
        # MPO (multi-picture JPEG) also counts as animated; its first picture is a
        # plain JPEG every reader understands, so only PNG/WebP animations are
        # flattened. GIFs always are; asking them would parse the next frame.
        if mime == "image/gif" or (mime != "image/jpeg" and _is_animated(im)):
            # Providers take stills: keep the first frame, losslessly.
            frame = _to_rgb(_oriented(im))
            png = _encode(frame, "PNG", {})
            return ReferenceImage(
                data=png,
                mime="image/png",
                width=frame.width,
                height=frame.height,
                url=url,
                filename=_with_ext(filename, "png"),
            )
        width, height = im.size
        if _orientation(im) in (5, 6, 7, 8):
            # Report the size as displayed: aspect-ratio choices follow what people see.
            width, height = height, width
        return ReferenceImage(
            data=data,
            mime=mime,
            width=width,
            height=height,
            url=url,
            filename=_with_ext(filename, _EXT[mime]),
        )


def _decoded_rgb(data: bytes, mime: str, max_pixels: int, *, corrupt: str) -> Image.Image:
    im = _open_checked(data, mime, max_pixels, corrupt=corrupt)
    # Not closed on purpose: close() would discard the pixels _to_rgb may hand back
    # as-is, and a BytesIO holds no OS resource, so keeping it open saves a copy.
    _load_checked(im, corrupt=corrupt)
    return _to_rgb(_oriented(im))


def _fit_reference(data: bytes, mime: str, max_bytes: int, max_pixels: int) -> _Encoded:
    im = _decoded_rgb(data, mime, max_pixels, corrupt=CORRUPT)
    try:
        try:
            return _shrink_to_fit(im, max_bytes, opaque=_REF_OPAQUE, alpha=_REF_ALPHA)
        except _CannotFit:
            # Tiny budgets: JPEG's headers alone are a few hundred bytes, WebP's far less.
            return _shrink_to_fit(im, max_bytes, opaque=_REF_ALPHA, alpha=_REF_ALPHA)
    except _CannotFit:
        raise ImageError(
            f"The image could not be made smaller than {_human_bytes(max_bytes)}."
        ) from None


# Modes every provider's decoder handles; CMYK, 16-bit, float, YCbCr and LAB are
# converted before an upload rather than left to a decoder we cannot see.
_PLAIN_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "1"})


def _is_plain(data: bytes, mime: str) -> bool:
    """8 bits per channel in a common mode (header only, no decoding)."""
    if mime == "image/png" and data[12:16] == b"IHDR" and len(data) > 24 and data[24] == 16:
        # Pillow reports 48- and 64-bit PNGs as RGB(A): only the header tells.
        return False
    try:
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[mime]]) as im:
            return im.mode in _PLAIN_MODES
    except Exception:  # noqa: BLE001 - _fit_reference then reports the damage properly
        return False


def _to_png(data: bytes, mime: str, max_pixels: int) -> _Encoded:
    im = _drop_opaque_alpha(_decoded_rgb(data, mime, max_pixels, corrupt=CORRUPT))
    return _Encoded(_encode(im, "PNG", {}), "image/png", im.width, im.height)


def _maybe_base64(data: bytes) -> bytes | None:
    """Decode a base64 text body (optionally a data: URL or a JSON string), else None."""
    text = data.strip()
    if len(text) >= 2 and text[:1] == text[-1:] == b'"':
        text = text[1:-1].replace(b"\\/", b"/")
    if text[:5].lower() == b"data:":
        comma = text.find(b",")
        if comma < 0 or b";base64" not in text[:comma].lower():
            return None
        text = text[comma + 1 :]
    text = re.sub(rb"\s+", b"", text)
    if not text or not re.fullmatch(rb"[A-Za-z0-9+/_-]+=*", text):
        return None
    text = text.translate(bytes.maketrans(b"-_", b"+/"))
    text = text.rstrip(b"=")
    text += b"=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _decode_result(data: bytes, source_url: str | None, max_pixels: int) -> ResultImage:
    mime = sniff_mime(data)
    if mime not in SUPPORTED:
        decoded = _maybe_base64(data)
        if decoded is not None:
            data = decoded
            mime = sniff_mime(data)
    if mime is None or mime not in SUPPORTED:
        log.debug("result body is %s, not a supported image", mime or "unrecognised")
        raise ImageError(RESULT_UNREADABLE)
    im = _open_checked(data, mime, max_pixels, corrupt=RESULT_UNREADABLE)
    with im:
        width, height = im.size
        if mime == "image/png":
            # Every chunk's CRC, IEND included, catches truncation and corruption
            # without inflating megapixels that fitting may never need.
            _verify_checked(im, corrupt=RESULT_UNREADABLE)
        else:
            _load_checked(im, corrupt=RESULT_UNREADABLE)
    return ResultImage(data=data, mime=mime, width=width, height=height, source_url=source_url)


def _original_file(image: ResultImage, number: int) -> UploadFile:
    return UploadFile(
        filename=f"image_{number}.{_EXT.get(image.mime, 'png')}",
        data=image.data,
        mime=image.mime,
        width=image.width,
        height=image.height,
    )


def _open_result(image: ResultImage) -> Image.Image:
    mime = image.mime if image.mime in SUPPORTED else sniff_mime(image.data)
    if mime is None or mime not in SUPPORTED:
        raise DeliveryError("A result image could not be read for upload.")
    try:
        return Image.open(io.BytesIO(image.data), formats=[_PIL_FORMAT[mime]])
    except Exception as exc:  # results were validated; this is a bug or bit rot
        raise DeliveryError("A result image could not be read for upload.") from exc


def _prepare_upload(
    image: ResultImage,
    number: int,
    max_bytes: int,
    box: tuple[int, int] | None,
    keep_size: bool = False,
) -> tuple[UploadFile, Image.Image | None] | None:
    """One decode per image serves both its grid cell and, if needed, its re-encode.
    With ``keep_size``, None when only a downscale would fit ``max_bytes`` (not an
    exception: its traceback would keep the decoded pixels alive until a collection)."""
    fits = len(image.data) <= max_bytes
    if fits and box is None:
        return _original_file(image, number), None
    with _open_result(image) as im:
        if fits and box is not None and im.format == "JPEG":
            # Only a thumbnail is needed: let libjpeg decode at 1/2..1/8 scale.
            im.draft("RGB", (max(box), max(box)))
        try:
            im.load()
        except Exception as exc:  # see _open_result
            raise DeliveryError("A result image could not be read for upload.") from exc
        rgb = _to_rgb(_oriented(im))
        if fits:
            return _original_file(image, number), _thumbnail(rgb, box) if box is not None else None
        try:
            enc, fitted = _shrink(
                rgb,
                max_bytes,
                opaque=_UPLOAD_OPAQUE,
                alpha=_UPLOAD_ALPHA,
                resample=_UPLOAD_RESAMPLE,
                downscale=not keep_size,
            )
        except _CannotFit:
            if keep_size:
                return None
            raise DeliveryError(
                f"The images could not be made smaller than {_human_bytes(max_bytes)} "
                "to upload them."
            ) from None
        thumb = None
        if box is not None:
            cell = _fit_size(rgb.size, box)
            # A downscale still at least cell-sized is a cheaper source than the original.
            prescaled = (
                fitted.size != rgb.size and fitted.width >= cell[0] and fitted.height >= cell[1]
            )
            thumb = _thumbnail(fitted if prescaled else rgb, box, prescaled=prescaled)
    upload = UploadFile(
        filename=f"image_{number}.{_EXT[enc.mime]}",
        data=enc.data,
        mime=enc.mime,
        width=enc.width,
        height=enc.height,
    )
    return upload, thumb


def _grid_layout(images: Sequence[ResultImage], max_side: int) -> _GridLayout:
    count = len(images)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    gap = max(0, min(8, max_side // 128))
    src_w = max(max(1, image.width) for image in images)
    src_h = max(max(1, image.height) for image in images)
    room_w = max(cols, max_side - gap * (cols - 1))
    room_h = max(rows, max_side - gap * (rows - 1))
    scale = min(1.0, room_w / (cols * src_w), room_h / (rows * src_h))
    return _GridLayout(
        cols=cols,
        rows=rows,
        cell_w=max(1, int(src_w * scale)),
        cell_h=max(1, int(src_h * scale)),
        gap=gap,
    )


def _grid_thumbnail(image: ResultImage, box: tuple[int, int]) -> Image.Image:
    prepared = _prepare_upload(image, 1, len(image.data), box)
    assert prepared is not None  # the image fits its own size: nothing to give up
    return prepared[1] or Image.new("RGB", box)


def _compose_grid(
    thumbs: Sequence[Image.Image], layout: _GridLayout, max_bytes: int | None
) -> UploadFile:
    width = layout.cols * layout.cell_w + (layout.cols - 1) * layout.gap
    height = layout.rows * layout.cell_h + (layout.rows - 1) * layout.gap
    canvas = Image.new("RGB", (width, height), _GRID_BACKGROUND)
    for index, thumb in enumerate(thumbs):
        row, col = divmod(index, layout.cols)
        x = col * (layout.cell_w + layout.gap) + (layout.cell_w - thumb.width) // 2
        y = row * (layout.cell_h + layout.gap) + (layout.cell_h - thumb.height) // 2
        canvas.paste(thumb, (x, y), thumb if thumb.mode == "RGBA" else None)
    if max_bytes is None:
        fmt, params = _GRID[0]
        enc = _Encoded(_encode(canvas, fmt, params), _MIME_OF_FORMAT[fmt], width, height)
    else:
        try:
            try:
                enc = _shrink_to_fit(
                    canvas, max_bytes, opaque=_GRID, alpha=_GRID, resample=_UPLOAD_RESAMPLE
                )
            except _CannotFit:
                # JPEG headers alone are a few hundred bytes; WebP goes smaller.
                enc = _shrink_to_fit(
                    canvas,
                    max_bytes,
                    opaque=_GRID_TINY,
                    alpha=_GRID_TINY,
                    resample=_UPLOAD_RESAMPLE,
                )
        except _CannotFit:
            raise DeliveryError(
                f"The preview grid could not be made smaller than {_human_bytes(max_bytes)}."
            ) from None
    return UploadFile(
        filename=f"grid.{_EXT[enc.mime]}",
        data=enc.data,
        mime=enc.mime,
        width=enc.width,
        height=enc.height,
    )


def _pack(files: Sequence[UploadFile], max_bytes: int, max_files: int) -> list[list[UploadFile]]:
    """Greedy in order: sample numbers read in sequence across messages."""
    messages: list[list[UploadFile]] = []
    current: list[UploadFile] = []
    total = 0
    for upload in files:
        if current and (len(current) >= max_files or total + upload.nbytes > max_bytes):
            messages.append(current)
            current, total = [], 0
        current.append(upload)
        total += upload.nbytes
    if current:
        messages.append(current)
    return messages


# --------------------------------------------------------------------------- processor


class ImageProcessor:
    """Validates inputs, decodes results and plans uploads, on its own thread pool."""

    def __init__(
        self,
        *,
        max_input_bytes: int,
        max_input_pixels: int,
        workers: int = 2,
        max_result_pixels: int = 64_000_000,
    ) -> None:
        if min(max_input_bytes, max_input_pixels, workers, max_result_pixels) < 1:
            raise ValueError("image limits and workers must be at least 1")
        self.max_input_bytes = max_input_bytes
        self.max_input_pixels = max_input_pixels
        self.max_result_pixels = max_result_pixels
        # Our caps are the authority. Pillow's global guard stays as a backstop above
        # them; raise it only if an operator allows more than it does, or it would
        # refuse images our settings accept.
        current = Image.MAX_IMAGE_PIXELS
        wanted = max(max_input_pixels, max_result_pixels)
        if current is not None and current < wanted:
            Image.MAX_IMAGE_PIXELS = wanted
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="images")

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageProcessor:
        return cls(
            max_input_bytes=settings.input_max_bytes,
            max_input_pixels=settings.input_max_pixels,
            workers=settings.image_workers,
        )

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    # -- inputs ---------------------------------------------------------------

    async def load_reference(
        self, data: bytes, *, filename: str = "image", url: str | None = None
    ) -> ReferenceImage:
        """Validate an input image; raise ImageError with a message for its sender.

        PNG, JPEG and WebP keep their original bytes; GIFs and animated PNG/WebP
        become a PNG of their first frame. ``width``/``height`` are as displayed
        (after EXIF orientation) and ``filename`` gets the extension of the bytes.
        """
        if not data:
            raise ImageError(EMPTY_FILE)
        mime = sniff_mime(data)
        # The type first: "that is a PDF" helps more than "that is too big".
        if mime is None or mime not in SUPPORTED:
            raise ImageError(_unsupported_message(mime))
        if len(data) > self.max_input_bytes:
            raise ImageError(too_large_message("The file", len(data), self.max_input_bytes))
        return await self._run(
            _load_reference, bytes(data), mime, filename, url, self.max_input_pixels
        )

    async def fit_reference(self, ref: ReferenceImage, max_bytes: int) -> ReferenceImage:
        """``ref`` within ``max_bytes`` as an upload any provider decodes: unchanged if
        it fits and is 8-bit RGB, grey or palette; else re-encoded as 8-bit RGB(A)
        (JPEG q92, or WebP when it has transparency), downscaled only if that is not
        enough. So CMYK, 16-bit and GIF inputs are converted even when small.

        ``url`` is kept: it still names the same picture, for providers that fetch.
        """
        if ref.data is None:
            return ref
        mime = sniff_mime(ref.data)
        if (
            len(ref.data) <= max_bytes
            and mime in SUPPORTED
            and mime != "image/gif"
            and await self._run(_is_plain, ref.data, mime)
        ):
            return ref
        if mime is None or mime not in SUPPORTED:
            raise ImageError(_unsupported_message(mime))
        enc = await self._run(
            _fit_reference,
            ref.data,
            mime,
            max_bytes,
            max(self.max_input_pixels, self.max_result_pixels),
        )
        return dataclasses.replace(
            ref,
            data=enc.data,
            mime=enc.mime,
            width=enc.width,
            height=enc.height,
            filename=_with_ext(ref.filename, _EXT[enc.mime]),
        )

    async def to_png(self, ref: ReferenceImage) -> ReferenceImage:
        """``ref`` as an 8-bit RGB/RGBA PNG with orientation applied, for providers
        that cannot take CMYK, 16-bit or WebP input. Unchanged if it has no data."""
        if ref.data is None:
            return ref
        mime = sniff_mime(ref.data)
        if mime is None or mime not in SUPPORTED:
            raise ImageError(_unsupported_message(mime))
        enc = await self._run(
            _to_png, ref.data, mime, max(self.max_input_pixels, self.max_result_pixels)
        )
        return dataclasses.replace(
            ref,
            data=enc.data,
            mime=enc.mime,
            width=enc.width,
            height=enc.height,
            filename=_with_ext(ref.filename, "png"),
        )

    # -- results --------------------------------------------------------------

    async def decode_result(self, data: bytes, *, source_url: str | None = None) -> ResultImage:
        """Validate a downloaded result; base64 text bodies (plain, JSON string or
        ``data:`` URL) are decoded first. Raises ImageError(RESULT_UNREADABLE)."""
        if not data:
            raise ImageError(RESULT_UNREADABLE)
        return await self._run(_decode_result, bytes(data), source_url, self.max_result_pixels)

    async def make_grid(
        self, images: Sequence[ResultImage], *, max_side: int = GRID_MAX_SIDE
    ) -> UploadFile:
        """A JPEG contact sheet (2×2 for four images), long side at most ``max_side``."""
        if not images:
            raise ValueError("make_grid needs at least one image")
        layout = _grid_layout(images, max(1, max_side))
        box = (layout.cell_w, layout.cell_h)
        thumbs = await asyncio.gather(*(self._run(_grid_thumbnail, im, box) for im in images))
        return await self._run(_compose_grid, thumbs, layout, None)

    async def fit_for_upload(
        self,
        images: Sequence[ResultImage],
        *,
        max_bytes: int,
        max_files: int = 10,
        grid: bool = True,
        grid_max_side: int = GRID_MAX_SIDE,
        max_messages: int | None = None,
    ) -> list[list[UploadFile]]:
        """Plan Discord messages: each within ``max_bytes`` (summed) and ``max_files``.

        Originals go untouched when they fit a message on their own; only larger
        ones are re-encoded (the smaller of WebP/JPEG q90 that fits, WebP when they
        have transparency), and downscaled only if that is not enough. With more
        than one image and ``grid``, a preview grid leads the first message. Files
        are numbered by sample (``image_1.png`` ...) and keep sample order.

        ``max_messages`` trades fidelity for fewer messages: every file then gets an
        equal share of a message and anything larger is re-encoded to fit it, so
        the plan needs at most that many messages (unless ``max_files`` makes it
        impossible: the file count limit wins).
        Raises DeliveryError only if a budget is too small for even a tiny image.
        """
        plan = await self._plan(
            images,
            max_bytes=max_bytes,
            max_files=max_files,
            grid=grid,
            grid_max_side=grid_max_side,
            max_messages=max_messages,
            keep_size=False,
        )
        assert plan is not None  # only keep_size gives up
        return plan

    async def fit_in_one_message(
        self,
        images: Sequence[ResultImage],
        *,
        max_bytes: int,
        max_files: int = 10,
        grid: bool = True,
    ) -> list[list[UploadFile]] | None:
        """``fit_for_upload(max_messages=1)`` if every image keeps its full size in
        it (re-encoding allowed), else None, learnt without downscaling anything:
        the caller then plans several messages at full size instead, and the work
        of shrinking images for a plan nobody uses is never done."""
        return await self._plan(
            images,
            max_bytes=max_bytes,
            max_files=max_files,
            grid=grid,
            grid_max_side=GRID_MAX_SIDE,
            max_messages=1,
            keep_size=True,
        )

    async def _plan(
        self,
        images: Sequence[ResultImage],
        *,
        max_bytes: int,
        max_files: int,
        grid: bool,
        grid_max_side: int,
        max_messages: int | None,
        keep_size: bool,
    ) -> list[list[UploadFile]] | None:
        if max_bytes < 1 or max_files < 1:
            raise ValueError("max_bytes and max_files must be at least 1")
        if not images:
            return []
        want_grid = grid and len(images) > 1
        layout = _grid_layout(images, max(1, grid_max_side)) if want_grid else None
        box = (layout.cell_w, layout.cell_h) if layout is not None else None
        # A modest preview leaves room for originals in the same message.
        grid_budget = max(max_bytes // 4, min(max_bytes, 256 * 1024))
        file_budget = max_bytes
        with_grid = 0  # samples sure to share the first message with the grid
        if max_messages is not None:
            if max_messages < 1:
                raise ValueError("max_messages must be at least 1")
            count = len(images) + (1 if want_grid else 0)
            per_message = min(max_files, math.ceil(count / max_messages))
            if per_message > 1:
                # Any per_message files of at most file_budget fit one message (the
                # grid's within its own share), so greedy packing closes no message
                # with fewer: at most ceil(count / per_message) messages result.
                grid_budget = max_bytes // (2 * per_message) if want_grid else 0
                file_budget = (max_bytes - grid_budget) // per_message
                with_grid = per_message - 1
        outcomes = await asyncio.gather(
            *(
                self._run(_prepare_upload, image, number, file_budget, box, keep_size)
                for number, image in enumerate(images, start=1)
            )
        )
        prepared = [outcome for outcome in outcomes if outcome is not None]
        if len(prepared) < len(outcomes):
            return None  # keep_size, and an image would have to shrink
        files = [upload for upload, _thumb in prepared]
        if layout is not None:
            if with_grid:
                # Room the samples left unused in the first message is the grid's
                # too: it then rarely needs downscaling (a costly resize of the whole
                # canvas) and still shares that message with as many samples.
                grid_budget = max(grid_budget, max_bytes - sum(f.nbytes for f in files[:with_grid]))
            thumbs = [thumb for _upload, thumb in prepared if thumb is not None]
            files.insert(0, await self._run(_compose_grid, thumbs, layout, grid_budget))
        return _pack(files, max_bytes, max_files)

    # -- lifetime -------------------------------------------------------------

    def close(self, *, wait: bool = True) -> None:
        """Stop the pool; queued work is cancelled, running work finishes."""
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- download


_NOT_VALID = "The provider returned a result link that is not valid."
_FOREIGN_HOST = "The provider returned a link to a host the bot does not download from."


def _bad_link(provider: str, message: str) -> ProviderBadResponse:
    return ProviderBadResponse(message, provider=provider, retryable=False)


def _normal_host(host: str) -> str | None:
    """The host as URLs carry it on the wire (lower case, IDNA), without brackets
    or a trailing dot, so that equal hosts compare equal; None if it is no host."""
    text = host.strip().strip("[]").rstrip(".")
    if not text:
        return None
    try:
        raw = URL.build(scheme="https", host=text).raw_host
    except (TypeError, ValueError):
        return None
    return raw.rstrip(".").lower() if raw else None


_Patterns = tuple[tuple[str, bool], ...] | None


def _host_patterns(allowed_hosts: Sequence[str]) -> _Patterns:
    """(host, subdomains_only) pairs, or None when any https host will do."""
    if isinstance(allowed_hosts, str):
        # A lone string is a Sequence[str] too: matching its letters would allow nothing.
        allowed_hosts = (allowed_hosts,)
    if not allowed_hosts:
        return None
    patterns = []
    for pattern in allowed_hosts:
        text = pattern.strip()
        wildcard = text.startswith("*.")
        host = _normal_host(text[2:] if wildcard else text)
        # Unusable patterns match nothing; they never widen the list to "any host".
        if host is not None and "*" not in host:
            patterns.append((host, wildcard))
    return tuple(patterns)


def _host_matches(host: str, patterns: tuple[tuple[str, bool], ...]) -> bool:
    for allowed, subdomains_only in patterns:
        if host.endswith("." + allowed) if subdomains_only else host == allowed:
            return True
    return False


def host_allowed(
    url: str | URL, allowed_hosts: Sequence[str] = (), allow_loopback: bool = False
) -> bool:
    """Whether ``download`` may fetch ``url``.

    https to a host in ``allowed_hosts`` ("cdn.example.com" exactly, "*.example.com"
    any subdomain, not example.com itself); an empty sequence allows any https
    host. With ``allow_loopback`` also http or https to 127.0.0.1, ::1 or
    localhost, whatever the list says, for tests against local emulators.
    """
    return _refusal(url, _host_patterns(allowed_hosts), allow_loopback) is None


def _refusal(url: str | URL, patterns: _Patterns, allow_loopback: bool) -> str | None:
    """Why ``url`` may not be fetched (a message for the member), or None."""
    try:
        target = url if isinstance(url, URL) else URL(url)
        scheme = (target.scheme or "").lower()
        host = _normal_host(target.raw_host or "")
    except (TypeError, ValueError):
        return _NOT_VALID
    if host is None:
        return "The provider returned a result link that is not a web address."
    if allow_loopback and host in _LOOPBACK_HOSTS and scheme in ("http", "https"):
        return None
    if scheme != "https":
        return "The provider returned a result link that is not allowed."
    if patterns is not None and not _host_matches(host, patterns):
        return _FOREIGN_HOST
    return None


def _check_url(url: URL, *, allow_loopback: bool, provider: str, patterns: _Patterns) -> None:
    refusal = _refusal(url, patterns, allow_loopback)
    if refusal is not None:
        if refusal == _FOREIGN_HOST:
            # The member sees no address (it is the provider's text); operators need it.
            log.warning("%s: refused a result link to host %r", provider, url.host)
        raise _bad_link(provider, refusal)


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


async def download(
    session: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int,
    timeout: float,  # noqa: ASYNC109 - a per-download budget callers set from settings
    allow_loopback: bool = False,
    provider: str = "download",
    allowed_hosts: Sequence[str] = (),
) -> bytes:
    """GET ``url`` into memory, at most ``max_bytes``, within ``timeout`` seconds in all.

    Only what ``host_allowed`` accepts: https to ``allowed_hosts`` (any https host
    when empty), plus loopback when ``allow_loopback``. Redirects are followed by
    hand so that every hop passes the same check before it is requested.
    """
    try:
        target = URL(url)
    except (TypeError, ValueError):
        raise _bad_link(provider, _NOT_VALID) from None
    patterns = _host_patterns(allowed_hosts)
    too_big = f"The provider's result is larger than {_human_bytes(max_bytes)}."
    try:
        async with asyncio.timeout(timeout):
            for _hop in range(_MAX_REDIRECTS + 1):
                _check_url(
                    target, allow_loopback=allow_loopback, provider=provider, patterns=patterns
                )
                async with session.get(
                    target,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as response:
                    status = response.status
                    location = response.headers.get("Location")
                    if status in _REDIRECT_STATUSES and location:
                        target = target.join(URL(location))
                        continue
                    if status in (404, 410):
                        raise ProviderNotFound(
                            "The provider's result link has expired or does not exist.",
                            provider=provider,
                            status=status,
                            retryable=False,
                        )
                    if not 200 <= status < 300:
                        raise ProviderUnavailable(
                            f"The provider's result could not be downloaded (HTTP {status}).",
                            provider=provider,
                            status=status,
                            retry_after=_retry_after(response),
                        )
                    if response.content_length is not None and response.content_length > max_bytes:
                        raise _bad_link(provider, too_big)
                    # Whatever the socket delivered, kept as it came and joined
                    # once: one copy of the image, not one per 64 KiB slice.
                    chunks: list[bytes] = []
                    received = 0
                    async for chunk in response.content.iter_any():
                        received += len(chunk)
                        if received > max_bytes:
                            raise _bad_link(provider, too_big)
                        chunks.append(chunk)
                    return b"".join(chunks)
            raise _bad_link(provider, "The provider's result link redirects too many times.")
    except TimeoutError:
        raise ProviderUnavailable(
            "The provider's result took too long to download.", provider=provider
        ) from None
    except aiohttp.InvalidURL:
        raise _bad_link(provider, _NOT_VALID) from None
    except (aiohttp.ClientError, ValueError) as exc:
        raise ProviderUnavailable(
            "The provider's result could not be downloaded: the connection failed.",
            provider=provider,
        ) from exc


# --------------------------------------------------------------------------- storage

# A job id is one safe path component: no separators, no leading dot (no "..").
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _check_key(job_id: str, index: int) -> None:
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"unsafe job id {job_id!r}")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"bad image index {index!r}")


class ImageStore:
    """Originals under ``root/<job_id>/<index>.<ext>``, readable only by the bot."""

    def __init__(self, root: Path, *, retention_days: int) -> None:
        if retention_days < 0:
            raise ValueError("retention_days must be 0 or more")
        self.root = Path(root)
        self.retention_days = retention_days

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageStore:
        return cls(settings.images_dir, retention_days=settings.image_retention_days)

    async def save(self, job_id: str, index: int, image: ResultImage) -> ResultImage:
        """Write the original and return it with ``path`` set; with retention 0 keep
        nothing. Raises DeliveryError when the disk refuses."""
        _check_key(job_id, index)
        if self.retention_days == 0:
            return image
        try:
            path = await asyncio.to_thread(self._write, job_id, index, image)
        except OSError as exc:
            raise DeliveryError("The result could not be saved on the bot's disk.") from exc
        return dataclasses.replace(image, path=str(path))

    def path_for(self, job_id: str, index: int, image: ResultImage) -> Path | None:
        """Where ``save`` keeps this original; None when nothing is kept."""
        _check_key(job_id, index)
        if self.retention_days == 0:
            return None
        return self._path(job_id, index, image.mime)

    def _path(self, job_id: str, index: int, mime: str) -> Path:
        return self.root / job_id / f"{index}.{_EXT.get(mime, 'bin')}"

    def _write(self, job_id: str, index: int, image: ResultImage) -> Path:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        final = self._path(job_id, index, image.mime)
        job_dir = final.parent
        job_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(job_dir, 0o700)  # mkdir's mode is filtered by the umask
        ext = final.suffix[1:]
        # Write then rename: a crash never leaves a half file under the final name.
        tmp = job_dir / f".{index}.{uuid.uuid4().hex}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(tmp, flags, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(image.data)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        for other in set(_EXT.values()) - {ext}:
            # A re-save in another format must not leave the old one for load() to find.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(job_dir / f"{index}.{other}")
        return final

    async def load(self, job_id: str, index: int) -> ResultImage | None:
        """The stored original, or None if it was never kept or has been swept."""
        _check_key(job_id, index)
        return await asyncio.to_thread(self._read, job_id, index)

    def _read(self, job_id: str, index: int) -> ResultImage | None:
        for mime, ext in _EXT.items():
            path = self.root / job_id / f"{index}.{ext}"
            try:
                data = path.read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                # Header only: the bytes were validated before they were saved.
                with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[mime]]) as im:
                    width, height = im.size
            except Exception:  # noqa: BLE001 - a damaged file reads as missing
                log.warning("stored image %s is unreadable", path)
                return None
            return ResultImage(data=data, mime=mime, width=width, height=height, path=str(path))
        return None

    async def sweep(self, now: datetime | None = None) -> int:
        """Delete job directories last written more than ``retention_days`` ago."""
        now = now or datetime.now(UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        cutoff = (now - timedelta(days=self.retention_days)).timestamp()
        return await asyncio.to_thread(self._sweep, cutoff)

    def _sweep(self, cutoff: float) -> int:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return 0
        removed = 0
        for entry in entries:
            # Only what save() could have made: a misconfigured root loses nothing else.
            if not _JOB_ID.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                newest = max(
                    [entry.stat(follow_symlinks=False).st_mtime]
                    + [f.stat(follow_symlinks=False).st_mtime for f in os.scandir(entry.path)]
                )
                if newest < cutoff:
                    shutil.rmtree(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue  # swept concurrently
        return removed
