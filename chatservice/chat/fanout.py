"""Fan-out: one event to many connections, encoded and framed once per dialect.

A broadcast encodes an event once per dialect (`chatservice.chat.messages`),
frames it once (the hub's ``prepare``: `chatservice.web.frames.TextFrame` in
the service), and hands the same frame to every member; nothing here waits on
a member.  A member that is closed during the fan-out (a slow consumer) does
not stop it: the audience is a snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from chatservice.chat.messages import Dialect, Event
from chatservice.chat.session import Member
from chatservice.counters import Counters


class FanOut:
    """Delivers events to groups of members, counting what was sent.

    Args:
        prepare: Frames an encoded event once for many connections.
        stats: Where deliveries are counted (for /metrics).
    """

    def __init__(self, prepare: Callable[[bytes], Any], stats: Counters) -> None:
        self.prepare = prepare
        self.stats = stats

    def send(
        self,
        groups: Iterable[tuple[Dialect, Iterable[Member]]],
        event: Event,
        exclude: Member | None = None,
    ) -> int:
        """Encode and frame `event` once per dialect; the same frame to every member.

        Counted once per dialect, not per member: ``n`` deliveries of ``len(data)``.

        Returns:
            How many members got it.
        """
        sent = 0
        sent_bytes = 0
        # Snapshots: a delivery may close a slow member, which leaves its rooms.
        for dialect, members in tuple(groups):
            data = dialect.encode(event)
            if data is None:
                continue
            frame = self.prepare(data)
            before = sent
            for member in tuple(members):
                if member is not exclude:
                    member.deliver(frame)
                    sent += 1
            sent_bytes += (sent - before) * len(data)
        stats = self.stats
        stats.messages_sent += sent
        stats.bytes_sent += sent_bytes
        return sent

    def to_all(self, members: Iterable[Member], event: Event) -> int:
        """`event` to each of `members`, whatever their dialects."""
        groups: dict[Dialect, list[Member]] = {}
        for member in members:
            groups.setdefault(member.dialect, []).append(member)
        return self.send(groups.items(), event)
