"""A loopback Discord (REST + gateway + CDN) that the real, unmodified discord.py talks to.

Pointing discord.py at it takes exactly two class attributes, set before ``login``::

    discord.http.Route.BASE = emulator.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(emulator.gateway_url)

``Route.BASE`` covers every REST call, including interaction callbacks and interaction
webhooks (``discord.webhook.async_`` builds its URLs from the same ``Route`` class).
``AutoShardedClient`` takes the gateway URL from ``GET /gateway/bot`` and resumes at
READY's ``resume_gateway_url``; both point here.  ``DEFAULT_GATEWAY`` matters when the
shard count is passed explicitly and when a session is invalidated and re-identified.

What is emulated, and how closely, is documented on :class:`DiscordEmulator`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import hmac
import importlib
import io
import json
import logging
import math
import mimetypes
import os
import re
import secrets
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, NamedTuple, Self
from urllib.parse import quote

import yarl
from aiohttp import BodyPartReader, WSMsgType, web

__all__ = [
    "AttachmentRecord",
    "Callback",
    "Channel",
    "DiscordEmulator",
    "Guild",
    "InteractionRecord",
    "Member",
    "MessageRecord",
    "OpenAPISpec",
    "RecordedRequest",
    "Rejection",
    "Role",
    "UploadedFile",
]

log = logging.getLogger(__name__)

JSON = dict[str, Any]

DISCORD_EPOCH_MS = 1_420_070_400_000
API_VERSION = 10

# Permission bits the emulator reasons about.
ADMINISTRATOR = 1 << 3
ALL_PERMISSIONS = (1 << 54) - 1  # the spec's maximum for permission bitfields
# What a fresh guild grants @everyone (Discord's default role permissions).
DEFAULT_EVERYONE_PERMISSIONS = 1071698660929
DEFAULT_BOT_PERMISSIONS = (
    (1 << 6)  # add reactions
    | (1 << 10)  # view channel
    | (1 << 11)  # send messages
    | (1 << 14)  # embed links
    | (1 << 15)  # attach files
    | (1 << 16)  # read message history
    | (1 << 18)  # use external emojis
    | (1 << 31)  # use application commands
    | (1 << 38)  # send messages in threads
)
# What the bot may do in a member's DM with it: no guild, so no roles or overwrites.
DM_BOT_PERMISSIONS = DEFAULT_BOT_PERMISSIONS & ~(1 << 38)

# Gateway intents the emulator honours.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT

# Message flags.
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_IS_VOICE_MESSAGE = 1 << 13
FLAG_IS_COMPONENTS_V2 = 1 << 15
_CREATE_FLAGS = (
    FLAG_SUPPRESS_EMBEDS
    | FLAG_SUPPRESS_NOTIFICATIONS
    | FLAG_IS_VOICE_MESSAGE
    | FLAG_IS_COMPONENTS_V2
)

# Interaction and callback types.
INTERACTION_APPLICATION_COMMAND = 2
INTERACTION_COMPONENT = 3
INTERACTION_AUTOCOMPLETE = 4
INTERACTION_MODAL_SUBMIT = 5
CALLBACK_PONG = 1
CALLBACK_MESSAGE = 4
CALLBACK_DEFERRED_MESSAGE = 5
CALLBACK_DEFERRED_UPDATE = 6
CALLBACK_UPDATE_MESSAGE = 7
CALLBACK_AUTOCOMPLETE = 8
CALLBACK_MODAL = 9
_VALID_CALLBACKS: Mapping[int, frozenset[int]] = {
    INTERACTION_APPLICATION_COMMAND: frozenset(
        {CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE, CALLBACK_MODAL}
    ),
    INTERACTION_COMPONENT: frozenset(
        {
            CALLBACK_MESSAGE,
            CALLBACK_DEFERRED_MESSAGE,
            CALLBACK_DEFERRED_UPDATE,
            CALLBACK_UPDATE_MESSAGE,
            CALLBACK_MODAL,
        }
    ),
    INTERACTION_AUTOCOMPLETE: frozenset({CALLBACK_AUTOCOMPLETE}),
    INTERACTION_MODAL_SUBMIT: frozenset(
        {
            CALLBACK_MESSAGE,
            CALLBACK_DEFERRED_MESSAGE,
            CALLBACK_DEFERRED_UPDATE,
            CALLBACK_UPDATE_MESSAGE,
        }
    ),
}

MAX_FILES_PER_MESSAGE = 10
CHANNEL_DM = 1
CONTEXT_GUILD = 0
CONTEXT_BOT_DM = 1
CANNOT_MESSAGE_USER = 50007
DM_UPLOAD_LIMIT = 10 * 1024 * 1024  # a DM has no guild boost: the base limit
MAX_CONTENT_LENGTH = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL_CHARS = 6000

_EMPTY_MAPPING: Mapping[str, Any] = MappingProxyType({})

# Documented by Discord ("Refresh Attachment URLs") but missing from the published
# OpenAPI spec; the emulator checks their bodies itself.
OUTSIDE_PUBLISHED_SPEC = frozenset({"/attachments/refresh-urls"})
MAX_REFRESH_URLS = 50


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def snowflake_time(snowflake: int) -> datetime:
    return datetime.fromtimestamp(((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000, UTC)


class SnowflakeGenerator:
    """Timestamp-based ids, strictly increasing.

    Every id gets its own millisecond so consecutive guild ids land on different shards
    (``(id >> 22) % shard_count``) the way ids minted at different times do on Discord.
    """

    def __init__(self, worker: int = 1, process: int = 1) -> None:
        self._worker = worker & 0x1F
        self._process = process & 0x1F
        self._last_ms = 0
        self._increment = 0

    def __call__(self) -> int:
        now_ms = int(time.time() * 1000)
        self._last_ms = max(now_ms, self._last_ms + 1)
        self._increment = (self._increment + 1) & 0xFFF
        return (
            ((self._last_ms - DISCORD_EPOCH_MS) << 22)
            | (self._worker << 17)
            | (self._process << 12)
            | self._increment
        )


# --------------------------------------------------------------------------------------
# OpenAPI request-body validation
# --------------------------------------------------------------------------------------


def running_in_ci() -> bool:
    """``CI=true`` (as GitHub Actions, GitLab and most CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def default_spec_path() -> Path:
    override = os.environ.get("DISCORD_OPENAPI_SPEC")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "shared" / "discord-api-spec" / "openapi.json"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _type_matches(value: Any, expected: str) -> bool:
    actual = _json_type(value)
    if expected == actual:
        return True
    if expected == "number" and actual == "integer":
        return True
    return expected == "integer" and actual == "number" and float(value).is_integer()


def _json_equal(left: Any, right: Any) -> bool:
    # Python's True == 1 must not let a boolean satisfy an integer const or enum.
    return _json_type(left) == _json_type(right) and bool(left == right)


def _template_regex(template: str) -> re.Pattern[str]:
    """``/channels/{channel_id}`` -> a regex capturing ``channel_id``."""
    parts = []
    for segment in template.split("/"):
        placeholder = re.fullmatch(r"\{(\w+)\}", segment)
        parts.append(f"(?P<{placeholder[1]}>[^/]+)" if placeholder else re.escape(segment))
    return re.compile("^" + "/".join(parts) + "$")


def _literal_segments(template: str) -> int:
    return sum(1 for segment in template.split("/") if segment and not segment.startswith("{"))


def _is_snowflake(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value < 1 << 64
    return isinstance(value, str) and re.fullmatch(r"0|[1-9][0-9]*", value) is not None


class OpenAPISpec:
    """The subset of JSON Schema the Discord OpenAPI document uses, validated by hand.

    Leniencies, each because Discord itself accepts what the spec would reject:

    * ``format: snowflake`` accepts integers as well as digit strings (discord.py sends
      attachment indices and some ids as integers).
    * ``oneOf`` is checked as "at least one branch matches": the generated spec has
      overlapping branches that Discord does not treat as ambiguous.
    """

    def __init__(self, document: JSON) -> None:
        self.document = document
        self._refs: dict[str, JSON] = {}
        patterns: list[tuple[int, int, re.Pattern[str], str]] = []
        for template in document.get("paths", {}):
            literal = _literal_segments(template)
            patterns.append((-literal, len(template), _template_regex(template), template))
        # More literal segments win, so "/messages/@original" beats "/messages/{message_id}".
        patterns.sort(key=lambda item: (item[0], item[1]))
        self._patterns = [(pattern, template) for _, _, pattern, template in patterns]

    @classmethod
    def load(cls, path: Path) -> OpenAPISpec:
        return _load_spec(str(path.resolve()))

    def match_path(self, path: str) -> str | None:
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        return None

    def operation(self, template: str, method: str) -> JSON | None:
        item = self.document["paths"].get(template, {})
        op = item.get(method.lower())
        return op if isinstance(op, dict) else None

    def request_schema(self, template: str, method: str, *, multipart: bool) -> JSON | None:
        op = self.operation(template, method)
        if op is None:
            return None
        body = op.get("requestBody")
        if not isinstance(body, dict):
            return None
        if "$ref" in body:
            body = self.resolve(body["$ref"])
        content = body.get("content", {})
        order = ("multipart/form-data", "application/json") if multipart else ("application/json",)
        for media in order:
            if media in content:
                schema = content[media].get("schema")
                return schema if isinstance(schema, dict) else None
        return None

    def resolve(self, ref: str) -> JSON:
        cached = self._refs.get(ref)
        if cached is not None:
            return cached
        if not ref.startswith("#/"):
            raise ValueError(f"unsupported $ref {ref!r}")
        node: Any = self.document
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        if not isinstance(node, dict):
            raise ValueError(f"$ref {ref!r} does not point at a schema")
        self._refs[ref] = node
        return node

    def validate(self, value: Any, schema: JSON, where: str = "body") -> list[str]:
        errors: list[str] = []
        self._validate(value, schema, where, errors)
        return errors

    def _validate(self, value: Any, schema: JSON, where: str, errors: list[str]) -> None:
        if "$ref" in schema:
            self._validate(value, self.resolve(schema["$ref"]), where, errors)
        if schema.get("format") == "snowflake" and _is_snowflake(value):
            return

        declared = schema.get("type")
        if declared is not None:
            types = [declared] if isinstance(declared, str) else list(declared)
            if not any(_type_matches(value, t) for t in types):
                errors.append(f"{where}: expected {'|'.join(types)}, got {_json_type(value)}")
                return

        if "const" in schema and not _json_equal(value, schema["const"]):
            errors.append(f"{where}: expected {schema['const']!r}, got {value!r}")
        if "enum" in schema and not any(_json_equal(value, e) for e in schema["enum"]):
            errors.append(f"{where}: {value!r} is not one of {schema['enum']!r}")

        for sub in schema.get("allOf", ()):
            self._validate(value, sub, where, errors)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                self._validate_union(value, schema[key], where, errors)

        if isinstance(value, str):
            self._validate_string(value, schema, where, errors)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            self._validate_number(value, schema, where, errors)
        elif isinstance(value, list):
            self._validate_array(value, schema, where, errors)
        elif isinstance(value, dict):
            self._validate_object(value, schema, where, errors)

    def _validate_union(
        self, value: Any, branches: Sequence[JSON], where: str, errors: list[str]
    ) -> None:
        best: list[str] | None = None
        best_score: tuple[int, int, int] | None = None
        for branch in branches:
            branch_errors: list[str] = []
            self._validate(value, branch, where, branch_errors)
            if not branch_errors:
                return
            # Report the branch that explains the failure best: its discriminator ("type")
            # matched, and it got deepest into the value before failing.
            wrong_kind = any(e.startswith(f"{where}.type:") for e in branch_errors)
            depth = max(len(e.partition(": ")[0]) for e in branch_errors)
            score = (int(wrong_kind), -depth, len(branch_errors))
            if best_score is None or score < best_score:
                best, best_score = branch_errors, score
        errors.append(f"{where}: matches none of {len(branches)} alternatives")
        errors.extend((best or [])[:5])

    @staticmethod
    def _validate_string(value: str, schema: JSON, where: str, errors: list[str]) -> None:
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: length {len(value)} exceeds maxLength {schema['maxLength']}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: length {len(value)} below minLength {schema['minLength']}")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            errors.append(f"{where}: {value!r} does not match {schema['pattern']!r}")

    @staticmethod
    def _validate_number(value: float, schema: JSON, where: str, errors: list[str]) -> None:
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} below minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} above maximum {schema['maximum']}")
        if schema.get("format") == "int32" and not -(2**31) <= value < 2**31:
            errors.append(f"{where}: {value} is not an int32")

    def _validate_array(
        self, value: list[Any], schema: JSON, where: str, errors: list[str]
    ) -> None:
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: {len(value)} items exceed maxItems {schema['maxItems']}")
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: {len(value)} items below minItems {schema['minItems']}")
        if schema.get("uniqueItems"):
            seen = {_dumps(item) for item in value}
            if len(seen) != len(value):
                errors.append(f"{where}: items are not unique")
        items = schema.get("items")
        if isinstance(items, dict):
            for index, item in enumerate(value):
                self._validate(item, items, f"{where}[{index}]", errors)

    def _validate_object(self, value: JSON, schema: JSON, where: str, errors: list[str]) -> None:
        for key in schema.get("required", ()):
            if key not in value:
                errors.append(f"{where}: missing required property {key!r}")
        properties: JSON = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                self._validate(item, properties[key], f"{where}.{key}", errors)
            elif extra is False:
                errors.append(f"{where}: unexpected property {key!r}")
            elif isinstance(extra, dict):
                self._validate(item, extra, f"{where}.{key}", errors)
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(f"{where}: more than {schema['maxProperties']} properties")
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            errors.append(f"{where}: fewer than {schema['minProperties']} properties")


