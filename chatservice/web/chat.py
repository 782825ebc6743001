"""``/chat``: the WebSocket side of the chat (docs/protocol.md).

`ChatProtocol` is a thin adapter: it parses each frame and hands the command to
the `Hub` (`chatservice.chat.hub`), and is the hub's `Member` for what goes
back: events, and frames the hub prepared once for a whole room, queued per
connection and written by the `Outbox` once per reactor turn or less.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from autobahn.websocket.types import ConnectionRequest
from twisted.internet.interfaces import IPushProducer, IReactorTime
from zope.interface import implementer

from chatservice import internals, logs
from chatservice.chat.gate import Handshake
from chatservice.chat.hub import Hub
from chatservice.chat.messages import (
    JSON,
    TEXT,
    Dialect,
    Event,
    ProtocolError,
    encode_json,
    parse_json,
    parse_text,
    text_lines,
)
from chatservice.chat.session import Session
from chatservice.config import Config
from chatservice.counters import Counters
from chatservice.web.endpoint import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY,
    CLOSE_UNSUPPORTED_DATA,
    EndpointFactory,
    ServerProtocol,
    accept_shared_deflate,
    refuse_compression,
)
from chatservice.web.frames import TextFrame
from chatservice.web.policy import Limits

# Autobahn's protocol classes own `self.log`; ours is module level.  The
# namespace is the one of every endpoint's events (see `logs.logger`).
_log = logs.logger("chatservice.protocol")

_OPEN = internals.STATE_OPEN


JSON_SUBPROTOCOLS = ("chat.v1.json", "beej-chat-protocol")
TEXT_SUBPROTOCOL = "plain-text"


@implementer(IPushProducer)
class ChatProtocol(ServerProtocol):
    """``/chat``: a thin adapter between Autobahn and the `Hub` (a hub `Member`).

    It is also the transport's push producer: Twisted pauses it when more than
    its buffer (64 KiB) waits to be written, and from then on what the hub
    delivers is counted; past ``max_send_buffer`` the connection is closed as a
    slow consumer instead of buffering without bound.

    Everything it sends is a `TextFrame` written straight to the transport:
    the one frame the hub prepared for the whole room, or for a connection
    that negotiated permessage-deflate, that frame's compressed form, also
    made once for the room (never Autobahn's per-connection compressor).
    """

    factory: ChatFactory
    subprotocols = (*JSON_SUBPROTOCOLS, TEXT_SUBPROTOCOL)
    check_origin = True

    dialect: Dialect = TEXT
    session: Session | None = None
    _paused = False
    _unsent = 0
    #: The server window (9-15) of a connection with permessage-deflate; 0 without.
    _deflate_bits = 0
    #: The socket of a plain TCP transport (see flush), else None.
    _socket: socket.socket | None = None
    #: What was delivered since the last flush (see `Outbox`), or None.
    _pending: bytes | bytearray | None = None
    #: The token of the handshake's URL, until the connection is open.
    _token: str | None = None
    #: What the connect proxy is told of the handshake, until the connection is open.
    _handshake: Handshake | None = None

    def negotiate(self, request: ConnectionRequest) -> str | None:
        """Pick the dialect from the subprotocol; keep a ``?token=`` of the URL for the open."""
        chosen = super().negotiate(request)
        self.dialect = JSON if chosen in JSON_SUBPROTOCOLS else TEXT
        # ``?token=`` of the URL (taken off it by the web resource, so that
        # no log shows it): it counts as a chat-auth once open.
        self._token = self.factory.handshake_token
        gate = self.factory.hub.gate
        if gate is not None and gate.identifies:
            headers = request.headers
            self._handshake = Handshake(
                tuple((name, headers[name]) for name in gate.headers if name in headers),
                self._counted_address or "local",
                headers.get("origin"),
                chosen,
            )
        return chosen

    def opened(self) -> None:
        """Become the transport's producer, note the deflate window, and join the hub."""
        self.become_producer()
        # Set only when not the class's default: an idle connection is mostly
        # its attributes (see `ServerProtocol._slim`).
        sock = internals.plain_tcp_socket(self.transport)
        if sock is not None:
            # A plain TCP connection (not TLS, nor a Unix socket) may be sent
            # to directly, see flush().
            self._socket = sock
        bits = internals.shared_deflate_window(self)
        if bits:
            self._deflate_bits = bits
        hub = self.factory.hub
        self.session = hub.connect(self)
        token, self._token = self._token, None
        handshake = self._handshake
        if handshake is not None:
            del self._handshake  # (back to the class's None: an idle connection stays small)
        hub.start(self.session, token, handshake)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Count, rate-limit and parse a frame, and hand the command to the hub."""
        session = self.session
        if session is None:
            return  # closing
        stats = self.factory.stats
        stats.messages_received += 1
        stats.bytes_received += len(payload)
        hub = self.factory.hub
        if isBinary:
            hub.close(self, CLOSE_UNSUPPORTED_DATA, "binary frames are not part of this protocol")
            return
        if not hub.admit(session):
            return
        if self.factory.log_messages:
            _log.debug(
                "conn={conn_id} received {payload!r}",
                conn_id=self.conn_id,
                payload=_loggable(payload),
            )
        try:
            if self.dialect is JSON:
                command = parse_json(payload)
            else:
                command = parse_text(payload.decode("utf-8"))
            hub.handle(session, command)
        except ProtocolError as error:
            self.send_event(error.event())
        except Exception:
            _log.failure("conn={conn_id} error handling a frame", conn_id=self.conn_id)
            hub.close(self, CLOSE_INTERNAL_ERROR, "Internal Server Error")

    def closed(self) -> None:
        """Leave the hub: rooms, name."""
        self.factory.hub.disconnect(self)
        self.session = None

    # The hub's Member interface.

    def send_event(self, event: Event) -> None:
        """The hub's `Member`: one event to this connection, in its dialect."""
        if self.state != _OPEN:
            return
        stats = self.factory.stats
        if self.dialect is JSON:
            payloads = [encode_json(event)]
        else:
            payloads = [line.encode("utf-8") for line in text_lines(event)]
        for data in payloads:
            self.deliver(TextFrame(data))
            stats.messages_sent += 1
            stats.bytes_sent += len(data)

    def deliver(self, frame: TextFrame) -> None:
        """The hub's `Member`: a frame prepared once for many, queued for the next flush."""
        # Counted by the hub, once per broadcast (not here, per member).
        if self.state != _OPEN:
            return
        # The frame as prepared once for everybody, straight to the transport
        # (Autobahn's sendData adds only logging and stats).
        bits = self._deflate_bits
        if bits:
            data = frame.for_window.get(bits) or frame.deflated(bits)
        else:
            data = frame.plain
        pending = self._pending
        if pending is None:
            # Bytes, or a bytearray, never a list: the cyclic garbage collector
            # does not track them; a list per member per message made it run
            # every few seconds, each full run a 20 ms stall with 1000
            # connections.
            self._pending = data
            self.factory.outbox.add(self)
        elif type(pending) is bytes:
            self._pending = bytearray(pending) + data
        else:
            pending += data
        if self._paused:
            self._unsent += len(data)
            if self._unsent > self.factory.max_send_buffer:
                self._slow_consumer()

    def flush(self) -> None:
        """Write what was delivered since the last flush, in one piece (`Outbox`).

        A plain TCP connection with nothing waiting in Twisted's buffer is sent
        to at once: one system call, where Twisted's write would start watching
        the socket for writability, send when the poll says so, and stop
        watching (three calls and a poll event).  What the socket does not take
        goes to Twisted's buffer, and so does everything for a TLS or Unix
        socket connection.
        """
        pending, self._pending = self._pending, None
        if not pending or self.state != _OPEN:
            return  # closing: nothing after the close frame
        data = pending
        transport: Any = self.transport
        sock = self._socket
        # Nothing waits in Twisted's write buffer (`internals.buffered`, its
        # attributes read here directly: this runs for every connection).
        if (
            sock is not None
            and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
        ):
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0  # full (EAGAIN), or an error Twisted's write will report
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(bytes(data))

    def close_with(self, code: int, reason: str) -> None:
        """What was queued goes before the close frame."""
        self.flush()  # what was said before the close goes before it
        super().close_with(code, reason)

    def close(self, code: int, reason: str) -> None:
        """The hub's `Member`: close (the hub has forgotten this connection)."""
        self.session = None
        self.close_with(code, reason)

    # IPushProducer, called by the transport.

    def pauseProducing(self) -> None:
        """The transport's buffer is full: count what is delivered from now on."""
        self._paused = True
        self._unsent = internals.buffered(self.transport)

    def resumeProducing(self) -> None:
        """The transport's buffer drained."""
        self._paused = False
        self._unsent = 0

    def stopProducing(self) -> None:
        """The transport is going away."""
        self._paused = False

    def _slow_consumer(self) -> None:
        self.factory.stats.slow_consumer_drops += 1
        _log.info(
            "conn={conn_id} closed as a slow consumer: over {limit} bytes unsent",
            conn_id=self.conn_id,
            limit=self.factory.max_send_buffer,
        )
        # The close frame will not get through a full buffer: the closing
        # handshake times out (1 s) and the connection is dropped with its buffer.
        self.factory.hub.close(self, CLOSE_POLICY, "slow consumer")


def _loggable(payload: bytes) -> bytes:
    """What a debug log may show of a received chat frame: never a token."""
    if b'"chat-auth"' in payload or payload[:5].lower() == b"/auth":
        return b"(chat-auth: the token is not logged)"
    return payload[:200]


#: A flush that took this long (seconds) makes the next wait: see `Outbox`.
EXPENSIVE_FLUSH = 0.0005


class Outbox:
    """Connections with something to write, written together, once per turn or less.

    A room message reaches every member through `ChatProtocol.deliver`, which
    only queues the member's bytes; the first delivery asks the reactor for a
    `flush` of every connection that has something: one write per connection,
    however many messages it got meanwhile (uWebSockets "corks" its sockets
    per loop iteration the same way).

    When: at the reactor's next turn (``callLater(0)``), so a lone message goes
    out at once; but after a flush that took a while (over `EXPENSIVE_FLUSH`: a
    room of a thousand takes about 2 ms), not before as long again has passed,
    so that flushing takes at most about half the time, and what comes
    meanwhile shares the next flush.  Measured (bench/broadcast_bench.py
    --phase latency): at 444 messages/s into a room of 1000, flushing after
    every message kept the server at a full core and p99 at 32 ms.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._members: list[ChatProtocol] = []
        #: When (time.monotonic) the last flush started, and how long it took.
        self._last = (0.0, 0.0)

    def add(self, member: ChatProtocol) -> None:
        """`member` has something to write: a flush is scheduled if none is."""
        if not self._members:
            started, took = self._last
            wait = 0.0
            if took > EXPENSIVE_FLUSH:
                wait = started + 2 * took - time.monotonic()
            self._clock.callLater(wait if wait > EXPENSIVE_FLUSH else 0, self.flush)
        self._members.append(member)

    def flush(self) -> None:
        """Write every connection that has something, once."""
        started = time.monotonic()
        members, self._members = self._members, []
        for member in members:
            member.flush()
        self._last = (started, time.monotonic() - started)


class ChatFactory(EndpointFactory):
    """The factory behind ``/chat``: holds the hub its connections talk to."""

    def __init__(
        self, config: Config, hub: Hub, limits: Limits, stats: Counters, clock: IReactorTime
    ) -> None:
        # `stats`: one set of totals with the hub, which counts broadcasts and rate limits.
        super().__init__(
            config,
            ChatProtocol,
            config.chat_max_message_size,
            limits,
            stats=stats,
            accept_compression=(
                accept_shared_deflate if config.chat_compression else refuse_compression
            ),
        )
        self.hub = hub
        self.outbox = Outbox(clock)
        #: The ``?token=`` of the handshake being handled (see web.WebSocketEndpoint).
        self.handshake_token: str | None = None
        self.max_send_buffer = config.max_send_buffer
