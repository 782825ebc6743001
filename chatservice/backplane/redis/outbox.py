"""The webhook outbox on Redis: one stream for every instance, sent by one at a time.

Events go into the stream ``hooks:outbox`` in the script that does what they
tell: the message's `STORE`, the deletion's `DELETE`, the attendance scripts
(`ARRIVE`, `DEPART`, `RESYNC`, `OFFLINE`: who is in which room and online,
counted over every instance; see `chatservice.backplane.redis.scripts`).

Sending: the instance holding the lease ``hooks:poster`` (renewed every
second, gone `LEASE` after its holder stopped) reads the stream through the
consumer group ``webhooks`` and acknowledges (and deletes) what the receiver
took.  One sender at a time keeps each room's events in order; the group's
pending list keeps what a sender took and did not finish: the next one claims
it (XAUTOCLAIM) once idle for `CLAIM_IDLE`, and sends it before anything newer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from chatservice import logs
from chatservice.backplane import outbox
from chatservice.backplane.outbox import Attendee, Queued
from chatservice.backplane.redis import codec, scripts
from chatservice.backplane.redis.connection import RedisConnection, quietly
from chatservice.backplane.redis.keys import Keys

_log = logs.logger("chatservice.redis_backplane")

#: Milliseconds the sender's lease lasts without renewal.
LEASE = 5000
#: Milliseconds after which what a sender took and did not finish is another's.
CLAIM_IDLE = 10000

_ATTENDANCE_TYPES = {outbox.ROOM_ENTERED, outbox.ROOM_LEFT, outbox.USER_ONLINE, outbox.USER_OFFLINE}


class RedisOutbox:
    """The `Outbox` role over Redis, with the attendance bookkeeping of this instance.

    Args:
        connection: The connection to Redis.
        keys: The deployment's key names.
        instance: This instance's id (its consumer name, and its lease).
        hooks: The event types kept (none: this does nothing).
        offline_delay: Seconds from a person's last room to ``user.offline``.
        clock: The lease's and grace periods' timer.
    """

    def __init__(
        self,
        connection: RedisConnection,
        keys: Keys,
        instance: str,
        hooks: frozenset[str],
        offline_delay: float,
        clock: Any,
    ) -> None:
        self._connection = connection
        self._keys = keys
        self._instance = instance
        self.hooks = hooks
        self._types = " ".join(sorted(hooks))
        self._delay_ms = int(offline_delay * 1000)
        self._clock = clock
        #: Whether who is where is counted (the application hears of it).
        self.attending = bool(hooks & _ATTENDANCE_TYPES)
        self._stream = keys.hooks("outbox")
        self._poster = keys.hooks("poster")
        self._present = keys.instance(instance, "present")
        self._ticks = LoopingCall(self._tick)
        self._ticks.clock = clock
        self._sending = False
        self._backlog: tuple[int, float | None] = (0, None)

    @property
    def outbox_key(self) -> str | None:
        """The stream the message scripts add to, or None without webhooks."""
        return self._stream if self.hooks else None

    def start(self) -> None:
        """Every second: renew the lease while sending, end grace periods."""
        if self.hooks:
            self._ticks.start(1.0, now=False)

    def stop(self) -> None:
        """Stop the timer; give the lease back (another instance sends at once)."""
        if self._ticks.running:
            self._ticks.stop()
        if self._sending and self._connection.ready:
            self._sending = False
            keys = [self._stream, self._poster]
            d = self._connection.command("eval", scripts.RELEASE_LEASE, keys, [self._instance])
            quietly(d, "webhook lease")

    def _tick(self) -> None:
        if not self._connection.ready:
            return
        if self._sending:
            keys = [self._stream, self._poster]
            quietly(
                self._connection.command("eval", scripts.RENEW, keys, [self._instance, LEASE]),
                "webhook lease",
            )
        if self.attending:
            keys, args = self._attendance()
            quietly(self._connection.command("eval", scripts.OFFLINE, keys, args), "offline")

    # -- keeping ---------------------------------------------------------------

    def record(self, kind: str, data: dict[str, object]) -> None:
        """Keep a moderation action (or any event not tied to a write) for the application."""
        if kind not in self.hooks:
            return
        event = outbox.body(kind, outbox.iso(self._clock.seconds()), data)
        d = self._connection.command("eval", scripts.RECORD, [self._stream, self._poster], [event])
        d.addErrback(
            lambda failure: _log.failure(
                "redis: a webhook event ({kind}) could not be kept", failure, kind=kind
            )
        )

    def _attendance(self) -> tuple[list[str], list[Any]]:
        """The keys and arguments every attendance script starts with."""
        keys = [
            self._stream,
            self._keys.hooks("online"),
            self._keys.hooks("going"),
            self._keys.hooks("who"),
            self._present,
        ]
        now = self._clock.seconds()
        args: list[Any] = [
            outbox.iso(now),
            int(now * 1000),
            self._delay_ms,
            self._types,
            self._keys.hooks("room:"),
        ]
        return keys, args

    @staticmethod
    def _field(conn_id: int, room: str) -> str:
        return f"{conn_id}\x1f{room}"

    @staticmethod
    def _arrival(conn_id: int, room: str, who: Attendee) -> list[str]:
        person = json.dumps({"user": who.user, "name": who.name}, ensure_ascii=False)
        return [RedisOutbox._field(conn_id, room), who.key, person, room]

    def arrived(self, room: str, conn_id: int, who: Attendee) -> None:
        """Connection `conn_id` here of `who` is in `room` (best effort while Redis is away)."""
        if not self.attending or not self._connection.ready:
            return
        keys, args = self._attendance()
        args += self._arrival(conn_id, room, who)
        quietly(self._connection.command("eval", scripts.ARRIVE, keys, args), "arrive")

    def departed(self, room: str, conn_id: int) -> None:
        """Connection `conn_id` here is no longer in `room`."""
        if not self.attending or not self._connection.ready:
            return
        keys, args = self._attendance()
        args.append(self._field(conn_id, room))
        quietly(self._connection.command("eval", scripts.DEPART, keys, args), "depart")

    def resync(self, memberships: dict[str, dict[str, str]]) -> None:
        """Make Redis's record of this instance's connections what `memberships` says.

        After Redis was away (departures were not told) or lost its data.

        Args:
            memberships: room -> member id -> member value, as the presence keeps them.
        """
        if not self.attending or not self._connection.ready:
            return
        keys, args = self._attendance()
        for room, members in memberships.items():
            for member, value in members.items():
                conn_id = int(member.rsplit(":", 1)[1])
                name, user = codec.member_name(value), codec.member_user(value)
                args += self._arrival(conn_id, room, Attendee(name, user))
        quietly(self._connection.command("eval", scripts.RESYNC, keys, args), "resync")

    def reaped(self, instance: str) -> None:
        """Instance `instance` died: every connection it had departs."""
        if not self.attending or not self._connection.ready:
            return
        keys, args = self._attendance()
        keys[4] = self._keys.instance(instance, "present")
        quietly(self._connection.command("eval", scripts.RESYNC, keys, args), "reap attendance")

    # -- sending -----------------------------------------------------------------

    def take(self, limit: int) -> Deferred[list[Queued]]:
        """The oldest `limit` events for this instance to send ([] unless it holds the lease)."""
        if not self.hooks or not self._connection.ready:
            # (Redis away: the connection says so in the log and /healthz.)
            return defer.succeed([])
        keys = [self._stream, self._poster]
        args = [self._instance, LEASE, CLAIM_IDLE, limit]
        d = self._connection.command("eval", scripts.TAKE, keys, args)

        def taken(reply: list[Any]) -> list[Queued]:
            self._sending = bool(int(reply[0]))
            events = []
            for entry_id, fields in reply[1] if len(reply) > 1 else []:
                entry = codec.text(entry_id)
                kept = codec.text(fields[1]) if fields else ""
                if not kept:
                    continue
                events.append(Queued(f"evt_{entry}", int(entry.split("-")[0]) / 1000, kept))
            return events

        return d.addCallback(taken)

    def done(self, ids: Sequence[str]) -> Deferred[None]:
        """Acknowledge events: gone from the stream."""
        if not ids:
            return defer.succeed(None)
        entries = [i.removeprefix("evt_") for i in ids]
        d = self._connection.command("eval", scripts.DONE, [self._stream], entries)
        return d.addCallback(lambda _: None)

    def backlog(self) -> Deferred[tuple[int, float | None]]:
        """How many events wait, and when the oldest was kept (last known, Redis away)."""
        if not self._connection.ready:
            return defer.succeed(self._backlog)
        d = self._connection.command("eval", scripts.BACKLOG, [self._stream], [])

        def answered(reply: list[Any]) -> tuple[int, float | None]:
            count, first = int(reply[0]), codec.text(reply[1])
            self._backlog = count, (int(first.split("-")[0]) / 1000 if first else None)
            return self._backlog

        return d.addCallback(answered)
