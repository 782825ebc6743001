"""The webhook outbox (chatservice/backplane/roles.py `Outbox`), kept by both backplanes.

What the application hears waits in the outbox, kept in the write that stores
what it tells, until the sender says it was taken.  `LocalBackplane` (SQLite)
and `RedisBackplane` (a real redis-server) pass the same tests; several
instances only on Redis.  The bookkeeping of who is where (`Attendance`) is
tested without a reactor first.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from net import wait_until
from redis_server import RedisServer
from twisted.internet import reactor
from twisted.internet.task import deferLater

from chatservice.backplane import outbox
from chatservice.backplane.attendance import Attendance
from chatservice.backplane.history import History, immediate_executor
from chatservice.backplane.local import LocalBackplane
from chatservice.backplane.outbox import EVENT_TYPES, Attendee, Queued, event_types
from chatservice.backplane.redis import RedisBackplane, parse_redis_url
from chatservice.backplane.redis import outbox as redis_outbox

T0 = "2026-12-02T10:00:00.000Z"
ALL = frozenset(EVENT_TYPES)
DELAY = 0.3

Make = Callable[..., Any]


# -- the bookkeeping, without a reactor -----------------------------------------


def kinds(made: list[tuple[str, dict[str, object]]]) -> list[str]:
    return [kind for kind, _ in made]


def test_a_person_enters_with_their_first_connection_and_leaves_with_their_last() -> None:
    book = Attendance(delay=5)
    alice = Attendee("alice", "u1")
    assert book.arrive(1, "r", alice) == [
        ("user.online", {"user": "u1", "name": "alice"}),
        ("room.entered", {"room": "r", "user": "u1", "name": "alice"}),
    ]
    assert book.arrive(2, "r", alice) == []  # a second tab
    assert book.arrive(1, "r", alice) == []  # the same again
    assert kinds(book.arrive(2, "s", alice)) == ["room.entered"]
    assert book.depart(1, "r", now=10) == []
    assert kinds(book.depart(2, "r", now=10)) == ["room.left"]
    assert kinds(book.depart(2, "s", now=10)) == ["room.left"]
    assert book.depart(2, "s", now=10) == []  # gone already
    assert book.due(14.9) == []
    assert book.next_due() == 15
    assert book.due(15) == [("user.offline", {"user": "u1", "name": "alice"})]
    assert book.due(100) == []


def test_coming_back_within_the_grace_period_tells_nothing_of_being_offline() -> None:
    book = Attendance(delay=5)
    bob = Attendee("Bob")
    book.arrive(1, "r", bob)
    book.depart(1, "r", now=0)
    # A reload: a new connection, the same guest name in any case.
    assert kinds(book.arrive(2, "r", Attendee("bob"))) == ["room.entered"]
    assert book.due(100) == []


def test_who_was_there_when_the_process_ended_goes_offline_unless_back() -> None:
    book = Attendance(delay=5)
    book.going(Attendee("carol"), at=5)
    book.going(Attendee("dave"), at=5)
    book.arrive(1, "r", Attendee("dave"))
    assert book.due(5) == [("user.offline", {"user": None, "name": "carol"})]


def test_event_types_name_types_and_families() -> None:
    assert event_types("all") == ALL
    assert event_types("message, moderation") == {
        "message.created",
        "message.deleted",
        "moderation",
    }
    assert event_types("room.left") == {"room.left"}
    with pytest.raises(ValueError, match="unknown event type 'rooms'"):
        event_types("rooms")
    with pytest.raises(ValueError, match="no event type"):
        event_types(" , ")


def test_an_event_is_sent_with_its_id_in_front() -> None:
    kept = outbox.body("moderation", T0, {"action": "kick", "username": "é"})
    sent = json.loads(Queued("evt_7", 0.0, kept).sent())
    assert sent == {
        "id": "evt_7",
        "type": "moderation",
        "time": T0,
        "data": {"action": "kick", "username": "é"},
    }
    assert json.loads(outbox.batch([Queued("evt_7", 0.0, kept).sent()])) == {"events": [sent]}


# -- both backplanes ---------------------------------------------------------------


@pytest.fixture(params=["local", "redis"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    """Makes started backplanes of one kind: ``make(hooks=..., path=...)``."""
    started: list[Any] = []
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")

    async def start(hooks: frozenset[str] = ALL, path: str = "h.sqlite3") -> Any:
        if request.param == "local":
            history = History(str(tmp_path / path), 100, immediate_executor, hooks=hooks)
            history.open()
            backplane = LocalBackplane(history, reactor, DELAY)
            backplane.start()
            started.append(backplane)
            return backplane
        backplane = RedisBackplane(
            parse_redis_url(server.url), 100, reactor, hooks=hooks, offline_delay=DELAY
        )
        backplane.start()
        started.append(backplane)
        await wait_until(lambda: backplane.problem is None)
        return backplane

    yield start
    for thing in started:
        if isinstance(thing, RedisBackplane):
            pytest_twisted.blockon(thing.stop())
        else:
            thing.stop()


async def events(backplane: Any) -> list[dict[str, Any]]:
    """Every event waiting (taken, not acknowledged), as sent."""
    return [json.loads(q.sent()) for q in await backplane.take(1000)]


async def settled(backplane: Any, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The waiting events, once there are `count` of them."""
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        nonlocal found
        found = await events(backplane)
        return len(found) >= count

    deadline = reactor.seconds() + timeout
    while not await enough() and reactor.seconds() < deadline:
        await deferLater(reactor, 0.05, lambda: None)
    return found


