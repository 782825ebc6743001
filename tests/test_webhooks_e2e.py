"""Webhooks end to end: real twistd processes, a real receiver process, real redis-server.

The receiver (tests/webhook_receiver.py) checks every request's signature with
the ``standardwebhooks`` library, as an application does, and records the
events; these tests compare what it got with what the chat clients did and
were acknowledged (docs/hooks.md).  Faults are real: the receiver down or
failing, the service SIGKILLed, an instance SIGKILLed while it held the
events it was sending.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from net import http_request, start_twistd
from redis_server import RedisServer
from test_chat_e2e import chat, join, send, until
from test_identity_e2e import SECRET as AUTH_SECRET
from test_identity_e2e import enter, identified, token
from webhook_receiver import SECRET, Received, ReceiverProcess, event_order
from websockets.sync.client import ClientConnection

TOKEN = "webhooks-admin-token"


class Server:
    """One ``twistd -n chatservice`` with webhooks; restartable, its output drained."""

    def __init__(self, twistd: Path, cwd: Path, *args: str) -> None:
        self.twistd, self.cwd, self.args = twistd, cwd, args
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.start()

    def start(self) -> None:
        self.process, self.port = start_twistd(
            self.twistd, "--admin-token", TOKEN, *self.args, cwd=self.cwd
        )
        threading.Thread(target=self._drain, args=(self.process,), daemon=True).start()

    def _drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def health(self) -> dict[str, Any]:
        _, _, body = http_request(self.port, "GET", "/healthz")
        answer: dict[str, Any] = json.loads(body)
        return answer

    def metrics(self) -> dict[str, float]:
        """The webhook samples of ``/metrics``: ``name{labels}`` -> value."""
        _, _, body = http_request(self.port, "GET", "/metrics")
        found = {}
        for line in body.decode().splitlines():
            if line.startswith("chatservice_webhook_"):
                name, value = line.rsplit(" ", 1)
                found[name] = float(value)
        return found

    def api(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        status, _, answer = http_request(self.port, method, path, headers, data)
        return status, json.loads(answer)

    def say(self, room: str, message: str, username: str = "api") -> dict[str, Any]:
        """A message through the HTTP API: its stored payload."""
        status, stored = self.api(
            "POST", f"/api/rooms/{room}/messages", {"message": message, "username": username}
        )
        assert status == 201, stored
        return dict(stored)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ReceiverProcess]:
    """A receiver recording to ``events.jsonl``, not started (``start()`` or ``reserve()``)."""
    process = ReceiverProcess(tmp_path / "events.jsonl")
    yield process
    process.kill()


@pytest.fixture
def servers(twistd: Path, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start ``Server(*args)`` in the test's directory; all are stopped after it."""
    started: list[Server] = []
    environ = os.environ.pop("CHATSERVICE_WEBHOOK_SECRET", None)

    def start(*args: str) -> Server:
        server = Server(twistd, tmp_path, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    if environ is not None:
        os.environ["CHATSERVICE_WEBHOOK_SECRET"] = environ
    assert not [line for s in started for line in s.lines if "Traceback" in line]


def hooks(receiver: ReceiverProcess, *more: str) -> tuple[str, ...]:
    return ("--webhook", receiver.url, "--webhook-secret", SECRET, *more)


def eventually(check: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    """Poll `check` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what or check}")
        time.sleep(0.05)


def created_ids(taken: list[Received]) -> list[tuple[str, int]]:
    """(room, message id) of every message.created, in the order they came."""
    return [(e.data["room"], e.data["id"]) for e in taken if e.type == "message.created"]


def assert_in_order_per_room(taken: list[Received]) -> None:
    """Each room's message ids strictly increase in the order the receiver got them."""
    last: dict[str, int] = {}
    for room, mid in created_ids(taken):
        assert mid > last.get(room, 0), (room, mid, last.get(room))
        last[room] = mid


def assert_unique(taken: list[Received]) -> None:
    repeated = [i for i, n in Counter(e.id for e in taken).items() if n > 1]
    assert not repeated, repeated
    assert all(re.fullmatch(r"evt_\d+(-\d+)?", e.id) for e in taken)


def said(ws: ClientConnection, message: str, room: str) -> dict[str, Any]:
    """Send a chat message; its payload once it came back (stored: acknowledged)."""
    send(ws, "chat-message", message=message, room=room)
    while True:
        payload = until(ws, "chat-message")
        if payload["message"] == message:
            return payload


# -- one process --------------------------------------------------------------------


def test_every_event_type_arrives_signed_and_in_order(
    servers: Callable[..., Server], receiver: ReceiverProcess, tmp_path: Path
) -> None:
    receiver.start()
    server = servers(
        *("--database", str(tmp_path / "chat.sqlite3")),
        *("--auth", "optional", "--auth-secret", AUTH_SECRET),
        *hooks(receiver, "--webhook-offline-delay", "0.5"),
    )
    got: list[Received] = []

    def step(*expected: tuple[str, dict[str, Any]], ordered: bool = True) -> list[Received]:
        """The next events are `expected` (type, data without times); in that order if `ordered`."""
        new = eventually(
            lambda: (e := receiver.events())[len(got) + len(expected) - 1 :] and e,
            what=f"{len(expected)} events after {len(got)}: {expected}",
        )[len(got) : len(got) + len(expected)]
        got.extend(new)
        seen = [
            (e.type, {k: v for k, v in e.data.items() if k not in ("time", "until")}) for e in new
        ]
        if ordered:
            assert seen == list(expected)
        else:
            assert sorted(map(repr, seen)) == sorted(map(repr, expected))
        return new

    alice = identified(server.port, token("u1", "alice"))[0]
    enter(alice, "lobby")
    step(
        ("user.online", {"user": "u1", "name": "alice"}),
        ("room.entered", {"room": "lobby", "user": "u1", "name": "alice"}),
    )
    bob = chat(server.port)
    join(bob, "bob", room="lobby")
    step(
        ("user.online", {"user": None, "name": "bob"}),
        ("room.entered", {"room": "lobby", "user": None, "name": "bob"}),
    )
    hello = said(alice, "hello", "lobby")
    hi = said(bob, "hi", "lobby")
    (first, second) = step(
        ("message.created", _without_time(hello)),
        ("message.created", _without_time(hi)),
    )
    # The data is the chat-message payload, exactly: the user only for an identified sender.
    assert first.data == hello and second.data == hi and "user" not in hi
    assert hello["user"] == "u1" and hi["id"] > hello["id"]
    assert first.event["time"] == hello["time"]  # the message's own time

    enter(alice, "side")
    over = said(alice, "over here", "side")
    step(
        ("room.entered", {"room": "side", "user": "u1", "name": "alice"}),
        ("message.created", _without_time(over)),
    )

    status, _ = server.api("DELETE", f"/api/rooms/lobby/messages/{hi['id']}")
    assert status == 200
    step(("message.deleted", {"room": "lobby", "id": hi["id"], "by": "api"}))

    # A rename and a kick.
    carol = chat(server.port)
    join(carol, "carol", room="lobby")
    step(
        ("user.online", {"user": None, "name": "carol"}),
        ("room.entered", {"room": "lobby", "user": None, "name": "carol"}),
    )
    # A guest who renames is a new person: the old name leaves (and goes offline),
    # the new one comes online and enters.
    send(carol, "chat-nick", username="caroline")
    until(carol, "chat-nick")
    step(
        ("room.left", {"room": "lobby", "user": None, "name": "carol"}),
        ("user.online", {"user": None, "name": "caroline"}),
        ("room.entered", {"room": "lobby", "user": None, "name": "caroline"}),
        ("user.offline", {"user": None, "name": "carol"}),
        ordered=False,
    )
    assert server.api("POST", "/api/users/caroline/kick", {"reason": "bye"})[0] == 200
    step(
        (
            "moderation",
            {"action": "kick", "username": "caroline", "by": "api", "user": None, "reason": "bye"},
        ),
        ("room.left", {"room": "lobby", "user": None, "name": "caroline"}),
        ("user.offline", {"user": None, "name": "caroline"}),
        ordered=False,
    )
    # A ban from the room: bob stays connected, in no room: offline after the delay.
    status, banned = server.api(
        "POST", "/api/users/bob/ban", {"room": "lobby", "duration": 60, "reason": "spam"}
    )
    assert status == 200
    (moderation,) = [
        e
        for e in step(
            (
                "moderation",
                {
                    "action": "ban",
                    "username": "bob",
                    "by": "api",
                    "room": "lobby",
                    "user": None,
                    "reason": "spam",
                },
            ),
            ("room.left", {"room": "lobby", "user": None, "name": "bob"}),
            ("user.offline", {"user": None, "name": "bob"}),
            ordered=False,
        )
        if e.type == "moderation"
    ]
    assert moderation.data["until"] == banned["until"]

    # A mute of an identified user, and its lift: her user id, then no end.
    status, muted = server.api("POST", "/api/users/alice/mute", {"duration": 60})
    assert status == 200
    server.api("POST", "/api/users/alice/mute", {"duration": 0})
    mute, lift = step(
        ("moderation", {"action": "mute", "username": "alice", "by": "api", "user": "u1"}),
        ("moderation", {"action": "mute", "username": "alice", "by": "api", "user": "u1"}),
    )
    assert mute.data["until"] == muted["until"] is not None and lift.data["until"] is None

    # Her second tab is the same person: nothing to tell.
    with identified(server.port, token("u1", "alice"))[0] as tab:
        enter(tab, "lobby")
    time.sleep(1.0)
    assert receiver.events()[len(got) :] == []

    # Alice reloads her page: she leaves and enters the room again, but
    # within the delay, so she never goes offline (nor comes online again).
    send(alice, "chat-leave", room="side")
    step(("room.left", {"room": "side", "user": "u1", "name": "alice"}))
    alice.close()
    eventually(lambda: "alice" not in server.api("GET", "/api/rooms/lobby/users")[1]["users"])
    alice = identified(server.port, token("u1", "alice"))[0]
    enter(alice, "lobby")
    step(
        ("room.left", {"room": "lobby", "user": "u1", "name": "alice"}),
        ("room.entered", {"room": "lobby", "user": "u1", "name": "alice"}),
    )
    time.sleep(1.5)  # three times the delay: an offline would have come
    assert receiver.events()[len(got) :] == []
    alice.close()
    step(
        ("room.left", {"room": "lobby", "user": "u1", "name": "alice"}),
        ("user.offline", {"user": "u1", "name": "alice"}),
    )
    bob.close()
    carol.close()
    time.sleep(0.5)

    taken = receiver.events()
    assert taken == got  # nothing else came
    assert receiver.bad() == []
    assert {e.type for e in taken} == {
        "message.created",
        "message.deleted",
        "room.entered",
        "room.left",
        "user.online",
        "user.offline",
        "moderation",
    }
    assert_unique(taken)
    assert_in_order_per_room(taken)
    # One process: the ids are the outbox's order, and the receiver got them in it.
    order = [event_order(e.id) for e in taken]
    assert order == sorted(order)
    assert all(e.webhook_id.startswith("msg_") for e in taken)


def test_a_text_client_is_online_in_its_lobby_and_only_the_chosen_events_are_sent(
    servers: Callable[..., Server], receiver: ReceiverProcess, tmp_path: Path
) -> None:
    receiver.start()
    server = servers(
        *("--database", str(tmp_path / "chat.sqlite3")),
        *hooks(receiver, "--webhook-events", "user,message.created"),
        *("--webhook-offline-delay", "0.3"),
    )
    with chat(server.port, subprotocol=None) as term:
        term.recv(timeout=10)  # the welcome: it is in the lobby as a guest
        online = eventually(lambda: receiver.events(), what="the guest's user.online")
        guest = online[0].data["name"]
        assert guest.startswith("guest-")
        term.send("/nick tom")
        term.send("hello from a terminal")
        eventually(lambda: receiver.events("message.created"), what="tom's message")
    eventually(lambda: len(receiver.events("user.offline")) == 2, what="both offline")
    seen = [(e.type, e.data.get("name", e.data.get("username"))) for e in receiver.events()]
    # No room.entered nor room.left: not chosen.  The rename is a new person.
    assert sorted(seen) == sorted(
        [
            ("user.online", guest),
            ("user.offline", guest),
            ("user.online", "tom"),
            ("message.created", "tom"),
            ("user.offline", "tom"),
        ]
    )
    assert seen[0] == ("user.online", guest) and seen[-1] == ("user.offline", "tom")
    assert seen.index(("user.online", "tom")) < seen.index(("message.created", "tom"))


def _without_time(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != "time"}


def test_receiver_down_for_30_s_then_back_gets_everything(
    servers: Callable[..., Server], receiver: ReceiverProcess, tmp_path: Path
) -> None:
    receiver.reserve()  # its port, with nothing listening on it yet
    server = servers("--database", str(tmp_path / "chat.sqlite3"), *hooks(receiver))
    started = time.monotonic()
    acked: list[tuple[str, int]] = []
    with chat(server.port) as alice, chat(server.port) as bob:
        join(alice, "alice", room="r1")
        join(bob, "bob", room="r2")
        n = 0
        while time.monotonic() - started < 30:
            n += 1
            for ws, room in ((alice, "r1"), (bob, "r2")):
                acked.append((room, said(ws, f"m{n}", room)["id"]))
            acked.append(("r1", server.say("r1", f"api {n}")["id"]))
            time.sleep(0.5)
        down = server.health()["webhooks"]
        metrics = server.metrics()
        receiver.start()
        for n in range(5):  # more while the backlog drains
            acked.append(("r1", said(alice, f"after {n}", "r1")["id"]))
        eventually(
            lambda: set(created_ids(receiver.events())) >= set(acked),
            timeout=45,  # the retry after 30 s of failures comes ~1 s later
            what="every acknowledged message",
        )
    # (The count is as the sender last read it: between retries it may lag.)
    assert down["queued"] > 0 and down["oldest_age"] > 25
    assert metrics['chatservice_webhook_posts_total{outcome="error"}'] >= 4
    assert metrics['chatservice_webhook_posts_total{outcome="ok"}'] == 0
    assert metrics["chatservice_webhook_events_queued"] > 0
    eventually(lambda: server.health()["webhooks"] == {"queued": 0, "oldest_age": 0.0})
    after = server.metrics()
    assert after['chatservice_webhook_posts_total{outcome="ok"}'] >= 1
    assert after["chatservice_webhook_events_queued"] == 0

    taken = receiver.events()
    assert sorted(created_ids(taken)) == sorted(acked)  # all of them, each once
    assert_unique(taken)
    assert_in_order_per_room(taken)
    assert receiver.bad() == []
    assert after["chatservice_webhook_events_sent_total"] == len(taken)


def test_events_stored_before_a_sigkill_are_sent_after_the_restart(
    servers: Callable[..., Server], receiver: ReceiverProcess, tmp_path: Path
) -> None:
    receiver.reserve()
    args = ("--database", str(tmp_path / "chat.sqlite3"))
    server = servers(*args, *hooks(receiver, "--webhook-offline-delay", "0.5"))
    with chat(server.port) as alice:
        join(alice, "alice", room="r")
        acked = [("r", said(alice, f"m{n}", "r")["id"]) for n in range(5)]
        acked.append(("r", server.say("r", "by the api")["id"]))
        eventually(lambda: server.health()["webhooks"]["queued"] >= 8)
        server.kill()  # nothing sent: nothing listened
    assert receiver.events() == []
    receiver.start()
    server.start()  # the same database
    eventually(lambda: set(created_ids(receiver.events())) >= set(acked), what="the messages")
    # Alice was in the room when the process died: the restarted one tells
    # that she left with it, and went offline after the delay.
    eventually(lambda: receiver.events("user.offline"), what="alice's user.offline")
    taken = receiver.events()
    assert created_ids(taken) == acked
    alice = {"user": None, "name": "alice"}
    assert [(e.type, e.data) for e in taken if e.type != "message.created"] == [
        ("user.online", alice),
        ("room.entered", {"room": "r", **alice}),
        ("room.left", {"room": "r", **alice}),
        ("user.offline", alice),
    ]
    assert_unique(taken)
    order = [event_order(e.id) for e in taken]
    assert order == sorted(order)


def test_a_receiver_that_fails_or_hangs_is_retried_with_the_same_request(
    servers: Callable[..., Server], receiver: ReceiverProcess, tmp_path: Path
) -> None:
    receiver.start("--hang")
    server = servers(
        *("--database", str(tmp_path / "chat.sqlite3")),
        *hooks(receiver, "--webhook-timeout", "0.5", "--webhook-events", "message"),
    )
    stored = server.say("r", "patience")
    timeouts = 'chatservice_webhook_posts_total{outcome="timeout"}'
    eventually(lambda: server.metrics()[timeouts] >= 1, what="a timed out post")
    receiver.kill()
    receiver.start("--fail-first", "1")  # a 500, then 204s
    eventually(lambda: receiver.events(), what="the message")
    metrics = server.metrics()
    assert metrics['chatservice_webhook_posts_total{outcome="status"}'] == 1
    assert metrics['chatservice_webhook_posts_total{outcome="ok"}'] == 1
    assert metrics["chatservice_webhook_events_sent_total"] == 1
    (taken,) = receiver.events()
    assert taken.type == "message.created" and taken.data == stored
    # The request the receiver took is the one that timed out and failed: one webhook-id
    # for every attempt, so that a receiver can tell a retry from a new request.
    assert re.fullmatch(r"msg_[0-9a-f]{32}", taken.webhook_id)
    tried = receiver.attempts()
    assert [code for code, _ in tried][-1] == 500 and None in [code for code, _ in tried]
    assert {webhook_id for _, webhook_id in tried} == {taken.webhook_id}


def test_healthz_counts_what_arrives_while_the_sender_waits_to_retry(
    servers: Callable[..., Server], receiver: ReceiverProcess, tmp_path: Path
) -> None:
    receiver.reserve()
    server = servers(
        *("--database", str(tmp_path / "chat.sqlite3")),
        *hooks(receiver, "--webhook-events", "message"),
    )
    server.say("r", "first")
    eventually(lambda: server.health()["webhooks"]["queued"] == 1)
    # Refused at once, retried 1 s, 2 s, 4 s later: this is within the 4 s.
    time.sleep(4.5)
    for n in range(10):
        server.say("r", f"m{n}")
    time.sleep(1.5)
    assert server.health()["webhooks"]["queued"] == 11
    assert server.metrics()["chatservice_webhook_events_queued"] == 11


# -- on Redis -----------------------------------------------------------------------


def redis_cli(server: RedisServer, *words: str) -> list[str]:
    out = subprocess.run(
        ["redis-cli", "-p", str(server.port), "--raw", *words],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return out.stdout.splitlines()


def test_two_instances_post_each_event_once_and_a_killed_senders_are_taken_over(
    servers: Callable[..., Server],
    receiver: ReceiverProcess,
    redis_server: RedisServer,
) -> None:
    receiver.start()
    args = (
        *("--database", ":memory:", "--redis", redis_server.url, "--instance-ttl", "2"),
        *hooks(receiver, "--webhook-offline-delay", "0.5"),
    )
    one, two = servers(*args), servers(*args)
    eventually(lambda: one.health()["status"] == two.health()["status"] == "ok")
    acked: list[tuple[str, int]] = []
    alice, bob = chat(one.port), chat(two.port)
    with alice, bob:
        join(alice, "alice", room="r")
        join(bob, "bob", room="r")
        for n in range(10):
            acked.append(("r", said(alice, f"a{n}", "r")["id"]))
            acked.append(("r", said(bob, f"b{n}", "r")["id"]))
            acked.append(("r", (one if n % 2 else two).say("r", f"api {n}")["id"]))
        eventually(lambda: set(created_ids(receiver.events())) >= set(acked))
        # Each person is online and in the room once, over both instances.
        assert Counter(e.type for e in receiver.events()) == {
            "user.online": 2,
            "room.entered": 2,
            "message.created": 30,
        }

        # The receiver fails: the instance sending holds the events it took.
        receiver.kill()
        receiver.start("--status", "500")
        for n in range(10):
            acked.append(("r", said(alice, f"c{n}", "r")["id"]))
            acked.append(("r", said(bob, f"d{n}", "r")["id"]))
        holder = redis_cli(redis_server, "GET", "chatservice:hooks:poster")[0]
        members = redis_cli(redis_server, "HGETALL", "chatservice:room:r:members")
        where = {
            value.split("\x1f")[0]: key.split(":")[0]
            for key, value in zip(members[::2], members[1::2], strict=True)
        }
        sender, other = (one, two) if where["alice"] == holder else (two, one)
        assert where["alice" if sender is one else "bob"] == holder
        failing = 'chatservice_webhook_posts_total{outcome="status"}'
        eventually(lambda: sender.metrics()[failing] >= 1, what="a failed post")
        assert other.metrics()[failing] == 0  # one sends at a time
        pending = redis_cli(redis_server, "XPENDING", "chatservice:hooks:outbox", "webhooks")
        assert int(pending[0]) > 0  # taken, not acknowledged
        sender.kill()
        killed = time.monotonic()
        receiver.kill()
        receiver.start()
        survivor = alice if sender is two else bob
        acked.append(("r", said(survivor, "after the kill", "r")["id"]))
        eventually(
            lambda: set(created_ids(receiver.events())) >= set(acked),
            timeout=25,
            what="the killed sender's events",
        )
        assert time.monotonic() - killed < 20
        # The killed instance's member left the room, told by the other one.
        gone = "alice" if sender is one else "bob"
        eventually(
            lambda: [e for e in receiver.events("room.left") if e.data["name"] == gone],
            what=f"{gone} leaving",
        )

    taken = receiver.events()
    assert sorted(created_ids(taken)) == sorted(acked)  # each exactly once
    assert_unique(taken)
    assert_in_order_per_room(taken)
    assert receiver.bad() == []
    eventually(lambda: other.health()["webhooks"]["queued"] == 0)


# -- options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--webhook", "ftp://x", "--webhook-secret", SECRET], "must be an http:// or https://"),
        (["--webhook", "http://x"], "--webhook: needs --webhook-secret"),
        (["--webhook", "http://x", "--webhook-secret", "nope"], "--webhook-secret: "),
        (
            ["--webhook", "http://x", "--webhook-secret", SECRET, "--webhook-events", "bogus"],
            "--webhook-events: unknown event type 'bogus'",
        ),
        (
            ["--webhook", "http://x", "--webhook-secret", SECRET, "--webhook-max-age", "0"],
            "--webhook-max-age '0': must be at least",
        ),
        (["--webhook-secret", SECRET], "--webhook-secret: needs --webhook"),
    ],
)
def test_bad_webhook_options_are_one_line(
    twistd: Path, tmp_path: Path, args: list[str], expected: str
) -> None:
    environ = {k: v for k, v in os.environ.items() if k != "CHATSERVICE_WEBHOOK_SECRET"}
    result = subprocess.run(
        [str(twistd), "-n", "--pidfile=", "chatservice", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
        env=environ,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("twistd chatservice: error: ") and expected in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
