"""Several real twistd instances on one real redis-server, with real clients.

What a deployment behind a load balancer does: clients on different
instances chat in one room; an instance is SIGKILLed; Redis is killed and
comes back; the HTTP API of any instance acts on all of them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from net import http_request, start_twistd
from redis_server import RedisServer, free_port
from test_chat_e2e import chat, join, send, until

TOKEN = "scale-out-token"


class Instance:
    """One ``twistd chatservice --redis ...``, its output kept (and drained)."""

    def __init__(self, twistd: Path, cwd: Path, *args: str) -> None:
        self.process, self.port = start_twistd(
            twistd, "--admin-token", TOKEN, "--database", ":memory:", *args, cwd=cwd
        )
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def health(self) -> tuple[int, dict[str, Any]]:
        status, _, body = http_request(self.port, "GET", "/healthz")
        return status, json.loads(body)

    def api(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        status, _, answer = http_request(self.port, method, path, headers, data)
        return status, json.loads(answer)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def instances(
    twistd: Path, tmp_path: Path, redis_server: RedisServer
) -> Iterator[Callable[..., Instance]]:
    started: list[Instance] = []

    def start(*args: str) -> Instance:
        instance = Instance(twistd, tmp_path, "--redis", redis_server.url, *args)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.stop()


def eventually(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_clients_on_two_instances_chat_in_one_room(instances: Callable[..., Instance]) -> None:
    one, two = instances("--instance-ttl", "2"), instances("--instance-ttl", "2")
    with chat(one.port) as alice, chat(two.port) as bob:
        join(alice, "alice", room="r")
        send(bob, "chat-join", username="bob", room="r")
        until(bob, "chat-history")
        assert until(bob, "chat-users") == {"room": "r", "users": ["alice", "bob"], "count": 2}
        assert until(alice, "chat-join")["username"] == "bob"
        # Messages both ways, one numbering.
        send(alice, "chat-message", message="hello from one", room="r")
        first = until(bob, "chat-message")
        assert until(alice, "chat-message") == first
        send(bob, "chat-message", message="hello from two", room="r")
        second = until(alice, "chat-message")
        assert second["id"] > first["id"] and until(bob, "chat-message") == second
        # Typing and renames.
        send(bob, "chat-typing", room="r")
        assert until(alice, "chat-typing") == {"username": "bob", "room": "r"}
        send(bob, "chat-nick", username="robert")
        assert until(alice, "chat-nick") == {"old": "bob", "new": "robert", "rooms": ["r"]}
        # A name is taken on every instance.
        with chat(two.port) as other:
            send(other, "chat-join", username="ALICE", room="r")
            assert until(other, "chat-error")["code"] == "username-taken"
        # Recovery through the other instance.
        with chat(two.port) as carol:
            history = join(carol, "carol", room="r", since=first["id"])
            assert history == {"room": "r", "messages": [second], "recovered": True}
        # The HTTP API of either instance acts on both.
        status, stored = two.api("POST", "/api/rooms/r/messages", {"message": "from the API"})
        assert status == 201 and until(alice, "chat-message") == stored
        status, _ = one.api("POST", "/broadcast/maintenance%20at%20noon")
        assert status == 200
        assert until(bob, "chat-notice")["message"] == "maintenance at noon"
        status, users = one.api("GET", "/api/rooms/r/users")
        assert users["users"] == ["alice", "robert"]
        send(bob, "chat-join", room="only-on-two")
        until(bob, "chat-users")
        status, users = one.api("GET", "/api/rooms/only-on-two/users")
        assert (status, users) == (200, {"room": "only-on-two", "users": ["robert"], "count": 1})
        assert one.health()[0] == two.health()[0] == 200

        # An instance that dies: its members leave, for the others, within the ttl.
        two.process.send_signal(signal.SIGKILL)
        two.process.wait(10)
        killed = time.monotonic()
        assert until(alice, "chat-leave", timeout=10)["username"] == "robert"
        assert time.monotonic() - killed < 2 + 2
    with chat(one.port) as dave:
        history = join(dave, "dave", room="r")
    assert [m["message"] for m in history["messages"]] == [
        "hello from one",
        "hello from two",
        "from the API",
    ]


def test_redis_down_then_back_without_restarts(
    instances: Callable[..., Instance], redis_server: RedisServer
) -> None:
    one, two = instances(), instances()
    with chat(one.port) as alice, chat(two.port) as bob:
        join(alice, "alice", room="r")
        join(bob, "bob", room="r")
        redis_server.kill()
        eventually(lambda: one.health()[0] == 503)
        status, health = one.health()
        assert health["status"] == "unavailable"
        assert health["reason"].startswith(
            f"cannot reach Redis at redis://127.0.0.1:{redis_server.port}"
        )
        send(alice, "chat-message", message="while down", room="r")
        error = until(alice, "chat-error")
        assert error["code"] == "unavailable"
        status, answer = one.api("POST", "/api/rooms/r/messages", {"message": "api while down"})
        assert status == 503 and answer["error"].startswith("unavailable")

        redis_server.start()
        eventually(lambda: one.health()[0] == 200 and two.health()[0] == 200)
        send(alice, "chat-message", message="back", room="r")
        assert until(bob, "chat-message")["message"] == "back"
        assert until(alice, "chat-message")["message"] == "back"
        send(bob, "chat-message", message="and back", room="r")
        assert until(alice, "chat-message")["message"] == "and back"
    assert not [line for line in one.lines + two.lines if "Traceback" in line]


def test_redis_unreachable_at_start_is_retried(twistd: Path, tmp_path: Path) -> None:
    port = free_port()
    instance = Instance(twistd, tmp_path, "--redis", f"redis://127.0.0.1:{port}")
    try:
        unreachable = f"cannot reach Redis at redis://127.0.0.1:{port}: Connection was refused"
        eventually(lambda: instance.health()[1].get("reason", "").startswith(unreachable))
        assert instance.health()[0] == 503
        eventually(lambda: any("redis unavailable" in line for line in instance.lines))
        (tmp_path / "redis").mkdir()
        server = RedisServer(tmp_path / "redis", port=port)
        server.start()
        try:
            eventually(lambda: instance.health()[0] == 200)
            with chat(instance.port) as alice:
                join(alice, "alice", room="r")
                send(alice, "chat-message", message="finally", room="r")
                assert until(alice, "chat-message")["message"] == "finally"
        finally:
            server.kill()
    finally:
        instance.stop()


def test_a_bad_redis_url_is_one_line(twistd: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(twistd), "-n", "--pidfile=", "chatservice", "--redis", "http://example.org"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "twistd chatservice: error: --redis: bad Redis URL 'http://example.org': "
        "use redis://, rediss:// or unix:// (see twistd chatservice --help)"
    ]
