"""Direct conversations: a room of two identified users, opened by either of them.

``chat-join {"with": NAME}`` opens (or reopens) the conversation: its room is
``dm.`` and a hash of the two user ids, the same on every instance; the other
user's connections, everywhere, are told (``chat-direct``), and both users'
conversations are remembered, so that every later sign-in is told of them
again.  Nobody else may join it.  Specified in docs/protocol.md ("Identity").
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

from chatservice.backplane.roles import ControlBus, NameDirectory
from chatservice.backplane.values import DirectOrder, Unavailable
from chatservice.chat.identity import Identity, dm_room
from chatservice.chat.joins import Joins
from chatservice.chat.messages import Direct, Event, Join, ProtocolError
from chatservice.chat.names import Names
from chatservice.chat.session import Session, report, unavailable


class Conversations:
    """Opens direct conversations, tells the other user, and resumes them at sign-in.

    Args:
        names: Who is called what (the other user's id).
        joins: Enters the conversation's room.
        bus: Tells the other instances (the other user's connections there).
        directory: Remembers each user's conversations.
    """

    def __init__(
        self, names: Names, joins: Joins, bus: ControlBus, directory: NameDirectory
    ) -> None:
        self.names = names
        self.joins = joins
        self.bus = bus
        self.directory = directory

    def open(self, session: Session, command: Direct) -> Deferred[None]:
        """``chat-join`` ``with``: the conversation of two identified users.

        Raises:
            ProtocolError: ``forbidden`` for a guest, ``bad-payload`` with
                oneself, at once; ``no-such-user`` through `report`.
        """
        identity = session.identity
        if identity is None:
            raise ProtocolError(
                "forbidden",
                "direct messages are between identified users; send chat-auth first",
                "chat-join",
                {"with": command.username},
            )
        other = command.username
        if session.name is not None and other.casefold() == session.name.casefold():
            raise ProtocolError("bad-payload", "that is you", "chat-join", {"with": other})
        return ensureDeferred(self._open(session, identity, command))

    async def _open(self, session: Session, identity: Identity, command: Direct) -> None:
        other = command.username
        try:
            try:
                user = await self.names.user_of(other)
            except Unavailable:
                raise unavailable("chat-join") from None
            if user is None:
                raise ProtocolError(
                    "no-such-user",
                    f"{other!r} is not an identified user",
                    "chat-join",
                    {"with": other},
                )
            if not session.alive:
                return
            room = dm_room(identity.user, user)
            name = self.names.shown(other, user)
            session.member.send_event(("chat-direct", {"room": room, "with": name}))
            if command.since is None:
                # Tell the other one's connections, everywhere (their clients join
                # too), and remember it for both: their next sign-in is told again.
                assert session.name is not None  # identified, so named
                order = DirectOrder(user, room, session.name)
                self.told(order)
                self.bus.order(order)
                self.directory.converse(identity.user, room, name)
                self.directory.converse(user, room, session.name)
            entering = self.joins.enter(session, Join(room, since=command.since))
            if entering is not None:
                await entering
        except Exception:
            report(session, Failure())

    def told(self, order: DirectOrder) -> None:
        """A conversation with user `order.user` was opened: its connections here hear it."""
        event: Event = ("chat-direct", {"room": order.room, "with": order.other})
        for session in self.names.connections_of(order.user):
            session.member.send_event(event)

    def resume(self, session: Session) -> None:
        """An identified user signed in: its direct conversations (``chat-direct``, ``resumed``)."""
        user = session.user()
        assert user is not None
        self.directory.conversations(user).addCallbacks(
            self._resume, lambda _: None, callbackArgs=(session,)
        )

    def _resume(self, conversations: dict[str, str], session: Session) -> None:
        if not session.alive:
            return
        for room, other in sorted(conversations.items(), key=lambda item: item[1].casefold()):
            session.member.send_event(
                ("chat-direct", {"room": room, "with": other, "resumed": True})
            )
