"""The backplane's roles: what the hub needs of storage and of the other instances.

One process keeps its rooms' messages in SQLite and hands each one to its own
members (`chatservice.backplane.local.LocalBackplane`).  Several processes
share them through Redis (`chatservice.backplane.redis.RedisBackplane`).  Both
implement every role below and keep the same promises, checked by the same
tests (tests/test_backplane.py):

- `MessageLog.store` numbers a message and keeps it before anybody is given
  it: ids are strictly increasing over all rooms (and all instances), and a
  message a member saw survives a crash of the process that took it.
- Every message of a watched room reaches `BackplaneEvents.on_message` once,
  in id order, on every instance, the one that stored it included.
  `MessageLog.watch` tells the position it starts from: messages up to it
  are history (`recent`, `since`), the later ones come as events.
- Reads answer with Deferreds: Redis is a round trip away.
  `LocalBackplane`'s have fired already, so one process carries a join out
  at once, in the order it always did.
- Presence spans instances (`PresenceRelay`): what members here do in a room
  (join, leave, rename, type) reaches the other instances' hubs as
  `Presence` events for their own members, with a snapshot of the room's
  members elsewhere when a room is watched (and when the backplane had to
  reconnect).  Members of an instance that died are taken out by the
  others, as if they had left.  In one process there is nobody elsewhere:
  `LocalBackplane`'s presence calls do nothing.
- A name is claimed for the whole deployment (`NameDirectory`); an
  identified user's name is theirs for good.
- Announcements and orders (`ControlBus`) reach every other instance; kept
  orders (bans, mutes) also instances that start later.
- With webhooks, the events the application hears wait in an `Outbox`,
  kept in the same write as what they tell.

Events reach the hub through the one `BackplaneEvents` object it registers
(`Backplane.register`).  A backplane that cannot do its work (Redis is down)
fails with `Unavailable`.

Each unit of the hub asks for the narrowest role it needs, so a test fake of
that unit's backplane implements one role, or overrides the methods of one
role on `LocalBackplane`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted.internet.defer import Deferred

from chatservice.backplane.outbox import Queued
from chatservice.backplane.values import (
    JOIN_HISTORY,
    Deletion,
    KnownOrder,
    ModerationOrder,
    Notice,
    Order,
    Presence,
    StoredMessage,
    Watched,
)


class BackplaneEvents(Protocol):
    """What a backplane hands on: the one object the hub registers with it."""

    def on_message(self, message: StoredMessage) -> object:
        """A stored message of a watched room (of any instance), in id order."""

    def on_deletion(self, deletion: Deletion) -> object:
        """Another instance removed a message of a watched room."""

    def on_presence(self, event: Presence) -> object:
        """A member of another instance did something in a watched room."""

    def on_notice(self, notice: Notice) -> object:
        """Another instance's announcement, for every connection here."""

    def on_order(self, order: Order) -> object:
        """Another instance's order (or a kept one, ``replayed``), to carry out here."""


class MessageLog(Protocol):
    """Where a room's messages are numbered, kept, read and passed on."""

    def store(
        self, room: str, username: str, message: str, time: str, user: str | None = None
    ) -> Deferred[StoredMessage]:
        """Number, keep and pass on a message; fires once it is kept."""

    def delete(self, room: str, message_id: int, by: str) -> Deferred[bool]:
        """Remove a kept message (True if it was kept); other instances hear a `Deletion`."""

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

        Every kept message after `since_id` when none after it was dropped
        (and True), else the `recent` ones (and False).
        """

    def rooms(self) -> Deferred[list[str]]:
        """The rooms that have kept messages, sorted."""


class PresenceRelay(Protocol):
    """Tells the other instances what members here do in rooms; reads who is elsewhere."""

    def joined(self, room: str, conn_id: int, name: str, user: str | None = None) -> None:
        """A member here joined `room`."""

    def left(self, room: str, conn_id: int, name: str) -> None:
        """A member here left `room` (or closed)."""

    def renamed(self, rooms: Sequence[str], conn_id: int, old: str, new: str) -> None:
        """A member here is now `new` in `rooms`."""

    def typing(self, room: str, conn_id: int, name: str) -> None:
        """A member here is typing in `room`."""

    def members(self, room: str) -> Deferred[list[str]]:
        """The names of `room`'s members on other instances."""


class NameDirectory(Protocol):
    """Who has which name, over every instance; identified users' names and conversations."""

    #: Put in guests' names (``guest-<prefix>7``) so that instances do not collide.
    guest_prefix: str

    def claim(self, name: str, conn_id: int, user: str | None = None) -> Deferred[bool]:
        """Take `name` (any case) for connection `conn_id`; False if someone has it.

        With `user`, for that identified user, for good: every connection of
        that user may claim it, nobody else ever.  A guest holding it loses it:
        a guest elsewhere is renamed by its instance (a `Displacement` order);
        one here, by the hub that claims.
        """

    def holder(self, name: str) -> Deferred[str | None]:
        """The user id whose name `name` is, if an identified user claimed it."""

    def release(self, name: str, conn_id: int) -> None:
        """Give back a name `conn_id` claimed."""

    def converse(self, user: str, room: str, other: str) -> None:
        """Remember that user `user` has the direct conversation `room` with `other` (a name)."""

    def conversations(self, user: str) -> Deferred[dict[str, str]]:
        """User `user`'s direct conversations: room -> the other's name."""


class ControlBus(Protocol):
    """Announcements and orders from this instance to every other one."""

    def announce(self, notice: Notice) -> None:
        """Have every other instance tell all its connections `notice`."""

    def order(self, order: KnownOrder) -> None:
        """Hand `order` to every other instance."""

    def keep_order(self, order: ModerationOrder) -> None:
        """Keep `order` (replacing the one of its `key`) until it ends, for instances
        that start later; an order that has ended forgets its key.

        Kept orders are handed on again, ``replayed``, by `replay_orders` (and, on
        Redis, whenever the connection to it comes back).
        """

    def replay_orders(self) -> None:
        """Hand the kept orders in force to the events' `on_order` (at start)."""


class Outbox(Protocol):
    """The events the application has not heard yet (docs/hooks.md), kept durably, in order.

    Messages stored and deleted are kept in the write that stores or
    deletes them; people entering and leaving rooms, coming online and going
    offline, by `PresenceRelay`'s calls.  Nothing is kept without
    ``--webhook``, or of a type not chosen (``--webhook-events``).
    """

    def record(self, kind: str, data: dict[str, object]) -> None:
        """Keep an event (a moderation action) for the application, if it hears of `kind`."""

    def take(self, limit: int) -> Deferred[list[Queued]]:
        """The oldest `limit` events not acknowledged yet, for this instance to send.

        With several instances one sends at a time (so that a room's events
        arrive in order): the others are answered nothing.  What an instance
        that died had taken is taken again by the next one.
        """

    def done(self, ids: Sequence[str]) -> Deferred[None]:
        """Forget events the application acknowledged, or that were dropped."""

    def backlog(self) -> Deferred[tuple[int, float | None]]:
        """How many events wait, and when the oldest was kept (seconds since the epoch)."""


class Backplane(MessageLog, PresenceRelay, NameDirectory, ControlBus, Outbox, Protocol):
    """Every role at once, as each backplane implements them."""

    @property
    def problem(self) -> str | None:
        """Why the backplane cannot work now (for /healthz), or None."""

    def register(self, events: BackplaneEvents) -> None:
        """Hand every event from now on to `events` (the hub's)."""
