"""The thread pool every image operation runs on, and its async interface.

Every libvips (and Pillow) call runs on the thread pool owned by ``ImageProcessor``:
decoding a 4k PNG takes tens of milliseconds, which would stall the gateway
heartbeat if it ran on the event loop. Memory stays bounded because every decode
is preceded by a pixel-count check on the header, and the pool runs at most
``workers`` decodes at once (libvips itself uses one thread per operation).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, ParamSpec, Self, TypeVar

import pyvips
from PIL import Image

from bot.errors import ImageError
from bot.images.codec import ChunkBudgetSpent
from bot.images.formats import (
    _EXT,
    EMPTY_FILE,
    RESULT_UNREADABLE,
    SUPPORTED,
    _unsupported_message,
    _with_ext,
    sniff_mime,
    too_large_message,
)
from bot.images.planning import (
    GRID_MAX_SIDE,
    UploadFile,
    _compose_grid,
    _goes_as_it_is,
    _grid_layout,
    _grid_thumbnail,
    _pack,
    _prepare_upload,
)
from bot.images.validation import (
    _decode_result,
    _decode_result_file,
    _fit_reference,
    _is_plain,
    _load_reference,
    _png_result,
    _to_png,
)
from bot.models import ReferenceImage, ResultImage

if TYPE_CHECKING:
    from bot.config import Settings

P = ParamSpec("P")
T = TypeVar("T")

# PNG results checked on the event loop (``decode_result``): up to this size and
# this many chunks, about half a millisecond at worst (libpng writes 8 KiB
# chunks: 256 for 2 MiB). Larger results go to disk and are checked from there.
INLINE_PNG_BYTES = 2 << 20
INLINE_PNG_CHUNKS = 512


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
        # Our caps are the authority. Pillow (header checks only, see codec) keeps
        # its global guard as a backstop above them; raise it only if an operator
        # allows more than it does, or it would refuse images our settings accept.
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
        # Unlike asyncio.to_thread, run_in_executor does not carry the context
        # over: without it the worker's log lines would lose the job id.
        context = contextvars.copy_context()
        return await loop.run_in_executor(
            self._pool, functools.partial(context.run, fn, *args, **kwargs)
        )

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
        data = bytes(data)
        if len(data) <= INLINE_PNG_BYTES and sniff_mime(data) == "image/png":
            # Checked here rather than in the pool: the chunks' CRCs of a PNG this
            # size take a few hundredths of a millisecond, the hand-off to a
            # thread and back several tenths on a member's wait. A file of many
            # small chunks, whose walk would hold the loop, goes to the pool.
            with contextlib.suppress(ChunkBudgetSpent):
                return _png_result(
                    data, source_url, self.max_result_pixels, max_chunks=INLINE_PNG_CHUNKS
                )
        return await self._run(_decode_result, data, source_url, self.max_result_pixels)

    async def decode_result_file(self, path: Path, *, source_url: str | None = None) -> ResultImage:
        """``decode_result`` of a downloaded file, read in the pool's thread: the
        image without its bytes (``data`` None, the caller keeps the file), or
        with them when the file was a base64 text body."""
        return await self._run(_decode_result_file, path, source_url, self.max_result_pixels)

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

    async def plan_messages(
        self,
        images: Sequence[ResultImage],
        *,
        max_bytes: int,
        max_files: int = 10,
        grid: bool = True,
    ) -> list[list[UploadFile]]:
        """One message with the grid and every image when re-encoding is enough
        (``fit_in_one_message``); more messages rather than smaller pictures when
        it is not (``fit_for_upload``). Grid cells made for the first try serve the
        second, so no image is decoded twice for them."""
        cells: dict[int, pyvips.Image] = {}
        single = await self._plan(
            images,
            max_bytes=max_bytes,
            max_files=max_files,
            grid=grid,
            grid_max_side=GRID_MAX_SIDE,
            max_messages=1,
            keep_size=True,
            cells=cells,
        )
        if single is not None:
            return single
        plan = await self._plan(
            images,
            max_bytes=max_bytes,
            max_files=max_files,
            grid=grid,
            grid_max_side=GRID_MAX_SIDE,
            max_messages=None,
            keep_size=False,
            cells=cells,
        )
        assert plan is not None  # only keep_size gives up
        return plan

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
        cells: dict[int, pyvips.Image] | None = None,
    ) -> list[list[UploadFile]] | None:
        """``cells``: grid cells by image number, used and filled in."""
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
        known = cells if cells is not None else {}
        prepared = await asyncio.gather(
            *(
                self._prepare(image, number, file_budget, box, keep_size, known.get(number))
                for number, image in enumerate(images, start=1)
            )
        )
        if cells is not None:
            cells.update(
                (number, thumb) for number, (_upload, thumb) in enumerate(prepared, 1) if thumb
            )
        files = [upload for upload, _thumb in prepared if upload is not None]
        if len(files) < len(prepared):
            return None  # keep_size, and an image would have to shrink
        if layout is not None:
            if with_grid:
                # Room the samples left unused in the first message is the grid's
                # too: it then rarely needs downscaling (a costly resize of the whole
                # canvas) and still shares that message with as many samples.
                grid_budget = max(grid_budget, max_bytes - sum(f.nbytes for f in files[:with_grid]))
            thumbs = [thumb for _upload, thumb in prepared if thumb is not None]
            files.insert(0, await self._run(_compose_grid, thumbs, layout, grid_budget))
        return _pack(files, max_bytes, max_files)

    async def _prepare(
        self,
        image: ResultImage,
        number: int,
        max_bytes: int,
        box: tuple[int, int] | None,
        keep_size: bool,
        thumb: pyvips.Image | None,
    ) -> tuple[UploadFile | None, pyvips.Image | None]:
        if _goes_as_it_is(image, max_bytes, box, thumb):
            # No pool thread is woken for it (the common single image).
            return _prepare_upload(image, number, max_bytes, box, keep_size, thumb)
        return await self._run(_prepare_upload, image, number, max_bytes, box, keep_size, thumb)

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
