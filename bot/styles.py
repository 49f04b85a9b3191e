"""Styles: a prompt template, an optional negative prompt and optional defaults.

A few built-in styles ship with the bot; a guild's moderators add their own
(``/style add``), which live in the ``guild_styles`` table (migration 009).
Everyone picks one with the ``style`` option or ``--style NAME`` in the prompt.
No Discord here: the ``/style`` cog and the CLI share it.

A style's template holds ``{prompt}`` where the member's prompt goes; other
braces are plain text (no ``str.format``, so a template cannot reach anything).
Templates may not contain prompt parameters (``--ar``...): defaults are fields
of their own, and a styled prompt must read the same when parsed again (the
Vary and Edit buttons start from it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from bot.config import PROVIDER_NAMES
from bot.errors import ValidationError
from bot.prompt_params import SIZES, STYLE_NAME, has_parameters
from bot.providers.base import ASPECT_RATIOS

PLACEHOLDER = "{prompt}"
MAX_TEMPLATE_LENGTH = 1000
MAX_NEGATIVE_LENGTH = 1000
MAX_DESCRIPTION_LENGTH = 100
MAX_MODEL_LENGTH = 100
MAX_GUILD_STYLES = 50


@dataclass(frozen=True, slots=True)
class Style:
    name: str
    template: str
    negative_prompt: str | None = None
    aspect_ratio: str | None = None
    size: str | None = None
    provider: str | None = None
    model: str | None = None
    description: str | None = None
    builtin: bool = False

    def apply(self, prompt: str) -> str:
        return self.template.replace(PLACEHOLDER, prompt.strip())

    def summary(self) -> str:
        """One line for lists and autocomplete: description or template, then defaults."""
        text = self.description or self.template
        defaults = [
            f"{label} {value}"
            for label, value in (
                ("ar", self.aspect_ratio),
                ("size", self.size),
                ("provider", self.provider),
                ("model", self.model),
            )
            if value
        ]
        return text + (f" ({', '.join(defaults)})" if defaults else "")


BUILTIN_STYLES: tuple[Style, ...] = (
    Style(
        "photo",
        "{prompt}, professional photograph, natural light, sharp focus, high detail",
        negative_prompt="painting, drawing, illustration, cartoon, blurry",
        description="photorealistic, natural light",
        builtin=True,
    ),
    Style(
        "cinematic",
        "cinematic film still of {prompt}, dramatic lighting, shallow depth of field, "
        "anamorphic, film grain",
        negative_prompt="cartoon, flat lighting, blurry",
        aspect_ratio="21:9",
        description="film still, dramatic light, wide",
        builtin=True,
    ),
    Style(
        "anime",
        "anime illustration of {prompt}, clean line art, cel shading, vibrant colours",
        negative_prompt="photo, realistic, 3d render",
        description="anime, clean lines, cel shading",
        builtin=True,
    ),
    Style(
        "watercolor",
        "watercolour painting of {prompt}, soft washes, paper texture, loose brushwork",
        negative_prompt="photo, sharp edges, 3d render",
        description="soft watercolour on paper",
        builtin=True,
    ),
    Style(
        "pixel-art",
        "pixel art of {prompt}, 16-bit, limited palette, crisp pixels",
        negative_prompt="blurry, smooth gradients, photo",
        aspect_ratio="1:1",
        description="16-bit pixel art",
        builtin=True,
    ),
)
_BUILTIN = {style.name: style for style in BUILTIN_STYLES}


def check_name(value: Any) -> str:
    name = value.strip().casefold() if isinstance(value, str) else ""
    if not STYLE_NAME.fullmatch(name):
        raise ValidationError(
            "name",
            "A style name is 1 to 32 lower-case letters, digits, - or _, starting with a "
            f"letter or digit (got {_shown(value)}).",
        )
    return name


def check_style(style: Style) -> Style:
    """Validate every field of a guild style; returns it normalised."""
    name = check_name(style.name)
    template = " ".join(style.template.split()) if isinstance(style.template, str) else ""
    if PLACEHOLDER not in template:
        raise ValidationError(
            "template",
            f"A template needs {PLACEHOLDER} where the member's prompt goes, e.g. "
            f"“oil painting of {PLACEHOLDER}, thick brush strokes”.",
        )
    if len(template) > MAX_TEMPLATE_LENGTH:
        raise ValidationError(
            "template",
            f"A template must be at most {MAX_TEMPLATE_LENGTH} characters (got {len(template)}).",
        )
    if has_parameters(template):
        raise ValidationError(
            "template",
            "A template cannot contain parameters such as --ar; set the style's "
            "aspect_ratio, size, provider or model instead.",
        )
    negative = _optional_text(style.negative_prompt, "negative_prompt", MAX_NEGATIVE_LENGTH)
    description = _optional_text(style.description, "description", MAX_DESCRIPTION_LENGTH)
    model = _optional_text(style.model, "model", MAX_MODEL_LENGTH)
    if negative is not None and has_parameters(negative):
        raise ValidationError(
            "negative_prompt", "A style's negative prompt cannot contain parameters such as --ar."
        )
    return replace(
        style,
        name=name,
        template=template,
        negative_prompt=negative,
        description=description,
        model=model,
        aspect_ratio=_optional_choice(style.aspect_ratio, "aspect_ratio", ASPECT_RATIOS),
        size=_optional_choice(style.size, "size", SIZES),
        provider=_optional_choice(style.provider, "provider", PROVIDER_NAMES),
        builtin=False,
    )


def _optional_text(value: str | None, option: str, limit: int) -> str | None:
    if value is None:
        return None
    text = " ".join(value.split())
    if not text:
        return None
    if len(text) > limit:
        raise ValidationError(option, f"{option} must be at most {limit} characters.")
    return text


def _optional_choice(value: str | None, option: str, choices: Sequence[str]) -> str | None:
    if value is None or not value.strip():
        return None
    wanted = value.strip().casefold()
    for choice in choices:
        if choice.casefold() == wanted:
            return choice
    raise ValidationError(
        option, f"{option} must be one of {', '.join(choices)} (got {_shown(value)})."
    )


def _shown(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


class Database(Protocol):
    """``JobStore.database``: ``?`` placeholders on SQLite and PostgreSQL alike."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]: ...


