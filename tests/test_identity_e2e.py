"""Identity over real sockets: tokens, two tabs, private rooms, direct messages, moderation.

One process (the service in this process on 127.0.0.1 port 0) and `websockets`
clients; tokens are signed here with PyJWT.  The same across instances on Redis:
tests/test_identity_scale_out.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_twisted
from net import http_request, port_of, start_twistd
from test_chat_e2e import chat, send, until
from twisted.internet.threads import deferToThread
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from chatservice.service import ChatService

Serve = Callable[..., ChatService]
SECRET = "identity-tests-secret-0123456789abcdef"
ADMIN_TOKEN = "api-admin-token"


def token(sub: str, name: str | None = None, key: str = SECRET, **claims: Any) -> str:
    payload: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 600, **claims}
    if name is not None:
        payload["name"] = name
    return jwt.encode(payload, key, algorithm="HS256")


def identified(port: int, tok: str, via_url: bool = False) -> tuple[ClientConnection, dict]:
    """A JSON client that sent `tok` (as chat-auth, or ``?token=``); its chat-authenticated."""
    if via_url:
        ws = connect(
            f"ws://127.0.0.1:{port}/chat?token={tok}",
            subprotocols=["chat.v1.json"],  # type: ignore[list-item]
            open_timeout=10,
            max_queue=None,
        )
    else:
        ws = chat(port)
        send(ws, "chat-auth", token=tok)
    return ws, until(ws, "chat-authenticated")


def until_where(ws: ClientConnection, kind: str, **fields: Any) -> dict[str, Any]:
    """Read events until one of `kind` with these `fields` arrives; return its payload."""
    while True:
        payload = until(ws, kind)
        if all(payload.get(k) == v for k, v in fields.items()):
            return payload


def error(ws: ClientConnection) -> dict[str, Any]:
    return until(ws, "chat-error")


def enter(ws: ClientConnection, room: str, username: str | None = None) -> dict[str, Any]:
    """Join `room`; its chat-users payload (the history came before it)."""
    send(ws, "chat-join", room=room, **({"username": username} if username else {}))
    until(ws, "chat-history")
    return until(ws, "chat-users")


def closed(ws: ClientConnection, timeout: float = 10) -> tuple[int | None, str]:
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=deadline - time.monotonic())
    except ConnectionClosed as e:
        frame = e.rcvd
        return (frame.code, frame.reason) if frame else (None, "")
    raise AssertionError("the connection stayed open")


def api(port: int, method: str, path: str, body: object = None, bearer: str = ADMIN_TOKEN):
    raw = None if body is None else json.dumps(body).encode()
    status, _, data = http_request(port, method, path, {"Authorization": f"Bearer {bearer}"}, raw)
    return status, json.loads(data)


@pytest.fixture
def port(serve: Serve) -> int:
    return port_of(
        serve(
            database=":memory:",
            admin_token=ADMIN_TOKEN,
            auth="optional",
            auth_secret=SECRET,
            private_rooms=("staff-*",),
        )
    )


@pytest_twisted.ensureDeferred
async def test_a_token_names_the_user_and_a_bad_one_is_refused_with_its_code(
    port: int, log_events: list[dict[str, Any]]
) -> None:
    now = int(time.time())
    bad = {
        "token-expired": token("u1", "alice", exp=now - 3600),
        "token-not-yet-valid": token("u1", "alice", nbf=now + 3600),
        "token-invalid": token("u1", "alice", key="another-secret-0123456789abcdef0"),
    }
    header, body, signature = token("u1", "alice").split(".")
    claims = json.loads(jwt.utils.base64url_decode(body))
    claims["admin"] = True
    forged = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    unsigned = jwt.encode({"sub": "u1", "admin": True}, None, algorithm="none")

    def scenario() -> tuple[dict, dict, list[tuple[str, str]], dict, dict]:
        refused = []
        with chat(port) as ws:
            welcome = until(ws, "chat-welcome")
            for code, tok in [
                *bad.items(),
                ("tampered", f"{header}.{forged}.{signature}"),
                ("none", unsigned),
            ]:
                send(ws, "chat-auth", token=tok)
                refused.append((code, error(ws)["code"]))
            send(ws, "chat-auth", token=token("u1", "alice"))
            me = until(ws, "chat-authenticated")
            users = enter(ws, "lobby", username="mallory")  # the token's name wins
        with identified(port, token("u2", "bob"), via_url=True)[0] as bob:
            bob_users = enter(bob, "lobby")
        metrics = http_request(port, "GET", "/metrics")[2].decode()
        return welcome, me, refused, users, bob_users, metrics

    welcome, me, refused, users, bob_users, metrics = await deferToThread(scenario)
    for result, count in [("ok", 2), ("token-expired", 1), ("token-invalid", 3)]:
        assert f'chatservice_sign_ins_total{{result="{result}"}} {count}.0' in metrics
    assert welcome["auth"] == {"mode": "optional"}
    assert refused == [
        ("token-expired", "token-expired"),
        ("token-not-yet-valid", "token-not-yet-valid"),
        ("token-invalid", "token-invalid"),
        ("tampered", "token-invalid"),
        ("none", "token-invalid"),
    ]
    assert me["user"] == "u1" and me["username"] == "alice" and me["admin"] is False
    assert users["users"] == ["alice"] and users["identified"] == ["alice"]
    assert bob_users["identified"] == ["bob"]
    # The token of the URL is in no log line, nor is any other token.
    text = json.dumps([str(e) for e in log_events])
    assert "token=[redacted]" not in text or token("u2", "bob") not in text
    for tok in (*bad.values(), token("u1", "alice")):
        assert tok.split(".")[2] not in text


@pytest_twisted.ensureDeferred
async def test_an_identified_name_is_the_users_own(port: int) -> None:
    def scenario() -> tuple[str, str, str]:
        with identified(port, token("u1", "alice"))[0] as alice:
            enter(alice, "lobby")
            send(alice, "chat-nick", username="alicia")
            fixed = error(alice)["code"]
        # Gone, alice's name is still hers: a guest cannot take it.
        with chat(port) as guest:
            send(guest, "chat-join", room="lobby", username="Alice")
            taken = error(guest)["code"]
        # Another user whose token says "alice" neither.
        with chat(port) as other:
            send(other, "chat-auth", token=token("u9", "alice"))
            other_user = error(other)["code"]
        return fixed, taken, other_user

    assert await deferToThread(scenario) == ("name-fixed", "username-taken", "username-taken")


@pytest_twisted.ensureDeferred
async def test_a_user_in_two_tabs_is_listed_once_and_leaves_with_the_last(port: int) -> None:
    def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with chat(port) as carol:
            enter(carol, "lobby", username="carol")
            tab1 = identified(port, token("u1", "alice"))[0]
            enter(tab1, "lobby")
            seen["join"] = until_where(carol, "chat-join", username="alice")
            tab2 = identified(port, token("u1", "alice"))[0]
            seen["tab2_users"] = enter(tab2, "lobby")
            send(tab2, "chat-message", message="from the second tab")
            seen["message"] = until_where(carol, "chat-message", username="alice")
            seen["tab1_message"] = until(tab1, "chat-message")
            tab1.close()
            send(carol, "chat-users")
            seen["users_after_one"] = until(carol, "chat-users")
            tab2.close()
            seen["leave"] = until_where(carol, "chat-leave", username="alice")
            send(carol, "chat-users")
            seen["users_after_both"] = until(carol, "chat-users")
        return seen

    seen = await deferToThread(scenario)
    assert seen["join"]["username"] == "alice" and seen["join"]["user"] == "u1"
    assert seen["tab2_users"]["users"] == ["alice", "carol"]
    assert seen["tab2_users"]["count"] == 2
    assert seen["message"]["username"] == "alice" and seen["message"]["user"] == "u1"
    assert seen["tab1_message"]["message"] == "from the second tab"
    # Closing one tab changed nothing for the others: no leave came before this.
    assert seen["users_after_one"]["users"] == ["alice", "carol"]
    assert seen["leave"]["username"] == "alice"
    assert seen["users_after_both"]["users"] == ["carol"]


@pytest_twisted.ensureDeferred
async def test_a_guest_cannot_join_read_or_recover_a_private_room(port: int) -> None:
    def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with identified(port, token("u1", "alice", rooms=["staff-*"]))[0] as alice:
            enter(alice, "staff-ops")
            send(alice, "chat-message", message="the root password is hunter2")
            said = until(alice, "chat-message")
            with chat(port) as guest:
                send(guest, "chat-join", room="staff-ops", username="eve")
                seen["join"] = error(guest)
                send(guest, "chat-join", room="staff-ops", username="eve", since=0)
                seen["since"] = error(guest)
                enter(guest, "lobby", username="eve")
                send(guest, "chat-message", room="staff-ops", message="hi")
                seen["post"] = error(guest)
            with identified(port, token("u3", "mallory"))[0] as mallory:
                send(mallory, "chat-join", room="staff-ops")
                seen["ungranted"] = error(mallory)
            staff = token("u1", "alice", rooms=["staff-*"])
            other = token("u3", "mallory")
            seen["api_granted"] = api(port, "GET", "/api/rooms/staff-ops/history", bearer=staff)
            seen["api_other"] = api(port, "GET", "/api/rooms/staff-ops/history", bearer=other)
            seen["api_users"] = api(port, "GET", "/api/rooms/staff-ops/users", bearer=other)
            seen["api_guest"] = api(port, "GET", "/api/rooms/staff-ops/history", bearer="")
            seen["rooms_other"] = api(port, "GET", "/api/rooms", bearer=other)
            seen["rooms_admin"] = api(port, "GET", "/api/rooms")
            seen["said"] = said
        return seen

    seen = await deferToThread(scenario)
    for what in ("join", "since", "ungranted"):
        assert seen[what]["code"] == "forbidden", what
        assert "private" in seen[what]["reason"]
    assert seen["post"]["code"] == "not-joined"
    assert seen["api_granted"][0] == 200
    assert [m["message"] for m in seen["api_granted"][1]["messages"]] == [
        "the root password is hunter2"
    ]
    assert seen["api_other"][0] == 403 and seen["api_users"][0] == 403
    assert seen["api_guest"][0] == 401
    # The name, and nothing else, of a private room.
    assert {"room": "staff-ops", "private": True} in seen["rooms_other"][1]["rooms"]
    assert {"room": "staff-ops", "private": True, "members": 1} in seen["rooms_admin"][1]["rooms"]
    assert "hunter2" not in json.dumps(seen["rooms_other"])


@pytest_twisted.ensureDeferred
async def test_direct_messages_reach_only_the_two_with_history_and_since(port: int) -> None:
    def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        alice = identified(port, token("u1", "alice"))[0]
        bob = identified(port, token("u2", "bob"))[0]
        carol = identified(port, token("u3", "carol"))[0]
        with alice, bob, carol:
            for ws in (alice, bob, carol):
                enter(ws, "lobby")
            send(alice, "chat-join", **{"with": "bob"})
            opened = until(alice, "chat-direct")
            until(alice, "chat-history")
            seen["bob_told"] = until(bob, "chat-direct")
            room = opened["room"]
            send(bob, "chat-join", **{"with": "alice"})
            assert until(bob, "chat-direct")["room"] == room
            until(bob, "chat-history")
            send(alice, "chat-message", room=room, message="just between us")
            first = until_where(bob, "chat-message", room=room)
            send(bob, "chat-message", room=room, message="agreed")
            seen["alice_got"] = until_where(alice, "chat-message", message="agreed")
            send(carol, "chat-join", room=room)
            seen["carol_join"] = error(carol)
            send(carol, "chat-join", room=room, since=0)
            seen["carol_since"] = error(carol)
            with chat(port) as guest:
                send(guest, "chat-join", username="dave", **{"with": "alice"})
                seen["guest"] = error(guest)
            send(alice, "chat-join", **{"with": "nobody"})
            seen["nobody"] = error(alice)
            seen["carol_api"] = api(
                port, "GET", f"/api/rooms/{room}/history", bearer=token("u3", "carol")
            )
            # Bob comes back with the id he last saw and gets what he missed.
            bob.close()
            send(alice, "chat-message", room=room, message="are you there?")
            until_where(alice, "chat-message", message="are you there?")
            with identified(port, token("u2", "bob"))[0] as bob2:
                send(bob2, "chat-join", since=first["id"], **{"with": "alice"})
                seen["recovered"] = until(bob2, "chat-history")
            seen["room"] = room
            # Carol heard nothing of it.
            send(carol, "chat-users")
            seen["carol_users"] = until(carol, "chat-users")
            seen["carol_left"] = []
            try:
                while True:
                    seen["carol_left"].append(json.loads(carol.recv(timeout=0.3)))
            except TimeoutError:
                pass
        return seen

    seen = await deferToThread(scenario)
    room = seen["room"]
    assert room.startswith("dm.")
    assert seen["bob_told"] == {"room": room, "with": "alice"}
    assert seen["alice_got"]["message"] == "agreed" and seen["alice_got"]["user"] == "u2"
    assert seen["carol_join"]["code"] == "forbidden"
    assert seen["carol_since"]["code"] == "forbidden"
    assert seen["guest"]["code"] == "forbidden"
    assert seen["nobody"]["code"] == "no-such-user"
    assert seen["carol_api"][0] == 403
    recovered = seen["recovered"]
    assert recovered["recovered"] is True
    assert [m["message"] for m in recovered["messages"]] == ["agreed", "are you there?"]
    assert not any(room in json.dumps(event) for event in seen["carol_left"])


@pytest_twisted.ensureDeferred
async def test_moderators_kick_ban_mute_and_delete_from_the_chat(
    port: int, log_events: list[dict[str, Any]]
) -> None:
    def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        mod = identified(port, token("m1", "mod", admin=True))[0]
        bob = identified(port, token("u2", "bob"))[0]
        with mod, bob:
            enter(mod, "lobby")
            enter(bob, "lobby")
            # Not a moderator: refused.
            send(bob, "chat-kick", username="mod")
            seen["not_admin"] = error(bob)
            # Mute, in the lobby.
            send(mod, "chat-mute", username="bob", room="lobby", duration=60, reason="calm down")
            seen["muted_ack"] = until(mod, "chat-moderated")
            seen["muted_notice"] = until(bob, "chat-notice")
            send(bob, "chat-message", message="can I speak?")
            seen["muted"] = error(bob)
            send(mod, "chat-mute", username="bob", room="lobby", duration=0)
            until(mod, "chat-moderated")
            send(bob, "chat-message", message="thanks")
            said = until_where(mod, "chat-message", message="thanks")
            # Delete it: gone for the room and from history.
            send(mod, "chat-delete", room="lobby", id=said["id"])
            seen["deleted"] = until(bob, "chat-delete")
            until(mod, "chat-moderated")
            seen["history"] = api(port, "GET", "/api/rooms/lobby/history")
            # Ban from the room: bob leaves it and cannot come back.
            send(mod, "chat-ban", username="bob", room="lobby", duration=60)
            seen["ban_leave"] = until_where(mod, "chat-leave", username="bob")
            send(bob, "chat-join", room="lobby")
            seen["banned_join"] = error(bob)
            enter(bob, "elsewhere")
            # Kick: every connection of bob closes, with the reason.
            bob_tab2 = identified(port, token("u2", "bob"))[0]
            send(mod, "chat-kick", username="bob", reason="enough")
            seen["kicked"] = closed(bob)
            seen["kicked_tab2"] = closed(bob_tab2)
            # Service ban: the next token of bob is refused.
            send(mod, "chat-ban", username="bob", duration=60)
            until(mod, "chat-moderated")
            with chat(port) as again:
                send(again, "chat-auth", token=token("u2", "bob"))
                seen["banned_auth"] = closed(again)
        return seen

    seen = await deferToThread(scenario)
    assert seen["not_admin"]["code"] == "forbidden"
    assert seen["muted_ack"]["action"] == "mute" and seen["muted_ack"]["until"]
    assert (
        "muted" in seen["muted_notice"]["message"]
        and "calm down" in seen["muted_notice"]["message"]
    )
    assert seen["muted"]["code"] == "muted"
    assert seen["deleted"]["by"] == "mod"
    assert seen["history"][1]["messages"] == []
    assert seen["ban_leave"]["username"] == "bob"
    assert seen["banned_join"]["code"] == "forbidden"
    assert seen["kicked"] == (1008, "kicked by mod: enough")
    assert seen["kicked_tab2"] == (1008, "kicked by mod: enough")
    assert seen["banned_auth"][0] == 1008 and "banned" in seen["banned_auth"][1]
    logged = [e.get("log_format", "") for e in log_events]
    assert sum("moderation:" in f for f in logged) >= 6
    kicks = [e for e in log_events if "moderation:" in e.get("log_format", "")]
    assert {e.get("by") for e in kicks} == {"mod"}


@pytest_twisted.ensureDeferred
async def test_moderation_and_tokens_through_the_http_api(port: int) -> None:
    def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        seen["mint_denied"] = api(
            port, "POST", "/api/tokens", {"user": "x"}, bearer=token("u2", "b")
        )
        status, minted = api(port, "POST", "/api/tokens", {"user": "u5", "name": "erin"})
        seen["mint"] = (status, minted)
        erin, me = identified(port, minted["token"])
        seen["erin"] = me
        with erin, chat(port) as guest:
            enter(erin, "lobby")
            enter(guest, "lobby", username="gus")
            send(guest, "chat-message", message="spam")
            spam = until_where(erin, "chat-message", username="gus")
            seen["delete"] = api(port, "DELETE", f"/api/rooms/lobby/messages/{spam['id']}")
            seen["delete_event"] = until(erin, "chat-delete")
            seen["delete_again"] = api(port, "DELETE", f"/api/rooms/lobby/messages/{spam['id']}")
            seen["delete_odd"] = [
                api(port, "DELETE", f"/api/rooms/lobby/messages/{odd}")[0]
                for odd in ("%C2%B2", "99999999999999999999999", "0", "x")
            ]
            seen["mute"] = api(port, "POST", "/api/users/gus/mute", {"duration": 60})
            send(guest, "chat-message", message="more spam")
            seen["muted"] = error(guest)
            seen["kick"] = api(port, "POST", "/api/users/gus/kick", {"reason": "spam"})
            seen["kicked"] = closed(guest)
            seen["bad"] = api(port, "POST", "/api/users/gus/ban", {"duration": "forever"})
            seen["ban"] = api(port, "POST", "/api/users/erin/ban", {"room": "lobby"})
            seen["ban_leave"] = until_where(erin, "chat-leave", username="erin")
            seen["ban_notice"] = until(erin, "chat-notice")
        seen["metrics"] = http_request(port, "GET", "/metrics")[2].decode()
        return seen

    seen = await deferToThread(scenario)
    assert seen["mint_denied"][0] == 403
    assert seen["mint"][0] == 201 and seen["mint"][1]["user"] == "u5"
    assert seen["erin"]["username"] == "erin"
    assert seen["delete"] == (
        200,
        {"action": "delete", "room": "lobby", "id": seen["delete_event"]["id"], "by": "api"},
    )
    assert seen["delete_again"][0] == 404
    assert seen["delete_odd"] == [404, 404, 404, 404]
    assert seen["mute"][0] == 200 and seen["mute"][1]["action"] == "mute"
    assert seen["muted"]["code"] == "muted"
    assert seen["kick"][0] == 200
    assert seen["kicked"] == (1008, "kicked by api: spam")
    for action in ("kick", "ban", "mute", "delete"):
        moderated = f'chatservice_moderation_actions_total{{action="{action}"}} 1.0'
        assert moderated in seen["metrics"]
    assert seen["bad"][0] == 400
    status, banned = seen["ban"]
    assert status == 200 and banned["action"] == "ban" and banned["room"] == "lobby"
    assert banned["until"]  # an hour, by default
    assert seen["ban_notice"]["message"].startswith("you were banned from #lobby by api until")


@pytest_twisted.ensureDeferred
async def test_required_auth_closes_the_unidentified_and_the_expired(serve: Serve) -> None:
    port = port_of(
        serve(
            database=":memory:",
            auth="required",
            auth_secret=SECRET,
            auth_timeout=0.5,
            auth_leeway=0,
        )
    )

    def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with chat(port) as ws:
            send(ws, "chat-join", room="lobby", username="anon")
            seen["refused"] = error(ws)
            seen["closed"] = closed(ws)
        short = token("u1", "alice", exp=int(time.time()) + 2)
        ws, _ = identified(port, short)
        with ws:
            enter(ws, "lobby")
            seen["expired"] = closed(ws, timeout=5)
        # A refresh before the end keeps it open.
        ws, _ = identified(port, token("u1", "alice", exp=int(time.time()) + 2))
        with ws:
            send(ws, "chat-auth", token=token("u1", "alice"))
            until(ws, "chat-authenticated")
            time.sleep(3)
            enter(ws, "lobby")
            send(ws, "chat-auth", token=token("u2", "bob"))
            seen["other_user"] = error(ws)
        # A text client is not put in the lobby before /auth.
        with chat(port, subprotocol=None) as term:
            term.send("/auth " + token("u3", "tom"))
            lines = [term.recv(timeout=10) for _ in range(4)]
            seen["text"] = lines
        return seen

    seen = await deferToThread(scenario)
    assert seen["refused"]["code"] == "auth-required"
    assert seen["closed"] == (1008, "authentication required")
    metrics = (await deferToThread(http_request, port, "GET", "/metrics"))[2].decode()
    assert 'chatservice_auth_closes_total{reason="no-token"} 1.0' in metrics
    assert 'chatservice_auth_closes_total{reason="token-expired"} 1.0' in metrics
    assert seen["expired"] == (1008, "token expired")
    assert seen["other_user"]["code"] == "token-other-user"
    assert "* You are tom (identified)" in seen["text"]
    assert "* Users in #lobby: tom" in seen["text"]


@pytest_twisted.ensureDeferred
async def test_tokens_signed_with_a_private_key_and_checked_with_its_public_key(
    serve: Serve, tmp_path: Any
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "public.pem"
    path.write_bytes(public)
    port = port_of(
        serve(
            database=":memory:",
            auth="required",
            auth_public_key=str(path),
            auth_audience="chat.example.com",
        )
    )
    now = int(time.time())

    def signed(**claims: Any) -> str:
        claims = {"sub": "u1", "name": "alice", "exp": now + 600, **claims}
        return jwt.encode(claims, key, algorithm="ES256")

    def hmac_signed(claims: dict[str, Any], secret: bytes) -> str:
        # (PyJWT itself refuses to sign with a public key as the secret.)
        def part(value: dict[str, Any]) -> str:
            return jwt.utils.base64url_encode(json.dumps(value).encode()).decode()

        body = f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}"
        mac = hmac.new(secret, body.encode(), hashlib.sha256).digest()
        return f"{body}.{jwt.utils.base64url_encode(mac).decode()}"

    def scenario() -> list[str]:
        answers = []
        with chat(port) as ws:
            for tok in (
                signed(aud="elsewhere"),
                signed(),  # no audience at all
                # The public key as an HMAC secret: the classic key confusion.
                hmac_signed({"sub": "u1", "aud": "chat.example.com"}, public),
                signed(aud="chat.example.com", exp=now - 60),
            ):
                send(ws, "chat-auth", token=tok)
                answers.append(error(ws)["code"])
            send(ws, "chat-auth", token=signed(aud="chat.example.com"))
            answers.append(until(ws, "chat-authenticated")["username"])
        return answers

    assert await deferToThread(scenario) == [
        "token-wrong-audience",
        "token-wrong-audience",
        "token-invalid",
        "token-expired",
        "alice",
    ]


def test_no_token_is_written_to_the_log_even_when_debugging(twistd: Path, tmp_path: Path) -> None:
    server, port = start_twistd(
        twistd,
        "--log-level",
        "debug",
        "--database",
        ":memory:",
        "--admin-token",
        ADMIN_TOKEN,
        "--auth",
        "optional",
        "--auth-secret",
        SECRET,
        cwd=tmp_path,
    )
    tok = token("u1", "alice")
    refresh, tom = token("u1", "alice", refreshed=True), token("u3", "tom")
    try:
        ws, me = identified(port, tok, via_url=True)
        with ws:
            enter(ws, "lobby")
            send(ws, "chat-auth", token=refresh)
            until(ws, "chat-authenticated")
        with chat(port, subprotocol=None) as term:
            term.send("/auth " + tom)
            lines = [term.recv(timeout=10) for _ in range(6)]
        status, _, _ = http_request(port, "GET", f"/api/rooms?token={ADMIN_TOKEN}")
        assert status == 200
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    assert me["username"] == "alice"
    # A text client put in the lobby as a guest comes back identified.
    assert "* You are tom (identified)" in lines
    assert "identified user=u1" in output  # the log was written, at debug level
    assert "GET /chat?token=[redacted]" in output  # Autobahn's and the access log's lines
    for signed in (tok, refresh, tom):
        assert signed.split(".")[2] not in output
    assert "the token is not logged" in output
    assert ADMIN_TOKEN not in output


def on_disk(tmp_path: Path) -> dict[str, Any]:
    """Settings of a service whose history (and so its kept state) survives a restart."""
    return {"database": str(tmp_path / "chat.sqlite3"), "auth": "optional", "auth_secret": SECRET}


@pytest_twisted.ensureDeferred
async def test_a_ban_outlives_a_restart(serve: Serve, tmp_path: Path) -> None:
    settings = on_disk(tmp_path)
    service = serve(**settings)
    port = port_of(service)

    def ban() -> None:
        with identified(port, token("m1", "mod", admin=True))[0] as mod:
            send(mod, "chat-ban", username="bob", duration=600, reason="spam")
            until(mod, "chat-moderated")
            send(mod, "chat-mute", username="carol", room="lobby", duration=600)
            until(mod, "chat-moderated")

    await deferToThread(ban)
    await service.stopService()
    port = port_of(serve(**settings))

    def after() -> tuple[tuple[int | None, str], dict[str, Any]]:
        with chat(port) as bob:
            send(bob, "chat-auth", token=token("u2", "bob"))
            banned = closed(bob)
        with identified(port, token("u3", "carol"))[0] as carol:
            enter(carol, "lobby")
            send(carol, "chat-message", message="hello?")
            muted = error(carol)
        return banned, muted

    banned, muted = await deferToThread(after)
    assert banned[0] == 1008 and "banned" in banned[1] and "spam" in banned[1]
    assert muted["code"] == "muted"


@pytest_twisted.ensureDeferred
async def test_names_and_conversations_outlive_a_restart(serve: Serve, tmp_path: Path) -> None:
    settings = on_disk(tmp_path)
    service = serve(**settings)
    port = port_of(service)

    def before() -> str:
        with identified(port, token("u2", "bob"))[0]:
            pass
        with identified(port, token("u1", "alice"))[0] as alice:
            send(alice, "chat-join", **{"with": "bob"})
            room = until(alice, "chat-direct")["room"]
            until(alice, "chat-history")
            send(alice, "chat-message", room=room, message="before the restart")
            until_where(alice, "chat-message", room=room)
        return str(room)

    room = await deferToThread(before)
    await service.stopService()
    port = port_of(serve(**settings))

    def after() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
        # Bob is not back, yet alice finds him by name; a guest cannot be him.
        with chat(port) as guest:
            send(guest, "chat-join", username="Bob")
            taken = error(guest)
        with identified(port, token("u1", "alice"))[0] as alice:
            send(alice, "chat-join", **{"with": "bob"})
            opened = until_where(alice, "chat-direct", resumed=None)
            history = until(alice, "chat-history")
        # Bob, signing in on a new device, is told of his conversations.
        with identified(port, token("u2", "bob"))[0] as bob:
            resumed = until(bob, "chat-direct")
        return taken, opened, history, resumed

    taken, opened, history, resumed = await deferToThread(after)
    assert taken["code"] == "username-taken"
    assert opened == {"room": room, "with": "bob"}
    assert [m["message"] for m in history["messages"]] == ["before the restart"]
    assert resumed == {"room": room, "with": "alice", "resumed": True}
