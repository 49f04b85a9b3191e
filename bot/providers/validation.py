"""Checks shared by every provider, driven by its ``Capabilities``.

Each check either returns the normalised value or raises ``ValidationError``
whose ``option`` is the API/request name and whose message names the option,
the allowed values and what was given, so a member can fix the request without
reading documentation. The Discord edge and ``/help`` read the same
``Capabilities``, so the words here match the choices they show.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from bot.errors import ValidationError
from bot.models import GenerationRequest, Mode, ReferenceImage
from bot.providers.base import Capabilities, OptionSpec, SizeRule

# Fields of GenerationRequest: naming one of these as an option is a mistake we
# can explain better than "unknown option".
_REQUEST_FIELDS = frozenset(
    {
        "prompt",
        "negative_prompt",
        "model",
        "model_id",
        "samples",
        "seed",
        "width",
        "height",
        "aspect_ratio",
        "size",
        "safety_checker",
        "ref_image",
        "image",
        "references",
        "key",
    }
)

MAX_TEXT_OPTION_LENGTH = 500

OptionCheck = Callable[[Any], Any]


# Echoed values land in a Discord message: escaped, "**x**" or "[a](https://b)" shows
# as typed instead of as formatting or a disguised link.
_MARKDOWN = re.compile(r"([\\*_~|`\[\]<>])")


def _fmt(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    # One line: a newline would start a heading or quote inside the message.
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    text = text if len(text) <= 60 else text[:57] + "..."
    return _MARKDOWN.sub(r"\\\1", text)


def _num(value: float) -> str:
    # "%g" would print 4294967295 as 4.29497e+09.
    if math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def _range_words(minimum: float, maximum: float) -> str:
    if minimum == maximum:
        return _num(minimum)
    return f"{_num(minimum)} to {_num(maximum)}"


# Characters that draw nothing although str.isspace() says otherwise (Hangul fillers,
# the blank Braille pattern): a classic way to send an "empty" message on Discord.
_BLANK_GLYPHS = frozenset("\u115f\u1160\u2800\u3164\uffa0")


def _looks_blank(text: str) -> bool:
    """True when nothing in ``text`` would be visible: white space, control and
    format characters (zero-width space, joiners, direction marks) and blank glyphs."""
    return all(
        ch.isspace() or ch in _BLANK_GLYPHS or unicodedata.category(ch) in ("Cc", "Cf", "Zs")
        for ch in text
    )


def check_prompt(prompt: str, *, max_length: int, option: str = "prompt") -> str:
    """Strip surrounding white space; reject empty or over-long prompts."""
    if not isinstance(prompt, str):
        raise ValidationError(option, f"{option} must be text.")
    text = prompt.strip()
    if _looks_blank(text):
        raise ValidationError(option, f"{option} must not be empty.")
    if len(text) > max_length:
        raise ValidationError(
            option,
            f"{option} must be at most {max_length} characters (got {len(text)}).",
        )
    return text


def check_int(option: str, value: Any, minimum: int, maximum: int) -> int:
    """A whole number in ``[minimum, maximum]``; numeric strings are accepted."""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if number is None or not minimum <= number <= maximum:
        raise ValidationError(
            option,
            f"{option} must be a whole number {_range_words(minimum, maximum)} "
            f"(got {_fmt(value)}).",
        )
    return number


def check_float(option: str, value: Any, minimum: float, maximum: float) -> float:
    """A finite number in ``[minimum, maximum]``; numeric strings are accepted."""
    number: float | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or not minimum <= number <= maximum:
        raise ValidationError(
            option,
            f"{option} must be a number {_range_words(minimum, maximum)} (got {_fmt(value)}).",
        )
    return number


def check_choice(option: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of ``choices``, matched case-insensitively; returns the canonical spelling."""
    if isinstance(value, int | str) and not isinstance(value, bool):
        wanted = str(value).strip().casefold()
        for choice in choices:
            if choice.casefold() == wanted:
                return choice
    raise ValidationError(
        option, f"{option} must be one of {', '.join(choices)} (got {_fmt(value)})."
    )


