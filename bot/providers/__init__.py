"""The image providers and the registry that builds the configured ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp

from bot.config import Settings
from bot.providers import modelslab, nanobanana
from bot.providers.base import ASPECT_RATIOS, Capabilities, OptionSpec, Provider, SizeRule
from bot.providers.modelslab import ModelsLabProvider
from bot.providers.nanobanana import NanoBananaProvider

if TYPE_CHECKING:
    from bot.images import ImageProcessor

__all__ = [
    "ASPECT_RATIOS",
    "Capabilities",
    "ModelsLabProvider",
    "NanoBananaProvider",
    "OptionSpec",
    "Provider",
    "SizeRule",
    "build_providers",
    "capabilities_for",
]


def build_providers(
    settings: Settings, session: aiohttp.ClientSession, images: ImageProcessor
) -> dict[str, Provider]:
    """One client per provider whose API key is set, in ``PROVIDER_NAMES`` order
    (the order ``JobRunner`` falls back through)."""
    providers: dict[str, Provider] = {}
    for name in settings.configured_providers():
        if name == modelslab.NAME:
            providers[name] = ModelsLabProvider(settings, session)
        elif name == nanobanana.NAME:
            providers[name] = NanoBananaProvider(settings, session, images)
    return providers


def capabilities_for(settings: Settings) -> dict[str, Capabilities]:
    """Every provider's capabilities under these settings, keyed by name, whether
    or not its key is set (for help text and config checks; no session needed)."""
    return {
        modelslab.NAME: modelslab.build_capabilities(settings),
        nanobanana.NAME: nanobanana.build_capabilities(settings),
    }
