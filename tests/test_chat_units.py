"""The hub's units on their own, each with a fake of the one backplane role it uses.

No reactor and no sockets: a `Clock` and recording members.  What the hub
does with them together is in tests/test_hub.py and its neighbours.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from members import Client, Prepare
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from chatservice.backplane.codec import order_json, parse_order
from chatservice.backplane.values import (
    DirectOrder,
    Displacement,
    ModerationOrder,
    StoredMessage,
    Unavailable,
    UnknownOrder,
)
from chatservice.chat.fanout import FanOut
from chatservice.chat.histories import JoinHistories
from chatservice.chat.identity import Identity
from chatservice.chat.messages import JSON, TEXT, Join, ProtocolError, Say
from chatservice.chat.moderation import Sanctions
from chatservice.chat.names import Names
from chatservice.chat.policy import FloodGuard, TokenBucket
from chatservice.chat.rooms import RoomPresence
from chatservice.chat.session import Session
from chatservice.counters import Counters


class Directory:
    """A `NameDirectory` whose claims answer when the test says."""

    guest_prefix = ""

    def __init__(self) -> None:
        self.claims: list[tuple[str, Deferred[bool]]] = []
        self.released: list[str] = []

    def claim(self, name: str, conn_id: int, user: str | None = None) -> Deferred[bool]:
        answer: Deferred[bool] = Deferred()
        self.claims.append((name, answer))
        return answer

    def holder(self, name: str) -> Deferred[str | None]:
        return succeed(None)

    def release(self, name: str, conn_id: int) -> None:
        self.released.append(name)

    def converse(self, user: str, room: str, other: str) -> None:
        pass

    def conversations(self, user: str) -> Deferred[dict[str, str]]:
        return succeed({})


class Nobody:
    """A `PresenceRelay` with nobody elsewhere."""

    def joined(self, room: str, conn_id: int, name: str, user: str | None = None) -> None:
        pass

    def left(self, room: str, conn_id: int, name: str) -> None:
        pass

    def renamed(self, rooms: Any, conn_id: int, old: str, new: str) -> None:
        pass

    def typing(self, room: str, conn_id: int, name: str) -> None:
        pass

    def members(self, room: str) -> Deferred[list[str]]:
        return succeed([])


def session_of(client: Client, clock: Clock) -> Session:
    return Session(client, TokenBucket(10, 30, clock.seconds), FloodGuard(100, 60, clock.seconds))


@pytest.fixture
def names(clock: Clock) -> tuple[Names, Directory]:
    directory = Directory()
    presence = RoomPresence(Nobody(), FanOut(Prepare(), Counters()), clock)
    return Names(directory, Sanctions(clock.seconds), presence, clock), directory


def test_a_name_being_claimed_is_taken_here_until_the_directory_answers(
    names: tuple[Names, Directory], clock: Clock
) -> None:
    unit, directory = names
    alice, bob = session_of(Client(1), clock), session_of(Client(2), clock)
    first = unit.claim(alice, "Alice", "chat-join")
    with pytest.raises(ProtocolError) as refused:
        unit.claim(bob, "alice", "chat-join")  # no round trip: refused at once
    assert refused.value.code == "username-taken"
    (_, answer), *_ = directory.claims
    answer.callback(False)  # another instance has it
    failures: list[Any] = []
    first.addErrback(failures.append)
    assert failures[0].value.code == "username-taken" and alice.name is None
    # Free again here: bob's claim goes to the directory, and bob has it once it agrees.
    second = unit.claim(bob, "alice", "chat-join")
    directory.claims[-1][1].callback(True)
    assert second.called and bob.name == "alice"


def test_a_claim_answered_after_its_connection_closed_gives_the_name_back(
    names: tuple[Names, Directory], clock: Clock
) -> None:
    unit, directory = names
    alice = session_of(Client(1), clock)
    claimed = unit.claim(alice, "alice", "chat-nick")
    alice.alive = False  # the hub's disconnect
    directory.claims[-1][1].callback(True)
    assert claimed.called and alice.name is None
    assert directory.released == ["alice"]


def test_a_claim_while_the_directory_is_away_is_unavailable_and_holds_nothing(
    clock: Clock,
) -> None:
    class Away(Directory):
        def claim(self, name: str, conn_id: int, user: str | None = None) -> Deferred[bool]:
            return fail(Unavailable("Redis is away"))

    presence = RoomPresence(Nobody(), FanOut(Prepare(), Counters()), clock)
    unit = Names(Away(), Sanctions(clock.seconds), presence, clock)
    alice = session_of(Client(1), clock)
    failures: list[Any] = []
    unit.claim(alice, "alice", "chat-join").addErrback(failures.append)
    assert failures[0].value.code == "unavailable" and failures[0].value.type == "chat-join"
    assert unit.guest_name(Client(5)) == "guest-5"
    unit.claim(session_of(Client(2), clock), "alice", "chat-join")  # not held: asks again


def test_a_displaced_guest_is_told_its_new_name(
    names: tuple[Names, Directory], clock: Clock
) -> None:
    unit, directory = names
    client = Client(7)
    guest = session_of(client, clock)
    unit.claim(guest, "alice", "chat-join")
    directory.claims[-1][1].callback(True)
    unit.displace_named("ALICE")
    assert guest.name == "guest-7"
    (notice,) = client.got("chat-notice")
    assert notice["message"] == "alice is an identified user's name; you are guest-7 now"
    (renamed,) = client.got("chat-nick")
    assert renamed == {"old": "alice", "new": "guest-7", "rooms": []}
    assert "alice" in directory.released


def test_an_identified_user_takes_a_name_a_guest_is_still_claiming(
    names: tuple[Names, Directory], clock: Clock
) -> None:
    """With the directory a round trip away, a user signs in with the name a guest
    here is claiming: the user has it, and the guest's claim is refused."""
    unit, directory = names
    guest = session_of(Client(1), clock)
    claimed = unit.claim(guest, "alice", "chat-join")
    user = session_of(Client(2), clock)
    user.identity = Identity("u1", "Alice", (), False, None)
    unit.sign_in(user, user.identity)
    directory.claims[-1][1].callback(True)  # the guest's, answered after
    failures: list[Any] = []
    claimed.addErrback(failures.append)
    assert failures[0].value.code == "username-taken"
    assert (guest.name, user.name) == (None, "Alice")
    assert unit.owner("alice") == "u1"


