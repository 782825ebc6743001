"""The chat wire format and the connection policies, as pure functions."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from chatservice.chat.messages import (
    Help,
    Join,
    Leave,
    Nick,
    ProtocolError,
    Say,
    Typing,
    Users,
    encode_json,
    encode_text,
    parse_json,
    parse_text,
    text_lines,
)
from chatservice.chat.policy import FloodGuard, TokenBucket
from chatservice.web.policy import ConnectionLimits, OriginPolicy


def frame(kind: object, payload: object = None) -> bytes:
    data: dict[str, object] = {"type": kind}
    if payload is not None:
        data["payload"] = payload
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (frame("chat-join", {"username": " alice "}), Join(room="lobby", username="alice")),
        (
            frame("chat-join", {"username": "a", "room": "dev.ops-1_x", "since": 41}),
            Join(room="dev.ops-1_x", username="a", since=41),
        ),
        (frame("chat-join", {"room": "r"}), Join(room="r")),
        # The payload's username is not the sender's: it is ignored.
        (frame("chat-message", {"message": "hi", "username": "mallory"}), Say(message="hi")),
        (frame("chat-message", {"message": "hi", "room": "r"}), Say(message="hi", room="r")),
        (frame("chat-leave", {}), Leave()),
        (frame("chat-leave"), Leave()),
        (frame("chat-typing", {"room": "r"}), Typing(room="r")),
        (frame("chat-nick", {"username": "bob"}), Nick(username="bob")),
        (frame("chat-users"), Users()),
        (frame("chat-users", {"room": "r", "after": "bob"}), Users(room="r", after="bob")),
    ],
)
def test_json_commands(data: bytes, expected: object) -> None:
    assert parse_json(data) == expected


@pytest.mark.parametrize(
    ("data", "code", "type"),
    [
        (b"{not json", "bad-json", None),
        (b"\xff\xfe", "bad-json", None),
        (b"[1, 2]", "bad-json", None),
        (b'{"payload": {}}', "bad-type", None),
        (frame(7), "bad-type", None),
        (frame("chat-dance", {}), "bad-type", "chat-dance"),
        (frame("chat-message", []), "bad-payload", "chat-message"),
        (frame("chat-message", {"message": 5}), "bad-payload", "chat-message"),
        (frame("chat-join", {"username": "a", "since": "12"}), "bad-payload", "chat-join"),
        (frame("chat-join", {"username": "a", "since": -1}), "bad-payload", "chat-join"),
        (frame("chat-join", {"username": "a", "since": True}), "bad-payload", "chat-join"),
        (frame("chat-join", {"username": "a", "room": "no spaces"}), "bad-room", "chat-join"),
        (frame("chat-join", {"username": "a", "room": "x" * 65}), "bad-room", "chat-join"),
        (frame("chat-join", {"username": "a", "room": ""}), "bad-room", "chat-join"),
        (frame("chat-message", {"message": "m", "room": "#x"}), "bad-room", "chat-message"),
        (frame("chat-join", {"username": "   "}), "bad-username", "chat-join"),
        (frame("chat-join", {"username": "x" * 33}), "bad-username", "chat-join"),
        (frame("chat-join", {"username": "a\nb"}), "bad-username", "chat-join"),
        (frame("chat-join", {"username": "a\u200bb"}), "bad-username", "chat-join"),
        (frame("chat-nick", {"username": 3}), "bad-username", "chat-nick"),
        (frame("chat-users", {"after": 3}), "bad-payload", "chat-users"),
        (frame("chat-users", {"room": "a b"}), "bad-room", "chat-users"),
    ],
)
def test_json_errors(data: bytes, code: str, type: str | None) -> None:
    with pytest.raises(ProtocolError) as error:
        parse_json(data)
    assert error.value.code == code
    assert error.value.type == type
    kind, payload = error.value.event()
    assert kind == "chat-error" and payload["code"] == code and payload["reason"]


def test_usernames_of_32_characters_are_fine() -> None:
    assert parse_json(frame("chat-join", {"username": "é" * 32})) == Join("lobby", "é" * 32)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("hello", Say(message="hello")),
        ("/nick  bob ", Nick(username="bob")),
        ("/join #dev", Join(room="dev")),
        ("/JOIN dev", Join(room="dev")),
        ("/leave", Leave()),
        ("/who", Users()),
        ("/help", Help()),
    ],
)
def test_text_commands(line: str, expected: object) -> None:
    assert parse_text(line) == expected


@pytest.mark.parametrize("line", ["/dance", "/join", "/join a b", "/nick"])
def test_text_command_errors(line: str) -> None:
    with pytest.raises(ProtocolError):
        parse_text(line)


def test_encodings() -> None:
    message = ("chat-message", {"id": 1, "room": "r", "username": "a", "message": "<b>é"})
    assert json.loads(encode_json(message)) == {"type": message[0], "payload": message[1]}
    assert "é".encode() in encode_json(message)  # UTF-8, not \u escapes
    assert encode_text(message) == "[r] a: <b>é".encode()
    assert encode_text(("chat-typing", {"username": "a", "room": "r"})) is None
    assert (
        encode_text(("chat-join", {"username": "a", "room": "r", "time": "t"})) == b"* a joined #r"
    )
    history = (
        "chat-history",
        {"room": "r", "messages": [message[1], message[1]], "recovered": False},
    )
    assert text_lines(history) == ["[r] a: <b>é", "[r] a: <b>é"]


def test_text_lines_for_users_and_presence() -> None:
    small = ("chat-users", {"room": "r", "users": ["a", "b"], "count": 2})
    assert text_lines(small) == ["* Users in #r: a, b"]
    large = ("chat-users", {"room": "r", "users": ["a", "b"], "count": 900, "next": "b"})
    assert text_lines(large) == ["* Users in #r (900, first 2): a, b"]
    presence = {
        "room": "town",
        "count": 10234,
        "joins": 14,
        "joined": ["alice", "bob"],
        "leaves": 1,
        "left": ["carol"],
        "renamed": [],
        "time": "t",
    }
    assert encode_text(("chat-presence", presence)) == (
        b"* #town: 10234 here; joined: alice, bob and 12 more; left: carol"
    )
    renamed = presence | {"joins": 0, "joined": [], "leaves": 0, "left": []}
    renamed["renamed"] = [{"old": "x", "new": "y"}]
    assert encode_text(("chat-presence", renamed)) == b"* #town: 10234 here; renamed: x -> y"


# Origins.


@pytest.mark.parametrize(
    ("patterns", "origin", "host", "allowed"),
    [
        ((), None, "chat.example.com", True),  # no Origin: not a browser
        ((), "", "chat.example.com", True),
        ((), "https://chat.example.com", "chat.example.com", True),
        ((), "http://chat.example.com:8080", "chat.example.com:8080", True),
        ((), "http://localhost:8080", "LOCALHOST:8080", True),
        ((), "http://chat.example.com:8080", "chat.example.com", False),  # other port
        ((), "https://evil.example", "chat.example.com", False),
        ((), "null", "chat.example.com", False),
        ((), "garbage", "chat.example.com", False),
        (("https://chat.example.com",), "https://chat.example.com", "api.internal:9000", True),
        (("https://chat.example.com",), "http://chat.example.com", "api.internal:9000", False),
        (("https://*.example.com",), "https://a.b.example.com", "x", True),
        (("https://*.example.com",), "https://example.com", "x", False),
        (("https://*.example.com",), "https://evilexample.com", "x", False),
        (("https://*.example.com",), "https://example.com.evil.org", "x", False),
        (("http://localhost:*",), "http://localhost:5173", "x", True),
        (("http://localhost:*",), "https://localhost:5173", "x", False),
        (("*",), "https://anything.example", "x", True),
    ],
)
def test_origin_policy(
    patterns: tuple[str, ...], origin: str | None, host: str, allowed: bool
) -> None:
    assert OriginPolicy(patterns).allows(origin, host) is allowed


@pytest.mark.parametrize(
    "pattern", ["chat.example.com", "ftp://x", "https://a*b.com", "https://x/path"]
)
def test_bad_origin_patterns(pattern: str) -> None:
    with pytest.raises(ValueError):
        OriginPolicy([pattern])


# Rates and counts.


def test_token_bucket() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=3, seconds=clock.seconds)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.1)
    assert [bucket.take() for _ in range(2)] == [True, False]
    clock.advance(60)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_flood_guard_counts_within_the_window() -> None:
    clock = Clock()
    guard = FloodGuard(limit=3, window=60, seconds=clock.seconds)
    assert [guard.dropped() for _ in range(3)] == [False] * 3
    clock.advance(61)
    assert [guard.dropped() for _ in range(3)] == [False] * 3
    assert guard.dropped() is True


def test_connection_limits() -> None:
    limits = ConnectionLimits(total=3, per_address=2)
    assert limits.acquire("10.0.0.1") is None
    assert limits.acquire("10.0.0.1") is None
    assert "10.0.0.1" in (limits.acquire("10.0.0.1") or "")
    assert limits.acquire("10.0.0.2") is None
    assert "limit of 3" in (limits.acquire("10.0.0.3") or "")
    limits.release("10.0.0.1")
    assert limits.acquire("10.0.0.3") is None
    limits.release("nobody")  # releasing what was never counted changes nothing
    assert limits.open == 3
