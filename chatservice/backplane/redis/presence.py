"""Presence on Redis: who is in which room on which instance, and which instances live.

What members here do goes into the rooms' members hashes and out on the
rooms' channels; heartbeats keep this instance's key alive, and reap the
instances whose key expired; an instance that comes back puts its members
and names back (see the package's docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from chatservice import logs
from chatservice.backplane.outbox import Attendee
from chatservice.backplane.redis import codec, scripts
from chatservice.backplane.redis.connection import RedisConnection, quietly
from chatservice.backplane.redis.keys import Keys
from chatservice.backplane.redis.names import RedisNames
from chatservice.backplane.redis.outbox import RedisOutbox

_log = logs.logger("chatservice.redis_backplane")

#: Seconds after its last heartbeat that an instance counts as dead.
INSTANCE_TTL = 15.0


class RedisPresence:
    """The `PresenceRelay` role over Redis, and this instance's life there.

    Heartbeats every ttl/3 (`start`), takes out the members and names of
    instances that stopped beating, and puts back this instance's own
    (members here, names of `names`) when Redis had lost them.  Presence is
    best effort: while Redis cannot be reached, nothing is published.

    Args:
        connection: The connection to Redis.
        keys: The deployment's key and channel names.
        instance: This instance's id.
        ttl: Seconds after its last heartbeat that an instance is taken for dead.
        reactor: The heartbeats' clock.
        names: This instance's names, to put back with its members.
        hooks: Where who is where is told to the application (with webhooks).
    """

    def __init__(
        self,
        connection: RedisConnection,
        keys: Keys,
        instance: str,
        ttl: float,
        reactor: Any,
        names: RedisNames,
        hooks: RedisOutbox,
    ) -> None:
        self._hooks = hooks
        self._connection = connection
        self._keys = keys
        self._instance = instance
        self._ttl = ttl
        self._names = names
        #: What this instance has in Redis, to put back after an outage.
        self._memberships: dict[str, dict[str, str]] = {}
        self._connected_before = False
        #: Whether a heartbeat reached Redis yet.
        self._beaten = False
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = reactor

    # -- this instance's life --------------------------------------------------

    def start(self) -> None:
        """Beat every ttl/3 from now on."""
        self._heartbeat.start(self._ttl / 3, now=False)

    def stop(self) -> None:
        """Beat no more."""
        if self._heartbeat.running:
            self._heartbeat.stop()

    def leave(self) -> Deferred[Any]:
        """Take this instance's members and names out of Redis; never fails."""
        if not self._connection.ready:
            return defer.succeed(None)
        # Our members' leaves were published as they closed; the rest goes
        # as if this instance had died (the script reaps only the dead).
        d = self._connection.command("delete", self._keys.instance(self._instance))
        d.addErrback(lambda _: None)
        return self._reap(self._instance).addErrback(lambda _: None)

    def commands_up(self) -> None:
        """The command connection is (back) up: beat, and put back what Redis may have lost."""
        self._beat()
        if self._connected_before:
            self._restore()
        self._connected_before = True
        self._hooks.resync(self._memberships)

    def _restore(self) -> None:
        """Put back this instance's names and members (after an outage, or being reaped)."""
        self._names.restore()
        for room, members in list(self._memberships.items()):
            for member, name in list(members.items()):
                self._publish_join(room, member, name, always=False)

    def _beat(self) -> None:
        """Say this instance is alive; take out the members of those that are not."""
        # The subscriber connection's watchdog goes at the heartbeat's pace.
        self._connection.ping_subscriber()
        if not self._connection.ready:
            return
        keys = [self._keys.instances, self._keys.instance(self._instance)]
        d = self._connection.command(
            "eval", scripts.HEARTBEAT, keys, [self._instance, int(self._ttl * 1000)]
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
                if other == self._instance:
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
            self._hooks.reaped(instance)
            _log.info(
                "redis: instance {instance} stopped sending heartbeats; its members left",
                instance=instance,
            )

    # -- what members here do ----------------------------------------------------

    def joined(self, room: str, conn_id: int, name: str, user: str | None = None) -> None:
        """A member here joined `room`: in its members hash, and a ``join`` event."""
        member = codec.member_id(self._instance, conn_id)
        value = codec.member_value(name, user)
        self._memberships.setdefault(room, {})[member] = value
        self._publish_join(room, member, value, always=True)
        self._hooks.arrived(room, conn_id, Attendee(name, user))

    def _publish_join(self, room: str, member: str, name: str, always: bool) -> None:
        if not self._connection.ready:
            return
        event = codec.presence_json("join", room, member, name)
        keys = [
            self._keys.members(room),
            self._keys.channel(room),
            self._keys.instance(self._instance, "rooms"),
        ]
        args = [member, name, event, room, "1" if always else "0"]
        d = self._connection.command("eval", scripts.JOIN, keys, args)
        quietly(d, "join")

    def left(self, room: str, conn_id: int, name: str) -> None:
        """A member here left `room` (or closed): out of its members hash, and a ``leave`` event."""
        member = codec.member_id(self._instance, conn_id)
        members = self._memberships.get(room)
        if members is not None:
            members.pop(member, None)
            if not members:
                del self._memberships[room]
        self._hooks.departed(room, conn_id)
        if not self._connection.ready:
            return
        event = codec.presence_json("leave", room, member, name)
        keys = [self._keys.members(room), self._keys.channel(room)]
        quietly(self._connection.command("eval", scripts.LEAVE, keys, [member, event]), "leave")

    def renamed(self, rooms: Sequence[str], conn_id: int, old: str, new: str) -> None:
        """A member here is now `new` in `rooms`: a ``nick`` event in each."""
        member = codec.member_id(self._instance, conn_id)
        for room in rooms:
            members = self._memberships.get(room)
            if members is not None and member in members:
                if codec.member_user(members[member]) is None:
                    # To the application a guest's new name is a new person.
                    self._hooks.departed(room, conn_id)
                    self._hooks.arrived(room, conn_id, Attendee(new))
                members[member] = new
        if not self._connection.ready:
            return
        for room in rooms:
            event = codec.nick_json(room, member, new, old, rooms)
            keys = [self._keys.members(room), self._keys.channel(room)]
            d = self._connection.command("eval", scripts.RENAME, keys, [member, new, event])
            quietly(d, "rename")

    def typing(self, room: str, conn_id: int, name: str) -> None:
        """A member here is typing in `room`: a ``typing`` event (not kept)."""
        if not self._connection.ready:
            return
        member = codec.member_id(self._instance, conn_id)
        event = codec.presence_json("typing", room, member, name)
        quietly(self._connection.command("publish", self._keys.channel(room), event), "typing")

    def members(self, room: str) -> Deferred[list[str]]:
        """The names of `room`'s members (as its members hash has them, every instance's)."""
        d = self._connection.command("hvals", self._keys.members(room))
        return d.addCallback(lambda names: [codec.member_name(n) for n in names])
