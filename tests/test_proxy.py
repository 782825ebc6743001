"""Proxies without a reactor or sockets: answers parsed, decisions taken, the hub's order kept.

The proxy is a fake `call` whose Deferreds the test fires; time is a `Clock`.
The same over real sockets, with a real HTTP proxy: tests/test_proxy_e2e.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from members import Client, Prepare
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from chatservice.backplane.history import History
from chatservice.backplane.local import LocalBackplane
from chatservice.chat.gate import Dismissed, Handshake, Refused
from chatservice.chat.hub import Hub
from chatservice.chat.identity import AuthPolicy, Identity, Verifier
from chatservice.chat.messages import TEXT, Join, ProtocolError, Say
from chatservice.hooks.decisions import LOG_INTERVAL, ProxyGate, ProxySettings, identity_of
from chatservice.hooks.proxy import (
    Answer,
    BadAnswer,
    Disconnect,
    Refusal,
    Result,
    check_url,
    parse_answer,
)

SECRET = "proxy-tests-secret-0123456789abcdef"
HANDSHAKE = Handshake((("cookie", "session=abc"),), "192.0.2.7", "https://example.com", None)


class FakeProxies:
    """The `call` of a `ProxyGate`: records each request; the test answers it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], Deferred[Answer]]] = []

    def __call__(self, url: str, request: dict[str, Any]) -> Deferred[Answer]:
        answer: Deferred[Answer] = Deferred()
        self.calls.append((url, request, answer))
        return answer

    def answer(self, answer: Answer | BadAnswer, index: int = 0) -> dict[str, Any]:
        """Answer the `index`-th call still waiting; its request."""
        _, request, deferred = [c for c in self.calls if not c[2].called][index]
        if isinstance(answer, BadAnswer):
            deferred.errback(Failure(answer))
        else:
            deferred.callback(answer)
        return request

    def waiting(self) -> list[str]:
        return [url for url, _, d in self.calls if not d.called]


def gate(proxies: FakeProxies, clock: Clock | None = None, **settings: Any) -> ProxyGate:
    clock = clock or Clock()
    return ProxyGate(ProxySettings(**settings), proxies, clock.seconds)


def failure_of(d: Deferred[Any]) -> BaseException:
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures, "it did not fail"
    return failures[0].value


def result_of(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addCallback(results.append)
    assert results, "it did not fire"
    return results[0]


# Answers.


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        (b'{"result": {}}', Result({})),
        (b'{"result": {"text": "hi"}, "note": 1}', Result({"text": "hi"})),
        (b'{"error": {"code": "spam", "message": "no ads"}}', Refusal("spam", "no ads")),
        (b'{"error": {"code": "no"}}', Refusal("no", "")),
        (b'{"disconnect": {"code": 4001, "reason": "bye"}}', Disconnect(4001, "bye")),
        (b'{"disconnect": {"code": 4999}}', Disconnect(4999, "")),
        (
            ('{"disconnect": {"code": 4000, "reason": "%s"}}' % ("\u00e9" * 100)).encode(),
            Disconnect(4000, "\u00e9" * 61),
        ),  # (123 bytes: cut between characters)
    ],
)
def test_documented_answers_are_read(body: bytes, answer: Answer) -> None:
    assert parse_answer(body) == answer


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>oops</html>", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not a JSON object"),
        (b"{}", "none"),
        (b'{"result": {}, "error": {"code": "x"}}', "result, error"),
        (b'{"result": "yes"}', "result must be an object"),
        (b'{"error": {"message": "no code"}}', "error.code"),
        (b'{"error": {"code": "has spaces"}}', "error.code"),
        (b'{"error": {"code": "x", "message": 7}}', "error.message"),
        (b'{"disconnect": {"code": 3999}}', "4000-4999"),
        (b'{"disconnect": {"code": 5000}}', "4000-4999"),
        (b'{"disconnect": {"code": true}}', "4000-4999"),
        (b'{"disconnect": {"code": "4001"}}', "4000-4999"),
        (b'{"disconnect": {"code": 4001, "reason": 1}}', "reason"),
        (b'{"result": ' + b"[" * 60000 + b"]" * 60000 + b"}", "not JSON"),
        (b'{"error": {"code": "x", "message": "\\ud800"}}', "not valid Unicode"),
        (b'{"result": {"text": "\xed\xa0\x80"}}', "not"),
    ],
)
def test_anything_else_is_a_bad_answer(body: bytes, why: str) -> None:
    with pytest.raises(BadAnswer) as bad:
        parse_answer(body)
    assert why in bad.value.reason


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "example.com/check", "http://", "http://a b/", ""]
)
def test_a_proxy_url_is_http_or_https(url: str) -> None:
    with pytest.raises(ValueError):
        check_url(url)
    assert check_url(" https://app.example.com:8443/chat/connect ").startswith("https://")