_COLUMNS = "name, template, negative_prompt, aspect_ratio, size, provider, model, description"


class StyleStore:
    """Built-in styles and each guild's own."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(self, guild_id: str) -> list[Style]:
        """Built-ins first, then the guild's styles by name."""
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM guild_styles WHERE guild_id = ? ORDER BY name",  # noqa: S608
            (guild_id,),
        )
        return [*BUILTIN_STYLES, *(_style(row) for row in rows)]

    async def get(self, guild_id: str, name: str) -> Style | None:
        key = name.strip().casefold()
        if key in _BUILTIN:
            return _BUILTIN[key]
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM guild_styles WHERE guild_id = ? AND name = ?",  # noqa: S608
            (guild_id, key),
        )
        return _style(rows[0]) if rows else None

    async def resolve(self, guild_id: str, name: str) -> Style:
        """The style called ``name`` here, or a ValidationError listing the styles."""
        style = await self.get(guild_id, name)
        if style is not None:
            return style
        known = ", ".join(s.name for s in await self.list(guild_id))
        raise ValidationError(
            "style", f"There is no style called {_shown(name)} here. Styles: {known}."
        )

    async def add(self, guild_id: str, style: Style, *, by: str) -> Style:
        style = check_style(style)
        if style.name in _BUILTIN:
            raise ValidationError("name", f"{style.name} is a built-in style; choose another name.")
        count = await self._db.fetch(
            "SELECT COUNT(*) FROM guild_styles WHERE guild_id = ?", (guild_id,)
        )
        if int(count[0][0]) >= MAX_GUILD_STYLES:
            raise ValidationError(
                "name",
                f"This server has {MAX_GUILD_STYLES} styles, the most allowed; remove one first.",
            )
        inserted = await self._db.execute(
            f"INSERT INTO guild_styles (guild_id, {_COLUMNS}, updated_by, updated_at)"  # noqa: S608
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (guild_id, *_values(style), by, _now()),
        )
        if inserted != 1:
            raise ValidationError(
                "name", f"There is already a style called {style.name}; use /style edit."
            )
        return style

    async def edit(self, guild_id: str, name: str, *, by: str, **changes: str | None) -> Style:
        """Change some fields of a guild style; an empty string clears an optional one."""
        current = await self.get(guild_id, name)
        if current is None or current.builtin:
            what = "a built-in style and cannot be edited" if current else "not a style here"
            raise ValidationError("name", f"{_shown(name)} is {what}.")
        given = {key: value for key, value in changes.items() if value is not None}
        if not given:
            raise ValidationError("name", "Give at least one thing to change.")
        if "template" in given and not given["template"].strip():
            raise ValidationError("template", "A style needs a template.")
        known = {"template", "negative_prompt", "aspect_ratio", "size", "provider", "model"}
        unknown = set(given) - known - {"description"}
        if unknown:
            raise ValueError(f"not style fields: {sorted(unknown)}")
        fields: dict[str, Any] = dict(given)
        updated = check_style(replace(current, **fields))
        await self._db.execute(
            "UPDATE guild_styles SET template = ?, negative_prompt = ?, aspect_ratio = ?,"
            " size = ?, provider = ?, model = ?, description = ?, updated_by = ?,"
            " updated_at = ? WHERE guild_id = ? AND name = ?",
            (*_values(updated)[1:], by, _now(), guild_id, updated.name),
        )
        return updated

    async def remove(self, guild_id: str, name: str) -> None:
        key = name.strip().casefold()
        if key in _BUILTIN:
            raise ValidationError("name", f"{key} is a built-in style and cannot be removed.")
        removed = await self._db.execute(
            "DELETE FROM guild_styles WHERE guild_id = ? AND name = ?", (guild_id, key)
        )
        if removed != 1:
            raise ValidationError("name", f"There is no style called {_shown(name)} here.")


def _values(style: Style) -> tuple[Any, ...]:
    return (
        style.name,
        style.template,
        style.negative_prompt,
        style.aspect_ratio,
        style.size,
        style.provider,
        style.model,
        style.description,
    )


def _style(row: Sequence[Any]) -> Style:
    return Style(
        name=row[0],
        template=row[1],
        negative_prompt=row[2],
        aspect_ratio=row[3],
        size=row[4],
        provider=row[5],
        model=row[6],
        description=row[7],
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()
