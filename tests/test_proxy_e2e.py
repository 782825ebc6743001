"""Proxies over real sockets: a twisted.web application on 127.0.0.1 port 0 decides.

The service runs in this process (on loopback port 0), its clients are
`websockets` clients in a thread, and the application is a real HTTP server
whose answer each test chooses (docs/hooks.md, "Decisions in: proxies").
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from net import http_request, port_of
from test_chat_e2e import chat, send, until
from test_identity_e2e import closed, error, token
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from chatservice.service import ChatService

Serve = Callable[..., ChatService]
SECRET = "identity-tests-secret-0123456789abcdef"
ADMIN_TOKEN = "proxy-admin-token"

#: An answer the application never sends.
NEVER = object()
#: What a proxy answers that is not its documented JSON, and why the chat says unavailable.
GARBAGE: list[tuple[str, Any]] = [
    ("timeout", NEVER),
    ("500", (500, b'{"result": {}}')),
    ("not-json", (200, b"<html>ok</html>")),
    ("no-key", {"ok": True}),
    ("two-keys", {"result": {}, "error": {"code": "x", "message": "y"}}),
    ("code-out-of-range", {"disconnect": {"code": 1000, "reason": "bye"}}),
]


class Application(Resource):
    """The operator's application: answers each proxy's POST as the test says.

    Attributes:
        answers: By path (``/connect``, ``/publish``, ``/join``): the request's
            JSON to the answer (a JSON-able object, ``(status, bytes)``, or `NEVER`).
        requests: Every request: path and JSON body.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.waiting: list[Request] = []

    def render_POST(self, request: Request) -> bytes | int:
        path = request.path.decode()
        assert request.content is not None
        body = json.loads(request.content.read())
        self.requests.append((path, body))
        answer = self.answers[path](body)
        if answer is NEVER:
            self.waiting.append(request)
            return NOT_DONE_YET
        if isinstance(answer, tuple):
            status, raw = answer
            request.setResponseCode(status)
            return bytes(raw)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(answer).encode()

    def asked(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.requests if p == path]


@pytest.fixture
def app() -> Iterator[tuple[Application, str]]:
    """The application, and its base URL."""
    application = Application()
    port = pytest_twisted.blockon(
        serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(application))
    )
    yield application, f"http://127.0.0.1:{port.getHost().port}"
    for request in application.waiting:
        if request.channel is not None:
            request.channel.transport.abortConnection()
    pytest_twisted.blockon(port.stopListening())


