"""Prompt parameters (``--ar 16:9 --no trees``): properties of the parser."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bot.prompt_params import (
    GUIDANCE_RANGE,
    SIZES,
    SPECS,
    ParameterError,
    PromptParams,
    has_parameters,
    parse,
)
from bot.providers.base import ASPECT_RATIOS
from bot.providers.modelslab import INFERENCE_STEPS, SCHEDULERS, SEED_RANGE

FAST = settings(max_examples=200, deadline=None)
KNOWN = {name for spec in SPECS for name in (spec.name, *spec.aliases)}

# Prompt text: anything a member types, minus what would read as a parameter.
words = st.text(
    alphabet=st.characters(codec="utf-8", blacklist_characters="\x00"),
    min_size=1,
    max_size=20,
).filter(lambda w: not has_parameters(w))
prompts = (
    st.lists(words, min_size=1, max_size=8)
    .map(" ".join)
    .map(str.strip)
    .filter(lambda p: p != "" and not has_parameters(p))
)
negatives = prompts.map(lambda p: " ".join(p.split()))
guidances = st.decimals(
    min_value=GUIDANCE_RANGE[0], max_value=GUIDANCE_RANGE[1], places=2, allow_nan=False
).map(float)

params = st.builds(
    PromptParams,
    prompt=prompts,
    aspect_ratio=st.none() | st.sampled_from(ASPECT_RATIOS),
    negative=st.lists(negatives, max_size=3).map(tuple),
    seed=st.none() | st.integers(*SEED_RANGE),
    size=st.none() | st.sampled_from(SIZES),
    steps=st.none() | st.sampled_from(INFERENCE_STEPS),
    guidance=st.none() | guidances,
    scheduler=st.none() | st.sampled_from(SCHEDULERS),
    enhance=st.none() | st.booleans(),
    style=st.none() | st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True),
)


@FAST
@given(params)
def test_rendered_parameters_parse_back_to_the_same(expected: PromptParams) -> None:
    assert parse(expected.render()) == expected


@FAST
@given(prompts)
def test_text_without_parameters_is_left_alone(prompt: str) -> None:
    assert parse(prompt) == PromptParams(prompt=prompt)


@FAST
@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_with_a_named_parameter(text: str) -> None:
    try:
        result = parse(text)
    except ParameterError as error:
        assert error.option.startswith("--")
        assert error.option in error.user_message
        return
    # What is left as the prompt never holds a parameter.
    assert not has_parameters(result.prompt)


@FAST
@given(prompts, st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,12}", fullmatch=True))
def test_unknown_parameters_are_named_with_the_valid_ones(prompt: str, name: str) -> None:
    assume(name.casefold() not in KNOWN)
    with pytest.raises(ParameterError) as info:
        parse(f"{prompt} --{name} 1")
    assert info.value.option == f"--{name}"
    assert f"--{name} is not a parameter." in info.value.user_message
    for spec in SPECS:
        assert f"--{spec.name}" in info.value.user_message


@FAST
@given(prompts, st.text(min_size=1, max_size=12).filter(lambda v: " " not in v.strip()))
def test_a_bad_aspect_ratio_lists_every_valid_one(prompt: str, value: str) -> None:
    value = value.strip()
    assume(value and value.casefold() not in {r.casefold() for r in ASPECT_RATIOS})
    assume(not has_parameters(value))
    with pytest.raises(ParameterError) as info:
        parse(f"{prompt} --ar {value}")
    assert info.value.option == "--ar"
    assert all(ratio in info.value.user_message for ratio in ASPECT_RATIOS)


@FAST
@given(prompts, st.integers())
def test_seeds_out_of_range_are_refused(prompt: str, seed: int) -> None:
    if SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        assert parse(f"{prompt} --seed {seed}").seed == seed
    else:
        with pytest.raises(ParameterError, match="--seed must be a whole number 0 to"):
            parse(f"{prompt} --seed {seed}")


@FAST
@given(prompts, st.floats(allow_nan=True, allow_infinity=True))
def test_guidance_outside_its_range_is_refused(prompt: str, value: float) -> None:
    text = f"{prompt} --guidance {value!r}"
    low, high = GUIDANCE_RANGE
    inside = low <= value <= high and re.fullmatch(r"\d{1,3}(\.\d{1,4})?", repr(value))
    if inside:
        assert parse(text).guidance == value
    else:
        with pytest.raises(ParameterError, match="--guidance must be a number 1 to 20"):
            parse(text)


@FAST
@given(prompts, st.sampled_from([spec for spec in SPECS if not spec.repeatable]))
def test_a_parameter_given_twice_is_refused(prompt: str, spec) -> None:
    value = spec.example.split(" ", 1)[1]
    with pytest.raises(ParameterError, match="is given twice"):
        parse(f"{prompt} --{spec.name} {value} --{spec.name} {value}")


def test_examples() -> None:
    parsed = parse(
        "a lighthouse at dusk —ar 16:9 --no trees, boats --seed 42 --size 2K "
        "--steps 31 --cfg 7 --scheduler eulerdiscrete --enhance --style Anime --no fog"
    )
    assert parsed == PromptParams(
        prompt="a lighthouse at dusk",
        aspect_ratio="16:9",
        negative=("trees, boats", "fog"),
        seed=42,
        size="2k",
        steps="31",
        guidance=7.0,
        scheduler="EulerDiscreteScheduler",
        enhance=True,
        style="anime",
    )
    assert parsed.negative_prompt == "trees, boats, fog"
    assert parsed.options() == {
        "num_inference_steps": "31",
        "guidance_scale": 7.0,
        "scheduler": "EulerDiscreteScheduler",
        "enhance_prompt": "yes",
    }
    # Dashes inside words and lone dashes are prompt text.
    assert parse("a well--known cat -- sitting — calmly").prompt == (
        "a well--known cat -- sitting — calmly"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a cat --ar", "--ar needs a value: one of 1:1"),
        ("a cat --seed 42 on a mat", "--seed takes one value"),
        ("a cat --steps 30", "--steps must be one of 21, 31, 41 (got 30)."),
        ("a cat --size 8k", "--size must be one of 1k, 2k, 4k (got 8k)."),
        ("a cat --enhance maybe", "--enhance must be yes or no"),
        ("a cat --aspct 1:1", "Did you mean --ar?"),
        ("a cat --style Not*A*Name", "--style must be a style name"),
        ("a cat --ar **16:9**", "(got \\*\\*16:9\\*\\*)"),
    ],
)
def test_refusals_name_the_parameter_and_the_valid_values(text: str, message: str) -> None:
    with pytest.raises(ParameterError) as info:
        parse(text)
    assert message in info.value.user_message


def test_the_readme_lists_every_parameter_and_built_in_style() -> None:
    from pathlib import Path

    from bot.styles import BUILTIN_STYLES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    parameters = readme.split("## Parameters", 1)[1].split("\n## ", 1)[0]
    for spec in SPECS:
        assert f"| `--{spec.name}`" in parameters, spec.name
        assert spec.values.replace("|", "/") in parameters, spec.name
    styles = readme.split("## Styles", 1)[1].split("\n## ", 1)[0]
    for style in BUILTIN_STYLES:
        assert f"| `{style.name}` | {style.template} |" in styles, style.name
