"""Client-supplied URLs (`url`, `callback_url`): their shape, which hosts they may name, and
which addresses they may reach — checked at submission (`UrlPolicy.check`) and again on every
connection (`UrlPolicy.session`, whose connector checks each host it resolves, redirects and
IP literals included). Operator-configured targets (webhooks.urls, providers' base_url, the
Slack webhook) are trusted and never pass through here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import yarl

NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052's well-known prefix: the last 32 bits are IPv4
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d


class UrlError(ValueError):
    """A URL we will not use; the message says why."""


def validate_http_url(url: str) -> str:
    """An absolute http(s) URL with a host, or UrlError."""
    if not isinstance(url, str) or not url:
        raise UrlError("must be a non-empty http(s) URL")
    if len(url) > 2048:
        raise UrlError("is longer than 2048 characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise UrlError(f"is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UrlError(f"must use http or https, not {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise UrlError("has no host")
    return url


def host_of(url: str) -> str:
    """The host a connection to `url` is made to: lower case, IDNA-encoded, no trailing dot."""
    try:
        host = yarl.URL(url).raw_host
    except (ValueError, UnicodeError) as exc:
        raise UrlError(f"has a host that is not a valid name: {exc}") from None
    if not host:
        raise UrlError("has no host")
    return normal_host(host)


def normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def redact(url: str | None) -> str | None:
    """`url` with any user name and password replaced by `***`, for views and logs."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for: mapped (::ffff:), 6to4 (2002::/16), Teredo
    (the client), NAT64 (64:ff9b::/96) or IPv4-compatible (::a.b.c.d); None for a plain IPv6 one."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in NAT64 or (ip in IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _globally_routable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local  # fec0::/10, not in is_private
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or site_local)


def non_public(addr: str) -> str | None:
    """None if `addr` is globally routable; else how to name it in a refusal (an IPv6 form that
    embeds an IPv4 address is judged, and named, by that address)."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    inner = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    if inner is not None:
        return None if _globally_routable(inner) else f"{addr}, which embeds {inner}"
    return None if _globally_routable(ip) else addr


def host_matches(host: str, patterns: Iterable[str]) -> bool:
    """`host` is one of `patterns`: an exact name, or `*.domain` for any name under domain."""
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


@dataclass(frozen=True)
class UrlPolicy:
    """server.allow_private_urls, server.allow_private_hosts and server.url_allow_hosts."""

    allow_private: bool = False
    private_hosts: frozenset[str] = frozenset()
    allow_hosts: tuple[str, ...] = ()  # empty: any host

    @classmethod
    def of(cls, server) -> "UrlPolicy":
        return cls(server.allow_private_urls, frozenset(server.allow_private_hosts), tuple(server.url_allow_hosts))

    def check_host(self, host: str) -> str:
        """The host, normalised, if the allow list lets it be named; else UrlError."""
        host = normal_host(host)
        if self.allow_hosts and not host_matches(host, self.allow_hosts):
            raise UrlError(f"host {host!r} is not in server.url_allow_hosts")
        return host

    def may_be_private(self, host: str) -> bool:
        return self.allow_private or host in self.private_hosts

    def check_addresses(self, host: str, addresses: Sequence[str]) -> None:
        for addr in addresses:
            if (shown := non_public(addr)) is not None:
                raise UrlError(f"host {host!r} resolves to a non-public address ({shown}); "
                               "set server.allow_private_urls to allow it")

    async def check(self, url: str) -> str:
        """`url` if it may be used: http(s), a host the allow list names, and (unless private
        addresses are allowed for it) a host that resolves only to public addresses."""
        validate_http_url(url)
        host = self.check_host(host_of(url))
        if self.may_be_private(host):
            return url
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise UrlError(f"host {host!r} does not resolve: {exc.strerror}") from None
        except UnicodeError as exc:
            raise UrlError(f"has a host that is not a valid name: {exc}") from None
        self.check_addresses(host, [info[4][0] for info in infos])
        return url

    def session(self, **kw) -> aiohttp.ClientSession:
        """An HTTP client whose every connection passes this policy (UrlError otherwise)."""
        return aiohttp.ClientSession(connector=CheckedConnector(self), **kw)


class CheckedConnector(aiohttp.TCPConnector):
    """A TCPConnector that checks the host and every address of each connection it opens, so a
    redirect, a DNS answer that changed since submission, or an IP literal (which aiohttp connects
    to without asking a resolver) cannot reach what the policy refuses."""

    def __init__(self, policy: UrlPolicy, **kw) -> None:
        super().__init__(**kw)
        self._policy = policy

    async def _resolve_host(self, host, port, traces=None):
        name = self._policy.check_host(host)
        results = await super()._resolve_host(host, port, traces)
        if not self._policy.may_be_private(name):
            self._policy.check_addresses(name, [r["host"] for r in results])
        return results
