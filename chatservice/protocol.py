"""Autobahn protocol classes for the WebSocket endpoints.

The wire behaviour of every endpoint is specified in docs/protocol.md; keep the
two in step.  Protocols stay thin: they negotiate, log, and hand each message
on.  Autobahn does the framing, UTF-8 validation, size limits (checked after
decompression), permessage-deflate, pings and timeouts; we only configure it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.logger import Logger

from chatservice import __version__
from chatservice.config import Config

# Autobahn's protocol classes own `self.log`; ours is module level.
_log = Logger()

SERVER_NAME = f"chatservice/{__version__}"

#: Close code for an unexpected error on our side (RFC 6455, 7.4.1).
CLOSE_INTERNAL_ERROR = 1011


def accept_permessage_deflate(
    offers: Sequence[Any],
) -> PerMessageDeflateOfferAccept | None:
    """Accept the client's first permessage-deflate offer, as offered.

    Args:
        offers: The extension offers parsed from the client's handshake.

    Returns:
        The acceptance of the first permessage-deflate offer, or None to run
        without compression.
    """
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


class ServerProtocol(WebSocketServerProtocol):
    """What every endpoint shares: connection ids, negotiation, logging.

    Subclasses set `subprotocols` (in order of preference when the client
    offers several is *the client's* order, RFC 6455 4.2.2) and implement
    `onMessage`.  `onConnect` and `onOpen` are guarded: Autobahn would swallow
    an exception there and leave the connection half-open.
    """

    factory: EndpointFactory
    #: Subprotocols this endpoint speaks.
    subprotocols: tuple[str, ...] = ()
    #: Whether a client offering no subprotocol at all is accepted.
    allow_no_subprotocol = True

    conn_id = 0
    _opened_at: float | None = None
    _path = ""

    def connectionMade(self) -> None:
        self.conn_id = self.factory.next_connection_id()
        super().connectionMade()

    def onConnect(self, request: ConnectionRequest) -> str | None:
        self._path = request.path
        try:
            return self.negotiate(request)
        except ConnectionDeny as deny:
            _log.info(
                "conn={conn_id} denied peer={peer} path={path}: {code} {reason}",
                conn_id=self.conn_id,
                peer=request.peer,
                path=request.path,
                code=deny.code,
                reason=deny.reason,
            )
            raise
        except Exception:
            _log.failure(
                "conn={conn_id} error while negotiating with peer={peer}",
                conn_id=self.conn_id,
                peer=request.peer,
            )
            raise ConnectionDeny(
                ConnectionDeny.INTERNAL_SERVER_ERROR, "Internal Server Error"
            ) from None

    def negotiate(self, request: ConnectionRequest) -> str | None:
        """Pick the subprotocol: the first one the client offers that we speak.

        Raises:
            ConnectionDeny: 400 when the client offers only subprotocols this
                endpoint does not speak.
        """
        for offered in request.protocols:
            if offered in self.subprotocols:
                return offered
        if request.protocols or not self.allow_no_subprotocol:
            speaks = ", ".join(self.subprotocols) or "none"
            raise ConnectionDeny(
                ConnectionDeny.BAD_REQUEST,
                f"Unknown protocol; this endpoint speaks: {speaks}",
            )
        return None

    def onOpen(self) -> None:
        self._opened_at = time.monotonic()
        _log.info(
            "conn={conn_id} open peer={peer} path={path} "
            "subprotocol={subprotocol} extensions={extensions}",
            conn_id=self.conn_id,
            peer=self.peer,
            path=self._path,
            subprotocol=self.websocket_protocol_in_use,
            extensions=[e.EXTENSION_NAME for e in self.websocket_extensions_in_use],
        )
        try:
            self.opened()
        except Exception:
            _log.failure("conn={conn_id} error while opening", conn_id=self.conn_id)
            self.sendClose(CLOSE_INTERNAL_ERROR, "Internal Server Error")

    def opened(self) -> None:
        """Called once the connection is open; subclasses may override."""

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._opened_at is None:
            # The opening handshake never completed; it was logged as denied
            # (or Autobahn logged why it failed).
            return
        duration = time.monotonic() - self._opened_at
        self._opened_at = None
        _log.info(
            "conn={conn_id} closed peer={peer} code={code} reason={reason!r} "
            "clean={clean} duration={duration:.3f}s",
            conn_id=self.conn_id,
            peer=self.peer,
            code=code if code is not None else self.localCloseCode,
            reason=reason if reason is not None else self.localCloseReason,
            clean=wasClean,
            duration=duration,
        )
        self.closed()

    def closed(self) -> None:
        """Called once when an open connection has closed; subclasses may override."""


class EchoProtocol(ServerProtocol):
    """``/echo``: every message comes back as it came, text as text, binary as binary."""

    subprotocols = ("plain-text",)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.factory.log_messages:
            _log.debug(
                "conn={conn_id} echo binary={binary} size={size} payload={payload!r}",
                conn_id=self.conn_id,
                binary=isBinary,
                size=len(payload),
                payload=payload[:200],
            )
        self.sendMessage(payload, isBinary)


class EndpointFactory(WebSocketServerFactory):
    """A WebSocket factory configured from a `Config`.

    Args:
        config: The service's settings.
        protocol: The protocol class of this endpoint.
        max_message_size: Largest message accepted, after decompression.
    """

    _ids: Iterator[int] = itertools.count(1)

    def __init__(
        self,
        config: Config,
        protocol: type[ServerProtocol],
        max_message_size: int,
    ) -> None:
        super().__init__(server=SERVER_NAME)
        self.protocol = protocol
        self.log_messages = config.log_level == "debug"
        self.setProtocolOptions(
            # Send a close frame (and so what we had queued before it) when
            # failing a connection, instead of dropping the TCP connection:
            # strict RFC 6455 7.1.7 behaviour, and what the testsuite checks.
            failByDrop=False,
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            perMessageCompressionAccept=accept_permessage_deflate,
            openHandshakeTimeout=config.open_handshake_timeout,
            autoPingInterval=config.auto_ping_interval,
            autoPingTimeout=config.auto_ping_timeout,
            # A plain GET without Upgrade is answered by the web resource,
            # never by Autobahn's status page.
            webStatus=False,
        )

    def next_connection_id(self) -> int:
        """A process-wide unique id for log events of one connection."""
        return next(EndpointFactory._ids)


def echo_factory(config: Config) -> EndpointFactory:
    """The factory behind ``/echo``."""
    return EndpointFactory(config, EchoProtocol, config.echo_max_message_size)
