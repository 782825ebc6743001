"""Hubs of several instances on one real Redis: messages, history, presence.

Each `Hub` here is what one instance runs, with its own `RedisBackplane`;
the members are in-memory (tests/members.py), the Redis is real.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from members import Client, Prepare
from net import wait_until
from redis_server import RedisServer
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.protocols import portforward

from chatservice.backplane.redis import RedisBackplane, parse_redis_url
from chatservice.chat.hub import Hub
from chatservice.chat.messages import Join, Leave, Nick, Say, Typing
from chatservice.chat.session import Session

Instance = Callable[[], Any]


@pytest.fixture
def instance(redis_server: RedisServer) -> Iterator[Instance]:
    """Makes hubs on one Redis: ``hub = await instance()``."""
    backplanes: list[RedisBackplane] = []

    async def start(ttl: float = 15.0) -> Hub:
        backplane = RedisBackplane(parse_redis_url(redis_server.url), 1000, reactor, ttl=ttl)
        backplane.start()
        backplanes.append(backplane)
        await wait_until(lambda: backplane.problem is None)
        return Hub(backplane, reactor, Prepare(), server="s")

    yield start
    for backplane in backplanes:
        pytest_twisted.blockon(backplane.stop())


_ids = iter(range(1, 1_000_000))


async def join(hub: Hub, name: str, room: str = "r", since: int | None = None) -> Client:
    client = Client(next(_ids))
    session = hub.connect(client)
    hub.handle(session, Join(room=room, username=name, since=since))
    await wait_until(lambda: bool(client.got("chat-users")) or bool(client.got("chat-error")))
    return client


def session_of(hub: Hub, client: Client) -> Session:
    return hub.sessions[client]


def ids(messages: list[dict[str, Any]]) -> list[int]:
    return [m["id"] for m in messages]


@pytest_twisted.ensureDeferred
async def test_messages_cross_instances_in_one_order(instance: Instance) -> None:
    one, two = await instance(), await instance()
    alice, bob = await join(one, "alice"), await join(two, "bob")
    for i in range(10):
        one.handle(session_of(one, alice), Say(f"from alice {i}"))
        two.handle(session_of(two, bob), Say(f"from bob {i}"))
    await wait_until(lambda: len(alice.got("chat-message")) == 20)
    await wait_until(lambda: len(bob.got("chat-message")) == 20)
    seen = alice.got("chat-message")
    assert seen == bob.got("chat-message")
    assert ids(seen) == sorted(set(ids(seen)))
    assert [m["message"] for m in seen if m["username"] == "bob"] == [
        f"from bob {i}" for i in range(10)
    ]


@pytest_twisted.ensureDeferred
async def test_history_and_since_through_the_other_instance(instance: Instance) -> None:
    one, two = await instance(), await instance()
    alice = await join(one, "alice")
    for i in range(5):
        one.handle(session_of(one, alice), Say(f"m{i}"))
    await wait_until(lambda: len(alice.got("chat-message")) == 5)
    said = alice.got("chat-message")
    carol = await join(two, "carol")
    assert carol.got("chat-history") == [{"room": "r", "messages": said, "recovered": False}]
    dave = await join(two, "dave", since=said[1]["id"])
    assert dave.got("chat-history") == [{"room": "r", "messages": said[2:], "recovered": True}]


@pytest_twisted.ensureDeferred
async def test_joiners_while_messages_flow_miss_nothing_and_see_nothing_twice(
    instance: Instance,
) -> None:
    one, two = await instance(), await instance()
    alice = await join(one, "alice")
    await join(two, "bob")  # two already watches the room: joiners use its position
    talking = True

    async def talk() -> None:
        i = 0
        while talking:
            one.handle(session_of(one, alice), Say(f"m{i}"))
            i += 1
            await deferLater(reactor, 0.001, lambda: None)

    chatter = ensureDeferred(talk())
    joiners = []
    for n in range(20):
        joiners.append(await join(two, f"joiner{n}", room="r"))
        await deferLater(reactor, 0.003, lambda: None)
    talking = False
    await chatter
    total = len(alice.got("chat-message")) + 0
    await wait_until(lambda: len(alice.got("chat-message")) >= total)
    await deferLater(reactor, 0.2, lambda: None)
    everything = ids(alice.got("chat-message"))
    for joiner in joiners:
        (history,) = joiner.got("chat-history")
        seen = ids(history["messages"]) + ids(joiner.got("chat-message"))
        # A contiguous run of the room's messages, ending with the last one.
        assert seen == everything[len(everything) - len(seen) :], joiner.conn_id
        assert len(seen) >= min(len(everything), 50)


@pytest_twisted.ensureDeferred
async def test_redis_down_gives_unavailable_then_the_chat_works_again(
    instance: Instance, redis_server: RedisServer
) -> None:
    one, two = await instance(), await instance()
    alice, bob = await join(one, "alice"), await join(two, "bob")
    redis_server.kill()
    await wait_until(lambda: one.backplane.problem is not None)  # type: ignore[attr-defined]
    one.handle(session_of(one, alice), Say("lost?"))
    await wait_until(lambda: bool(alice.got("chat-error")))
    assert alice.got("chat-error")[0]["code"] == "unavailable"
    newcomer = await join(one, "newcomer", room="elsewhere")
    assert [e["code"] for e in newcomer.got("chat-error")] == ["unavailable"]
    redis_server.start()
    await wait_until(
        lambda: one.backplane.problem is None and two.backplane.problem is None  # type: ignore[attr-defined]
    )
    one.handle(session_of(one, alice), Say("back"))
    await wait_until(lambda: bool(bob.got("chat-message")))
    assert [m["message"] for m in bob.got("chat-message")] == ["back"]


def names(client: Client, kind: str) -> list[str]:
    return [p["username"] for p in client.got(kind)]


@pytest_twisted.ensureDeferred
async def test_presence_spans_instances(instance: Instance) -> None:
    one, two = await instance(), await instance()
    alice = await join(one, "alice")
    bob = await join(two, "bob")
    assert bob.got("chat-users") == [{"room": "r", "users": ["alice", "bob"], "count": 2}]
    await wait_until(lambda: names(alice, "chat-join") == ["alice", "bob"])
    # Typing, renames (told once, though bob and alice share two rooms).
    two.handle(session_of(two, bob), Join(room="second"))
    await wait_until(lambda: len(bob.got("chat-users")) == 2)
    one.handle(session_of(one, alice), Join(room="second"))
    await wait_until(lambda: "alice" in names(bob, "chat-join"))
    two.handle(session_of(two, bob), Typing())
    await wait_until(lambda: bool(alice.got("chat-typing")))
    assert alice.got("chat-typing") == [{"username": "bob", "room": "second"}]
    two.handle(session_of(two, bob), Nick("robert"))
    await wait_until(lambda: bool(alice.got("chat-nick")))
    await deferLater(reactor, 0.1, lambda: None)
    assert alice.got("chat-nick") == [{"old": "bob", "new": "robert", "rooms": ["r", "second"]}]
    carol = await join(one, "carol")
    assert carol.got("chat-users")[0]["users"] == ["alice", "carol", "robert"]
    # Leaving, and closing.
    two.handle(session_of(two, bob), Leave(room="second"))
    await wait_until(lambda: names(alice, "chat-leave") == ["robert"])
    two.disconnect(bob)
    await wait_until(lambda: names(carol, "chat-leave") == ["robert"])
    assert one.rooms["r"].usernames() == ["alice", "carol"]


@pytest_twisted.ensureDeferred
async def test_names_are_unique_over_all_instances(instance: Instance) -> None:
    one, two = await instance(), await instance()
    await join(one, "alice")
    other = await join(two, "ALICE")
    assert [e["code"] for e in other.got("chat-error")] == ["username-taken"]
    bob = await join(two, "bob")
    two.handle(session_of(two, bob), Nick("Alice"))
    await wait_until(lambda: bool(bob.got("chat-error")))
    assert [e["code"] for e in bob.got("chat-error")] == ["username-taken"]
    # Also for a name chosen before any join.
    unjoined = Client(next(_ids))
    unjoined_session = two.connect(unjoined)
    two.handle(unjoined_session, Nick("alice"))
    await wait_until(lambda: bool(unjoined.got("chat-error")))
    assert [e["code"] for e in unjoined.got("chat-error")] == ["username-taken"]
    # Free again once its holder closed, wherever that was.
    one.disconnect(next(c for c in one.sessions))
    await deferLater(reactor, 0.1, lambda: None)
    two.handle(session_of(two, bob), Nick("Alice"))
    await wait_until(lambda: bool(bob.got("chat-nick")))


async def alice_and_bob_on_two_instances(instance: Instance) -> tuple[Hub, Hub, Client]:
    """Alice on one instance and bob on another (0.6 s ttl), in one room; alice's client."""
    one = await instance(ttl=0.6)
    two = await instance(ttl=0.6)
    alice = await join(one, "alice")
    await join(two, "bob")
    await wait_until(lambda: names(alice, "chat-join") == ["alice", "bob"])
    return one, two, alice


