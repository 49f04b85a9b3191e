"""Images: validation of untrusted input, result downloads, upload planning, storage.

One module per concern; this package re-exports the names the rest of the bot uses.

- ``formats``: what the bytes are (sniffing) and the messages that name them;
- ``codec``: decoding, conversion, encoding and shrinking to a byte budget;
- ``validation``: members' references and providers' results, checked;
- ``planning``: Discord messages planned from results (re-encodes, preview grid);
- ``processor``: ``ImageProcessor``, the thread pool all of the above runs on;
- ``downloads``: result downloads, with host checks on every redirect;
- ``storage``: originals on disk, and their retention.
"""

from bot.images.downloads import download, download_into, host_allowed
from bot.images.formats import (
    CORRUPT,
    EMPTY_FILE,
    RESULT_UNREADABLE,
    SUPPORTED,
    sniff_mime,
    too_large_message,
)
from bot.images.planning import GRID_MAX_SIDE, UploadFile
from bot.images.processor import ImageProcessor
from bot.images.storage import DiskRefused, ImageStore

__all__ = [
    "CORRUPT",
    "EMPTY_FILE",
    "GRID_MAX_SIDE",
    "RESULT_UNREADABLE",
    "SUPPORTED",
    "DiskRefused",
    "ImageProcessor",
    "ImageStore",
    "UploadFile",
    "download",
    "download_into",
    "host_allowed",
    "sniff_mime",
    "too_large_message",
]