def test_a_connect_result_reads_as_a_tokens_claims() -> None:
    assert identity_of({}) is None
    assert identity_of(
        {"user": "42", "name": "alice", "rooms": ["staff-*"], "admin": True, "expire_at": 17}
    ) == Identity("42", "alice", ("staff-*",), True, 17.0)
    assert identity_of({"user": "bob"}) == Identity("bob", "bob")
    for bad in (
        {"name": "alice"},
        {"user": ""},
        {"user": 42},
        {"user": "42", "name": "x" * 40},
        {"user": "42", "rooms": "staff"},
        {"user": "42", "admin": "yes"},
        {"user": "42", "expire_at": "tomorrow"},
        {"user": "42", "expire_at": 10**400},
        {"user": "42", "expire_at": float("inf")},
        {"user": "42", "expire_at": 1767225600000},  # milliseconds: Date.now()
        {"user": "42", "expire_at": -1},
    ):
        with pytest.raises(BadAnswer):
            identity_of(bad)


# Decisions.


def test_connect_asks_with_the_handshake_and_takes_each_answer() -> None:
    proxies = FakeProxies()
    g = gate(proxies, connect="http://app/connect", headers=("cookie",))
    asked = g.connect(HANDSHAKE)
    request = proxies.answer(Result({"user": "42", "name": "alice"}))
    assert request == {
        "headers": {"cookie": "session=abc"},
        "address": "192.0.2.7",
        "origin": "https://example.com",
        "subprotocol": None,
    }
    assert proxies.calls[0][0] == "http://app/connect"
    assert result_of(asked) == Identity("42", "alice")

    asked = g.connect(HANDSHAKE)
    proxies.answer(Result({}))
    assert result_of(asked) is None

    asked = g.connect(HANDSHAKE)
    proxies.answer(Refusal("session-expired", "sign in again"))
    refused = failure_of(asked)
    assert isinstance(refused, Refused)
    assert refused.event() == (
        "chat-error",
        {"code": "session-expired", "reason": "sign in again", "type": "chat-auth"},
    )

    asked = g.connect(HANDSHAKE)
    proxies.answer(Disconnect(4003, "who are you"))
    dismissed = failure_of(asked)
    assert isinstance(dismissed, Dismissed)
    assert (dismissed.code, dismissed.reason) == (4003, "who are you")


