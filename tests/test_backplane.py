"""The backplane's promises (chatservice/backplane/roles.py), kept by both kinds.

`LocalBackplane` (one process, SQLite) and `RedisBackplane` (a real
redis-server) pass the same tests; what only several instances can show
(two instances, a dropped subscription, Redis killed) is tested on Redis.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from members import Heard, Prepare
from net import wait_until
from redis_server import RedisServer
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater

from chatservice.backplane.codec import order_fields as codec_fields
from chatservice.backplane.history import History, StoredMessage, immediate_executor
from chatservice.backplane.local import LocalBackplane
from chatservice.backplane.redis import RedisBackplane, parse_redis_url
from chatservice.backplane.roles import Backplane
from chatservice.backplane.values import (
    Deletion,
    ModerationOrder,
    Notice,
    Presence,
    Unavailable,
)
from chatservice.chat.hub import Hub

Make = Callable[..., Any]

T0 = "2026-12-02T10:00:00.000Z"


@pytest.fixture(params=["local", "redis"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    """Makes started backplanes of one kind: ``await make(keep=100)``."""
    started: list[Any] = []
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")

    async def start(keep: int = 100) -> Backplane:
        if request.param == "local":
            history = History(str(tmp_path / f"h{len(started)}.sqlite3"), keep, immediate_executor)
            history.open()
            started.append(history)
            return LocalBackplane(history)
        backplane = RedisBackplane(parse_redis_url(server.url), keep, reactor)
        backplane.start()
        started.append(backplane)
        await wait_until(lambda: backplane.problem is None)
        return backplane

    yield start
    for thing in started:
        if isinstance(thing, RedisBackplane):
            pytest_twisted.blockon(thing.stop())


def hear(backplane: Backplane) -> Heard:
    heard = Heard()
    backplane.register(heard)
    return heard


def listen(backplane: Backplane) -> list[StoredMessage]:
    return hear(backplane).messages


async def say(backplane: Backplane, room: str, n: int, who: str = "alice") -> list[StoredMessage]:
    """`n` messages stored at once (none waits for the one before)."""
    stored = [backplane.store(room, who, f"{who} {i}", T0) for i in range(n)]
    return list(await gatherResults(stored))


@pytest_twisted.ensureDeferred
async def test_a_stored_message_reaches_the_listener_once_in_id_order(make: Make) -> None:
    backplane = await make()
    got = listen(backplane)
    await backplane.watch("lobby")
    stored = await say(backplane, "lobby", 20)
    await wait_until(lambda: len(got) >= 20)
    assert got == sorted(stored, key=lambda m: m.id)
    assert [m.message for m in got] == [f"alice {i}" for i in range(20)]
    ids = [m.id for m in got]
    assert ids == sorted(set(ids))


@pytest_twisted.ensureDeferred
async def test_history_keeps_the_last_messages_and_recovers_from_since(make: Make) -> None:
    backplane = await make(keep=5)
    a = [await backplane.store("a", "alice", f"a{i}", T0) for i in range(8)]
    b = await say(backplane, "b", 2, "bob")
    assert await backplane.recent("a", 3) == a[-3:]
    assert await backplane.recent("a") == a[-5:]
    assert await backplane.recent("a", 2, up_to=a[5].id) == a[4:6]
    assert await backplane.recent("nowhere") == []
    # Recoverable: nothing after `since` was dropped.
    assert await backplane.since("a", a[4].id) == (a[5:], True)
    assert await backplane.since("a", a[-1].id) == ([], True)
    assert await backplane.since("b", b[0].id) == (b[1:], True)
    # Not recoverable: a[1] and a[2] were dropped; a bogus or negative id.
    assert await backplane.since("a", a[0].id, limit=2) == (a[-2:], False)
    assert await backplane.since("a", a[-1].id + 1000) == (a[-5:], False)
    assert await backplane.since("a", -1) == (a[-5:], False)
    assert await backplane.rooms() == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_keeping_nothing_still_numbers_and_passes_on(make: Make) -> None:
    backplane = await make(keep=0)
    got = listen(backplane)
    await backplane.watch("r")
    first, second = await say(backplane, "r", 2)
    assert first.id < second.id
    await wait_until(lambda: len(got) == 2)
    assert await backplane.recent("r") == []
    assert await backplane.since("r", 0) == ([], False)


@pytest_twisted.ensureDeferred
async def test_watching_starts_after_the_newest_message(make: Make) -> None:
    backplane = await make()
    before = await say(backplane, "r", 3)
    got = listen(backplane)
    position = (await backplane.watch("r")).position
    assert position == before[-1].id
    assert await backplane.recent("r", up_to=position) == before
    after = await say(backplane, "r", 1)
    await wait_until(lambda: len(got) == 1)
    assert got == after


# -- several instances: Redis only -------------------------------------------


async def redis_backplane(server: RedisServer, keep: int = 1000) -> RedisBackplane:
    backplane = RedisBackplane(parse_redis_url(server.url), keep, reactor)
    backplane.start()
    await wait_until(lambda: backplane.problem is None)
    return backplane


@pytest_twisted.ensureDeferred
async def test_two_instances_pass_on_the_same_messages_in_the_same_order(
    redis_server: RedisServer,
) -> None:
    one, two = await redis_backplane(redis_server), await redis_backplane(redis_server)
    try:
        got_one, got_two = listen(one), listen(two)
        await gatherResults([one.watch("r"), two.watch("r")])
        stored = await gatherResults(
            [
                ensureDeferred(say(one, "r", 25, "alice")),
                ensureDeferred(say(two, "r", 25, "bob")),
                ensureDeferred(say(one, "other", 5)),
            ]
        )
        await wait_until(lambda: len(got_one) == 50 and len(got_two) == 50)
        in_room = sorted(stored[0] + stored[1], key=lambda m: m.id)
        assert got_one == got_two == in_room
        assert [m.message for m in got_two if m.username == "alice"] == [
            f"alice {i}" for i in range(25)
        ]
    finally:
        await gatherResults([one.stop(), two.stop()])


@pytest_twisted.ensureDeferred
async def test_a_dropped_subscription_loses_no_message(redis_server: RedisServer) -> None:
    sender, receiver = await redis_backplane(redis_server), await redis_backplane(redis_server)
    try:
        got = listen(receiver)
        await receiver.watch("r")
        stored: list[StoredMessage] = []
        for i in range(300):
            stored.append(await sender.store("r", "alice", f"m{i}", T0))
            if i in (100, 200):
                # Every pub/sub connection: the receiver's (and the sender's).
                assert redis_server.command("CLIENT", "KILL", "TYPE", "pubsub") is not None
        await wait_until(lambda: len(got) >= 300)
        await deferLater(reactor, 0.2, lambda: None)  # nothing more (no duplicates)
        assert got == stored
    finally:
        await gatherResults([sender.stop(), receiver.stop()])


@pytest_twisted.ensureDeferred
async def test_redis_down_means_unavailable_then_everything_works_again(
    redis_server: RedisServer, log_events: list[dict[str, Any]]
) -> None:
    one, two = await redis_backplane(redis_server), await redis_backplane(redis_server)

    def statuses(since: int) -> list[str | None]:
        """What the log said of Redis after event `since`: why not, or None once connected."""
        said = []
        for event in log_events[since:]:
            if event.get("log_format") == "redis unavailable: {problem}":
                said.append(event["problem"])
            elif event.get("log_format", "").startswith("redis connected"):
                said.append(None)
        return said

    try:
        got = listen(two)
        await two.watch("r")
        before = await one.store("r", "alice", "before", T0)
        await wait_until(lambda: len(got) == 1)
        killed = len(log_events)
        redis_server.kill()
        await wait_until(lambda: one.problem is not None)
        with pytest.raises(Unavailable):
            await one.store("r", "alice", "while down", T0)
        with pytest.raises(Unavailable):
            await one.recent("r")
        redis_server.start()
        await wait_until(lambda: one.problem is None and two.problem is None)
        assert statuses(killed)[0] is not None and statuses(killed)[-1] is None
        after = await one.store("r", "alice", "after", T0)
        await wait_until(lambda: len(got) == 2)
        assert got == [before, after]
        assert after.id > before.id  # the counter survived (append-only file)
        assert await two.recent("r") == [before, after]
    finally:
        await gatherResults([one.stop(), two.stop()])


def test_redis_urls() -> None:
    plain = parse_redis_url("redis://example.org")
    assert (plain.host, plain.port, plain.tls, plain.db, plain.password) == (
        "example.org",
        6379,
        False,
        None,
        None,
    )
    full = parse_redis_url("rediss://user:s%40cret@10.0.0.2:6380/3")
    assert (full.host, full.port, full.tls, full.db, full.username, full.password) == (
        "10.0.0.2",
        6380,
        True,
        3,
        "user",
        "s@cret",
    )
    assert str(full) == "rediss://10.0.0.2:6380/3"  # no password in logs
    unix = parse_redis_url("unix:///run/redis/redis.sock?db=2")
    assert (unix.path, unix.db) == ("/run/redis/redis.sock", 2)
    for bad, reason in [
        ("http://x", "use redis://, rediss:// or unix://"),
        ("redis://", "no host"),
        ("redis://h:port", "Port could not be cast"),
        ("redis://h/zero", "the database must be a number"),
        ("unix://", "no socket path"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse_redis_url(bad)


@pytest_twisted.ensureDeferred
async def test_deployments_in_different_databases_do_not_hear_each_other(
    redis_server: RedisServer,
) -> None:
    one = RedisBackplane(parse_redis_url(redis_server.url + "/1"), 100, reactor)
    two = RedisBackplane(parse_redis_url(redis_server.url + "/2"), 100, reactor)
    for backplane in (one, two):
        backplane.start()
    try:
        await wait_until(lambda: one.problem is None and two.problem is None)
        heard_one, heard_two = listen(one), listen(two)
        await gatherResults([one.watch("lobby"), two.watch("lobby")])
        (first,) = await say(one, "lobby", 1)
        (second,) = await say(two, "lobby", 1, "bob")
        await wait_until(lambda: len(heard_one) == 1 and len(heard_two) == 1)
        await deferLater(reactor, 0.2, lambda: None)
        assert (heard_one, heard_two) == ([first], [second])
        assert first.id == second.id == 1  # each database numbers its own
    finally:
        await gatherResults([one.stop(), two.stop()])


@pytest_twisted.ensureDeferred
async def test_presence_events_in_any_key_order_and_junk_on_a_channel(
    redis_server: RedisServer,
) -> None:
    """A reaper's leave events come from Lua's cjson, keys in no set order; and
    whatever else is published on a room's channel is ignored, never the end of
    the subscription."""
    backplane = await redis_backplane(redis_server)
    try:
        events = hear(backplane)
        got, heard = events.messages, events.presence
        await backplane.watch("r")
        channel = backplane._keys.channel("r")
        leave = '{"room":"r","name":"bob","member":"dead:1","event":"leave"}'
        for payload in ("not json", '{"id": "x"}', "[1, 2]", leave):
            assert redis_server.command("PUBLISH", channel, json.dumps(payload)) is not None
        stored = await backplane.store("r", "alice", "after", T0)
        await wait_until(lambda: len(got) == 1 and len(heard) == 1)
        assert heard == [Presence(kind="leave", room="r", member="dead:1", name="bob")]
        assert got == [stored]
        assert backplane.problem is None
    finally:
        await backplane.stop()


@pytest_twisted.ensureDeferred
async def test_junk_on_the_notices_channel_or_a_json_string_on_a_room_is_ignored(
    redis_server: RedisServer, log_events: list[dict[str, Any]]
) -> None:
    """What another program publishes where instances talk is skipped with a warning;
    announcements and room messages after it still come through."""
    one, two = await redis_backplane(redis_server), await redis_backplane(redis_server)
    try:
        heard = hear(two)
        await two.watch("r")
        junk = ("not json", "[1]", '"an event"', '{"instance": "x"}', '{"message": 1}')
        for payload in junk:
            for channel in (two._keys.notices, two._keys.channel("r")):
                assert redis_server.command("PUBLISH", channel, json.dumps(payload)) is not None
        one.announce(Notice("still here", T0))
        stored = await one.store("r", "alice", "after", T0)
        await wait_until(lambda: bool(heard.notices and heard.messages))
        assert heard.notices == [Notice("still here", T0)]
        assert heard.messages == [stored]
        assert two.problem is None
        assert not [e for e in log_events if e.get("log_failure")]
    finally:
        await gatherResults([one.stop(), two.stop()])


@pytest_twisted.ensureDeferred
async def test_a_sender_id_is_kept_and_a_deleted_message_is_gone_from_history(
    make: Make,
) -> None:
    backplane = await make()
    got = listen(backplane)
    await backplane.watch("r")
    kept = await backplane.store("r", "alice", "signed", T0, "u1")
    guest = await backplane.store("r", "gus", "unsigned", T0)
    await wait_until(lambda: len(got) == 2)
    assert got[0].user == "u1" and got[0].payload()["user"] == "u1"
    assert guest.user is None and "user" not in got[1].payload()
    assert [m.user for m in await backplane.recent("r")] == ["u1", None]
    assert await backplane.delete("r", kept.id, "mod") is True
    assert await backplane.delete("r", kept.id, "mod") is False
    assert [m.id for m in await backplane.recent("r")] == [guest.id]
    messages, recovered = await backplane.since("r", 0)
    assert [m.id for m in messages] == [guest.id] and recovered


@pytest_twisted.ensureDeferred
async def test_a_users_name_is_theirs_for_good(make: Make) -> None:
    backplane = await make()
    assert await backplane.claim("Alice", 1) is True  # a guest first
    assert await backplane.claim("alice", 2, "u1") is True  # the user takes it over
    assert await backplane.claim("ALICE", 3, "u1") is True  # another tab
    backplane.release("alice", 2)
    assert await backplane.claim("alice", 4, "u2") is False
    assert await backplane.claim("alice", 5) is False
    assert await backplane.holder("Alice") == "u1"
    assert await backplane.holder("bob") is None


@pytest_twisted.ensureDeferred
async def test_orders_and_deletions_reach_the_other_instances(redis_server: RedisServer) -> None:
    one, two = (RedisBackplane(parse_redis_url(redis_server.url), 100, reactor) for _ in range(2))
    for backplane in (one, two):
        backplane.start()
    try:
        await wait_until(lambda: one.problem is None and two.problem is None)
        heard_two, heard_one = hear(two), hear(one)
        orders, mine = heard_two.orders, heard_one.orders
        await two.watch("r")
        await one.watch("r")
        kick = ModerationOrder("kick", "gus", None, None, None, "mod")
        one.order(kick)
        stored = await one.store("r", "gus", "spam", T0)
        await one.delete("r", stored.id, "mod")
        await wait_until(lambda: bool(orders and heard_two.deletions))
        assert orders == [kick]
        assert mine == []  # not to itself
        assert heard_one.deletions == []
        assert heard_two.deletions == [Deletion("r", stored.id, "mod")]
    finally:
        await gatherResults([one.stop(), two.stop()])


@pytest.mark.parametrize("kind", ["local", "redis"])
@pytest_twisted.ensureDeferred
async def test_kept_orders_are_handed_on_again_after_a_restart(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    later = time.time() + 600
    ban = ModerationOrder("ban", "gus", None, None, later, "mod")
    mute = ModerationOrder("mute", "bob", None, None, later, "mod")
    url = request.getfixturevalue("redis_server").url if kind == "redis" else ""

    async def start() -> Any:
        if not url:
            history = History(str(tmp_path / "orders.sqlite3"), 10, immediate_executor)
            history.open()
            return LocalBackplane(history)
        backplane = RedisBackplane(parse_redis_url(url), 10, reactor)
        backplane.start()
        await wait_until(lambda: backplane.problem is None)
        return backplane

    first = await start()
    first.keep_order(ban)
    first.keep_order(mute)
    first.keep_order(dataclasses.replace(mute, until=time.time() - 1))  # lifted
    if isinstance(first, RedisBackplane):
        await first.stop()
    second = await start()
    replayed = hear(second).orders
    second.replay_orders()
    await wait_until(lambda: bool(replayed))
    assert replayed == [dataclasses.replace(ban, replayed=True)]
    if isinstance(second, RedisBackplane):
        await second.stop()


def unknown_kind_warnings(log_events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e
        for e in log_events
        if e.get("log_format") == "ignored an order of unknown kind {kind!r}"
        and e.get("log_namespace") == "chatservice.hub"
    ]


@pytest.mark.parametrize("kind", ["local", "redis"])
@pytest_twisted.ensureDeferred
async def test_a_kept_order_this_version_does_not_know_is_kept_and_ignored(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    """During a rolling upgrade (or a downgrade) an instance may find an order of a newer
    version's: it says so, as it always did, and leaves it for the instances that know it."""
    until = time.time() + 600
    newer = json.dumps({"kind": "quarantine", "name": "gus", "until": until, "by": "mod"})
    if kind == "local":
        history = History(str(tmp_path / "orders.sqlite3"), 10, immediate_executor)
        history.open()
        history.keep_order("quarantine|gus|", newer, until)
        local = LocalBackplane(history)
        Hub(local, reactor, Prepare(), server="s")
        ban = ModerationOrder("ban", "bob", None, None, until, "mod")
        local.keep_order(ban)
        local.replay_orders()
        assert newer in history.orders()
        # (The table keeps json.dumps's default text, as it always did.)
        assert json.dumps(codec_fields(ban)) in history.orders()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        server.command("HSET", "chatservice:orders", "quarantine|gus|", json.dumps(newer))
        redis = RedisBackplane(parse_redis_url(server.url), 10, reactor)
        Hub(redis, reactor, Prepare(), server="s")
        redis.start()  # (replays once connected)
        try:
            await wait_until(lambda: bool(unknown_kind_warnings(log_events)))
            assert server.command("HEXISTS", "chatservice:orders", "quarantine|gus|") == ":1"
        finally:
            await redis.stop()
    assert [e["kind"] for e in unknown_kind_warnings(log_events)] == ["quarantine"]


def test_a_redis_that_is_loading_its_data_counts_as_unavailable() -> None:
    """After a restart Redis answers LOADING until it has read its data: an outage for
    the client (unavailable, try again), not a server error with a traceback."""
    import txredisapi
    from twisted.python.failure import Failure

    backplane = RedisBackplane(parse_redis_url("redis://127.0.0.1:1"), 10, reactor)
    loading = Failure(txredisapi.ResponseError("LOADING Redis is loading the dataset in memory"))
    with pytest.raises(Unavailable):
        backplane._connection._unavailable(loading)
    bug = Failure(txredisapi.ResponseError("ERR wrong number of arguments"))
    assert backplane._connection._unavailable(bug) is bug