@pytest_twisted.ensureDeferred
async def test_a_stored_message_waits_for_the_application_until_it_is_done(make: Make) -> None:
    backplane = await make()
    stored = [await backplane.store("r", "alice", f"hi {i}", T0, "u1") for i in range(3)]
    got = await settled(backplane, 3)
    assert [e["type"] for e in got] == ["message.created"] * 3
    assert [e["data"] for e in got] == [m.payload() for m in stored]
    assert got[0]["time"] == T0
    assert len({e["id"] for e in got}) == 3
    # Not acknowledged: the same again, with the same ids.
    assert await events(backplane) == got
    count, oldest = await backplane.backlog()
    assert count == 3 and oldest is not None
    await backplane.done([e["id"] for e in got[:2]])
    assert await events(backplane) == got[2:]
    await backplane.done([got[2]["id"]])
    assert await events(backplane) == []
    assert await backplane.backlog() == (0, None)


@pytest_twisted.ensureDeferred
async def test_deletions_and_moderation_actions_are_told(make: Make) -> None:
    backplane = await make()
    message = await backplane.store("r", "alice", "oops", T0)
    assert await backplane.delete("r", message.id, "mod")
    assert not await backplane.delete("r", message.id + 100, "mod")
    backplane.record("moderation", {"action": "kick", "username": "bob", "by": "mod"})
    got = await settled(backplane, 3)
    assert [e["type"] for e in got] == ["message.created", "message.deleted", "moderation"]
    assert got[1]["data"] == {"room": "r", "id": message.id, "by": "mod"}
    assert got[2]["data"] == {"action": "kick", "username": "bob", "by": "mod"}


@pytest_twisted.ensureDeferred
async def test_only_the_chosen_types_are_kept(make: Make) -> None:
    backplane = await make(hooks=frozenset({"moderation", "room.entered"}))
    message = await backplane.store("r", "alice", "hi", T0)
    await backplane.delete("r", message.id, "mod")
    backplane.joined("r", 1, "alice")
    backplane.record("moderation", {"action": "ban"})
    got = await settled(backplane, 2)
    await deferLater(reactor, 0.2, lambda: None)
    got = await events(backplane)
    assert [e["type"] for e in got] == ["room.entered", "moderation"]


@pytest_twisted.ensureDeferred
async def test_nothing_is_kept_without_webhooks(make: Make) -> None:
    backplane = await make(hooks=frozenset())
    await backplane.store("r", "alice", "hi", T0)
    backplane.joined("r", 1, "alice")
    backplane.record("moderation", {"action": "ban"})
    await deferLater(reactor, 0.2, lambda: None)
    assert await events(backplane) == []


