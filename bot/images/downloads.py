"""Result downloads: host checks on every hop, size and time limits."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
from yarl import URL

from bot.errors import (
    ProviderBadResponse,
    ProviderNotFound,
    ProviderUnavailable,
)
from bot.images.formats import _human_bytes
from bot.netguard import refused_address

log = logging.getLogger(__name__)

_MAX_REDIRECTS = 5
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


_NOT_VALID = "The provider returned a result link that is not valid."
_FOREIGN_HOST = "The provider returned a link to a host the bot does not download from."


def _bad_link(provider: str, message: str) -> ProviderBadResponse:
    return ProviderBadResponse(message, provider=provider, retryable=False)


class RefusedHost(ProviderBadResponse):
    """A result link to a host DOWNLOAD_ALLOWED_HOSTS does not list. The member's
    message names no host (it is the provider's text); ``host`` is for operators."""

    def __init__(self, provider: str, host: str) -> None:
        super().__init__(_FOREIGN_HOST, provider=provider, retryable=False)
        self.host = host


def _normal_host(host: str) -> str | None:
    """The host as URLs carry it on the wire (lower case, IDNA), without brackets
    or a trailing dot, so that equal hosts compare equal; None if it is no host."""
    text = host.strip().strip("[]").rstrip(".")
    if not text:
        return None
    try:
        raw = URL.build(scheme="https", host=text).raw_host
    except (TypeError, ValueError):
        return None
    return raw.rstrip(".").lower() if raw else None


_Patterns = tuple[tuple[str, bool], ...] | None


def _host_patterns(allowed_hosts: Sequence[str]) -> _Patterns:
    """(host, subdomains_only) pairs, or None when any https host will do."""
    if isinstance(allowed_hosts, str):
        # A lone string is a Sequence[str] too: matching its letters would allow nothing.
        allowed_hosts = (allowed_hosts,)
    if not allowed_hosts:
        return None
    return _parsed_patterns(tuple(allowed_hosts))


@functools.lru_cache(maxsize=64)
def _parsed_patterns(allowed_hosts: tuple[str, ...]) -> tuple[tuple[str, bool], ...]:
    # Each provider's list is the same on every download: IDNA-encoding its
    # patterns once, not on every download, shows in profiles of the job path.
    patterns = []
    for pattern in allowed_hosts:
        text = pattern.strip()
        wildcard = text.startswith("*.")
        host = _normal_host(text[2:] if wildcard else text)
        # Unusable patterns match nothing; they never widen the list to "any host".
        if host is not None and "*" not in host:
            patterns.append((host, wildcard))
    return tuple(patterns)


def _host_matches(host: str, patterns: tuple[tuple[str, bool], ...]) -> bool:
    for allowed, subdomains_only in patterns:
        if host.endswith("." + allowed) if subdomains_only else host == allowed:
            return True
    return False


def host_allowed(
    url: str | URL, allowed_hosts: Sequence[str] = (), allow_loopback: bool = False
) -> bool:
    """Whether ``download`` may fetch ``url``.

    https to a host in ``allowed_hosts`` ("cdn.example.com" exactly, "*.example.com"
    any subdomain, not example.com itself); an empty sequence allows any https
    host. With ``allow_loopback`` also http or https to 127.0.0.1, ::1 or
    localhost, whatever the list says, for tests against local emulators.
    """
    return _refusal(url, _host_patterns(allowed_hosts), allow_loopback) is None


def _refusal(url: str | URL, patterns: _Patterns, allow_loopback: bool) -> str | None:
    """Why ``url`` may not be fetched (a message for the member), or None."""
    try:
        target = url if isinstance(url, URL) else URL(url)
        scheme = (target.scheme or "").lower()
        host = _normal_host(target.raw_host or "")
    except (TypeError, ValueError):
        return _NOT_VALID
    if host is None:
        return "The provider returned a result link that is not a web address."
    if allow_loopback and host in _LOOPBACK_HOSTS and scheme in ("http", "https"):
        return None
    if scheme != "https":
        return "The provider returned a result link that is not allowed."
    if patterns is not None and not _host_matches(host, patterns):
        return _FOREIGN_HOST
    return None


def _check_url(url: URL, *, allow_loopback: bool, provider: str, patterns: _Patterns) -> None:
    refusal = _refusal(url, patterns, allow_loopback)
    if refusal is not None:
        if refusal == _FOREIGN_HOST:
            # The member sees no address (it is the provider's text); operators need it.
            log.warning(
                "%s: refused a result link to host %r: add it to DOWNLOAD_ALLOWED_HOSTS "
                "if you trust it",
                provider,
                url.host,
            )
            raise RefusedHost(provider, url.host or "")
        raise _bad_link(provider, refusal)


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


async def download(
    session: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int,
    timeout: float,  # noqa: ASYNC109 - a per-download budget callers set from settings
    allow_loopback: bool = False,
    provider: str = "download",
    allowed_hosts: Sequence[str] = (),
) -> bytes:
    """GET ``url`` into memory, at most ``max_bytes``, within ``timeout`` seconds in all.

    Only what ``host_allowed`` accepts: https to ``allowed_hosts`` (any https host
    when empty), plus loopback when ``allow_loopback``. Redirects are followed by
    hand so that every hop passes the same check before it is requested.
    """
    # Whatever the socket delivered, kept as it came and joined once: one copy
    # of the image, not one per 64 KiB slice.
    chunks: list[bytes] = []

    async def keep(chunk: bytes) -> None:
        chunks.append(chunk)

    await download_into(
        session,
        url,
        keep,
        max_bytes=max_bytes,
        timeout=timeout,
        allow_loopback=allow_loopback,
        provider=provider,
        allowed_hosts=allowed_hosts,
    )
    return b"".join(chunks)


async def download_into(
    session: aiohttp.ClientSession,
    url: str,
    sink: Callable[[bytes], Awaitable[None]],
    *,
    expect: Callable[[int | None], None] | None = None,
    max_bytes: int,
    timeout: float,  # noqa: ASYNC109 - a per-download budget callers set from settings
    allow_loopback: bool = False,
    provider: str = "download",
    allowed_hosts: Sequence[str] = (),
) -> int:
    """``download``, handing each piece to ``sink`` as it arrives (a file, so that
    a large result is never whole in memory); returns the size. ``expect`` is
    told the announced size (Content-Length, or None) before the first piece.
    Everything ``download`` checks, it checks; ``sink`` may get pieces of a
    download that then fails."""
    try:
        target = URL(url)
    except (TypeError, ValueError):
        raise _bad_link(provider, _NOT_VALID) from None
    patterns = _host_patterns(allowed_hosts)
    too_big = f"The provider's result is larger than {_human_bytes(max_bytes)}."
    try:
        async with asyncio.timeout(timeout):
            for _hop in range(_MAX_REDIRECTS + 1):
                _check_url(
                    target, allow_loopback=allow_loopback, provider=provider, patterns=patterns
                )
                async with session.get(
                    target,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as response:
                    status = response.status
                    location = response.headers.get("Location")
                    if status in _REDIRECT_STATUSES and location:
                        target = target.join(URL(location))
                        continue
                    if status in (404, 410):
                        raise ProviderNotFound(
                            "The provider's result link has expired or does not exist.",
                            provider=provider,
                            status=status,
                            retryable=False,
                        )
                    if not 200 <= status < 300:
                        raise ProviderUnavailable(
                            f"The provider's result could not be downloaded (HTTP {status}).",
                            provider=provider,
                            status=status,
                            retry_after=_retry_after(response),
                        )
                    if response.content_length is not None and response.content_length > max_bytes:
                        raise _bad_link(provider, too_big)
                    if expect is not None:
                        expect(response.content_length)
                    received = 0
                    async for chunk in response.content.iter_any():
                        received += len(chunk)
                        if received > max_bytes:
                            raise _bad_link(provider, too_big)
                        await sink(chunk)
                    return received
            raise _bad_link(provider, "The provider's result link redirects too many times.")
    except TimeoutError:
        raise ProviderUnavailable(
            "The provider's result took too long to download.", provider=provider
        ) from None
    except aiohttp.InvalidURL:
        raise _bad_link(provider, _NOT_VALID) from None
    except (aiohttp.ClientError, ValueError) as exc:
        if refused_address(exc):
            # The session's connector refused the resolved address (bot.netguard).
            log.warning(
                "%s: refused a download from %r: not a public address", provider, target.host
            )
            raise _bad_link(
                provider,
                f"The result link's host {target.host} leads to a private or local network "
                "address; the bot only downloads from public internet addresses.",
            ) from None
        raise ProviderUnavailable(
            "The provider's result could not be downloaded: the connection failed.",
            provider=provider,
        ) from exc
