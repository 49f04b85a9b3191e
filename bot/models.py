"""Plain data that crosses module boundaries. No discord.py, no aiohttp."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any


class Mode(enum.StrEnum):
    TEXT = "text"  # text to image
    EDIT = "edit"  # one reference image
    BLEND = "blend"  # two or more reference images


@dataclass(frozen=True, slots=True)
class ReferenceImage:
    """An input image. ``data`` is the sniffed, validated bytes; ``url`` is where a
    provider can fetch it (Discord CDN, an https URL given to the CLI), if anywhere."""

    data: bytes | None
    mime: str | None = None
    width: int | None = None
    height: int | None = None
    url: str | None = None
    filename: str = "image"

    def __repr__(self) -> str:  # keep multi-megabyte bytes out of logs
        size = len(self.data) if self.data is not None else None
        return (
            f"ReferenceImage(url={self.url!r}, mime={self.mime!r}, "
            f"size={self.width}x{self.height}, bytes={size})"
        )


@dataclass(frozen=True, slots=True)
class Requester:
    """Who pays: the guild (or ``local`` for the CLI), the member and their roles."""

    guild_id: str = "local"
    user_id: str = "local"
    roles: tuple[str, ...] = ()
    channel_id: str | None = None


EMPTY_OPTIONS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What a member asked for, independent of where they asked."""

    mode: Mode
    prompt: str
    negative_prompt: str | None = None
    references: tuple[ReferenceImage, ...] = ()
    provider: str | None = None  # None: the configured default for the mode
    model: str | None = None
    samples: int = 1
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    aspect_ratio: str | None = None
    size: str | None = None  # Nano Banana Pro size tier: 1k, 2k, 4k
    # None: provider default; the Discord edge forces True outside age-restricted channels.
    safety_checker: bool | None = None
    # Provider-specific extras by their API names (scheduler, guidance_scale, ...).
    options: Mapping[str, Any] = field(default_factory=lambda: EMPTY_OPTIONS)
    # The style already applied to prompt and defaults (bot.compose), for the record.
    style: str | None = None
    requester: Requester = field(default_factory=Requester)
    # Interaction id on Discord, a fresh uuid on the CLI: the same key never pays twice.
    idempotency_key: str = ""
    # Results for the requester alone; journaled with the job so that a job resumed
    # without its interaction token still never posts them publicly.
    private: bool = False


class Stage(enum.StrEnum):
    QUEUED = "queued"  # waiting for a provider slot in this bot
    SUBMITTING = "submitting"
    PROCESSING = "processing"  # the provider has the job (maybe queued on its side)
    DOWNLOADING = "downloading"
    DELIVERING = "delivering"


@dataclass(frozen=True, slots=True)
class Progress:
    stage: Stage
    queue_position: int | None = None  # 1 = next, for Stage.QUEUED
    eta_seconds: float | None = None  # provider's estimate, for Stage.PROCESSING
    provider_job_id: str | None = None
    provider_fetch_url: str | None = None  # where a restarted bot can poll again
    message: str | None = None


ProgressCallback = Callable[[Progress], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ResumeHandle:
    """What a provider needs to poll a queued job again after a restart."""

    job_id: str | None
    fetch_url: str | None


@dataclass(frozen=True, slots=True)
class OutputRef:
    """One result image as the provider gave it: a URL to download or inline bytes."""

    url: str | None = None
    data: bytes | None = None

    def __repr__(self) -> str:
        size = len(self.data) if self.data is not None else None
        return f"OutputRef(url={self.url!r}, bytes={size})"


@dataclass(frozen=True, slots=True)
class ProviderOutput:
    provider: str
    outputs: tuple[OutputRef, ...]
    model: str | None = None
    seed: int | None = None
    provider_job_id: str | None = None
    generation_time: float | None = None
    nsfw_detected: bool = False


@dataclass(frozen=True, slots=True)
class ResultImage:
    """A downloaded, validated result image kept under DATA_DIR.

    ``data`` is None once the original is on disk at ``path``: image work and
    uploads read it from there, so a job's originals (7 MB a 2048² photo) are
    not all held in memory from download to upload."""

    data: bytes | None
    mime: str
    width: int
    height: int
    path: str | None = None  # where the original is kept, if stored
    source_url: str | None = None
    stored_bytes: int = 0  # the file's size at ``path`` when ``data`` is None

    @property
    def nbytes(self) -> int:
        return len(self.data) if self.data is not None else self.stored_bytes

    def on_disk(self, path: str) -> ResultImage:
        """This image kept at ``path`` only, without its bytes in memory."""
        return replace(self, data=None, path=path, stored_bytes=self.nbytes)

    def __repr__(self) -> str:
        return (
            f"ResultImage(mime={self.mime!r}, size={self.width}x{self.height}, "
            f"bytes={self.nbytes}, path={self.path!r})"
        )


@dataclass(frozen=True, slots=True)
class StoredImage:
    """Where result image N of a job can be had again."""

    index: int
    mime: str
    width: int
    height: int
    url: str | None = None  # the Discord attachment (or provider) URL
    path: str | None = None  # the original under DATA_DIR, while retained
