"""What the bytes are: sniffing, supported types, and the messages that name them."""

from __future__ import annotations

import codecs
import math
import re

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
