"""What crosses the backplane: stored messages, presence, deletions, notices, orders.

Frozen dataclasses, compared by value; they become JSON only at the SQLite and
Redis edge (`chatservice.backplane.codec`).  No I/O and no Twisted here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: How many messages a join sends at most, unless it recovers from ``since``.
JOIN_HISTORY = 50


class Unavailable(Exception):
    """The backplane cannot do this now (e.g. Redis is unreachable); try later."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One chat message as kept in the history.

    Attributes:
        id: Unique over all rooms and all time; increases strictly.
        room: The room it was said in.
        username: Who said it.
        message: The text.
        time: When the server received it, ISO 8601 UTC with milliseconds
            (``2026-11-22T04:02:02.123Z``), as given to `MessageLog.store`.
        user: The user id (a token's ``sub``) of an identified sender; None
            for a guest.
    """

    id: int
    room: str
    username: str
    message: str
    time: str
    user: str | None = None

    def payload(self) -> dict[str, object]:
        """The ``chat-message`` payload of this message (docs/protocol.md)."""
        payload: dict[str, object] = {
            "id": self.id,
            "room": self.room,
            "username": self.username,
            "message": self.message,
            "time": self.time,
        }
        if self.user is not None:
            payload["user"] = self.user
        return payload


@dataclass(frozen=True, slots=True)
class Presence:
    """What a member of another instance did in a watched room.

    Attributes:
        kind: ``join``, ``leave``, ``nick`` (`name` is the new name, `old` the
            old one, `rooms` all of its rooms, in its order), ``typing``, or
            ``members``: `members` is everybody elsewhere in the room now
            (after a watch or a reconnect; compare with what you knew).
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
    user: str = ""


@dataclass(frozen=True, slots=True)
class Deletion:
    """Message `id` was removed from `room` (by moderator `by`), on another instance."""

    room: str
    id: int
    by: str


@dataclass(frozen=True, slots=True)
class Watched:
    """A room being watched from `position` on, and its members elsewhere then.

    `members` maps ``<instance>:<connection>`` to names; `users` has the user
    ids of those that are identified users.
    """

    position: int
    members: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Notice:
    """A server-wide announcement (``chat-notice``) to every connection of every instance."""

    message: str
    time: str


#: What a moderation order does: close the user's connections (``kick``), keep
#: them out (``ban``, of a room or the service) or quiet (``mute``).
ORDERED_ACTIONS = ("kick", "ban", "mute")


@dataclass(frozen=True, slots=True)
class ModerationOrder:
    """A moderator's kick, ban or mute, carried out on every instance.

    Attributes:
        action: One of `ORDERED_ACTIONS`.
        name: The user's name, as the moderator gave it.
        user: Its user id, if it is an identified user's name.
        room: The room of a ban or mute; None for the whole service (and a kick).
        until: When a ban or mute ends (seconds since the epoch; in the past:
            lifted); None for a kick.
        by: Who ordered it (a moderator's name, or ``api``).
        reason: Why, for people ("" if not said).
        replayed: Kept from before and handed on again (at start, after a
            reconnect): in force again, but nobody is told again.
    """

    action: str
    name: str
    user: str | None
    room: str | None
    until: float | None
    by: str
    reason: str = ""
    replayed: bool = False

    @property
    def key(self) -> str:
        """Under what it is kept: a later order of the same action, name and room replaces it."""
        return f"{self.action}|{self.name.casefold()}|{self.room or ''}"


@dataclass(frozen=True, slots=True)
class DirectOrder:
    """Tell `user`'s connections, everywhere, of its direct conversation `room` with `other`."""

    user: str
    room: str
    other: str


@dataclass(frozen=True, slots=True)
class Displacement:
    """An identified user took `name`: a guest that has it, on any instance, gets another."""

    name: str


@dataclass(frozen=True, slots=True)
class UnknownOrder:
    """An order this version cannot carry out: of a `kind` it does not know (a newer
    version's, during an upgrade), or `malformed`.  It is kept, and ignored here."""

    kind: str | None
    malformed: bool = False


#: What one instance orders the others to do.
KnownOrder = ModerationOrder | DirectOrder | Displacement
#: What an instance may hear: an order, or one it cannot carry out.
Order = KnownOrder | UnknownOrder