@functools.lru_cache(maxsize=4)
def _load_spec(path: str) -> OpenAPISpec:
    # The document is ~1.2 MB; every emulator in the process shares one parsed copy.
    with open(path, encoding="utf-8") as fh:
        return OpenAPISpec(json.load(fh))


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class DiscordAPIError(Exception):
    """Raised inside handlers; rendered as Discord's JSON error body."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        errors: JSON | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.headers = dict(headers or {})

    def body(self) -> JSON:
        body: JSON = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def _form_error(path: str, code: str, message: str) -> DiscordAPIError:
    node: JSON = {"_errors": [{"code": code, "message": message}]}
    for part in reversed([p for p in re.split(r"[.\[\]]+", path) if p]):
        node = {part: node}
    return DiscordAPIError(400, 50035, "Invalid Form Body", errors=node)


def _focused_type(options: list[JSON]) -> int | None:
    """The type of the option an autocomplete interaction is about."""
    for option in options:
        if option.get("focused"):
            return int(option["type"])
        found = _focused_type(option.get("options", []))
        if found is not None:
            return found
    return None


def _check_choices(choices: Any, option_type: int | None) -> list[JSON]:
    """What Discord accepts in an autocomplete answer: at most 25 choices, each a
    name of 1 to 100 characters and a value of the focused option's type (text of
    at most 100 characters for a string option)."""
    if not isinstance(choices, list):
        raise _form_error("data.choices", "BASE_TYPE_REQUIRED", "This field is required")
    if len(choices) > 25:
        raise _form_error("data.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    for index, choice in enumerate(choices):
        where = f"data.choices.{index}"
        name = choice.get("name") if isinstance(choice, dict) else None
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise _form_error(
                f"{where}.name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )
        value = choice.get("value")
        if option_type == 3:
            ok = isinstance(value, str) and len(value) <= 100
        elif option_type == 4:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif option_type == 10:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = value is not None
        if not ok:
            raise _form_error(
                f"{where}.value",
                "APPLICATION_COMMAND_OPTION_CHOICE_VALUE_INVALID",
                f"Choice value does not fit an option of type {option_type}",
            )
    return [dict(choice) for choice in choices]


def unknown_interaction() -> DiscordAPIError:
    return DiscordAPIError(404, 10062, "Unknown interaction")


def invalid_webhook_token() -> DiscordAPIError:
    return DiscordAPIError(401, 50027, "Invalid Webhook Token")


def unknown_webhook() -> DiscordAPIError:
    return DiscordAPIError(404, 10015, "Unknown Webhook")


def unknown_message() -> DiscordAPIError:
    return DiscordAPIError(404, 10008, "Unknown Message")


def unknown_channel() -> DiscordAPIError:
    return DiscordAPIError(404, 10003, "Unknown Channel")


# --------------------------------------------------------------------------------------
# Records and world state
# --------------------------------------------------------------------------------------


@dataclass
class User:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False
    discriminator: str = "0"

    def to_payload(self) -> JSON:
        payload: JSON = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": self.discriminator,
            "global_name": self.global_name,
            "avatar": None,
            "banner": None,
            "accent_color": None,
            "public_flags": 0,
            "flags": 0,
            "avatar_decoration_data": None,
            "collectibles": None,
            "primary_guild": None,
        }
        if self.bot:
            payload["bot"] = True
        return payload


@dataclass
class Role:
    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False
    bot_id: int | None = None

    def to_payload(self) -> JSON:
        payload: JSON = {
            "id": str(self.id),
            "name": self.name,
            "description": None,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": False,
            "flags": 0,
        }
        if self.bot_id is not None:
            payload["tags"] = {"bot_id": str(self.bot_id)}
        return payload


@dataclass
class Channel:
    id: int
    guild_id: int
    name: str
    type: int = 0
    nsfw: bool = False
    position: int = 0
    topic: str | None = None
    last_message_id: int | None = None
    recipient: User | None = None  # a DM channel's other end (type 1, guild_id 0)

    def to_payload(self, *, include_guild: bool = True) -> JSON:
        if self.recipient is not None:
            return {
                "id": str(self.id),
                "type": CHANNEL_DM,
                "last_message_id": (
                    None if self.last_message_id is None else str(self.last_message_id)
                ),
                "flags": 0,
                "recipients": [self.recipient.to_payload()],
            }
        payload: JSON = {
            "id": str(self.id),
            "type": self.type,
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "nsfw": self.nsfw,
            "topic": self.topic,
            "last_message_id": None if self.last_message_id is None else str(self.last_message_id),
            "rate_limit_per_user": 0,
            "parent_id": None,
            "flags": 0,
        }
        if include_guild:
            payload["guild_id"] = str(self.guild_id)
        return payload


@dataclass
class Member:
    user: User
    guild_id: int
    roles: list[int] = field(default_factory=list)
    permissions: int | None = None
    nick: str | None = None
    joined_at: datetime = field(default_factory=_now)

    @property
    def id(self) -> int:
        return self.user.id

    def to_payload(self, *, with_user: bool = True) -> JSON:
        payload: JSON = {
            "roles": [str(r) for r in self.roles],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": _iso(self.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            payload["user"] = self.user.to_payload()
        return payload


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    filesize_limit: int
    channels: dict[int, Channel] = field(default_factory=dict)
    roles: dict[int, Role] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)
    joined_at: datetime = field(default_factory=_now)
    locale: str = "en-US"

    def permissions_of(self, member: Member) -> int:
        if member.permissions is not None:
            return member.permissions
        if member.id == self.owner_id:
            return ALL_PERMISSIONS
        bits = self.roles[self.id].permissions
        for role_id in member.roles:
            role = self.roles.get(role_id)
            if role is not None:
                bits |= role.permissions
        return ALL_PERMISSIONS if bits & ADMINISTRATOR else bits

    @property
    def premium_tier(self) -> int:
        if self.filesize_limit >= 100 * 1024 * 1024:
            return 3
        if self.filesize_limit >= 50 * 1024 * 1024:
            return 2
        return 0


@dataclass
class UploadedFile:
    field: str
    index: int | None
    filename: str
    content_type: str | None
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class RecordedRequest:
    method: str
    path: str  # relative to api_base, e.g. "/channels/1/messages"
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    files: list[UploadedFile]
    multipart: bool
    at: float
    status: int = 0
    route: str | None = None  # the emulator's template, e.g. "/channels/{channel_id}/messages"
    injected: bool = False  # answered by fail_next
    stalled: bool = False  # carried out, its answer held back by stall_next

    @property
    def payload_json(self) -> Any:
        return self.json if self.multipart else None


@dataclass
class AttachmentRecord:
    id: int
    channel_id: int
    filename: str
    data: bytes
    content_type: str | None
    url: str
    proxy_url: str
    description: str | None = None
    ephemeral: bool = False
    width: int | None = None
    height: int | None = None
    title: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def to_payload(self) -> JSON:
        payload: JSON = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.proxy_url,
            "flags": 0,
        }
        if self.content_type is not None:
            payload["content_type"] = self.content_type
        if self.description is not None:
            payload["description"] = self.description
        if self.title is not None:
            payload["title"] = self.title
        if self.width is not None and self.height is not None:
            payload["width"] = self.width
            payload["height"] = self.height
        if self.ephemeral:
            payload["ephemeral"] = True
        return payload


@dataclass(eq=False)
class MessageRecord:
    id: int
    channel_id: int
    guild_id: int | None
    author: User
    content: str = ""
    embeds: list[JSON] = field(default_factory=list)
    components: list[JSON] = field(default_factory=list)
    attachments: list[AttachmentRecord] = field(default_factory=list)
    allowed_mentions: JSON | None = None
    flags: int = 0
    type: int = 0
    tts: bool = False
    nonce: str | int | None = None
    edits: list[JSON] = field(default_factory=list)  # every payload applied, creation first
    deleted: bool = False
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_metadata: JSON | None = None
    interaction: JSON | None = None
    message_reference: JSON | None = None
    edited_at: datetime | None = None

    @property
    def author_id(self) -> int:
        return self.author.id

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & FLAG_LOADING)

    @property
    def created_at(self) -> datetime:
        return snowflake_time(self.id)

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in _walk_components(self.components) if "custom_id" in c]

    def to_payload(self, *, include_guild: bool = False) -> JSON:
        payload: JSON = {
            "id": str(self.id),
            "type": self.type,
            "channel_id": str(self.channel_id),
            "author": self.author.to_payload(),
            "content": self.content,
            "timestamp": _iso(self.created_at),
            "edited_timestamp": None if self.edited_at is None else _iso(self.edited_at),
            "tts": self.tts,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [a.to_payload() for a in self.attachments],
            "embeds": copy.deepcopy(self.embeds),
            "pinned": False,
            "flags": self.flags,
            "components": copy.deepcopy(self.components),
        }
        if self.nonce is not None:
            payload["nonce"] = self.nonce
        if self.webhook_id is not None:
            payload["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            payload["application_id"] = str(self.application_id)
        if self.interaction_metadata is not None:
            payload["interaction_metadata"] = copy.deepcopy(self.interaction_metadata)
        if self.interaction is not None:
            payload["interaction"] = copy.deepcopy(self.interaction)
        if self.message_reference is not None:
            payload["message_reference"] = copy.deepcopy(self.message_reference)
        if include_guild and self.guild_id is not None:
            payload["guild_id"] = str(self.guild_id)
        return payload


def _walk_components(components: Sequence[JSON]) -> Iterator[JSON]:
    for component in components:
        yield component
        children = component.get("components")
        if isinstance(children, list):
            yield from _walk_components(children)
        for key in ("component", "accessory"):
            child = component.get(key)
            if isinstance(child, dict):
                yield from _walk_components([child])


class Callback(NamedTuple):
    type: int
    data: JSON


class Rejection(NamedTuple):
    """An error the emulator answered an interaction's callback or webhook call with."""

    method: str
    path: str
    status: int
    body: JSON