@pytest_twisted.ensureDeferred
async def test_the_members_of_an_instance_that_died_leave(instance: Instance) -> None:
    one, two, alice = await alice_and_bob_on_two_instances(instance)
    # Two stops without a word: no heartbeats, no leaves, connections gone.
    backplane: Any = two.backplane
    backplane._presence._heartbeat.stop()
    factories = (backplane._connection._command_factory, backplane._connection._subscriber_factory)
    await gatherResults([factory.disconnect() for factory in factories])
    await wait_until(lambda: names(alice, "chat-leave") == ["bob"], timeout=5)
    assert one.rooms["r"].usernames() == ["alice"]
    newbob = await join(one, "bob")  # the name is free again
    assert newbob.got("chat-error") == []


@pytest_twisted.ensureDeferred
async def test_presence_missed_while_the_subscription_was_down_is_caught_up(
    instance: Instance, redis_server: RedisServer
) -> None:
    one, two = await instance(), await instance()
    alice = await join(one, "alice")
    bob = await join(two, "bob")
    await join(two, "dave")  # keeps the room watched on two
    await wait_until(lambda: names(alice, "chat-join") == ["alice", "bob", "dave"])
    redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
    two.disconnect(bob)
    await join(two, "carol")
    await wait_until(lambda: names(alice, "chat-join") == ["alice", "bob", "dave", "carol"])
    assert names(alice, "chat-leave") == ["bob"]
    assert one.rooms["r"].usernames() == ["alice", "carol", "dave"]


