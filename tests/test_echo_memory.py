"""/echo's protocol behaviour, driven in memory through the real Site."""

from __future__ import annotations

import pytest
from memory import (
    RawClient,
    client_frame,
    connect_protocol,
    make_test_site,
    server_frames,
    upgrade_request,
    websocket_client,
)
from twisted.internet.task import Clock
from twisted.web.server import Site

from chatservice.config import Config

LIMIT = 1024


@pytest.fixture
def site(clock: Clock) -> Site:
    return make_test_site(Config(echo_max_message_size=LIMIT), clock)


def test_plain_text_is_selected_and_text_echoes_as_text(site: Site, clock: Clock) -> None:
    client = websocket_client(protocols=["plain-text"])
    pump = connect_protocol(site, client, clock)
    assert client.events.opened
    assert client.events.subprotocol == "plain-text"

    client.sendMessage("hello ☃".encode(), isBinary=False)
    pump.flush()
    assert client.events.messages == [("hello ☃".encode(), False)]


def test_first_offered_subprotocol_we_speak_wins(site: Site, clock: Clock) -> None:
    client = websocket_client(protocols=["chat.v9", "plain-text"])
    connect_protocol(site, client, clock)
    assert client.events.subprotocol == "plain-text"


def test_no_subprotocol_works_and_binary_echoes_as_binary(site: Site, clock: Clock) -> None:
    client = websocket_client()
    pump = connect_protocol(site, client, clock)
    assert client.events.opened and client.events.subprotocol is None

    payload = bytes(range(256))
    client.sendMessage(payload, isBinary=True)
    pump.flush()
    assert client.events.messages == [(payload, True)]


def test_frame_sent_right_behind_the_handshake_is_not_lost(site: Site, clock: Clock) -> None:
    client = RawClient(upgrade_request() + client_frame(b"early bird"))
    connect_protocol(site, client, clock)
    assert client.status == 101
    assert client.received.endswith(b"\x81\x0aearly bird")


def test_only_unknown_subprotocols_get_http_400(site: Site, clock: Clock) -> None:
    client = RawClient(upgrade_request(protocols=["foo", "bar"]))
    connect_protocol(site, client, clock)
    assert client.status == 400
    assert b"Unknown protocol" in client.received
    assert client.disconnected


def test_message_at_the_limit_echoes_one_byte_over_closes_1009(site: Site, clock: Clock) -> None:
    client = websocket_client()
    pump = connect_protocol(site, client, clock)
    client.sendMessage(b"x" * LIMIT, isBinary=True)
    pump.flush()
    assert client.events.messages == [(b"x" * LIMIT, True)]

    client.sendMessage(b"x" * (LIMIT + 1), isBinary=True)
    pump.flush()
    assert client.events.close_code == 1009
    assert len(client.events.messages) == 1


def test_fragmented_message_over_the_limit_closes_1009(site: Site, clock: Clock) -> None:
    client = websocket_client()
    pump = connect_protocol(site, client, clock)
    client.beginMessage(isBinary=False)
    for _ in range(3):
        client.sendMessageFrame(b"y" * (LIMIT // 2))
    client.endMessage()
    pump.flush()
    assert client.events.close_code == 1009
    assert client.events.messages == []


def test_permessage_deflate_is_accepted_and_round_trips(site: Site, clock: Clock) -> None:
    client = websocket_client(deflate=True)
    pump = connect_protocol(site, client, clock)
    assert client.events.extensions == ["permessage-deflate"]

    client.sendMessage(b"compress me " * 50, isBinary=False)
    pump.flush()
    assert client.events.messages == [(b"compress me " * 50, False)]


def test_limit_applies_to_the_decompressed_size(site: Site, clock: Clock) -> None:
    # 64 KiB of zeros compresses to well under the 1 KiB limit.
    client = websocket_client(deflate=True)
    pump = connect_protocol(site, client, clock)
    client.sendMessage(b"\0" * 65536, isBinary=True)
    pump.flush()
    assert client.remoteCloseCode == 1009
    assert client.events.messages == []
    # Autobahn stops parsing after failing mid-frame, so it does not see our
    # close reply; the close handshake timeout (1 s from the last bytes
    # received, our reply here) ends the connection.
    clock.advance(1.5)
    pump.flush()
    assert not client.events.closed
    clock.advance(1.0)
    pump.flush()
    assert client.events.closed


def test_invalid_utf8_text_closes_1007(site: Site, clock: Clock) -> None:
    client = websocket_client()
    pump = connect_protocol(site, client, clock)
    client.sendMessage(b"\xff\xfe", isBinary=False)
    pump.flush()
    assert client.events.close_code == 1007
    assert client.events.messages == []


def test_unfinished_handshake_is_dropped_after_ten_seconds(site: Site, clock: Clock) -> None:
    # Headers never finished: no blank line.
    client = RawClient(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
    pump = connect_protocol(site, client, clock)
    assert not client.disconnected
    clock.advance(9)
    pump.flush()
    assert not client.disconnected
    clock.advance(2)
    pump.flush()
    assert client.disconnected


def test_idle_connection_is_pinged_and_kept_while_it_answers(site: Site, clock: Clock) -> None:
    client = websocket_client()
    pump = connect_protocol(site, client, clock)
    for _ in range(4):
        clock.advance(31)
        pump.flush()
    assert client.events.pings >= 3
    assert not client.events.closed


def test_peer_that_stops_answering_pings_is_closed(site: Site, clock: Clock) -> None:
    client = websocket_client(answer_pings=False)
    pump = connect_protocol(site, client, clock)
    clock.advance(31)
    pump.flush()
    assert client.events.pings == 1
    assert not client.events.closed
    for _ in range(3):
        clock.advance(31)
        pump.flush()
    assert client.events.closed


def test_many_frames_in_one_read_all_come_back_in_order(site: Site, clock: Clock) -> None:
    # One write of ~60 KiB: frames of every size cross the pieces the server
    # hands Autobahn at a time, with masks starting anywhere; a fragmented
    # message last.
    messages = [bytes([65 + n % 26]) * (n * 7 % 900) for n in range(120)]
    data = b"".join(
        client_frame(m, mask=bytes([n, n + 1, n + 2, n + 3])) for n, m in enumerate(messages)
    )
    first, second = client_frame(b"first half "), client_frame(b"second half")
    data += bytes([0x01]) + first[1:] + bytes([0x80]) + second[1:]  # text, continuation
    client = RawClient(upgrade_request() + data)
    connect_protocol(site, client, clock)
    assert client.status == 101
    frames, rest = server_frames(client.received.partition(b"\r\n\r\n")[2])
    assert rest == b""
    assert frames == [(0x81, m) for m in [*messages, b"first half second half"]]
