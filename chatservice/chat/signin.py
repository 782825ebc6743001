"""Sign-in: who a connection is, from the signed token it sends, for as long as the token lasts.

With ``--auth`` a client identifies itself with a token (``chat-auth``, or
``?token=`` on the URL): it is checked (`chatservice.chat.identity`), the
user's name is claimed for good over every instance, and the connection is
closed when the token expires unless a fresh one for the same user came.
With ``--auth required`` a connection that sends no valid token in time is
closed.  Specified in docs/protocol.md ("Identity").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from chatservice import logs
from chatservice.backplane.roles import NameDirectory
from chatservice.backplane.values import Unavailable
from chatservice.chat.direct import Conversations
from chatservice.chat.identity import DM_PREFIX, AuthError, AuthPolicy, Identity
from chatservice.chat.joins import Joins
from chatservice.chat.messages import DEFAULT_ROOM, TEXT, Join, ProtocolError, iso_time
from chatservice.chat.moderation import Sanctions, keys_of, sanction_text
from chatservice.chat.names import Names
from chatservice.chat.session import CLOSE_POLICY, Member, Session, report, unavailable
from chatservice.counters import Counters

_log = logs.logger("chatservice.hub")


class SignIn:
    """Checks tokens, identifies connections, and keeps their tokens' deadlines.

    Args:
        auth: Whether and how clients identify themselves.
        clock: The time, and the timers of deadlines and expiries.
        directory: Claims users' names over every instance.
        names: The names here.
        joins: Takes a connection out of rooms it may no longer be in.
        conversations: Tells a user that signs in of its direct conversations.
        sanctions: Bans in force.
        stats: Where sign-ins and closes are counted.
        close: Forgets and closes a connection (the hub's).
    """

    def __init__(
        self,
        auth: AuthPolicy,
        clock: IReactorTime,
        directory: NameDirectory,
        names: Names,
        joins: Joins,
        conversations: Conversations,
        sanctions: Sanctions,
        stats: Counters,
        close: Callable[[Member, int, str], None],
    ) -> None:
        self.auth = auth
        self.clock = clock
        self.directory = directory
        self.names = names
        self.joins = joins
        self.conversations = conversations
        self.sanctions = sanctions
        self.stats = stats
        self.close = close

    def welcome(self, session: Session) -> dict[str, Any] | None:
        """The ``auth`` of a new connection's welcome; with ``required``, its deadline starts."""
        auth = self.auth
        if auth.mode == "off":
            return None
        welcome: dict[str, Any] = {"mode": auth.mode}
        if auth.refresh_url:
            welcome["refresh_url"] = auth.refresh_url
        if auth.mode == "required":
            session.timer = self.clock.callLater(
                auth.timeout, self._unidentified, session.member, session
            )
        return welcome

    def authenticate(self, session: Session, token: str) -> Deferred[None] | None:
        """``chat-auth``: who the connection is, or a refresh of its token.

        Returns:
            A Deferred while the user's name is claimed; None if done at once.

        Raises:
            ProtocolError: The token or the connection's state refuses it.
        """
        verifier = self.auth.verifier
        if self.auth.mode == "off" or verifier is None:
            raise ProtocolError("bad-type", "this server takes no tokens (--auth off)", "chat-auth")
        try:
            identity = verifier.verify(token)
        except AuthError as e:
            self._count(e.code)
            _log.info(
                "conn={conn_id} token refused: {code}",
                conn_id=session.member.conn_id,
                code=e.code,
            )
            raise ProtocolError(e.code, e.reason, "chat-auth") from None
        current = session.identity
        if current is not None:
            if current.user != identity.user:
                raise ProtocolError(
                    "token-other-user", "a new token must be for the same user", "chat-auth"
                )
            self._identify(session, identity)
            return None
        return self.sign_in(session, identity)

    def sign_in(self, session: Session, identity: Identity) -> Deferred[None] | None:
        """Make a connection not identified yet `identity`'s user (a token's, or the
        connect proxy's: docs/hooks.md).

        Returns:
            A Deferred while the user's name is claimed; None if done at once.

        Raises:
            ProtocolError: The connection's state, or the name's owner, refuses it.
        """
        member = session.member
        if session.name is not None:
            if member.dialect is not TEXT:
                raise ProtocolError(
                    "already-guest",
                    "this connection has a guest name; connect again to use a token",
                    "chat-auth",
                )
            # A text client was put in the lobby as a guest (it had no say):
            # it leaves as one, and comes back identified.
            for room in list(session.rooms):
                if room in session.rooms:  # (a slow consumer closed meanwhile left them all)
                    self.joins.leave(session, room, tell_leaver=True)
            if not session.alive:
                return None
            self.names.release(session)
            session.name = None
        if self.sanctions:
            banned = self.sanctions.find("ban", keys_of(identity.name, identity.user))
            if banned is not None:
                self._count("refused")
                self.close(member, CLOSE_POLICY, sanction_text(banned, "banned"))
                return None
        name = identity.name
        owner = self.names.owner(name)
        if owner is not None and owner != identity.user:
            raise ProtocolError("username-taken", f"{name!r} is another user's name", "chat-auth")
        return ensureDeferred(self._sign_in(session, identity))

    async def _sign_in(self, session: Session, identity: Identity) -> None:
        name = identity.name
        try:
            try:
                ok = await self.directory.claim(name, session.member.conn_id, identity.user)
            except Unavailable:
                raise unavailable("chat-auth") from None
            self._count("ok" if ok else "refused")
            if not ok:
                raise ProtocolError(
                    "username-taken", f"{name!r} is another user's name", "chat-auth"
                )
            if not session.alive:
                return
            self.names.sign_in(session, identity)
            self._identify(session, identity)
            self.conversations.resume(session)
            if session.alive and session.member.dialect is TEXT and not session.rooms:
                # As a guest's would: a text client is in the lobby at once.
                joining = self.joins.join(session, Join(DEFAULT_ROOM))
                if joining is not None:
                    await joining
        except Exception:
            report(session, Failure())

    def _count(self, result: str) -> None:
        counts = self.stats.sign_ins
        counts[result if result in counts else "refused"] += 1

    def _identify(self, session: Session, identity: Identity) -> None:
        """Take a verified token: who, until when; rooms no longer granted are left."""
        member = session.member
        session.identity = identity
        session.cancel_timer()
        if identity.expires is not None:
            left = identity.expires + self.auth.leeway - self.clock.seconds()
            session.timer = self.clock.callLater(max(left, 0), self._expired, member, session)
        for room in list(session.rooms):
            if (
                room in session.rooms  # (a slow consumer closed meanwhile left them all)
                and self.auth.is_private(room)
                and not room.startswith(DM_PREFIX)
                and not identity.may_enter(room)
            ):
                self.joins.leave(session, room, tell_leaver=True)
                member.send_event(
                    ProtocolError("forbidden", f"#{room} is no longer yours", "chat-auth").event()
                )
        expires = None if identity.expires is None else iso_time(identity.expires)
        member.send_event(
            (
                "chat-authenticated",
                {
                    "user": identity.user,
                    # (A refreshed token's name does not rename: the first stays.)
                    "username": session.name or identity.name,
                    "admin": identity.admin,
                    "rooms": list(identity.rooms),
                    "expires": expires,
                },
            )
        )
        _log.info(
            "conn={conn_id} identified user={user} name={username} admin={admin}",
            conn_id=member.conn_id,
            user=identity.user,
            username=identity.name,
            admin=identity.admin,
        )

    def _unidentified(self, member: Member, session: Session) -> None:
        """``--auth required``: no valid token in time."""
        session.timer = None
        if session.alive and session.identity is None:
            _log.info("conn={conn_id} closed: no token in time", conn_id=member.conn_id)
            self.stats.auth_closes["no-token"] += 1
            self.close(member, CLOSE_POLICY, "authentication required")

    def _expired(self, member: Member, session: Session) -> None:
        session.timer = None
        if session.alive:
            _log.info("conn={conn_id} closed: its token expired", conn_id=member.conn_id)
            self.stats.auth_closes["token-expired"] += 1
            self.close(member, CLOSE_POLICY, "token expired")
