"""Result downloads go only where the bot was told to fetch from: https to the
configured provider hosts, loopback only when a test setting allows it, and the
same check on every redirect hop, before the hop is requested."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from bot.errors import ProviderBadResponse
from bot.images import download, host_allowed

FAST = settings(max_examples=150, deadline=None, database=None)
FOREIGN = "The provider returned a link to a host the bot does not download from."
PNG = b"\x89PNG\r\n\x1a\n-not-decoded-here"


# --------------------------------------------------------------------------- host_allowed


@pytest.mark.parametrize(
    ("url", "hosts", "loopback", "allowed"),
    [
        ("https://cdn.example.com/a.png", ["cdn.example.com"], False, True),
        ("https://CDN.Example.COM./a.png", ["cdn.example.com"], False, True),
        ("https://cdn.example.com:8443/a.png", ["cdn.example.com"], False, True),
        ("https://other.example.com/a.png", ["cdn.example.com"], False, False),
        ("http://cdn.example.com/a.png", ["cdn.example.com"], False, False),  # https only
        ("https://img.example.com/a.png", ["*.example.com"], False, True),
        ("https://a.b.example.com/a.png", ["*.example.com"], False, True),
        ("https://example.com/a.png", ["*.example.com"], False, False),  # subdomains only
        ("https://evil-example.com/a.png", ["*.example.com"], False, False),
        ("https://example.com.evil.net/a.png", ["example.com"], False, False),
        ("https://example.com.evil.net/a.png", ["*.example.com"], False, False),
        ("https://cdn.example.com@evil.net/a.png", ["cdn.example.com"], False, False),
        ("https://xn--bcher-kva.example/a.png", ["bücher.example"], False, True),
        ("https://bücher.example/a.png", ["xn--bcher-kva.example"], False, True),
        ("https://anything.example/a.png", [], False, True),  # no list: any https host
        ("http://anything.example/a.png", [], False, False),
        ("http://127.0.0.1:9/a.png", ["cdn.example.com"], True, True),
        ("http://localhost:9/a.png", [], True, True),
        ("http://[::1]:9/a.png", ["cdn.example.com"], True, True),
        ("http://127.0.0.1:9/a.png", [], False, False),
        ("https://127.0.0.1/a.png", ["cdn.example.com"], False, False),
        ("https://10.0.0.1/a.png", ["cdn.example.com"], True, False),  # not loopback
        ("https://cdn.example.com/a.png", ["*"], False, False),  # a bad list is not "any"
        ("https://cdn.example.com/a.png", ["", "  "], False, False),
        ("https://cdn.example.com/a.png", "cdn.example.com", False, True),  # a lone string
        ("ftp://cdn.example.com/a.png", ["cdn.example.com"], False, False),
        ("file:///etc/passwd", [], True, False),
        ("/relative/a.png", [], True, False),
        ("not a url", [], True, False),
    ],
)
def test_host_allowed(url: str, hosts: list[str] | str, loopback: bool, allowed: bool) -> None:
    assert host_allowed(url, hosts, loopback) is allowed
    assert host_allowed(URL(url), hosts, loopback) is allowed


LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8).filter(
    lambda label: not label.startswith("-") and not label.endswith("-")
)
HOST = st.lists(LABEL, min_size=1, max_size=4).map(".".join)


@FAST
@given(
    host=HOST,
    patterns=st.lists(st.tuples(st.booleans(), HOST), min_size=1, max_size=4),
    path=st.text(alphabet="abc/._-%?=&", max_size=20),
    loopback=st.booleans(),
)
def test_host_allowed_is_exact_or_subdomain_match(
    host: str, patterns: list[tuple[bool, str]], path: str, loopback: bool
) -> None:
    listed = [("*." if wildcard else "") + name for wildcard, name in patterns]
    expected = any(
        host.endswith("." + name) if wildcard else host == name for wildcard, name in patterns
    )
    if loopback and host in ("localhost", "127.0.0.1"):
        expected = True
    url = f"https://{host}/{path}"
    assert host_allowed(url, listed, loopback) is expected
    assert host_allowed(url.replace("https://", "http://", 1), listed, False) is False


# --------------------------------------------------------------------------- every hop


class _Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.content_length = len(body)
        self._body = body
        self.content = self

    async def iter_any(self) -> AsyncIterator[bytes]:
        yield self._body

    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class FakeSession:
    """Answers https URLs from a table without any network, recording each request."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        self.routes = routes
        self.requested: list[str] = []

    def get(self, url: URL, **_: Any) -> _Response:
        self.requested.append(str(url))
        status, headers, body = self.routes.get(str(url), (404, {}, b""))
        return _Response(status, headers, body)