def test_a_proxy_that_cannot_answer_refuses_and_is_logged_once_per_interval(
    log_events: list[dict[str, Any]],
) -> None:
    proxies = FakeProxies()
    clock = Clock()
    g = gate(proxies, clock, connect="http://app/c", publish="http://app/p", join="http://app/j")
    outcomes = []
    for _ in range(3):
        asked = g.connect(HANDSHAKE)
        proxies.answer(BadAnswer("it answered HTTP 500"))
        outcomes.append(failure_of(asked))
    assert all(isinstance(o, Dismissed) and o.code == 1013 for o in outcomes)
    said = g.publish("lobby", None, "alice", "hi")
    proxies.answer(BadAnswer("no answer within 1s"))
    unavailable = failure_of(said)
    assert isinstance(unavailable, ProtocolError) and not isinstance(unavailable, Refused)
    assert unavailable.code == "unavailable" and unavailable.type == "chat-message"
    joining = g.join("lobby", None, "alice")
    proxies.answer(BadAnswer("the answer is not JSON"))
    assert failure_of(joining).event()[1]["room"] == "lobby"  # type: ignore[attr-defined]

    def logged() -> list[dict[str, Any]]:
        return [e for e in log_events if e.get("log_namespace") == "chatservice.hooks"]

    assert [(e["proxy"], e["reason"], e["unlogged"]) for e in logged()] == [
        ("connect", "it answered HTTP 500", 0),
        ("publish", "no answer within 1s", 0),
        ("join", "the answer is not JSON", 0),
    ]
    assert logged()[0]["url"] == "http://app/c"
    clock.advance(LOG_INTERVAL)
    asked = g.connect(HANDSHAKE)
    proxies.answer(BadAnswer("it answered HTTP 502"))
    failure_of(asked)
    assert [(e["reason"], e["unlogged"]) for e in logged()[3:]] == [("it answered HTTP 502", 2)]


def test_publish_keeps_rewrites_or_refuses() -> None:
    proxies = FakeProxies()
    g = gate(proxies, publish="http://app/p")
    said = g.publish("lobby", "42", "alice", "hello")
    assert proxies.answer(Result({})) == {
        "room": "lobby",
        "user": "42",
        "name": "alice",
        "text": "hello",
    }
    assert result_of(said) is None
    said = g.publish("lobby", None, "bob", "buy stuff")
    proxies.answer(Result({"text": "[removed]"}))
    assert result_of(said) == "[removed]"
    said = g.publish("lobby", None, "bob", "x")
    proxies.answer(Result({"text": 7}))
    assert failure_of(said).code == "unavailable"  # type: ignore[attr-defined]
    said = g.publish("lobby", None, "bob", "buy stuff")
    proxies.answer(Refusal("spam", "no ads here"))
    assert failure_of(said).event()[1] == {  # type: ignore[attr-defined]
        "code": "spam",
        "reason": "no ads here",
        "type": "chat-message",
    }


def test_the_join_proxy_decides_about_the_rooms_it_is_given() -> None:
    proxies = FakeProxies()
    assert gate(proxies, join="http://app/j").joins("anything")
    g = gate(proxies, join="http://app/j", join_rooms=("team-*", "ops"))
    assert g.joins("team-a") and g.joins("ops") and not g.joins("lobby")
    assert not gate(proxies, publish="http://app/p").joins("team-a")
    joining = g.join("team-a", None, "guest")
    assert proxies.answer(Refusal("not-a-member", "ask an admin")) == {
        "room": "team-a",
        "user": None,
        "name": "guest",
    }
    assert failure_of(joining).event()[1] == {  # type: ignore[attr-defined]
        "code": "not-a-member",
        "reason": "ask an admin",
        "type": "chat-join",
        "room": "team-a",
    }


# The hub with a gate.


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(time.time())
    return clock


def hub_with(
    history: History, clock: Clock, prepare: Prepare, proxies: FakeProxies, **settings: Any
) -> Hub:
    auth = AuthPolicy("optional", Verifier(SECRET, leeway=0), (), 5.0, 0.0, "")
    g = ProxyGate(ProxySettings(**settings), proxies, clock.seconds)
    return Hub(LocalBackplane(history), clock, prepare, server="t", auth=auth, gate=g)


def test_frames_sent_before_the_connect_proxy_answered_wait_for_the_identity(
    history: History, clock: Clock, prepare: Prepare
) -> None:
    proxies = FakeProxies()
    hub = hub_with(history, clock, prepare, proxies, connect="http://app/c")
    alice = Client(1)
    session = hub.connect(alice)
    hub.start(session, None, HANDSHAKE)
    hub.handle(session, Join(room="lobby", username="guesty"))
    hub.handle(session, Say(message="first"))
    assert alice.got("chat-history") == [] and session.name is None
    proxies.answer(Result({"user": "42", "name": "alice", "expire_at": clock.seconds() + 60}))
    assert [kind for kind, _ in alice.seen()][:4] == [
        "chat-welcome",
        "chat-authenticated",
        "chat-history",
        "chat-users",
    ]
    assert alice.got("chat-authenticated")[0]["user"] == "42"
    [(_, message)] = alice.broadcasts("chat-message")
    assert (message["username"], message["user"], message["message"]) == ("alice", "42", "first")
    # Expiry as a token's exp.
    clock.advance(61)
    assert alice.closed == (1008, "token expired")


