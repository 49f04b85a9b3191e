"""HTTP plumbing shared by the provider clients: one call, retries, error mapping,
and keeping API keys out of everything a person or a log can see.

Every provider error raised from here carries a ``user_message`` a Discord member
can act on. Provider-supplied text only reaches that message through
``ProviderHttp.sanitise`` (key and token-like strings removed, length capped).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
from pydantic import SecretStr

from bot.errors import (
    GenerationFailed,
    JobDeadlineExceeded,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderBadResponse,
    ProviderCreditsError,
    ProviderError,
    ProviderNotFound,
    ProviderRateLimited,
    ProviderUnavailable,
    ReferenceFetchError,
)

log = logging.getLogger("bot.providers")

T = TypeVar("T")

REDACTED = "[redacted]"
MAX_PROVIDER_TEXT = 200
# Base64 results for 4 samples at 2048² can run to tens of MB; anything larger is
# not a documented response and would only cost memory.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
BACKOFF_BASE = 0.5

_TOKEN_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-]{4,}"),
    re.compile(r"(?i)\bbearer\s+\S+"),
    re.compile(r"""(?i)(["']?\b(?:api_?)?key["']?\s*[:=]\s*)["']?[^"'\s,}]+["']?"""),
    # ModelsLab keys are long alphanumeric strings; nothing a member needs to read
    # in an error message looks like that.
    re.compile(r"\b[A-Za-z0-9]{32,}\b"),
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

_REFERENCE_FETCH_WORDS = (
    "unable to fetch image",
    "could not fetch image",
    "failed to fetch image",
    "unable to download image",
    "failed to download image",
    "invalid image url",
)
_RATE_WORDS = ("rate limit", "too many requests", "queued requests")
_AUTH_WORDS = (
    "invalid api key",
    "invalid key",
    "api key is invalid",
    "unauthorized",
    "unauthorised",
    "not authorized",
    "forbidden",
)
_CREDIT_WORDS = ("insufficient", "credit", "balance", "payment required", "top up")
_NOT_FOUND_WORDS = ("not found", "does not exist")


class ProviderTimeout(ProviderUnavailable):
    """The provider did not answer within the per-call timeout.

    A subclass so that retries can tell it apart: re-sending a submit that timed
    out could start (and bill) the same job twice, re-sending a poll cannot.
    """


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    data: Any  # parsed JSON, or NOT_JSON

    @property
    def is_json(self) -> bool:
        return self.data is not NOT_JSON


class _NotJson:
    def __repr__(self) -> str:
        return "NOT_JSON"


NOT_JSON: Any = _NotJson()


def as_float(value: Any) -> float | None:
    """Numbers arrive as numbers or numeric strings (the docs' own examples send
    ``"512"``); anything else reads as missing."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def as_int(value: Any) -> int | None:
    number = as_float(value)
    if number is None or number != number or number in (float("inf"), float("-inf")):
        return None
    return int(number)


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().casefold() in ("yes", "true", "1")
    if isinstance(value, int | float):
        return bool(value)
    return False


def parse_retry_after(value: Any) -> float | None:
    """Seconds from a body field or a Retry-After header (seconds or HTTP date)."""
    seconds = as_float(value)
    if seconds is not None:
        return max(0.0, seconds)
    if isinstance(value, str) and value.strip():
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return None


def backoff_delay(attempt: int, *, retry_after: float | None, cap: float) -> float:
    """Exponential back-off (0.5 s, 1 s, 2 s, ...) or the provider's own hint, capped,
    plus a little jitter so that many jobs throttled together do not retry in step."""
    delay = retry_after if retry_after is not None else BACKOFF_BASE * (2**attempt)
    delay = min(delay, cap)
    return min(cap, delay + random.uniform(0, delay * 0.1))


def redact_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """A loggable copy of a request body: the key replaced, long text shortened."""
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name.casefold() in ("key", "api_key", "apikey", "authorization"):
            out[name] = REDACTED
        elif isinstance(value, str) and len(value) > 80:
            out[name] = value[:77] + "..."
        else:
            out[name] = value
    return out


class ProviderHttp:
    """Calls one provider's API through the shared session and turns every failure
    into a ``ProviderError`` subclass with a member-facing message."""

    def __init__(
        self,
        *,
        provider: str,
        display_name: str,
        session: aiohttp.ClientSession,
        secret: SecretStr,
        connect_timeout: float,
        retry_attempts: int,
        backoff_max: float,
    ) -> None:
        self.provider = provider
        self.display_name = display_name
        self.session = session
        self._secret = secret
        self.connect_timeout = connect_timeout
        self.retry_attempts = retry_attempts
        self.backoff_max = backoff_max

    def __repr__(self) -> str:
        return f"ProviderHttp(provider={self.provider!r}, key={REDACTED})"

    # --- text hygiene ---------------------------------------------------------
    def sanitise(self, value: Any, *, limit: int = MAX_PROVIDER_TEXT) -> str:
        """Provider text fit to show a member: no key, no token-like strings, one
        line, at most ``limit`` characters."""
        text: str = (
            value
            if isinstance(value, str)
            else ""
            if value is None
            else json.dumps(value, default=str)
        )
        secret = self._secret.get_secret_value()
        if secret:
            text = text.replace(secret, REDACTED)
        for pattern in _TOKEN_PATTERNS:
            if pattern.groups:
                text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
            else:
                text = pattern.sub(REDACTED, text)
        text = _CONTROL.sub(" ", text).strip()
        if len(text) > limit:
            text = text[: limit - 1].rstrip() + "…"
        return text

    # --- errors ---------------------------------------------------------------
    def unavailable(self, detail: str, *, status: int | None = None) -> ProviderUnavailable:
        return ProviderUnavailable(
            f"{self.display_name} is having problems right now ({detail}); "
            "please try again in a few minutes.",
            provider=self.provider,
            status=status,
        )

    def bad_response(self, what: str, *, status: int | None = None) -> ProviderBadResponse:
        log.warning("%s sent an unexpected response (HTTP %s): %s", self.provider, status, what)
        return ProviderBadResponse(
            f"{self.display_name} sent an answer the bot could not understand; "
            "please try again later.",
            provider=self.provider,
            status=status,
        )

    def deadline_exceeded(self, seconds: float, job_id: str | None = None) -> JobDeadlineExceeded:
        log.warning("%s job %s did not finish within %.0f s", self.provider, job_id or "?", seconds)
        return JobDeadlineExceeded(
            f"{self.display_name} took too long to make the image (over {seconds:.0f} s), "
            "so the job was stopped; nothing was charged. Please try again later.",
            provider=self.provider,
            retryable=False,
        )

    def error_for(
        self,
        status: int | None,
        message: Any,
        *,
        retry_after: float | None = None,
        failed: bool = False,
    ) -> ProviderError:
        """Map an error answer to the hierarchy.

        ``status`` is the HTTP status when it says more than 200 does; with a 200
        (or none) the provider's wording decides, because both APIs report some
        errors in a 200 body. ``failed`` marks a job the provider accepted and
        then reported as failed.
        """
        text = self.sanitise(message)
        lowered = text.casefold()
        name = self.display_name
        code = status if status is not None and status >= 400 else None
        detail = f": {text}" if text else ""

        if any(w in lowered for w in _REFERENCE_FETCH_WORDS):
            return ReferenceFetchError(
                f"{name} could not read your reference image; re-upload it (or use a "
                "fresh link) and try again, or try another image.",
                provider=self.provider,
                status=code,
            )
        kind = self._kind(code, lowered)
        if kind == "rate":
            return ProviderRateLimited(
                f"{name} is busy right now (too many requests); please try again in a minute.",
                provider=self.provider,
                status=code,
                retry_after=retry_after,
            )
        if kind == "auth":
            log.error(
                "%s refused the bot's API key or plan (HTTP %s)%s: check the key and plan",
                self.provider,
                code,
                detail,
            )
            return ProviderAuthError(
                f"The bot's {name} account is misconfigured; an admin has been told.",
                provider=self.provider,
                status=code,
            )
        if kind == "credits":
            log.error("%s account is out of credits (HTTP %s)%s", self.provider, code, detail)
            return ProviderCreditsError(
                f"The bot's {name} account has run out of credits; an admin needs to top it "
                "up. Try again later or choose another provider.",
                provider=self.provider,
                status=code,
            )
        if kind == "not_found":
            return ProviderNotFound(
                f"{name} could not find what was asked for{detail}. "
                "Check the model name, or try again.",
                provider=self.provider,
                status=code,
            )
        if kind == "server":
            return self.unavailable(f"HTTP {code}" if code else "server error", status=code)
        if failed:
            return GenerationFailed(
                f"{name} could not make this image{detail}. Try a different prompt or options.",
                provider=self.provider,
                status=code,
            )
        return ProviderBadRequest(
            f"{name} rejected the request{detail}. Change the prompt or options and try again.",
            provider=self.provider,
            status=code,
        )

    @staticmethod
    def _kind(code: int | None, lowered: str) -> str:
        if code is not None:
            if code == 429:
                return "rate"
            if code in (401, 403):
                return "auth"
            if code == 402:
                return "credits"
            if code == 404:
                return "not_found"
            if code in (408, 425) or code >= 500:
                return "server"
            return "bad_request"
        if any(w in lowered for w in _RATE_WORDS):
            return "rate"
        if any(w in lowered for w in _AUTH_WORDS):
            return "auth"
        if any(w in lowered for w in _CREDIT_WORDS):
            return "credits"
        if any(w in lowered for w in _NOT_FOUND_WORDS):
            return "not_found"
        return "bad_request"

    def error_for_status_only(self, response: HttpResponse) -> ProviderError:
        """An HTTP error whose body is not an error document (an HTML error page
        from a proxy, say): the status alone decides."""
        if response.status < 400:
            return self.bad_response(
                f"non-JSON body ({len(response.body)} bytes)", status=response.status
            )
        return self.error_for(
            response.status,
            "",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )

    # --- transport ------------------------------------------------------------
    async def post(
        self,
        url: str,
        *,
        time_limit: float,
        json_body: Mapping[str, Any] | None = None,
        form: aiohttp.FormData | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """One POST. Connection failures and timeouts become ``ProviderUnavailable``;
        the answer is returned whatever its status, for the caller to interpret."""
        client_timeout = aiohttp.ClientTimeout(
            total=time_limit, connect=min(self.connect_timeout, time_limit)
        )
        if json_body is not None:
            log.debug("%s POST %s %s", self.provider, url, redact_body(json_body))
        else:
            log.debug("%s POST %s (multipart)", self.provider, url)
        try:
            async with self.session.post(
                url,
                json=json_body,
                data=form,
                headers=headers,
                timeout=client_timeout,
                # The key travels in the body or a header: never re-send it to
                # wherever a redirect points.
                allow_redirects=False,
            ) as resp:
                buffer = bytearray()
                # read(n) returns whatever has arrived; loop to EOF, bounded.
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    buffer.extend(chunk)
                    if len(buffer) > MAX_RESPONSE_BYTES:
                        break
                body = bytes(buffer)
                status = resp.status
                resp_headers = {k: v for k, v in resp.headers.items()}
        except TimeoutError:
            log.warning("%s: no answer within %.1f s from %s", self.provider, time_limit, url)
            raise ProviderTimeout(
                f"{self.display_name} did not answer in time; please try again later.",
                provider=self.provider,
            ) from None
        except aiohttp.ClientError as exc:
            # Only the exception type: aiohttp's messages can carry request details.
            log.warning("%s: request to %s failed: %s", self.provider, url, type(exc).__name__)
            raise ProviderUnavailable(
                f"The bot could not reach {self.display_name}; please try again in a few minutes.",
                provider=self.provider,
            ) from None
        if len(body) > MAX_RESPONSE_BYTES:
            raise self.bad_response("response larger than the bot accepts", status=status)
        try:
            data = json.loads(body) if body.strip() else NOT_JSON
        except (ValueError, UnicodeDecodeError):
            data = NOT_JSON
        log.debug("%s answered HTTP %s (%d bytes)", self.provider, status, len(body))
        return HttpResponse(status=status, headers=resp_headers, body=body, data=data)

    async def with_retries(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        what: str,
        retry_timeouts: bool,
    ) -> T:
        """Run ``attempt`` and retry rate limits, server errors and connection
        failures ``retry_attempts`` times with capped back-off. Timeouts are
        retried only when ``retry_timeouts`` (the call is idempotent)."""
        tries = 0
        while True:
            try:
                return await attempt()
            except (ProviderRateLimited, ProviderUnavailable) as error:
                if isinstance(error, ProviderTimeout) and not retry_timeouts:
                    raise
                if tries >= self.retry_attempts:
                    log.warning(
                        "%s %s: giving up after %d attempts (%s)",
                        self.provider,
                        what,
                        tries + 1,
                        type(error).__name__,
                    )
                    raise
                delay = backoff_delay(tries, retry_after=error.retry_after, cap=self.backoff_max)
                tries += 1
                log.info(
                    "%s %s: %s (HTTP %s); retry %d/%d in %.2f s",
                    self.provider,
                    what,
                    type(error).__name__,
                    error.status,
                    tries,
                    self.retry_attempts,
                    delay,
                )
                await asyncio.sleep(delay)
