"""What every provider declares and implements.

Capabilities are the single source for validation messages, command choices and
help text: nothing else hard-codes a provider's ranges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from bot.models import GenerationRequest, Mode, ProgressCallback, ProviderOutput, ResumeHandle

ASPECT_RATIOS: tuple[str, ...] = ("1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "21:9")


@dataclass(frozen=True, slots=True)
class SizeRule:
    """Pixel dimensions a mode accepts (both width and height)."""

    minimum: int
    maximum: int
    multiple_of: int = 1
    default: int | None = None


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """A provider-specific option, by its API name, with its allowed values."""

    name: str
    kind: Literal["int", "float", "choice", "flag", "text"]
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    modes: frozenset[Mode] = frozenset(Mode)

    def allowed(self) -> str:
        """Human wording of the allowed values, for rejection messages."""
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "flag":
            return "yes or no"
        if self.minimum is not None and self.maximum is not None:
            return f"{self.minimum:g} to {self.maximum:g}"
        return "text"


@dataclass(frozen=True, slots=True)
class Capabilities:
    provider: str
    modes: tuple[Mode, ...]
    # (min, max) number of reference images per mode.
    reference_limits: Mapping[Mode, tuple[int, int]]
    max_samples: int
    seed_range: tuple[int, int]
    # Modes sized by width/height; empty where the provider sizes by tier.
    pixel_sizes: Mapping[Mode, SizeRule] = field(default_factory=dict)
    size_tiers: tuple[str, ...] = ()
    aspect_ratios: tuple[str, ...] = ASPECT_RATIOS
    models: tuple[str, ...] = ()
    options: Mapping[str, OptionSpec] = field(default_factory=dict)
    # Largest reference image the provider takes as an upload, if it takes uploads.
    max_reference_bytes: int | None = None
    # Size tiers by mode where they differ from ``size_tiers``.
    mode_size_tiers: Mapping[Mode, tuple[str, ...]] = field(default_factory=dict)
    # The API makes one image per call: samples above 1 are made by parallel calls,
    # each taking its own place among the provider's concurrent calls.
    one_image_per_call: bool = False
    takes_negative_prompt: bool = True

    def supports(self, mode: Mode) -> bool:
        return mode in self.modes

    def sizes_for(self, mode: Mode) -> tuple[str, ...]:
        """The size tiers (1k, 2k, 4k) this provider offers for ``mode``."""
        return self.mode_size_tiers.get(mode, self.size_tiers)


class Provider(Protocol):
    """A hosted image API. Implementations share the bot's aiohttp session."""

    name: str
    capabilities: Capabilities

    def validate(self, request: GenerationRequest) -> GenerationRequest:
        """Check every option against the capabilities before any network call.

        Returns the request with provider defaults filled in (width/height from an
        aspect ratio, default model, ...). Raises ``ValidationError`` naming the
        option and its allowed values.
        """
        ...

    def cost_tier(self, request: GenerationRequest) -> str:
        """The cost-table key that prices one image of this (validated) request."""
        ...

    async def generate(
        self, request: GenerationRequest, on_progress: ProgressCallback
    ) -> ProviderOutput:
        """Run one validated request to completion (submit, poll), or raise ProviderError."""
        ...

    async def resume(
        self, request: GenerationRequest, handle: ResumeHandle, on_progress: ProgressCallback
    ) -> ProviderOutput:
        """Poll a job a previous process submitted; raise JobNotResumable if the
        provider has no such thing (synchronous APIs)."""
        ...
