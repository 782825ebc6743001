"""The hub's flows that wait for the application's decision (`chatservice.chat.gate.Gate`).

A new connection waits to be identified, a message to be let through (or
rewritten), a join to be admitted.  Each such flow is one command of the
session's queue (`Session.hold`): what the client sends meanwhile waits for it,
so a ``chat-join`` sent right after the open is carried out once the identity
is known, and a connection's messages keep their order.  Specified in
docs/hooks.md ("Decisions in: proxies").
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

from chatservice import logs
from chatservice.backplane.values import StoredMessage
from chatservice.chat.gate import Dismissed, Gate, Handshake
from chatservice.chat.joins import Joins
from chatservice.chat.messages import TEXT, Command, Join, ProtocolError
from chatservice.chat.names import Names
from chatservice.chat.session import Member, Session, report
from chatservice.chat.signin import SignIn

_log = logs.logger("chatservice.hub")


class Gated:
    """Connections, messages and joins that the application decides about first.

    Args:
        gate: Asks the application.
        signin: Takes the identity the application gives a connection.
        joins: Lets a connection into a room once admitted.
        names: Names a text client's first join.
        check_text: The hub's checks of a message's text (trimmed; raises
            ``too-long``), which a rewritten text passes too.
        store: Stores a connection's message (the hub's, which reports a failure).
        store_as: Stores a message of the HTTP API: room, name, text.
        close: Forgets and closes a connection (the hub's).
    """

    def __init__(
        self,
        gate: Gate,
        signin: SignIn,
        joins: Joins,
        names: Names,
        check_text: Callable[[str], str],
        store: Callable[[Session, str, str], None],
        store_as: Callable[[str, str, str], Deferred[StoredMessage]],
        close: Callable[[Member, int, str], None],
    ) -> None:
        self.gate = gate
        self.signin = signin
        self.joins = joins
        self.names = names
        self.check_text = check_text
        self.store = store
        self.store_as = store_as
        self.close = close

    def connect(
        self, session: Session, handshake: Handshake, first: Callable[[], Command | None]
    ) -> Deferred[None]:
        """Ask who a new connection is; then `first()`, what it does first, comes
        before anything it sent meanwhile."""
        return ensureDeferred(self._connect(session, handshake, first))

    async def _connect(
        self, session: Session, handshake: Handshake, first: Callable[[], Command | None]
    ) -> None:
        try:
            identity = await self.gate.connect(handshake)
            if identity is not None and session.alive:
                signing = self.signin.sign_in(session, identity)
                if signing is not None:
                    await signing
        except Dismissed as dismissed:
            self._dismiss(session, dismissed)
        except Exception:
            report(session, Failure())
        if session.alive:
            command = first()
            if command is not None:
                session.queued.appendleft(command)

    def say(self, session: Session, room: str, text: str) -> Deferred[None]:
        """Ask about a message to `room` (checked already); store what is let through."""
        return ensureDeferred(self._say(session, room, text))

    async def _say(self, session: Session, room: str, text: str) -> None:
        assert session.name is not None  # joined, so named
        try:
            rewritten = await self.gate.publish(room, session.user(), session.name, text)
            if not session.alive:
                return
            if rewritten is not None:
                text = self.check_text(rewritten)
            session.joined_room(room, "chat-message")  # (a ban from the room meanwhile)
        except Dismissed as dismissed:
            self._dismiss(session, dismissed)
            return
        except Exception:
            report(session, Failure())
            return
        if text:
            self.store(session, room, text)

    async def publish(self, room: str, name: str, text: str) -> StoredMessage:
        """Ask about a message of the HTTP API (checked already); store what is let through.

        Raises:
            ProtocolError: Refused (`chatservice.chat.gate.Refused`), ``unavailable``,
                or a rewritten text that is too long or empty.
            Dismissed: The application answered ``disconnect``.
        """
        rewritten = await self.gate.publish(room, None, name, text)
        if rewritten is not None:
            text = self.check_text(rewritten)
            if not text:
                raise ProtocolError("bad-payload", "message is empty", "chat-message")
        return await self.store_as(room, name, text)

    def join(self, session: Session, command: Join) -> Deferred[None] | None:
        """Ask whether `session` may join; then join it.

        Raises:
            ProtocolError: Refused by the chat itself, before the application is asked.
        """
        joins = self.joins
        if joins.auth.mode != "off" or joins.sanctions:
            joins.check_entry(session, command.room)
        name = session.name or command.username
        if name is None:
            if session.member.dialect is not TEXT:
                return joins.join(session, command)  # (refused: it needs a username)
            name = self.names.guest_name(session.member)
            command = Join(command.room, name, command.since)
        return ensureDeferred(self._join(session, command, name))

    async def _join(self, session: Session, command: Join, name: str) -> None:
        try:
            await self.gate.join(command.room, session.user(), name)
            if not session.alive:
                return
            joining = self.joins.join(session, command)
            if joining is not None:
                await joining
        except Dismissed as dismissed:
            self._dismiss(session, dismissed)
        except Exception:
            report(session, Failure())

    def _dismiss(self, session: Session, dismissed: Dismissed) -> None:
        if not session.alive:
            return
        member = session.member
        _log.info(
            "conn={conn_id} closed by the application: {code} {reason!r}",
            conn_id=member.conn_id,
            code=dismissed.code,
            reason=dismissed.reason,
        )
        self.close(member, dismissed.code, dismissed.reason)
