"""Where a member's wait goes: the wall time of each step of the bot's jobs.

``python -m bench --steps`` has the bot's process time the coroutines in
``STEPS`` on every call (perf_counter at entry and at exit, in a wrapper set on
the class) and prints the medians over the paced runs below the table. A step's
time includes every wait for the event loop or a thread on the way, as the
member lives it. The wrappers cost a microsecond or two a call, so a run with
``--steps`` is for looking and does not rewrite RESULTS.md.
"""

from __future__ import annotations

import functools
import importlib
import statistics
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import ModuleType
from typing import Any

from bench._stats import percentile

# (what the member waits for, "module:Class.method"), in the order of a job.
STEPS: tuple[tuple[str, str], ...] = (
    ("checks before the acknowledgement", "cogs._service:GenerationService._early_gate"),
    ("the acknowledgement (defer)", "cogs._service:GenerationService._acknowledge"),
    ("reservation, with the job's record", "bot.quota.service:QuotaService.reserve"),
    (
        "the provider's call, its model's time included",
        "bot.providers.modelslab:ModelsLabProvider.generate",
    ),
    ("download, check and keep the result", "bot.jobs:Pipeline._finish_output"),
    (
        '↳ "begin delivery", with "delivering" and the links, beside the download',
        "bot.quota.service:QuotaService.begin_delivery",
    ),
    ("delivery: plan, embed, buttons, upload", "cogs._delivery:DiscordDelivery.deliver"),
    ("↳ Discord's edit of the original", "cogs._delivery:DiscordDelivery._send_first"),
    (
        'after the message: settlement, with "delivered" and where it went',
        "bot.quota.service:QuotaService.settle",
    ),
)

# The bare script's own exchanges, under the bot's labels where they match.
BASELINE_STEPS: tuple[tuple[str, str], ...] = (
    ("the acknowledgement (defer)", "bench._baseline:Baseline._acknowledge"),
    ("the provider's call, its model's time included", "bench._baseline:Baseline._generate"),
    ("download, check and keep the result", "bench._baseline:Baseline._download"),
    ("↳ Discord's edit of the original", "bench._baseline:Baseline._upload"),
)

AsyncMethod = Callable[..., Coroutine[Any, Any, Any]]


class StepTimer:
    """Times the coroutine methods it is given, per label, until ``uninstall``."""

    def __init__(self, steps: Sequence[tuple[str, str]] = STEPS) -> None:
        self.steps = tuple(steps)
        self.samples: dict[str, list[float]] = {}
        self._originals: list[tuple[type, str, AsyncMethod]] = []

    def install(self, modules: Mapping[str, ModuleType] | None = None) -> None:
        """``modules``: modules by name that are not where importing finds them
        (the child's own, run as ``__main__``)."""
        for label, target in self.steps:
            owner, name = _resolve(target, modules or {})
            original = getattr(owner, name)
            self._originals.append((owner, name, original))
            setattr(owner, name, self._timed(label, original))

    def uninstall(self) -> None:
        while self._originals:
            owner, name, original = self._originals.pop()
            setattr(owner, name, original)

    def take(self) -> dict[str, list[float]]:
        """The durations (seconds) since the last take, by label; and start again."""
        samples, self.samples = self.samples, {}
        return samples

    def _timed(self, label: str, method: AsyncMethod) -> AsyncMethod:
        @functools.wraps(method)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                self.samples.setdefault(label, []).append(time.perf_counter() - began)

        return timed


def _resolve(target: str, modules: Mapping[str, ModuleType]) -> tuple[type, str]:
    module_name, _, qualified = target.partition(":")
    class_name, _, name = qualified.rpartition(".")
    if not class_name:
        raise ValueError(f"{target!r}: a step is a method, 'module:Class.method'")
    module = modules.get(module_name) or importlib.import_module(module_name)
    owner = getattr(module, class_name)
    if not callable(getattr(owner, name, None)):
        raise ValueError(f"{target!r}: no such method")
    return owner, name


def steps_table(
    bot: Mapping[str, Sequence[float]],
    bare: Mapping[str, Sequence[float]] | None = None,
    steps: Sequence[tuple[str, str]] = STEPS,
) -> str:
    """A Markdown table of each step's median and 90th percentile in ms, with the
    bare script's median for the same exchange where it has one."""
    bare = bare or {}
    lines = [
        "| step | median (ms) | p90 (ms) | calls | bare script, median (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, _target in steps:
        values = sorted(bot.get(label, ()))
        theirs = bare.get(label)
        floor = f"{statistics.median(theirs) * 1000:.2f}" if theirs else "–"
        if not values:
            lines.append(f"| {label} | – | – | 0 | {floor} |")
            continue
        median = statistics.median(values) * 1000
        p90 = percentile(values, 90) * 1000
        lines.append(f"| {label} | {median:.2f} | {p90:.2f} | {len(values)} | {floor} |")
    return "\n".join(lines)
