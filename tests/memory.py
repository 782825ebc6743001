"""In-memory connections to the service's Site: no sockets, no reactor.

`twisted.test.iosim` moves bytes between a server protocol built by the real
Site and a client protocol; Autobahn's timers run on a `Clock` that the test
advances (see the `clock` fixture).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.web.server import Site

from chatservice.backplane.history import History, immediate_executor
from chatservice.backplane.local import LocalBackplane
from chatservice.chat.identity import AuthPolicy
from chatservice.config import Config
from chatservice.counters import Counters
from chatservice.service import make_hub
from chatservice.web.site import make_site


def make_test_site(config: Config, clock: Clock) -> Site:
    """The real Site, with a real (in-memory SQLite) history run synchronously."""
    history = History(":memory:", config.history, immediate_executor)
    history.open()
    backplane = LocalBackplane(history)
    auth, stats = AuthPolicy.from_config(config), Counters()
    hub = make_hub(config, backplane, clock, auth, stats)
    return make_site(config, hub, backplane, auth, stats, reactor=clock)


SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 8080)
CLIENT_ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


def connect_protocol(site: Site, client: Protocol, clock: Clock) -> IOPump:
    """Connect `client` to a fresh server protocol of `site` and flush."""
    server = site.buildProtocol(CLIENT_ADDRESS)
    return connect(
        server,
        FakeTransport(
            server, isServer=True, hostAddress=SERVER_ADDRESS, peerAddress=CLIENT_ADDRESS
        ),
        client,
        FakeTransport(
            client, isServer=False, hostAddress=CLIENT_ADDRESS, peerAddress=SERVER_ADDRESS
        ),
        clock=clock,
    )


class RawClient(Protocol):
    """Writes bytes as given and keeps every byte received."""

    def __init__(self, request: bytes = b"") -> None:
        self.request = request
        self.received = b""
        self.disconnected = False

    def connectionMade(self) -> None:
        if self.request:
            self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.disconnected = True

    @property
    def status(self) -> int:
        """The HTTP status code of the response."""
        return int(self.received.split(b" ", 2)[1])


def upgrade_request(
    path: str = "/echo", protocols: list[str] | None = None, extra: str = ""
) -> bytes:
    """A WebSocket opening handshake, as a browser sends it."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1:8080",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def client_frame(payload: bytes, opcode: int = 0x1, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """One final, masked client frame, its length in the shortest form (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split unmasked (server) frames: ``(first byte, payload)`` each, and what is left."""
    frames = []
    while len(data) >= 2:
        n = data[1] & 0x7F
        at = {126: 4, 127: 10}.get(n, 2)
        if at > 2 and len(data) >= at:
            n = int.from_bytes(data[2:at], "big")
        if len(data) < at + n:
            break
        frames.append((data[0], data[at : at + n]))
        data = data[at + n :]
    return frames, data


@dataclass
class Events:
    """What a `RecordingClient` saw."""

    opened: bool = False
    subprotocol: str | None = None
    extensions: list[str] = field(default_factory=list)
    messages: list[tuple[bytes, bool]] = field(default_factory=list)
    closed: bool = False
    close_code: int | None = None
    close_reason: str | None = None
    pings: int = 0


class RecordingClient(WebSocketClientProtocol):
    """An Autobahn client that records what happens to it."""

    answer_pings = True

    def __init__(self) -> None:
        super().__init__()
        self.events = Events()

    def onOpen(self) -> None:
        self.events.opened = True
        self.events.subprotocol = self.websocket_protocol_in_use
        self.events.extensions = [e.EXTENSION_NAME for e in self.websocket_extensions_in_use]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.events.messages.append((payload, isBinary))

    def onPing(self, payload: bytes) -> None:
        self.events.pings += 1
        if self.answer_pings:
            super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.events.closed = True
        self.events.close_code = code
        self.events.close_reason = reason


def _accept_deflate_response(response: Any) -> Any:
    if isinstance(response, PerMessageDeflateResponse):
        return PerMessageDeflateResponseAccept(response)
    return None


def websocket_client(
    path: str = "/echo",
    protocols: list[str] | None = None,
    deflate: bool = False,
    answer_pings: bool = True,
) -> RecordingClient:
    """An Autobahn client protocol for an in-memory connection."""
    factory = WebSocketClientFactory(f"ws://127.0.0.1:8080{path}", protocols=protocols or [])
    factory.protocol = type("Client", (RecordingClient,), {"answer_pings": answer_pings})
    options: dict[str, Any] = {
        # The client's own timers stay off: the server's are under test.
        "openHandshakeTimeout": 0,
        "closeHandshakeTimeout": 0,
        "maxMessagePayloadSize": 0,
        "maxFramePayloadSize": 0,
    }
    if deflate:
        options["perMessageCompressionOffers"] = [PerMessageDeflateOffer()]
        options["perMessageCompressionAccept"] = _accept_deflate_response
    factory.setProtocolOptions(**options)
    client = factory.buildProtocol(SERVER_ADDRESS)
    assert isinstance(client, RecordingClient)
    return client
