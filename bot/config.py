"""Settings from the environment and `.env`, validated once at start-up.

Every field here is documented in ``config.example.env`` (a test checks it), and
every field's description is the "what it should be" half of the error message
an operator sees when a value is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.errors import ConfigError
from bot.models import Mode

ProviderName = Literal["modelslab", "nanobanana"]
PROVIDER_NAMES: tuple[str, ...] = ("modelslab", "nanobanana")

# Where the providers' result images live. The docs name none of their CDNs (the
# text2img example links a CloudFront host), so common object stores are allowed.
DEFAULT_RESULT_HOSTS: tuple[str, ...] = (
    "modelslab.com",
    "*.modelslab.com",
    "modelslab.ai",
    "*.modelslab.ai",
    "nano-banana-pro.net",
    "*.nano-banana-pro.net",
    "*.cloudfront.net",
    "*.r2.dev",
    "*.r2.cloudflarestorage.com",
    "*.amazonaws.com",
    "storage.googleapis.com",
)
# Attachments members upload, and the bot's own posted results (for U1-U4, V1-V4).
DISCORD_CDN_HOSTS: tuple[str, ...] = ("cdn.discordapp.com", "media.discordapp.net")

# Credits per image, by cost tier (see Provider.cost_tier).
DEFAULT_COSTS: dict[str, int] = {
    "text2img": 1,
    "nano_banana_img2img": 2,
    "nano_banana_multi_ref": 3,
    "nbpro_1k": 3,
    "nbpro_2k": 4,
    "nbpro_4k": 8,
}


def _csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        hide_input_in_errors=True,
        # `NAME=` in .env means "use the default", as config.example.env shows.
        env_ignore_empty=True,
    )

    # --- Discord -------------------------------------------------------------
    discord_token: SecretStr | None = Field(
        None, description="the bot token from the Discord developer portal (Bot > Token)"
    )
    discord_api_base_url: AnyHttpUrl | None = Field(
        None,
        description="an http(s) URL of a Discord REST proxy, e.g. http://127.0.0.1:8080/api/v10",
    )
    discord_gateway_url: str | None = Field(
        None, description="a ws:// or wss:// URL of a Discord gateway proxy"
    )
    dev_guild_id: int | None = Field(
        None, description="a guild (server) id to sync commands to at start, for development"
    )
    shard_count: int | None = Field(
        None, ge=1, description="total shards across all processes; empty: ask Discord"
    )
    shard_ids: Annotated[list[int] | None, NoDecode] = Field(
        None,
        description="comma-separated shard ids this process runs (needs SHARD_COUNT); empty: all",
    )
    interaction_window: float = Field(
        780.0,
        gt=0,
        le=900,
        description="seconds after a command when results go as channel messages instead "
        "(interaction tokens last 900)",
    )
    progress_interval: float = Field(
        3.0, ge=0, description="fewest seconds between progress edits of a message"
    )
    shutdown_grace: float = Field(
        60.0,
        ge=0,
        description="seconds a stopping bot lets jobs finish before handing them to the next start",
    )
    lease_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds without a heartbeat after which a bot process counts as gone "
        "and another adopts its jobs",
    )
    lease_interval: float = Field(
        5.0,
        gt=0,
        description="seconds between a bot process's heartbeats, each also a look for jobs "
        "of gone processes (at most a third of LEASE_TIMEOUT)",
    )

    # --- ModelsLab -----------------------------------------------------------
    modelslab_api_key: SecretStr | None = Field(
        None, description="your ModelsLab enterprise API key"
    )
    modelslab_base_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://modelslab.com/api/v1/enterprise"),
        description="an http(s) URL, the ModelsLab enterprise API root",
    )
    modelslab_model_id: str = Field(
        "flux", min_length=1, description="the default text2img model_id (public or trained)"
    )
    modelslab_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated model_ids members may choose; empty: only the default",
    )
    modelslab_max_queued: int = Field(
        5, ge=1, le=100, description="calls in flight to ModelsLab (plan: 5, 10 or 15)"
    )
    modelslab_max_references: int = Field(
        4, ge=2, le=16, description="most reference images sent to nano_banana/multi_ref"
    )

    # --- Nano Banana Pro -----------------------------------------------------
    nanobanana_api_key: SecretStr | None = Field(
        None, description="your Nano Banana Pro API key (sk-...)"
    )
    nanobanana_base_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://nano-banana-pro.net"),
        description="an http(s) URL, the Nano Banana Pro site root",
    )
    nanobanana_max_references: int = Field(
        8, ge=1, le=14, description="reference images per request (plan: 3, 8 or 14)"
    )
    nanobanana_max_image_bytes: int = Field(
        2_500_000, ge=100_000, description="largest uploaded reference image in bytes (2.5 MB)"
    )
    nanobanana_allow_4k: bool = Field(True, description="true if your plan allows size 4k")
    nanobanana_concurrency: int = Field(
        5, ge=1, le=100, description="concurrent generations (plan: 1, 5 or 10)"
    )
    nanobanana_reference_transport: Literal["upload", "url"] = Field(
        "upload",
        description="upload: send a single reference's bytes as multipart; url: send its link "
        "as JSON (several references always go as links)",
    )

    # --- Routing and timing --------------------------------------------------
    provider_text: ProviderName | None = Field(
        None, description="modelslab or nanobanana for /imagine; empty: first configured"
    )
    provider_edit: ProviderName | None = Field(
        None, description="modelslab or nanobanana for /edit; empty: first configured"
    )
    provider_blend: ProviderName | None = Field(
        None, description="modelslab or nanobanana for /blend; empty: first configured"
    )
    failover: bool = Field(
        False, description="true to hand a job to another provider after retryable failures"
    )
    http_connect_timeout: float = Field(10.0, gt=0, description="seconds to connect")
    request_timeout: float = Field(
        120.0, gt=0, description="seconds for one ModelsLab call (submit or poll)"
    )
    nanobanana_timeout: float = Field(
        300.0, gt=0, description="seconds for one Nano Banana Pro call (it is synchronous)"
    )
    poll_initial: float = Field(1.0, gt=0, description="first poll delay in seconds")
    poll_max: float = Field(10.0, gt=0, description="longest poll delay in seconds")
    job_deadline: float = Field(
        600.0, gt=0, description="seconds a job may take in all, queueing and polling included"
    )
    retry_attempts: int = Field(
        3, ge=0, le=10, description="retries of a 429 or 5xx before giving up"
    )
    retry_backoff_max: float = Field(30.0, gt=0, description="longest wait between retries")

    # --- Images --------------------------------------------------------------
    input_max_bytes: int = Field(
        25 * 1024 * 1024, ge=1024, description="largest input image in bytes"
    )
    input_max_pixels: int = Field(
        40_000_000, ge=10_000, description="largest input image in pixels (width x height)"
    )
    download_max_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="largest result image downloaded, in bytes"
    )
    download_timeout: float = Field(60.0, gt=0, description="seconds to download one image")
    download_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_RESULT_HOSTS),
        description="comma-separated hosts results may be downloaded from (*.example.com "
        'for subdomains; the provider API hosts are always added), or "any"',
    )
    download_allow_loopback: bool = Field(
        False,
        description="true to allow downloads from 127.0.0.1 and other loopback addresses "
        "(tests only; other private addresses are always refused)",
    )
    image_retention_days: int = Field(
        7, ge=0, description="days to keep original results under DATA_DIR; 0 keeps none"
    )
    image_jobs: int = Field(
        2,
        ge=1,
        le=64,
        description="jobs downloading, fitting or uploading images at once (bounds memory: "
        "about 50 MB each for four 2048² results)",
    )
    image_workers: int = Field(
        2, ge=1, le=32, description="threads for image work (libvips: decode, re-encode, grids)"
    )

    # --- Storage and quotas --------------------------------------------------
    data_dir: Path = Field(Path("./data"), description="a writable directory for the bot's files")
    database_url: str | None = Field(
        None,
        description="sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB; "
        "empty: sqlite:///DATA_DIR/bot.db",
    )
    costs: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_COSTS),
        description='JSON of credits per image by tier, e.g. {"text2img": 1, "nbpro_4k": 8}',
    )
    default_pool_credits: int = Field(
        500, ge=0, description="credits per period for a guild that has no pool set"
    )
    default_pool_period: Literal["day", "week", "month"] = Field(
        "day", description="day, week or month: how often guild pools reset"
    )
    default_timezone: str = Field("UTC", description="an IANA time zone for pool resets")
    default_user_allowance: int | None = Field(
        50, ge=0, description='credits per member per period, or "unlimited"'
    )
    global_daily_budget: int | None = Field(
        None, ge=0, description='credits per UTC day across all guilds, or "unlimited"'
    )
    max_jobs_in_flight_per_user: int = Field(
        2, ge=1, le=50, description="jobs one member may have running at once"
    )
    cooldown_seconds: float = Field(
        0.0, ge=0, description="seconds a member waits between starting jobs"
    )
    pick_cooldown_seconds: float = Field(
        10.0,
        ge=0,
        description="seconds a member waits between full-size picks (U1-U4), which are free "
        "but decode whole originals; one pick at a time per member either way",
    )
    reservation_timeout: float = Field(
        1800.0, gt=0, description="seconds before an unsettled reservation is refunded"
    )
    sweep_interval: float = Field(60.0, gt=0, description="seconds between reservation sweeps")
    database_pool_size: int = Field(
        10, ge=1, le=100, description="most connections one process opens to PostgreSQL"
    )

    # --- Operation -----------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR"
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="port of the Prometheus endpoint /metrics (unset: off; 0: any free port)",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="address the metrics endpoint listens on; 0.0.0.0 to be scraped from elsewhere",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text for people; json: one JSON object per line, for log collectors"
    )

    @field_validator("modelslab_models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        return _csv(value)

    @field_validator("shard_ids", mode="before")
    @classmethod
    def _split_shards(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return [int(part) for part in _csv(value)]
            except ValueError as exc:
                raise ValueError("must be comma-separated whole numbers, e.g. 0,1") from exc
        return value

    @field_validator("download_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "any":
            return []
        return _csv(value)

    @field_validator("default_user_allowance", "global_daily_budget", mode="before")
    @classmethod
    def _unlimited(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("unlimited", "none"):
            return None
        return value

    @field_validator("costs", mode="before")
    @classmethod
    def _parse_costs(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError("must be a JSON object of tier to credits") from exc
            if not isinstance(parsed, dict):
                raise ValueError("must be a JSON object of tier to credits")
            value = parsed
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(DEFAULT_COSTS))
            if unknown:
                raise ValueError(
                    f"unknown tier(s) {', '.join(unknown)}; tiers are " + ", ".join(DEFAULT_COSTS)
                )
            if any(not isinstance(v, int) or v < 0 for v in value.values()):
                raise ValueError("credits must be whole numbers of 0 or more")
            return {**DEFAULT_COSTS, **value}
        return value

    @field_validator("discord_gateway_url")
    @classmethod
    def _check_gateway(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise ValueError("must be a ws:// or wss:// URL")
        return value

    @field_validator("default_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("must be an IANA time zone such as UTC or Europe/Paris") from exc
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not (value.startswith("sqlite:///") or value.startswith("postgresql://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    @model_validator(mode="after")
    def _check_lease(self) -> Settings:
        # Two missed heartbeats must not yet cost a process its jobs.
        if self.lease_interval * 3 > self.lease_timeout:
            raise ValueError("LEASE_INTERVAL must be at most a third of LEASE_TIMEOUT")
        return self

    @model_validator(mode="after")
    def _check_poll(self) -> Settings:
        if self.poll_initial > self.poll_max:
            raise ValueError("POLL_INITIAL must not be larger than POLL_MAX")
        if self.shard_ids is not None:
            if self.shard_count is None:
                raise ValueError("SHARD_IDS needs SHARD_COUNT")
            wrong = [i for i in self.shard_ids if not 0 <= i < self.shard_count]
            if wrong or not self.shard_ids:
                raise ValueError(f"SHARD_IDS must be ids from 0 to {self.shard_count - 1}")
        return self

    # --- Derived -------------------------------------------------------------
    @property
    def sqlite_path(self) -> Path:
        """The SQLite file the ledger and job store use."""
        if self.database_url and self.database_url.startswith("sqlite:///"):
            return Path(self.database_url.removeprefix("sqlite:///"))
        return self.data_dir / "bot.db"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    def result_hosts(self) -> tuple[str, ...]:
        """Hosts provider results may be downloaded from; empty means any https host."""
        if not self.download_allowed_hosts:
            return ()
        own = (self.modelslab_base_url.host, self.nanobanana_base_url.host)
        return tuple(dict.fromkeys([*self.download_allowed_hosts, *(h for h in own if h)]))

    def configured_providers(self) -> tuple[str, ...]:
        keys = {"modelslab": self.modelslab_api_key, "nanobanana": self.nanobanana_api_key}
        return tuple(
            name
            for name in PROVIDER_NAMES
            if (key := keys[name]) is not None and key.get_secret_value()
        )

    def provider_for(self, mode: Mode) -> str | None:
        """The provider named for a mode, or None to use the first that supports it."""
        return {
            Mode.TEXT: self.provider_text,
            Mode.EDIT: self.provider_edit,
            Mode.BLEND: self.provider_blend,
        }[mode]

    def require(self, *names: str) -> None:
        """Raise ConfigError naming every listed setting that is empty."""
        missing = []
        for name in names:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value in (None, ""):
                field = type(self).model_fields[name]
                missing.append(f"  {name.upper()}: not set; set it to {field.description}")
        if missing:
            raise ConfigError("Missing settings:\n" + "\n".join(missing))


def format_validation_error(error: ValidationError) -> str:
    """One message naming each bad setting and what it should be; no values echoed."""
    lines = ["Invalid settings:"]
    fields = Settings.model_fields
    for item in error.errors():
        loc = item.get("loc") or ()
        name = str(loc[0]) if loc else ""
        field = fields.get(name)
        what = field.description if field is not None and field.description else ""
        reason = item.get("msg", "invalid").removeprefix("Value error, ")
        label = name.upper() if name else "settings"
        lines.append(f"  {label}: {reason}" + (f"; it should be {what}" if what else ""))
    return "\n".join(lines)


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Read settings or raise ConfigError with the operator-facing message."""
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
