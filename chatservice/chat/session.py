"""One connection as the hub sees it: the `Member` it talks to and its `Session` state.

The hub talks to each connection through the small `Member` interface, so the
JSON and text dialects (and any other transport) are just implementations.
A `Session` is what the hub keeps of one: its name, identity, rooms, rate
limits, the commands that wait for the one on its way, and whether it is still
open (`alive`, cleared once by the hub's disconnect: a flow that waited on the
backplane looks there before it goes on).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from chatservice import logs
from chatservice.chat.identity import Identity
from chatservice.chat.messages import (
    MAX_ROOM_LENGTH,
    MAX_USERNAME_LENGTH,
    Command,
    Dialect,
    Event,
    ProtocolError,
)
from chatservice.chat.moderation import keys_of
from chatservice.chat.policy import FloodGuard, TokenBucket

_log = logs.logger("chatservice.hub")

#: Close code for a policy violation (RFC 6455 7.4.1).
CLOSE_POLICY = 1008
#: Close code for an error of ours (a bug).
CLOSE_INTERNAL_ERROR = 1011


class Member(Protocol):
    """What the hub needs of a connection."""

    conn_id: int
    dialect: Dialect

    def send_event(self, event: Event) -> None:
        """Send one event to this connection only."""

    def deliver(self, frame: Any) -> None:
        """Send a frame prepared once for many connections (a broadcast)."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection; the hub has already forgotten it."""


@dataclass(frozen=True)
class ChatLimits:
    """The limits a chat client is told about and held to."""

    max_message_size: int = 65536
    max_text_length: int = 2000
    rate: float = 10.0
    burst: int = 30
    flood_drops: int = 100
    flood_window: float = 60.0

    def welcome(self) -> dict[str, Any]:
        """The ``limits`` of the ``chat-welcome`` event (docs/protocol.md)."""
        return {
            "max_message_size": self.max_message_size,
            "max_text_length": self.max_text_length,
            "rate": self.rate,
            "burst": self.burst,
            "max_username_length": MAX_USERNAME_LENGTH,
            "max_room_length": MAX_ROOM_LENGTH,
        }


class Session:
    """The hub's state of one connection.

    Attributes:
        member: The connection.
        alive: True until the hub forgets the connection (it closed, or was
            closed); what waited for the backplane checks it before going on.
        name: The name in rooms; None until the first join (or sign-in).
        identity: Who the connection's token says it is; None for a guest.
        timer: The deadline for a token (``--auth required``), then its expiry.
        rooms: Joined rooms, in join order: the last is the current room.
        busy: Whether a command waits for the backplane (a join, a rename);
            the commands that come meanwhile wait in `queued`, in order.
        bucket: The connection's rate limit.
        flood: Counts its dropped frames, to close a flooder.
    """

    __slots__ = (
        "alive",
        "bucket",
        "busy",
        "flood",
        "identity",
        "member",
        "name",
        "queued",
        "rooms",
        "timer",
    )

    def __init__(self, member: Member, bucket: TokenBucket, flood: FloodGuard) -> None:
        self.member = member
        self.alive = True
        self.name: str | None = None
        self.identity: Identity | None = None
        self.timer: IDelayedCall | None = None
        self.busy = False
        self.queued: deque[Command] = deque()
        self.rooms: dict[str, None] = {}
        self.bucket = bucket
        self.flood = flood

    def current_room(self) -> str | None:
        """The room joined last, or None."""
        return next(reversed(self.rooms), None)

    def user(self) -> str | None:
        """The identified user's id, or None for a guest."""
        return None if self.identity is None else self.identity.user

    def keys(self) -> tuple[str, ...]:
        """What bans and mutes of this connection's user are filed under."""
        return keys_of(self.name, self.user())

    def joined_room(self, room: str | None, type: str) -> str:
        """`room` (the current room if None), which this connection must have joined.

        Raises:
            ProtocolError: ``not-joined``, about a frame of `type`.
        """
        name = room if room is not None else self.current_room()
        if name is None or name not in self.rooms:
            what = f"room {name!r}" if name else "any room"
            raise ProtocolError("not-joined", f"you have not joined {what}", type)
        return name

    def cancel_timer(self) -> None:
        """Stop the token deadline or expiry, if one runs."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    # The command queue: commands are carried out in the order they came.

    def hold(self, command: Command) -> bool:
        """Keep `command` for later if one before it is on its way; False to carry it out now."""
        if self.busy:
            self.queued.append(command)
            return True
        return False

    def next_held(self) -> Command | None:
        """The next command that waited, once none is on its way (None: none to do now).

        A closed connection's held commands are dropped.
        """
        if self.busy or not self.queued:
            return None
        if not self.alive:
            self.queued.clear()
            return None
        return self.queued.popleft()


def unavailable(type: str) -> ProtocolError:
    """The error for a command the backplane could not carry out (Redis is away)."""
    return ProtocolError("unavailable", "the chat cannot reach its storage; try again soon", type)


def report(session: Session, failure: Failure) -> None:
    """Tell the client that a command which waited for something failed.

    A `ProtocolError` is the client's to know; anything else is logged as a
    bug of ours and the client gets ``server-error``.  Nothing goes to a
    connection that closed meanwhile.
    """
    error = failure.value if failure.check(ProtocolError) else None
    if not isinstance(error, ProtocolError):
        _log.failure("conn={conn_id} command failed", failure, conn_id=session.member.conn_id)
        error = ProtocolError("server-error", "that did not work; try again")
    if session.alive:
        session.member.send_event(error.event())