def check_flag(option: str, value: Any) -> str:
    """A yes/no flag as the APIs spell it: returns ``"yes"`` or ``"no"``."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        word = value.strip().casefold()
        if word in ("yes", "true", "on"):
            return "yes"
        if word in ("no", "false", "off"):
            return "no"
    raise ValidationError(option, f"{option} must be yes or no (got {_fmt(value)}).")


def check_text(option: str, value: Any, *, max_length: int = MAX_TEXT_OPTION_LENGTH) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(option, f"{option} must be non-empty text (got {_fmt(value)}).")
    text = value.strip()
    if len(text) > max_length:
        raise ValidationError(
            option, f"{option} must be at most {max_length} characters (got {len(text)})."
        )
    if any(ord(ch) < 32 for ch in text):
        raise ValidationError(option, f"{option} must be a single line of text.")
    return text


def check_url(option: str, value: Any, *, schemes: tuple[str, ...] = ("https",)) -> str:
    text = check_text(option, value, max_length=2000)
    parts = urlsplit(text)
    if parts.scheme not in schemes or not parts.netloc:
        wanted = " or ".join(f"{s}://" for s in schemes)
        raise ValidationError(option, f"{option} must be a {wanted} URL (got {_fmt(value)}).")
    return text


def check_mode(caps: Capabilities, mode: Mode, *, display_name: str) -> None:
    if not caps.supports(mode):
        modes = ", ".join(m.value for m in caps.modes)
        raise ValidationError("mode", f"{display_name} cannot do {mode.value}; it can do {modes}.")


def reference_count_words(low: int, high: int) -> str:
    if high == 0:
        return "no reference images"
    if low == high:
        return f"exactly {low} reference image" + ("" if low == 1 else "s")
    return f"{low} to {high} reference images"


def check_reference_count(caps: Capabilities, mode: Mode, count: int) -> None:
    low, high = caps.reference_limits.get(mode, (0, 0))
    if not low <= count <= high:
        hint = ""
        if mode is Mode.TEXT:
            hint = "; use edit for one image or blend for several"
        elif mode is Mode.EDIT and count > 1:
            hint = "; use blend to combine several images"
        raise ValidationError(
            "references",
            f"{mode.value} takes {reference_count_words(low, high)} (got {count}){hint}.",
        )


def check_samples(caps: Capabilities, samples: Any) -> int:
    if caps.max_samples == 1:
        if samples in (1, "1") and not isinstance(samples, bool):
            return 1
        raise ValidationError(
            "samples",
            f"samples must be 1 for {caps.provider}: it makes one image per request "
            f"(got {_fmt(samples)}).",
        )
    value = check_int("samples", samples, 1, caps.max_samples)
    return value


def check_seed(caps: Capabilities, seed: Any) -> int | None:
    if seed is None:
        return None
    low, high = caps.seed_range
    return check_int("seed", seed, low, high)


def check_dimension(option: str, value: Any, rule: SizeRule) -> int:
    """``width``/``height`` in the rule's range and on its grid. Off-grid values are
    rejected, not rounded: a member who typed 1000 learns the nearest valid sizes."""
    allowed = f"{rule.minimum} to {rule.maximum}"
    if rule.multiple_of > 1:
        allowed += f" and a multiple of {rule.multiple_of}"
    try:
        number = check_int(option, value, rule.minimum, rule.maximum)
    except ValidationError:
        raise ValidationError(option, f"{option} must be {allowed} (got {_fmt(value)}).") from None
    if number % rule.multiple_of:
        below = max(number - number % rule.multiple_of, rule.minimum)
        above = min(number - number % rule.multiple_of + rule.multiple_of, rule.maximum)
        raise ValidationError(
            option, f"{option} must be {allowed} (got {number}; try {below} or {above})."
        )
    return number


def check_aspect_ratio(caps: Capabilities, value: Any) -> str:
    return check_choice("aspect_ratio", value, caps.aspect_ratios)


def check_size_tier(caps: Capabilities, value: Any) -> str:
    return check_choice("size", value, caps.size_tiers)


def _snap(value: float, rule: SizeRule) -> int:
    step = rule.multiple_of
    snapped = round(value / step) * step
    low = -(-rule.minimum // step) * step  # smallest multiple inside the range
    high = rule.maximum // step * step
    return max(low, min(high, snapped))


def size_for_aspect(aspect_ratio: str, rule: SizeRule) -> tuple[int, int]:
    """Width and height for an aspect ratio: the long side at the rule's maximum,
    the short side in proportion, on the grid and clamped into range (so a ratio
    too extreme for a 1024 minimum comes out as close as the API allows)."""
    w_part, h_part = (int(p) for p in aspect_ratio.split(":"))
    if w_part >= h_part:
        return _snap(rule.maximum, rule), _snap(rule.maximum * h_part / w_part, rule)
    return _snap(rule.maximum * w_part / h_part, rule), _snap(rule.maximum, rule)


def nearest_aspect_ratio(
    width: int, height: int, ratios: tuple[str, ...], *, tolerance: float = 0.05
) -> str | None:
    """The ratio in ``ratios`` closest to ``width``:``height``, if within
    ``tolerance`` (relative); pixel sizes snapped to a grid are never exact."""
    wanted = width / height
    best: tuple[float, str] | None = None
    for ratio in ratios:
        w_part, h_part = (int(p) for p in ratio.split(":"))
        error = abs(w_part / h_part - wanted) / wanted
        if best is None or error < best[0]:
            best = (error, ratio)
    if best is None or best[0] > tolerance:
        return None
    return best[1]


def fit_size(width: int, height: int, rule: SizeRule) -> tuple[int, int]:
    """The closest valid size to ``width``×``height`` keeping its proportions where
    the range allows: scale down to fit the maximum, up to reach the minimum."""
    scale = 1.0
    if max(width, height) > rule.maximum:
        scale = rule.maximum / max(width, height)
    if min(width, height) * scale < rule.minimum:
        scale = rule.minimum / min(width, height)
    return _snap(width * scale, rule), _snap(height * scale, rule)


def check_options(
    caps: Capabilities,
    mode: Mode,
    options: Mapping[str, Any],
    *,
    custom: Mapping[str, OptionCheck] | None = None,
) -> dict[str, Any]:
    """Validate provider-specific options by their API names.

    Returns them normalised (flags as ``"yes"``/``"no"``, numbers as numbers,
    choices in canonical spelling). ``custom`` overrides the kind-based check for
    options whose rule an ``OptionSpec`` cannot express (comma-separated lists,
    URLs).
    """
    custom = custom or {}
    allowed = [name for name, spec in caps.options.items() if mode in spec.modes]
    result: dict[str, Any] = {}
    for name, value in options.items():
        spec = caps.options.get(name)
        if spec is None or mode not in spec.modes:
            raise ValidationError(name, _unknown_option_message(caps, mode, name, allowed))
        if value is None:
            continue  # None means "provider default", as if the option were absent
        check = custom.get(name)
        result[name] = check(value) if check is not None else check_option(spec, value)
    return result


def _unknown_option_message(caps: Capabilities, mode: Mode, name: str, allowed: list[str]) -> str:
    if name in _REQUEST_FIELDS:
        return f"{name} is not an extra option; set it with its own field or command option."
    spec = caps.options.get(name)
    if spec is not None:
        modes = ", ".join(sorted(m.value for m in spec.modes))
        return f"{name} only applies to {modes} on {caps.provider} (not {mode.value})."
    if not allowed:
        return f"{caps.provider} takes no extra options for {mode.value} (got {name})."
    return (
        f"{name} is not an option of {caps.provider} for {mode.value}; "
        f"options are {', '.join(sorted(allowed))}."
    )


def check_option(spec: OptionSpec, value: Any) -> Any:
    if spec.kind == "flag":
        return check_flag(spec.name, value)
    if spec.kind == "choice":
        return check_choice(spec.name, value, spec.choices)
    if spec.kind == "int":
        low = int(spec.minimum) if spec.minimum is not None else -(2**63)
        high = int(spec.maximum) if spec.maximum is not None else 2**63 - 1
        return check_int(spec.name, value, low, high)
    if spec.kind == "float":
        low_f = spec.minimum if spec.minimum is not None else -math.inf
        high_f = spec.maximum if spec.maximum is not None else math.inf
        return check_float(spec.name, value, low_f, high_f)
    return check_text(spec.name, value)


def check_common(
    caps: Capabilities,
    request: GenerationRequest,
    *,
    display_name: str,
    max_prompt_length: int,
) -> GenerationRequest:
    """The checks every provider makes the same way: mode, prompt, reference
    count, samples, seed, aspect ratio. Returns the request with the prompt
    stripped and numbers normalised; provider-specific fields are left alone."""
    check_mode(caps, request.mode, display_name=display_name)
    prompt = check_prompt(request.prompt, max_length=max_prompt_length)
    negative = request.negative_prompt
    if negative is not None:
        negative = negative.strip() or None
        if negative is not None:
            negative = check_prompt(
                negative, max_length=max_prompt_length, option="negative_prompt"
            )
    check_reference_count(caps, request.mode, len(request.references))
    samples = check_samples(caps, request.samples)
    seed = check_seed(caps, request.seed)
    aspect = (
        check_aspect_ratio(caps, request.aspect_ratio) if request.aspect_ratio is not None else None
    )
    return replace(
        request,
        prompt=prompt,
        negative_prompt=negative,
        samples=samples,
        seed=seed,
        aspect_ratio=aspect,
    )


def reference_has_bytes_or_url(ref: ReferenceImage) -> bool:
    return bool(ref.data) or bool(ref.url)