@dataclass(eq=False)
class InteractionRecord:
    id: int
    token: str
    type: int
    guild_id: int  # 0 in a DM with the bot
    channel_id: int
    user_id: int
    data: JSON
    payload: JSON  # the INTERACTION_CREATE "d" exactly as dispatched
    created_at: float  # event-loop time of dispatch; the ack window starts here
    message: MessageRecord | None = None  # the message a component/modal came from
    callbacks: list[Callback] = field(default_factory=list)
    original: MessageRecord | None = None
    followups: list[MessageRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    modal: JSON | None = None
    autocomplete_choices: list[JSON] | None = None
    acked_at: float | None = None
    _emulator: DiscordEmulator | None = field(default=None, repr=False)

    @property
    def acknowledged(self) -> bool:
        return bool(self.callbacks)

    @property
    def command_name(self) -> str | None:
        name = self.data.get("name")
        return name if isinstance(name, str) else None

    def _owner(self) -> DiscordEmulator:
        if self._emulator is None:
            raise RuntimeError("interaction record is detached from its emulator")
        return self._emulator

    async def wait_for(
        self,
        predicate: Callable[[InteractionRecord], bool],
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        await self._owner().wait_for(
            lambda: predicate(self), timeout, what=f"interaction {self.id} ({self.command_name})"
        )

    async def wait_for_callback(self, timeout: float = 10.0) -> Callback:  # noqa: ASYNC109
        await self.wait_for(lambda r: bool(r.callbacks or r.rejections), timeout)
        if not self.callbacks:
            raise AssertionError(f"interaction callback was rejected: {self.rejections}")
        return self.callbacks[0]

    async def wait_for_original(self, timeout: float = 10.0) -> MessageRecord:  # noqa: ASYNC109
        """Wait until the original response exists and is no longer a loading placeholder."""
        await self.wait_for(
            lambda r: r.original is not None and not r.original.loading, timeout=timeout
        )
        assert self.original is not None
        return self.original

    async def wait_for_followups(
        self,
        count: int = 1,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> list[MessageRecord]:
        await self.wait_for(lambda r: len(r.followups) >= count, timeout)
        return list(self.followups)

    async def wait_for_rejection(self, timeout: float = 10.0) -> Rejection:  # noqa: ASYNC109
        await self.wait_for(lambda r: bool(r.rejections), timeout)
        return self.rejections[0]


@dataclass
class IdentifyRecord:
    shard: tuple[int, int]
    intents: int
    properties: JSON
    compress: bool
    large_threshold: int | None
    presence: JSON | None


@dataclass
class GatewayConnectionInfo:
    path: str
    query: dict[str, str]
    at: float


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: JSON | None
    retry_after: float | None
    times: int
    is_global: bool
    headers: dict[str, str]


class _GatewayConnection:
    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, compress: str | None
    ) -> None:
        self.request = request
        self.ws = ws
        self.compress = compress
        self.session: _Session | None = None
        self.heartbeats = 0
        self._lock = asyncio.Lock()
        self._zlib: Any = zlib.compressobj() if compress == "zlib-stream" else None
        self._zstd: Any = None
        if compress == "zstd-stream":
            zstandard = importlib.import_module("zstandard")
            self._zstd = zstandard.ZstdCompressor().compressobj()
            self._zstd_flush = zstandard.COMPRESSOBJ_FLUSH_BLOCK

    async def send(self, payload: JSON) -> None:
        text = _dumps(payload).encode()
        # One compression context per connection: frames must leave in the order they
        # were compressed or the client's inflater desynchronises.
        async with self._lock:
            if self.ws.closed:
                raise ConnectionResetError("gateway connection is closed")
            if self._zlib is not None:
                await self.ws.send_bytes(
                    self._zlib.compress(text) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
                )
            elif self._zstd is not None:
                await self.ws.send_bytes(
                    self._zstd.compress(text) + self._zstd.flush(self._zstd_flush)
                )
            else:
                await self.ws.send_str(text.decode())


class _Session:
    def __init__(self, session_id: str, shard_id: int, shard_count: int, intents: int) -> None:
        self.session_id = session_id
        self.shard_id = shard_id
        self.shard_count = shard_count
        self.intents = intents
        self.seq = 0
        self.log: list[JSON] = []
        self.conn: _GatewayConnection | None = None
        self.ready = False
        self.invalidated = False
        self.lock = asyncio.Lock()

    async def dispatch(self, event: str, data: JSON) -> int:
        async with self.lock:
            return await self.dispatch_locked(event, data)

    async def dispatch_locked(self, event: str, data: JSON, *, replayable: bool = True) -> int:
        self.seq += 1
        payload: JSON = {"op": 0, "t": event, "s": self.seq, "d": data}
        if replayable:
            self.log.append(payload)
        conn = self.conn
        if conn is not None:
            try:
                await conn.send(payload)
            except (ConnectionError, RuntimeError):
                # The event stays in the log and is replayed when the client RESUMEs.
                self.conn = None
        return self.seq


# --------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------

_Handler = Callable[["_Context"], Awaitable[web.StreamResponse]]


@dataclass
class _Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: _Handler
    auth: bool


@dataclass
class _Context:
    request: web.Request
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    files: list[UploadedFile]
    multipart: bool
    received_at: float
    record: RecordedRequest


class DiscordEmulator:
    """Discord's REST API, gateway and CDN on 127.0.0.1, for the real discord.py.

    REST (under ``api_base``): users/@me, oauth2/applications/@me, gateway/bot, application
    command CRUD (global and guild), interaction callbacks (types 1, 4-9, answered with the
    InteractionCallbackResponse body when ``with_response`` is set), interaction webhooks
    (@original and follow-ups), channel and message CRUD with multipart uploads, a few
    guild/user reads.  Attachments get signed loopback CDN URLs served by the emulator,
    which expire after ``cdn_link_lifetime`` seconds of the CDN's clock
    (:meth:`advance_cdn_clock`) and are signed again by ``POST /attachments/refresh-urls``.

    Gateway (``gateway_url``): HELLO, IDENTIFY, READY, GUILD_CREATE, heartbeats, RESUME
    with replay, zlib-stream transport compression, sharding by ``(guild_id >> 22) %
    shard_count``, INTERACTION_CREATE and (with the GUILD_MESSAGES intent) MESSAGE_* events.

    Discord's failure modes: the acknowledgement window, interaction token expiry,
    injected 429/5xx/anything via :meth:`fail_next`, 413 for uploads over the guild's
    limit, 400 for more than ten files, empty or over-long messages.
    """

    def __init__(
        self,
        *,
        token: str = "emu-bot-token",
        ack_timeout: float = 3.0,
        token_ttl: float = 900.0,
        heartbeat_interval: float = 41.25,
        shard_count: int = 1,
        validate_spec: bool = True,
        spec_path: Path | str | None = None,
        bot_name: str = "EmuBot",
    ) -> None:
        if shard_count < 1:
            raise ValueError("shard_count must be at least 1")
        self.token = token
        self.ack_timeout = ack_timeout
        self.token_ttl = token_ttl
        self.heartbeat_interval = heartbeat_interval
        self.shard_count = shard_count
        # Privileged intents the application is "approved" for; others close with 4014.
        self.allowed_privileged_intents = PRIVILEGED_INTENTS
        # Spec violations are recorded either way; flip this to also answer them with 400.
        self.reject_spec_violations = False

        self._snowflake = SnowflakeGenerator()
        self.application_id = self._snowflake()
        self.bot_user_id = self.application_id  # Discord bots share the application's id
        self.bot_user = User(self.bot_user_id, bot_name, bot=True, discriminator="0001")
        self.owner_user = User(self._snowflake(), "app-owner")
        self._users: dict[int, User] = {
            self.bot_user.id: self.bot_user,
            self.owner_user.id: self.owner_user,
        }
        self._cdn_secret = secrets.token_bytes(16)
        # Signed CDN links expire like Discord's (ex= in the URL); tests shorten the
        # lifetime and move the CDN's clock on instead of waiting a day.
        self.cdn_link_lifetime = 24 * 3600.0
        self._cdn_clock_offset = 0.0

        self.guilds: dict[int, Guild] = {}
        self._channels: dict[int, Channel] = {}
        self.dm_channels: dict[int, Channel] = {}  # by recipient id
        # Members who closed their DMs to the bot: messages to them answer 403 50007.
        self.dms_closed: set[int] = set()
        # Channels where the bot lacks Send Messages: its own messages there answer
        # 403 50013, while interaction responses and follow-ups, which need no
        # channel permission, still go through, as on Discord.
        self.channels_closed_to_bot: set[int] = set()
        self.messages: dict[int, MessageRecord] = {}
        self.attachments: dict[int, AttachmentRecord] = {}
        self.interactions: dict[int, InteractionRecord] = {}
        self._interactions_by_token: dict[str, InteractionRecord] = {}
        self._global_commands: dict[int, JSON] = {}
        self._guild_commands: dict[int, dict[int, JSON]] = {}
        # Servers the bot was invited to with the `bot` scope alone: it is a member, but
        # every guild command route answers 403 Missing Access, as on Discord.
        self.guilds_without_commands_scope: set[int] = set()

        self.requests: list[RecordedRequest] = []
        self.unknown_routes: list[str] = []
        self.spec_violations: list[str] = []
        self.cdn_downloads: list[str] = []
        self.refreshed_urls: list[str] = []  # links the bot had signed again
        self.internal_errors: list[str] = []
        self.identifies = 0
        self.resumes = 0
        self.replayed_dispatches = 0
        self.identify_payloads: list[IdentifyRecord] = []
        self.gateway_connections: list[GatewayConnectionInfo] = []
        self.gateway_commands: list[JSON] = []  # op 3/4/8 etc. sent by the client

        self._failures: list[_Failure] = []
        self._stalls: list[tuple[str, re.Pattern[str], float]] = []
        # Set to an unset Event to hold attachment downloads until it is set.
        self.cdn_hold: asyncio.Event | None = None
        self._sessions: dict[int, _Session] = {}
        self._sessions_by_id: dict[str, _Session] = {}
        self._connections: set[_GatewayConnection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()
        self._routes = self._build_routes()

        self.spec: OpenAPISpec | None = None
        self.spec_path = Path(spec_path) if spec_path is not None else default_spec_path()
        if validate_spec and self.spec_path.is_file():
            self.spec = OpenAPISpec.load(self.spec_path)
        elif validate_spec and running_in_ci():
            # Silently skipping would let CI pass while checking nothing.
            raise FileNotFoundError(
                f"Discord's OpenAPI spec is missing at {self.spec_path}: under CI the "
                "emulator must validate request bodies. Check out the spec next to the "
                "repository (../shared/discord-api-spec/openapi.json) or set "
                "DISCORD_OPENAPI_SPEC."
            )

        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        # Uploads larger than aiohttp's 1 MiB default must reach the 413 logic intact.
        app = web.Application(client_max_size=1024**3)
        app.router.add_get("/gateway", self._handle_gateway)
        app.router.add_get("/gateway/resume", self._handle_gateway)
        app.router.add_get(
            "/cdn/attachments/{channel_id}/{attachment_id}/{filename}", self._handle_cdn
        )
        app.router.add_get(
            "/media/attachments/{channel_id}/{attachment_id}/{filename}", self._handle_cdn
        )
        app.router.add_route("*", "/api/v{version}/{tail:.*}", self._handle_api)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        site = web.SockSite(runner, sock)
        await site.start()
        self._runner = runner

    async def close(self) -> None:
        for conn in list(self._connections):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(code=1001, message=b"emulator shutdown"), 2)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("emulator not started; await emulator.start() first")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v{API_VERSION}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        # A distinct path so tests can tell that discord.py resumed where READY told it to.
        return f"ws://127.0.0.1:{self.port}/gateway/resume"

    # ---------------------------------------------------------------- world building

    def _user(self, user_id: int | None, name: str) -> User:
        if user_id is not None and user_id in self._users:
            return self._users[user_id]
        user = User(user_id if user_id is not None else self._snowflake(), name, global_name=name)
        self._users[user.id] = user
        return user

    def add_guild(
        self,
        guild_id: int | None = None,
        *,
        name: str = "Guild",
        filesize_limit: int = 10 * 1024 * 1024,
        owner_id: int | None = None,
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
        everyone_permissions: int = DEFAULT_EVERYONE_PERMISSIONS,
        shard_id: int | None = None,
    ) -> Guild:
        """A guild the bot is in.  ``shard_id`` picks a generated id that lands on that shard."""
        if shard_id is not None and not 0 <= shard_id < self.shard_count:
            raise ValueError(f"shard_id must be in [0, {self.shard_count})")
        gid = guild_id if guild_id is not None else self._snowflake()
        while guild_id is None and shard_id is not None and self.shard_for(gid) != shard_id:
            gid = self._snowflake()
        if gid in self.guilds:
            raise ValueError(f"guild {gid} already exists")
        owner = self._user(owner_id, "owner")
        guild = Guild(gid, name, owner.id, filesize_limit)
        guild.roles[gid] = Role(gid, gid, "@everyone", everyone_permissions)
        bot_role = Role(
            self._snowflake(),
            gid,
            self.bot_user.username,
            bot_permissions,
            1,
            True,
            self.bot_user_id,
        )
        guild.roles[bot_role.id] = bot_role
        guild.members[owner.id] = Member(owner, gid)
        guild.members[self.bot_user_id] = Member(self.bot_user, gid, roles=[bot_role.id])
        self.guilds[gid] = guild
        self._after_ready(gid, "GUILD_CREATE", lambda s: self._guild_create_payload(guild, s))
        return guild

    def add_channel(
        self,
        guild_id: int,
        *,
        channel_id: int | None = None,
        name: str = "general",
        nsfw: bool = False,
        topic: str | None = None,
    ) -> Channel:
        guild = self._guild(guild_id)
        cid = channel_id if channel_id is not None else self._snowflake()
        if cid in self._channels:
            raise ValueError(f"channel {cid} already exists")
        channel = Channel(cid, guild_id, name, nsfw=nsfw, position=len(guild.channels), topic=topic)
        guild.channels[cid] = channel
        self._channels[cid] = channel
        self._after_ready(guild_id, "CHANNEL_CREATE", lambda _: channel.to_payload())
        return channel

    def add_role(
        self, guild_id: int, *, role_id: int | None = None, name: str = "role", permissions: int = 0
    ) -> Role:
        guild = self._guild(guild_id)
        rid = role_id if role_id is not None else self._snowflake()
        role = Role(rid, guild_id, name, permissions, position=len(guild.roles))
        guild.roles[rid] = role
        self._after_ready(
            guild_id,
            "GUILD_ROLE_CREATE",
            lambda _: {"guild_id": str(guild_id), "role": role.to_payload()},
        )
        return role

    def add_member(
        self,
        guild_id: int,
        *,
        user_id: int | None = None,
        name: str = "member",
        roles: Sequence[int] = (),
        permissions: int | None = None,
        nick: str | None = None,
    ) -> Member:
        guild = self._guild(guild_id)
        for role_id in roles:
            if role_id not in guild.roles:
                raise KeyError(f"role {role_id} is not in guild {guild_id}; add_role first")
        user = self._user(user_id, name)
        member = Member(user, guild_id, list(roles), permissions, nick)
        guild.members[user.id] = member
        self._after_ready(
            guild_id,
            "GUILD_MEMBER_ADD",
            lambda _: {**member.to_payload(), "guild_id": str(guild_id)},
            intent=INTENT_GUILD_MEMBERS,
        )
        return member

    def add_attachment(
        self,
        channel_id: int,
        data: bytes,
        filename: str,
        content_type: str | None = None,
        *,
        ephemeral: bool = True,
        description: str | None = None,
    ) -> JSON:
        """An uploaded file as Discord hands it to a bot, e.g. for an attachment option.

        Defaults to ``ephemeral`` because files given to slash-command options are.
        """
        self._channel(channel_id)
        record = self._store_attachment(
            channel_id, data, filename, content_type, description=description, ephemeral=ephemeral
        )
        return record.to_payload()

    def add_message(
        self,
        channel_id: int,
        *,
        author_id: int,
        content: str = "",
        attachments: Sequence[JSON] = (),
        embeds: Sequence[JSON] = (),
    ) -> JSON:
        """A message that already exists in a channel (a target for context menus)."""
        channel = self._channel(channel_id)
        author = self._users.get(author_id)
        if author is None:
            raise KeyError(f"unknown user {author_id}; add_member first")
        records: list[AttachmentRecord] = []
        for payload in attachments:
            found = self.attachments.get(int(payload["id"]))
            if found is None:
                raise KeyError(f"attachment {payload['id']} was not created by add_attachment")
            records.append(found)
        message = MessageRecord(
            self._snowflake(),
            channel_id,
            channel.guild_id,
            author,
            content=content,
            attachments=records,
            embeds=[copy.deepcopy(e) for e in embeds],
        )
        message.edits.append({"content": content})
        self._store_message(message)
        return message.to_payload()

    # ---------------------------------------------------------------- lookups

    def _guild(self, guild_id: int) -> Guild:
        try:
            return self.guilds[int(guild_id)]
        except KeyError:
            raise KeyError(f"unknown guild {guild_id}; add_guild first") from None

    def _channel(self, channel_id: int) -> Channel:
        try:
            return self._channels[int(channel_id)]
        except KeyError:
            raise KeyError(f"unknown channel {channel_id}; add_channel first") from None

    def _member(self, guild: Guild, user_id: int) -> Member:
        try:
            return guild.members[int(user_id)]
        except KeyError:
            raise KeyError(
                f"user {user_id} is not a member of guild {guild.id}; add_member first"
            ) from None

    def shard_for(self, guild_id: int) -> int:
        return (int(guild_id) >> 22) % self.shard_count

    def channel_messages(
        self, channel_id: int, *, include_deleted: bool = False
    ) -> list[MessageRecord]:
        return [
            m
            for m in self.messages.values()
            if m.channel_id == channel_id and (include_deleted or not m.deleted)
        ]

    def registered_commands(self, guild_id: int | None = None) -> list[JSON]:
        source = (
            self._global_commands
            if guild_id is None
            else self._guild_commands.get(int(guild_id), {})
        )
        return [copy.deepcopy(c) for c in source.values()]

    def dispatched(self, shard_id: int, event: str | None = None) -> list[JSON]:
        """Dispatches (``{"op": 0, "t", "s", "d"}``) sent in the shard's current session."""
        session = self._sessions.get(shard_id)
        if session is None:
            return []
        return [copy.deepcopy(p) for p in session.log if event is None or p["t"] == event]

    def requests_to(self, method: str, path_regex: str) -> list[RecordedRequest]:
        pattern = re.compile(path_regex)
        return [r for r in self.requests if r.method == method.upper() and pattern.search(r.path)]

    # ---------------------------------------------------------------- waiting

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - the control API takes explicit timeouts
        *,
        what: str = "condition",
    ) -> None:
        """Wait until ``predicate()`` holds.

        Wakes on every emulator state change, and at least every 50 ms so predicates about
        the bot's own state work too.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{what} not met within {timeout}s")
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, 0.05))

    async def wait_until_ready(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """All shards have IDENTIFYed and got READY plus their GUILD_CREATEs."""
        await self.wait_for(
            lambda: all(
                (s := self._sessions.get(shard)) is not None and s.ready
                for shard in range(self.shard_count)
            ),
            timeout,
            what="all shards ready",
        )

    # ---------------------------------------------------------------- failure injection

    def fail_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int,
        body: JSON | None = None,
        retry_after: float | None = None,
        times: int = 1,
        is_global: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` matching REST calls with ``status`` instead.

        ``method`` may be ``"*"``; ``path_regex`` is searched in the path relative to
        ``api_base`` (e.g. ``r"/messages/@original$"``).  A 429 gets Discord's body and
        headers, including the ``Via`` header discord.py needs to treat it as a rate limit
        rather than a Cloudflare ban.
        """
        if status == 429 and retry_after is None:
            retry_after = 0.1
        self._failures.append(
            _Failure(
                method.upper(),
                re.compile(path_regex),
                status,
                body,
                retry_after,
                times,
                is_global,
                dict(headers or {}),
            )
        )

    def stall_next(self, method: str, path_regex: str, *, seconds: float) -> None:
        """Carry out the next matching REST call, then hold its answer back for
        ``seconds``: the change is made (a message is posted) but the caller
        does not hear of it, as when the bot dies while the answer is on its way."""
        self._stalls.append((method.upper(), re.compile(path_regex), seconds))

    def _take_stall(self, method: str, path: str) -> float | None:
        for stall in self._stalls:
            if stall[0] in (method, "*") and stall[1].search(path):
                self._stalls.remove(stall)
                return stall[2]
        return None

    def _take_failure(self, method: str, path: str) -> _Failure | None:
        for failure in self._failures:
            if failure.method in (method, "*") and failure.pattern.search(path):
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
                return failure
        return None

    def _failure_response(self, failure: _Failure, bucket: str) -> web.Response:
        headers = dict(failure.headers)
        if failure.status == 429:
            retry_after = failure.retry_after or 0.0
            body = failure.body or {
                "message": "You are being rate limited.",
                "retry_after": retry_after,
                "global": failure.is_global,
            }
            headers.setdefault("Retry-After", str(max(1, math.ceil(retry_after))))
            headers.setdefault("X-RateLimit-Limit", "5")
            headers.setdefault("X-RateLimit-Remaining", "0")
            headers.setdefault("X-RateLimit-Reset", f"{time.time() + retry_after:.3f}")
            headers.setdefault("X-RateLimit-Reset-After", f"{retry_after:.3f}")
            headers.setdefault("X-RateLimit-Bucket", bucket)
            headers.setdefault("X-RateLimit-Scope", "global" if failure.is_global else "user")
            if failure.is_global:
                headers.setdefault("X-RateLimit-Global", "true")
        else:
            reason = web.Response(status=failure.status).reason
            body = failure.body or {"message": f"{failure.status}: {reason}", "code": 0}
        return self._json(body, status=failure.status, headers=headers)

    # ---------------------------------------------------------------- assertions

    def assert_no_violations(self, *, allow_unknown_routes: bool = False) -> None:
        problems = [*self.spec_violations, *(f"emulator error: {e}" for e in self.internal_errors)]
        if not allow_unknown_routes:
            problems += [f"unknown route: {route}" for route in self.unknown_routes]
        if problems:
            raise AssertionError(
                "Discord emulator saw problems:\n" + "\n".join(f"  - {p}" for p in problems)
            )

    # ---------------------------------------------------------------- gateway

    async def _handle_gateway(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.gateway_connections.append(
            GatewayConnectionInfo(request.path, query, asyncio.get_running_loop().time())
        )
        compress = query.get("compress")
        # Discord does its own zlib/zstd framing; permessage-deflate is never negotiated.
        ws = web.WebSocketResponse(max_msg_size=0, compress=False, autoping=True)
        await ws.prepare(request)

        if query.get("v") != str(API_VERSION):
            await ws.close(code=4012, message=b"Invalid API version")
            return ws
        if query.get("encoding", "json") != "json":
            await ws.close(code=4002, message=b"Decode error: only encoding=json is emulated")
            return ws
        if compress not in (None, "zlib-stream", "zstd-stream"):
            await ws.close(code=4002, message=b"Invalid compression")
            return ws
        try:
            conn = _GatewayConnection(request, ws, compress)
        except ImportError:
            self.internal_errors.append(
                "gateway: client asked for zstd-stream but zstandard is not importable here"
            )
            await ws.close(code=4000, message=b"zstd-stream unavailable in emulator")
            return ws

        self._connections.add(conn)
        self._notify()
        try:
            await conn.send(
                {
                    "op": 10,
                    "s": None,
                    "t": None,
                    "d": {
                        "heartbeat_interval": int(self.heartbeat_interval * 1000),
                        "_trace": ['["emu-gateway",{"micros":0}]'],
                    },
                }
            )
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    try:
                        await self._gateway_receive(conn, msg.data)
                    except (ConnectionError, asyncio.CancelledError):
                        raise
                    except Exception as exc:
                        log.exception("discord emulator gateway crashed")
                        self.internal_errors.append(f"gateway: {exc!r}")
                        await ws.close(code=1011, message=b"emulator internal error")
                        break
                elif msg.type is WSMsgType.BINARY:
                    await ws.close(code=4002, message=b"Decode error")
                    break
                elif msg.type is WSMsgType.ERROR:
                    break
        except ConnectionError:
            pass
        finally:
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
            self._connections.discard(conn)
            self._notify()
        return ws

    async def _gateway_receive(self, conn: _GatewayConnection, raw: str) -> None:
        try:
            payload = json.loads(raw)
            op = payload["op"]
        except (ValueError, KeyError, TypeError):
            await conn.ws.close(code=4002, message=b"Decode error")
            return
        data = payload.get("d")
        if op == 1:
            conn.heartbeats += 1
            await conn.send({"op": 11, "s": None, "t": None, "d": None})
        elif op == 2:
            await self._identify(conn, data if isinstance(data, dict) else {})
        elif op == 6:
            await self._resume(conn, data if isinstance(data, dict) else {})
        elif conn.session is None:
            await conn.ws.close(code=4003, message=b"Not authenticated")
        elif op in (3, 4, 8, 31, 37):
            self.gateway_commands.append(payload)
        else:
            await conn.ws.close(code=4001, message=b"Unknown opcode")

    async def _identify(self, conn: _GatewayConnection, data: JSON) -> None:
        if conn.session is not None:
            await conn.ws.close(code=4005, message=b"Already authenticated")
            return
        if data.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed")
            return
        shard = data.get("shard", [0, 1])
        if (
            not isinstance(shard, list)
            or len(shard) != 2
            or not all(isinstance(x, int) for x in shard)
            or shard[1] != self.shard_count
            or not 0 <= shard[0] < shard[1]
        ):
            await conn.ws.close(code=4010, message=b"Invalid shard")
            return
        intents = data.get("intents")
        if not isinstance(intents, int) or intents < 0:
            await conn.ws.close(code=4013, message=b"Invalid intent(s)")
            return
        if intents & PRIVILEGED_INTENTS & ~self.allowed_privileged_intents:
            await conn.ws.close(code=4014, message=b"Disallowed intent(s)")
            return
        shard_id, shard_count = shard
        self.identifies += 1
        self.identify_payloads.append(
            IdentifyRecord(
                (shard_id, shard_count),
                intents,
                dict(data.get("properties") or {}),
                bool(data.get("compress")),
                data.get("large_threshold"),
                data.get("presence"),
            )
        )
        old = self._sessions.get(shard_id)
        if old is not None:
            old.invalidated = True
            self._sessions_by_id.pop(old.session_id, None)
        session = _Session(secrets.token_hex(16), shard_id, shard_count, intents)
        self._sessions[shard_id] = session
        self._sessions_by_id[session.session_id] = session
        conn.session = session
        async with session.lock:
            session.conn = conn
            guilds = [g for g in self.guilds.values() if self.shard_for(g.id) == shard_id]
            await session.dispatch_locked("READY", self._ready_payload(session, guilds))
            for guild in guilds:
                await session.dispatch_locked(
                    "GUILD_CREATE", self._guild_create_payload(guild, session)
                )
            session.ready = True
        self._notify()

    async def _resume(self, conn: _GatewayConnection, data: JSON) -> None:
        if data.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed")
            return
        session = self._sessions_by_id.get(str(data.get("session_id")))
        seq = data.get("seq")
        if session is None or session.invalidated or (isinstance(seq, int) and seq > session.seq):
            await conn.send({"op": 9, "s": None, "t": None, "d": False})
            return
        async with session.lock:
            previous = session.conn
            session.conn = None
            conn.session = session
            if previous is not None and previous is not conn:
                with contextlib.suppress(Exception):
                    await previous.ws.close(code=4000, message=b"Session resumed elsewhere")
            last = seq if isinstance(seq, int) else 0
            try:
                for payload in session.log:
                    if payload["s"] > last:
                        await conn.send(payload)
                        self.replayed_dispatches += 1
                session.conn = conn
                await session.dispatch_locked(
                    "RESUMED", {"_trace": ['["emu-gateway",{"micros":0}]']}, replayable=False
                )
            except (ConnectionError, RuntimeError):
                session.conn = None
                return
        self.resumes += 1
        self._notify()

    async def drop_connection(self, shard_id: int = 0, *, code: int | None = 4000) -> None:
        """Cut a shard's connection so the client RESUMEs.

        ``code=4000`` is Discord's "unknown error, reconnect"; ``code=None`` aborts the TCP
        connection without a close frame.  Dispatches sent meanwhile are replayed on RESUME.
        """
        session = self._sessions.get(shard_id)
        if session is None:
            raise RuntimeError(f"shard {shard_id} has never identified")
        async with session.lock:
            conn = session.conn
            session.conn = None
        if conn is None:
            raise RuntimeError(f"shard {shard_id} has no open gateway connection")
        if code is None:
            transport = conn.request.transport
            if transport is not None:
                transport.abort()
        else:
            await conn.ws.close(code=code, message=b"emulator dropped the connection")
        self._notify()

    def _ready_payload(self, session: _Session, guilds: Sequence[Guild]) -> JSON:
        return {
            "v": API_VERSION,
            "user": {
                **self.bot_user.to_payload(),
                "verified": True,
                "mfa_enabled": False,
                "email": None,
            },
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.resume_gateway_url,
            "shard": [session.shard_id, session.shard_count],
            "application": {"id": str(self.application_id), "flags": self._application_flags()},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["emulated"],
            "auth": {},
            "user_settings": {},
            "_trace": ['["emu-gateway",{"micros":0}]'],
        }

    def _application_flags(self) -> int:
        flags = 1 << 23  # APPLICATION_COMMAND_BADGE
        if self.allowed_privileged_intents & INTENT_GUILD_PRESENCES:
            flags |= 1 << 13
        if self.allowed_privileged_intents & INTENT_GUILD_MEMBERS:
            flags |= 1 << 15
        if self.allowed_privileged_intents & INTENT_MESSAGE_CONTENT:
            flags |= 1 << 19
        return flags

    def _guild_payload(self, guild: Guild) -> JSON:
        system_channel = next(iter(guild.channels), None)
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "icon_hash": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(guild.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "widget_enabled": False,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [r.to_payload() for r in guild.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None if system_channel is None else str(system_channel),
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "max_members": 500000,
            "max_presences": None,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": guild.premium_tier,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": guild.locale,
            "nsfw_level": 0,
            "nsfw": False,
            "incidents_data": None,
        }

    def _guild_create_payload(self, guild: Guild, session: _Session) -> JSON:
        intents = session.intents
        # Without GUILD_MEMBERS Discord only includes the bot's own member.
        members = [
            m.to_payload()
            for m in guild.members.values()
            if intents & INTENT_GUILD_MEMBERS or m.id == self.bot_user_id
        ]
        return {
            **self._guild_payload(guild),
            "joined_at": _iso(guild.joined_at),
            "large": False,
            "unavailable": False,
            "lazy": True,
            "member_count": len(guild.members),
            "members": members,
            "channels": [c.to_payload(include_guild=False) for c in guild.channels.values()],
            "threads": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "embedded_activities": [],
        }

    def _session_for_guild(self, guild_id: int) -> _Session:
        shard_id = self.shard_for(guild_id)
        session = self._sessions.get(shard_id)
        if session is None or not session.ready:
            raise RuntimeError(
                f"shard {shard_id} (guild {guild_id}) has not identified yet; "
                "await emulator.wait_until_ready() first"
            )
        return session

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _after_ready(
        self,
        guild_id: int,
        event: str,
        build: Callable[[_Session], JSON],
        *,
        intent: int = INTENT_GUILDS,
    ) -> None:
        """World changes made after READY reach the connected shard like on Discord."""
        session = self._sessions.get(self.shard_for(guild_id))
        if session is None or not session.ready or not session.intents & intent:
            return
        self._spawn(session.dispatch(event, build(session)))

    async def _dispatch_message_event(self, event: str, message: MessageRecord) -> None:
        if message.guild_id is None or message.ephemeral:
            return
        session = self._sessions.get(self.shard_for(message.guild_id))
        if session is None or not session.ready or not session.intents & INTENT_GUILD_MESSAGES:
            return
        if event == "MESSAGE_DELETE":
            payload: JSON = {
                "id": str(message.id),
                "channel_id": str(message.channel_id),
                "guild_id": str(message.guild_id),
            }
        else:
            payload = message.to_payload(include_guild=True)
            member = self.guilds[message.guild_id].members.get(message.author_id)
            if member is not None:
                payload["member"] = member.to_payload(with_user=False)
            if (
                not session.intents & INTENT_MESSAGE_CONTENT
                and message.author_id != self.bot_user_id
            ):
                payload.update(content="", embeds=[], attachments=[], components=[])
        await session.dispatch(event, payload)

    # ---------------------------------------------------------------- interactions (driver side)

    def _find_command(self, name: str, guild_id: int, command_type: int) -> JSON:
        for scope in (self._guild_commands.get(guild_id, {}), self._global_commands):
            for command in scope.values():
                if command["name"] == name and command.get("type", 1) == command_type:
                    return command
        known = sorted(
            c["name"]
            for c in [
                *self._global_commands.values(),
                *self._guild_commands.get(guild_id, {}).values(),
            ]
        )
        raise LookupError(
            f"command {name!r} (type {command_type}) was never synced for guild {guild_id}; "
            f"registered: {known}"
        )

    def _resolve_option_values(self, guild: Guild, options: list[JSON], resolved: JSON) -> None:
        for option in options:
            kind = option.get("type")
            if kind in (1, 2):
                self._resolve_option_values(guild, option.setdefault("options", []), resolved)
                continue
            if "value" not in option:
                continue
            value = int(option["value"]) if kind in (6, 7, 8, 9) else None
            if value is None:
                continue
            if kind in (6, 9) and value in self._users:
                resolved.setdefault("users", {})[str(value)] = self._users[value].to_payload()
                member = guild.members.get(value)
                if member is not None:
                    resolved.setdefault("members", {})[str(value)] = {
                        **member.to_payload(with_user=False),
                        "permissions": str(guild.permissions_of(member)),
                    }
            elif kind in (7, 9) and value in guild.channels:
                channel = guild.channels[value]
                resolved.setdefault("channels", {})[str(value)] = {
                    **channel.to_payload(),
                    "permissions": str(ALL_PERMISSIONS),
                }
            elif kind in (8, 9) and value in guild.roles:
                resolved.setdefault("roles", {})[str(value)] = guild.roles[value].to_payload()
            option["value"] = str(value)

    async def slash(
        self,
        name: str,
        *,
        guild_id: int,
        channel_id: int,
        user_id: int,
        options: Sequence[JSON] = (),
        subcommand: str | None = None,
        attachments: Mapping[str, JSON] = _EMPTY_MAPPING,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """A user runs ``/name``.

        ``options`` are in Discord's wire shape (``{"name", "type", "value"}``);
        ``attachments`` maps an attachment option's name to an object from
        :meth:`add_attachment`.  ``subcommand`` may be ``"sub"`` or ``"group sub"``.
        User/channel/role options are resolved from the emulator's world.
        """
        guild = self._guild(guild_id)
        command = self._find_command(name, guild.id, 1)
        opts = [copy.deepcopy(dict(o)) for o in options]
        resolved: JSON = {}
        for option_name, attachment in attachments.items():
            opts.append({"name": option_name, "type": 11, "value": str(attachment["id"])})
            resolved.setdefault("attachments", {})[str(attachment["id"])] = copy.deepcopy(
                dict(attachment)
            )
        self._resolve_option_values(guild, opts, resolved)
        if subcommand:
            parts = subcommand.split()
            opts = [{"type": 1, "name": parts[-1], "options": opts}]
            if len(parts) == 2:
                opts = [{"type": 2, "name": parts[0], "options": opts}]
            elif len(parts) > 2:
                raise ValueError("subcommand is 'sub' or 'group sub'")
        data: JSON = {"id": command["id"], "name": command["name"], "type": 1}
        if opts:
            data["options"] = opts
        if resolved:
            data["resolved"] = resolved
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        return await self._dispatch_interaction(
            INTERACTION_APPLICATION_COMMAND,
            data,
            guild_id=guild.id,
            channel_id=channel_id,
            user_id=user_id,
            locale=locale,
        )

    async def autocomplete(
        self,
        name: str,
        *,
        guild_id: int,
        channel_id: int,
        user_id: int,
        focused: str,
        typed: str = "",
        options: Sequence[JSON] = (),
        subcommand: str | None = None,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """A user types ``typed`` into option ``focused`` of ``/name``.

        Discord sends APPLICATION_COMMAND_AUTOCOMPLETE (type 4) with the options
        filled in so far (``options``, wire shape) and the focused one marked, its
        value the partial text; the bot answers with a type 8 callback whose
        choices land in ``InteractionRecord.autocomplete_choices``. The option must
        be declared with ``autocomplete``, as Discord only asks for those.
        """
        guild = self._guild(guild_id)
        command = self._find_command(name, guild.id, 1)
        declared = command.get("options", [])
        for part in (subcommand or "").split():
            declared = next((o.get("options", []) for o in declared if o.get("name") == part), [])
        spec = next((o for o in declared if o.get("name") == focused), None)
        if spec is None or not spec.get("autocomplete"):
            raise LookupError(f"/{name} has no autocomplete option {focused!r}")
        opts: list[JSON] = [copy.deepcopy(dict(o)) for o in options if o.get("name") != focused]
        opts.append({"name": focused, "type": spec["type"], "value": typed, "focused": True})
        if subcommand:
            parts = subcommand.split()
            opts = [{"type": 1, "name": parts[-1], "options": opts}]
            if len(parts) == 2:
                opts = [{"type": 2, "name": parts[0], "options": opts}]
        data: JSON = {"id": command["id"], "name": command["name"], "type": 1, "options": opts}
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        return await self._dispatch_interaction(
            INTERACTION_AUTOCOMPLETE,
            data,
            guild_id=guild.id,
            channel_id=channel_id,
            user_id=user_id,
            locale=locale,
        )

    async def message_command(
        self,
        name: str,
        *,
        guild_id: int,
        channel_id: int,
        user_id: int,
        message: JSON | MessageRecord,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """A user picks the message context-menu command ``name`` on ``message``."""
        guild = self._guild(guild_id)
        command = self._find_command(name, guild.id, 3)
        target = self._message_payload(message)
        data: JSON = {
            "id": command["id"],
            "name": command["name"],
            "type": 3,
            "target_id": target["id"],
            "resolved": {"messages": {target["id"]: target}},
        }
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        return await self._dispatch_interaction(
            INTERACTION_APPLICATION_COMMAND,
            data,
            guild_id=guild.id,
            channel_id=channel_id,
            user_id=user_id,
            locale=locale,
        )

    async def user_command(
        self, name: str, *, guild_id: int, channel_id: int, user_id: int, target_id: int
    ) -> InteractionRecord:
        guild = self._guild(guild_id)
        command = self._find_command(name, guild.id, 2)
        resolved: JSON = {}
        self._resolve_option_values(guild, [{"type": 6, "value": target_id}], resolved)
        data: JSON = {
            "id": command["id"],
            "name": command["name"],
            "type": 2,
            "target_id": str(target_id),
            "resolved": resolved,
        }
        return await self._dispatch_interaction(
            INTERACTION_APPLICATION_COMMAND,
            data,
            guild_id=guild.id,
            channel_id=channel_id,
            user_id=user_id,
        )

    async def click(
        self,
        message: JSON | MessageRecord,
        custom_id: str,
        *,
        user_id: int,
        guild_id: int | None = None,
        channel_id: int | None = None,
        values: Sequence[str] | None = None,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """A user presses a button (or picks ``values`` in a select) on ``message``.

        The component must exist on the message, as Discord only sends interactions for
        components it rendered. On a message in a DM with the bot, only that DM's member
        presses, and the interaction carries no guild (as Discord sends it).
        """
        record = self._message_record(message)
        component = next(
            (c for c in _walk_components(record.components) if c.get("custom_id") == custom_id),
            None,
        )
        if component is None:
            raise LookupError(
                f"message {record.id} has no component {custom_id!r}; it has {record.custom_ids()}"
            )
        data: JSON = {"custom_id": custom_id, "component_type": component["type"]}
        if "id" in component:
            data["id"] = component["id"]
        if component["type"] != 2:
            data["values"] = list(values or ())
            data["resolved"] = {}
        return await self._dispatch_interaction(
            INTERACTION_COMPONENT,
            data,
            guild_id=guild_id if guild_id is not None else (record.guild_id or 0),
            channel_id=channel_id if channel_id is not None else record.channel_id,
            user_id=user_id,
            message=record,
            locale=locale,
        )

    async def submit_modal(
        self,
        custom_id: str,
        values: Mapping[str, str],
        *,
        guild_id: int,
        channel_id: int,
        user_id: int,
        message: JSON | MessageRecord | None = None,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """A user submits the modal ``custom_id`` with text-input ``values``.

        If the bot showed that modal (a type 9 callback), the submission mirrors its
        layout and enforces required inputs; otherwise each value gets an action row.
        """
        opened = next(
            (
                rec
                for rec in reversed(self.interactions.values())
                if rec.modal is not None and rec.modal.get("custom_id") == custom_id
            ),
            None,
        )
        if opened is not None and opened.user_id != int(user_id):
            # Discord shows a modal to the member who opened it, and only they submit it.
            raise LookupError(f"modal {custom_id!r} was opened by user {opened.user_id}")
        shown = None if opened is None else opened.modal
        remaining = dict(values)
        components: list[JSON] = []
        if shown is not None:
            for top in shown.get("components", []):
                submitted = self._modal_submission(top, remaining)
                if submitted is not None:
                    components.append(submitted)
            if remaining:
                raise LookupError(f"modal {custom_id!r} has no inputs named {sorted(remaining)}")
        else:
            components = [
                {"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]}
                for k, v in remaining.items()
            ]
        data: JSON = {"custom_id": custom_id, "components": components}
        return await self._dispatch_interaction(
            INTERACTION_MODAL_SUBMIT,
            data,
            guild_id=guild_id,
            channel_id=channel_id,
            user_id=user_id,
            message=None if message is None else self._message_record(message),
            locale=locale,
        )

    def _modal_submission(self, component: JSON, values: dict[str, str]) -> JSON | None:
        kind = component.get("type")
        if kind == 1:
            children = [self._modal_submission(c, values) for c in component.get("components", [])]
            return {"type": 1, "components": [c for c in children if c is not None]}
        if kind == 18:
            inner = component.get("component")
            child = self._modal_submission(inner, values) if isinstance(inner, dict) else None
            result: JSON = {"type": 18, "component": child}
            if "id" in component:
                result["id"] = component["id"]
            return result if child is not None else None
        if kind == 4:
            custom_id = component["custom_id"]
            if custom_id not in values and component.get("required", True):
                raise ValueError(f"text input {custom_id!r} is required")
            return {"type": 4, "custom_id": custom_id, "value": values.pop(custom_id, "")}
        return None

    def _message_payload(self, message: JSON | MessageRecord) -> JSON:
        if isinstance(message, MessageRecord):
            return message.to_payload()
        return copy.deepcopy(dict(message))

    def _message_record(self, message: JSON | MessageRecord) -> MessageRecord:
        if isinstance(message, MessageRecord):
            return message
        found = self.messages.get(int(message["id"]))
        if found is None:
            raise LookupError(f"message {message['id']} is unknown to the emulator")
        return found

    async def _dispatch_interaction(
        self,
        kind: int,
        data: JSON,
        *,
        guild_id: int,
        channel_id: int,
        user_id: int,
        message: MessageRecord | None = None,
        locale: str = "en-US",
    ) -> InteractionRecord:
        channel = self._channel(channel_id)
        interaction_id = self._snowflake()
        token = f"aW50ZXJhY3Rpb246{interaction_id}:{secrets.token_urlsafe(48)}"
        payload: JSON = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "channel_id": str(channel.id),
            "token": token,
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
        }
        if channel.recipient is not None:
            # The member's DM with the bot (context BOT_DM): no guild, so a ``user``
            # instead of a ``member``, and the GUILD_INSTALL owner is "0".
            if guild_id:
                raise ValueError(f"channel {channel_id} is a DM, in no guild")
            if int(user_id) != channel.recipient.id:
                raise ValueError(f"only user {channel.recipient.id} interacts in DM {channel_id}")
            user = channel.recipient
            payload.update(
                {
                    "channel": channel.to_payload(),
                    "user": user.to_payload(),
                    "app_permissions": str(DM_BOT_PERMISSIONS),
                    "authorizing_integration_owners": {"0": "0"},
                    "context": CONTEXT_BOT_DM,
                    "attachment_size_limit": DM_UPLOAD_LIMIT,
                }
            )
        else:
            guild = self._guild(guild_id)
            if channel.guild_id != guild.id:
                raise ValueError(f"channel {channel_id} is not in guild {guild_id}")
            member = self._member(guild, user_id)
            user = member.user
            bot_member = guild.members[self.bot_user_id]
            permissions = guild.permissions_of(member)
            payload.update(
                {
                    "guild_id": str(guild.id),
                    "guild": {"id": str(guild.id), "locale": guild.locale, "features": []},
                    "channel": {**channel.to_payload(), "permissions": str(permissions)},
                    "member": {**member.to_payload(), "permissions": str(permissions)},
                    "app_permissions": str(guild.permissions_of(bot_member)),
                    "guild_locale": guild.locale,
                    "authorizing_integration_owners": {"0": str(guild.id)},
                    "context": CONTEXT_GUILD,
                    "attachment_size_limit": guild.filesize_limit,
                }
            )
        if message is not None:
            payload["message"] = message.to_payload()
        # DM events come on shard 0, as for guild id 0.
        session = self._session_for_guild(channel.guild_id)
        record = InteractionRecord(
            id=interaction_id,
            token=token,
            type=kind,
            guild_id=channel.guild_id,
            channel_id=channel.id,
            user_id=user.id,
            data=data,
            payload=payload,
            created_at=asyncio.get_running_loop().time(),
            message=message,
            _emulator=self,
        )
        self.interactions[interaction_id] = record
        self._interactions_by_token[token] = record
        await session.dispatch("INTERACTION_CREATE", payload)
        self._notify()
        return record

    async def redispatch(self, record: InteractionRecord) -> None:
        """Send the same INTERACTION_CREATE again, as Discord occasionally does."""
        session = self._session_for_guild(record.guild_id)
        await session.dispatch("INTERACTION_CREATE", record.payload)
        self._notify()

    # ---------------------------------------------------------------- HTTP plumbing

    def _build_routes(self) -> list[_Route]:
        table: list[tuple[str, str, _Handler, bool]] = [
            ("GET", "/users/@me", self._get_me, True),
            ("GET", "/users/@me/guilds", self._get_my_guilds, True),
            ("GET", "/users/{user_id}", self._get_user, True),
            ("GET", "/oauth2/applications/@me", self._get_application, True),
            ("GET", "/applications/@me", self._get_application, True),
            ("GET", "/gateway", self._get_gateway, False),
            ("GET", "/gateway/bot", self._get_gateway_bot, True),
            ("GET", "/applications/{application_id}/commands", self._list_commands, True),
            ("PUT", "/applications/{application_id}/commands", self._put_commands, True),
            ("POST", "/applications/{application_id}/commands", self._post_command, True),
            (
                "GET",
                "/applications/{application_id}/commands/{command_id}",
                self._get_command,
                True,
            ),
            (
                "PATCH",
                "/applications/{application_id}/commands/{command_id}",
                self._patch_command,
                True,
            ),
            (
                "DELETE",
                "/applications/{application_id}/commands/{command_id}",
                self._delete_command,
                True,
            ),
            (
                "GET",
                "/applications/{application_id}/guilds/{guild_id}/commands",
                self._list_commands,
                True,
            ),
            (
                "PUT",
                "/applications/{application_id}/guilds/{guild_id}/commands",
                self._put_commands,
                True,
            ),
            (
                "POST",
                "/applications/{application_id}/guilds/{guild_id}/commands",
                self._post_command,
                True,
            ),
            (
                "GET",
                "/applications/{application_id}/guilds/{guild_id}/commands/{command_id}",
                self._get_command,
                True,
            ),
            (
                "PATCH",
                "/applications/{application_id}/guilds/{guild_id}/commands/{command_id}",
                self._patch_command,
                True,
            ),
            (
                "DELETE",
                "/applications/{application_id}/guilds/{guild_id}/commands/{command_id}",
                self._delete_command,
                True,
            ),
            ("POST", "/attachments/refresh-urls", self._refresh_urls, True),
            ("GET", "/applications/{application_id}/entitlements", self._empty_list, True),
            ("GET", "/applications/{application_id}/emojis", self._empty_items, True),
            (
                "POST",
                "/interactions/{interaction_id}/{interaction_token}/callback",
                self._interaction_callback,
                False,
            ),
            (
                "GET",
                "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
                self._get_original,
                False,
            ),
            (
                "PATCH",
                "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
                self._patch_original,
                False,
            ),
            (
                "DELETE",
                "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
                self._delete_original,
                False,
            ),
            ("POST", "/webhooks/{webhook_id}/{webhook_token}", self._post_followup, False),
            (
                "GET",
                "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
                self._get_followup,
                False,
            ),
            (
                "PATCH",
                "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
                self._patch_followup,
                False,
            ),
            (
                "DELETE",
                "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
                self._delete_followup,
                False,
            ),
            ("POST", "/users/@me/channels", self._create_dm, True),
            ("GET", "/channels/{channel_id}", self._get_channel, True),
            ("GET", "/channels/{channel_id}/messages", self._list_messages, True),
            ("POST", "/channels/{channel_id}/messages", self._post_message, True),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message, True),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._patch_message, True),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self._delete_message, True),
            ("POST", "/channels/{channel_id}/typing", self._no_content, True),
            ("GET", "/guilds/{guild_id}", self._get_guild, True),
            ("GET", "/guilds/{guild_id}/channels", self._get_guild_channels, True),
            ("GET", "/guilds/{guild_id}/roles", self._get_guild_roles, True),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._get_guild_member, True),
        ]
        routes: list[_Route] = []
        for method, template, handler, auth in table:
            routes.append(_Route(method, template, _template_regex(template), handler, auth))
        # Literal segments beat placeholders: "/users/@me" before "/users/{user_id}".
        routes.sort(key=lambda r: -_literal_segments(r.template))
        return routes

    def _match_route(self, method: str, path: str) -> tuple[_Route, dict[str, str]] | None:
        for route in self._routes:
            if route.method != method:
                continue
            match = route.pattern.match(path)
            if match is not None:
                return route, match.groupdict()
        return None

    def _json(
        self, body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        # Exactly "application/json": discord.py's json_or_text() compares the header
        # verbatim and treats "application/json; charset=utf-8" as plain text.
        merged = {"Content-Type": "application/json", **(headers or {})}
        return web.Response(body=_dumps(body).encode(), status=status, headers=merged)

    @staticmethod
    def _no_body() -> web.Response:
        return web.Response(status=204)

    async def _read_body(self, request: web.Request) -> tuple[Any, list[UploadedFile], bool]:
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            payload: Any = None
            files: list[UploadedFile] = []
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):
                    continue
                name = part.name or ""
                raw = bytes(await part.read(decode=True))
                if name == "payload_json":
                    try:
                        payload = json.loads(raw)
                    except ValueError:
                        raise DiscordAPIError(
                            400, 50109, "The request body contains invalid JSON."
                        ) from None
                elif part.filename is not None or name.startswith("files["):
                    match = re.fullmatch(r"files\[(\d+)\]", name)
                    files.append(
                        UploadedFile(
                            field=name,
                            index=int(match[1]) if match else None,
                            filename=part.filename or name,
                            content_type=part.headers.get("Content-Type"),
                            data=raw,
                        )
                    )
                else:
                    # Discord also accepts plain form fields next to (or instead of) payload_json.
                    if payload is None:
                        payload = {}
                    if isinstance(payload, dict):
                        payload[name] = raw.decode()
            return payload, files, True
        raw_body = await request.read()
        if not raw_body:
            return None, [], False
        try:
            return json.loads(raw_body), [], False
        except ValueError:
            raise DiscordAPIError(400, 50109, "The request body contains invalid JSON.") from None

    def _check_spec(
        self, method: str, path: str, body: Any, multipart: bool, *, known: bool
    ) -> list[str]:
        if self.spec is None:
            return []
        template = self.spec.match_path(path)
        if template is None or self.spec.operation(template, method) is None:
            # Routes the emulator doesn't know are already reported as unknown_routes.
            return [f"{method} {path}: no such operation in the OpenAPI spec"] if known else []
        if body is None:
            return []
        schema = self.spec.request_schema(template, method, multipart=multipart)
        if schema is None:
            return [f"{method} {template}: spec defines no request body but one was sent"]
        return [f"{method} {template}: {e}" for e in self.spec.validate(body, schema)]

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        received_at = loop.time()
        method = request.method.upper()
        path = "/" + request.match_info["tail"]
        record = RecordedRequest(
            method=method,
            path=path,
            query=dict(request.query),
            headers=dict(request.headers),
            json=None,
            files=[],
            multipart=False,
            at=received_at,
        )
        self.requests.append(record)
        try:
            response = await self._serve_api(request, record, received_at)
        except DiscordAPIError as exc:
            response = self._json(exc.body(), status=exc.status, headers=exc.headers)
        except Exception as exc:
            # An emulator bug must fail the test quickly: a 500 would make discord.py retry
            # for ~25 s, so answer 400 and surface it through assert_no_violations().
            log.exception("discord emulator crashed on %s %s", method, path)
            self.internal_errors.append(f"{method} {path}: {exc!r}")
            response = self._json(
                {"message": f"emulator internal error: {exc!r}", "code": 0}, status=400
            )
        # Discord answers through Google's load balancer; discord.py only trusts a 429 as a
        # rate limit (and not a Cloudflare ban) when this header is present.
        response.headers.setdefault("Via", "1.1 google")
        record.status = response.status
        self._notify()
        return response

    async def _serve_api(
        self, request: web.Request, record: RecordedRequest, received_at: float
    ) -> web.StreamResponse:
        method, path = record.method, record.path
        if request.match_info["version"] != str(API_VERSION):
            self.unknown_routes.append(f"{method} {request.path}")
            raise DiscordAPIError(404, 0, "404: Not Found")
        body, files, multipart = await self._read_body(request)
        record.json, record.files, record.multipart = body, files, multipart

        matched = self._match_route(method, path)
        violations = (
            []
            if matched is not None and matched[0].template in OUTSIDE_PUBLISHED_SPEC
            else self._check_spec(method, path, body, multipart, known=matched is not None)
        )
        self.spec_violations.extend(violations)

        record.route = None if matched is None else matched[0].template
        bucket = hashlib.sha1(f"{method} {record.route or path}".encode()).hexdigest()[:16]

        failure = self._take_failure(method, path)
        if failure is not None:
            record.injected = True
            return self._failure_response(failure, bucket)

        if matched is None:
            self.unknown_routes.append(f"{method} {path}")
            log.warning("discord emulator: unknown route %s %s", method, path)
            raise DiscordAPIError(404, 0, "404: Not Found")
        route, params = matched
        if route.auth and request.headers.get("Authorization") != f"Bot {self.token}":
            raise DiscordAPIError(401, 0, "401: Unauthorized")
        if violations and self.reject_spec_violations:
            raise DiscordAPIError(400, 50035, "Invalid Form Body", errors={"_spec": violations})

        ctx = _Context(
            request=request,
            method=method,
            path=path,
            params=params,
            query=dict(request.query),
            body=body,
            files=files,
            multipart=multipart,
            received_at=received_at,
            record=record,
        )
        response = await route.handler(ctx)
        stall = self._take_stall(method, path)
        if stall is not None:
            # Done, and seen by everyone, but the caller hears nothing for now.
            record.stalled = True
            self._notify()
            await asyncio.sleep(stall)
        if response.status < 300:
            response.headers.update(
                {
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "4",
                    "X-RateLimit-Reset": f"{time.time() + 1:.3f}",
                    "X-RateLimit-Reset-After": "1.000",
                    "X-RateLimit-Bucket": bucket,
                }
            )
        return response

    # ---------------------------------------------------------------- CDN

    def _cdn_signature(
        self, channel_id: int, attachment_id: int, filename: str, expires: int, issued: int
    ) -> str:
        message = f"{channel_id}/{attachment_id}/{filename}:{expires:x}:{issued:x}".encode()
        return hmac.new(self._cdn_secret, message, hashlib.sha256).hexdigest()

    def cdn_now(self) -> float:
        """The CDN's clock, which signs and checks link expiry."""
        return time.time() + self._cdn_clock_offset

    def advance_cdn_clock(self, seconds: float) -> None:
        """Let ``seconds`` pass for CDN links (issued ones age; new ones start later)."""
        self._cdn_clock_offset += seconds

    def _cdn_url(self, host_path: str, channel_id: int, attachment_id: int, filename: str) -> str:
        issued = int(self.cdn_now())
        expires = issued + max(1, math.ceil(self.cdn_link_lifetime))
        signature = self._cdn_signature(channel_id, attachment_id, filename, expires, issued)
        return (
            f"{self.base_url}/{host_path}/attachments/{channel_id}/{attachment_id}/"
            f"{quote(filename)}?ex={expires:x}&is={issued:x}&hm={signature}"
        )

    async def _handle_cdn(self, request: web.Request) -> web.StreamResponse:
        gone = web.Response(status=404, text="This content is no longer available.")
        try:
            channel_id = int(request.match_info["channel_id"])
            attachment_id = int(request.match_info["attachment_id"])
            expires = int(request.query["ex"], 16)
            issued = int(request.query["is"], 16)
        except (KeyError, ValueError):
            return gone
        filename = request.match_info["filename"]
        attachment = self.attachments.get(attachment_id)
        expected = self._cdn_signature(channel_id, attachment_id, filename, expires, issued)
        if (
            attachment is None
            or attachment.channel_id != channel_id
            or attachment.filename != filename
            or not hmac.compare_digest(expected, request.query.get("hm", ""))
            or expires < self.cdn_now()
        ):
            return gone
        self.cdn_downloads.append(request.path)
        self._notify()
        if self.cdn_hold is not None:
            await self.cdn_hold.wait()  # a slow CDN, until the test lets it go
        return web.Response(
            body=attachment.data,
            content_type=attachment.content_type or "application/octet-stream",
        )

    def _signed_attachment(self, url: str) -> tuple[str, AttachmentRecord] | None:
        """The host path and attachment of a link this CDN signed, expired or not."""
        parsed = yarl.URL(url)
        parts = parsed.path.strip("/").split("/")
        if len(parts) != 5 or parts[1] != "attachments" or parts[0] not in ("cdn", "media"):
            return None
        try:
            channel_id, attachment_id = int(parts[2]), int(parts[3])
            expires, issued = int(parsed.query["ex"], 16), int(parsed.query["is"], 16)
        except (KeyError, ValueError):
            return None
        attachment = self.attachments.get(attachment_id)
        expected = self._cdn_signature(channel_id, attachment_id, parts[4], expires, issued)
        if (
            attachment is None
            or attachment.channel_id != channel_id
            or attachment.filename != parts[4]
            or not hmac.compare_digest(expected, parsed.query.get("hm", ""))
        ):
            return None
        return parts[0], attachment

    async def _refresh_urls(self, ctx: _Context) -> web.StreamResponse:
        body = ctx.body if isinstance(ctx.body, dict) else {}
        urls = body.get("attachment_urls")
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise _form_error("attachment_urls", "BASE_TYPE_REQUIRED", "This field is required")
        if not 1 <= len(urls) <= MAX_REFRESH_URLS:
            raise _form_error(
                "attachment_urls",
                "BASE_TYPE_BAD_LENGTH",
                f"Must be between 1 and {MAX_REFRESH_URLS} in length.",
            )
        refreshed = []
        for url in urls:
            found = self._signed_attachment(url)
            if found is None:
                continue  # not one of Discord's signed links: left out, as Discord does
            host_path, attachment = found
            fresh = self._cdn_url(
                host_path, attachment.channel_id, attachment.id, attachment.filename
            )
            refreshed.append({"original": url, "refreshed": fresh})
        self.refreshed_urls.extend(item["original"] for item in refreshed)
        return self._json({"refreshed_urls": refreshed})

    # ---------------------------------------------------------------- messages (shared)

    def _store_attachment(
        self,
        channel_id: int,
        data: bytes,
        filename: str,
        content_type: str | None,
        *,
        description: str | None = None,
        ephemeral: bool = False,
        title: str | None = None,
    ) -> AttachmentRecord:
        attachment_id = self._snowflake()
        # Discord normalises names the same way: no path parts, whitespace to underscores.
        clean = re.sub(r"\s+", "_", filename.replace("\\", "/").rsplit("/", 1)[-1]) or "unknown"
        if content_type is None or content_type == "application/octet-stream":
            content_type = mimetypes.guess_type(clean)[0] or content_type
        width, height = (
            _image_size(data)
            if content_type and content_type.startswith("image/")
            else (None, None)
        )
        record = AttachmentRecord(
            id=attachment_id,
            channel_id=channel_id,
            filename=clean,
            data=data,
            content_type=content_type,
            url=self._cdn_url("cdn", channel_id, attachment_id, clean),
            proxy_url=self._cdn_url("media", channel_id, attachment_id, clean),
            description=description,
            ephemeral=ephemeral,
            width=width,
            height=height,
            title=title,
        )
        self.attachments[attachment_id] = record
        return record

    def _store_message(self, message: MessageRecord) -> None:
        self.messages[message.id] = message
        channel = self._channels.get(message.channel_id)
        if channel is not None and not message.ephemeral:
            channel.last_message_id = message.id

    @staticmethod
    def _check_uploads(files: Sequence[UploadedFile], limit: int) -> None:
        if len(files) > MAX_FILES_PER_MESSAGE:
            raise _form_error(
                "files",
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {MAX_FILES_PER_MESSAGE} or fewer in length.",
            )
        if sum(f.size for f in files) > limit:
            raise DiscordAPIError(413, 40005, "Request entity too large")

    @staticmethod
    def _check_message_payload(payload: JSON, prefix: str = "") -> None:
        content = payload.get("content")
        if isinstance(content, str) and len(content) > MAX_CONTENT_LENGTH:
            raise _form_error(
                f"{prefix}content",
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {MAX_CONTENT_LENGTH} or fewer in length.",
            )
        embeds = payload.get("embeds") or []
        if isinstance(embeds, list):
            if len(embeds) > MAX_EMBEDS:
                raise _form_error(
                    f"{prefix}embeds",
                    "BASE_TYPE_MAX_LENGTH",
                    f"Must be {MAX_EMBEDS} or fewer in length.",
                )
            if sum(_embed_chars(e) for e in embeds if isinstance(e, dict)) > MAX_EMBED_TOTAL_CHARS:
                raise _form_error(
                    f"{prefix}embeds",
                    "MAX_EMBED_SIZE_EXCEEDED",
                    f"Embed size exceeds maximum size of {MAX_EMBED_TOTAL_CHARS}",
                )

    def _resolve_attachments(
        self,
        payload: JSON,
        files: Sequence[UploadedFile],
        channel_id: int,
        existing: Sequence[AttachmentRecord],
        *,
        ephemeral: bool,
        prefix: str,
    ) -> list[AttachmentRecord]:
        by_index = {f.index: f for f in files if f.index is not None}
        used: set[int] = set()
        kept_by_id = {a.id: a for a in existing}

        def upload(file: UploadedFile, entry: JSON | None) -> AttachmentRecord:
            entry = entry or {}
            return self._store_attachment(
                channel_id,
                file.data,
                entry.get("filename") or file.filename,
                file.content_type,
                description=entry.get("description"),
                ephemeral=ephemeral,
                title=entry.get("title"),
            )

        result: list[AttachmentRecord] = []
        listed = payload.get("attachments")
        if isinstance(listed, list):
            for position, entry in enumerate(listed):
                raw_id = entry.get("id") if isinstance(entry, dict) else None
                try:
                    numeric = int(raw_id) if raw_id is not None else None
                except (TypeError, ValueError):
                    numeric = None
                if numeric is not None and numeric in kept_by_id:
                    kept = kept_by_id[numeric]
                    if isinstance(entry, dict) and entry.get("description") is not None:
                        kept.description = entry["description"]
                    result.append(kept)
                elif numeric is not None and numeric in by_index and numeric not in used:
                    used.add(numeric)
                    result.append(upload(by_index[numeric], entry))
                else:
                    raise _form_error(
                        f"{prefix}attachments[{position}].id",
                        "ATTACHMENT_NOT_FOUND",
                        f"Unknown attachment {raw_id!r}: not kept and not an uploaded file",
                    )
        else:
            result.extend(existing)
        # Files not mentioned in "attachments" are still attached, as on Discord.
        for file in files:
            if file.index is None or file.index not in used:
                result.append(upload(file, None))
        return result

    def _resolve_embed_media(self, message: MessageRecord) -> None:
        by_name = {a.filename: a for a in message.attachments}

        def fix(holder: Any, key: str) -> None:
            if not isinstance(holder, dict):
                return
            url = holder.get(key)
            if isinstance(url, str) and url.startswith("attachment://"):
                attachment = by_name.get(url.removeprefix("attachment://"))
                if attachment is not None:
                    holder[key] = attachment.url
                    holder["proxy_" + key] = attachment.proxy_url
                    if attachment.width is not None and key == "url":
                        holder["width"] = attachment.width
                        holder["height"] = attachment.height
                    if attachment.content_type:
                        holder.setdefault("content_type", attachment.content_type)

        for embed in message.embeds:
            for media in ("image", "thumbnail", "video"):
                fix(embed.get(media), "url")
            fix(embed.get("author"), "icon_url")
            fix(embed.get("footer"), "icon_url")

    def _apply_message_payload(
        self,
        message: MessageRecord,
        payload: JSON,
        files: Sequence[UploadedFile],
        *,
        creating: bool,
        prefix: str = "",
    ) -> None:
        self._check_message_payload(payload, prefix)
        new_attachments = None
        if "attachments" in payload or files:
            new_attachments = self._resolve_attachments(
                payload,
                files,
                message.channel_id,
                [] if creating else message.attachments,
                ephemeral=message.ephemeral,
                prefix=prefix,
            )
        if creating:
            has_body = (
                bool(payload.get("content"))
                or bool(payload.get("embeds"))
                or bool(payload.get("components"))
                or bool(new_attachments)
                or bool(payload.get("poll"))
                or bool(payload.get("sticker_ids"))
            )
            if not has_body:
                raise DiscordAPIError(400, 50006, "Cannot send an empty message")
        if "content" in payload:
            message.content = payload["content"] or ""
        if "embeds" in payload:
            message.embeds = [_normalize_embed(e) for e in payload["embeds"] or []]
        if "components" in payload:
            message.components = _number_components(copy.deepcopy(payload["components"] or []))
        if "allowed_mentions" in payload:
            message.allowed_mentions = payload["allowed_mentions"]
        if new_attachments is not None:
            message.attachments = new_attachments
        if payload.get("flags") is not None:
            requested = int(payload["flags"])
            if creating:
                message.flags |= requested & _CREATE_FLAGS
            else:
                message.flags = (message.flags & ~FLAG_SUPPRESS_EMBEDS) | (
                    requested & FLAG_SUPPRESS_EMBEDS
                )
        if creating:
            message.tts = bool(payload.get("tts", False))
            message.nonce = payload.get("nonce")
            message.message_reference = payload.get("message_reference")
        else:
            if not message.loading:
                message.edited_at = _now()
            message.flags &= ~FLAG_LOADING
        self._resolve_embed_media(message)
        message.edits.append(copy.deepcopy(payload))

    def _new_message(
        self,
        channel: Channel,
        *,
        author: User,
        flags: int = 0,
        message_type: int = 0,
        interaction: InteractionRecord | None = None,
    ) -> MessageRecord:
        message = MessageRecord(
            self._snowflake(),
            channel.id,
            channel.guild_id or None,  # 0: a DM channel
            author,
            flags=flags,
            type=message_type,
        )
        if interaction is not None:
            user = self._users[interaction.user_id]
            message.webhook_id = self.application_id
            message.application_id = self.application_id
            metadata: JSON = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": user.to_payload(),
                "authorizing_integration_owners": {"0": str(interaction.guild_id)},
            }
            if interaction.type == INTERACTION_APPLICATION_COMMAND:
                metadata["name"] = interaction.command_name
                metadata["command_type"] = interaction.data.get("type", 1)
                message.interaction = {
                    "id": str(interaction.id),
                    "type": interaction.type,
                    "name": interaction.command_name,
                    "user": user.to_payload(),
                }
            elif interaction.message is not None:
                metadata["interacted_message_id"] = str(interaction.message.id)
            message.interaction_metadata = metadata
        return message

    def _interaction_message_type(self, interaction: InteractionRecord) -> int:
        if interaction.type == INTERACTION_APPLICATION_COMMAND:
            return 20 if interaction.data.get("type", 1) == 1 else 23
        return 0

    # ---------------------------------------------------------------- REST: identity & gateway

    async def _get_me(self, ctx: _Context) -> web.StreamResponse:
        return self._json(
            {
                **self.bot_user.to_payload(),
                "verified": True,
                "mfa_enabled": False,
                "locale": "en-US",
                "email": None,
                "premium_type": 0,
            }
        )

    async def _get_user(self, ctx: _Context) -> web.StreamResponse:
        user = self._users.get(int(ctx.params["user_id"]))
        if user is None:
            raise DiscordAPIError(404, 10013, "Unknown User")
        return self._json(user.to_payload())

    async def _get_my_guilds(self, ctx: _Context) -> web.StreamResponse:
        return self._json(
            [
                {
                    "id": str(g.id),
                    "name": g.name,
                    "icon": None,
                    "banner": None,
                    "owner": False,
                    "permissions": str(g.permissions_of(g.members[self.bot_user_id])),
                    "features": [],
                }
                for g in self.guilds.values()
            ]
        )

    async def _get_application(self, ctx: _Context) -> web.StreamResponse:
        return self._json(
            {
                "id": str(self.application_id),
                "name": self.bot_user.username,
                "icon": None,
                "description": "Discord emulator application",
                "summary": "",
                "type": None,
                "hook": True,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": hashlib.sha256(str(self.application_id).encode()).hexdigest(),
                "owner": self.owner_user.to_payload(),
                "team": None,
                "flags": self._application_flags(),
                "rpc_origins": [],
                "redirect_uris": [],
                "interactions_endpoint_url": None,
                "role_connections_verification_url": None,
                "tags": [],
                "install_params": None,
                "integration_types_config": {"0": {}},
                "approximate_guild_count": len(self.guilds),
                "bot": self.bot_user.to_payload(),
            }
        )

    async def _get_gateway(self, ctx: _Context) -> web.StreamResponse:
        return self._json({"url": self.gateway_url})

    async def _get_gateway_bot(self, ctx: _Context) -> web.StreamResponse:
        return self._json(
            {
                "url": self.gateway_url,
                "shards": self.shard_count,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 1000 - self.identifies,
                    "reset_after": 86_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    async def _empty_list(self, ctx: _Context) -> web.StreamResponse:
        return self._json([])

    async def _empty_items(self, ctx: _Context) -> web.StreamResponse:
        return self._json({"items": []})

    async def _no_content(self, ctx: _Context) -> web.StreamResponse:
        return self._no_body()

    # ---------------------------------------------------------------- REST: application commands

    def _check_application(self, ctx: _Context) -> dict[int, JSON]:
        if int(ctx.params["application_id"]) != self.application_id:
            raise DiscordAPIError(403, 50001, "Missing Access")
        guild_id = ctx.params.get("guild_id")
        if guild_id is None:
            return self._global_commands
        if int(guild_id) not in self.guilds or int(guild_id) in self.guilds_without_commands_scope:
            raise DiscordAPIError(403, 50001, "Missing Access")
        return self._guild_commands.setdefault(int(guild_id), {})

    def _build_command(self, ctx: _Context, body: JSON, previous: JSON | None) -> JSON:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise _form_error("name", "BASE_TYPE_REQUIRED", "This field is required")
        kind = body.get("type") or 1
        permissions = body.get("default_member_permissions")
        command: JSON = {
            "id": previous["id"] if previous else str(self._snowflake()),
            "application_id": str(self.application_id),
            "version": str(self._snowflake()),
            "type": kind,
            "name": body["name"],
            "name_localizations": body.get("name_localizations"),
            "description": body.get("description") or "",
            "description_localizations": body.get("description_localizations"),
            "default_member_permissions": None if permissions is None else str(permissions),
            "dm_permission": body.get("dm_permission", True),
            "nsfw": bool(body.get("nsfw", False)),
            "contexts": body.get("contexts"),
            "integration_types": body.get("integration_types") or [0],
        }
        if body.get("options"):
            command["options"] = copy.deepcopy(body["options"])
        if "guild_id" in ctx.params:
            command["guild_id"] = ctx.params["guild_id"]
        return command

    async def _list_commands(self, ctx: _Context) -> web.StreamResponse:
        scope = self._check_application(ctx)
        return self._json(list(scope.values()))

    async def _put_commands(self, ctx: _Context) -> web.StreamResponse:
        scope = self._check_application(ctx)
        body = ctx.body if ctx.body is not None else []
        if not isinstance(body, list):
            raise _form_error("_root", "BASE_TYPE_ARRAY", "Must be an array")
        seen: set[tuple[str, int]] = set()
        by_key = {(c["name"], c["type"]): c for c in scope.values()}
        replaced: dict[int, JSON] = {}
        for position, item in enumerate(body):
            if not isinstance(item, dict):
                raise _form_error(str(position), "MODEL_TYPE_CONVERT", "Must be an object")
            key = (str(item.get("name")), int(item.get("type") or 1))
            if key in seen:
                raise _form_error(
                    f"{position}.name",
                    "APPLICATION_COMMANDS_DUPLICATE_NAME",
                    "Application command names must be unique",
                )
            seen.add(key)
            command = self._build_command(ctx, item, by_key.get(key))
            replaced[int(command["id"])] = command
        scope.clear()
        scope.update(replaced)
        return self._json(list(scope.values()))

    async def _post_command(self, ctx: _Context) -> web.StreamResponse:
        scope = self._check_application(ctx)
        body = ctx.body if isinstance(ctx.body, dict) else {}
        key = (str(body.get("name")), int(body.get("type") or 1))
        previous = next((c for c in scope.values() if (c["name"], c["type"]) == key), None)
        command = self._build_command(ctx, body, previous)
        scope[int(command["id"])] = command
        return self._json(command, status=200 if previous else 201)

    def _command(self, ctx: _Context) -> tuple[dict[int, JSON], JSON]:
        scope = self._check_application(ctx)
        command = scope.get(int(ctx.params["command_id"]))
        if command is None:
            raise DiscordAPIError(404, 10063, "Unknown application command")
        return scope, command

    async def _get_command(self, ctx: _Context) -> web.StreamResponse:
        return self._json(self._command(ctx)[1])

    async def _patch_command(self, ctx: _Context) -> web.StreamResponse:
        scope, command = self._command(ctx)
        body = ctx.body if isinstance(ctx.body, dict) else {}
        updated = self._build_command(ctx, {**command, **body}, command)
        scope[int(updated["id"])] = updated
        return self._json(updated)

    async def _delete_command(self, ctx: _Context) -> web.StreamResponse:
        scope, command = self._command(ctx)
        del scope[int(command["id"])]
        return self._no_body()

    # ---------------------------------------------------------------- REST: interactions

    def _reject(
        self, interaction: InteractionRecord, ctx: _Context, error: DiscordAPIError
    ) -> DiscordAPIError:
        interaction.rejections.append(Rejection(ctx.method, ctx.path, error.status, error.body()))
        return error

    async def _interaction_callback(self, ctx: _Context) -> web.StreamResponse:
        try:
            interaction = self.interactions.get(int(ctx.params["interaction_id"]))
        except ValueError:
            interaction = None
        if interaction is None or interaction.token != ctx.params["interaction_token"]:
            raise unknown_interaction()
        if ctx.received_at - interaction.created_at > self.ack_timeout:
            raise self._reject(interaction, ctx, unknown_interaction())
        if interaction.acknowledged:
            raise self._reject(
                interaction,
                ctx,
                DiscordAPIError(400, 40060, "Interaction has already been acknowledged."),
            )
        body = ctx.body
        if not isinstance(body, dict) or not isinstance(body.get("type"), int):
            raise self._reject(
                interaction,
                ctx,
                _form_error("type", "BASE_TYPE_REQUIRED", "This field is required"),
            )
        kind: int = body["type"]
        data: JSON = body.get("data") or {}
        if kind not in _VALID_CALLBACKS.get(interaction.type, frozenset()) or (
            kind in (CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE)
            and interaction.message is None
        ):
            raise self._reject(
                interaction,
                ctx,
                _form_error(
                    "type",
                    "INTERACTION_CALLBACK_TYPE_INVALID",
                    f"Callback type {kind} is not valid for interaction type {interaction.type}",
                ),
            )
        channel = self._channels[interaction.channel_id]
        try:
            self._check_uploads(ctx.files, self._upload_limit(channel))
            resource = await self._apply_callback(interaction, kind, data, ctx.files, channel)
        except DiscordAPIError as exc:
            raise self._reject(interaction, ctx, exc) from None

        interaction.callbacks.append(Callback(kind, copy.deepcopy(data)))
        interaction.acked_at = ctx.received_at
        self._notify()
        if ctx.query.get("with_response") not in ("1", "true", "True"):
            return self._no_body()
        original = interaction.original
        summary: JSON = {"id": str(interaction.id), "type": interaction.type}
        if original is not None and kind in (
            CALLBACK_MESSAGE,
            CALLBACK_DEFERRED_MESSAGE,
            CALLBACK_UPDATE_MESSAGE,
        ):
            summary["response_message_id"] = str(original.id)
            summary["response_message_loading"] = original.loading
            summary["response_message_ephemeral"] = original.ephemeral
        response: JSON = {"interaction": summary}
        if resource is not None:
            response["resource"] = resource
        return self._json(response)

    async def _apply_callback(
        self,
        interaction: InteractionRecord,
        kind: int,
        data: JSON,
        files: Sequence[UploadedFile],
        channel: Channel,
    ) -> JSON | None:
        if kind == CALLBACK_MESSAGE:
            message = self._new_message(
                channel,
                author=self.bot_user,
                flags=int(data.get("flags") or 0) & FLAG_EPHEMERAL,
                message_type=self._interaction_message_type(interaction),
                interaction=interaction,
            )
            self._apply_message_payload(message, data, files, creating=True, prefix="data.")
            self._store_message(message)
            interaction.original = message
            await self._dispatch_message_event("MESSAGE_CREATE", message)
            return {"type": kind, "message": message.to_payload()}
        if kind == CALLBACK_DEFERRED_MESSAGE:
            # Only the ephemeral flag survives a deferral; the message is a loading placeholder.
            message = self._new_message(
                channel,
                author=self.bot_user,
                flags=FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL),
                message_type=self._interaction_message_type(interaction),
                interaction=interaction,
            )
            message.edits.append(copy.deepcopy(data))
            self._store_message(message)
            interaction.original = message
            await self._dispatch_message_event("MESSAGE_CREATE", message)
            return {"type": kind, "message": message.to_payload()}
        if kind == CALLBACK_DEFERRED_UPDATE:
            interaction.original = interaction.message
            return {"type": kind}
        if kind == CALLBACK_UPDATE_MESSAGE:
            target = interaction.message
            assert target is not None  # checked against the interaction type by the caller
            self._apply_message_payload(target, data, files, creating=False, prefix="data.")
            interaction.original = target
            await self._dispatch_message_event("MESSAGE_UPDATE", target)
            return {"type": kind, "message": target.to_payload()}
        if kind == CALLBACK_MODAL:
            interaction.modal = copy.deepcopy(data)
            return None
        if kind == CALLBACK_AUTOCOMPLETE:
            interaction.autocomplete_choices = _check_choices(
                data.get("choices"), _focused_type(interaction.data.get("options", []))
            )
            return None
        return None

    def _webhook_interaction(self, ctx: _Context, *, require_ack: bool = True) -> InteractionRecord:
        try:
            webhook_id = int(ctx.params["webhook_id"])
        except ValueError:
            raise unknown_webhook() from None
        if webhook_id != self.application_id:
            raise unknown_webhook()
        interaction = self._interactions_by_token.get(ctx.params["webhook_token"])
        if interaction is None:
            raise invalid_webhook_token()
        if ctx.received_at - interaction.created_at > self.token_ttl:
            raise self._reject(interaction, ctx, invalid_webhook_token())
        if require_ack and not interaction.acknowledged:
            raise self._reject(interaction, ctx, unknown_webhook())
        return interaction

    def _interaction_message(self, interaction: InteractionRecord, ctx: _Context) -> MessageRecord:
        message_id = ctx.params.get("message_id")
        if message_id is None:
            message = interaction.original
        else:
            try:
                wanted = int(message_id)
            except ValueError:
                raise self._reject(interaction, ctx, unknown_message()) from None
            candidates = [*interaction.followups]
            if interaction.original is not None:
                candidates.append(interaction.original)
            message = next((m for m in candidates if m.id == wanted), None)
        if message is None or message.deleted:
            raise self._reject(interaction, ctx, unknown_message())
        return message

    async def _get_original(self, ctx: _Context) -> web.StreamResponse:
        interaction = self._webhook_interaction(ctx)
        return self._json(self._interaction_message(interaction, ctx).to_payload())

    async def _edit_interaction_message(self, ctx: _Context) -> web.StreamResponse:
        interaction = self._webhook_interaction(ctx)
        message = self._interaction_message(interaction, ctx)
        body = ctx.body if isinstance(ctx.body, dict) else {}
        try:
            channel = self._channels[interaction.channel_id]
            self._check_uploads(ctx.files, self._upload_limit(channel))
            self._apply_message_payload(message, body, ctx.files, creating=False)
        except DiscordAPIError as exc:
            raise self._reject(interaction, ctx, exc) from None
        await self._dispatch_message_event("MESSAGE_UPDATE", message)
        return self._json(message.to_payload())

    async def _delete_interaction_message(self, ctx: _Context) -> web.StreamResponse:
        interaction = self._webhook_interaction(ctx)
        message = self._interaction_message(interaction, ctx)
        message.deleted = True
        await self._dispatch_message_event("MESSAGE_DELETE", message)
        return self._no_body()

    async def _patch_original(self, ctx: _Context) -> web.StreamResponse:
        return await self._edit_interaction_message(ctx)

    async def _delete_original(self, ctx: _Context) -> web.StreamResponse:
        return await self._delete_interaction_message(ctx)

    async def _get_followup(self, ctx: _Context) -> web.StreamResponse:
        return await self._get_original(ctx)

    async def _patch_followup(self, ctx: _Context) -> web.StreamResponse:
        return await self._edit_interaction_message(ctx)

    async def _delete_followup(self, ctx: _Context) -> web.StreamResponse:
        return await self._delete_interaction_message(ctx)

    async def _post_followup(self, ctx: _Context) -> web.StreamResponse:
        interaction = self._webhook_interaction(ctx)
        body = ctx.body if isinstance(ctx.body, dict) else {}
        channel = self._channels[interaction.channel_id]
        original = interaction.original
        try:
            self._check_uploads(ctx.files, self._upload_limit(channel))
            if original is not None and original.loading and not original.deleted:
                # Discord turns the first follow-up after a "thinking" deferral into the
                # original response instead of posting a second message.
                self._apply_message_payload(original, body, ctx.files, creating=False)
                message = original
                event = "MESSAGE_UPDATE"
            else:
                message = self._new_message(
                    channel,
                    author=self.bot_user,
                    flags=int(body.get("flags") or 0) & FLAG_EPHEMERAL,
                    message_type=self._interaction_message_type(interaction),
                    interaction=interaction,
                )
                self._apply_message_payload(message, body, ctx.files, creating=True)
                self._store_message(message)
                event = "MESSAGE_CREATE"
        except DiscordAPIError as exc:
            raise self._reject(interaction, ctx, exc) from None
        interaction.followups.append(message)
        await self._dispatch_message_event(event, message)
        if ctx.query.get("wait") in ("1", "true", "True"):
            return self._json(message.to_payload())
        return self._no_body()

    # ---------------------------------------------------------------- REST: channels & guilds

    def _rest_channel(self, ctx: _Context) -> Channel:
        channel = self._channels.get(int(ctx.params["channel_id"]))
        if channel is None:
            raise unknown_channel()
        return channel

    def _rest_message(self, ctx: _Context) -> tuple[Channel, MessageRecord]:
        channel = self._rest_channel(ctx)
        message = self.messages.get(int(ctx.params["message_id"]))
        # Ephemeral messages exist only for their interaction's webhook.
        if (
            message is None
            or message.deleted
            or message.channel_id != channel.id
            or message.ephemeral
        ):
            raise unknown_message()
        return channel, message

    def _rest_guild(self, ctx: _Context) -> Guild:
        guild = self.guilds.get(int(ctx.params["guild_id"]))
        if guild is None:
            raise DiscordAPIError(404, 10004, "Unknown Guild")
        return guild

    async def _get_channel(self, ctx: _Context) -> web.StreamResponse:
        return self._json(self._rest_channel(ctx).to_payload())

    async def _list_messages(self, ctx: _Context) -> web.StreamResponse:
        channel = self._rest_channel(ctx)
        limit = min(100, max(1, int(ctx.query.get("limit", "50"))))
        visible = [m for m in self.channel_messages(channel.id) if not m.ephemeral]
        visible.sort(key=lambda m: m.id, reverse=True)
        if "before" in ctx.query:
            visible = [m for m in visible if m.id < int(ctx.query["before"])]
        if "after" in ctx.query:
            visible = [m for m in visible if m.id > int(ctx.query["after"])]
        return self._json([m.to_payload() for m in visible[:limit]])

    def dm_messages(self, user_id: int) -> list[MessageRecord]:
        """What the bot sent the user by direct message."""
        channel = self.dm_channels.get(int(user_id))
        return [] if channel is None else self.channel_messages(channel.id)

    async def _create_dm(self, ctx: _Context) -> web.StreamResponse:
        # Opening a DM channel always works; Discord refuses only the message itself.
        body = ctx.body if isinstance(ctx.body, dict) else {}
        user = self._users.get(int(body.get("recipient_id") or 0))
        if user is None:
            raise DiscordAPIError(400, 50033, "Invalid Recipient(s)")
        channel = self.dm_channels.get(user.id)
        if channel is None:
            channel = Channel(self._snowflake(), 0, "", type=CHANNEL_DM, recipient=user)
            self.dm_channels[user.id] = channel
            self._channels[channel.id] = channel
        return self._json(channel.to_payload())

    def _upload_limit(self, channel: Channel) -> int:
        guild = self.guilds.get(channel.guild_id)
        return guild.filesize_limit if guild is not None else DM_UPLOAD_LIMIT

    async def _post_message(self, ctx: _Context) -> web.StreamResponse:
        channel = self._rest_channel(ctx)
        body = ctx.body if isinstance(ctx.body, dict) else {}
        if channel.recipient is not None and channel.recipient.id in self.dms_closed:
            raise DiscordAPIError(403, CANNOT_MESSAGE_USER, "Cannot send messages to this user")
        if channel.id in self.channels_closed_to_bot:
            raise DiscordAPIError(403, 50013, "Missing Permissions")
        self._check_uploads(ctx.files, self._upload_limit(channel))
        message = self._new_message(channel, author=self.bot_user)
        self._apply_message_payload(message, body, ctx.files, creating=True)
        self._store_message(message)
        await self._dispatch_message_event("MESSAGE_CREATE", message)
        return self._json(message.to_payload())

    async def _get_message(self, ctx: _Context) -> web.StreamResponse:
        return self._json(self._rest_message(ctx)[1].to_payload())

    async def _patch_message(self, ctx: _Context) -> web.StreamResponse:
        channel, message = self._rest_message(ctx)
        if message.author_id != self.bot_user_id:
            raise DiscordAPIError(403, 50005, "Cannot edit a message authored by another user")
        body = ctx.body if isinstance(ctx.body, dict) else {}
        self._check_uploads(ctx.files, self._upload_limit(channel))
        self._apply_message_payload(message, body, ctx.files, creating=False)
        await self._dispatch_message_event("MESSAGE_UPDATE", message)
        return self._json(message.to_payload())

    async def _delete_message(self, ctx: _Context) -> web.StreamResponse:
        _, message = self._rest_message(ctx)
        message.deleted = True
        await self._dispatch_message_event("MESSAGE_DELETE", message)
        return self._no_body()

    async def _get_guild(self, ctx: _Context) -> web.StreamResponse:
        guild = self._rest_guild(ctx)
        return self._json(
            {
                **self._guild_payload(guild),
                "approximate_member_count": len(guild.members),
                "approximate_presence_count": 0,
            }
        )

    async def _get_guild_channels(self, ctx: _Context) -> web.StreamResponse:
        guild = self._rest_guild(ctx)
        return self._json([c.to_payload() for c in guild.channels.values()])

    async def _get_guild_roles(self, ctx: _Context) -> web.StreamResponse:
        guild = self._rest_guild(ctx)
        return self._json([r.to_payload() for r in guild.roles.values()])

    async def _get_guild_member(self, ctx: _Context) -> web.StreamResponse:
        guild = self._rest_guild(ctx)
        member = guild.members.get(int(ctx.params["user_id"]))
        if member is None:
            raise DiscordAPIError(404, 10007, "Unknown Member")
        return self._json(member.to_payload())


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _normalize_embed(embed: Any) -> JSON:
    result: JSON = copy.deepcopy(embed) if isinstance(embed, dict) else {}
    result.setdefault("type", "rich")
    return result


def _embed_chars(embed: JSON) -> int:
    total = len(str(embed.get("title") or "")) + len(str(embed.get("description") or ""))
    total += len(str((embed.get("footer") or {}).get("text") or ""))
    total += len(str((embed.get("author") or {}).get("name") or ""))
    for item in embed.get("fields") or []:
        if isinstance(item, dict):
            total += len(str(item.get("name") or "")) + len(str(item.get("value") or ""))
    return total


def _number_components(components: list[JSON]) -> list[JSON]:
    # Discord gives every component a numeric id in responses when the sender didn't.
    used = {c["id"] for c in _walk_components(components) if isinstance(c.get("id"), int)}
    counter = 0
    for component in _walk_components(components):
        if "id" not in component:
            counter += 1
            while counter in used:
                counter += 1
            component["id"] = counter
    return components


def _image_size(data: bytes) -> tuple[int | None, int | None]:
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            return int(width), int(height)
    except Exception:
        return None, None
