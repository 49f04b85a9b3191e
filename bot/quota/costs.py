"""Prices in credits per image, by cost tier (the ``COSTS`` setting)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from bot.config import DEFAULT_COSTS, Settings


class UnknownCostTier(ValueError):
    """A provider asked for a tier the cost table has no price for."""

    def __init__(self, tier: str, known: tuple[str, ...]) -> None:
        super().__init__(f"no price for cost tier {tier!r}; known tiers: {', '.join(known)}")
        self.tier = tier


class CostTable:
    def __init__(self, costs: Mapping[str, int] | None = None) -> None:
        table = dict(DEFAULT_COSTS if costs is None else costs)
        for tier, credits in table.items():
            if credits < 0:
                raise ValueError(f"price of {tier!r} must be 0 or more, not {credits}")
        self._costs: Mapping[str, int] = MappingProxyType(table)

    @classmethod
    def from_settings(cls, settings: Settings) -> CostTable:
        return cls(settings.costs)

    @property
    def tiers(self) -> Mapping[str, int]:
        return self._costs

    def price(self, tier: str) -> int:
        """Credits for one image of ``tier``."""
        try:
            return self._costs[tier]
        except KeyError:
            raise UnknownCostTier(tier, tuple(self._costs)) from None

    def total(self, tier: str, samples: int = 1) -> int:
        """Credits for ``samples`` images of ``tier``."""
        if samples < 1:
            raise ValueError(f"samples must be 1 or more, not {samples}")
        return self.price(tier) * samples