@pytest_twisted.ensureDeferred
async def test_people_enter_leave_and_go_offline_after_the_grace_period(make: Make) -> None:
    backplane = await make()
    backplane.joined("r", 1, "alice", "u1")
    backplane.joined("r", 2, "alice", "u1")  # another tab
    backplane.joined("r", 3, "bob")
    backplane.left("r", 1, "alice")
    backplane.left("r", 2, "alice")
    got = await settled(backplane, 6, timeout=5 + DELAY)
    alice = {"user": "u1", "name": "alice"}
    assert [(e["type"], e["data"]) for e in got] == [
        ("user.online", alice),
        ("room.entered", {"room": "r", **alice}),
        ("user.online", {"user": None, "name": "bob"}),
        ("room.entered", {"room": "r", "user": None, "name": "bob"}),
        ("room.left", {"room": "r", **alice}),
        ("user.offline", alice),
    ]


@pytest_twisted.ensureDeferred
async def test_a_reconnect_within_the_grace_period_is_not_offline(make: Make) -> None:
    backplane = await make()
    backplane.joined("r", 1, "carol", "u3")
    backplane.left("r", 1, "carol")
    backplane.joined("r", 2, "carol", "u3")
    await deferLater(reactor, DELAY + 1.5, lambda: None)  # past the grace period
    got = await events(backplane)
    assert [e["type"] for e in got] == ["user.online", "room.entered", "room.left", "room.entered"]


@pytest_twisted.ensureDeferred
async def test_a_guest_who_changes_name_is_a_new_person(make: Make) -> None:
    backplane = await make()
    backplane.joined("r", 1, "dan")
    backplane.renamed(["r"], 1, "dan", "daniel")
    got = await settled(backplane, 6, timeout=5 + DELAY)
    assert [(e["type"], e["data"]["name"]) for e in got] == [
        ("user.online", "dan"),
        ("room.entered", "dan"),
        ("room.left", "dan"),
        ("user.online", "daniel"),
        ("room.entered", "daniel"),
        ("user.offline", "dan"),
    ]


# -- one process: what a killed process leaves behind -----------------------------


