"""`RedisBackplane`: every role of `chatservice.backplane.roles`, over one connection to Redis.

It builds the role objects, wires them to the connection and delegates to
them; how they keep the roles' promises is told in the package's docstring.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred

from chatservice.backplane.outbox import Queued
from chatservice.backplane.redis.address import RedisAddress
from chatservice.backplane.redis.connection import RedisConnection
from chatservice.backplane.redis.control import RedisControl
from chatservice.backplane.redis.keys import Keys
from chatservice.backplane.redis.log import RedisMessageLog
from chatservice.backplane.redis.names import RedisNames
from chatservice.backplane.redis.outbox import RedisOutbox
from chatservice.backplane.redis.presence import INSTANCE_TTL, RedisPresence
from chatservice.backplane.redis.subscriptions import Subscriptions
from chatservice.backplane.roles import BackplaneEvents
from chatservice.backplane.values import (
    JOIN_HISTORY,
    KnownOrder,
    ModerationOrder,
    Notice,
    StoredMessage,
    Watched,
)


class RedisBackplane:
    """Rooms shared by every instance on one Redis: the whole `Backplane` protocol.

    Args:
        address: Where Redis is.
        keep: How many messages of each room are kept (``--history``).
        reactor: The reactor (connections and their retries, heartbeats).
        prefix: Put before every key and channel name.
        ttl: Seconds after its last heartbeat that an instance is taken for dead.
        hooks: The webhook event types kept in the outbox (none without ``--webhook``).
        offline_delay: Seconds from a person's last room to ``user.offline``.
    """

    def __init__(
        self,
        address: RedisAddress,
        keep: int,
        reactor: Any,
        prefix: str = "chatservice:",
        ttl: float = INSTANCE_TTL,
        hooks: frozenset[str] = frozenset(),
        offline_delay: float = 5.0,
    ) -> None:
        self.address = address
        self.keep = keep
        self.reactor = reactor
        self.prefix = prefix
        self.ttl = ttl
        instance = self._instance = os.urandom(6).hex()
        #: Put in guests' names (``guest-<prefix>7``) so that instances do not collide.
        self.guest_prefix = instance[:4] + "-"
        keys = self._keys = Keys(prefix, address.db)
        connection = self._connection = RedisConnection(address, reactor)
        self._subscriptions = Subscriptions(connection, keys, instance, keep)
        self._outbox = RedisOutbox(connection, keys, instance, hooks, offline_delay, reactor)
        self._messages = RedisMessageLog(
            connection, keys, instance, keep, self._subscriptions, self._outbox
        )
        self._control = RedisControl(connection, keys, instance)
        self._names = RedisNames(connection, keys, instance, self._control.order)
        self._presence = RedisPresence(
            connection, keys, instance, ttl, reactor, self._names, self._outbox
        )
        self._subscriptions.listen(keys.notices, self._control.received)
        # When the command connection comes (back), in this order: say this
        # instance is alive (and put back what Redis lost of it), replay the
        # kept orders, then the backfills that failed while only the
        # subscriber was back.
        connection.when_commands_up(self._presence.commands_up)
        connection.when_commands_up(self._control.replay_orders)
        connection.when_commands_up(self._subscriptions.commands_up)
        connection.when_subscriber_up(self._subscriptions.subscriber_up)
        connection.when_subscriber_down(self._subscriptions.subscriber_down)
        connection.receive(self._subscriptions.published)

    @property
    def instance(self) -> str:
        """This instance, for the others: random, new at every start (its roles all use it)."""
        return self._instance

    def register(self, events: BackplaneEvents) -> None:
        """Hand every event from now on to `events` (the hub's)."""
        self._subscriptions.events = events
        self._control.events = events

    def start(self) -> None:
        """Connect (and keep reconnecting) both connections; heartbeats."""
        self._connection.start()
        self._presence.start()
        self._outbox.start()

    def stop(self) -> Deferred[Any]:
        """Leave (members and names go at once, not after `ttl`), then close both connections."""
        self._presence.stop()
        self._outbox.stop()
        return self._connection.close(self._presence.leave)

    @property
    def problem(self) -> str | None:
        """Why Redis cannot be used now, or None when it can."""
        return self._connection.problem

    # -- the message log -----------------------------------------------------

    def store(
        self, room: str, username: str, message: str, time: str, user: str | None = None
    ) -> Deferred[StoredMessage]:
        """Number, keep and pass on a message; fires once it is kept."""
        return self._messages.store(room, username, message, time, user)

    def delete(self, room: str, message_id: int, by: str) -> Deferred[bool]:
        """Remove a kept message (True if it was kept); other instances hear a `Deletion`."""
        return self._messages.delete(room, message_id, by)

    def watch(self, room: str) -> Deferred[Watched]:
        """Pass on `room`'s messages and presence from now on; fires with the position."""
        return self._messages.watch(room)

    def unwatch(self, room: str) -> None:
        """Stop passing on `room`'s messages."""
        self._messages.unwatch(room)

    def recent(
        self, room: str, limit: int = JOIN_HISTORY, up_to: int | None = None
    ) -> Deferred[list[StoredMessage]]:
        """The last `limit` kept messages of `room` (up to id `up_to`), oldest first."""
        return self._messages.recent(room, limit, up_to)

    def since(
        self, room: str, since_id: int, limit: int = JOIN_HISTORY
    ) -> Deferred[tuple[list[StoredMessage], bool]]:
        """What a client that last saw `since_id` missed, and whether that is all."""
        return self._messages.since(room, since_id, limit)

    def rooms(self) -> Deferred[list[str]]:
        """The rooms that have kept messages, sorted."""
        return self._messages.rooms()

    # -- presence --------------------------------------------------------------

    def joined(self, room: str, conn_id: int, name: str, user: str | None = None) -> None:
        """A member here joined `room`."""
        self._presence.joined(room, conn_id, name, user)

    def left(self, room: str, conn_id: int, name: str) -> None:
        """A member here left `room` (or closed)."""
        self._presence.left(room, conn_id, name)

    def renamed(self, rooms: Sequence[str], conn_id: int, old: str, new: str) -> None:
        """A member here is now `new` in `rooms`."""
        self._presence.renamed(rooms, conn_id, old, new)

    def typing(self, room: str, conn_id: int, name: str) -> None:
        """A member here is typing in `room`."""
        self._presence.typing(room, conn_id, name)

    def members(self, room: str) -> Deferred[list[str]]:
        """The names of `room`'s members, as Redis has them."""
        return self._presence.members(room)

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

    # -- the webhook outbox ------------------------------------------------------

    def record(self, kind: str, data: dict[str, object]) -> None:
        """Keep an event (a moderation action) for the application, if it hears of `kind`."""
        self._outbox.record(kind, data)

    def take(self, limit: int) -> Deferred[list[Queued]]:
        """The oldest `limit` events for this instance to send ([] unless it sends now)."""
        return self._outbox.take(limit)

    def done(self, ids: Sequence[str]) -> Deferred[None]:
        """Forget events the application acknowledged, or that were dropped."""
        return self._outbox.done(ids)

    def backlog(self) -> Deferred[tuple[int, float | None]]:
        """How many events wait, and when the oldest was kept."""
        return self._outbox.backlog()

    # -- the control bus ---------------------------------------------------------

    def announce(self, notice: Notice) -> None:
        """Have every other instance tell all its connections `notice`."""
        self._control.announce(notice)

    def order(self, order: KnownOrder) -> None:
        """Hand `order` to every other instance."""
        self._control.order(order)

    def keep_order(self, order: ModerationOrder) -> None:
        """Keep `order` until it ends (an order that has ended forgets its key)."""
        self._control.keep_order(order)

    def replay_orders(self) -> None:
        """Hand the kept orders in force to the events' `on_order`, ``replayed``."""
        self._control.replay_orders()
