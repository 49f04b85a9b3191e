"""What a result's Info button shows: everything needed to make the image again."""

from __future__ import annotations

from typing import Any

import discord

from bot.jobstore import JobRecord
from bot.models import GenerationRequest
from bot.prompt_params import PromptParams


def style_of(request: GenerationRequest) -> str | None:
    return request.style


def size_of(record: JobRecord) -> str:
    request = record.request
    first = record.image(1)
    parts = [f"{first.width}×{first.height}"] if first is not None else []
    if request.aspect_ratio:
        parts.append(request.aspect_ratio)
    if request.size:
        parts.append(request.size)
    return ", ".join(parts) or "provider default"


def parameters_of(record: JobRecord) -> str:
    """The result's settings as prompt parameters a member can paste back. The
    stored prompt and negative prompt already carry the style, so ``--style`` is
    left out rather than applied twice."""
    request = record.request
    options = request.options
    enhance = options.get("enhance_prompt")
    guidance: Any = options.get("guidance_scale")
    steps: Any = options.get("num_inference_steps")
    params = PromptParams(
        prompt="",
        aspect_ratio=request.aspect_ratio,
        negative=(request.negative_prompt,) if request.negative_prompt else (),
        seed=record.seed if record.seed is not None else request.seed,
        size=request.size,
        steps=None if steps is None else str(steps),
        guidance=None if guidance is None else float(guidance),
        scheduler=options.get("scheduler"),
        enhance=None if enhance is None else enhance == "yes",
    )
    return params.render().strip()


def info_embed(record: JobRecord, default_model: str | None = None) -> discord.Embed:
    request = record.request
    embed = discord.Embed(
        title="How this image was made",
        description=discord.utils.escape_markdown(request.prompt)[:3900],
        colour=discord.Colour.blurple(),
    )
    if request.negative_prompt:
        embed.add_field(
            name="Negative prompt",
            value=discord.utils.escape_markdown(request.negative_prompt)[:1000],
            inline=False,
        )
    embed.add_field(name="Style", value=style_of(request) or "none")
    seed = record.seed if record.seed is not None else request.seed
    embed.add_field(name="Seed", value=str(seed) if seed is not None else "random")
    embed.add_field(name="Size", value=size_of(record))
    embed.add_field(name="Provider", value=record.provider)
    embed.add_field(name="Model", value=record.model or request.model or default_model or "default")
    embed.add_field(name="Mode", value=request.mode.value)
    params = parameters_of(record)
    if params:
        embed.add_field(
            name="Parameters", value=f"`{params.replace('`', '')[:1000]}`", inline=False
        )
    return embed
