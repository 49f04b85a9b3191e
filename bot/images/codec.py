"""Pillow decoding, conversion, encoding and shrinking to a byte budget.

Everything here runs on the pool owned by ``ImageProcessor``, never on the event loop.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from typing import Any

from PIL import ExifTags, Image, ImageOps

from bot.errors import ImageError
from bot.images.formats import _MIME_OF_FORMAT, _PIL_FORMAT, _megapixels

WEBP_MAX_SIDE = 16383
_MAX_SHRINK_STEPS = 60
# A size estimate from sampled rows replaces the first trial encode of an image at
# least this large, when it says the image is over budget by at least _FAR_OVER:
# well beyond the estimate's error, so nothing that would have fitted is downscaled.
_SAMPLE_MIN_PIXELS = 1_000_000
_SAMPLE_BANDS = 16
_SAMPLE_ROWS = 16
_FAR_OVER = 1.5

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
