"""The message log on Redis: each room's messages numbered, kept in a stream, passed on.

`store` runs one script (`STORE`) and does not hand the message on itself:
its subscription brings it back, in id order with every other instance's
(see the package's docstring, and `Subscriptions`).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from chatservice.backplane import outbox
from chatservice.backplane.redis import codec, scripts
from chatservice.backplane.redis.connection import RedisConnection
from chatservice.backplane.redis.keys import Keys
from chatservice.backplane.redis.outbox import RedisOutbox
from chatservice.backplane.redis.subscriptions import Subscriptions
from chatservice.backplane.values import JOIN_HISTORY, StoredMessage, Watched


class RedisMessageLog:
    """The `MessageLog` role over Redis; reads and writes fail with `Unavailable` while it is away.

    Args:
        connection: The connection to Redis.
        keys: The deployment's key and channel names.
        instance: This instance's id (deletions say where they come from).
        keep: How many messages of each room are kept (``--history``).
        subscriptions: The watched rooms, whose messages it passes on.
        hooks: The webhook outbox (which keeps stored and deleted messages'
            events in the same script, if the application hears of them).
    """

    def __init__(
        self,
        connection: RedisConnection,
        keys: Keys,
        instance: str,
        keep: int,
        subscriptions: Subscriptions,
        hooks: RedisOutbox,
    ) -> None:
        self._created = outbox.MESSAGE_CREATED in hooks.hooks
        self._deleted = outbox.MESSAGE_DELETED in hooks.hooks
        self._outbox = hooks.outbox_key or ""
        self._connection = connection
        self._keys = keys
        self._instance = instance
        self._keep = keep
        self._subscriptions = subscriptions

    def store(
        self, room: str, username: str, message: str, time: str, user: str | None = None
    ) -> Deferred[StoredMessage]:
        """Number, keep and publish a message; fires once it is kept."""
        keys = [
            self._keys.ids,
            self._keys.log(room),
            self._keys.marks(room),
            self._keys.channel(room),
            self._keys.rooms,
        ]
        args = [self._keep, room, codec.message_json(room, username, message, time, user)]
        if self._created:
            keys.append(self._outbox)
            args.append(outbox.body_prefix(outbox.MESSAGE_CREATED, time))
        d = self._connection.command("eval", scripts.STORE, keys, args)
        return d.addCallback(lambda id: StoredMessage(int(id), room, username, message, time, user))

    def delete(self, room: str, message_id: int, by: str) -> Deferred[bool]:
        """Remove a kept message (True if it was kept), with a ``delete`` event for the others."""
        member = codec.member_id(self._instance, 0)
        event = codec.deletion_json(room, member, message_id, by)
        keys = [self._keys.log(room), self._keys.channel(room)]
        args: list[object] = [message_id, event]
        if self._deleted:
            keys.append(self._outbox)
            data = {"room": room, "id": message_id, "by": by}
            args.append(outbox.body(outbox.MESSAGE_DELETED, outbox.iso(time.time()), data))
        d = self._connection.command("eval", scripts.DELETE, keys, args)
        return d.addCallback(lambda n: int(n) > 0)

    def watch(self, room: str) -> Deferred[Watched]:
        """Pass on `room`'s messages and presence from now on; fires with the position."""
        return self._subscriptions.watch(room)

    def unwatch(self, room: str) -> None:
        """Stop passing on `room`'s messages."""
        self._subscriptions.unwatch(room)

    def recent(
        self, room: str, limit: int = JOIN_HISTORY, up_to: int | None = None
    ) -> Deferred[list[StoredMessage]]:
        """The last `limit` kept messages of `room` (up to id `up_to`), oldest first."""
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
        """What a client that last saw `since_id` missed, and whether that is all.

        Every kept message after `since_id` when none after it was dropped
        (and True), else the `recent` ones (and False).
        """
        keys = [self._keys.log(room), self._keys.marks(room)]
        d = self._connection.command("eval", scripts.SINCE, keys, [since_id, max(limit, 0)])

        def answered(reply: list[Any]) -> tuple[list[StoredMessage], bool]:
            recovered, entries = reply
            if recovered:
                return codec.entries(entries), True
            return (codec.entries(entries)[::-1] if limit > 0 else []), False

        return d.addCallback(answered)

    def rooms(self) -> Deferred[list[str]]:
        """The rooms that have kept messages, sorted."""
        d = self._connection.command("smembers", self._keys.rooms)
        return d.addCallback(lambda names: sorted(n.decode() for n in names))
