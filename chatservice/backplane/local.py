"""Where room messages are numbered, kept and passed on: the backplane.

One process keeps its rooms' messages in SQLite and hands each one to its own
members (`LocalBackplane`, today's behaviour).  Several processes share them
through Redis (`chatservice.redis_backplane.RedisBackplane`).  Both keep the
same promises, checked by the same tests (tests/test_backplane.py):

- `store` numbers a message and keeps it before anybody is given it: ids are
  strictly increasing over all rooms (and all instances), and a message a
  member saw survives a crash of the process that took it.
- Every message of a watched room reaches `listener` once, in id order, on
  every instance, the one that stored it included.  `watch` tells the
  position it starts from: messages up to it are history (`recent`,
  `since`), the later ones come to the listener.
- Reads (`recent`, `since`, `rooms`) answer with Deferreds: Redis is a round
  trip away.  `LocalBackplane`'s have fired already.
- Presence spans instances: a name is claimed for the whole deployment, and
  what members here do in a room (join, leave, rename, type) reaches the
  other instances' hubs as `Presence` events for their own members, with a
  snapshot of the room's members elsewhere when a room is watched (and when
  the backplane had to reconnect).  Members of an instance that died are
  taken out by the others, as if they had left.  In one process there is
  nobody elsewhere: `LocalBackplane`'s presence calls do nothing.

A backplane that cannot do its work (Redis is down) fails with `Unavailable`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred

from chatservice import logs
from chatservice.backplane.history import JOIN_HISTORY, History, StoredMessage

_log = logs.logger("chatservice.backplane")

#: What a backplane hands each message of a watched room to.
Listener = Callable[[StoredMessage], None]


@dataclass(frozen=True, slots=True)
class Presence:
    """What a member of another instance did in a watched room.

    Attributes:
        kind: ``join``, ``leave``, ``nick`` (`name` is the new name, `old` the
            old one, `rooms` all of its rooms, in its order), ``typing``,
            ``members``: `members` is everybody elsewhere in the room now
            (after a watch or a reconnect; compare with what you knew), or
            ``delete``: message `id` was removed from the room by `name`.
        member: Who, over all instances (``<instance>:<connection>``).
        user: The member's user id, if it is an identified user.
    """

    kind: str
    room: str
    member: str = ""
    name: str = ""
    old: str = ""
    rooms: tuple[str, ...] = ()
    members: dict[str, str] | None = None
    id: int = 0
    user: str = ""


#: What a backplane hands presence events of watched rooms to.
PresenceListener = Callable[[Presence], None]


@dataclass(frozen=True, slots=True)
class Watched:
    """A room being watched from `position` on, and its members elsewhere then.

    `users` has the user ids of those that are identified users.
    """

    position: int
    members: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)


class Unavailable(Exception):
    """The backplane cannot do this now (e.g. Redis is unreachable); try later."""


class Backplane(Protocol):
    """What the hub needs of a backplane (see the module docstring)."""

    listener: Listener | None
    presence: PresenceListener | None
    #: Put in guests' names (``guest-<prefix>7``) so that instances do not collide.
    guest_prefix: str

    @property
    def problem(self) -> str | None:
        """Why the backplane cannot work now (for /healthz), or None."""

    def store(
        self, room: str, username: str, message: str, time: str, user: str | None = None
    ) -> Deferred[StoredMessage]:
        """Number, keep and pass on a message; fires once it is kept."""

    def delete(self, room: str, message_id: int, by: str) -> Deferred[bool]:
        """Remove a kept message (True if it was kept); other instances hear a ``delete``."""

    def watch(self, room: str) -> Deferred[Watched]:
        """Pass on `room`'s messages and presence from now on; fires with the position."""

    def unwatch(self, room: str) -> None:
        """Stop passing on `room`'s messages."""

    def recent(
        self, room: str, limit: int = JOIN_HISTORY, up_to: int | None = None
    ) -> Deferred[list[StoredMessage]]:
        """The last `limit` kept messages of `room` (up to id `up_to`), oldest first."""

    def since(
        self, room: str, since_id: int, limit: int = JOIN_HISTORY
    ) -> Deferred[tuple[list[StoredMessage], bool]]:
        """What a client that last saw `since_id` missed, and whether that is all.

        As `History.since`: every kept message after `since_id` when none after
        it was dropped, else the `recent` ones and False.
        """

    def rooms(self) -> Deferred[list[str]]:
        """The rooms that have kept messages, sorted."""

    def claim(self, name: str, conn_id: int, user: str | None = None) -> Deferred[bool]:
        """Take `name` (any case) for connection `conn_id`; False if someone has it.

        With `user`, for that identified user, for good: every connection of
        that user may claim it, nobody else ever.  A guest holding it loses it:
        a guest elsewhere is renamed by its instance (an order of kind
        ``displace``); one here, by the hub that claims.
        """

    def holder(self, name: str) -> Deferred[str | None]:
        """The user id whose name `name` is, if an identified user claimed it."""

    def converse(self, user: str, room: str, other: str) -> None:
        """Remember that user `user` has the direct conversation `room` with `other` (a name)."""

    def conversations(self, user: str) -> Deferred[dict[str, str]]:
        """User `user`'s direct conversations: room -> the other's name."""

    def release(self, name: str, conn_id: int) -> None:
        """Give back a name `conn_id` claimed."""

    def joined(self, room: str, conn_id: int, name: str, user: str | None = None) -> None:
        """Tell the other instances a member here joined `room`."""

    def left(self, room: str, conn_id: int, name: str) -> None:
        """Tell the other instances a member here left `room` (or closed)."""

    def renamed(self, rooms: Sequence[str], conn_id: int, old: str, new: str) -> None:
        """Tell the other instances a member here is now `new` in `rooms`."""

    def typing(self, room: str, conn_id: int, name: str) -> None:
        """Tell the other instances a member here is typing in `room`."""

    def members(self, room: str) -> Deferred[list[str]]:
        """The names of `room`'s members on other instances."""

    #: What announcements of other instances (`announce`) are handed to.
    notices: Callable[[str, str], object] | None

    def announce(self, message: str, time: str) -> None:
        """Have every other instance tell all its connections `message`."""

    #: What `order`s of other instances are handed to.
    orders: Callable[[dict[str, Any]], object] | None

    def order(self, order: dict[str, Any]) -> None:
        """Hand `order` (JSON-able: moderation, direct conversations) to every other instance."""

    def keep_order(self, key: str, order: dict[str, Any], until: float) -> None:
        """Keep `order` (replacing `key`'s) until `until`, for instances that start later.

        An `until` in the past forgets `key`.  Kept orders are handed to
        `orders` again, with ``"replayed": true``, by `replay_orders` (and,
        on Redis, whenever the connection to it comes back).
        """

    def replay_orders(self) -> None:
        """Hand the kept orders in force to `orders` (at start)."""


