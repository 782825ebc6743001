"""Who may connect: connection limits, origin rules, trusted proxies; plain classes, no I/O.

What a connection may then send is the chat's: `chatservice.chat.policy`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class Limits(Protocol):
    """What the WebSocket endpoints ask of the connection limits: `ConnectionLimits`
    in one process, `chatservice.workers.scoreboard.SharedConnectionLimits` over workers."""

    @property
    def open(self) -> int:
        """Open connections now."""
        ...

    def acquire(self, address: str) -> str | None:
        """Count a connection from `address`: None if it may open, else why not (the 503)."""
        ...

    def release(self, address: str) -> None:
        """A connection from `address` closed."""
        ...


class ConnectionLimits:
    """How many WebSocket connections are open, in all and per client address.

    Args:
        total: The most open at once.
        per_address: The most open at once from one client address.
    """

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.open = 0
        self._by_address: dict[str, int] = {}

    def acquire(self, address: str) -> str | None:
        """Count a new connection from `address`.

        Returns:
            None if it may open, else why not (and nothing was counted).
        """
        if self.open >= self.total:
            return f"server is at its limit of {self.total} connections"
        count = self._by_address.get(address, 0)
        if count >= self.per_address:
            return f"too many connections from {address} (limit {self.per_address})"
        self.open += 1
        self._by_address[address] = count + 1
        return None

    def release(self, address: str) -> None:
        """Count a connection from `address` as closed."""
        count = self._by_address.get(address, 0)
        if count <= 0:
            return
        self.open -= 1
        if count == 1:
            del self._by_address[address]
        else:
            self._by_address[address] = count - 1


@dataclass(frozen=True, slots=True)
class _OriginPattern:
    scheme: str
    host: str  # exact host, or ".example.com" for "*.example.com"
    port: int | None  # None: any port

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if scheme != self.scheme:
            return False
        if self.port is not None and port != self.port:
            return False
        if self.host.startswith("."):
            return host.endswith(self.host) and len(host) > len(self.host)
        return host == self.host


def _split_origin(value: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an origin, lower-cased, with the default port filled in.

    Raises:
        ValueError: It is not a scheme://host[:port] origin.
    """
    parts = urlsplit(value.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an origin: {value!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"not an origin: {value!r}")
    port = parts.port if parts.port is not None else _DEFAULT_PORTS[scheme]
    return scheme, parts.hostname.lower(), port


def parse_origin_pattern(value: str) -> _OriginPattern | None:
    """Parse an ``--allowed-origin`` pattern; None means any origin (``*``).

    Forms: ``https://chat.example.com``, ``https://*.example.com`` (any subdomain),
    ``http://localhost:*`` (any port), ``*``.

    Raises:
        ValueError: It is none of these.
    """
    value = value.strip()
    if value == "*":
        return None
    any_port = value.endswith(":*")
    base = value[:-2] if any_port else value
    wildcard = "://*." in base
    if wildcard:
        base = base.replace("://*.", "://wildcard.", 1)
    scheme, host, port = _split_origin(base)
    if "*" in host:
        raise ValueError(f"'*' may only stand for a whole first label or the port: {value!r}")
    if wildcard:
        host = host[len("wildcard") :]
    return _OriginPattern(scheme, host, None if any_port else port)


class OriginPolicy:
    """Which browser origins may open a WebSocket (cross-site WebSocket hijacking).

    No Origin header (a non-browser client), or an Origin whose host and port equal
    the request's Host header, is allowed; any other must match a pattern.

    Args:
        patterns: ``--allowed-origin`` values; see `parse_origin_pattern`.

    Raises:
        ValueError: A pattern is malformed.
    """

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        parsed = [parse_origin_pattern(p) for p in patterns]
        self.any = any(p is None for p in parsed)
        self._patterns = [p for p in parsed if p is not None]

    def allows(self, origin: str | None, host: str | None) -> bool:
        """Whether a handshake with this Origin and Host header may proceed."""
        if not origin or self.any:  # Autobahn reports a missing header as ""
            return True
        try:
            scheme, origin_host, origin_port = _split_origin(origin)
        except ValueError:
            return False  # "null" and garbage
        if host and _same_host_port(scheme, origin_host, origin_port, host):
            return True
        return any(p.matches(scheme, origin_host, origin_port) for p in self._patterns)


def _same_host_port(scheme: str, origin_host: str, origin_port: int, host_header: str) -> bool:
    parts = urlsplit("//" + host_header.strip())
    try:
        port = parts.port
    except ValueError:
        return False
    if parts.hostname is None or parts.hostname.lower() != origin_host:
        return False
    # A Host header without a port means the default port (of the page's scheme:
    # an https page talks wss to 443, an http page ws to 80).
    return (port if port is not None else _DEFAULT_PORTS[scheme]) == origin_port


class TrustedProxies:
    """Whose word on the client's address is believed (``--trusted-proxy``).

    Behind a reverse proxy every connection comes from the proxy; the proxy
    says who the client is in ``X-Forwarded-For`` (or RFC 7239 ``Forwarded``).
    Anybody can send those headers, so they are believed only from a peer in
    one of the trusted networks; the client is then the nearest address in the
    chain (from the right) that is not a trusted proxy itself.

    Args:
        networks: CIDRs (``10.0.0.0/8``, ``127.0.0.1``, ``::1/128``).

    Raises:
        ValueError: One is not a network.
    """

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self._networks = tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, host: str) -> bool:
        """Whether `host` (an address) is one of the trusted proxies."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def client(self, peer: str, x_forwarded_for: str | None, forwarded: str | None) -> str:
        """The client's address: `peer`, or what a trusted `peer` says it is.

        A header that is not a list of addresses is ignored (then `peer`).
        """
        if not self._networks or not self.trusts(peer):
            return peer
        if forwarded:
            chain = _forwarded_for(forwarded)
        elif x_forwarded_for:
            chain = [_bare_address(part) for part in x_forwarded_for.split(",")]
        else:
            return peer
        if not chain or None in chain:
            return peer
        for address in reversed(chain):
            assert address is not None
            if not self.trusts(address):
                return address
        return chain[0] or peer


def _forwarded_for(value: str) -> list[str | None]:
    """The ``for=`` addresses of a ``Forwarded`` header, in order."""
    found: list[str | None] = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, token = pair.strip().partition("=")
            if name.strip().lower() == "for":
                found.append(_bare_address(token))
    return found


def _bare_address(token: str) -> str | None:
    """An IP address from ``1.2.3.4``, ``1.2.3.4:80``, ``"[2001:db8::1]:80"``; None if not one."""
    token = token.strip().strip('"')
    if token.startswith("["):
        token = token[1 : token.find("]")] if "]" in token else ""
    elif token.count(":") == 1:
        token = token.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(token))
    except ValueError:
        return None
