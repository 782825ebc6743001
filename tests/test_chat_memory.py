"""/chat's handshake rules and frame handling, in memory through the real Site."""

from __future__ import annotations

import json
from typing import Any

import pytest
from memory import (
    RawClient,
    RecordingClient,
    connect_protocol,
    make_test_site,
    upgrade_request,
    websocket_client,
)
from twisted.internet.task import Clock
from twisted.test.iosim import IOPump
from twisted.web.server import Site

from chatservice.config import Config


@pytest.fixture
def site(clock: Clock) -> Site:
    return make_test_site(
        Config(
            allowed_origins=("https://*.example.com",),
            chat_max_message_size=4096,
            max_connections=4,
            max_connections_per_address=3,
        ),
        clock,
    )


def events(client: RecordingClient) -> list[tuple[str, Any]]:
    out = []
    for payload, binary in client.events.messages:
        assert not binary
        data = json.loads(payload)
        out.append((data["type"], data["payload"]))
    return out


def chat_client(site: Site, clock: Clock, **options: Any) -> tuple[RecordingClient, IOPump]:
    client = websocket_client("/chat", protocols=["chat.v1.json"], **options)
    return client, connect_protocol(site, client, clock)


def send(client: RecordingClient, pump: IOPump, kind: str, payload: dict[str, Any]) -> None:
    client.sendMessage(json.dumps({"type": kind, "payload": payload}).encode())
    pump.flush()


@pytest.mark.parametrize(
    ("offered", "selected"),
    [
        (["chat.v1.json"], "chat.v1.json"),
        (["beej-chat-protocol"], "beej-chat-protocol"),
        (["x-unknown", "plain-text", "chat.v1.json"], "plain-text"),
        ([], None),
    ],
)
def test_subprotocol_selects_the_dialect(
    site: Site, clock: Clock, offered: list[str], selected: str | None
) -> None:
    client = websocket_client("/chat", protocols=offered)
    connect_protocol(site, client, clock)
    assert client.events.subprotocol == selected
    first, _ = client.events.messages[0]
    if selected in ("chat.v1.json", "beej-chat-protocol"):
        assert json.loads(first)["type"] == "chat-welcome"
    else:
        assert first.startswith(b"* Welcome to chatservice")


def test_only_unknown_subprotocols_get_400(site: Site, clock: Clock) -> None:
    client = RawClient(upgrade_request("/chat", protocols=["chat.v2"]))
    connect_protocol(site, client, clock)
    assert client.status == 400
    assert b"Unknown protocol" in client.received


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        (None, 101),
        ("http://127.0.0.1:8080", 101),  # the Host header's host and port
        ("https://app.example.com", 101),  # --allowed-origin https://*.example.com
        ("https://evil.example", 403),
        ("http://127.0.0.1:9999", 403),
        ("null", 403),
    ],
)
def test_origin_rules(site: Site, clock: Clock, origin: str | None, status: int) -> None:
    extra = f"Origin: {origin}\r\n" if origin else ""
    client = RawClient(upgrade_request("/chat", protocols=["chat.v1.json"], extra=extra))
    connect_protocol(site, client, clock)
    assert client.status == status


def test_echo_does_not_check_origins(site: Site, clock: Clock) -> None:
    client = RawClient(upgrade_request("/echo", extra="Origin: https://evil.example\r\n"))
    connect_protocol(site, client, clock)
    assert client.status == 101


def test_connection_limits_answer_503_and_free_up_on_close(site: Site, clock: Clock) -> None:
    clients = [chat_client(site, clock) for _ in range(3)]
    assert all(c.events.opened for c, _ in clients)
    refused = RawClient(upgrade_request("/chat"))
    connect_protocol(site, refused, clock)
    assert refused.status == 503
    assert b"too many connections from 127.0.0.1" in refused.received

    first, pump = clients[0]
    first.sendClose(1000)
    pump.flush()
    again, _ = chat_client(site, clock)
    assert again.events.opened


def test_binary_frame_on_json_closes_1003(site: Site, clock: Clock) -> None:
    client, pump = chat_client(site, clock)
    client.sendMessage(b"\x00\x01", isBinary=True)
    pump.flush()
    assert client.events.close_code == 1003


def test_frame_over_the_limit_closes_1009(site: Site, clock: Clock) -> None:
    client, pump = chat_client(site, clock)
    send(client, pump, "chat-join", {"username": "alice"})
    send(client, pump, "chat-message", {"message": "x" * 5000})
    assert client.events.close_code == 1009


def test_compressed_frame_inflating_past_the_limit_closes_1009(site: Site, clock: Clock) -> None:
    client, pump = chat_client(site, clock, deflate=True)
    assert client.events.extensions == ["permessage-deflate"]
    send(client, pump, "chat-join", {"username": "alice"})
    before = len(client.events.messages)
    # About 100 bytes on the wire, 64 KiB once inflated.
    send(client, pump, "chat-message", {"message": " " * 65536 + "x"})
    assert client.remoteCloseCode == 1009
    assert len(client.events.messages) == before


def test_bad_input_gets_errors_and_the_connection_stays_open(site: Site, clock: Clock) -> None:
    client, pump = chat_client(site, clock)
    client.sendMessage(b"{nope")
    pump.flush()
    send(client, pump, "chat-message", {"message": "before joining"})
    send(client, pump, "chat-join", {"username": "alice"})
    send(client, pump, "chat-message", {"message": "x" * 2001})
    errors = [p for kind, p in events(client) if kind == "chat-error"]
    assert [e["code"] for e in errors] == ["bad-json", "not-joined", "too-long"]
    assert errors[1]["type"] == "chat-message"
    assert not client.events.closed


def test_json_and_text_clients_in_one_room(site: Site, clock: Clock) -> None:
    alice, a_pump = chat_client(site, clock)
    send(alice, a_pump, "chat-join", {"username": "alice"})
    term = websocket_client("/chat", protocols=["plain-text"])
    t_pump = connect_protocol(site, term, clock)
    term.sendMessage(b"/nick tom")
    t_pump.flush()
    term.sendMessage(b"hi from the terminal")
    t_pump.flush()
    a_pump.flush()
    send(alice, a_pump, "chat-message", {"message": "hi tom"})
    t_pump.flush()

    lines = [payload.decode() for payload, _ in term.events.messages]
    assert "* guest-2 is now known as tom" in lines or any(
        "is now known as tom" in x for x in lines
    )
    assert lines[-2:] == ["[lobby] tom: hi from the terminal", "[lobby] alice: hi tom"]
    said = [p for kind, p in events(alice) if kind == "chat-message"]
    assert [(m["username"], m["message"]) for m in said] == [
        ("tom", "hi from the terminal"),
        ("alice", "hi tom"),
    ]
