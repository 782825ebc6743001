"""Identity in the hub, without a reactor or sockets: tokens, tabs, private rooms, moderation.

Driven with a `Clock` (token deadlines and expiry) and recording members; the
same over real sockets: tests/test_identity_e2e.py.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from members import Client, Prepare
from twisted.internet.task import Clock

from chatservice.backplane.history import History
from chatservice.backplane.local import LocalBackplane
from chatservice.chat.hub import Hub
from chatservice.chat.identity import AuthPolicy, Verifier
from chatservice.chat.messages import (
    TEXT,
    Authenticate,
    Delete,
    Direct,
    Join,
    Leave,
    Moderate,
    Nick,
    Say,
    parse_json,
    parse_text,
)
from chatservice.chat.messages import ProtocolError as Refused
from chatservice.chat.moderation import Sanction, Sanctions
from chatservice.chat.presence import Roster
from chatservice.chat.session import Session

SECRET = "hub-identity-secret-0123456789abcdef"


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(time.time())  # tokens' exp are real times
    return clock


def policy(mode: str = "optional", timeout: float = 5.0) -> AuthPolicy:
    return AuthPolicy(mode, Verifier(SECRET, leeway=0), ("staff-*",), timeout, 0.0, "")


def hub_with(history: History, clock: Clock, prepare: Prepare, mode: str = "optional") -> Hub:
    return Hub(LocalBackplane(history), clock, prepare, server="t", auth=policy(mode))


def token(sub: str, name: str, ttl: float = 600, **claims: Any) -> str:
    exp = int(time.time() + ttl)
    return jwt.encode({"sub": sub, "name": name, "exp": exp, **claims}, SECRET, "HS256")


def user(hub: Hub, conn_id: int, sub: str, name: str, **claims: Any) -> tuple[Client, Session]:
    client = Client(conn_id)
    session = hub.connect(client)
    hub.handle(session, Authenticate(token(sub, name, **claims)))
    assert client.got("chat-authenticated"), client.got("chat-error")
    return client, session


def test_roster_lists_a_repeated_name_once_and_drops_it_with_the_last() -> None:
    roster = Roster()
    assert roster.add("alice") is True
    assert roster.add("bob") is True
    assert roster.add("alice") is False
    assert roster.all() == ["alice", "bob"] and len(roster) == 2
    assert roster.remove("alice") is False
    assert roster.all() == ["alice", "bob"]
    assert roster.remove("alice") is True
    assert roster.all() == ["bob"]
    assert roster.remove("alice") is False


def test_sanctions_apply_to_their_room_or_everywhere_until_they_end() -> None:
    now = [1000.0]
    sanctions = Sanctions(lambda: now[0])
    assert not sanctions
    sanctions.impose(Sanction("mute", "user:u1", "lobby", 1060, "mod"))
    sanctions.impose(Sanction("ban", "name:gus", None, 1100, "mod"))
    assert sanctions.find("mute", ["user:u1"], "lobby") is not None
    assert sanctions.find("mute", ["user:u1"], "other") is None
    assert sanctions.find("ban", ["name:gus"], "anywhere") is not None
    assert sanctions.find("ban", ["name:gus"]) is not None
    now[0] = 1061
    assert sanctions.find("mute", ["user:u1"], "lobby") is None
    sanctions.impose(Sanction("ban", "name:gus", None, 0, "mod"))  # lifted
    assert sanctions.find("ban", ["name:gus"]) is None and len(sanctions) == 0


def test_new_frames_parse_and_bad_ones_are_refused() -> None:
    assert parse_json(b'{"type":"chat-auth","payload":{"token":" t.o.k "}}') == Authenticate(
        "t.o.k"
    )
    assert parse_text("/auth t.o.k") == Authenticate("t.o.k")
    assert parse_json(b'{"type":"chat-join","payload":{"with":"bob","since":3}}') == Direct(
        "bob", 3
    )
    assert parse_json(
        b'{"type":"chat-ban","payload":{"username":"bob","room":"r","duration":60,"reason":"x"}}'
    ) == Moderate("ban", "bob", "r", 60.0, "x")
    assert parse_json(b'{"type":"chat-kick","payload":{"username":"bob","room":"r"}}') == Moderate(
        "kick", "bob"
    )
    assert parse_json(b'{"type":"chat-delete","payload":{"room":"r","id":7}}') == Delete("r", 7)
    for bad in (
        b'{"type":"chat-auth","payload":{"token":""}}',
        b'{"type":"chat-auth","payload":{"token":5}}',
        b'{"type":"chat-mute","payload":{"username":"bob","duration":-1}}',
        b'{"type":"chat-mute","payload":{"username":"bob","duration":true}}',
        b'{"type":"chat-delete","payload":{"room":"r","id":"7"}}',
        b'{"type":"chat-delete","payload":{"room":"r","id":99999999999999999999}}',
        b'{"type":"chat-join","payload":{"with":""}}',
    ):
        with pytest.raises(Refused):
            parse_json(bad)


def test_off_is_todays_chat_and_takes_no_tokens(history: History, clock: Clock) -> None:
    hub = Hub(LocalBackplane(history), clock, Prepare(), server="t")
    client = Client(1)
    session = hub.connect(client)
    assert "auth" not in client.got("chat-welcome")[0]
    with pytest.raises(Refused) as refused:
        hub.handle(session, Authenticate(token("u1", "alice")))
    assert refused.value.code == "bad-type"
    hub.handle(session, Join("staff-x", "alice"))  # no private rooms without --auth
    assert "identified" not in client.got("chat-users")[0]


def test_required_closes_a_connection_without_a_token_in_time(
    history: History, clock: Clock
) -> None:
    hub = hub_with(history, clock, Prepare(), mode="required")
    lazy, late = Client(1), Client(2)
    lazy_session = hub.connect(lazy)
    late_session = hub.connect(late)
    assert lazy.got("chat-welcome")[0]["auth"] == {"mode": "required"}
    with pytest.raises(Refused) as refused:
        hub.handle(lazy_session, Join("lobby", "anon"))
    assert refused.value.code == "auth-required"
    clock.advance(4.9)
    hub.handle(late_session, Authenticate(token("u1", "alice")))
    clock.advance(0.2)
    assert lazy.closed == (1008, "authentication required")
    assert late.closed is None and lazy_session not in hub.sessions.values()


def test_a_token_ends_the_connection_when_it_expires_unless_refreshed(
    history: History, clock: Clock
) -> None:
    hub = hub_with(history, clock, Prepare())
    short, _short_session = user(hub, 1, "u1", "alice", ttl=30)
    kept, kept_session = user(hub, 2, "u2", "bob", ttl=30)
    clock.advance(20)
    hub.handle(kept_session, Authenticate(token("u2", "bob", ttl=600)))
    with pytest.raises(Refused) as refused:
        hub.handle(kept_session, Authenticate(token("u1", "alice")))
    assert refused.value.code == "token-other-user"
    clock.advance(15)
    assert short.closed == (1008, "token expired")
    assert kept.closed is None


def test_a_refreshed_token_without_the_grant_leaves_the_private_room(
    history: History, clock: Clock
) -> None:
    hub = hub_with(history, clock, Prepare())
    alice, session = user(hub, 1, "u1", "alice", rooms=["staff-*"])
    hub.handle(session, Join("staff-ops"))
    assert alice.got("chat-users")[-1]["users"] == ["alice"]
    hub.handle(session, Authenticate(token("u1", "alice", rooms=[])))
    assert "staff-ops" not in session.rooms
    assert alice.got("chat-error")[-1]["code"] == "forbidden"


def test_two_connections_of_one_user_are_one_member(
    history: History, clock: Clock, prepare: Prepare
) -> None:
    hub = hub_with(history, clock, prepare)
    carol = Client(9)
    carol_session = hub.connect(carol)
    hub.handle(carol_session, Join("lobby", "carol"))
    _tab1, s1 = user(hub, 1, "u1", "alice")
    tab2, s2 = user(hub, 2, "u1", "alice")
    hub.handle(s1, Join("lobby"))
    hub.handle(s2, Join("lobby"))
    joins = [p["username"] for k, p in carol.broadcasts() if k == "chat-join"]
    assert joins == ["carol", "alice"]
    assert tab2.got("chat-users")[-1] == {
        "room": "lobby",
        "users": ["alice", "carol"],
        "count": 2,
        "identified": ["alice"],
    }
    with pytest.raises(Refused) as refused:
        hub.handle(s2, Nick("alicia"))
    assert refused.value.code == "name-fixed"
    carol.reset()
    hub.handle(s1, Leave())
    assert carol.broadcasts() == []
    hub.disconnect(tab2)
    [(kind, payload)] = carol.broadcasts()
    assert (kind, payload["username"], payload["user"]) == ("chat-leave", "alice", "u1")


def test_an_identified_user_takes_its_name_from_a_guest_here(
    history: History, clock: Clock
) -> None:
    hub = hub_with(history, clock, Prepare())
    guest = Client(5)
    guest_session = hub.connect(guest)
    hub.handle(guest_session, Join("lobby", "alice"))
    _alice, session = user(hub, 1, "u1", "alice")
    assert session.name == "alice"
    assert guest_session.name is not None and guest_session.name.startswith("guest-")
    assert "alice is an identified user's name" in guest.got("chat-notice")[0]["message"]


def test_text_clients_join_the_lobby_once_identified(history: History, clock: Clock) -> None:
    hub = hub_with(history, clock, Prepare(), mode="required")
    term = Client(3, TEXT)
    session = hub.connect(term)
    hub.start(session)
    assert not session.rooms
    hub.start(session, token("u3", "tom"))
    assert list(session.rooms) == ["lobby"] and session.name == "tom"


def test_a_text_client_closed_while_signing_in_joins_nothing(
    history: History, clock: Clock
) -> None:
    """A terminal that is closed as it hears it is signed in (a slow consumer) is not
    put in the lobby: no room is made, and watched, for a connection that is gone."""
    hub = hub_with(history, clock, Prepare(), mode="required")

    class Fragile(Client):
        def send_event(self, event: Any) -> None:
            super().send_event(event)
            if event[0] == "chat-authenticated":
                hub.close(self, 1008, "slow consumer")

    term = Fragile(3, TEXT)
    hub.start(hub.connect(term), token("u3", "tom"))
    assert term.closed == (1008, "slow consumer")
    assert hub.live_rooms() == [] and not hub.sessions


@pytest.mark.parametrize("frame", ['{"type": "chat-kick", "payload": {"username": "bob"}}'])
def test_a_frame_before_the_token_is_refused_naming_its_type(
    history: History, clock: Clock, frame: str
) -> None:
    """docs/protocol.md: an error's ``type`` is the offending frame's."""
    hub = hub_with(history, clock, Prepare(), mode="required")
    session = hub.connect(Client(1))
    with pytest.raises(Refused) as refused:
        hub.handle(session, parse_json(frame.encode()))
    assert (refused.value.code, refused.value.type) == ("auth-required", "chat-kick")


def test_moderation_needs_an_admin_and_is_applied_here(history: History, clock: Clock) -> None:
    hub = hub_with(history, clock, Prepare())
    mod, mod_session = user(hub, 1, "m1", "mod", admin=True)
    bob, bob_session = user(hub, 2, "u2", "bob")
    hub.handle(mod_session, Join("lobby"))
    hub.handle(bob_session, Join("lobby"))
    with pytest.raises(Refused) as refused:
        hub.handle(bob_session, Moderate("kick", "mod"))
    assert refused.value.code == "forbidden"
    hub.handle(mod_session, Moderate("mute", "bob", "lobby", 60, "shh"))
    assert mod.got("chat-moderated")[-1]["action"] == "mute"
    with pytest.raises(Refused) as refused:
        hub.handle(bob_session, Say("hello"))
    assert refused.value.code == "muted"
    clock.advance(61)
    hub.handle(bob_session, Say("hello again"))
    said = [p for k, p in mod.broadcasts() if k == "chat-message"][-1]
    assert said["message"] == "hello again" and said["user"] == "u2"
    hub.handle(mod_session, Delete("lobby", said["id"]))
    assert [p for k, p in bob.broadcasts() if k == "chat-delete"] == [
        {"room": "lobby", "id": said["id"], "by": "mod"}
    ]
    assert history.recent("lobby") == []
    hub.handle(mod_session, Delete("lobby", said["id"]))
    assert mod.got("chat-error")[-1]["code"] == "no-such-message"
    hub.handle(mod_session, Moderate("ban", "bob", None, 60, "out"))
    assert bob.closed == (1008, "banned by mod: out")


def test_direct_conversations_are_for_identified_users_only(history: History, clock: Clock) -> None:
    hub = hub_with(history, clock, Prepare())
    alice, a = user(hub, 1, "u1", "alice")
    bob, _b = user(hub, 2, "u2", "bob")
    guest = Client(3)
    g = hub.connect(guest)
    hub.handle(g, Join("lobby", "gus"))
    hub.handle(a, Direct("bob"))
    [opened] = alice.got("chat-direct")
    assert bob.got("chat-direct") == [{"room": opened["room"], "with": "alice"}]
    for who, command, code in [
        (g, Direct("alice"), "forbidden"),
        (a, Direct("gus"), "no-such-user"),  # (answered once the name is looked up)
        (a, Direct("ALICE"), "bad-payload"),
        (g, Join(opened["room"]), "forbidden"),
    ]:
        client = who.member
        assert isinstance(client, Client)
        client.reset()
        try:
            hub.handle(who, command)
        except Refused as refused:
            assert refused.code == code
        else:
            assert client.got("chat-error")[-1]["code"] == code
