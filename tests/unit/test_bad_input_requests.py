"""Bad requests that do not come through Discord's option checks (CLI, buttons,
stored requests): every one is a ValidationError naming the option, before any
network call, and nothing a member typed comes back as live markdown."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from bot.config import Settings
from bot.errors import ValidationError
from bot.models import GenerationRequest, Mode, ReferenceImage
from bot.providers import Provider, build_providers
from bot.providers.validation import check_prompt

FAST = settings(max_examples=80, deadline=None, database=None)
URL = "https://cdn.example.com/a.png"
# Markdown that would render if echoed unescaped: an unescaped special character.
LIVE_MARKDOWN = re.compile(r"(?<!\\)[*_~|`\[\]<>]")


def providers(**overrides: Any) -> dict[str, Provider]:
    values: dict[str, Any] = {
        "modelslab_api_key": SecretStr("ml-unit-key"),
        "nanobanana_api_key": SecretStr("sk-unit-key"),
        "modelslab_models": "sdxl",
    }
    values.update(overrides)
    settings_ = Settings(_env_file=None, **values)

    async def build() -> dict[str, Provider]:
        # The clients only keep the session; validation never touches it.
        async with aiohttp.ClientSession() as session:
            return build_providers(settings_, session, images=None)  # type: ignore[arg-type]

    return asyncio.run(build())


PROVIDERS = providers()


def refs(count: int) -> tuple[ReferenceImage, ...]:
    return tuple(
        ReferenceImage(data=b"png", mime="image/png", width=64, height=64, url=f"{URL}?{n}")
        for n in range(count)
    )


def request(mode: Mode = Mode.TEXT, **fields: Any) -> GenerationRequest:
    fields.setdefault("references", refs({Mode.TEXT: 0, Mode.EDIT: 1, Mode.BLEND: 2}[mode]))
    fields.setdefault("prompt", "a red fox")
    return GenerationRequest(mode=mode, **fields)


def refused(provider: Provider, bad: GenerationRequest) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        provider.validate(bad)
    message = info.value.user_message
    assert message and "\n" not in message
    return info.value


# --------------------------------------------------------------------------- prompts

# White space, zero-width and direction marks, and glyphs that draw nothing.
INVISIBLE = st.sampled_from(
    list(" \t\n\r\u00a0\u2003\u3000\u200b\u200c\u200d\u200e\u200f\u2060\ufeff")
    + list("\u2800\u3164\u115f\u1160")
)


@FAST
@given(st.lists(INVISIBLE, max_size=40).map("".join))
def test_prompts_that_show_nothing_are_empty(prompt: str) -> None:
    for provider in PROVIDERS.values():
        error = refused(provider, request(prompt=prompt))
        assert (error.option, error.user_message) == ("prompt", "prompt must not be empty.")


@FAST
@given(
    padding=st.lists(INVISIBLE, max_size=5).map("".join),
    visible=st.characters(min_codepoint=0x21, max_codepoint=0x2FFF).filter(
        lambda ch: ch.isprintable() and not ch.isspace() and ch not in "\u2028\u2029"
    ),
)
def test_one_visible_character_is_a_prompt(padding: str, visible: str) -> None:
    assert visible in check_prompt(padding + visible + padding, max_length=2000)


@FAST
@given(st.integers(2001, 20_000))
def test_over_long_prompts_name_the_limit(length: int) -> None:
    error = refused(PROVIDERS["modelslab"], request(prompt="x" * length))
    assert error.user_message == f"prompt must be at most 2000 characters (got {length})."
    error = refused(PROVIDERS["nanobanana"], request(prompt="x" * (length + 2000)))
    assert error.user_message == f"prompt must be at most 4000 characters (got {length + 2000})."


# --------------------------------------------------------------------------- numbers


@FAST
@given(
    mode=st.sampled_from(list(Mode)),
    seed=st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=12)),
)
def test_seeds_outside_the_range_are_refused(mode: Mode, seed: Any) -> None:
    modelslab = PROVIDERS["modelslab"]
    in_range = (
        (isinstance(seed, int) and 0 <= seed <= 4_294_967_295)
        or (  # numeric text and whole floats are what a CLI sends
            isinstance(seed, str) and seed.strip().lstrip("+").isdigit()
        )
        or (isinstance(seed, float) and seed.is_integer() and 0 <= seed <= 4_294_967_295)
    )
    try:
        validated = modelslab.validate(request(mode, seed=seed))
    except ValidationError as error:
        assert error.option == "seed"
        assert error.user_message.startswith("seed must be a whole number 0 to 4294967295 (got ")
        assert not LIVE_MARKDOWN.search(error.user_message)
    else:
        assert in_range
        assert validated.seed is not None and 0 <= validated.seed <= 4_294_967_295
    # Nano Banana Pro has no seed at all.
    if seed is not None and seed != "":
        nano = refused(PROVIDERS["nanobanana"], request(mode, seed=seed))
        assert nano.user_message == "Nano Banana Pro does not take a seed; remove seed."


@FAST
@given(mode=st.sampled_from(list(Mode)), samples=st.integers(-(2**40), 2**40))
def test_sample_counts(mode: Mode, samples: int) -> None:
    # Nano Banana Pro makes one image per call; the pipeline fans samples out.
    for name in ("modelslab", "nanobanana"):
        if 1 <= samples <= 4:
            assert PROVIDERS[name].validate(request(mode, samples=samples)).samples == samples
        else:
            error = refused(PROVIDERS[name], request(mode, samples=samples))
            assert error.user_message == f"samples must be a whole number 1 to 4 (got {samples})."


@FAST
@given(
    mode=st.sampled_from(list(Mode)),
    width=st.integers(-(2**33), 2**33),
    height=st.integers(-(2**33), 2**33),
)
def test_pixel_sizes_are_in_range_and_on_the_grid_or_refused(
    mode: Mode, width: int, height: int
) -> None:
    rule = PROVIDERS["modelslab"].capabilities.pixel_sizes[mode]
    try:
        validated = PROVIDERS["modelslab"].validate(request(mode, width=width, height=height))
    except ValidationError as error:
        assert error.option in ("width", "height")
        assert f"{rule.minimum} to {rule.maximum}" in error.user_message
    else:
        for value in (validated.width, validated.height):
            assert value is not None
            assert rule.minimum <= value <= rule.maximum and value % rule.multiple_of == 0
    try:
        validated = PROVIDERS["nanobanana"].validate(request(mode, width=width, height=height))
    except ValidationError as error:
        assert error.option in ("width", "height", "aspect_ratio")
    else:
        assert validated.aspect_ratio in PROVIDERS["nanobanana"].capabilities.aspect_ratios
        assert validated.width is None and validated.height is None


@FAST
@given(size=st.text(max_size=8))
def test_unknown_size_tiers(size: str) -> None:
    nano = PROVIDERS["nanobanana"]
    if size.strip().casefold() in ("1k", "2k", "4k"):
        assert nano.validate(request(size=size)).size == size.strip().casefold()
        return
    error = refused(nano, request(size=size))
    assert error.option == "size"
    assert not LIVE_MARKDOWN.search(error.user_message)
    error = refused(PROVIDERS["modelslab"], request(size=size))
    assert error.option == "size"
    assert error.user_message.startswith("size must be one of 1k, 2k, 4k (got ")
    assert not LIVE_MARKDOWN.search(error.user_message)


def test_4k_outside_the_plan_is_refused_by_name() -> None:
    nano = providers(nanobanana_allow_4k=False)["nanobanana"]
    error = refused(nano, request(size="4k"))
    assert error.user_message.startswith("size 4k needs a Nano Banana Pro plan with 4K")


# --------------------------------------------------------------------------- names


@FAST
@given(model=st.text(min_size=1, max_size=80))
def test_unknown_models_are_refused_and_echoed_harmlessly(model: str) -> None:
    if model.strip() in ("flux", "sdxl"):
        return
    error = refused(PROVIDERS["modelslab"], request(model=model))
    assert error.user_message.startswith("model must be one of flux, sdxl (got ")
    echoed = error.user_message.removeprefix("model must be one of flux, sdxl (got ")
    assert not LIVE_MARKDOWN.search(echoed), error.user_message
    error = refused(PROVIDERS["nanobanana"], request(model=model))
    assert error.user_message == "Nano Banana Pro has no model choice; remove model."


@FAST
@given(ratio=st.text(max_size=12))
def test_unknown_aspect_ratios(ratio: str) -> None:
    ratios = PROVIDERS["modelslab"].capabilities.aspect_ratios
    if ratio.strip() in ratios:
        return
    for provider in PROVIDERS.values():
        error = refused(provider, request(aspect_ratio=ratio))
        assert error.option == "aspect_ratio"
        assert not LIVE_MARKDOWN.search(error.user_message.split("(got ", 1)[1])


# --------------------------------------------------------------------------- references


@FAST
@given(mode=st.sampled_from(list(Mode)), count=st.integers(0, 20))
def test_reference_counts(mode: Mode, count: int) -> None:
    for name, provider in PROVIDERS.items():
        low, high = provider.capabilities.reference_limits[mode]
        if low <= count <= high:
            assert len(provider.validate(request(mode, references=refs(count))).references) == count
            continue
        error = refused(provider, request(mode, references=refs(count)))
        assert error.option == "references", name
        assert f"(got {count})" in error.user_message


def test_reference_limits_follow_the_plan() -> None:
    small = providers(nanobanana_max_references=3, modelslab_max_references=2)
    error = refused(small["nanobanana"], request(Mode.BLEND, references=refs(4)))
    assert error.user_message == "blend takes 2 to 3 reference images (got 4)."
    error = refused(small["modelslab"], request(Mode.BLEND, references=refs(3)))
    assert error.user_message == "blend takes exactly 2 reference images (got 3)."
