"""What every WebSocket endpoint shares: the protocol base, its factory, negotiation.

The wire behaviour of every endpoint is specified in docs/protocol.md; keep the
two in step.  Protocols stay thin: they negotiate, log, and hand each message
on.  Autobahn does the framing, UTF-8 validation, size limits (checked after
decompression), permessage-deflate, pings and timeouts; we only configure it.
The endpoints themselves are `chatservice.web.echo` and `chatservice.web.chat`.
"""

from __future__ import annotations

import itertools
import time
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import txaio
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest

from chatservice import __version__, internals, logs
from chatservice.config import Config
from chatservice.counters import (
    REJECT_ERROR,
    REJECT_LIMIT,
    REJECT_ORIGIN,
    REJECT_SUBPROTOCOL,
    Counters,
)
from chatservice.web import masking, quiet
from chatservice.web.policy import Limits, OriginPolicy, TrustedProxies

# Autobahn's protocol classes own `self.log`; ours is module level.  The
# namespace is the one of every endpoint's events (see `logs.logger`).
_log = logs.logger("chatservice.protocol")

# Client frames up to 1 KiB are unmasked without Autobahn's per-frame cffi set-up.
masking.install()
quiet.install()

SERVER_NAME = f"chatservice/{__version__}"

#: Close codes (RFC 6455, 7.4.1).
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY = 1008
CLOSE_INTERNAL_ERROR = 1011
_OPEN = internals.STATE_OPEN
_CLOSING = internals.STATE_CLOSING
#: How many close handshake timeouts (1 s each) in a row we wait for the close
#: frame of a peer that is still sending (see `ServerProtocol.onCloseHandshakeTimeout`).
CLOSING_WAITS = 10
#: Bytes handed to Autobahn's frame parser at a time (see `ServerProtocol.dataReceived`).
_RECEIVE_PIECE = 4096

#: The `chatservice_handshakes_rejected_total` reason of each refusal we make.
_REJECT_REASONS = {
    ConnectionDeny.FORBIDDEN: REJECT_ORIGIN,
    ConnectionDeny.BAD_REQUEST: REJECT_SUBPROTOCOL,
    ConnectionDeny.SERVICE_UNAVAILABLE: REJECT_LIMIT,
}


