"""URL checks: the shape of webhook/callback URLs, and which hosts the `url` fetcher may reach."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Sequence
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


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


def is_public_address(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified)


async def check_fetchable(url: str, allow_private: bool, allowed_hosts: Sequence[str] = ()) -> str:
    """Validate a source URL and, unless allowed (all private addresses, or this host by name),
    refuse hosts that resolve to non-public addresses."""
    validate_http_url(url)
    host = urlsplit(url).hostname
    if allow_private or host in allowed_hosts:
        return url
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UrlError(f"host {host!r} does not resolve: {exc.strerror}") from None
    for info in infos:
        if not is_public_address(info[4][0]):
            raise UrlError(f"host {host!r} resolves to a non-public address ({info[4][0]}); "
                           "set server.allow_private_urls to allow it")
    return url


class PublicOnlyResolver(AbstractResolver):
    """aiohttp resolver that refuses non-public addresses, so redirects and DNS changes are checked too."""

    def __init__(self, allowed_hosts: Sequence[str] = ()) -> None:
        self._inner = DefaultResolver()
        self._allowed = {h.lower() for h in allowed_hosts}

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if host.lower() in self._allowed:
            return results
        for r in results:
            if not is_public_address(r["host"]):
                raise OSError(f"refusing to connect to non-public address {r['host']} for host {host!r}")
        return results

    async def close(self) -> None:
        await self._inner.close()
