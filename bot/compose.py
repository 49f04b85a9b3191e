"""From what a member typed to the request the pipeline validates and prices.

Every edge (slash commands, prompt modals, the CLI) calls ``compose`` before
``Pipeline.run``, so parameters in the prompt, styles and defaults mean the same
everywhere. Whatever it refuses is refused before credits are reserved.

Which value wins, highest first:

1. **What the member gave in this command**: its options and the parameters in
   its prompt (``--ar 16:9``). Both are explicit, so when they disagree
   (``aspect_ratio: 1:1`` and ``--ar 16:9``) the request is refused naming both
   instead of one silently beating the other; the same value twice is fine.
   ``--no`` adds to ``negative_prompt``: both list things to leave out.
2. **The style** chosen for this command (``style`` option or ``--style``), or
   else the caller's default style (a member's ``/settings``): its template
   wraps the prompt, its negative prompt is added, its defaults fill gaps.
3. **Member defaults** (``Defaults``, from ``/settings``): fill what is still empty.
4. **The provider's defaults**, in ``Provider.validate``.

Layers 2 and 3 are soft: a default the chosen provider cannot use (a 4k size
on ModelsLab, a negative prompt on Nano Banana Pro, a model of another
provider) is left out rather than refusing a request the member never made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from bot.errors import ValidationError
from bot.models import GenerationRequest, Mode
from bot.prompt_params import PromptParams, parse
from bot.providers.base import Provider
from bot.styles import Style, StyleStore


@dataclass(frozen=True, slots=True)
class Defaults:
    """Soft defaults: used where the request leaves a setting empty and the
    chosen provider can do it."""

    aspect_ratio: str | None = None
    size: str | None = None
    provider: str | None = None
    model: str | None = None


class Chooser(Protocol):
    """What ``compose`` needs of ``bot.jobs.Pipeline``."""

    providers: Mapping[str, Provider]

    def choose_provider(self, request: GenerationRequest) -> Provider: ...


async def compose(
    request: GenerationRequest,
    *,
    pipeline: Chooser,
    styles: StyleStore | None,
    style: str | None = None,
    default_style: str | None = None,
    member_defaults: Defaults | None = None,
    parse_prompt: bool = True,
) -> GenerationRequest:
    """The request with prompt parameters, style and defaults applied.

    ``style`` is the command's style option; ``default_style`` is used only when
    neither it nor ``--style`` names one. Raises ``ValidationError`` (nothing is
    spent yet) for bad parameters, conflicts and unknown styles.
    """
    if parse_prompt:
        params = parse(request.prompt)
        request = merge_parameters(request, params)
        style = _merge("style", "--style", style, params.style)
        if not request.prompt and params != PromptParams(prompt=""):
            raise ValidationError(
                "prompt",
                "The prompt is empty once its parameters are taken out: write what to "
                "draw first, then the parameters (a lighthouse --ar 16:9).",
            )
    chosen = style or default_style
    applied: Style | None = None
    if chosen is not None:
        if styles is None:
            raise ValidationError("style", "Styles are not available here.")
        applied = await styles.resolve(request.requester.guild_id, chosen)
        request = replace(request, prompt=applied.apply(request.prompt), style=applied.name)
    layers = [
        layer
        for layer in (
            _style_defaults(applied) if applied else None,
            member_defaults,
        )
        if layer is not None
    ]
    return _apply_defaults(request, pipeline, layers, applied)


def merge_parameters(request: GenerationRequest, params: PromptParams) -> GenerationRequest:
    """The request with the prompt's parameters moved into its fields."""
    options: dict[str, Any] = dict(request.options)
    for name, value in params.options().items():
        options[name] = _merge(name, _PARAM_OF_OPTION[name], options.get(name), value)
    negative = ", ".join(
        text for text in (request.negative_prompt, params.negative_prompt) if text and text.strip()
    )
    return replace(
        request,
        prompt=params.prompt,
        negative_prompt=negative or None,
        aspect_ratio=_merge("aspect_ratio", "--ar", request.aspect_ratio, params.aspect_ratio),
        seed=_merge("seed", "--seed", request.seed, params.seed),
        size=_merge("size", "--size", request.size, params.size),
        options=options,
    )


_PARAM_OF_OPTION = {
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance",
    "scheduler": "--scheduler",
    "enhance_prompt": "--enhance",
}


def _merge(option: str, parameter: str, given: Any, typed: Any) -> Any:
    if typed is None:
        return given
    if given is not None and _same(given) != _same(typed):
        raise ValidationError(
            option,
            f"{option} is given twice: {given} as an option and {typed} as {parameter} in "
            "the prompt. Keep one.",
        )
    return typed


def _same(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip().casefold()
        try:
            return float(text)
        except ValueError:
            return text
    return value


def _style_defaults(style: Style) -> Defaults:
    return Defaults(
        aspect_ratio=style.aspect_ratio,
        size=style.size,
        provider=style.provider,
        model=style.model,
    )


def _apply_defaults(
    request: GenerationRequest,
    pipeline: Chooser,
    layers: list[Defaults],
    style: Style | None,
) -> GenerationRequest:
    if request.provider is None:
        for layer in layers:
            candidate = pipeline.providers.get(layer.provider or "")
            if candidate is not None and candidate.capabilities.supports(request.mode):
                request = replace(request, provider=candidate.name)
                break
    if not layers and style is None:
        return request
    caps = pipeline.choose_provider(request).capabilities
    sized_by_pixels = request.width is not None or request.height is not None
    for layer in layers:
        if (
            request.aspect_ratio is None
            and not sized_by_pixels
            and layer.aspect_ratio in caps.aspect_ratios
        ):
            request = replace(request, aspect_ratio=layer.aspect_ratio)
        if (
            request.size is None
            and not sized_by_pixels
            and layer.size in caps.sizes_for(request.mode)
        ):
            request = replace(request, size=layer.size)
        if request.model is None and request.mode is Mode.TEXT and layer.model in caps.models:
            request = replace(request, model=layer.model)
    if style is not None and style.negative_prompt and caps.takes_negative_prompt:
        negative = ", ".join(t for t in (request.negative_prompt, style.negative_prompt) if t)
        request = replace(request, negative_prompt=negative)
    return request