async def fetch(session: FakeSession, url: str, hosts: list[str]) -> bytes:
    return await download(
        cast(aiohttp.ClientSession, session),
        url,
        max_bytes=4096,
        timeout=5,
        provider="modelslab",
        allowed_hosts=hosts,
    )


async def test_first_url_off_the_list_is_never_requested() -> None:
    session = FakeSession({"https://evil.example/x.png": (200, {}, PNG)})
    with pytest.raises(ProviderBadResponse) as info:
        await fetch(session, "https://evil.example/x.png", ["*.provider.example"])
    assert info.value.user_message == FOREIGN
    assert not info.value.retryable and info.value.provider == "modelslab"
    assert session.requested == []


@pytest.mark.parametrize(
    "location",
    [
        "https://evil.example/x.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://provider.example.evil.net/x.png",
        "//evil.example/x.png",  # scheme-relative
    ],
)
async def test_redirect_off_the_list_is_refused_before_it_is_followed(location: str) -> None:
    start = "https://cdn.provider.example/out/1.png"
    session = FakeSession({start: (302, {"Location": location}, b"")})
    with pytest.raises(ProviderBadResponse) as info:
        await fetch(session, start, ["*.provider.example"])
    assert info.value.user_message == FOREIGN
    assert session.requested == [start]


async def test_redirect_within_the_list_is_followed() -> None:
    start = "https://api.provider.example/out/1.png"
    final = "https://cdn.provider.example/files/1.png"
    session = FakeSession(
        {start: (302, {"Location": final}, b""), final: (200, {"Content-Type": "image/png"}, PNG)}
    )
    assert await fetch(session, start, ["*.provider.example"]) == PNG
    assert session.requested == [start, final]


async def test_redirect_to_plain_http_on_a_listed_host_is_refused() -> None:
    start = "https://cdn.provider.example/1.png"
    session = FakeSession({start: (301, {"Location": "http://cdn.provider.example/1.png"}, b"")})
    with pytest.raises(ProviderBadResponse, match="not allowed"):
        await fetch(session, start, ["cdn.provider.example"])
    assert session.requested == [start]


# --------------------------------------------------------------------------- loopback


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def away(request: web.Request) -> web.Response:
        raise web.HTTPFound("https://evil.example/x.png")

    async def home(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/away", away)
    app.router.add_get("/home", home)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    try:
        yield test_server
    finally:
        await test_server.close()


async def test_loopback_is_allowed_only_by_the_test_setting(server: TestServer) -> None:
    hosts = ["*.provider.example"]
    async with aiohttp.ClientSession() as session:

        async def get(path: str, loopback: bool) -> bytes:
            return await download(
                session,
                str(server.make_url(path)),
                max_bytes=4096,
                timeout=5,
                allow_loopback=loopback,
                allowed_hosts=hosts,
            )

        assert await get("/home", loopback=True) == PNG
        with pytest.raises(ProviderBadResponse):
            await get("/ok", loopback=False)
        # Loopback is no back door: its redirects meet the list like any other hop.
        with pytest.raises(ProviderBadResponse) as info:
            await get("/away", loopback=True)
        assert info.value.user_message == FOREIGN


async def test_empty_list_keeps_the_old_behaviour(server: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        body = await asyncio.wait_for(
            download(
                session, str(server.make_url("/ok")), max_bytes=4096, timeout=5, allow_loopback=True
            ),
            10,
        )
    assert body == PNG