class SlowLog:
    """A `MessageLog` whose reads answer when the test says (the rest is not used)."""

    def __init__(self) -> None:
        self.reads: list[Deferred[Any]] = []

    def recent(self, room: str, limit: int = 50, up_to: int | None = None) -> Deferred[Any]:
        read: Deferred[Any] = Deferred()
        self.reads.append(read)
        return read

    def since(self, room: str, since_id: int, limit: int = 50) -> Deferred[Any]:
        return self.recent(room, limit)


def test_joiners_asking_the_same_history_share_its_read_and_its_failure(clock: Clock) -> None:
    log = SlowLog()
    prepare = Prepare()
    histories = JoinHistories(log, prepare, Counters())  # type: ignore[arg-type]
    presence = RoomPresence(Nobody(), FanOut(prepare, Counters()), clock)
    room = presence.open("lobby")
    first = [histories.read(room, 10, None, JSON) for _ in range(3)]
    assert len(log.reads) == 1
    message = StoredMessage(9, "lobby", "alice", "hi", "T")
    log.reads[0].callback([message])
    got = [d.result for d in first]
    assert all(h is got[0] for h in got) and prepare.calls == 1  # encoded once
    assert got[0].cut == 10 and json.loads(got[0].frame)["payload"]["messages"][0]["id"] == 9
    # Line by line for the text dialect: its own event, not a shared frame.
    text = histories.read(room, 10, None, TEXT)
    log.reads[-1].callback([message])
    assert text.result.event[1]["messages"][0]["message"] == "hi" and text.result.frame is None
    # A failed read fails every joiner that waited for it.
    failures: list[Any] = []
    for d in [histories.read(room, 11, None, JSON) for _ in range(2)]:
        d.addErrback(failures.append)
    log.reads[-1].errback(Unavailable("Redis is away"))
    assert [f.type for f in failures] == [Unavailable, Unavailable]


def test_held_commands_come_out_in_order_and_not_after_a_close(clock: Clock) -> None:
    session = session_of(Client(1), clock)
    assert session.hold(Say("now")) is False  # nothing on its way: carry it out
    session.busy = True
    assert session.hold(Say("one")) and session.hold(Join("r"))
    assert session.next_held() is None  # still busy
    session.busy = False
    assert session.next_held() == Say("one")
    session.alive = False
    assert session.next_held() is None and not session.queued


def test_orders_keep_the_json_earlier_versions_wrote_and_read() -> None:
    """Kept orders outlive an upgrade: SQLite's and Redis's, and those between instances."""
    written_before = {
        "kind": "ban",
        "name": "Gus",
        "user": "u7",
        "room": None,
        "until": 1790000600.5,
        "by": "mod",
        "reason": "spam",
    }
    ban = parse_order(json.loads(json.dumps(written_before)))
    assert ban == ModerationOrder("ban", "Gus", "u7", None, 1790000600.5, "mod", "spam")
    assert json.loads(order_json(ban)) == written_before
    assert isinstance(ban, ModerationOrder) and ban.key == "ban|gus|"
    kick = parse_order({"kind": "kick", "name": "gus", "by": "mod"})
    assert kick == ModerationOrder("kick", "gus", None, None, None, "mod")
    direct = {"kind": "direct", "user": "u2", "room": "dm.ab", "with": "alice"}
    assert parse_order(direct) == DirectOrder("u2", "dm.ab", "alice")
    assert json.loads(order_json(DirectOrder("u2", "dm.ab", "alice"))) == direct
    assert parse_order({"kind": "displace", "name": "bob"}) == Displacement("bob")
    # A newer version's kind is kept and ignored; a malformed one too.
    assert parse_order({"kind": "nuke", "until": 2e9}) == UnknownOrder("nuke")
    assert parse_order({"kind": "ban"}) == UnknownOrder("ban", malformed=True)
    assert parse_order({"kind": "mute", "name": "x", "until": "?"}).malformed  # type: ignore[union-attr]
    assert parse_order([1]) == UnknownOrder(None, malformed=True)
