"""Which hosts the crawler may download pictures from.

A result page is written by someone else: a picture URL (or a redirect) naming 127.0.0.1, a
private network or 169.254.169.254 would turn the crawler into a door to the machine's own
services and the cloud metadata endpoint. Such targets are refused unless the site profile
says the site itself lives there (the demo shop on loopback).
"""
from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class ForbiddenTarget(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (address.is_loopback or address.is_private or address.is_link_local
            or address.is_multicast or address.is_reserved or address.is_unspecified)


def check_target(url: str, allow_private: bool, site_origin: str | None = None) -> None:
    """Raises :class:`ForbiddenTarget` unless ``url`` is http(s) and either on ``site_origin``
    (same scheme, host and port), or private hosts are allowed, or every address its host
    resolves to is a public one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ForbiddenTarget(f"not an http(s) URL: {url[:80]!r}")
    host = parts.hostname
    if not host:
        raise ForbiddenTarget(f"no host in {url[:80]!r}")
    if allow_private or (site_origin and same_host(url, site_origin)):
        return
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ForbiddenTarget(f"cannot resolve {host}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if _internal(address):
            raise ForbiddenTarget(f"refused: {host} is an internal address ({address})")


def same_host(a: str, b: str) -> bool:
    first, second = urlsplit(a), urlsplit(b)
    return (first.scheme, first.hostname, first.port) == (second.scheme, second.hostname, second.port)


def referer_for(page_url: str | None, target: str) -> str | None:
    """The Referer a careful browser sends: the whole page URL to its own host, only the
    origin to anyone else (the page URL holds the search query)."""
    if not page_url:
        return None
    if same_host(page_url, target):
        return page_url
    parts = urlsplit(page_url)
    return f"{parts.scheme}://{parts.netloc}/"
