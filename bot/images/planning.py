"""Discord upload planning: re-encoding results to fit, the preview grid, packing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyvips

from bot.errors import DeliveryError
from bot.images.codec import (
    _GRID,
    _GRID_TINY,
    _UPLOAD_ALPHA,
    _UPLOAD_OPAQUE,
    _UPLOAD_RESAMPLE,
    _CannotFit,
    _encode,
    _Encoded,
    _fit_size,
    _load,
    _oriented,
    _shrink,
    _shrink_to_fit,
    _thumbnail,
    _thumbnail_of,
    _to_rgb,
)
from bot.images.formats import (
    _EXT,
    _MIME_OF_FORMAT,
    SUPPORTED,
    _human_bytes,
    sniff_mime,
)
from bot.models import ResultImage

GRID_MAX_SIDE = 1536
_GRID_BACKGROUND = (32, 34, 37)


@dataclass(frozen=True, slots=True)
class UploadFile:
    """One attachment of a planned Discord message: its bytes, or (``data`` None)
    an original stored at ``path``, read only when its message is sent
    (``read_data``), so a plan does not hold every original of a job at once."""

    filename: str
    data: bytes | None
    mime: str
    width: int
    height: int
    path: str | None = None
    stored_bytes: int = 0  # the size of the file at ``path`` when ``data`` is None

    @property
    def nbytes(self) -> int:
        return len(self.data) if self.data is not None else self.stored_bytes

    def read_data(self) -> bytes:
        """The bytes to upload; blocking when they are on disk (call it in a thread)."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise DeliveryError("A result image could not be read for upload.")
        try:
            return Path(self.path).read_bytes()
        except OSError as exc:
            raise DeliveryError("A result image could not be read for upload.") from exc

    def __repr__(self) -> str:  # keep megabytes of image data out of logs
        return (
            f"UploadFile(filename={self.filename!r}, mime={self.mime!r}, "
            f"size={self.width}x{self.height}, bytes={self.nbytes})"
        )


@dataclass(frozen=True, slots=True)
class _GridLayout:
    cols: int
    rows: int
    cell_w: int
    cell_h: int
    gap: int


def _original_file(image: ResultImage, number: int) -> UploadFile:
    return UploadFile(
        filename=f"image_{number}.{_EXT.get(image.mime, 'png')}",
        data=image.data,
        mime=image.mime,
        width=image.width,
        height=image.height,
        path=image.path if image.data is None else None,
        stored_bytes=image.nbytes,
    )


def _encoded(image: ResultImage) -> bytes | Path:
    if image.data is not None:
        return image.data
    if image.path is None:
        raise DeliveryError("A result image could not be read for upload.")
    return Path(image.path)


def _result_mime(image: ResultImage) -> str:
    if image.mime in SUPPORTED:
        return image.mime
    mime = sniff_mime(image.data) if image.data is not None else None
    if mime is None or mime not in SUPPORTED:
        raise DeliveryError("A result image could not be read for upload.")
    return mime


def _goes_as_it_is(
    image: ResultImage, max_bytes: int, box: tuple[int, int] | None, thumb: pyvips.Image | None
) -> bool:
    """The original fits and no grid cell is to be made from it: nothing to decode."""
    return image.nbytes <= max_bytes and (box is None or thumb is not None)


def _prepare_upload(
    image: ResultImage,
    number: int,
    max_bytes: int,
    box: tuple[int, int] | None,
    keep_size: bool = False,
    thumb: pyvips.Image | None = None,
) -> tuple[UploadFile | None, pyvips.Image | None]:
    """(upload, grid cell): one decode per image serves both the cell and, if
    needed, the re-encode; ``thumb``, a cell made earlier, saves a decode when the
    original goes as it is. With ``keep_size``, no upload when only a downscale
    would fit ``max_bytes`` (not an exception: its traceback would keep the decoded
    pixels alive until a collection), yet the cell, for the plan made instead."""
    if _goes_as_it_is(image, max_bytes, box, thumb):
        return _original_file(image, number), thumb
    fits = image.nbytes <= max_bytes
    mime = _result_mime(image)
    encoded = _encoded(image)
    try:
        if fits:
            # Only a thumbnail is needed: shrunk while it loads, never held whole.
            assert box is not None
            return _original_file(image, number), _thumbnail_of(encoded, mime, box)
        rgb = _to_rgb(_oriented(_load(encoded, mime).copy_memory()))
    except pyvips.Error as exc:  # results were validated; this is a bug or bit rot
        raise DeliveryError("A result image could not be read for upload.") from exc
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
            return None, _thumbnail(rgb, box) if box is not None else None
        raise DeliveryError(
            f"The images could not be made smaller than {_human_bytes(max_bytes)} to upload them."
        ) from None
    thumb = None
    if box is not None:
        full = (rgb.width, rgb.height)
        cell = _fit_size(full, box)
        # A downscale still at least cell-sized is a cheaper source than the original.
        prescaled = (
            (fitted.width, fitted.height) != full
            and fitted.width >= cell[0]
            and fitted.height >= cell[1]
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


def _canvas(size: tuple[int, int], colour: tuple[int, int, int]) -> pyvips.Image:
    plain = pyvips.Image.black(size[0], size[1]).new_from_image(list(colour))
    return plain.copy(interpretation="srgb")


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


def _grid_thumbnail(image: ResultImage, box: tuple[int, int]) -> pyvips.Image:
    return _prepare_upload(image, 1, image.nbytes, box)[1] or _canvas(box, (0, 0, 0))


def _compose_grid(
    thumbs: Sequence[pyvips.Image], layout: _GridLayout, max_bytes: int | None
) -> UploadFile:
    width = layout.cols * layout.cell_w + (layout.cols - 1) * layout.gap
    height = layout.rows * layout.cell_h + (layout.rows - 1) * layout.gap
    canvas = _canvas((width, height), _GRID_BACKGROUND)
    for index, thumb in enumerate(thumbs):
        row, col = divmod(index, layout.cols)
        x = col * (layout.cell_w + layout.gap) + (layout.cell_w - thumb.width) // 2
        y = row * (layout.cell_h + layout.gap) + (layout.cell_h - thumb.height) // 2
        if thumb.bands == 4:
            thumb = thumb.flatten(background=list(_GRID_BACKGROUND)).cast("uchar")
        canvas = canvas.insert(thumb, x, y)
    # In memory: fitting encodes it more than once.
    canvas = canvas.copy_memory()
    if max_bytes is None:
        fmt, params = _GRID[0]
        enc = _Encoded(_encode(canvas, fmt, params), _MIME_OF_FORMAT[fmt], width, height)
    else:
        try:
            try:
                # The grid takes the room samples leave: it nearly always fits as
                # it is, and a size estimate would only cost time to say so.
                enc = _shrink_to_fit(
                    canvas,
                    max_bytes,
                    opaque=_GRID,
                    alpha=_GRID,
                    resample=_UPLOAD_RESAMPLE,
                    estimate=False,
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
