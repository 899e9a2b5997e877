"""The client's address: the TCP peer, or, behind trusted reverse proxies, the address the
nearest of them forwarded.

Behind a proxy every connection comes from the proxy, so per-address limits (the login
throttle) would count every client together and 30 bad logins would lock everyone out.
A proxy names the client in `X-Forwarded-For` or `Forwarded` (RFC 7239), but anyone can
send those headers, so they are believed only when the peer is in `[server]
trusted_proxies` (addresses or CIDR networks; empty by default: headers ignored).

Each proxy appends the address it received the connection from, so the list reads
client-supplied values first and trusted ones last. The client is the right-most hop that
is *not* a trusted proxy: whatever a client writes into the header sits to the left of
the address its proxy appended, so it cannot choose its own identity. When every hop is
trusted the left-most is taken; an unparsable hop (`unknown`, an obfuscated name, junk)
ends the walk at the last trusted address seen, so junk never becomes a throttle key.

`X-Forwarded-For` is read when present (every header line, in order), else `Forwarded`'s
`for=` values. A proxy that writes only `Forwarded` must drop a client's
`X-Forwarded-For` (docs/security.md).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from aiohttp import web

from gateway.config import CONFIG

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_CLIENT = web.RequestKey("client_address", str)


@functools.lru_cache(maxsize=16)
def networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """The configured proxies as networks (the config already refused bad entries)."""
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def parse_address(value: str) -> Address | None:
    """An IP address from a forwarded hop: bare, `[v6]`, `v4:port`, `[v6]:port`, quoted."""
    value = value.strip().strip('"').strip()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:  # IPv4 with a port (a bare IPv6 has several colons)
        value = value.partition(":")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, trusted: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def forwarded_for(header_values: Iterable[str]) -> list[str]:
    """The `for=` values of `Forwarded` header lines, left to right."""
    hops: list[str] = []
    for line in header_values:
        for element in _split(line, ","):
            for pair in _split(element, ";"):
                name, sep, value = pair.partition("=")
                if sep and name.strip().lower() == "for":
                    hops.append(value.strip())
    return hops


def _split(text: str, separator: str) -> list[str]:
    """Split on `separator` outside double quotes (RFC 7239 quoted-string values)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def hops_of(request: web.BaseRequest) -> list[str]:
    """The forwarded chain, left (farthest) to right (nearest), from one header kind."""
    xff = request.headers.getall("X-Forwarded-For", [])
    if xff:
        return [hop for line in xff for hop in line.split(",") if hop.strip()]
    return forwarded_for(request.headers.getall("Forwarded", []))


def resolve(peer: str | None, hops: list[str], trusted: tuple[Network, ...]) -> str:
    """The client address given the peer and the forwarded chain (see the module doc)."""
    if not peer:
        return "unknown"
    if not trusted:  # the default: no header is believed, nothing to parse
        return peer
    nearest = parse_address(peer)
    if nearest is None or not _trusted(nearest, trusted):
        return peer
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            break
        nearest = address
        if not _trusted(address, trusted):
            break
    return str(nearest)


def client_address(request: web.Request) -> str:
    """This request's client address, worked out once per request."""
    found = request.get(_CLIENT)
    if found is None:
        trusted = networks(request.app[CONFIG].server.trusted_proxies)
        found = request[_CLIENT] = resolve(
            request.remote, hops_of(request) if trusted else [], trusted)
    return found
