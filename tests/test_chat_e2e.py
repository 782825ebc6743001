"""/chat end to end: real sockets on 127.0.0.1, the `websockets` client, real twistd."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest_twisted
from memory import client_frame, server_frames
from net import port_of, raw_websocket, start_twistd
from twisted.internet.threads import deferToThread
from websockets.sync.client import ClientConnection, connect

from chatservice.service import ChatService

Serve = Callable[..., ChatService]


def chat(port: int, subprotocol: str | None = "chat.v1.json") -> ClientConnection:
    return connect(
        f"ws://127.0.0.1:{port}/chat",
        subprotocols=[subprotocol] if subprotocol else None,
        open_timeout=10,
        max_size=None,
        # Read everything the server sends, even while the test is busy
        # sending: these clients must never look slow.
        max_queue=None,
    )


def send(ws: ClientConnection, kind: str, **payload: Any) -> None:
    ws.send(json.dumps({"type": kind, "payload": payload}))


def until(ws: ClientConnection, kind: str, timeout: float = 10) -> dict[str, Any]:
    """Read events until one of `kind` arrives; return its payload."""
    deadline = time.monotonic() + timeout
    while True:
        event = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if event["type"] == kind:
            payload: dict[str, Any] = event["payload"]
            return payload


def join(ws: ClientConnection, username: str, room: str = "lobby", **extra: Any) -> dict[str, Any]:
    """Join and return the chat-history payload."""
    send(ws, "chat-join", username=username, room=room, **extra)
    history = until(ws, "chat-history")
    until(ws, "chat-join")
    return history


@pytest_twisted.ensureDeferred
async def test_json_and_text_clients_chat_over_real_sockets(serve: Serve) -> None:
    port = port_of(serve(database=":memory:"))

    def scenario() -> tuple[list[str], list[tuple[str, str]]]:
        with chat(port) as alice, chat(port, subprotocol=None) as term:
            join(alice, "alice")
            term.send("/nick tom")
            until(alice, "chat-nick")
            term.send("hello from a terminal")
            send(alice, "chat-message", message="hello tom", username="mallory")
            said = [until(alice, "chat-message") for _ in range(2)]
            lines = [term.recv(timeout=10) for _ in range(8)]
            return lines, [(m["username"], m["message"]) for m in said]

    lines, said = await deferToThread(scenario)
    assert said == [("tom", "hello from a terminal"), ("alice", "hello tom")]
    assert lines[0].startswith("* Welcome to chatservice")
    assert "* tom" not in lines[0]
    assert "[lobby] tom: hello from a terminal" in lines
    assert "[lobby] alice: hello tom" in lines


@pytest_twisted.ensureDeferred
async def test_reconnect_with_since_misses_nothing_and_repeats_nothing(serve: Serve) -> None:
    port = port_of(serve(database=":memory:"))

    def scenario() -> tuple[dict[str, Any], list[str]]:
        with chat(port) as alice:
            join(alice, "alice")
            with chat(port) as bob:
                join(bob, "bob")
                send(alice, "chat-message", message="before")
                last_seen = until(bob, "chat-message")["id"]
            for text in ("while", "you", "were away"):
                send(alice, "chat-message", message=text)
                until(alice, "chat-message")
            with chat(port) as bob:
                history = join(bob, "bob", since=last_seen)
                send(alice, "chat-message", message="after")
                live = [until(bob, "chat-message")["message"]]
            return history, live

    history, live = await deferToThread(scenario)
    assert history["recovered"] is True
    assert [m["message"] for m in history["messages"]] == ["while", "you", "were away"]
    assert live == ["after"]


@pytest_twisted.ensureDeferred
async def test_rate_limit_drops_the_excess_with_an_error(serve: Serve) -> None:
    port = port_of(serve(database=":memory:"))

    def scenario() -> tuple[int, int]:
        with chat(port) as alice:
            join(alice, "alice")
            for i in range(45):
                send(alice, "chat-message", message=f"m{i}")
            delivered = errors = 0
            while delivered + errors < 45:
                event = json.loads(alice.recv(timeout=10))
                if event["type"] == "chat-message":
                    delivered += 1
                elif event["type"] == "chat-error":
                    assert event["payload"]["code"] == "rate-limited"
                    errors += 1
            return delivered, errors

    delivered, errors = await deferToThread(scenario)
    # The join took one token of the burst of 30; a few more trickle in at
    # 10/s while the 45 are sent (more on a slow machine): the rest is dropped.
    assert 29 <= delivered <= 38
    assert errors == 45 - delivered


def raw_chat_client(port: int, username: str) -> socket.socket:
    """A client that joins and then never reads: a tiny receive buffer, no reads."""
    sock = raw_websocket(port, "/chat", ["chat.v1.json"])
    payload = json.dumps({"type": "chat-join", "payload": {"username": username}}).encode()
    sock.sendall(client_frame(payload))
    return sock


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Read (and discard) until the server closes the connection."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_dropped_and_others_keep_receiving(
    serve: Serve, log_events: list[dict[str, Any]]
) -> None:
    port = port_of(
        serve(database=":memory:", rate=100_000, burst=100_000, max_send_buffer=256 * 1024)
    )
    count = 3000
    text = "x" * 1990  # with the counter, just under the 2000-character limit

    def scenario() -> tuple[int, bool]:
        stalled = raw_chat_client(port, "stalled")
        try:
            with chat(port) as alice, chat(port) as bob:
                join(alice, "alice")
                join(bob, "bob")
                for i in range(count):
                    send(alice, "chat-message", message=f"{i} {text}")
                received = 0
                while received < count:
                    if until(bob, "chat-message")["message"].startswith(f"{received} "):
                        received += 1
                return received, closed_by_server(stalled, timeout=10)
        finally:
            stalled.close()

    received, dropped = await deferToThread(scenario)
    assert received == count
    assert dropped
    assert any("slow consumer" in e.get("log_format", "") for e in log_events)


def test_history_and_ids_survive_sigkill_and_restart(twistd: Path, tmp_path: Path) -> None:
    database = str(tmp_path / "chat.sqlite3")
    server, port = start_twistd(twistd, "--database", database, cwd=tmp_path)
    try:
        with chat(port) as alice:
            join(alice, "alice", room="durable")
            delivered = []
            for i in range(20):
                send(alice, "chat-message", message=f"message {i}", room="durable")
                delivered.append(until(alice, "chat-message"))
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(10)

    server, port = start_twistd(twistd, "--database", database, cwd=tmp_path)
    try:
        with chat(port) as bob:
            history = join(bob, "bob", room="durable")
            send(bob, "chat-message", message="after the restart", room="durable")
            after = until(bob, "chat-message")
    finally:
        server.terminate()
        server.wait(10)
    assert history["messages"] == delivered
    assert after["id"] > delivered[-1]["id"]


@pytest_twisted.ensureDeferred
async def test_a_large_room_over_real_sockets(serve: Serve) -> None:
    port = port_of(serve(database=":memory:", large_room=3, presence_interval=0.2))

    def presence_until(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
        events = [until(ws, "chat-presence")]
        while events[-1]["count"] != count:
            events.append(until(ws, "chat-presence"))
        return events

    def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with chat(port) as first, chat(port, subprotocol=None) as term:
            join(first, "first")  # after the text client, joined as a guest: 2 members
            with ExitStack() as stack:
                crowd = [stack.enter_context(chat(port)) for _ in range(5)]
                for i, ws in enumerate(crowd):
                    send(ws, "chat-join", username=f"m{i}", room="lobby")
                    until(ws, "chat-users")
                # m0 makes 3 (small), m1 makes the room large.
                seen["single"] = until(first, "chat-join")["username"]
                seen["gathered"] = presence_until(first, 7)
                with chat(port) as late:
                    send(late, "chat-join", username="late", room="lobby")
                    seen["users"] = until(late, "chat-users")
                    seen["late"] = presence_until(first, 8)
                    crowd[0].close()
                    seen["gone"] = presence_until(first, 7)
            lines = [str(term.recv(timeout=10))]
            while "left: " not in lines[-1]:
                lines.append(str(term.recv(timeout=10)))
            seen["lines"] = lines
        return seen

    seen = await deferToThread(scenario)
    assert seen["single"] == "m0"
    gathered = seen["gathered"]
    assert sum(p["joins"] for p in gathered) == 4
    assert sorted(n for p in gathered for n in p["joined"]) == ["m1", "m2", "m3", "m4"]
    assert all(p["leaves"] == 0 for p in gathered)
    assert seen["users"]["count"] == 8 and "late" in seen["users"]["users"]
    assert [p["joined"] for p in seen["late"]][-1] == ["late"]
    assert seen["gone"][-1]["left"] == ["m0"]
    # The text client: single lines while the room was small, then gathered ones.
    lines = seen["lines"]
    assert "* m0 joined #lobby" in lines
    assert not any(line.startswith("* m1 joined") for line in lines)
    assert any(line.startswith("* #lobby: ") and "joined: " in line for line in lines)
    assert lines[-1] == "* #lobby: 7 here; left: m0"


def flood_in_one_write(port: int) -> list[tuple[int, bytes]]:
    """200 chat frames in one TCP write (handled in one reactor turn); every frame
    the server sends back until its close frame."""
    sock = raw_websocket(port, "/chat", ["chat.v1.json"])
    sock.settimeout(10)
    typing = json.dumps({"type": "chat-typing", "payload": {}}).encode()
    sock.sendall(b"".join(client_frame(typing) for _ in range(200)))
    data, frames = b"", []
    while not frames or frames[-1][0] != 0x88:
        chunk = sock.recv(65536)
        if not chunk:
            break
        parsed, data = server_frames(data + chunk)
        frames += parsed
    sock.close()
    return frames


@pytest_twisted.ensureDeferred
async def test_what_was_sent_before_a_close_arrives_before_it(serve: Serve) -> None:
    """Events a connection gets are written once per reactor turn; a close in the
    same turn (here: for flooding) goes after them, not instead of them."""
    port = port_of(serve(database=":memory:"))
    frames = await deferToThread(flood_in_one_write, port)
    assert frames[-1][0] == 0x88 and int.from_bytes(frames[-1][1][:2], "big") == 1008
    errors = [json.loads(p) for op, p in frames[:-1] if b"rate-limited" in p]
    assert len(errors) >= 50, frames[:3]
    assert all(e["payload"]["code"] == "rate-limited" for e in errors)
