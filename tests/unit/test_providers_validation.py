"""Validation of generation requests against each provider's Capabilities.

No network: these exercise ``validate``/``cost_tier``/``build_body``, the shared
checks in ``bot.providers.validation`` and the text hygiene in ``_http``.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from typing import Any, cast

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from bot.config import Settings
from bot.errors import ValidationError
from bot.models import GenerationRequest, Mode, ReferenceImage
from bot.providers import build_providers, capabilities_for
from bot.providers._http import (
    ProviderHttp,
    as_bool,
    as_float,
    as_int,
    backoff_delay,
    parse_retry_after,
    redact_body,
)
from bot.providers.base import ASPECT_RATIOS, SizeRule
from bot.providers.modelslab import (
    INFERENCE_STEPS,
    NANO_SIZE,
    SAFETY_CHECKER_TYPES,
    SCHEDULERS,
    TEXT2IMG_SIZE,
    ModelsLabProvider,
)
from bot.providers.nanobanana import NanoBananaProvider
from bot.providers.validation import check_prompt, fit_size, size_for_aspect

ML_KEY = "ml-unit-key-0123456789abcdef"
NB_KEY = "sk-unit-key-0123456789abcdef"
URL = "https://cdn.example.com/a.png"

FAST = settings(max_examples=60, deadline=None)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "modelslab_api_key": ML_KEY,
        "nanobanana_api_key": NB_KEY,
        "modelslab_model_id": "flux",
        "modelslab_models": "sdxl,realistic-vision",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def ref(
    url: str | None = URL,
    *,
    data: bytes | None = b"png",
    w: int | None = None,
    h: int | None = None,
) -> ReferenceImage:
    return ReferenceImage(data=data, mime="image/png", width=w, height=h, url=url)


def refs(n: int) -> tuple[ReferenceImage, ...]:
    return tuple(ref(f"https://cdn.example.com/{i}.png") for i in range(n))


def req(mode: Mode = Mode.TEXT, prompt: str = "a red fox", **kw: Any) -> GenerationRequest:
    if "references" not in kw:
        kw["references"] = {Mode.TEXT: (), Mode.EDIT: refs(1), Mode.BLEND: refs(2)}[mode]
    return GenerationRequest(mode=mode, prompt=prompt, **kw)


# Building providers needs a session object only to store it; validation never uses it.
_SESSION = cast(aiohttp.ClientSession, None)


@pytest.fixture
def ml() -> ModelsLabProvider:
    return ModelsLabProvider(make_settings(), _SESSION)


@pytest.fixture
def nb() -> NanoBananaProvider:
    return NanoBananaProvider(make_settings(), _SESSION, cast(Any, None))


ML = ModelsLabProvider(make_settings(), _SESSION)
NB = NanoBananaProvider(make_settings(), _SESSION, cast(Any, None))


def rejected(provider: Any, request: GenerationRequest, option: str) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        provider.validate(request)
    assert info.value.option == option
    named = "reference image" if option == "references" else option
    assert named in info.value.user_message.lower()
    return info.value


# --------------------------------------------------------------------------- prompt


@pytest.mark.parametrize("provider", [ML, NB], ids=["modelslab", "nanobanana"])
@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt_rejected(provider: Any, prompt: str) -> None:
    error = rejected(provider, req(prompt=prompt), "prompt")
    assert error.user_message == "prompt must not be empty."


@pytest.mark.parametrize(("provider", "limit"), [(ML, 2000), (NB, 4000)])
def test_prompt_length_limit(provider: Any, limit: int) -> None:
    assert provider.validate(req(prompt="x" * limit)).prompt == "x" * limit
    error = rejected(provider, req(prompt="x" * (limit + 1)), "prompt")
    assert str(limit) in error.user_message


def test_prompt_is_stripped(ml: ModelsLabProvider) -> None:
    assert ml.validate(req(prompt="  fox  ")).prompt == "fox"


def test_check_prompt_names_option() -> None:
    with pytest.raises(ValidationError, match="negative_prompt must be at most 5"):
        check_prompt("toolong", max_length=5, option="negative_prompt")


# --------------------------------------------------------------------------- samples, seed


@FAST
@given(st.integers(min_value=-10, max_value=20))
def test_modelslab_samples_range(samples: int) -> None:
    for mode in Mode:
        request = req(mode, samples=samples)
        if 1 <= samples <= 4:
            assert ML.validate(request).samples == samples
        else:
            error = rejected(ML, request, "samples")
            assert error.user_message == f"samples must be a whole number 1 to 4 (got {samples})."


def test_samples_numeric_string_accepted(ml: ModelsLabProvider) -> None:
    assert ml.validate(req(samples=cast(int, "3"))).samples == 3


@pytest.mark.parametrize("samples", [0, 5])
def test_nanobanana_samples_one_to_four(nb: NanoBananaProvider, samples: int) -> None:
    # One image per call: the pipeline fans 2-4 samples out into parallel calls.
    error = rejected(nb, req(samples=samples), "samples")
    assert "1 to 4" in error.user_message
    assert nb.validate(req(samples=4)).samples == 4


@FAST
@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_modelslab_seed_range(seed: int) -> None:
    for mode in Mode:
        request = req(mode, seed=seed)
        if 0 <= seed <= 4_294_967_295:
            assert ML.validate(request).seed == seed
        else:
            error = rejected(ML, request, "seed")
            assert "0 to 4294967295" in error.user_message


def test_seed_none_is_random(ml: ModelsLabProvider) -> None:
    assert ml.validate(req()).seed is None
    assert ml.build_body(ml.validate(req()))["seed"] is None
    assert "seed" not in ml.build_body(ml.validate(req(Mode.EDIT)))


# --------------------------------------------------------------------------- sizes


def _valid(value: int, rule: SizeRule) -> bool:
    return rule.minimum <= value <= rule.maximum and value % rule.multiple_of == 0


@FAST
@given(st.integers(min_value=-100, max_value=2600), st.sampled_from(["width", "height"]))
def test_pixel_sizes_per_mode(value: int, option: str) -> None:
    for mode, rule in ((Mode.TEXT, TEXT2IMG_SIZE), (Mode.EDIT, NANO_SIZE), (Mode.BLEND, NANO_SIZE)):
        sizes: dict[str, Any] = {option: value}
        request = req(mode, **sizes)
        if _valid(value, rule):
            assert getattr(ML.validate(request), option) == value
        else:
            error = rejected(ML, request, option)
            assert f"{rule.minimum} to {rule.maximum}" in error.user_message
            assert f"multiple of {rule.multiple_of}" in error.user_message


def test_off_grid_size_suggests_neighbours(ml: ModelsLabProvider) -> None:
    error = rejected(ml, req(Mode.EDIT, width=1100), "width")
    assert "try 1088 or 1120" in error.user_message


@pytest.mark.parametrize(
    ("mode", "expected"),
    [(Mode.TEXT, (512, 512)), (Mode.EDIT, (1024, 1024)), (Mode.BLEND, (1024, 1024))],
)
def test_default_sizes(ml: ModelsLabProvider, mode: Mode, expected: tuple[int, int]) -> None:
    validated = ml.validate(req(mode))
    assert (validated.width, validated.height) == expected


def test_one_dimension_given_other_defaults(ml: ModelsLabProvider) -> None:
    validated = ml.validate(req(width=768))
    assert (validated.width, validated.height) == (768, 512)


@pytest.mark.parametrize(
    ("w", "h", "expected"),
    [
        (800, 600, (1376, 1024)),  # scaled up to the 1024 minimum, proportions kept
        (1024, 1024, (1024, 1024)),
        (1500, 1500, (1504, 1504)),  # snapped to the 32 grid
        (3000, 2000, (2048, 1376)),  # scaled down to the 2048 maximum
        (4000, 1000, (2048, 1024)),  # too extreme: clamped into range
        (5000, 5000, (2048, 2048)),
    ],
)
def test_img2img_default_follows_reference(
    ml: ModelsLabProvider, w: int, h: int, expected: tuple[int, int]
) -> None:
    validated = ml.validate(req(Mode.EDIT, references=(ref(w=w, h=h),)))
    assert (validated.width, validated.height) == expected


@pytest.mark.parametrize(
    ("mode", "ratio", "expected"),
    [
        (Mode.TEXT, "1:1", (1024, 1024)),
        (Mode.TEXT, "16:9", (1024, 576)),
        (Mode.TEXT, "9:16", (576, 1024)),
        (Mode.TEXT, "3:2", (1024, 680)),
        (Mode.TEXT, "21:9", (1024, 440)),
        (Mode.EDIT, "16:9", (2048, 1152)),
        (Mode.BLEND, "4:3", (2048, 1536)),
        (Mode.BLEND, "2:3", (1376, 2048)),
        (Mode.BLEND, "21:9", (2048, 1024)),  # 878 would be below the 1024 minimum
    ],
)
def test_aspect_ratio_to_pixels(
    ml: ModelsLabProvider, mode: Mode, ratio: str, expected: tuple[int, int]
) -> None:
    validated = ml.validate(req(mode, aspect_ratio=ratio))
    assert (validated.width, validated.height) == expected
    assert validated.aspect_ratio == ratio


@FAST
@given(
    st.sampled_from(ASPECT_RATIOS),
    st.sampled_from([TEXT2IMG_SIZE, NANO_SIZE]),
    st.integers(1, 8000),
    st.integers(1, 8000),
)
def test_size_helpers_stay_in_rule(ratio: str, rule: SizeRule, w: int, h: int) -> None:
    for width, height in (size_for_aspect(ratio, rule), fit_size(w, h, rule)):
        assert _valid(width, rule)
        assert _valid(height, rule)


@pytest.mark.parametrize("provider", [ML, NB], ids=["modelslab", "nanobanana"])
def test_unknown_aspect_ratio(provider: Any) -> None:
    error = rejected(provider, req(aspect_ratio="5:4"), "aspect_ratio")
    assert error.user_message == (
        "aspect_ratio must be one of 1:1, 2:3, 3:2, 3:4, 4:3, 9:16, 16:9, 21:9 (got 5:4)."
    )


def test_aspect_ratio_and_conflicting_size(ml: ModelsLabProvider) -> None:
    rejected(ml, req(aspect_ratio="16:9", width=512), "aspect_ratio")


@pytest.mark.parametrize("provider", [ML, NB], ids=["modelslab", "nanobanana"])
@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("ratio", [None, "16:9"])
def test_validate_is_idempotent(provider: Any, mode: Mode, ratio: str | None) -> None:
    once = provider.validate(req(mode, aspect_ratio=ratio, prompt=" fox "))
    assert provider.validate(once) == once


# --------------------------------------------------------------------------- references


ML_COUNTS = {Mode.TEXT: (0, 0), Mode.EDIT: (1, 1), Mode.BLEND: (2, 4)}
NB_COUNTS = {Mode.TEXT: (0, 0), Mode.EDIT: (1, 1), Mode.BLEND: (2, 8)}


@pytest.mark.parametrize(
    ("provider", "limits"), [(ML, ML_COUNTS), (NB, NB_COUNTS)], ids=["modelslab", "nanobanana"]
)
@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("count", range(11))
def test_reference_counts(
    provider: Any, limits: dict[Mode, tuple[int, int]], mode: Mode, count: int
) -> None:
    low, high = limits[mode]
    request = req(mode, references=refs(count))
    if low <= count <= high:
        assert len(provider.validate(request).references) == count
    else:
        error = rejected(provider, request, "references")
        assert f"(got {count})" in error.user_message
        assert provider.capabilities.reference_limits[mode] == (low, high)


def test_reference_limits_follow_settings() -> None:
    caps = capabilities_for(make_settings(modelslab_max_references=6, nanobanana_max_references=3))
    assert caps["modelslab"].reference_limits[Mode.BLEND] == (2, 6)
    assert caps["nanobanana"].reference_limits[Mode.BLEND] == (2, 3)
    one = capabilities_for(make_settings(nanobanana_max_references=1))["nanobanana"]
    assert Mode.BLEND not in one.modes


def test_modelslab_reference_needs_url(ml: ModelsLabProvider) -> None:
    error = rejected(ml, req(Mode.EDIT, references=(ref(None),)), "references")
    assert "Attach the image on Discord" in error.user_message
    assert "https://" in error.user_message
    assert "Nano Banana Pro" in error.user_message
    rejected(ml, req(Mode.EDIT, references=(ref("ftp://host/a.png"),)), "references")


# --------------------------------------------------------------------------- models


def test_model_default_and_allowed(ml: ModelsLabProvider) -> None:
    assert ml.validate(req()).model == "flux"
    assert ml.validate(req(model="sdxl")).model == "sdxl"
    assert ml.capabilities.models == ("flux", "sdxl", "realistic-vision")
    error = rejected(ml, req(model="midjourney"), "model")
    assert error.user_message == (
        "model must be one of flux, sdxl, realistic-vision (got midjourney)."
    )


def test_model_only_for_text(ml: ModelsLabProvider) -> None:
    rejected(ml, req(Mode.EDIT, model="flux"), "model")


# --------------------------------------------------------------------------- options

# The first mode in declaration order, not next(iter(spec.modes)): a set of strings
# iterates in an order that changes with the hash seed, and parallel workers must
# collect the same test ids.
ML_NUMERIC = [
    (name, spec.minimum, spec.maximum, spec.kind, next(m for m in Mode if m in spec.modes))
    for name, spec in ML.capabilities.options.items()
    if spec.kind in ("int", "float")
]


@pytest.mark.parametrize(("name", "low", "high", "kind", "mode"), ML_NUMERIC)
@FAST
@given(data=st.data())
def test_numeric_options(
    name: str, low: float, high: float, kind: str, mode: Mode, data: st.DataObject
) -> None:
    if kind == "int":
        value: float = data.draw(st.integers(int(low) - 50, int(high) + 50))
    else:
        value = data.draw(st.floats(low - 50, high + 50, allow_nan=False))
    request = req(mode, options={name: value})
    if low <= value <= high:
        got = ML.validate(request).options[name]
        assert got == value
        assert isinstance(got, int if kind == "int" else float)
    else:
        error = rejected(ML, request, name)
        assert f"{low:g} to {high:g}" in error.user_message


@pytest.mark.parametrize("value", [math.nan, math.inf, "abc", True, None])
def test_numeric_option_garbage(ml: ModelsLabProvider, value: Any) -> None:
    if value is None:  # None means "provider default"
        assert "guidance_scale" not in ml.validate(req(options={"guidance_scale": None})).options
        return
    rejected(ml, req(options={"guidance_scale": value}), "guidance_scale")


def test_numeric_option_string_accepted(ml: ModelsLabProvider) -> None:
    assert ml.validate(req(options={"guidance_scale": "7.5"})).options["guidance_scale"] == 7.5


ML_CHOICES = [
    ("scheduler", SCHEDULERS, Mode.TEXT),
    ("safety_checker_type", SAFETY_CHECKER_TYPES, Mode.TEXT),
    ("num_inference_steps", INFERENCE_STEPS, Mode.TEXT),
    ("algorithm_type", ("dpmsolver+++",), Mode.TEXT),
]


@pytest.mark.parametrize(
    ("name", "value", "mode"), [(n, v, m) for n, choices, m in ML_CHOICES for v in choices]
)
def test_choice_options_accept_each(
    ml: ModelsLabProvider, name: str, value: str, mode: Mode
) -> None:
    assert ml.validate(req(mode, options={name: value})).options[name] == value


@pytest.mark.parametrize(("name", "choices", "mode"), ML_CHOICES)
def test_choice_options_reject(
    ml: ModelsLabProvider, name: str, choices: tuple[str, ...], mode: Mode
) -> None:
    error = rejected(ml, req(mode, options={name: "bogus"}), name)
    assert ", ".join(choices) in error.user_message


def test_inference_steps_sent_as_number(ml: ModelsLabProvider) -> None:
    validated = ml.validate(req(options={"num_inference_steps": 31}))
    assert ml.build_body(validated)["num_inference_steps"] == 31
    rejected(ml, req(options={"num_inference_steps": 30}), "num_inference_steps")


ML_FLAGS = [
    (name, next(iter(sorted(spec.modes))))
    for name, spec in ML.capabilities.options.items()
    if spec.kind == "flag"
]


@pytest.mark.parametrize(("name", "mode"), ML_FLAGS)
@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, "yes"), (False, "no"), ("yes", "yes"), ("no", "no"), ("YES", "yes"), ("maybe", None)],
)
def test_flag_options(
    ml: ModelsLabProvider, name: str, mode: Mode, value: Any, expected: str | None
) -> None:
    request = req(mode, options={name: value})
    if expected is None:
        error = rejected(ml, request, name)
        assert "yes or no" in error.user_message
    else:
        assert ml.validate(request).options[name] == expected


def test_every_documented_option_declared(ml: ModelsLabProvider) -> None:
    text2img = {
        "num_inference_steps", "guidance_scale", "clip_skip", "scheduler",
        "safety_checker_type", "lora_model", "lora_strength", "enhance_prompt", "upscale",
        "panorama", "self_attention", "highres_fix", "tomesd", "use_karras_sigmas",
        "embeddings_model", "vae", "algorithm_type", "loadbalancer", "base64", "temp",
        "webhook", "track_id",
    }  # fmt: skip
    nano = {
        "noise_scale_start", "noise_scale_end", "noise_clip_std", "keep_original_aspect",
        "watermark", "temp", "base64", "webhook", "track_id",
    }  # fmt: skip
    options = ml.capabilities.options
    assert {n for n, s in options.items() if Mode.TEXT in s.modes} == text2img
    assert {n for n, s in options.items() if Mode.EDIT in s.modes} == nano
    assert {n for n, s in options.items() if Mode.BLEND in s.modes} == nano - {
        "keep_original_aspect"
    }


def test_unknown_option_lists_allowed(ml: ModelsLabProvider) -> None:
    error = rejected(ml, req(options={"strength": 0.5}), "strength")
    assert "options are" in error.user_message
    assert "guidance_scale" in error.user_message and "scheduler" in error.user_message


@pytest.mark.parametrize(
    ("mode", "name", "value"),
    [
        (Mode.TEXT, "noise_scale_start", 7.5),
        (Mode.BLEND, "keep_original_aspect", "yes"),
        (Mode.EDIT, "scheduler", "LCMScheduler"),
    ],
)
def test_option_for_other_mode(ml: ModelsLabProvider, mode: Mode, name: str, value: Any) -> None:
    error = rejected(ml, req(mode, options={name: value}), name)
    assert "only applies to" in error.user_message


@pytest.mark.parametrize("name", ["seed", "samples", "width", "key", "model_id", "prompt"])
def test_request_fields_are_not_options(ml: ModelsLabProvider, name: str) -> None:
    error = rejected(ml, req(options={name: 1}), name)
    assert "its own field" in error.user_message


@pytest.mark.parametrize(
    ("models", "strengths", "ok"),
    [
        ("more_details", None, True),
        ("more_details,animie", "0.5,1", True),
        ("more_details", 0.7, True),
        ("more_details", "0.05", False),
        ("more_details", "1.5", False),
        ("more_details,animie", "0.5", False),  # one strength per model
        (None, "0.5", False),
        ("a, ,b", None, False),
    ],
)
def test_lora_options(ml: ModelsLabProvider, models: str | None, strengths: Any, ok: bool) -> None:
    options = {k: v for k, v in (("lora_model", models), ("lora_strength", strengths)) if v}
    request = req(options=options)
    if ok:
        validated = ml.validate(request)
        if strengths is not None:
            assert validated.options["lora_strength"] == str(strengths).replace(" ", "")
    else:
        with pytest.raises(ValidationError) as info:
            ml.validate(request)
        assert info.value.option in ("lora_model", "lora_strength")


def test_webhook_must_be_https(ml: ModelsLabProvider) -> None:
    ok = ml.validate(req(options={"webhook": "https://hooks.example.com/x", "track_id": "t1"}))
    assert ok.options["webhook"] == "https://hooks.example.com/x"
    rejected(ml, req(options={"webhook": "http://hooks.example.com/x"}), "webhook")


def test_safety_checker_flag(ml: ModelsLabProvider) -> None:
    body = ml.build_body(ml.validate(req(safety_checker=True)))
    assert body["safety_checker"] == "yes"
    body = ml.build_body(ml.validate(req(safety_checker=False)))
    assert body["safety_checker"] == "no"
    # nano_banana has no such parameter: the request proceeds without it.
    body = ml.build_body(ml.validate(req(Mode.EDIT, safety_checker=True)))
    assert "safety_checker" not in body


def test_size_tiers_on_modelslab_map_to_the_largest_documented_sizes(
    ml: ModelsLabProvider,
) -> None:
    assert ml.capabilities.sizes_for(Mode.TEXT) == ("1k",)
    assert ml.capabilities.sizes_for(Mode.EDIT) == ("1k", "2k")
    validated = ml.validate(req(size="1k"))
    assert (validated.width, validated.height) == (1024, 1024)
    wide = ml.validate(req(size="1k", aspect_ratio="16:9"))
    assert (wide.width, wide.height) == (1024, 576)
    blend = ml.validate(req(Mode.BLEND, size="2k", aspect_ratio="3:4"))
    assert (blend.width, blend.height) == (1536, 2048)
    # nano_banana's 1024 minimum keeps the short side at 1024 for 1k.
    small = ml.validate(req(Mode.BLEND, size="1k", aspect_ratio="16:9"))
    assert (small.width, small.height) == (1824, 1024)
    # An edit without a ratio follows its reference's proportions.
    edit = ml.validate(req(Mode.EDIT, size="2k", references=(ref(w=1000, h=500),)))
    assert (edit.width, edit.height) == (2048, 1024)
    # The price stays the mode's: ModelsLab's cost table has no size tiers.
    assert ml.cost_tier(blend) == "nano_banana_multi_ref"
    # Validating a validated request again must succeed (failover, recovery).
    assert ml.validate(blend) == blend


def test_size_tiers_modelslab_cannot_make_are_refused(ml: ModelsLabProvider) -> None:
    error = rejected(ml, req(size="2k"), "size")
    assert "choose 1k, or Nano Banana Pro for 2k and 4k" in error.user_message
    error = rejected(ml, req(Mode.EDIT, size="4k"), "size")
    assert "choose 1k or 2k" in error.user_message
    rejected(ml, req(size="1k", width=512, height=512), "size")


# --------------------------------------------------------------------------- Nano Banana Pro


def test_nanobanana_defaults(nb: NanoBananaProvider) -> None:
    validated = nb.validate(req())
    assert validated.size is None  # read as 1k; left unset so ModelsLab can re-validate
    assert validated.aspect_ratio is None
    assert nb.cost_tier(validated) == "nbpro_1k"


@pytest.mark.parametrize("size", ["1k", "2k", "4k", "2K"])
def test_nanobanana_sizes(nb: NanoBananaProvider, size: str) -> None:
    validated = nb.validate(req(size=size))
    assert validated.size == size.lower()
    assert nb.cost_tier(validated) == f"nbpro_{size.lower()}"


def test_nanobanana_bad_size(nb: NanoBananaProvider) -> None:
    error = rejected(nb, req(size="8k"), "size")
    assert "1k, 2k, 4k" in error.user_message


def test_nanobanana_4k_needs_plan() -> None:
    nb = NanoBananaProvider(make_settings(nanobanana_allow_4k=False), _SESSION, cast(Any, None))
    assert nb.capabilities.size_tiers == ("1k", "2k")
    error = rejected(nb, req(size="4k"), "size")
    assert "plan" in error.user_message and "1k or 2k" in error.user_message


@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
def test_nanobanana_aspect_ratios(nb: NanoBananaProvider, ratio: str) -> None:
    assert nb.validate(req(aspect_ratio=ratio)).aspect_ratio == ratio


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("negative_prompt", "blurry", "does not take a negative prompt"),
        ("seed", 42, "does not take a seed"),
        ("model", "flux", "no model"),
    ],
)
def test_nanobanana_unsupported_fields(
    nb: NanoBananaProvider, field: str, value: Any, words: str
) -> None:
    error = rejected(nb, req(**{field: value}), field)
    assert words in error.user_message


@pytest.mark.parametrize(
    ("width", "height", "ratio", "expected"),
    [
        (1024, 576, None, "16:9"),
        (1000, 1000, None, "1:1"),
        (1376, 1024, None, "4:3"),  # a ModelsLab img2img size, 0.8% off 4:3
        (1024, 440, None, "21:9"),
        (1024, 576, "16:9", "16:9"),
    ],
)
def test_nanobanana_pixels_become_aspect_ratio(
    nb: NanoBananaProvider, width: int, height: int, ratio: str | None, expected: str
) -> None:
    validated = nb.validate(req(width=width, height=height, aspect_ratio=ratio))
    assert validated.aspect_ratio == expected
    assert (validated.width, validated.height) == (None, None)


@pytest.mark.parametrize(
    ("sizes", "option"),
    [
        ({"width": 1000, "height": 500}, "aspect_ratio"),  # 2:1 is no supported ratio
        ({"width": 1024, "height": 576, "aspect_ratio": "1:1"}, "aspect_ratio"),
        ({"width": 1024}, "height"),
        ({"height": 1024}, "width"),
        ({"width": 0, "height": 10}, "width"),
    ],
)
def test_nanobanana_bad_pixel_sizes(
    nb: NanoBananaProvider, sizes: dict[str, Any], option: str
) -> None:
    error = rejected(nb, req(**sizes), option)
    if option == "aspect_ratio":
        assert "1:1, 2:3" in error.user_message


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("ratio", [None, "3:2"])
def test_failover_revalidation(mode: Mode, ratio: str | None) -> None:
    """The pipeline hands one provider's validated request (model cleared) to the
    other: with no provider-specific choices it must be accepted both ways."""
    from_ml = ML.validate(req(mode, aspect_ratio=ratio))
    # request.provider means "the member chose": validate must not fill it in,
    # or the pipeline would never fail over.
    assert from_ml.provider is None
    assert NB.validate(replace(from_ml, provider=None, model=None)).mode is mode
    from_nb = NB.validate(req(mode, aspect_ratio=ratio))
    assert ML.validate(replace(from_nb, provider=None, model=None)).mode is mode


def test_nanobanana_takes_no_options(nb: NanoBananaProvider) -> None:
    error = rejected(nb, req(options={"guidance_scale": 7}), "guidance_scale")
    assert "takes no extra options" in error.user_message


def test_nanobanana_safety_checker_proceeds(nb: NanoBananaProvider) -> None:
    assert nb.validate(req(safety_checker=True)).safety_checker is True


def test_nanobanana_upload_needs_bytes(nb: NanoBananaProvider) -> None:
    # Upload transport: a reference with neither bytes nor URL cannot be sent.
    rejected(nb, req(Mode.EDIT, references=(ref(None, data=None),)), "references")
    # Only a URL: sent as a URL even in upload mode.
    assert nb.validate(req(Mode.EDIT, references=(ref(URL, data=None),)))


def test_nanobanana_max_reference_bytes(nb: NanoBananaProvider) -> None:
    assert nb.capabilities.max_reference_bytes == 2_500_000
    assert nb.capabilities.max_samples == 4
    assert nb.capabilities.one_image_per_call


# --------------------------------------------------------------------------- cost tiers


@pytest.mark.parametrize(
    ("mode", "tier"),
    [
        (Mode.TEXT, "text2img"),
        (Mode.EDIT, "nano_banana_img2img"),
        (Mode.BLEND, "nano_banana_multi_ref"),
    ],
)
def test_modelslab_cost_tiers(ml: ModelsLabProvider, mode: Mode, tier: str) -> None:
    assert ml.cost_tier(ml.validate(req(mode))) == tier
    assert tier in make_settings().costs


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({}, []),
        ({"modelslab_api_key": ML_KEY}, ["modelslab"]),
        ({"nanobanana_api_key": NB_KEY}, ["nanobanana"]),
        ({"modelslab_api_key": ML_KEY, "nanobanana_api_key": NB_KEY}, ["modelslab", "nanobanana"]),
        ({"modelslab_api_key": "", "nanobanana_api_key": NB_KEY}, ["nanobanana"]),
    ],
)
async def test_build_providers_only_configured(keys: dict[str, str], expected: list[str]) -> None:
    overrides: dict[str, Any] = {"modelslab_api_key": None, "nanobanana_api_key": None, **keys}
    async with aiohttp.ClientSession() as session:
        providers = build_providers(make_settings(**overrides), session, cast(Any, None))
    assert list(providers) == expected
    for name, provider in providers.items():
        assert provider.name == name
        assert provider.capabilities.provider == name


def test_reprs_hide_keys(ml: ModelsLabProvider, nb: NanoBananaProvider) -> None:
    for provider in (ml, nb):
        assert ML_KEY not in repr(provider) and NB_KEY not in repr(provider)
        assert "[redacted]" in repr(provider)


# --------------------------------------------------------------------------- _http helpers


def _http(secret: str = ML_KEY) -> ProviderHttp:
    return ProviderHttp(
        provider="modelslab",
        display_name="ModelsLab",
        session=_SESSION,
        secret=SecretStr(secret),
        connect_timeout=1,
        retry_attempts=1,
        backoff_max=1,
    )


@pytest.mark.parametrize(
    "text",
    [
        f"Invalid key {ML_KEY} given",
        'key: "abcd1234" is wrong',
        "Authorization: Bearer sk-abcdefgh",
        "token sk-live-abcdef123456 rejected",
        "a" * 40 + " is not a valid key",
    ],
)
def test_sanitise_removes_secrets(text: str) -> None:
    cleaned = _http().sanitise(text)
    for secret in (ML_KEY, "abcd1234", "sk-abcdefgh", "sk-live-abcdef123456", "a" * 40):
        assert secret not in cleaned
    assert "[redacted]" in cleaned


def test_sanitise_truncates_and_flattens() -> None:
    cleaned = _http().sanitise("line one\nline two " + "word " * 100)
    assert "\n" not in cleaned
    assert len(cleaned) <= 200
    assert cleaned.endswith("…")
    assert _http().sanitise({"width": ["must be 1024"]}) == '{"width": ["must be 1024"]}'


def test_redact_body() -> None:
    body = redact_body({"key": ML_KEY, "prompt": "p" * 200, "samples": 1})
    assert body["key"] == "[redacted]"
    assert len(body["prompt"]) == 80
    assert body["samples"] == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2", 2.0), (1.5, 1.5), ("0.25", 0.25), (None, None), ("soon", None), (-3, 0.0)],
)
def test_parse_retry_after(value: Any, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@FAST
@given(st.integers(0, 20), st.one_of(st.none(), st.floats(0, 1000)), st.floats(0.01, 60))
def test_backoff_is_bounded(attempt: int, retry_after: float | None, cap: float) -> None:
    delay = backoff_delay(attempt, retry_after=retry_after, cap=cap)
    assert 0 <= delay <= cap
    if retry_after is not None:
        assert delay >= min(retry_after, cap)


@pytest.mark.parametrize(
    ("value", "number", "whole", "flag"),
    [
        ("512", 512.0, 512, False),
        (2.9, 2.9, 2, True),
        ("x", None, None, False),
        (None, None, None, False),
        (True, None, None, True),
        ("yes", None, None, True),
        ("false", None, None, False),
    ],
)
def test_lenient_readers(value: Any, number: float | None, whole: int | None, flag: bool) -> None:
    assert as_float(value) == number
    assert as_int(value) == whole
    assert as_bool(value) is flag


def test_replace_keeps_options_readonly(ml: ModelsLabProvider) -> None:
    validated = ml.validate(req(options={"guidance_scale": 5}))
    with pytest.raises(TypeError):
        validated.options["guidance_scale"] = 6
    assert replace(validated, prompt="x").options == {"guidance_scale": 5.0}


def test_no_event_loop_needed_for_validation() -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    assert ML.validate(req()).model == "flux"
