"""Downloads reach public internet addresses only, whatever the host name says.

A host list (or ``any``) vouches for names, not for where they lead: these tests
give names the way a real deployment meets them (a wildcard-matched EC2 name
that encodes a private address, a name pointing at the metadata service, a name
rebound to loopback, a redirect to an internal host) through a resolver, and a
real TLS server on loopback standing in for the internal service. The check
runs on the resolved address, at connect time (``bot.netguard``).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from bot.config import Settings
from bot.errors import ProviderBadResponse
from bot.images import download
from bot.netguard import NonPublicAddress, connection_allowed, is_public, public_connector
from bot.runtime import open_runtime

SECRET = b"\x89PNG\r\n\x1a\ninternal-only"
EC2 = "ec2-127-0-0-1.compute-1.amazonaws.com"
NAMES = {
    EC2: ["127.0.0.1"],
    "metadata.provider-cdn.example": ["169.254.169.254"],
    "office.provider-cdn.example": ["10.0.0.7"],
    "mixed.provider-cdn.example": ["10.0.0.8", "127.0.0.1"],
    "internal.provider-cdn.example": ["127.0.0.1"],
}


class NamesResolver(AbstractResolver):
    """DNS as the deployment sees it, for names the test chose; counts lookups."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        if host not in self.names:
            raise OSError(f"no such host {host}")
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in self.names[host]
        ]

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


class Internal:
    """An internal service on loopback that answers https for every test name."""

    def __init__(self, server: TestServer, hits: list[str]) -> None:
        self.server = server
        self.hits = hits

    @property
    def port(self) -> int:
        port = self.server.port
        assert port is not None
        return port


@pytest.fixture
async def internal(ca: trustme.CA) -> AsyncIterator[Internal]:
    hits: list[str] = []

    async def secret(request: web.Request) -> web.Response:
        hits.append(request.host)
        return web.Response(body=SECRET, content_type="image/png")

    async def bounce(request: web.Request) -> web.Response:
        port = request.url.port
        raise web.HTTPFound(f"https://internal.provider-cdn.example:{port}/secret.png")

    app = web.Application()
    app.router.add_get("/secret.png", secret)
    app.router.add_get("/bounce.png", bounce)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*NAMES, "127.0.0.1").configure_cert(server_ctx)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=server_ctx)
    try:
        yield Internal(server, hits)
    finally:
        await server.close()


def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def fetch(session: aiohttp.ClientSession, url: str, **kw: Any) -> bytes:
    return await download(session, url, max_bytes=4096, timeout=5, provider="modelslab", **kw)


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.169.254",  # cloud metadata
        "100.100.100.200",  # Alibaba's metadata, in the shared (CGNAT) range
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "::ffff:10.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))
    assert not connection_allowed(address, allow_loopback=False)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "::ffff:1.1.1.1"]
)
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))
    assert connection_allowed(address, allow_loopback=False)


def test_the_test_setting_opens_loopback_only() -> None:
    assert connection_allowed("127.0.0.1", allow_loopback=True)
    assert connection_allowed("::1", allow_loopback=True)
    assert not connection_allowed("10.0.0.1", allow_loopback=True)
    assert not connection_allowed("169.254.169.254", allow_loopback=True)
    assert not connection_allowed("not-an-address", allow_loopback=True)


# --------------------------------------------------------------------------- downloads


@pytest.mark.parametrize(
    ("host", "allowed_hosts"),
    [
        (EC2, ["*.amazonaws.com"]),  # a wildcard that matches private addresses too
        (EC2, []),  # DOWNLOAD_ALLOWED_HOSTS=any
        ("metadata.provider-cdn.example", []),
        ("office.provider-cdn.example", ["*.provider-cdn.example"]),
    ],
)
async def test_names_leading_to_non_public_addresses_are_refused(
    internal: Internal, ca: trustme.CA, host: str, allowed_hosts: list[str]
) -> None:
    resolver = NamesResolver(NAMES)
    connector = public_connector(
        allow_loopback=False, resolver=resolver, ssl=client_ssl(ca), use_dns_cache=False
    )
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(ProviderBadResponse) as info:
            await fetch(
                session, f"https://{host}:{internal.port}/secret.png", allowed_hosts=allowed_hosts
            )
    assert resolver.lookups == [host]  # it was a connect-time refusal, after resolution
    assert info.value.user_message == (
        f"The result link's host {host} leads to a private or local network address; "
        "the bot only downloads from public internet addresses."
    )
    assert info.value.retryable is False
    assert internal.hits == []


async def test_a_plain_session_would_have_fetched_it(internal: Internal, ca: trustme.CA) -> None:
    """What the guard prevents: the name check alone lets the download through."""
    connector = aiohttp.TCPConnector(resolver=NamesResolver(NAMES), ssl=client_ssl(ca))
    async with aiohttp.ClientSession(connector=connector) as session:
        body = await fetch(
            session, f"https://{EC2}:{internal.port}/secret.png", allowed_hosts=["*.amazonaws.com"]
        )
    assert body == SECRET


async def test_numeric_private_hosts_are_refused(ca: trustme.CA) -> None:
    async with aiohttp.ClientSession(
        connector=public_connector(allow_loopback=False, ssl=client_ssl(ca))
    ) as session:
        for url in ("https://10.0.0.1/x.png", "https://[::ffff:169.254.169.254]/x.png"):
            with pytest.raises(ProviderBadResponse) as info:
                await fetch(session, url)
            assert "private or local network address" in info.value.user_message


async def test_a_redirect_to_an_internal_host_is_refused(
    internal: Internal, ca: trustme.CA
) -> None:
    # The first hop is public-facing (here: loopback under the test setting, as the
    # emulators are); its redirect names a host that leads to a private address.
    names = {**NAMES, "internal.provider-cdn.example": ["10.0.0.9"]}
    connector = public_connector(
        allow_loopback=True, resolver=NamesResolver(names), ssl=client_ssl(ca)
    )
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(ProviderBadResponse) as info:
            await fetch(
                session, f"https://127.0.0.1:{internal.port}/bounce.png", allow_loopback=True
            )
    assert "internal.provider-cdn.example" in info.value.user_message
    assert internal.hits == []


async def test_loopback_under_the_test_setting_and_the_public_address_of_a_mixed_name(
    internal: Internal, ca: trustme.CA
) -> None:
    resolver = NamesResolver(NAMES)
    connector = public_connector(allow_loopback=True, resolver=resolver, ssl=client_ssl(ca))
    async with aiohttp.ClientSession(connector=connector) as session:
        # 10.0.0.8 is skipped; the name's other (here: allowed) address is used.
        body = await fetch(
            session, f"https://mixed.provider-cdn.example:{internal.port}/secret.png"
        )
    assert body == SECRET
    assert internal.hits == [f"mixed.provider-cdn.example:{internal.port}"]


async def test_the_runtime_session_for_links_is_guarded(internal: Internal, tmp_path: Any) -> None:
    settings = Settings(
        _env_file=None,
        modelslab_api_key="k" * 40,
        data_dir=tmp_path,
        download_allow_loopback=False,
    )
    async with open_runtime(settings, ledger=None) as runtime:  # type: ignore[arg-type]
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await runtime.session.get(f"http://127.0.0.1:{internal.port}/secret.png")
        assert isinstance(info.value.os_error, NonPublicAddress)
    assert internal.hits == []