class LocalBackplane:
    """One process: the SQLite `History`, messages passed on in-process.

    Every stored message goes to the listener (watching costs nothing here).
    """

    guest_prefix = ""
    #: A process's own SQLite is always there (its failures are per call).
    problem = None

    def __init__(self, history: History) -> None:
        self.history = history
        self.listener: Listener | None = None
        self.presence: PresenceListener | None = None
        self.notices: Callable[[str, str], object] | None = None
        self.orders: Callable[[dict[str, Any]], object] | None = None

    def store(
        self, room: str, username: str, message: str, time: str, user: str | None = None
    ) -> Deferred[StoredMessage]:
        return self.history.append(room, username, message, time, user).addCallback(self._pass_on)

    def delete(self, room: str, message_id: int, by: str) -> Deferred[bool]:
        return self.history.delete(room, message_id)

    def _pass_on(self, message: StoredMessage) -> StoredMessage:
        if self.listener is not None:
            self.listener(message)
        return message

    def watch(self, room: str) -> Deferred[Watched]:
        return defer.succeed(Watched(self.history.newest(room)))

    def unwatch(self, room: str) -> None:
        pass

    def recent(
        self, room: str, limit: int = JOIN_HISTORY, up_to: int | None = None
    ) -> Deferred[list[StoredMessage]]:
        if up_to is None or up_to >= self.history.newest(room):
            return defer.succeed(self.history.recent(room, limit))
        kept = [m for m in self.history.recent(room, self.history.keep) if m.id <= up_to]
        return defer.succeed(kept[-limit:] if limit > 0 else [])

    def since(
        self, room: str, since_id: int, limit: int = JOIN_HISTORY
    ) -> Deferred[tuple[list[StoredMessage], bool]]:
        return defer.succeed(self.history.since(room, since_id, limit))

    def rooms(self) -> Deferred[list[str]]:
        return defer.succeed(self.history.rooms())

    # Names: the hub keeps who has which name now; users' names are kept for
    # good in the history's database (what the Redis names hash does for many).

    def claim(self, name: str, conn_id: int, user: str | None = None) -> Deferred[bool]:
        holder = self.history.user_of(name)
        if holder is not None and holder != user:
            return defer.succeed(False)
        if user is not None and holder is None:
            self.history.reserve(name, user).addErrback(
                lambda failure: _log.failure("the name {name!r} was not kept", failure, name=name)
            )
        return defer.succeed(True)

    def holder(self, name: str) -> Deferred[str | None]:
        return defer.succeed(self.history.user_of(name))

    def converse(self, user: str, room: str, other: str) -> None:
        self.history.converse(user, room, other).addErrback(
            lambda failure: _log.failure("a conversation was not kept", failure)
        )

    def conversations(self, user: str) -> Deferred[dict[str, str]]:
        return defer.succeed(self.history.conversations(user))

    def release(self, name: str, conn_id: int) -> None:
        pass

    # Nobody elsewhere: the hub's own members are all there is.

    def joined(self, room: str, conn_id: int, name: str, user: str | None = None) -> None:
        pass

    def left(self, room: str, conn_id: int, name: str) -> None:
        pass

    def renamed(self, rooms: Sequence[str], conn_id: int, old: str, new: str) -> None:
        pass

    def typing(self, room: str, conn_id: int, name: str) -> None:
        pass

    def announce(self, message: str, time: str) -> None:
        pass

    def order(self, order: dict[str, Any]) -> None:
        pass

    def keep_order(self, key: str, order: dict[str, Any], until: float) -> None:
        self.history.keep_order(key, json.dumps(order), until).addErrback(
            lambda failure: _log.failure("the order {key} could not be kept", failure, key=key)
        )

    def replay_orders(self) -> None:
        if self.orders is None:
            return
        for body in self.history.orders():
            self.orders({**json.loads(body), "replayed": True})

    def members(self, room: str) -> Deferred[list[str]]:
        return defer.succeed([])
