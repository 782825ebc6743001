"""permessage-deflate on /chat: negotiated without server context takeover, each
message compressed once for every member that negotiated it, and decoded
byte-exact by every kind of client (in memory through the real Site, and end to
end with the `websockets` client)."""

from __future__ import annotations

import json
import socket
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pytest
import pytest_twisted
from memory import (
    RawClient,
    client_frame,
    connect_protocol,
    make_test_site,
    server_frames,
    upgrade_request,
    websocket_client,
)
from net import port_of
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.test.iosim import IOPump
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from chatservice.config import Config
from chatservice.service import ChatService
from chatservice.web.frames import DEFLATE_MIN_SIZE

RSV1 = 0x40
SYNC_TAIL = b"\x00\x00\xff\xff"

#: Chat text as people write it, long enough to be compressed.
PROSE = (
    "Thanks everyone for joining the call today. As discussed, the release goes out on "
    "Thursday once the last two reviews are in; ping me if you are blocked on anything. "
)


def prose(n: int) -> str:
    return (PROSE * (n // len(PROSE) + 1))[:n]


#: Texts of every size: under the threshold, over it, non-ASCII, the longest allowed.
TEXTS = [
    "hi",
    prose(100),
    prose(400),
    "héllo wörld ✓ 日本語のテキスト 🎉 " * 20,
    prose(1999) + "!",
    "same again " * 100,
    "same again " * 100,
    "short one",
]


# Negotiation, in memory.


def offer_extensions(offer: str | None) -> bytes:
    extra = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
    return upgrade_request("/chat", ["chat.v1.json"], extra=extra)


class Negotiated:
    """A hand-made /chat client: the handshake response, then frames, decoded by hand."""

    def __init__(self, site: Any, clock: Clock, offer: str | None) -> None:
        self.client = RawClient(offer_extensions(offer))
        self.pump = connect_protocol(site, self.client, clock)
        head, _, self.rest = self.client.received.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101"), lines[0]
        headers = dict(line.split(": ", 1) for line in lines[1:])
        self.extensions = headers.get("Sec-WebSocket-Extensions")
        self.read = len(self.client.received)

    def params(self) -> dict[str, str | bool]:
        """The parameters of the accepted permessage-deflate (empty: none)."""
        if self.extensions is None:
            return {}
        name, *params = [p.strip() for p in self.extensions.split(";")]
        assert name == "permessage-deflate"
        return {
            key.strip(): (value.strip() if value else True)
            for key, _, value in (p.partition("=") for p in params)
        }

    def send(self, kind: str, **payload: Any) -> list[tuple[int, bytes]]:
        """Send one event; return the frames the server sent back (first byte, payload)."""
        self.client.transport.write(
            client_frame(json.dumps({"type": kind, "payload": payload}).encode())
        )
        self.pump.flush()
        data = self.rest + self.client.received[self.read :]
        self.read = len(self.client.received)
        frames, self.rest = server_frames(data)
        return frames


def window_of(params: dict[str, str | bool]) -> int:
    bits = params.get("server_max_window_bits", "15")
    assert isinstance(bits, str)
    return int(bits)


#: Offers as browsers and libraries send them, and the server window each leaves us.
OFFERS = {
    "chromium": ("permessage-deflate; client_max_window_bits", 15),
    "firefox": ("permessage-deflate", 15),
    "client_max_window_bits, client_no_context_takeover": (
        "permessage-deflate; client_max_window_bits; client_no_context_takeover",
        15,
    ),
    "client_no_context_takeover": ("permessage-deflate; client_no_context_takeover", 15),
    "asks for no server context itself": ("permessage-deflate; server_no_context_takeover", 15),
    "a 10-bit server window": ("permessage-deflate; server_max_window_bits=10", 10),
    "a 9-bit server window, and an offer we skip first": (
        "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=9",
        9,
    ),
}


@pytest.mark.parametrize("offer", OFFERS.values(), ids=list(OFFERS))
def test_every_offer_is_accepted_without_server_context_and_decodes(
    clock: Clock, offer: tuple[str, int]
) -> None:
    header, window = offer
    site = make_test_site(Config(), clock)
    client = Negotiated(site, clock, header)
    params = client.params()
    assert params.get("server_no_context_takeover") is True
    assert window_of(params) == window
    client.send("chat-join", username="alice")

    # Two decoders: one fresh per message (what no context takeover lets a
    # client do) and one kept for the whole connection (a client that
    # ignores the parameter): both must get every message byte-exact.
    kept = zlib.decompressobj(-window)
    for text in TEXTS:
        frames = client.send("chat-message", message=text)
        [(first, payload)] = frames
        assert first & 0x80 and first & 0x0F == 0x1  # final text frame
        if first & RSV1:
            fresh = zlib.decompressobj(-window).decompress(payload + SYNC_TAIL)
            assert kept.decompress(payload + SYNC_TAIL) == fresh
            payload = fresh
        event = json.loads(payload)
        assert event["type"] == "chat-message"
        assert event["payload"]["message"] == text.strip()
        # Short events go plain; long ones compressed.
        assert bool(first & RSV1) == (len(payload) >= DEFLATE_MIN_SIZE)


@pytest.mark.parametrize(
    ("config", "offer"),
    [(Config(), None), (Config(chat_compression=False), OFFERS["chromium"][0])],
    ids=["no offer", "--chat-compression off"],
)
def test_without_deflate_nothing_is_compressed(clock: Clock, config: Config, offer: str) -> None:
    client = Negotiated(make_test_site(config, clock), clock, offer)
    assert client.extensions is None
    client.send("chat-join", username="alice")
    [(first, payload)] = client.send("chat-message", message=prose(1500))
    assert first == 0x81
    assert json.loads(payload)["payload"]["message"] == prose(1500)


def test_echo_still_accepts_offers_as_they_are(clock: Clock) -> None:
    # /echo is what the Autobahn testsuite judges: context takeover stays.
    site = make_test_site(Config(), clock)
    client = RawClient(
        upgrade_request(
            "/echo",
            extra="Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        )
    )
    connect_protocol(site, client, clock)
    assert b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n" in client.received


def test_join_history_is_compressed_to_a_fraction(clock: Clock) -> None:
    site = make_test_site(Config(), clock)
    writer, w_pump = chat_json_client(site, clock)
    send_json(writer, w_pump, "chat-join", username="writer")
    for n in range(50):
        clock.advance(1)  # stay under the rate limit
        send_json(writer, w_pump, "chat-message", message=f"{n}: " + prose(40 + n * 3))

    sizes = {}
    for name, offer in (("plain", None), ("deflate", OFFERS["chromium"][0])):
        client = Negotiated(site, clock, offer)
        frames = client.send("chat-join", username=f"reader-{name}")
        # welcome, history, users, join
        first, payload = frames[1]
        if first & RSV1:
            sizes[name] = len(payload)
            payload = zlib.decompressobj(-15).decompress(payload + SYNC_TAIL)
        else:
            sizes[name] = len(payload)
        history = json.loads(payload)
        assert history["type"] == "chat-history"
        assert len(history["payload"]["messages"]) == 50
    assert sizes["deflate"] < sizes["plain"] / 2


# A client compressing with context takeover, many messages in a row, in memory.


def chat_json_client(site: Any, clock: Clock, deflate: bool = False) -> tuple[Any, IOPump]:
    client = websocket_client("/chat", protocols=["chat.v1.json"], deflate=deflate)
    return client, connect_protocol(site, client, clock)


def send_json(client: Any, pump: IOPump, kind: str, **payload: Any) -> None:
    client.sendMessage(json.dumps({"type": kind, "payload": payload}).encode())
    pump.flush()


def test_compressing_clients_with_context_takeover_send_and_receive_many_in_a_row(
    clock: Clock,
) -> None:
    site = make_test_site(Config(rate=1000, burst=1000), clock)
    alice, a_pump = chat_json_client(site, clock, deflate=True)
    bob, b_pump = chat_json_client(site, clock, deflate=False)
    assert alice.events.extensions == ["permessage-deflate"]
    # Autobahn's client keeps its context: what it sends refers back to
    # earlier messages, which the server must remember to decode.
    assert alice._perMessageCompress.client_no_context_takeover is False
    assert alice._perMessageCompress.server_no_context_takeover is True
    send_json(alice, a_pump, "chat-join", username="alice")
    send_json(bob, b_pump, "chat-join", username="bob")
    # (Texts end in a letter: the server strips white space.)
    sent = [f"{n % 3}: " + prose(300 + 97 * (n % 5)).strip() for n in range(60)]
    for text in sent:
        send_json(alice, a_pump, "chat-message", message=text)
    b_pump.flush()
    a_pump.flush()

    def said(client: Any) -> list[str]:
        return [
            event["payload"]["message"]
            for event in (json.loads(m) for m, _ in client.events.messages)
            if event["type"] == "chat-message"
        ]

    assert said(alice) == sent
    assert said(bob) == sent


# End to end: real sockets and the `websockets` client.

Serve = Callable[..., ChatService]


def ws(port: int, subprotocol: str = "chat.v1.json", **options: Any) -> ClientConnection:
    return connect(
        f"ws://127.0.0.1:{port}/chat",
        subprotocols=[Subprotocol(subprotocol)],
        open_timeout=10,
        max_size=None,
        max_queue=None,
        **options,
    )


def events_until(conn: ClientConnection, kind: str, count: int) -> list[str]:
    """The raw text of the next `count` events of `kind` (others skipped)."""
    got: list[str] = []
    while len(got) < count:
        raw = conn.recv(timeout=10)
        assert isinstance(raw, str)
        if json.loads(raw)["type"] == kind:
            got.append(raw)
    return got


#: The clients of the mixed room: how each one connects.
MIXED = {
    "deflate (websockets' default offer)": {},
    "no compression": {"compression": None},
    "a 10-bit server window": {
        "compression": None,
        "extensions": [ClientPerMessageDeflateFactory(server_max_window_bits=10)],
    },
    "client_no_context_takeover": {
        "compression": None,
        "extensions": [ClientPerMessageDeflateFactory(client_no_context_takeover=True)],
    },
    "asks for no server context itself": {
        "compression": None,
        "extensions": [ClientPerMessageDeflateFactory(server_no_context_takeover=True)],
    },
}


@pytest_twisted.ensureDeferred
async def test_a_mixed_room_decodes_every_message_byte_exact(serve: Serve) -> None:
    port = port_of(serve(database=":memory:", rate=1000.0, burst=1000))
    rounds = 3  # every text, three times in a row

    def scenario() -> tuple[dict[str, list[str]], dict[str, str | None], list[str]]:
        received: dict[str, list[str]] = {}
        extensions: dict[str, str | None] = {}
        with ExitStack() as stack:
            members = {
                name: stack.enter_context(ws(port, **options)) for name, options in MIXED.items()
            }
            term = stack.enter_context(ws(port, subprotocol="plain-text"))
            for n, (name, conn) in enumerate(members.items()):
                extensions[name] = conn.response.headers.get("Sec-WebSocket-Extensions")
                conn.send(json.dumps({"type": "chat-join", "payload": {"username": f"u{n}"}}))
                events_until(conn, "chat-users", 1)
            sender = next(iter(members.values()))
            for _ in range(rounds):
                for text in TEXTS:
                    sender.send(json.dumps({"type": "chat-message", "payload": {"message": text}}))
            for name, conn in members.items():
                received[name] = events_until(conn, "chat-message", rounds * len(TEXTS))
            lines = []
            while len(lines) < rounds * len(TEXTS):
                line = term.recv(timeout=10)
                assert isinstance(line, str)
                if line.startswith("[lobby] u0: "):
                    lines.append(line)
        return received, extensions, lines

    received, extensions, lines = await deferToThread(scenario)
    expected = [text.strip() for text in TEXTS] * rounds
    plain = received["no compression"]
    assert [json.loads(raw)["payload"]["message"] for raw in plain] == expected
    for name, raw in received.items():
        assert raw == plain, name  # the same bytes, however they travelled
    assert extensions["no compression"] is None
    for name in MIXED:
        if name != "no compression":
            assert "server_no_context_takeover" in (extensions[name] or ""), name
    assert extensions["a 10-bit server window"] is not None
    assert "server_max_window_bits=10" in extensions["a 10-bit server window"]
    assert lines == [f"[lobby] u0: {text}" for text in expected]


def raw_join(port: int, offer: str | None, username: str) -> tuple[int, int, dict[str, Any]]:
    """Join over a hand-made socket; the chat-history frame's RSV1 bit, wire size and event."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(offer_extensions(offer))
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        data = data.partition(b"\r\n\r\n")[2]
        join = {"type": "chat-join", "payload": {"username": username}}
        sock.sendall(client_frame(json.dumps(join).encode()))
        while True:
            frames, _ = server_frames(data)
            if len(frames) >= 2:
                break
            data += sock.recv(65536)
    first, payload = frames[1]
    size = len(payload)
    if first & RSV1:
        payload = zlib.decompressobj(-15).decompress(payload + SYNC_TAIL)
    return first & RSV1, size, json.loads(payload)


@pytest_twisted.ensureDeferred
async def test_join_history_over_the_wire_is_compressed_for_browsers(serve: Serve) -> None:
    port = port_of(serve(database=":memory:", rate=1000.0, burst=1000))

    def scenario() -> list[tuple[int, int, dict[str, Any]]]:
        with ws(port, compression=None) as writer:
            writer.send(json.dumps({"type": "chat-join", "payload": {"username": "writer"}}))
            for n in range(60):
                text = f"{n}: " + prose(30 + 5 * n)
                writer.send(json.dumps({"type": "chat-message", "payload": {"message": text}}))
            events_until(writer, "chat-message", 60)
        return [
            raw_join(port, None, "plain"),
            raw_join(port, OFFERS["chromium"][0], "browser"),
        ]

    (plain_bit, plain_size, plain), (deflate_bit, deflate_size, deflated) = await deferToThread(
        scenario
    )
    assert (plain_bit, deflate_bit) == (0, RSV1)
    assert deflated == plain
    assert len(plain["payload"]["messages"]) == 50
    assert deflate_size < plain_size / 2
