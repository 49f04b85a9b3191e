"""What a result's Info button shows: everything needed to make the image again."""

from __future__ import annotations

from typing import Any

import discord

from bot.jobstore import JobRecord
from bot.models import GenerationRequest


def style_of(request: GenerationRequest) -> str | None:
    style = getattr(request, "style", None) or request.options.get("style")
    return str(style) if style else None


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
    """The result's settings as prompt parameters a member can paste back."""
    request = record.request
    params: list[str] = []
    if request.aspect_ratio:
        params.append(f"--ar {request.aspect_ratio}")
    if request.size:
        params.append(f"--size {request.size}")
    style = style_of(request)
    if style:
        params.append(f"--style {style}")
    seed = record.seed if record.seed is not None else request.seed
    if seed is not None:
        params.append(f"--seed {seed}")
    for option, name in (("num_inference_steps", "steps"), ("guidance_scale", "guidance")):
        value: Any = request.options.get(option)
        if value is not None:
            params.append(f"--{name} {value}")
    if request.negative_prompt:
        params.append(f"--no {request.negative_prompt}")
    return " ".join(params)


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
