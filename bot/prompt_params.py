"""Midjourney-style parameters typed into a prompt: ``a lighthouse --ar 16:9 --no boats``.

Image-bot members type these out of habit, so every edge (slash commands, the
prompt modals, the CLI) reads them the same way through ``parse``. No Discord
here: the cogs and the CLI share it.

The grammar, chosen to be strict enough that a typo is caught rather than drawn:

* A parameter is ``--name`` (or ``—name``/``–name``: phones turn ``--`` into a
  dash) standing alone as a word. The prompt is the text before the first one;
  everything after belongs to parameters.
* ``--no`` takes all the text up to the next parameter and may repeat (the
  pieces join with commas); ``--enhance`` takes ``yes``/``no`` or nothing (yes);
  every other parameter takes exactly one word. Text left over after a value is
  an error that says parameters go at the end, not a silent drop.
* Values are checked against the widest set any provider takes; the chosen
  provider's capabilities check them again when the request is validated.
* An unknown, repeated, empty or invalid parameter raises ``ParameterError``
  naming it and its valid values, before anything is reserved.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bot.errors import ValidationError
from bot.providers.base import ASPECT_RATIOS
from bot.providers.modelslab import INFERENCE_STEPS, OPTION_SPECS, SCHEDULERS, SEED_RANGE

SIZES: tuple[str, ...] = ("1k", "2k", "4k")
# Style names are short slugs so they can be typed after --style and offered as
# autocomplete choices.
STYLE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

_GUIDANCE = next(spec for spec in OPTION_SPECS if spec.name == "guidance_scale")
GUIDANCE_RANGE: tuple[float, float] = (
    float(_GUIDANCE.minimum if _GUIDANCE.minimum is not None else 1),
    float(_GUIDANCE.maximum if _GUIDANCE.maximum is not None else 20),
)

# A parameter word: dashes then a name, standing alone (start or after white space).
_PARAMETER = re.compile(r"(?<!\S)(?:--|\u2014|\u2013)([A-Za-z][A-Za-z0-9_-]*)(?=\s|$)")
_YES = frozenset({"yes", "true", "on", "1"})
_NO = frozenset({"no", "false", "off", "0"})


class ParameterError(ValidationError):
    """A parameter in the prompt is unknown, repeated or has a bad value.
    ``option`` is the parameter as typed by its canonical name (``--ar``)."""


@dataclass(frozen=True, slots=True)
class PromptParams:
    """A prompt split into its text and the parameters typed after it."""

    prompt: str
    aspect_ratio: str | None = None
    negative: tuple[str, ...] = ()  # one entry per --no
    seed: int | None = None
    size: str | None = None
    steps: str | None = None  # one of INFERENCE_STEPS, as the API option spells it
    guidance: float | None = None
    scheduler: str | None = None
    enhance: bool | None = None
    style: str | None = None

    @property
    def negative_prompt(self) -> str | None:
        return ", ".join(self.negative) or None

    def options(self) -> dict[str, Any]:
        """The provider options these parameters set, by their API names."""
        options: dict[str, Any] = {}
        if self.steps is not None:
            options["num_inference_steps"] = self.steps
        if self.guidance is not None:
            options["guidance_scale"] = self.guidance
        if self.scheduler is not None:
            options["scheduler"] = self.scheduler
        if self.enhance is not None:
            options["enhance_prompt"] = "yes" if self.enhance else "no"
        return options

    def render(self) -> str:
        """The prompt as a member would type it, parameters in canonical form."""
        parts = [self.prompt]
        if self.aspect_ratio is not None:
            parts.append(f"--ar {self.aspect_ratio}")
        parts.extend(f"--no {text}" for text in self.negative)
        if self.seed is not None:
            parts.append(f"--seed {self.seed}")
        if self.size is not None:
            parts.append(f"--size {self.size}")
        if self.steps is not None:
            parts.append(f"--steps {self.steps}")
        if self.guidance is not None:
            parts.append(f"--guidance {_number(self.guidance)}")
        if self.scheduler is not None:
            parts.append(f"--scheduler {self.scheduler}")
        if self.enhance is not None:
            parts.append(f"--enhance {'yes' if self.enhance else 'no'}")
        if self.style is not None:
            parts.append(f"--style {self.style}")
        return " ".join(part for part in parts if part)


@dataclass(frozen=True, slots=True)
class ParamSpec:
    name: str  # canonical, without dashes
    field: str  # the PromptParams field it sets
    values: str  # the valid values in words, for messages and /help
    convert: Callable[[str], Any]  # raises ValueError when the value is not valid
    aliases: tuple[str, ...] = ()
    text: bool = False  # takes all the text up to the next parameter
    optional_value: bool = False
    repeatable: bool = False
    example: str = ""
    description: str = ""


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def convert(value: str) -> str:
        wanted = value.casefold()
        for choice in choices:
            if choice.casefold() == wanted:
                return choice
        raise ValueError(value)

    return convert


def _seed(value: str) -> int:
    if not re.fullmatch(r"\d{1,10}", value):
        raise ValueError(value)
    number = int(value)
    if not SEED_RANGE[0] <= number <= SEED_RANGE[1]:
        raise ValueError(value)
    return number


def _guidance(value: str) -> float:
    if not re.fullmatch(r"\d{1,3}(?:\.\d{1,4})?", value):
        raise ValueError(value)
    number = float(value)
    low, high = GUIDANCE_RANGE
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(value)
    return number


def _scheduler(value: str) -> str:
    wanted = value.casefold()
    for name in SCHEDULERS:
        # "EulerDiscrete" is enough: the suffix is the same on every one.
        if wanted in (name.casefold(), name.casefold().removesuffix("scheduler")):
            return name
    raise ValueError(value)


def _enhance(value: str) -> bool:
    word = value.casefold()
    if word in _YES or word == "":
        return True
    if word in _NO:
        return False
    raise ValueError(value)


def _style(value: str) -> str:
    name = value.casefold()
    if not STYLE_NAME.fullmatch(name):
        raise ValueError(value)
    return name


def _no(value: str) -> str:
    return value


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


SPECS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "ar",
        "aspect_ratio",
        "one of " + ", ".join(ASPECT_RATIOS),
        _choice(ASPECT_RATIOS),
        aliases=("aspect",),
        example="--ar 16:9",
        description="shape of the image",
    ),
    ParamSpec(
        "no",
        "negative",
        "the things to leave out, e.g. --no trees, cars",
        _no,
        text=True,
        repeatable=True,
        example="--no trees, cars",
        description="what to leave out (adds to negative_prompt)",
    ),
    ParamSpec(
        "seed",
        "seed",
        f"a whole number {SEED_RANGE[0]} to {SEED_RANGE[1]}",
        _seed,
        example="--seed 42",
        description="repeat a result",
    ),
    ParamSpec(
        "size",
        "size",
        "one of " + ", ".join(SIZES),
        _choice(SIZES),
        example="--size 2k",
        description="resolution tier, where the provider offers it",
    ),
    ParamSpec(
        "steps",
        "steps",
        "one of " + ", ".join(INFERENCE_STEPS),
        _choice(INFERENCE_STEPS),
        example="--steps 31",
        description="denoising steps (ModelsLab text to image)",
    ),
    ParamSpec(
        "guidance",
        "guidance",
        f"a number {_number(GUIDANCE_RANGE[0])} to {_number(GUIDANCE_RANGE[1])}",
        _guidance,
        aliases=("cfg",),
        example="--guidance 7.5",
        description="how closely to follow the prompt (ModelsLab text to image)",
    ),
    ParamSpec(
        "scheduler",
        "scheduler",
        "a ModelsLab scheduler such as " + ", ".join(SCHEDULERS[:4]) + ", ...",
        _scheduler,
        example="--scheduler UniPCMultistepScheduler",
        description="sampling scheduler (ModelsLab text to image)",
    ),
    ParamSpec(
        "enhance",
        "enhance",
        "yes or no (nothing means yes)",
        _enhance,
        optional_value=True,
        example="--enhance no",
        description="let ModelsLab rewrite the prompt (ModelsLab text to image)",
    ),
    ParamSpec(
        "style",
        "style",
        "a style name (see /style list)",
        _style,
        example="--style anime",
        description="a saved style: prompt template and defaults",
    ),
)

_BY_NAME: Mapping[str, ParamSpec] = {
    name: spec for spec in SPECS for name in (spec.name, *spec.aliases)
}


def names() -> str:
    return ", ".join(f"--{spec.name}" for spec in SPECS)


def _unknown(name: str) -> ParameterError:
    close = difflib.get_close_matches(name.casefold(), list(_BY_NAME), n=1, cutoff=0.6)
    hint = f" Did you mean --{_BY_NAME[close[0]].name}?" if close else ""
    return ParameterError(
        f"--{name}",
        f"--{name} is not a parameter.{hint} Parameters are {names()}.",
    )


def parse(text: str) -> PromptParams:
    """Split ``text`` into the prompt and its parameters; raises ``ParameterError``."""
    matches = list(_PARAMETER.finditer(text))
    if not matches:
        return PromptParams(prompt=text.strip())
    values: dict[str, Any] = {}
    negative: list[str] = []
    for index, match in enumerate(matches):
        typed = match.group(1)
        spec = _BY_NAME.get(typed.casefold())
        if spec is None:
            raise _unknown(typed)
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        raw = " ".join(text[match.end() : end].split())
        option = f"--{spec.name}"
        if spec.field in values and not spec.repeatable:
            raise ParameterError(option, f"{option} is given twice; give it once.")
        if not raw and not spec.optional_value:
            raise ParameterError(option, f"{option} needs a value: {spec.values}.")
        if raw and " " in raw and not spec.text:
            first, rest = raw.split(" ", 1)
            raise ParameterError(
                option,
                f"{option} takes one value ({spec.values}); “{_shown(rest)}” after "
                f"{option} {_shown(first)} is not a parameter. Put the prompt first and "
                "the parameters after it.",
            )
        try:
            value = spec.convert(raw)
        except ValueError:
            raise ParameterError(
                option, f"{option} must be {spec.values} (got {_shown(raw)})."
            ) from None
        if spec.repeatable:
            negative.append(value)
        else:
            values[spec.field] = value
    return PromptParams(
        prompt=text[: matches[0].start()].strip(), negative=tuple(negative), **values
    )


def has_parameters(text: str) -> bool:
    """True when ``text`` holds anything ``parse`` would read as a parameter."""
    return _PARAMETER.search(text) is not None


def _shown(value: str) -> str:
    """A value echoed in a message: one line, short, no Markdown effects."""
    text = " ".join(value.split())
    text = text if len(text) <= 40 else text[:37] + "..."
    return re.sub(r"([\\*_~|`\[\]<>])", r"\\\1", text)


def describe() -> list[ParamSpec]:
    """Every parameter with an example, a description and its valid values (for
    /help and the README), in the order members usually type them."""
    return list(SPECS)
