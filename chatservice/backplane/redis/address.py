"""Where Redis is: the ``--redis`` URL, parsed."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS

DEFAULT_PORT = 6379


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is, from a ``--redis`` URL (see `parse_redis_url`)."""

    host: str = "localhost"
    port: int = DEFAULT_PORT
    path: str | None = None  # a unix socket
    tls: bool = False
    password: str | None = None
    username: str | None = None
    db: int | None = None

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        """A client endpoint that connects to this address (TLS for ``rediss://``)."""
        if self.path is not None:
            return UNIXClientEndpoint(reactor, self.path)
        endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, self.host, self.port)
        if self.tls:
            endpoint = wrapClientTLS(optionsForClientTLS(self.host), endpoint)
        return endpoint

    def __str__(self) -> str:
        """The address without the password, for logs."""
        if self.path is not None:
            where = f"unix://{self.path}"
        else:
            where = f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}"
        return where + (f"/{self.db}" if self.db else "")


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS), ``unix:///path[?db=N]``.

    Raises:
        ValueError: With a one-line reason.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad Redis URL {url!r}: {e}") from None
    scheme = parts.scheme.lower()
    query = urllib.parse.parse_qs(parts.query)
    password = urllib.parse.unquote(parts.password) if parts.password else None
    username = urllib.parse.unquote(parts.username) if parts.username else None
    db_text = query.get("db", [""])[0]
    if scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ValueError(f"bad Redis URL {url!r}: no host")
        db_text = parts.path.strip("/") or db_text
    elif scheme == "unix":
        if not parts.path:
            raise ValueError(f"bad Redis URL {url!r}: no socket path")
    else:
        raise ValueError(f"bad Redis URL {url!r}: use redis://, rediss:// or unix://")
    db: int | None = None
    if db_text:
        if not db_text.isdigit():
            raise ValueError(f"bad Redis URL {url!r}: the database must be a number")
        db = int(db_text)
    if scheme == "unix":
        return RedisAddress(path=parts.path, password=password, username=username, db=db)
    return RedisAddress(
        host=parts.hostname or "localhost",
        port=port or DEFAULT_PORT,
        tls=scheme == "rediss",
        password=password,
        username=username,
        db=db,
    )