def test_a_connection_the_connect_proxy_cannot_vouch_for_is_closed_not_a_guest(
    history: History, clock: Clock, prepare: Prepare
) -> None:
    proxies = FakeProxies()
    hub = hub_with(history, clock, prepare, proxies, connect="http://app/c")
    client = Client(1)
    session = hub.connect(client)
    hub.start(session, None, HANDSHAKE)
    hub.handle(session, Join(room="lobby", username="guesty"))
    proxies.answer(BadAnswer("no answer within 1s"))
    assert client.closed == (1013, "try again later")
    assert client.got("chat-history") == [] and not hub.sessions

    refused = Client(2)
    session = hub.connect(refused)
    hub.start(session, None, HANDSHAKE)
    hub.handle(session, Join(room="lobby", username="guesty"))
    proxies.answer(Disconnect(4001, "banned by the app"))
    assert refused.closed == (4001, "banned by the app")
    assert refused.got("chat-history") == []


def test_a_text_client_joins_the_lobby_once_the_connect_proxy_answered(
    history: History, clock: Clock, prepare: Prepare
) -> None:
    proxies = FakeProxies()
    hub = hub_with(history, clock, prepare, proxies, connect="http://app/c")
    guest, identified = Client(1, TEXT), Client(2, TEXT)
    for client in (guest, identified):
        hub.start(hub.connect(client), None, HANDSHAKE)
    assert not hub.rooms
    proxies.answer(Result({}))
    proxies.answer(Result({"user": "7", "name": "carol"}))
    assert hub.sessions[guest].name == "guest-1" and hub.sessions[identified].name == "carol"
    assert all("lobby" in hub.sessions[c].rooms for c in (guest, identified))
    assert hub.member_count("lobby") == 2


def test_messages_wait_for_the_publish_proxy_in_order_and_take_its_text(
    history: History, clock: Clock, prepare: Prepare
) -> None:
    proxies = FakeProxies()
    hub = hub_with(history, clock, prepare, proxies, publish="http://app/p")
    alice = Client(1)
    session = hub.connect(alice)
    hub.handle(session, Join(room="lobby", username="alice"))
    for text in ("one", "two", "three", "four"):
        hub.handle(session, Say(message=text))
    assert len(proxies.waiting()) == 1  # one at a time: the order is kept
    proxies.answer(Result({}))
    proxies.answer(Result({"text": "TWO"}))
    proxies.answer(Refusal("spam", "not that"))
    proxies.answer(Result({"text": "x" * 2001}))
    assert [m["message"] for _, m in alice.broadcasts("chat-message")] == ["one", "TWO"]
    assert [(e["code"], e["type"]) for e in alice.got("chat-error")] == [
        ("spam", "chat-message"),
        ("too-long", "chat-message"),
    ]
    assert [m.message for m in history.recent("lobby")] == ["one", "TWO"]


def test_the_http_api_s_messages_ask_the_publish_proxy_too(
    history: History, clock: Clock, prepare: Prepare
) -> None:
    proxies = FakeProxies()
    hub = hub_with(history, clock, prepare, proxies, publish="http://app/p")
    published = hub.publish("news", "api", "hello")
    assert proxies.answer(Result({"text": "hello!"}))["user"] is None
    assert result_of(published).message == "hello!"
    published = hub.publish("news", "api", "spam")
    proxies.answer(Refusal("spam", "no"))
    assert isinstance(failure_of(published), Refused)