@pytest_twisted.ensureDeferred
async def test_an_instance_taken_for_dead_puts_its_members_back(instance: Instance) -> None:
    one, two, alice = await alice_and_bob_on_two_instances(instance)
    # Two goes quiet (a long pause, say) and is taken for dead...
    backplane: Any = two.backplane
    backplane._presence._heartbeat.stop()
    await wait_until(lambda: names(alice, "chat-leave") == ["bob"], timeout=5)
    # ...then beats again: bob is back, and still holds his name.
    backplane._presence._heartbeat.start(0.2)
    await wait_until(lambda: names(alice, "chat-join") == ["alice", "bob", "bob"], timeout=5)
    assert one.rooms["r"].usernames() == ["alice", "bob"]
    other = await join(one, "Bob", room="elsewhere")
    assert [e["code"] for e in other.got("chat-error")] == ["username-taken"]


class FreezingProxy(portforward.ProxyFactory):
    """A TCP relay to Redis that can go silent without closing its connections,
    as a lost NAT entry or a failed-over virtual address does."""

    def __init__(self, port: int) -> None:
        super().__init__("127.0.0.1", port)
        self.relays: list[portforward.ProxyServer] = []

    def buildProtocol(self, addr: Any) -> portforward.ProxyServer:
        relay = super().buildProtocol(addr)
        self.relays.append(relay)
        return relay

    def freeze(self) -> None:
        """Stop relaying on every connection made so far (new ones still work)."""
        for relay in self.relays:
            relay.transport.pauseProducing()
            if relay.peer is not None:
                relay.peer.transport.pauseProducing()
        self.relays = []


@pytest_twisted.ensureDeferred
async def test_a_subscription_that_went_silent_is_noticed_and_nothing_is_missed(
    redis_server: RedisServer,
) -> None:
    proxy = FreezingProxy(redis_server.port)
    listening = reactor.listenTCP(0, proxy, interface="127.0.0.1")
    through = f"redis://127.0.0.1:{listening.getHost().port}"
    one_backplane = RedisBackplane(parse_redis_url(through), 1000, reactor, ttl=1.5)
    two_backplane = RedisBackplane(parse_redis_url(redis_server.url), 1000, reactor, ttl=1.5)
    try:
        for backplane in (one_backplane, two_backplane):
            backplane.start()
        await wait_until(lambda: one_backplane.problem is None and two_backplane.problem is None)
        one = Hub(one_backplane, reactor, Prepare(), server="s")
        two = Hub(two_backplane, reactor, Prepare(), server="s")
        alice = await join(one, "alice")
        bob = await join(two, "bob")
        proxy.freeze()
        two.handle(session_of(two, bob), Say("said while one's connections were silent"))
        await wait_until(lambda: bool(alice.got("chat-message")), timeout=15)
        assert [m["message"] for m in alice.got("chat-message")] == [
            "said while one's connections were silent"
        ]
    finally:
        await gatherResults([one_backplane.stop(), two_backplane.stop()])
        await listening.stopListening()
