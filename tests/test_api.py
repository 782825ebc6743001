"""The HTTP API and /healthz, over real sockets, with the chat's clients watching."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from net import http_request, port_of
from test_chat_e2e import chat, join, send, until
from twisted.internet.threads import deferToThread

from chatservice.service import ChatService

Serve = Callable[..., ChatService]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def call(
    port: int, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    status, response_headers, data = http_request(
        port, method, path, AUTH if headers is None else headers, raw
    )
    assert response_headers["content-type"] == "application/json"
    return status, json.loads(data)


@pytest.fixture
def port(serve: Serve) -> int:
    return port_of(serve(database=":memory:", admin_token=TOKEN))


@pytest_twisted.ensureDeferred
async def test_broadcast_reaches_json_and_text_clients(port: int) -> None:
    def scenario() -> tuple[tuple[int, Any], dict[str, Any], str]:
        with chat(port) as alice, chat(port, subprotocol=None) as term:
            join(alice, "alice")
            for _ in range(4):
                term.recv(timeout=10)
            answer = call(port, "POST", "/broadcast/Maintenance%20at%20noon")
            notice = until(alice, "chat-notice")
            line = ""
            while not line.startswith("***"):
                line = term.recv(timeout=10)
            return answer, notice, line

    (status, body), notice, line = await deferToThread(scenario)
    assert status == 200
    assert body == {"message": "Maintenance at noon", "delivered": 2}
    assert notice["message"] == "Maintenance at noon"
    assert line == "*** Maintenance at noon"


@pytest_twisted.ensureDeferred
async def test_publish_is_a_normal_message_kept_in_history(port: int) -> None:
    def scenario() -> tuple[Any, dict[str, Any], Any, Any, Any]:
        with chat(port) as alice:
            join(alice, "alice", room="ops")
            status, stored = call(
                port, "POST", "/api/rooms/ops/messages", {"message": " deployed ", "username": "ci"}
            )
            assert status == 201
            seen = until(alice, "chat-message")
            history = call(port, "GET", "/api/rooms/ops/history?limit=10")
            users = call(port, "GET", "/api/rooms/ops/users")
            rooms = call(port, "GET", "/api/rooms")
            return stored, seen, history, users, rooms

    stored, seen, history, users, rooms = await deferToThread(scenario)
    assert stored == seen
    assert (stored["room"], stored["username"], stored["message"]) == ("ops", "ci", "deployed")
    assert history == (200, {"room": "ops", "messages": [stored], "recovered": False})
    assert users == (200, {"room": "ops", "users": ["alice"], "count": 1})
    assert rooms == (200, {"rooms": [{"room": "ops", "members": 1}]})


@pytest_twisted.ensureDeferred
async def test_history_since_and_limit(port: int) -> None:
    def scenario() -> list[Any]:
        ids = [
            call(port, "POST", "/api/rooms/r/messages", {"message": f"m{i}"})[1]["id"]
            for i in range(5)
        ]
        return [
            call(port, "GET", f"/api/rooms/r/history?since={ids[1]}")[1],
            call(port, "GET", "/api/rooms/r/history?limit=2")[1],
            call(port, "GET", "/api/rooms/r/history?limit=x"),
        ]

    since, limited, bad = await deferToThread(scenario)
    assert [m["message"] for m in since["messages"]] == ["m2", "m3", "m4"]
    assert since["recovered"] is True
    assert [m["message"] for m in limited["messages"]] == ["m3", "m4"]
    assert bad == (400, {"error": "limit must be a whole number"})


@pytest.mark.parametrize(
    "headers_or_query",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
)
@pytest_twisted.ensureDeferred
async def test_wrong_or_missing_token_is_401(port: int, headers_or_query: dict[str, str]) -> None:
    status, body = await deferToThread(call, port, "GET", "/api/rooms", None, headers_or_query)
    assert status == 401
    assert body == {"error": "missing or wrong token"}
    status, body = await deferToThread(call, port, "GET", "/broadcast/hi", None, headers_or_query)
    assert status == 401


@pytest_twisted.ensureDeferred
async def test_token_in_the_query_works(port: int) -> None:
    status, body = await deferToThread(call, port, "GET", f"/api/rooms?token={TOKEN}", None, {})
    assert (status, body) == (200, {"rooms": []})


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("POST", "/api/rooms/r/messages", b"{nope", 400, "the body is not JSON"),
        ("POST", "/api/rooms/r/messages", [1], 400, "the body must be an object"),
        ("POST", "/api/rooms/r/messages", {"username": "x"}, 400, "message must be a string"),
        ("POST", "/api/rooms/r/messages", {"message": "  "}, 400, "message is empty"),
        ("POST", "/api/rooms/r/messages", {"message": "x" * 2001}, 400, "at most 2000"),
        ("POST", "/api/rooms/r/messages", {"message": "m", "username": ""}, 400, "username"),
        ("POST", "/api/rooms/r/messages", b"x" * (64 * 1024 + 1), 413, "over 65536 bytes"),
        ("POST", "/api/rooms/bad%20room/messages", {"message": "m"}, 400, "room names"),
        ("GET", "/api/rooms/r/messages", None, 405, "use POST"),
        ("GET", "/api/nothing", None, 404, "no such API route"),
        ("DELETE", "/broadcast/x", None, 404, "/broadcast/<message>"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests_get_json_errors(
    port: int, method: str, path: str, body: object, status: int, error: str
) -> None:
    got_status, got = await deferToThread(call, port, method, path, body)
    assert got_status == status
    assert error in got["error"]


@pytest_twisted.ensureDeferred
async def test_healthz_is_open_and_counts_connections(port: int) -> None:
    def scenario() -> tuple[Any, Any]:
        before = call(port, "GET", "/healthz", headers={})
        with chat(port) as alice:
            join(alice, "alice")
            send(alice, "chat-typing")
            during = call(port, "GET", "/healthz", headers={})
        return before, during

    (status, before), (_, during) = await deferToThread(scenario)
    assert status == 200
    assert before["status"] == "ok" and before["connections"] == 0 and before["uptime"] >= 0
    assert during["connections"] == 1


def test_healthz_is_503_once_shutting_down() -> None:
    from twisted.web.test.requesthelper import DummyRequest

    from chatservice.web.api import Health

    health = Health(lambda: 3, lambda: 12.5)
    request = DummyRequest([b""])
    assert json.loads(health.render_GET(request))["status"] == "ok"
    assert request.responseCode == 200
    health.shutting_down = True
    request = DummyRequest([b""])
    body = json.loads(health.render_GET(request))
    assert request.responseCode == 503
    assert body == {"status": "shutting-down", "connections": 3, "uptime": 12.5}


@pytest_twisted.ensureDeferred
async def test_stopping_the_service_turns_healthz_to_503() -> None:
    from chatservice.config import Config

    service = ChatService(Config(ports=("tcp:0:interface=127.0.0.1",), database=":memory:"))
    service.startService()
    assert not service.site.health.shutting_down
    await service.stopService()
    assert service.site.health.shutting_down


@pytest_twisted.ensureDeferred
async def test_users_come_in_pages(port: int) -> None:
    def scenario() -> list[tuple[int, Any]]:
        with chat(port) as a, chat(port) as b, chat(port) as c:
            for client, name in ((b, "bob"), (a, "Alice"), (c, "carol")):
                join(client, name, room="ops")
            return [
                call(port, "GET", "/api/rooms/ops/users?limit=2"),
                call(port, "GET", "/api/rooms/ops/users?limit=2&after=bob"),
                call(port, "GET", "/api/rooms/ops/users?limit=5000"),
                call(port, "GET", "/api/rooms/empty/users"),
            ]

    first, second, too_many, empty = await deferToThread(scenario)
    assert first == (200, {"room": "ops", "users": ["Alice", "bob"], "count": 3, "next": "bob"})
    assert second == (200, {"room": "ops", "users": ["carol"], "count": 3, "after": "bob"})
    assert too_many[0] == 400 and "limit" in too_many[1]["error"]
    assert empty == (200, {"room": "empty", "users": [], "count": 0})