@pytest_twisted.ensureDeferred
async def test_a_killed_process_still_tells_who_left_with_it(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sqlite3")
    history = History(path, 100, immediate_executor, hooks=ALL)
    history.open()
    before = LocalBackplane(history, reactor, DELAY)
    before.joined("r", 1, "erin", "u5")
    before.joined("r", 2, "frank")
    # Killed: nothing closes, nothing leaves.  The next start reads what was there.
    again = History(path, 100, immediate_executor, hooks=ALL)
    again.open()
    after = LocalBackplane(again, reactor, DELAY)
    after.start()
    try:
        after.joined("r", 1, "frank")  # frank is back within the grace period
        got = await settled(after, 8, timeout=5 + DELAY)
        assert [(e["type"], e["data"]["name"]) for e in got] == [
            ("user.online", "erin"),
            ("room.entered", "erin"),
            ("user.online", "frank"),
            ("room.entered", "frank"),
            ("room.left", "erin"),
            ("room.left", "frank"),
            ("room.entered", "frank"),
            ("user.offline", "erin"),
        ]
    finally:
        after.stop()


# -- several instances on Redis --------------------------------------------------------


@pytest.fixture
def instances(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Make]:
    """Makes started Redis instances with short leases (0.5 s) and claims (0.5 s idle)."""
    monkeypatch.setattr(redis_outbox, "LEASE", 500)
    monkeypatch.setattr(redis_outbox, "CLAIM_IDLE", 500)
    started: list[RedisBackplane] = []

    async def start(ttl: float = 15.0) -> RedisBackplane:
        backplane = RedisBackplane(
            parse_redis_url(redis_server.url),
            100,
            reactor,
            ttl=ttl,
            hooks=ALL,
            offline_delay=DELAY,
        )
        backplane.start()
        started.append(backplane)
        await wait_until(lambda: backplane.problem is None)
        return backplane

    yield start
    for backplane in started:
        pytest_twisted.blockon(backplane.stop())


@pytest_twisted.ensureDeferred
async def test_one_instance_sends_and_another_takes_over_what_it_left(instances: Make) -> None:
    one = await instances()
    two = await instances()
    for i in range(3):
        await one.store("r", "alice", f"a{i}", T0)
        await two.store("r", "bob", f"b{i}", T0)
    taken = await events(one)
    assert [e["data"]["message"] for e in taken] == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert await events(two) == []  # one sends now
    await one.done([taken[0]["id"]])
    # One dies with five events taken and not done: two claims them once
    # one's lease is gone and they were idle long enough, and sends them
    # before anything newer.
    one._outbox.stop()
    await one._connection.close(lambda: deferLater(reactor, 0, lambda: None))
    await two.store("r", "bob", "b3", T0)
    got = await settled(two, 6, timeout=5)
    assert [e["data"]["message"] for e in got] == ["b0", "a1", "b1", "a2", "b2", "b3"]
    assert [e["id"] for e in got[:5]] == [e["id"] for e in taken[1:]]


@pytest_twisted.ensureDeferred
async def test_a_person_on_two_instances_enters_once_and_leaves_once(instances: Make) -> None:
    one = await instances()
    two = await instances()
    one.joined("r", 1, "gina", "u7")
    two.joined("r", 1, "gina", "u7")
    # (Each instance has its own connection to Redis: let both joins land.)
    await deferLater(reactor, 0.2, lambda: None)
    one.left("r", 1, "gina")
    await deferLater(reactor, 0.3, lambda: None)
    got = await events(one) or await events(two)
    assert [e["type"] for e in got] == ["user.online", "room.entered"]
    two.left("r", 1, "gina")
    sender = one if await events(one) else two
    got = await settled(sender, 4, timeout=5)
    assert [e["type"] for e in got] == ["user.online", "room.entered", "room.left", "user.offline"]


@pytest_twisted.ensureDeferred
async def test_the_people_of_a_dead_instance_leave(instances: Make) -> None:
    one = await instances(ttl=1.0)
    two = await instances(ttl=1.0)
    two.joined("r", 1, "hank")
    one.joined("r", 1, "ida")
    await deferLater(reactor, 0.3, lambda: None)
    # Two goes quiet (killed): one reaps it, and hank leaves.
    two._presence._heartbeat.stop()
    two._outbox.stop()
    got = await settled(one, 6, timeout=8)
    assert [(e["type"], e["data"]["name"]) for e in got][-2:] == [
        ("room.left", "hank"),
        ("user.offline", "hank"),
    ]
    assert ("room.left", "ida") not in [(e["type"], e["data"]["name"]) for e in got]


@pytest_twisted.ensureDeferred
async def test_a_stopped_process_keeps_who_was_going_offline(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sqlite3")
    history = History(path, 100, immediate_executor, hooks=ALL)
    history.open()
    before = LocalBackplane(history, reactor, 60.0)
    before.start()
    before.joined("r", 1, "jane", "u9")
    before.left("r", 1, "jane")  # the last client closed at shutdown
    before.stop()
    assert [e["type"] for e in await events(before)] == [
        "user.online",
        "room.entered",
        "room.left",
    ]
    await before.done([e["id"] for e in await events(before)])
    again = History(path, 100, immediate_executor, hooks=ALL)
    again.open()
    # Started again: jane's grace period ends when it would have.
    assert [(n, u) for n, u, _ in again.going_behind] == [("jane", "u9")]
    after = LocalBackplane(again, reactor, 60.0)
    after.start()
    try:
        assert after.attendance is not None
        assert [who.name for who, _ in after.attendance.goers()] == ["jane"]
        assert after.attendance.due(reactor.seconds() + 61) == [
            ("user.offline", {"user": "u9", "name": "jane"})
        ]
    finally:
        after.stop()


@pytest_twisted.ensureDeferred
async def test_a_process_killed_during_a_grace_period_still_tells_offline(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sqlite3")
    history = History(path, 100, immediate_executor, hooks=ALL)
    history.open()
    before = LocalBackplane(history, reactor, 60.0)
    before.joined("r", 1, "kim", "u11")
    before.left("r", 1, "kim")  # closed her tab: offline in a minute...
    # ... and the process is killed (no stop) before that.
    again = History(path, 100, immediate_executor, hooks=ALL)
    again.open()
    after = LocalBackplane(again, reactor, 60.0)
    after.start()
    try:
        assert after.attendance is not None
        assert after.attendance.due(reactor.seconds() + 61) == [
            ("user.offline", {"user": "u11", "name": "kim"})
        ]
    finally:
        after.stop()
