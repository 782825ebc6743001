"""The HTTP channel every connection starts with: limits before any resource sees it.

twisted.web's `HTTPChannel` with a deadline for a whole request and header
limits of its own (`ChatChannel`), and the access log's client address as a
trusted proxy names it (`access_log_formatter`).  A WebSocket connection leaves
it once its opening handshake is read (Autobahn takes the transport over).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.http import HTTPChannel, combinedLogFormatter
from twisted.web.server import Request

from chatservice import internals, logs
from chatservice.web.policy import TrustedProxies

_log = logs.logger("chatservice.channel")


#: Most header lines in one request; more: 431.
MAX_HEADERS = 100
#: Most bytes of a request line and its headers; more: 431.
MAX_HEADER_BYTES = 16384
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Connection: close\r\nContent-Length: 0\r\n\r\n"
)
_TOO_SLOW = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class ChatChannel(HTTPChannel):
    """twisted.web's HTTP channel with two limits of its own.

    - A deadline: a request (its line, headers and body; for a WebSocket, the
      whole opening handshake) must arrive whole within
      ``site.request_deadline`` seconds of its first byte, whatever the client
      sends meanwhile.  twisted.web's timeout only bounds the silence between
      two bytes (and still closes a connection that sends nothing): a client
      sending a header line a second would hold the connection forever.
      Late: 408 and closed.
    - Header limits: more than `MAX_HEADERS` header lines, or more than
      `MAX_HEADER_BYTES` bytes of them (one line alone included), is 431 at
      once (twisted.web answers 400, or drops an overlong line without a word).
    """

    maxHeaders = MAX_HEADERS
    totalHeadersSize = MAX_HEADER_BYTES
    MAX_LENGTH = MAX_HEADER_BYTES
    #: The ChatSite: its ``request_deadline`` (seconds).
    site: Any
    _deadline: Any = None
    _refused = False
    #: Between two requests: the next byte starts a request (and its deadline).
    _between = True

    def _arm(self) -> None:
        if self._deadline is None and not self._refused:
            self._deadline = self.callLater(self.site.request_deadline, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def dataReceived(self, data: bytes) -> None:
        """Bytes of the request: the deadline for the whole request starts with the first."""
        if self._refused:
            return
        if self._between and data:
            self._between = False
            self._arm()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> Any:
        """A header line, counted against the header limits."""
        if internals.header_bytes(self) + len(line) > self.totalHeadersSize:
            return self._too_large("the request line and headers are over {limit} bytes")
        return super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        """One header, counted against the header limits (431 past them)."""
        if internals.header_lines(self) >= self.maxHeaders:
            self._too_large("over {limit} header lines")
            return False
        return bool(super().headerReceived(line))

    def lineLengthExceeded(self, line: bytes) -> Any:
        """A line over the limit: 431, as for too many headers."""
        return self._too_large("a header line over {limit} bytes")

    def allContentReceived(self) -> None:
        """The whole request is in: its deadline is over."""
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        """A request answered: the next one gets a deadline of its own."""
        super().requestDone(request)
        self._between = True  # a kept-alive connection: the next request's first byte

    def connectionLost(self, reason: Any = None) -> None:
        """The connection went: no deadline runs any more."""
        self._disarm()
        super().connectionLost(reason)

    def _too_large(self, why: str) -> None:
        limit = MAX_HEADERS if "lines" in why else MAX_HEADER_BYTES
        self._refuse(_TOO_LARGE, "431 " + why.format(limit=limit))

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport is not None:  # (None: a WebSocket took it over)
            self._refuse(_TOO_SLOW, f"408 no whole request within {self.site.request_deadline:g}s")

    def _refuse(self, response: bytes, why: str) -> None:
        if self._refused or self.transport is None:
            return
        self._refused = True
        self._disarm()
        _log.info("refused peer={peer}: {why}", peer=str(self.transport.getPeer()), why=why)
        self.transport.write(response)
        self.loseConnection()


#: A ``token`` query parameter's value (an API token, a chat token): never logged.
_TOKEN_IN_QUERY = re.compile(rb"([?&]token=)[^&#]*")


def without_token(uri: bytes) -> bytes:
    """`uri` with the value of a ``token`` query parameter replaced by ``[redacted]``."""
    return _TOKEN_IN_QUERY.sub(rb"\1[redacted]", uri)


class _LoggedRequest:
    """A request as the access log shows it: its client the one a trusted proxy
    named, its URI without a token."""

    def __init__(self, request: Request, host: str | None) -> None:
        self._request = request
        self._address = request.getClientAddress()
        if host is not None:
            kind = IPv6Address if ":" in host else IPv4Address
            self._address = kind("TCP", host, 0)
        self.uri = without_token(request.uri)

    def getClientAddress(self) -> Any:
        return self._address

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def access_log_formatter(proxies: TrustedProxies) -> Callable[[str, Request], str]:
    """twisted.web's combined log format, with the client a trusted proxy names,
    and never a token of the query."""

    def formatter(timestamp: str, request: Request) -> str:
        peer = getattr(request.getClientAddress(), "host", None)
        client = None
        if proxies and peer is not None:
            client = proxies.client(
                peer,
                _header(request, b"x-forwarded-for"),
                _header(request, b"forwarded"),
            )
            if client == peer:
                client = None
        if client is None and b"token=" not in (request.uri or b""):
            return str(combinedLogFormatter(timestamp, request))
        return str(combinedLogFormatter(timestamp, _LoggedRequest(request, client)))

    return formatter


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None
