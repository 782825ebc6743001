"""The backplane of several instances: Redis (or Valkey, the same protocol).

The promises are `chatservice.backplane`'s; this is how Redis keeps them.

The keys and channels are listed in `chatservice.backplane.redis.keys`.

One script (`scripts.STORE`) numbers, keeps, trims and publishes a message, so Redis
does all of it or none, and publishes in id order: every instance's
subscriber connection receives a room's messages in that order.  The
instance that stored a message passes it on when its subscription brings it,
like every other instance, not when the script answers.

Watched rooms, their backfills and the notices channel: `chatservice.backplane.redis.subscriptions`.

Presence: each instance keeps its members in the rooms' member hashes and
its names in the names hash, and publishes what they do on the room's
channel (JSON objects with an ``event``; messages have an ``id``).  It
refreshes its ``instance:<id>`` key every ttl/3; every instance also looks
for instances whose key expired and takes their members out (`scripts.REAP`, one
script, so only one instance publishes their leaves).  An instance that
comes back (its connection to Redis dropped, or it was taken for dead) puts
its members and names back, and re-reads the members of its rooms.

The two connections to Redis, and their status: `chatservice.backplane.redis.connection`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from chatservice import logs
from chatservice.backplane.redis import codec, scripts
from chatservice.backplane.redis.address import RedisAddress
from chatservice.backplane.redis.connection import RedisConnection, quietly
from chatservice.backplane.redis.control import RedisControl
from chatservice.backplane.redis.keys import Keys
from chatservice.backplane.redis.names import RedisNames
from chatservice.backplane.redis.subscriptions import Subscriptions
from chatservice.backplane.roles import BackplaneEvents
from chatservice.backplane.values import (
    JOIN_HISTORY,
    ModerationOrder,
    Notice,
    Order,
    StoredMessage,
    Watched,
)

_log = logs.logger("chatservice.redis_backplane")

#: Seconds after its last heartbeat that an instance counts as dead.
INSTANCE_TTL = 15.0


class RedisBackplane:
    """Rooms shared by every instance on one Redis.

    Args:
        address: Where Redis is.
        keep: How many messages of each room are kept (``--history``).
        reactor: The reactor (connections and their retries).
        prefix: Put before every key and channel name.
        ttl: Seconds after its last heartbeat that an instance is taken for dead.
    """

    def __init__(
        self,
        address: RedisAddress,
        keep: int,
        reactor: Any,
        prefix: str = "chatservice:",
        ttl: float = INSTANCE_TTL,
    ) -> None:
        self.address = address
        self.keep = keep
        self.reactor = reactor
        self.prefix = prefix
        self.ttl = ttl
        #: This instance, for the others: random, new at every start.
        self.instance = os.urandom(6).hex()
        self.guest_prefix = self.instance[:4] + "-"
        self._events: BackplaneEvents | None = None
        self._keys = Keys(prefix, address.db)
        #: What this instance has in Redis, to put back after an outage.
        self._memberships: dict[str, dict[str, str]] = {}
        self._connected_before = False
        #: Whether a heartbeat reached Redis yet.
        self._beaten = False
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = reactor
        self._connection = RedisConnection(address, reactor)
        self._subscriptions = Subscriptions(self._connection, self._keys, self.instance, keep)
        self._control = RedisControl(self._connection, self._keys, self.instance)
        self._names = RedisNames(self._connection, self._keys, self.instance, self._control.order)
        self._subscriptions.listen(self._keys.notices, self._control.received)
        self._connection.when_commands_up(self._commands_up)
        self._connection.when_subscriber_up(self._subscriptions.subscriber_up)
        self._connection.when_subscriber_down(self._subscriptions.subscriber_down)
        self._connection.receive(self._subscriptions.published)

    def register(self, events: BackplaneEvents) -> None:
        """Hand every event from now on to `events` (the hub's)."""
        self._events = events
        self._subscriptions.events = events
        self._control.events = events

    # -- connecting --------------------------------------------------------

    def start(self) -> None:
        """Connect (and keep reconnecting) both connections; heartbeats."""
        self._connection.start()
        self._heartbeat.start(self.ttl / 3, now=False)

    def stop(self) -> Deferred[Any]:
        """Leave (members and names go at once, not after `ttl`), then close both connections."""
        if self._heartbeat.running:
            self._heartbeat.stop()
        return self._connection.close(self._leave)

    def _leave(self) -> Deferred[Any]:
        """Take this instance's members and names out; never fails."""
        if not self._connection.ready:
            return defer.succeed(None)
        # Our members' leaves were published as they closed; the rest goes
        # as if this instance had died (the script reaps only the dead).
        d = self._connection.command("delete", self._keys.instance(self.instance))
        d.addErrback(lambda _: None)
        return self._reap(self.instance).addErrback(lambda _: None)

    @property
    def problem(self) -> str | None:
        """Why Redis cannot be used now, or None when it can."""
        return self._connection.problem

    def _commands_up(self) -> None:
        self._beat()
        if self._connected_before:
            self._restore()
        self._connected_before = True
        self._control.replay_orders()
        # Backfills that failed while only the subscriber was back.
        self._subscriptions.commands_up()

    def store(
        self, room: str, username: str, message: str, time: str, user: str | None = None
    ) -> Deferred[StoredMessage]:
        keys = [
            self._keys.ids,
            self._keys.log(room),
            self._keys.marks(room),
            self._keys.channel(room),
            self._keys.rooms,
        ]
        args = [self.keep, room, codec.message_json(room, username, message, time, user)]
        d = self._connection.command("eval", scripts.STORE, keys, args)
        return d.addCallback(lambda id: StoredMessage(int(id), room, username, message, time, user))

    def delete(self, room: str, message_id: int, by: str) -> Deferred[bool]:
        event = codec.deletion_json(room, self._member(0), message_id, by)
        keys = [self._keys.log(room), self._keys.channel(room)]
        d = self._connection.command("eval", scripts.DELETE, keys, [message_id, event])
        return d.addCallback(lambda n: int(n) > 0)

    def recent(
        self, room: str, limit: int = JOIN_HISTORY, up_to: int | None = None
    ) -> Deferred[list[StoredMessage]]:
        if limit <= 0:
            return defer.succeed([])
        top = f"{up_to}-0" if up_to is not None else "+"
        d = self._connection.command(
            "execute_command", "XREVRANGE", self._keys.log(room), top, "-", "COUNT", limit
        )
        return d.addCallback(lambda entries: codec.entries(entries)[::-1])

    def since(
        self, room: str, since_id: int, limit: int = JOIN_HISTORY
    ) -> Deferred[tuple[list[StoredMessage], bool]]:
        keys = [self._keys.log(room), self._keys.marks(room)]
        d = self._connection.command("eval", scripts.SINCE, keys, [since_id, max(limit, 0)])

        def answered(reply: list[Any]) -> tuple[list[StoredMessage], bool]:
            recovered, entries = reply
            if recovered:
                return codec.entries(entries), True
            return (codec.entries(entries)[::-1] if limit > 0 else []), False

        return d.addCallback(answered)

    def rooms(self) -> Deferred[list[str]]:
        d = self._connection.command("smembers", self._keys.rooms)
        return d.addCallback(lambda names: sorted(n.decode() for n in names))

    # -- presence ------------------------------------------------------------

    def _member(self, conn_id: int) -> str:
        return codec.member_id(self.instance, conn_id)

    def joined(self, room: str, conn_id: int, name: str, user: str | None = None) -> None:
        member = self._member(conn_id)
        value = codec.member_value(name, user)
        self._memberships.setdefault(room, {})[member] = value
        self._publish_join(room, member, value, always=True)

    def _publish_join(self, room: str, member: str, name: str, always: bool) -> None:
        if not self._connection.ready:
            return
        event = codec.presence_json("join", room, member, name)
        keys = [
            self._keys.members(room),
            self._keys.channel(room),
            self._keys.instance(self.instance, "rooms"),
        ]
        args = [member, name, event, room, "1" if always else "0"]
        d = self._connection.command("eval", scripts.JOIN, keys, args)
        quietly(d, "join")

    def left(self, room: str, conn_id: int, name: str) -> None:
        member = self._member(conn_id)
        members = self._memberships.get(room)
        if members is not None:
            members.pop(member, None)
            if not members:
                del self._memberships[room]
        if not self._connection.ready:
            return
        event = codec.presence_json("leave", room, member, name)
        keys = [self._keys.members(room), self._keys.channel(room)]
        quietly(self._connection.command("eval", scripts.LEAVE, keys, [member, event]), "leave")

    def renamed(self, rooms: Sequence[str], conn_id: int, old: str, new: str) -> None:
        member = self._member(conn_id)
        for room in rooms:
            members = self._memberships.get(room)
            if members is not None and member in members:
                members[member] = new
        if not self._connection.ready:
            return
        for room in rooms:
            event = codec.nick_json(room, member, new, old, rooms)
            keys = [self._keys.members(room), self._keys.channel(room)]
            d = self._connection.command("eval", scripts.RENAME, keys, [member, new, event])
            quietly(d, "rename")

    def typing(self, room: str, conn_id: int, name: str) -> None:
        if not self._connection.ready:
            return
        member = self._member(conn_id)
        event = codec.presence_json("typing", room, member, name)
        quietly(self._connection.command("publish", self._keys.channel(room), event), "typing")

    def members(self, room: str) -> Deferred[list[str]]:
        d = self._connection.command("hvals", self._keys.members(room))
        return d.addCallback(lambda names: [codec.member_name(n) for n in names])

    def _restore(self) -> None:
        """Put back this instance's names and members (after an outage, or being reaped)."""
        self._names.restore()
        for room, members in list(self._memberships.items()):
            for member, name in list(members.items()):
                self._publish_join(room, member, name, always=False)

    def _beat(self) -> None:
        """Say this instance is alive; take out the members of those that are not."""
        self._connection.ping_subscriber()
        if not self._connection.ready:
            return
        keys = [self._keys.instances, self._keys.instance(self.instance)]
        d = self._connection.command(
            "eval", scripts.HEARTBEAT, keys, [self.instance, int(self.ttl * 1000)]
        )

        def beaten(new: Any) -> Deferred[Any]:
            if int(new) and self._beaten and (self._names.held or self._memberships):
                _log.warn("redis: this instance was taken for dead; putting its members back")
                self._restore()
            self._beaten = True
            return self._connection.command("smembers", self._keys.instances)

        def reap(instances: Any) -> None:
            for other in instances:
                other = codec.text(other)
                if other == self.instance:
                    continue
                d = self._reap(other)
                d.addCallback(self._reaped, other)
                quietly(d, "reap")

        d.addCallback(beaten).addCallback(reap)
        quietly(d, "heartbeat")

    def _reap(self, instance: str) -> Deferred[Any]:
        """Take out the members and names of `instance` if it is dead; fires with 1 if it was."""
        keys = [
            self._keys.instances,
            self._keys.instance(instance),
            self._keys.instance(instance, "rooms"),
            self._keys.instance(instance, "names"),
            self._keys.names,
        ]
        args = [instance, self._keys.prefix, self._keys.channels]
        return self._connection.command("eval", scripts.REAP, keys, args)

    def _reaped(self, done: Any, instance: str) -> None:
        if int(done):
            _log.info(
                "redis: instance {instance} stopped sending heartbeats; its members left",
                instance=instance,
            )

    # -- watching rooms ----------------------------------------------------

    def watch(self, room: str) -> Deferred[Watched]:
        return self._subscriptions.watch(room)

    def unwatch(self, room: str) -> None:
        self._subscriptions.unwatch(room)

    # -- names -----------------------------------------------------------------

    def claim(self, name: str, conn_id: int, user: str | None = None) -> Deferred[bool]:
        """Take `name` (any case) for `conn_id`, or for `user` for good; False if someone has it."""
        return self._names.claim(name, conn_id, user)

    def holder(self, name: str) -> Deferred[str | None]:
        """The user id whose name `name` is, if an identified user claimed it."""
        return self._names.holder(name)

    def release(self, name: str, conn_id: int) -> None:
        """Give back a name `conn_id` claimed."""
        self._names.release(name, conn_id)

    def converse(self, user: str, room: str, other: str) -> None:
        """Remember that user `user` has the direct conversation `room` with `other` (a name)."""
        self._names.converse(user, room, other)

    def conversations(self, user: str) -> Deferred[dict[str, str]]:
        """User `user`'s direct conversations: room -> the other's name."""
        return self._names.conversations(user)

    # -- the control bus ---------------------------------------------------------

    def announce(self, notice: Notice) -> None:
        """Have every other instance tell all its connections `notice`."""
        self._control.announce(notice)

    def order(self, order: Order) -> None:
        """Hand `order` to every other instance."""
        self._control.order(order)

    def keep_order(self, order: ModerationOrder) -> None:
        """Keep `order` until it ends (an order that has ended forgets its key)."""
        self._control.keep_order(order)

    def replay_orders(self) -> None:
        """Hand the kept orders in force to the events' `on_order`, ``replayed``."""
        self._control.replay_orders()