def accept_permessage_deflate(
    offers: Sequence[Any],
) -> PerMessageDeflateOfferAccept | None:
    """Accept the client's first permessage-deflate offer, as offered (``/echo``).

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


class _NoServerContextAccept(PerMessageDeflateOfferAccept):
    """An acceptance that says ``server_no_context_takeover`` even when not asked.

    (Autobahn applies ``no_context_takeover=True`` but names it in the response
    only when the client asked for it; RFC 7692 7.1.1.1 lets the server say it
    anyway, and the client may then drop its context.)
    """

    def get_extension_string(self) -> str:
        extension: str = super().get_extension_string()
        if not internals.asked_no_context_takeover(self):
            extension += "; server_no_context_takeover"
        return extension


def accept_shared_deflate(
    offers: Sequence[Any],
) -> PerMessageDeflateOfferAccept | None:
    """Accept the first permessage-deflate offer without server context takeover (``/chat``).

    Every message the server sends is then compressed on its own, so one
    compressed frame serves every member (`chatservice.web.frames`).  What the
    client compresses is received as it offered (with context takeover unless
    it said otherwise), and the server's window is the one it asked for (15
    if none).
    """
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return _NoServerContextAccept(offer, no_context_takeover=True)
    return None


def refuse_compression(offers: Sequence[Any]) -> None:
    """Accept no compression offer (``--chat-compression off``)."""
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

    #: Whether the Origin header is checked (endpoints browsers use for state).
    check_origin = False

    conn_id = 0
    _opened_at: float | None = None
    #: Bytes received since our close frame (counted only while closing).
    _received_while_closing = 0
    _closing_waits = 0
    _path = ""
    _counted_address: str | None = None

    def connectionMade(self) -> None:
        """Number the connection; drop Autobahn's per-connection copies of the options."""
        self.conn_id = self.factory.next_connection_id()
        super().connectionMade()
        # Autobahn copies its ~40 options from the factory onto every
        # connection; our factory's protocol class carries them already
        # (`EndpointFactory`), so the copies go.
        own = self.__dict__
        cls = type(self)
        for name in internals.protocol_options(cls):
            if name in own and getattr(cls, name, own) is own[name]:
                del own[name]

    def dataReceived(self, data: bytes) -> None:
        """Hand what came to Autobahn's frame parser in pieces of at most 4 KiB."""
        # Autobahn cuts every frame's header and payload off the front of its
        # receive buffer, copying what follows each time: many small frames in
        # one 64 KiB read cost a quadratic amount of copying.  Pieces bound it.
        # (Calling _dataReceived also skips formatting a debug line per read.
        # It is an internal, called directly here: every read goes through it.)
        if self.state == _CLOSING:
            self._received_while_closing += len(data)
        if len(data) <= _RECEIVE_PIECE:
            self._dataReceived(data)
            return
        for start in range(0, len(data), _RECEIVE_PIECE):
            self._dataReceived(data[start : start + _RECEIVE_PIECE])

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        """Autobahn's, with a closing handshake timeout of the full time."""
        before = internals.close_timer(self)
        super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)
        timeout = internals.close_timer(self)
        if timeout is not None and timeout is not before:
            # Autobahn's timer puts the call in a bucket of whole seconds
            # (txaio's batched timer truncates `now + delay`): a 1 s timeout
            # fired after anything from 0 to 1 s.  Ours waits the full time.
            timeout.cancel()
            self._wait_for_close_reply()

    def onCloseHandshakeTimeout(self) -> None:
        """Wait for the peer's close frame while it is still sending, up to `CLOSING_WAITS`.

        Autobahn drops the connection `closeHandshakeTimeout` (1 s) after our
        close frame.  A peer in the middle of sending a message we refused as
        too big (1009) answers only once it has sent all of it, and closing a
        socket with unread data sends a TCP reset, which destroys our close
        frame at the peer: it would see "connection reset", not 1009.  So the
        timeout starts again while bytes keep coming, up to `CLOSING_WAITS` times.
        """
        if (
            self.state == _CLOSING
            and self._received_while_closing
            and self._closing_waits < CLOSING_WAITS
        ):
            self._received_while_closing = 0
            self._closing_waits += 1
            self._wait_for_close_reply()
            return
        super().onCloseHandshakeTimeout()

    def _wait_for_close_reply(self) -> None:
        """Time out the closing handshake in `closeHandshakeTimeout` seconds."""
        delay = internals.close_timeout(self)
        call = txaio.call_later(delay, self.onCloseHandshakeTimeout)  # type: ignore[attr-defined]
        internals.set_close_timer(self, call)

    def _slim(self) -> None:
        """Drop what only the handshake needed, and compact what is left.

        An idle connection is mostly this object's attributes; at 10,000
        connections every KiB counts (see bench/broadcast_bench.py).
        """
        own = self.__dict__
        for name in internals.HANDSHAKE_ONLY:
            own.pop(name, None)
        self.__dict__ = dict(own)

    def onConnect(self, request: ConnectionRequest) -> str | None:
        """The handshake: `negotiate`, with refusals counted and logged (never half-open)."""
        self._path = request.path
        try:
            return self.negotiate(request)
        except ConnectionDeny as deny:
            self.factory.stats.rejected[_REJECT_REASONS.get(deny.code, REJECT_ERROR)] += 1
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
            self.factory.stats.rejected[REJECT_ERROR] += 1
            _log.failure(
                "conn={conn_id} error while negotiating with peer={peer}",
                conn_id=self.conn_id,
                peer=request.peer,
            )
            raise ConnectionDeny(
                ConnectionDeny.INTERNAL_SERVER_ERROR, "Internal Server Error"
            ) from None

    def negotiate(self, request: ConnectionRequest) -> str | None:
        """Check the origin, pick the subprotocol, count the connection.

        The subprotocol is the first one the client offers that we speak.

        Raises:
            ConnectionDeny: 403 for an origin not allowed, 400 when the client
                offers only subprotocols this endpoint does not speak, 503 over
                the connection limits.
        """
        # Autobahn's request.host has the port stripped; the rule needs it.
        host = request.headers.get("host")
        if self.check_origin and not self.factory.origins.allows(request.origin, host):
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "Origin not allowed")
        chosen = None
        for offered in request.protocols:
            if offered in self.subprotocols:
                chosen = offered
                break
        else:
            if request.protocols or not self.allow_no_subprotocol:
                speaks = ", ".join(self.subprotocols) or "none"
                raise ConnectionDeny(
                    ConnectionDeny.BAD_REQUEST,
                    f"Unknown protocol; this endpoint speaks: {speaks}",
                )
        peer = self.transport.getPeer() if self.transport else None
        # IP connections count per host; a Unix socket's peers all count as one.
        address = str(getattr(peer, "host", None) or "local")
        proxies = self.factory.proxies
        if proxies:
            headers = request.headers
            client = proxies.client(
                address, headers.get("x-forwarded-for"), headers.get("forwarded")
            )
            if client != address:
                self.peer = f"{client} via {self.peer}"
                address = client
        refused = self.factory.limits.acquire(address)
        if refused is not None:
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, refused)
        self._counted_address = address
        return chosen

    def onOpen(self) -> None:
        """Open: count and log it, drop what only the handshake needed, then `opened`."""
        self._opened_at = time.monotonic()
        self.factory.open_connections.add(self)
        self.factory.stats.accepted += 1
        extensions = [e.EXTENSION_NAME for e in self.websocket_extensions_in_use]
        self._slim()
        _log.info(
            "conn={conn_id} open peer={peer} path={path} "
            "subprotocol={subprotocol} extensions={extensions}",
            conn_id=self.conn_id,
            peer=self.peer,
            path=self._path,
            subprotocol=self.websocket_protocol_in_use,
            extensions=extensions,
        )
        try:
            self.opened()
        except Exception:
            _log.failure("conn={conn_id} error while opening", conn_id=self.conn_id)
            self.close_with(CLOSE_INTERNAL_ERROR, "Internal Server Error")

    def close_with(self, code: int, reason: str) -> None:
        """Start the closing handshake with any RFC 6455 code.

        (Autobahn's `sendClose` only takes 1000 and 3000-4999, the codes an
        application may choose; a server also needs 1003, 1008, 1011.)
        """
        if self.state == _OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)

    def opened(self) -> None:
        """Called once the connection is open; subclasses may override."""

    def become_producer(self) -> None:
        """Be the transport's push producer (twisted.web's channel was, until now)."""
        transport: Any = self.transport
        transport.unregisterProducer()
        transport.registerProducer(self, True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Closed: free its place in the connection limits, log it, then `closed`."""
        if self._counted_address is not None:
            self.factory.limits.release(self._counted_address)
            self._counted_address = None
        self.factory.open_connections.discard(self)
        if self._opened_at is None:
            # The opening handshake never completed; it was logged as denied
            # (or Autobahn logged why it failed).
            return
        duration = time.monotonic() - self._opened_at
        self._opened_at = None
        local_code, local_reason = internals.local_close(self)
        _log.info(
            "conn={conn_id} closed peer={peer} code={code} reason={reason!r} "
            "clean={clean} duration={duration:.3f}s",
            conn_id=self.conn_id,
            peer=self.peer,
            code=code if code is not None else local_code,
            reason=reason if reason is not None else local_reason,
            clean=wasClean,
            duration=duration,
        )
        self.closed()

    def closed(self) -> None:
        """Called once when an open connection has closed; subclasses may override."""


# What `_slim` drops reads as None afterwards.
for _name in internals.HANDSHAKE_ONLY:
    setattr(ServerProtocol, _name, None)


def _as_class_attribute(value: Any) -> Any:
    # A plain function on a class would become a method of each instance.
    return staticmethod(value) if isinstance(value, types.FunctionType) else value


class EndpointFactory(WebSocketServerFactory):
    """A WebSocket factory configured from a `Config`.

    Args:
        config: The service's settings.
        protocol: The protocol class of this endpoint.
        max_message_size: Largest message accepted, after decompression.
        limits: The connection limits, shared by every endpoint.
        stats: Where this endpoint's totals are counted (a new `Counters` if None).
        accept_compression: Picks the compression offer to accept, if any.
    """

    _ids: Iterator[int] = itertools.count(1)
    #: Whether every message received is sent straight back (see `Counters`).
    echoes = False

    def __init__(
        self,
        config: Config,
        protocol: type[ServerProtocol],
        max_message_size: int,
        limits: Limits,
        stats: Counters | None = None,
        accept_compression: Callable[
            [Sequence[Any]], PerMessageDeflateOfferAccept | None
        ] = accept_permessage_deflate,
    ) -> None:
        super().__init__(server=SERVER_NAME)
        self.limits = limits
        #: Running totals for /metrics: plain ints, read at scrape time.
        self.stats = stats if stats is not None else Counters()
        #: This endpoint's open connections (closed with 1001 at shutdown).
        self.open_connections: set[ServerProtocol] = set()
        self.origins = OriginPolicy(config.allowed_origins)
        self.proxies = TrustedProxies(config.trusted_proxies)
        self.log_messages = config.log_level == "debug"
        self.setProtocolOptions(
            # Send a close frame (and so what we had queued before it) when
            # failing a connection, instead of dropping the TCP connection:
            # strict RFC 6455 7.1.7 behaviour, and what the testsuite checks.
            failByDrop=False,
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            perMessageCompressionAccept=accept_compression,
            openHandshakeTimeout=config.open_handshake_timeout,
            autoPingInterval=config.auto_ping_interval,
            autoPingTimeout=config.auto_ping_timeout,
            # A plain GET without Upgrade is answered by the web resource,
            # never by Autobahn's status page.
            webStatus=False,
            # Let "Origin: null" through to our own policy (which refuses it on
            # /chat with a 403); Autobahn would answer 400.
            allowNullOrigin=True,
        )
        # The options as class attributes of this endpoint's own protocol
        # class, so that connections need not carry copies (see connectionMade).
        options = {
            name: _as_class_attribute(getattr(self, name))
            for name in internals.protocol_options(protocol)
        }
        self.protocol = type(protocol.__name__, (protocol,), options)  # type: ignore[assignment]

    def next_connection_id(self) -> int:
        """A process-wide unique id for log events of one connection."""
        return next(EndpointFactory._ids)