def test_a_join_waits_for_the_join_proxy_and_the_room_is_named_when_refused(
    history: History, clock: Clock, prepare: Prepare
) -> None:
    proxies = FakeProxies()
    hub = hub_with(history, clock, prepare, proxies, join="http://app/j", join_rooms=("team-*",))
    alice = Client(1)
    session = hub.connect(alice)
    hub.handle(session, Join(room="lobby", username="alice"))  # not the proxy's room
    assert alice.got("chat-users") and not proxies.calls
    hub.handle(session, Join(room="team-a"))
    hub.handle(session, Say(message="hi team", room="team-a"))
    assert proxies.answer(Result({})) == {"room": "team-a", "user": None, "name": "alice"}
    assert [m["room"] for _, m in alice.broadcasts("chat-message")] == ["team-a"]
    hub.handle(session, Join(room="team-b"))
    proxies.answer(Refusal("not-a-member", "ask an admin"))
    assert alice.got("chat-error")[-1] == {
        "code": "not-a-member",
        "reason": "ask an admin",
        "type": "chat-join",
        "room": "team-b",
    }
    assert "team-b" not in session.rooms
    hub.handle(session, Join(room="team-c"))
    proxies.answer(Disconnect(4009, "enough"))
    assert alice.closed == (4009, "enough")


def test_without_a_gate_nobody_is_asked(history: History, clock: Clock, prepare: Prepare) -> None:
    hub = Hub(LocalBackplane(history), clock, prepare, server="t")
    assert hub.gated is None
    alice = Client(1)
    session = hub.connect(alice)
    hub.handle(session, Join(room="lobby", username="alice"))
    hub.handle(session, Say(message="hi"))
    assert not session.busy and [m["message"] for _, m in alice.broadcasts("chat-message")] == [
        "hi"
    ]


def test_a_failing_call_never_escapes_as_a_traceback() -> None:
    g = ProxyGate(
        ProxySettings(publish="http://app/p"),
        lambda url, request: fail(BadAnswer("cannot reach it: ConnectionRefusedError")),
        Clock().seconds,
    )
    assert failure_of(g.publish("lobby", None, "a", "b")).code == "unavailable"  # type: ignore[attr-defined]


def test_with_auth_required_a_guest_answer_still_needs_a_token_in_time(
    history: History, clock: Clock, prepare: Prepare
) -> None:
    proxies = FakeProxies()
    auth = AuthPolicy("required", Verifier(SECRET, leeway=0), (), 5.0, 0.0, "")
    g = ProxyGate(ProxySettings(connect="http://app/c"), proxies, clock.seconds)
    hub = Hub(LocalBackplane(history), clock, prepare, server="t", auth=auth, gate=g)
    client = Client(1)
    session = hub.connect(client)
    hub.start(session, None, HANDSHAKE)
    hub.handle(session, Join(room="lobby", username="guesty"))
    proxies.answer(Result({}))
    assert [e["code"] for e in client.got("chat-error")] == ["auth-required"]
    clock.advance(5)
    assert client.closed == (1008, "authentication required")


def test_a_connection_gone_before_the_answer_is_forgotten_quietly(
    history: History, clock: Clock, prepare: Prepare, log_events: list[dict[str, Any]]
) -> None:
    proxies = FakeProxies()
    hub = hub_with(history, clock, prepare, proxies, connect="http://app/c", publish="http://app/p")
    client = Client(1)
    session = hub.connect(client)
    hub.start(session, None, HANDSHAKE)
    hub.handle(session, Join(room="lobby", username="guesty"))
    hub.disconnect(client)
    proxies.answer(Result({"user": "42", "name": "alice"}))
    assert client.got("chat-authenticated") == [] and not hub.sessions
    assert hub.names.owner("alice") is None

    bob = Client(2)
    session = hub.connect(bob)
    hub.handle(session, Join(room="lobby", username="bob"))
    hub.handle(session, Say(message="last words"))
    hub.disconnect(bob)
    proxies.answer(Result({}))
    assert history.recent("lobby") == []
    assert not [e for e in log_events if e.get("log_failure") is not None]
