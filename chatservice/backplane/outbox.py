"""The webhook outbox's values: which events are kept for the application, and their JSON.

With ``--webhook`` every event the application hears (docs/hooks.md) is kept
in a durable outbox in the same write that stores what it tells: the SQLite
transaction of a message (`chatservice.backplane.history`), the Redis script
that stores it (`chatservice.backplane.redis.outbox`).  The sender
(`chatservice.hooks.webhooks`) takes them from there, oldest first, and only
acknowledges what the receiver answered with a 2xx.

An event is kept as the JSON object ``{"type", "time", "data"}``; its id is
its place in the outbox (``evt_`` and the SQLite row, or the Redis stream
entry), put in front when it is sent (`with_id`).  No I/O and no Twisted here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

MESSAGE_CREATED = "message.created"
MESSAGE_DELETED = "message.deleted"
ROOM_ENTERED = "room.entered"
ROOM_LEFT = "room.left"
USER_ONLINE = "user.online"
USER_OFFLINE = "user.offline"
MODERATION = "moderation"

#: Every event type, in the order docs/hooks.md describes them.
EVENT_TYPES = (
    MESSAGE_CREATED,
    MESSAGE_DELETED,
    ROOM_ENTERED,
    ROOM_LEFT,
    USER_ONLINE,
    USER_OFFLINE,
    MODERATION,
)

#: What ``--webhook-events`` also accepts: every type of a family.
FAMILIES = {
    "all": EVENT_TYPES,
    "message": (MESSAGE_CREATED, MESSAGE_DELETED),
    "room": (ROOM_ENTERED, ROOM_LEFT),
    "user": (USER_ONLINE, USER_OFFLINE),
}


def event_types(spec: str) -> frozenset[str]:
    """The event types a ``--webhook-events`` value names.

    Args:
        spec: Comma-separated types (``message.created``) or families
            (``message``, ``room``, ``user``, ``moderation``, ``all``).

    Raises:
        ValueError: A name that is neither, or none at all.
    """
    chosen: set[str] = set()
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            continue
        if name in FAMILIES:
            chosen.update(FAMILIES[name])
        elif name in EVENT_TYPES:
            chosen.add(name)
        else:
            raise ValueError(
                f"unknown event type {name!r} (one of {', '.join([*FAMILIES, *EVENT_TYPES])})"
            )
    if not chosen:
        raise ValueError("no event type named")
    return frozenset(chosen)


def iso(stamp: float) -> str:
    """`stamp` (seconds since the epoch) as ISO 8601 UTC with milliseconds, as wire times are."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp))
    return f"{whole}.{int(stamp * 1000) % 1000:03d}Z"


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def body(kind: str, time: str, data: dict[str, object]) -> str:
    """An event as the outbox keeps it: ``{"type", "time", "data"}``.

    Args:
        kind: One of `EVENT_TYPES`.
        time: When it happened, ISO 8601 UTC with milliseconds.
        data: What it tells (docs/hooks.md, one type each).
    """
    return f'{{"type":{_dumps(kind)},"time":{_dumps(time)},"data":{_dumps(data)}}}'


def body_prefix(kind: str, time: str) -> str:
    """An event's JSON up to its data, which the writer appends with a closing brace.

    The Redis script that stores a message builds the message's JSON itself
    (it numbers it): it appends that and ``}`` to this.
    """
    return f'{{"type":{_dumps(kind)},"time":{_dumps(time)},"data":'


def with_id(event_id: str, kept: str) -> str:
    """The event as sent: its id put in front of what the outbox kept."""
    return f'{{"id":{_dumps(event_id)},{kept[1:]}'


def batch(events: Iterable[str]) -> bytes:
    """A request's body: ``{"events": [...]}`` of events as sent (`with_id`)."""
    return ('{"events":[' + ",".join(events) + "]}").encode()


@dataclass(frozen=True, slots=True)
class Queued:
    """An event waiting in the outbox.

    Attributes:
        id: Its stable id (``evt_...``): the same at every attempt.
        at: When it was kept, in seconds since the epoch.
        kept: Its JSON as the outbox keeps it (see `body`).
    """

    id: str
    at: float
    kept: str

    def sent(self) -> str:
        """The event's JSON as the receiver gets it, its id in front."""
        return with_id(self.id, self.kept)


@dataclass(frozen=True, slots=True)
class Attendee:
    """Who an occupancy event is about: an identified user, or a guest by name.

    Attributes:
        name: The name they have in the chat.
        user: Their user id; None for a guest.
    """

    name: str
    user: str | None = None

    @property
    def key(self) -> str:
        """What makes two connections the same person: the user id, or the guest's name."""
        return f"user:{self.user}" if self.user is not None else f"guest:{self.name.casefold()}"

    def data(self, room: str | None = None) -> dict[str, object]:
        """The event data naming them (and the room)."""
        data: dict[str, object] = {}
        if room is not None:
            data["room"] = room
        data["user"] = self.user
        data["name"] = self.name
        return data
