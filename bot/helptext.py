"""What /help says about providers, sizes and prices, from the configuration itself.

Discord-free: the help cog adds the command list (from the command tree) and the
member's credits; the CLI could print the same sections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bot.models import GenerationRequest, Mode
from bot.providers.base import Provider

COMMAND_OF_MODE = {Mode.TEXT: "/imagine", Mode.EDIT: "/edit", Mode.BLEND: "/blend"}


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    lines: tuple[str, ...]


def _credits(n: int) -> str:
    return f"{n} credit" if n == 1 else f"{n} credits"


def _prices(provider: Provider, mode: Mode, costs: Mapping[str, int]) -> str:
    """Credits per image for ``mode``, by size where the provider sizes by tier."""
    sizes: tuple[str | None, ...] = provider.capabilities.sizes_for(mode) or (None,)
    priced = []
    for size in sizes:
        tier = provider.cost_tier(GenerationRequest(mode=mode, prompt="", size=size))
        if tier in costs:
            priced.append((size, costs[tier]))
    if not priced:
        return "price not set"
    if len({price for _, price in priced}) == 1:
        return _credits(priced[0][1])
    return ", ".join(f"{size} {_credits(price)}" for size, price in priced)


def provider_section(providers: Mapping[str, Provider], costs: Mapping[str, int]) -> Section:
    lines = []
    for name, provider in providers.items():
        caps = provider.capabilities
        per_mode = "; ".join(
            f"{COMMAND_OF_MODE[mode]} {_prices(provider, mode, costs)}" for mode in caps.modes
        )
        extras = [f"up to {caps.max_samples} image{'s' if caps.max_samples != 1 else ''}"]
        if caps.size_tiers:
            extras.append("sizes " + ", ".join(caps.size_tiers))
        if caps.models:
            extras.append("models " + ", ".join(caps.models[:10]))
        lines.append(f"**{name}**: {per_mode} per image ({'; '.join(extras)})")
    if not lines:
        lines.append("No image provider is configured; ask the bot's operator.")
    return Section("Providers and prices", tuple(lines))


def shapes_section(providers: Mapping[str, Provider]) -> Section:
    ratios: list[str] = []
    for provider in providers.values():
        ratios.extend(r for r in provider.capabilities.aspect_ratios if r not in ratios)
    sizes: list[str] = []
    for provider in providers.values():
        sizes.extend(s for s in provider.capabilities.size_tiers if s not in sizes)
    lines = [f"Aspect ratios: {', '.join(ratios)}"]
    if sizes:
        lines.append(f"Sizes: {', '.join(sizes)} (where the provider offers them)")
    return Section("Shapes and sizes", tuple(lines))


def listing_section(title: str, items: Sequence[tuple[str, str]], empty: str) -> Section:
    lines = tuple(f"`{name}`: {text}" for name, text in items) or (empty,)
    return Section(title, lines)
