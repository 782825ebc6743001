"""Who is in which room and who is online, as the application hears it (one process).

A person is a user id, or a guest's name (`chatservice.backplane.outbox.Attendee`).
They enter a room with their first connection in it and leave it with their
last; they come online with their first room (the text dialect's lobby
counts) and go offline when their last one is gone *and* they did not come
back within the grace period (``--webhook-offline-delay``): a reconnect, or a
page reload, tells the application nothing.

`Attendance` is the bookkeeping only: plain state, no I/O and no clock of its
own; it answers with the events each change makes.  `LocalBackplane` keeps
them in the outbox; the Redis backplane does the same bookkeeping in scripts,
over every instance (`chatservice.backplane.redis.outbox`).
"""

from __future__ import annotations

from collections import Counter

from chatservice.backplane.outbox import (
    ROOM_ENTERED,
    ROOM_LEFT,
    USER_OFFLINE,
    USER_ONLINE,
    Attendee,
)

#: An event the bookkeeping made: its type and data.
Made = tuple[str, dict[str, object]]


class Attendance:
    """Connections in rooms, counted per person; the grace period of those who went.

    Args:
        delay: Seconds between a person's last room and their ``user.offline``.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        #: (connection, room) -> who.
        self._present: dict[tuple[int, str], Attendee] = {}
        #: (room, person's key) -> their connections in it.
        self._in_room: Counter[tuple[str, str]] = Counter()
        #: person's key -> their connections' rooms, over all rooms.
        self._online: Counter[str] = Counter()
        #: person's key -> (when they go offline, who), while in their grace period.
        self._going: dict[str, tuple[float, Attendee]] = {}

    def present(self, conn: int, room: str) -> Attendee | None:
        """Who connection `conn` is in `room`, if it is there."""
        return self._present.get((conn, room))

    def arrive(self, conn: int, room: str, who: Attendee) -> list[Made]:
        """Connection `conn` of `who` is in `room` now: the events that makes (maybe none)."""
        if (conn, room) in self._present:
            return []
        self._present[conn, room] = who
        key = who.key
        made: list[Made] = []
        self._in_room[room, key] += 1
        if self._in_room[room, key] == 1:
            made.append((ROOM_ENTERED, who.data(room)))
        self._online[key] += 1
        if self._online[key] == 1 and self._going.pop(key, None) is None:
            made.insert(0, (USER_ONLINE, who.data()))
        return made

    def depart(self, conn: int, room: str, now: float) -> list[Made]:
        """Connection `conn` is no longer in `room`: the events that makes (maybe none).

        A person whose last room this was goes offline `delay` after `now`
        (see `due`), unless they arrive again before.
        """
        who = self._present.pop((conn, room), None)
        if who is None:
            return []
        key = who.key
        made: list[Made] = []
        self._in_room[room, key] -= 1
        if self._in_room[room, key] <= 0:
            del self._in_room[room, key]
            made.append((ROOM_LEFT, who.data(room)))
        self._online[key] -= 1
        if self._online[key] <= 0:
            del self._online[key]
            self._going[key] = (now + self.delay, who)
        return made

    def going(self, who: Attendee, at: float) -> None:
        """`who` was online when the process last ended: offline at `at` unless back before."""
        if who.key not in self._online:
            self._going.setdefault(who.key, (at, who))

    def pending(self, who: Attendee) -> float | None:
        """When `who` goes offline, if they are in their grace period."""
        going = self._going.get(who.key)
        return going[0] if going is not None else None

    def goers(self) -> list[tuple[Attendee, float]]:
        """Who is in their grace period, and when it ends."""
        return [(who, at) for at, who in self._going.values()]

    def due(self, now: float) -> list[Made]:
        """The ``user.offline`` events whose grace period is over at `now`."""
        over = [key for key, (at, _) in self._going.items() if at <= now]
        return [(USER_OFFLINE, self._going.pop(key)[1].data()) for key in over]

    def next_due(self) -> float | None:
        """When the next grace period ends, if any."""
        return min((at for at, _ in self._going.values()), default=None)
