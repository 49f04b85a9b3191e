"""Connections only to public internet addresses, checked when the socket is made.

Result links come from providers, and with ``DOWNLOAD_ALLOWED_HOSTS=any`` or a
wildcard such as ``*.amazonaws.com`` a host name alone says nothing about where
it leads: ``ec2-10-0-0-1.compute-1.amazonaws.com`` is a private address, a name
can resolve to 169.254.169.254 (cloud metadata), and a name that resolved to a
public address a moment ago can resolve to 127.0.0.1 now (DNS rebinding). So the
check runs on the address aiohttp is about to connect to, after resolution,
through the connector's ``socket_factory``: whatever the resolver, cache or
redirect, no socket to a non-public address is ever opened. Loopback is allowed
only under ``DOWNLOAD_ALLOW_LOOPBACK`` (tests against local emulators).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohappyeyeballs import AddrInfoType

# RFC 6052's well-known NAT64 prefix carries an IPv4 address in its last 32 bits;
# a NAT64 gateway would connect to that address.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class NonPublicAddress(OSError):
    """A connection to a private, loopback, link-local or otherwise non-public
    address was refused. The message is the same for every address, so that
    aiohttp, trying several addresses of one name, reports this error itself."""

    def __init__(self) -> None:
        super().__init__("refused to connect to a non-public address")


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _embedded_v4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is on the public internet: not private, loopback,
    link-local (metadata services), shared (CGNAT), multicast, reserved or
    unspecified, also when written as an IPv4-mapped or NAT64 IPv6 address."""
    inner = _embedded_v4(address)
    if inner is not None:
        return is_public(inner)
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_unspecified
    )


def connection_allowed(host: str, *, allow_loopback: bool) -> bool:
    """Whether a socket may connect to the numeric address ``host``."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # not a numeric address: nothing to vouch for
    if is_public(address):
        return True
    inner = _embedded_v4(address) or address
    return allow_loopback and inner.is_loopback


def socket_factory(*, allow_loopback: bool) -> Callable[[AddrInfoType], socket.socket]:
    """A ``TCPConnector(socket_factory=...)`` that refuses non-public addresses."""

    def make(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        if not connection_allowed(str(sockaddr[0]), allow_loopback=allow_loopback):
            raise NonPublicAddress()
        return socket.socket(family=family, type=type_, proto=proto)

    return make


def public_connector(*, allow_loopback: bool, **kwargs: Any) -> aiohttp.TCPConnector:
    """A TCPConnector (``kwargs`` as for aiohttp's) that connects to public
    addresses only, plus loopback when ``allow_loopback``."""
    return aiohttp.TCPConnector(
        socket_factory=socket_factory(allow_loopback=allow_loopback), **kwargs
    )


def refused_address(error: BaseException) -> bool:
    """Whether ``error`` (an aiohttp connection error, say) comes from a
    ``NonPublicAddress`` refusal."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, NonPublicAddress):
            return True
        seen.add(id(current))
        os_error = getattr(current, "os_error", None)
        if isinstance(os_error, NonPublicAddress):
            return True
        current = current.__cause__ or current.__context__
    return False
