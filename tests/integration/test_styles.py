"""Styles on both backends, and how compose applies them with prompt parameters."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.compose import Defaults, compose
from bot.config import Settings
from bot.errors import ValidationError
from bot.jobs import Pipeline
from bot.jobstore import JobStore
from bot.models import GenerationRequest, Mode, Requester
from bot.quota import open_ledger
from bot.runtime import open_runtime
from bot.styles import BUILTIN_STYLES, MAX_GUILD_STYLES, Style, StyleStore
from tests.conftest import LedgerDb

GUILD = "1100000000000000001"
OTHER_GUILD = "1100000000000000002"
MOD = "1200000000000000001"


@contextlib.asynccontextmanager
async def style_store(db: LedgerDb) -> AsyncIterator[StyleStore]:
    if db.path is not None:
        async with JobStore.connect(db.path) as jobs:
            yield StyleStore(jobs.database)
    else:
        async with JobStore.connect_postgres(db.url) as jobs:
            yield StyleStore(jobs.database)


async def test_guild_styles_are_added_edited_listed_and_removed(ledger_db: LedgerDb) -> None:
    async with style_store(ledger_db) as styles:
        added = await styles.add(
            GUILD,
            Style(
                "Noir",
                "  film noir still of {prompt},\n high contrast ",
                negative_prompt="colour",
                aspect_ratio="3:2",
                size="2K",
            ),
            by=MOD,
        )
        assert added == Style(
            "noir",
            "film noir still of {prompt}, high contrast",
            negative_prompt="colour",
            aspect_ratio="3:2",
            size="2k",
        )
        names = [s.name for s in await styles.list(GUILD)]
        assert names == [*(s.name for s in BUILTIN_STYLES), "noir"]
        # Another guild does not see it.
        assert await styles.get(OTHER_GUILD, "noir") is None
        with pytest.raises(ValidationError, match="There is no style called noir here"):
            await styles.resolve(OTHER_GUILD, "noir")

        edited = await styles.edit(GUILD, "NOIR", by=MOD, size="", provider="nanobanana")
        assert (edited.size, edited.provider, edited.aspect_ratio) == (None, "nanobanana", "3:2")
        assert await styles.get(GUILD, "noir") == edited

        with pytest.raises(ValidationError, match="already a style called noir"):
            await styles.add(GUILD, Style("noir", "{prompt}"), by=MOD)
        with pytest.raises(ValidationError, match="built-in style"):
            await styles.add(GUILD, Style("anime", "{prompt}"), by=MOD)
        with pytest.raises(ValidationError, match="cannot be removed"):
            await styles.remove(GUILD, "anime")

        await styles.remove(GUILD, "noir")
        assert await styles.get(GUILD, "noir") is None
        with pytest.raises(ValidationError, match="no style called noir"):
            await styles.remove(GUILD, "noir")


@pytest.mark.parametrize(
    ("style", "option", "message"),
    [
        (Style("x", "no placeholder"), "template", "needs {prompt}"),
        (Style("x", "{prompt} --ar 16:9"), "template", "cannot contain parameters"),
        (Style("Bad Name", "{prompt}"), "name", "1 to 32 lower-case letters"),
        (Style("x", "{prompt}", aspect_ratio="5:4"), "aspect_ratio", "must be one of 1:1"),
        (Style("x", "{prompt}", size="8k"), "size", "must be one of 1k, 2k, 4k"),
        (Style("x", "{prompt}", provider="dalle"), "provider", "modelslab, nanobanana"),
        (Style("x", "{prompt}" + "x" * 1000), "template", "at most 1000 characters"),
    ],
)
async def test_bad_styles_are_refused_by_field(
    ledger_db: LedgerDb, style: Style, option: str, message: str
) -> None:
    async with style_store(ledger_db) as styles:
        with pytest.raises(ValidationError) as info:
            await styles.add(GUILD, style, by=MOD)
        assert info.value.option == option
        assert message in info.value.user_message
        assert [s.name for s in await styles.list(GUILD)] == [s.name for s in BUILTIN_STYLES]


async def test_a_guild_has_at_most_fifty_styles(tmp_path) -> None:
    async with JobStore.connect(tmp_path / "bot.db") as jobs:
        styles = StyleStore(jobs.database)
        for n in range(MAX_GUILD_STYLES):
            await styles.add(GUILD, Style(f"s{n}", "{prompt}"), by=MOD)
        with pytest.raises(ValidationError, match="the most allowed"):
            await styles.add(GUILD, Style("one-more", "{prompt}"), by=MOD)
        await styles.add(OTHER_GUILD, Style("one-more", "{prompt}"), by=MOD)


# --------------------------------------------------------------------------- compose


@pytest.fixture
async def chooser(tmp_path) -> AsyncIterator[Pipeline]:
    """The real pipeline's provider choice (no provider is called)."""
    settings = Settings(
        _env_file=None,
        modelslab_api_key="ml-key",
        nanobanana_api_key="sk-key",
        modelslab_models="sdxl",
        data_dir=tmp_path / "data",
    )
    async with open_ledger(settings) as ledger, open_runtime(settings, ledger) as runtime:
        yield runtime.pipeline


