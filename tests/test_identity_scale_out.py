"""Identity across two real twistd instances on one real redis-server.

The same user on both instances, a private room, direct messages and every
moderation action, each done on one instance and seen on the other.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from net import http_request
from test_chat_e2e import chat, send, until
from test_identity_e2e import SECRET, closed, enter, error, identified, token, until_where
from test_scale_out import Instance, eventually, instances  # noqa: F401  (instances: a fixture)

AUTH = ("--auth", "optional", "--auth-secret", SECRET, "--private-room", "staff-*")


def jwt_api(instance: Instance, method: str, path: str, bearer: str) -> tuple[int, Any]:
    status, _, body = http_request(
        instance.port, method, path, {"Authorization": f"Bearer {bearer}"}
    )
    return status, json.loads(body)


def test_identity_spans_instances(instances: Callable[..., Instance]) -> None:  # noqa: F811
    one, two = instances(*AUTH), instances(*AUTH)
    eventually(lambda: one.health()[0] == two.health()[0] == 200)  # connected to Redis
    alice_1 = identified(one.port, token("u1", "alice", rooms=["staff-*"]))[0]
    alice_2 = identified(two.port, token("u1", "alice", rooms=["staff-*"]))[0]
    bob = identified(two.port, token("u2", "bob"))[0]
    mod = identified(one.port, token("m1", "mod", admin=True))[0]
    with alice_1, alice_2, bob, mod, chat(two.port) as guest:
        # One user on both instances: listed once, leaves with the last.
        enter(mod, "lobby")
        enter(alice_1, "lobby")
        assert until_where(mod, "chat-join", username="alice")["user"] == "u1"
        users = enter(alice_2, "lobby")
        assert users["users"] == ["alice", "mod"] and users["identified"] == ["alice", "mod"]
        enter(bob, "lobby")
        until_where(mod, "chat-join", username="bob")

        # Her name is hers on the other instance too.
        send(guest, "chat-join", room="lobby", username="alice")
        assert error(guest)["code"] == "username-taken"
        enter(guest, "lobby", username="gus")

        # A guest on one instance holding the name a user then signs in with on
        # the other is renamed there.
        with chat(two.port) as squatter:
            enter(squatter, "lobby", username="dave")
            with identified(one.port, token("u4", "dave"))[0]:
                notice = until(squatter, "chat-notice")
                assert notice["message"].startswith("dave is an identified user's name")
                renamed = until_where(mod, "chat-nick", old="dave")
                assert renamed["new"].startswith("guest-")

        # A private room: granted on one instance, refused on the other.
        enter(alice_1, "staff-ops")
        send(alice_1, "chat-message", room="staff-ops", message="secret plans")
        until_where(alice_1, "chat-message", message="secret plans")
        send(guest, "chat-join", room="staff-ops", since=0)
        assert error(guest)["code"] == "forbidden"
        assert jwt_api(two, "GET", "/api/rooms/staff-ops/history", token("u2", "bob"))[0] == 403

        # Direct messages between instances reach only the two.
        send(bob, "chat-join", **{"with": "alice"})
        room = until(bob, "chat-direct")["room"]
        told_1 = until(alice_1, "chat-direct")
        told_2 = until(alice_2, "chat-direct")
        assert told_1 == told_2 == {"room": room, "with": "bob"}
        send(alice_1, "chat-join", **{"with": "bob"})
        until(alice_1, "chat-history")
        send(bob, "chat-message", room=room, message="psst, alice")
        assert until_where(alice_1, "chat-message", room=room)["message"] == "psst, alice"
        send(guest, "chat-join", room=room)
        assert error(guest)["code"] == "forbidden"

        # Moderation on instance one acts on instance two.
        send(mod, "chat-mute", username="gus", duration=60)
        until(mod, "chat-moderated")
        assert "muted" in until(guest, "chat-notice")["message"]
        send(guest, "chat-message", message="hello?")
        assert error(guest)["code"] == "muted"
        send(bob, "chat-message", room="lobby", message="delete me")
        said = until_where(mod, "chat-message", message="delete me")
        send(mod, "chat-delete", room="lobby", id=said["id"])
        assert until(bob, "chat-delete")["id"] == said["id"]
        status, history = two.api("GET", "/api/rooms/lobby/history")
        assert said["id"] not in [m["id"] for m in history["messages"]]
        send(mod, "chat-ban", username="bob", room="lobby", duration=60)
        until(mod, "chat-moderated")
        assert until_where(mod, "chat-leave", username="bob")
        send(bob, "chat-join", room="lobby")
        assert error(bob)["code"] == "forbidden"
        status, _ = one.api("POST", "/api/users/gus/kick", {"reason": "bye"})
        assert status == 200
        assert closed(guest) == (1008, "kicked by api: bye")

        # Alice's leave comes with her last connection, wherever it is.
        alice_2.close()
        send(mod, "chat-users")
        assert "alice" in until(mod, "chat-users")["users"]
        alice_1.close()
        assert until_where(mod, "chat-leave", username="alice")["user"] == "u1"

    # An instance started later knows the bans and mutes in force.
    three = instances(*AUTH)
    eventually(lambda: three.health()[0] == 200)  # connected to Redis
    bob_3, _ = identified(three.port, token("u2", "bob"))
    with bob_3:
        # ... and a user's direct conversations, told at sign-in.
        assert until(bob_3, "chat-direct") == {"room": room, "with": "alice", "resumed": True}
        send(bob_3, "chat-join", room="lobby")
        assert error(bob_3)["code"] == "forbidden"