def answer(value: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda request: value


def client(
    port: int,
    headers: dict[str, str] | None = None,
    subprotocol: str = "chat.v1.json",
    query: str = "",
) -> ClientConnection:
    return connect(
        f"ws://127.0.0.1:{port}/chat{query}",
        subprotocols=[subprotocol],  # type: ignore[list-item]
        additional_headers=headers,
        open_timeout=10,
        max_queue=None,
    )


def serve_with(serve: Serve, **overrides: Any) -> int:
    settings: dict[str, Any] = {
        "database": ":memory:",
        "admin_token": ADMIN_TOKEN,
        "auth": "optional",
        "auth_secret": SECRET,
        "proxy_timeout": 0.2,
        **overrides,
    }
    return port_of(serve(**settings))


# Connect.


@pytest_twisted.ensureDeferred
async def test_the_connect_proxy_identifies_a_connection_from_its_cookie(
    serve: Serve, app: tuple[Application, str]
) -> None:
    application, url = app
    expire_at = int(time.time()) + 600

    def who(request: dict[str, Any]) -> Any:
        if request["headers"].get("cookie") == "session=alice-session":
            return {
                "result": {
                    "user": "42",
                    "name": "alice",
                    "rooms": ["staff-*"],
                    "admin": False,
                    "expire_at": expire_at,
                }
            }
        return {"result": {}}

    application.answers["/connect"] = who
    port = serve_with(
        serve,
        connect_proxy=f"{url}/connect",
        proxy_headers=("cookie",),
        private_rooms=("staff-*",),
    )

    def scenario() -> tuple[list[str], dict, dict, dict, list[str]]:
        headers = {"Cookie": "session=alice-session", "X-Secret": "not for the app"}
        with client(port, headers) as alice:
            # Sent at once, before the application answered: taken as alice's.
            send(alice, "chat-join", room="staff-room", username="ignored")
            kinds = []
            while "chat-users" not in kinds:
                kinds.append(json.loads(alice.recv(timeout=10))["type"])
            send(alice, "chat-message", message="hello staff")
            message = until(alice, "chat-message")
        with client(port, {"Cookie": "session=nobody"}) as guest:
            send(guest, "chat-join", room="staff-room", username="mallory")
            refused = error(guest)
            send(guest, "chat-join", room="lobby", username="mallory")
            guest_users = until(guest, "chat-users")
            events = []
            send(guest, "chat-message", message="hi")
            while not events or events[-1] != "chat-message":
                events.append(json.loads(guest.recv(timeout=10))["type"])
        return kinds, message, refused, guest_users, events

    kinds, message, refused, guest_users, events = await deferToThread(scenario)
    assert kinds == ["chat-welcome", "chat-authenticated", "chat-history", "chat-users"]
    assert (message["username"], message["user"], message["room"]) == ("alice", "42", "staff-room")
    assert refused["code"] == "forbidden" and refused["room"] == "staff-room"
    assert guest_users["users"] == ["mallory"] and "identified" not in guest_users
    assert "chat-authenticated" not in events
    [first, second] = application.asked("/connect")
    assert first == {
        "headers": {"cookie": "session=alice-session"},  # and nothing it was not allowed
        "address": "127.0.0.1",
        "origin": None,
        "subprotocol": "chat.v1.json",
    }
    assert second["headers"] == {"cookie": "session=nobody"}


@pytest_twisted.ensureDeferred
async def test_without_proxy_header_no_cookie_reaches_the_application(
    serve: Serve, app: tuple[Application, str]
) -> None:
    application, url = app
    application.answers["/connect"] = answer({"result": {}})
    port = serve_with(serve, connect_proxy=f"{url}/connect")

    def scenario() -> dict[str, Any]:
        with client(port, {"Cookie": "session=s", "Authorization": "Bearer x"}) as ws:
            send(ws, "chat-join", room="lobby", username="guest1")
            return until(ws, "chat-users")

    assert (await deferToThread(scenario))["users"] == ["guest1"]
    [request] = application.asked("/connect")
    assert request["headers"] == {}


@pytest_twisted.ensureDeferred
async def test_a_token_still_works_beside_the_connect_proxy(
    serve: Serve, app: tuple[Application, str]
) -> None:
    application, url = app
    application.answers["/connect"] = answer({"result": {}})
    port = serve_with(serve, connect_proxy=f"{url}/connect")

    def scenario() -> tuple[dict, dict]:
        with client(port, query=f"?token={token('u7', 'tina')}") as by_url:
            first = until(by_url, "chat-authenticated")
        with client(port) as by_frame:
            send(by_frame, "chat-auth", token=token("u8", "tom"))
            second = until(by_frame, "chat-authenticated")
        return first, second

    first, second = await deferToThread(scenario)
    assert (first["user"], first["username"]) == ("u7", "tina")
    assert (second["user"], second["username"]) == ("u8", "tom")


@pytest_twisted.ensureDeferred
async def test_the_connect_proxy_refuses_with_an_error_or_closes_with_its_code(
    serve: Serve, app: tuple[Application, str]
) -> None:
    application, url = app
    answers = iter(
        [
            {"error": {"code": "session-expired", "message": "sign in again"}},
            {"disconnect": {"code": 4001, "reason": "you are banned here"}},
        ]
    )
    application.answers["/connect"] = lambda request: next(answers)
    port = serve_with(serve, connect_proxy=f"{url}/connect")

    def scenario() -> tuple[dict, dict, tuple[int | None, str]]:
        with client(port) as refused:
            failed = error(refused)
            send(refused, "chat-join", room="lobby", username="still-a-guest")
            users = until(refused, "chat-users")
        with client(port) as dismissed:
            return failed, users, closed(dismissed)

    failed, users, close = await deferToThread(scenario)
    assert failed == {"code": "session-expired", "reason": "sign in again", "type": "chat-auth"}
    assert users["users"] == ["still-a-guest"]
    assert close == (4001, "you are banned here")


@pytest.mark.parametrize(("case", "bad"), GARBAGE, ids=[case for case, _ in GARBAGE])
@pytest_twisted.ensureDeferred
async def test_a_connect_proxy_without_a_usable_answer_closes_1013_never_a_guest(
    serve: Serve, app: tuple[Application, str], case: str, bad: Any,
    log_events: list[dict[str, Any]],
) -> None:  # fmt: skip
    application, url = app
    application.answers["/connect"] = answer(bad)
    port = serve_with(serve, connect_proxy=f"{url}/connect")

    def scenario() -> tuple[list[str], tuple[int | None, str]]:
        seen = []
        with client(port) as ws:
            with contextlib.suppress(ConnectionClosed):  # (closed already: fine)
                send(ws, "chat-join", room="lobby", username="sneaky")
            with contextlib.suppress(ConnectionClosed):
                while True:
                    seen.append(json.loads(ws.recv(timeout=10))["type"])
            return seen, closed(ws)

    started = time.monotonic()
    seen, close = await deferToThread(scenario)
    assert close == (1013, "try again later")
    assert seen == ["chat-welcome"]  # nothing as a guest
    if case == "timeout":
        assert 0.15 < time.monotonic() - started < 5
    warnings = [e for e in log_events if e.get("log_namespace") == "chatservice.hooks"]
    assert [e["proxy"] for e in warnings] == ["connect"]
    assert not [e for e in log_events if e.get("log_failure") is not None]


# Publish.


@pytest_twisted.ensureDeferred
async def test_the_publish_proxy_keeps_rewrites_or_refuses_messages(
    serve: Serve, app: tuple[Application, str]
) -> None:
    application, url = app

    def moderate(request: dict[str, Any]) -> Any:
        text = request["text"]
        if "darn" in text:
            return {"result": {"text": text.replace("darn", "d**n")}}
        if "buy" in text:
            return {"error": {"code": "spam", "message": "no ads here"}}
        if "goodbye forever" in text:
            return {"disconnect": {"code": 4002, "reason": "as you wish"}}
        return {"result": {}}

    application.answers["/publish"] = moderate
    port = serve_with(serve, auth="off", auth_secret="", publish_proxy=f"{url}/publish")

    def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with chat(port) as bob, chat(port, "plain-text") as carol:
            send(bob, "chat-join", room="lobby", username="bob")
            until(bob, "chat-users")
            carol.send("/nick carol")
            with chat(port) as alice:
                send(alice, "chat-join", room="lobby", username="alice")
                until(alice, "chat-users")
                for text in ("hello", "darn it", "buy pills", "after"):
                    send(alice, "chat-message", message=text)
                seen["error"] = error(alice)
                seen["bob"] = [until(bob, "chat-message")["message"] for _ in range(3)]
                send(alice, "chat-message", message="goodbye forever")
                seen["closed"] = closed(alice)
            carol.send("darn text client")
            lines = []
            while not any("carol:" in line for line in lines):
                lines.append(str(carol.recv(timeout=10)))
            seen["carol"] = [line for line in lines if ":" in line]
        _, _, body = http_request(
            port, "GET", "/api/rooms/lobby/history", {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        seen["history"] = [m["message"] for m in json.loads(body)["messages"]]
        return seen

    seen = await deferToThread(scenario)
    assert seen["error"] == {"code": "spam", "reason": "no ads here", "type": "chat-message"}
    assert seen["bob"] == ["hello", "d**n it", "after"]
    assert seen["closed"] == (4002, "as you wish")
    assert "[lobby] carol: d**n text client" in seen["carol"]
    assert seen["history"] == ["hello", "d**n it", "after", "d**n text client"]
    asked = application.asked("/publish")
    assert asked[0] == {"room": "lobby", "user": None, "name": "alice", "text": "hello"}
    assert [r["text"] for r in asked] == [
        "hello",
        "darn it",
        "buy pills",
        "after",
        "goodbye forever",
        "darn text client",
    ]


@pytest_twisted.ensureDeferred
async def test_an_identified_senders_user_reaches_the_publish_proxy(
    serve: Serve, app: tuple[Application, str]
) -> None:
    application, url = app
    application.answers["/publish"] = answer({"result": {"text": "x" * 3000}})
    port = serve_with(serve, publish_proxy=f"{url}/publish")

    def scenario() -> dict[str, Any]:
        with client(port, query=f"?token={token('u1', 'alice')}") as alice:
            send(alice, "chat-join", room="lobby")
            until(alice, "chat-users")
            send(alice, "chat-message", message="short")
            return error(alice)

    too_long = await deferToThread(scenario)
    # The rewritten text passes the same checks as a message.
    assert too_long["code"] == "too-long"
    [request] = application.asked("/publish")
    assert (request["user"], request["name"]) == ("u1", "alice")


@pytest.mark.parametrize(("case", "bad"), GARBAGE, ids=[case for case, _ in GARBAGE])
@pytest_twisted.ensureDeferred
async def test_a_publish_proxy_without_a_usable_answer_refuses_as_unavailable(
    serve: Serve, app: tuple[Application, str], case: str, bad: Any
) -> None:
    application, url = app
    application.answers["/publish"] = answer(bad)
    port = serve_with(serve, publish_proxy=f"{url}/publish")

    def scenario() -> tuple[dict, dict, int, dict]:
        with chat(port) as alice:
            send(alice, "chat-join", room="lobby", username="alice")
            until(alice, "chat-users")
            send(alice, "chat-message", message="hello")
            refused = error(alice)
            send(alice, "chat-users")
            still_open = until(alice, "chat-users")
        status, _, body = http_request(
            port,
            "POST",
            "/api/rooms/lobby/messages",
            {"Authorization": f"Bearer {ADMIN_TOKEN}"},
            json.dumps({"message": "from the api"}).encode(),
        )
        return refused, still_open, status, json.loads(body)

    refused, still_open, status, body = await deferToThread(scenario)
    assert refused["code"] == "unavailable" and refused["type"] == "chat-message"
    assert still_open["users"] == ["alice"]
    assert status == 503 and body["error"].startswith("unavailable")


@pytest_twisted.ensureDeferred
async def test_the_http_apis_messages_pass_the_publish_proxy(
    serve: Serve, app: tuple[Application, str]
) -> None:
    application, url = app

    def moderate(request: dict[str, Any]) -> Any:
        if request["text"] == "ad":
            return {"error": {"code": "spam", "message": "no ads"}}
        return {"result": {"text": request["text"].upper()}}

    application.answers["/publish"] = moderate
    port = serve_with(serve, publish_proxy=f"{url}/publish")

    def post(message: str) -> tuple[int, dict[str, Any]]:
        status, _, body = http_request(
            port,
            "POST",
            "/api/rooms/news/messages",
            {"Authorization": f"Bearer {ADMIN_TOKEN}"},
            json.dumps({"message": message, "username": "editor"}).encode(),
        )
        return status, json.loads(body)

    def scenario() -> tuple[tuple[int, dict], tuple[int, dict], dict]:
        with chat(port) as reader:
            send(reader, "chat-join", room="news", username="reader")
            until(reader, "chat-users")
            accepted = post("extra")
            delivered = until(reader, "chat-message")
        return accepted, post("ad"), delivered

    (status, stored), (refused_status, refused), delivered = await deferToThread(scenario)
    assert status == 201 and stored["message"] == "EXTRA" and delivered["message"] == "EXTRA"
    assert refused_status == 403 and refused == {"error": "no ads", "code": "spam"}
    assert application.asked("/publish")[0] == {
        "room": "news",
        "user": None,
        "name": "editor",
        "text": "extra",
    }


# Join.


@pytest_twisted.ensureDeferred
async def test_the_join_proxy_admits_refuses_or_closes_in_its_rooms(
    serve: Serve, app: tuple[Application, str]
) -> None:
    application, url = app
    decisions = {
        "team-a": {"result": {}},
        "team-b": {"error": {"code": "not-a-member", "message": "ask an admin"}},
        "team-x": {"disconnect": {"code": 4403, "reason": "not for you"}},
    }
    application.answers["/join"] = lambda request: decisions[request["room"]]
    port = serve_with(serve, join_proxy=f"{url}/join", join_proxy_rooms=("team-*",))

    def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with chat(port) as alice:
            send(alice, "chat-join", room="lobby", username="alice")  # not the proxy's
            until(alice, "chat-users")
            send(alice, "chat-join", room="team-a")
            send(alice, "chat-message", message="in team a", room="team-a")
            seen["message"] = until(alice, "chat-message")
            send(alice, "chat-join", room="team-b")
            seen["refused"] = error(alice)
            send(alice, "chat-join", room="team-x")
            seen["closed"] = closed(alice)
        return seen

    seen = await deferToThread(scenario)
    assert seen["message"]["room"] == "team-a"
    assert seen["refused"] == {
        "code": "not-a-member",
        "reason": "ask an admin",
        "type": "chat-join",
        "room": "team-b",
    }
    assert seen["closed"] == (4403, "not for you")
    assert [r["room"] for r in application.asked("/join")] == ["team-a", "team-b", "team-x"]
    assert application.asked("/join")[0] == {"room": "team-a", "user": None, "name": "alice"}


@pytest.mark.parametrize(("case", "bad"), GARBAGE, ids=[case for case, _ in GARBAGE])
@pytest_twisted.ensureDeferred
async def test_a_join_proxy_without_a_usable_answer_refuses_as_unavailable(
    serve: Serve, app: tuple[Application, str], case: str, bad: Any
) -> None:
    application, url = app
    application.answers["/join"] = answer(bad)
    port = serve_with(serve, join_proxy=f"{url}/join")

    def scenario() -> tuple[dict, dict]:
        with chat(port) as alice:
            send(alice, "chat-join", room="lobby", username="alice")
            refused = error(alice)
            send(alice, "chat-users", room="lobby")
            return refused, error(alice)

    refused, not_joined = await deferToThread(scenario)
    assert (refused["code"], refused["type"], refused["room"]) == (
        "unavailable",
        "chat-join",
        "lobby",
    )
    assert not_joined["code"] == "not-joined"


# The client itself, against a real HTTP server.


class Recorder(Resource):
    """Answers each POST with the next of `answers` (status, headers, body); records headers."""

    isLeaf = True

    def __init__(self, answers: list[tuple[int, dict[bytes, bytes], bytes]]) -> None:
        super().__init__()
        self.answers = answers
        self.seen: list[dict[bytes, list[bytes]]] = []

    def render_POST(self, request: Request) -> bytes:
        self.seen.append(dict(request.requestHeaders.getAllRawHeaders()))
        status, headers, body = self.answers.pop(0)
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body


@pytest_twisted.ensureDeferred
async def test_the_client_keeps_no_cookie_follows_no_redirect_and_reads_no_huge_answer() -> None:
    from chatservice.hooks.proxy import MAX_ANSWER, BadAnswer, ProxyClient, Result

    recorder = Recorder(
        [
            (200, {b"Set-Cookie": b"tracker=1; Path=/"}, b'{"result": {"a": 1}}'),
            (200, {}, b'{"result": {}}'),
            (302, {b"Location": b"/elsewhere"}, b""),
            (200, {}, b'{"result": {"pad": "' + b"x" * MAX_ANSWER + b'"}}'),
            (200, {}, b'{"result": {}}'),
        ]
    )
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(recorder))
    client = ProxyClient(reactor, 2.0)
    url = f"http://127.0.0.1:{port.getHost().port}/decide"
    try:
        assert await client.call(url, {"q": 1}) == Result({"a": 1})
        assert await client.call(url, {"q": 2}) == Result({})
        outcomes = []
        for _ in range(2):
            try:
                await client.call(url, {"q": 3})
            except BadAnswer as e:
                outcomes.append(e.reason)
        assert outcomes == ["it answered HTTP 302", f"the answer is over {MAX_ANSWER} bytes"]
        assert await client.call(url, {"q": 4}) == Result({})  # and it still works
    finally:
        await client.close()
        await port.stopListening()
    assert b"Cookie" not in recorder.seen[1]
    assert recorder.seen[0][b"Content-Type"] == [b"application/json; charset=UTF-8"]