def req(prompt: str, mode: Mode = Mode.TEXT, **kw: Any) -> GenerationRequest:
    return GenerationRequest(mode=mode, prompt=prompt, requester=Requester(guild_id=GUILD), **kw)


async def test_compose_applies_parameters_style_and_soft_defaults(
    tmp_path, chooser: Pipeline
) -> None:
    async with JobStore.connect(tmp_path / "bot.db") as jobs:
        styles = StyleStore(jobs.database)
        await styles.add(
            GUILD,
            Style(
                "poster",
                "poster of {prompt}, bold shapes",
                negative_prompt="text",
                aspect_ratio="2:3",
                size="2k",
                model="sdxl",
            ),
            by=MOD,
        )
        # ModelsLab text to image: the style's 2k is beyond it, so left out.
        composed = await compose(
            req("a fox --no clutter --seed 7", negative_prompt="blur"),
            pipeline=chooser,
            styles=styles,
            style="poster",
        )
        assert composed.prompt == "poster of a fox, bold shapes"
        assert composed.negative_prompt == "blur, clutter, text"
        assert (composed.seed, composed.aspect_ratio, composed.size) == (7, "2:3", None)
        assert (composed.model, composed.style) == ("sdxl", "poster")

        # Nano Banana Pro: the size applies, the negative prompt cannot and is dropped.
        composed = await compose(
            req("a fox --style poster --ar 1:1", provider="nanobanana"),
            pipeline=chooser,
            styles=styles,
        )
        assert (composed.aspect_ratio, composed.size) == ("1:1", "2k")
        assert composed.negative_prompt is None and composed.model is None

        # Member defaults fill what the style left empty; explicit values beat both.
        composed = await compose(
            req("a fox", Mode.EDIT, size="1k"),
            pipeline=chooser,
            styles=styles,
            default_style="photo",
            member_defaults=Defaults(aspect_ratio="16:9", size="2k", provider="modelslab"),
        )
        assert (composed.aspect_ratio, composed.size, composed.provider) == (
            "16:9",
            "1k",
            "modelslab",
        )
        assert composed.style == "photo"

        composed = await compose(
            req("a fox --steps 41 --guidance 7.5 --scheduler lcm --enhance no"),
            pipeline=chooser,
            styles=styles,
        )
        assert dict(composed.options) == {
            "num_inference_steps": "41",
            "guidance_scale": 7.5,
            "scheduler": "LCMScheduler",
            "enhance_prompt": "no",
        }
        assert composed.style is None


@pytest.mark.parametrize(
    ("request_", "style", "message"),
    [
        (req("a fox --ar 16:9", aspect_ratio="1:1"), None, "aspect_ratio is given twice"),
        (req("a fox --seed 2", seed=1), None, "seed is given twice"),
        (
            req("a fox --steps 21", options={"num_inference_steps": "31"}),
            None,
            "num_inference_steps is given twice: 31 as an option and 21 as --steps",
        ),
        (req("a fox --style anime"), "photo", "style is given twice"),
        (req("--ar 16:9"), None, "The prompt is empty once its parameters are taken out"),
        (req("a fox --style nope"), None, "There is no style called nope here. Styles: photo"),
    ],
)
async def test_compose_refusals(
    tmp_path, chooser: Pipeline, request_: GenerationRequest, style: str | None, message: str
) -> None:
    async with JobStore.connect(tmp_path / "bot.db") as jobs:
        with pytest.raises(ValidationError) as info:
            await compose(request_, pipeline=chooser, styles=StyleStore(jobs.database), style=style)
        assert message in info.value.user_message


async def test_the_same_value_as_option_and_parameter_is_fine(chooser: Pipeline) -> None:
    composed = await compose(
        req("a fox --ar 16:9 --guidance 7", aspect_ratio="16:9", options={"guidance_scale": 7}),
        pipeline=chooser,
        styles=None,
    )
    assert composed.aspect_ratio == "16:9"
    assert composed.options["guidance_scale"] == 7.0
