"""A hub member that records what it gets, for tests that drive the hub directly."""

from __future__ import annotations

import json
from typing import Any

from chatservice.backplane.values import Deletion, Notice, Order, Presence, StoredMessage
from chatservice.chat.hub import Hub
from chatservice.chat.messages import JSON, Dialect, Event, Join
from chatservice.chat.session import Session


class Client:
    """A hub member that records what it is sent."""

    def __init__(self, conn_id: int, dialect: Dialect = JSON) -> None:
        self.conn_id = conn_id
        self.dialect = dialect
        self.events: list[Event] = []  # sent with send_event
        self.frames: list[bytes] = []  # prepared frames, mostly broadcasts
        self.log: list[Any] = []  # both, decoded, in order
        self.closed: tuple[int, str] | None = None

    def send_event(self, event: Event) -> None:
        self.events.append(event)
        self.log.append(event)

    def deliver(self, frame: Any) -> None:
        self.frames.append(frame)
        self.log.append(self.decode(frame))

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def seen(self) -> list[Any]:
        """Everything received, in order: direct events and decoded frames."""
        return list(self.log)

    def broadcasts(self, kind: str | None = None) -> list[Any]:
        decoded = [self.decode(f) for f in self.frames]
        return [
            d for d in decoded if kind is None or (d[0] == kind if self.dialect is JSON else True)
        ]

    def decode(self, frame: bytes) -> Any:
        if self.dialect is JSON:
            data = json.loads(frame)
            return (data["type"], data["payload"])
        return frame.decode()

    def got(self, kind: str) -> list[dict[str, Any]]:
        """The payloads of every event of `kind` received, in order."""
        return [e[1] for e in self.log if isinstance(e, tuple) and e[0] == kind]

    def reset(self) -> None:
        self.events.clear()
        self.frames.clear()
        self.log.clear()


class Prepare:
    """Counts how often the hub frames an encoded event."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: bytes) -> bytes:
        self.calls += 1
        return data


def joined(
    hub: Hub, conn_id: int, name: str, room: str = "lobby", dialect: Dialect = JSON
) -> tuple[Client, Session]:
    client = Client(conn_id, dialect)
    session = hub.connect(client)
    hub.handle(session, Join(room=room, username=name))
    return client, session


class Heard:
    """Backplane events, recorded: what a test registers in the hub's place."""

    def __init__(self) -> None:
        self.messages: list[StoredMessage] = []
        self.deletions: list[Deletion] = []
        self.presence: list[Presence] = []
        self.notices: list[Notice] = []
        self.orders: list[Order] = []

    def on_message(self, message: StoredMessage) -> None:
        self.messages.append(message)

    def on_deletion(self, deletion: Deletion) -> None:
        self.deletions.append(deletion)

    def on_presence(self, event: Presence) -> None:
        self.presence.append(event)

    def on_notice(self, notice: Notice) -> None:
        self.notices.append(notice)

    def on_order(self, order: Order) -> None:
        self.orders.append(order)
