"""The join-history cache: a joiner's ``chat-history``, read and encoded once for all who ask.

A reconnect storm asks for the same history thousands of times: while it is
read from the message log (a round trip away on Redis), every joiner asking
the same waits for that one read; once read, it is encoded and framed (and,
for compressing members, compressed) once, and kept until the room's next
message (docs/protocol.md, "Large rooms").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from chatservice.backplane.roles import MessageLog
from chatservice.backplane.values import JOIN_HISTORY, StoredMessage
from chatservice.chat.messages import Dialect, Event
from chatservice.chat.rooms import Room
from chatservice.chat.session import Member
from chatservice.counters import Counters

#: Different join histories of one room kept encoded until its next message.
HISTORY_FRAMES = 16

#: A read history: the messages, and whether they are all a `since` missed.
Found = tuple[list[StoredMessage], bool]


@dataclass(frozen=True, slots=True)
class JoinHistory:
    """A joiner's ``chat-history``, ready to send.

    Attributes:
        cut: The last id it holds (or the room's position it was read up to):
            what comes later reaches the joiner live.
        frame: The event framed once for every joiner of a dialect that gets
            it as one frame, and `size`, its encoded length; None otherwise.
        event: The event itself, for a dialect that shows history line by
            line (it is sent to the one joiner); None otherwise.
    """

    cut: int
    frame: Any = None
    size: int = 0
    event: Event | None = None


class JoinHistories:
    """Reads, encodes and sends joiners' histories, sharing the work between joiners.

    Args:
        log: Where the rooms' messages are kept.
        prepare: Frames an encoded event once for many connections.
        stats: Where what is sent is counted.
    """

    def __init__(self, log: MessageLog, prepare: Callable[[bytes], Any], stats: Counters) -> None:
        self.log = log
        self.prepare = prepare
        self.stats = stats

    def read(
        self, room: Room, up_to: int, since: int | None, dialect: Dialect
    ) -> Deferred[JoinHistory]:
        """The history of a joiner of `dialect` up to id `up_to` (after `since`, if given)."""
        key = (since, up_to, dialect)
        cached = room.history_frames.get(key)
        if cached is not None:
            return succeed(cached)
        return self._find(room, since, up_to).addCallback(self._encode, room, key)

    def cached(
        self, room: Room, up_to: int, since: int | None, dialect: Dialect
    ) -> JoinHistory | None:
        """What `read` would give, if it is encoded already; else None."""
        cached: JoinHistory | None = room.history_frames.get((since, up_to, dialect))
        return cached

    def forget(self, room: Room) -> None:
        """The room's messages changed: no history encoded so far is right any more."""
        room.history_frames.clear()

    def send(self, member: Member, history: JoinHistory) -> int:
        """Send what `read` gave; returns its ``cut``."""
        if history.event is not None:
            member.send_event(history.event)
            return history.cut
        member.deliver(history.frame)
        self.stats.messages_sent += 1
        self.stats.bytes_sent += history.size
        return history.cut

    def _find(self, room: Room, since: int | None, up_to: int) -> Deferred[Found]:
        """Read a history, once for every joiner that asks the same while it is read."""
        key = (since, up_to)
        waiters = room.reads.get(key)
        if waiters is not None:
            waiter: Deferred[Found] = Deferred()
            waiters.append(waiter)
            return waiter
        waiters = room.reads[key] = []
        found: Deferred[Found]
        if since is None:
            found = self.log.recent(room.name, JOIN_HISTORY, up_to=up_to).addCallback(
                lambda messages: (messages, False)
            )
        else:
            # Up to `up_to` too: later ones come live (with Redis, the stream
            # may hold some this instance has not passed on yet).
            found = self.log.since(room.name, since, JOIN_HISTORY).addCallback(
                lambda found: ([m for m in found[0] if m.id <= up_to], found[1])
            )

        def read(result: Found | Failure) -> Found | Failure:
            # The others that asked the same first, then whoever asked first.
            if room.reads.get(key) is waiters:
                del room.reads[key]
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            return result

        return found.addBoth(read)

    def _encode(
        self, found: Found, room: Room, key: tuple[int | None, int, Dialect]
    ) -> JoinHistory:
        cached: JoinHistory | None = room.history_frames.get(key)
        if cached is not None:  # encoded for another joiner of the same read
            return cached
        messages, recovered = found
        since, up_to, dialect = key
        cut = max(up_to, messages[-1].id if messages else 0)
        if recovered and since is not None:
            cut = max(cut, since)  # the client has seen everything up to `since`
        event: Event = (
            "chat-history",
            {
                "room": room.name,
                "messages": [m.payload() for m in messages],
                "recovered": recovered,
            },
        )
        data = dialect.encode(event)
        if data is None:  # a dialect that shows history line by line
            return JoinHistory(cut, event=event)
        if len(room.history_frames) >= HISTORY_FRAMES:
            room.history_frames.clear()
        framed = room.history_frames[key] = JoinHistory(cut, self.prepare(data), len(data))
        return framed
