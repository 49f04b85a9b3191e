"""Checks of untrusted images: members' references and providers' results."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import re
from pathlib import Path

import pyvips

from bot.errors import ImageError
from bot.images.codec import (
    _REF_ALPHA,
    _REF_OPAQUE,
    _CannotFit,
    _check_decodes,
    _decoded,
    _displayed_size,
    _drop_opaque_alpha,
    _encode,
    _Encoded,
    _is_animated,
    _load,
    _open_checked,
    _oriented,
    _shrink_to_fit,
    _to_rgb,
    _too_many,
    verify_gif,
    verify_png,
)
from bot.images.formats import (
    _EXT,
    CORRUPT,
    RESULT_UNREADABLE,
    SUPPORTED,
    _human_bytes,
    _with_ext,
    sniff_mime,
)
from bot.models import ReferenceImage, ResultImage

log = logging.getLogger(__name__)


def _load_reference(
    data: bytes, mime: str, filename: str, url: str | None, max_pixels: int
) -> ReferenceImage:
    im = _open_checked(data, mime, max_pixels, corrupt=CORRUPT)
    # MPO (multi-picture JPEG) also counts as animated; its first picture is a
    # plain JPEG every reader understands, so only PNG/WebP animations are
    # flattened. GIFs always are.
    if mime == "image/gif" or (mime != "image/jpeg" and _is_animated(im, data, mime)):
        # Providers take stills: keep the first frame, losslessly.
        frame = _to_rgb(_oriented(_decoded(im, corrupt=CORRUPT)))
        if mime == "image/gif":
            verify_gif(data, corrupt=CORRUPT)
        png = _encode(frame, "PNG", {})
        return ReferenceImage(
            data=png,
            mime="image/png",
            width=frame.width,
            height=frame.height,
            url=url,
            filename=_with_ext(filename, "png"),
        )
    _check_decodes(im, corrupt=CORRUPT)
    # Report the size as displayed: aspect-ratio choices follow what people see.
    width, height = _displayed_size(im)
    return ReferenceImage(
        data=data,
        mime=mime,
        width=width,
        height=height,
        url=url,
        filename=_with_ext(filename, _EXT[mime]),
    )


def _decoded_rgb(data: bytes, mime: str, max_pixels: int, *, corrupt: str) -> pyvips.Image:
    im = _decoded(_open_checked(data, mime, max_pixels, corrupt=corrupt), corrupt=corrupt)
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


def _is_plain(data: bytes, mime: str) -> bool:
    """8 bits per channel, RGB or grey, with or without alpha (header only): what
    every provider's decoder handles. CMYK, 16-bit and the rest are converted
    before an upload rather than left to a decoder we cannot see."""
    try:
        im = _load(data, mime)
    except pyvips.Error:
        return False  # _fit_reference then reports the damage properly
    return bool(im.format == "uchar" and im.interpretation in ("srgb", "b-w"))


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
    if mime == "image/png":
        return _png_result(data, source_url, max_pixels)
    im = _open_checked(data, mime, max_pixels, corrupt=RESULT_UNREADABLE)
    _check_decodes(im, corrupt=RESULT_UNREADABLE)
    width, height = im.width, im.height
    return ResultImage(data=data, mime=mime, width=width, height=height, source_url=source_url)


def _png_result(
    data: bytes, source_url: str | None, max_pixels: int, *, max_chunks: int | None = None
) -> ResultImage:
    """A PNG result checked by its chunks (``verify_png``), never decoded."""
    width, height = verify_png(data, corrupt=RESULT_UNREADABLE, max_chunks=max_chunks)
    if width * height > max_pixels:
        raise ImageError(_too_many((width, height), max_pixels))
    return ResultImage(
        data=data, mime="image/png", width=width, height=height, source_url=source_url
    )


def _decode_result_file(path: Path, source_url: str | None, max_pixels: int) -> ResultImage:
    """``_decode_result`` of a downloaded file. Without bytes (``data`` None) when
    the file is the image itself, as it then stays on disk; with them when it was
    a base64 text body, whose decoded bytes are kept instead of the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(RESULT_UNREADABLE) from exc
    image = _decode_result(data, source_url, max_pixels)
    if image.data is data:
        return dataclasses.replace(image, data=None, stored_bytes=len(data))
    return image
