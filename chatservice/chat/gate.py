"""What the hub asks the operator's application before it acts: the `Gate`.

With ``--connect-proxy``, ``--publish-proxy`` or ``--join-proxy`` the hub asks
before it identifies a new connection, stores a message, or lets a connection
into a room (docs/hooks.md, "Decisions in: proxies").  The gate is
`chatservice.hooks.decisions.ProxyGate`; the hub knows it only through this
interface, and without proxies it has none (None) and does no extra work.

A gate's answers come through Deferreds; a refusal fails one with a
`ProtocolError` (`Refused`, or ``unavailable``: the client is told), a
connection to close with `Dismissed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred

from chatservice.chat.identity import Identity
from chatservice.chat.messages import ProtocolError


@dataclass(frozen=True, slots=True)
class Handshake:
    """What a new ``/chat`` connection's opening handshake showed, for the connect proxy.

    Attributes:
        headers: The headers the gate asked for (`Gate.headers`) that the
            client sent: lower-case name and value.
        address: The client's address (its proxy's ``X-Forwarded-For`` if
            trusted; ``local`` on a Unix socket).
        origin: The ``Origin`` header, if any.
        subprotocol: The subprotocol agreed on, if any.
    """

    headers: tuple[tuple[str, str], ...]
    address: str
    origin: str | None
    subprotocol: str | None


class Refused(ProtocolError):
    """The application refused the action: a ``chat-error`` with its code and message."""


class Dismissed(Exception):
    """The connection is to be closed with `code` and `reason` (the application's 4000-4999,
    or 1013 when it could not be asked about a new connection)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Gate(Protocol):
    """The application's decisions, as the hub needs them.

    Every method's Deferred fails with `Refused` (the application said no),
    a `ProtocolError` ``unavailable`` (it could not be asked) or `Dismissed`.
    """

    #: Whether new connections are asked about (`connect`).
    identifies: bool
    #: Whether messages are asked about (`publish`).
    publishes: bool
    #: The request headers (lower case) `connect` is told of.
    headers: tuple[str, ...]

    def joins(self, room: str) -> bool:
        """Whether joining `room` is asked about (`join`)."""

    def connect(self, handshake: Handshake) -> Deferred[Identity | None]:
        """Who a new connection is: an identity, or None for a guest."""

    def publish(self, room: str, user: str | None, name: str, text: str) -> Deferred[str | None]:
        """Whether a message may be stored: None to keep `text`, or the text to store instead."""

    def join(self, room: str, user: str | None, name: str) -> Deferred[None]:
        """Whether `name` (user `user`, None for a guest) may join `room`."""
