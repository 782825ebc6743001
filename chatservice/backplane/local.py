"""One process's backplane: the SQLite `History`, messages passed on in-process.

It implements every role of `chatservice.backplane.roles`; where nobody is
elsewhere (presence, announcements, orders to other instances) there is
nothing to do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from chatservice import logs
from chatservice.backplane import outbox
from chatservice.backplane.attendance import Attendance, Made
from chatservice.backplane.codec import order_fields, parse_order
from chatservice.backplane.history import History
from chatservice.backplane.outbox import Attendee, Queued
from chatservice.backplane.roles import BackplaneEvents
from chatservice.backplane.values import (
    JOIN_HISTORY,
    KnownOrder,
    ModerationOrder,
    Notice,
    StoredMessage,
    Watched,
)

_log = logs.logger("chatservice.backplane")


class LocalBackplane:
    """One process: the SQLite `History`, messages passed on in-process.

    Every stored message goes to the events (watching costs nothing here).
    With webhooks (the history's ``hooks``), the events the application hears
    are kept in the history's outbox.

    Args:
        history: The SQLite history (its ``hooks``: the event types kept).
        clock: The time, and the timer of the offline grace periods (the
            global reactor if None).
        offline_delay: Seconds from a person's last room to ``user.offline``.
    """

    guest_prefix = ""
    #: A process's own SQLite is always there (its failures are per call).
    problem = None

    def __init__(self, history: History, clock: Any = None, offline_delay: float = 5.0) -> None:
        self.history = history
        self._events: BackplaneEvents | None = None
        hooks = history.hooks
        watched = {outbox.ROOM_ENTERED, outbox.ROOM_LEFT, outbox.USER_ONLINE, outbox.USER_OFFLINE}
        #: Who is where, for the application (only if it hears of it).
        self.attendance = Attendance(offline_delay) if hooks & watched else None
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock
        self._sweep: LoopingCall | None = None

    def start(self) -> None:
        """Tell who left when the process last ended; time the grace periods."""
        attendance = self.attendance
        if attendance is None:
            return
        now = self._clock.seconds()
        for name, user, at in self.history.going_behind:
            attendance.going(Attendee(name, user), at)
        bodies: list[str] = []
        departed = []
        going = []
        for conn, room, name, user in self.history.left_behind:
            who = Attendee(name, user)
            departed.append((conn, room))
            if outbox.ROOM_LEFT in self.history.hooks:
                bodies.append(
                    outbox.body(outbox.ROOM_LEFT, outbox.iso(time.time()), who.data(room))
                )
            if attendance.pending(who) is None:
                attendance.going(who, now + attendance.delay)
                going.append((who.key, who.name, who.user, now + attendance.delay))
        self.history.left_behind, self.history.going_behind = [], []
        if departed:
            self._keep(bodies, departed=departed, going=going)
        self._sweep = LoopingCall(self._offline)
        self._sweep.clock = self._clock
        self._sweep.start(min(1.0, attendance.delay or 1.0), now=False)

    def stop(self) -> None:
        """Stop timing the grace periods (who is in one is kept: see `left`)."""
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()

    def _offline(self) -> None:
        assert self.attendance is not None
        made = self.attendance.due(self._clock.seconds())
        if made:
            back = [Attendee(str(d["name"]), _user(d)).key for _, d in made]
            self._keep(self._bodies(made), back=back)

    def _bodies(self, made: list[Made]) -> list[str]:
        when = outbox.iso(time.time())
        hooks = self.history.hooks
        return [outbox.body(kind, when, data) for kind, data in made if kind in hooks]

    def _keep(
        self,
        bodies: Sequence[str],
        arrived: Sequence[tuple[int, str, str, str | None]] = (),
        departed: Sequence[tuple[int, str]] = (),
        going: Sequence[tuple[str, str, str | None, float]] = (),
        back: Sequence[str] = (),
    ) -> None:
        self.history.record(bodies, arrived, departed, going, back).addErrback(
            lambda failure: _log.failure(
                "webhook events could not be kept: {events}", failure, events=len(bodies)
            )
        )

    # The outbox.

    def record(self, kind: str, data: dict[str, object]) -> None:
        """Keep an event for the application (if it hears of `kind`)."""
        if kind in self.history.hooks:
            self._keep([outbox.body(kind, outbox.iso(time.time()), data)])

    def take(self, limit: int) -> Deferred[list[Queued]]:
        """The oldest `limit` events the application has not acknowledged."""
        return self.history.take(limit)

    def done(self, ids: Sequence[str]) -> Deferred[None]:
        """Forget events the application acknowledged (or that were dropped)."""
        return self.history.done(ids)

    def backlog(self) -> Deferred[tuple[int, float | None]]:
        """How many events wait, and when the oldest was kept."""
        return defer.succeed(self.history.backlog())

    def register(self, events: BackplaneEvents) -> None:
        """Hand every stored message and replayed order to `events` from now on."""
        self._events = events

    # The message log.

    def store(
        self, room: str, username: str, message: str, time: str, user: str | None = None
    ) -> Deferred[StoredMessage]:
        """Keep the message in SQLite, then hand it to the events."""
        return self.history.append(room, username, message, time, user).addCallback(self._pass_on)

    def _pass_on(self, message: StoredMessage) -> StoredMessage:
        if self._events is not None:
            self._events.on_message(message)
        return message

    def delete(self, room: str, message_id: int, by: str) -> Deferred[bool]:
        """Remove the message from SQLite (nobody elsewhere to tell)."""
        return self.history.delete(room, message_id, by)

    def watch(self, room: str) -> Deferred[Watched]:
        """Every room is passed on already: the position is its newest message."""
        return defer.succeed(Watched(self.history.newest(room)))

    def unwatch(self, room: str) -> None:
        """Nothing to stop."""

    def recent(
        self, room: str, limit: int = JOIN_HISTORY, up_to: int | None = None
    ) -> Deferred[list[StoredMessage]]:
        """From the history's cache, at once."""
        if up_to is None or up_to >= self.history.newest(room):
            return defer.succeed(self.history.recent(room, limit))
        kept = [m for m in self.history.recent(room, self.history.keep) if m.id <= up_to]
        return defer.succeed(kept[-limit:] if limit > 0 else [])

    def since(
        self, room: str, since_id: int, limit: int = JOIN_HISTORY
    ) -> Deferred[tuple[list[StoredMessage], bool]]:
        """From the history's cache, at once."""
        return defer.succeed(self.history.since(room, since_id, limit))

    def rooms(self) -> Deferred[list[str]]:
        """From the history's cache, at once."""
        return defer.succeed(self.history.rooms())

    # The name directory: the hub keeps who has which name now; users' names
    # are kept for good in the history's database (what the Redis names hash
    # does for many).

    def claim(self, name: str, conn_id: int, user: str | None = None) -> Deferred[bool]:
        """Refused only if another identified user's name; a user's first claim is kept."""
        holder = self.history.user_of(name)
        if holder is not None and holder != user:
            return defer.succeed(False)
        if user is not None and holder is None:
            self.history.reserve(name, user).addErrback(
                lambda failure: _log.failure("the name {name!r} was not kept", failure, name=name)
            )
        return defer.succeed(True)

    def holder(self, name: str) -> Deferred[str | None]:
        """From the history's names table (cached)."""
        return defer.succeed(self.history.user_of(name))

    def release(self, name: str, conn_id: int) -> None:
        """Nothing kept: the hub knows the guests' names."""

    def converse(self, user: str, room: str, other: str) -> None:
        """Kept in the history's database."""
        self.history.converse(user, room, other).addErrback(
            lambda failure: _log.failure("a conversation was not kept", failure)
        )

    def conversations(self, user: str) -> Deferred[dict[str, str]]:
        """From the history's cache, at once."""
        return defer.succeed(self.history.conversations(user))

    # The presence relay: nobody elsewhere, the hub's own members are all there is.

    def joined(self, room: str, conn_id: int, name: str, user: str | None = None) -> None:
        """Nobody elsewhere to tell; the application may hear of it."""
        attendance = self.attendance
        if attendance is not None:
            who = Attendee(name, user)
            was_going = attendance.pending(who) is not None
            made = attendance.arrive(conn_id, room, who)
            back = [who.key] if was_going and attendance.pending(who) is None else []
            self._keep(self._bodies(made), arrived=[(conn_id, room, name, user)], back=back)

    def left(self, room: str, conn_id: int, name: str) -> None:
        """Nobody elsewhere to tell; the application may hear of it."""
        attendance = self.attendance
        if attendance is not None:
            who = attendance.present(conn_id, room)
            made = attendance.depart(conn_id, room, self._clock.seconds())
            # A grace period that starts is kept in the same write: a process
            # killed before it ends still tells user.offline after its restart.
            at = attendance.pending(who) if who is not None else None
            going = [(who.key, who.name, who.user, at)] if who is not None and at else []
            self._keep(self._bodies(made), departed=[(conn_id, room)], going=going)

    def renamed(self, rooms: Sequence[str], conn_id: int, old: str, new: str) -> None:
        """Nobody elsewhere to tell; to the application a guest's new name is a new person."""
        attendance = self.attendance
        if attendance is None:
            return
        for room in rooms:
            who = attendance.present(conn_id, room)
            if who is not None and who.user is None:
                self.left(room, conn_id, old)
                self.joined(room, conn_id, new)

    def typing(self, room: str, conn_id: int, name: str) -> None:
        """Nobody elsewhere to tell."""

    def members(self, room: str) -> Deferred[list[str]]:
        """Nobody elsewhere."""
        return defer.succeed([])

    # The control bus: nobody elsewhere to order; kept orders outlive a restart.

    def announce(self, notice: Notice) -> None:
        """Nobody elsewhere to tell."""

    def order(self, order: KnownOrder) -> None:
        """Nobody elsewhere to tell."""

    def keep_order(self, order: ModerationOrder) -> None:
        """Kept in the history's database until it ends (one that ended is forgotten)."""
        until = order.until if order.until is not None else 0.0
        # (The JSON as it always was in the orders table: json.dumps's defaults.)
        body = json.dumps(order_fields(order))
        self.history.keep_order(order.key, body, until).addErrback(
            lambda failure: _log.failure(
                "the order {key} could not be kept", failure, key=order.key
            )
        )

    def replay_orders(self) -> None:
        """Hand every kept order in force to the events, ``replayed``."""
        if self._events is None:
            return
        for body in self.history.orders():
            self._events.on_order(parse_order(json.loads(body), replayed=True))


def _user(data: dict[str, object]) -> str | None:
    user = data.get("user")
    return user if isinstance(user, str) else None
