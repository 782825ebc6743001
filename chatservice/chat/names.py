"""Names: who is called what, here and over every instance.

A guest claims a name for as long as it is connected; an identified user's
name is theirs for good (docs/protocol.md, "Identity"): nobody else gets it,
all of the user's connections share it, and a guest that has it is renamed
(displaced), on whichever instance it is.  Names are unique ignoring case.
The whole deployment's claims go through the backplane's `NameDirectory`;
this keeps what this process knows, so most refusals need no round trip.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime

from chatservice.backplane.roles import NameDirectory
from chatservice.backplane.values import Unavailable
from chatservice.chat.identity import Identity
from chatservice.chat.messages import ProtocolError, iso_time
from chatservice.chat.moderation import Sanctions, keys_of
from chatservice.chat.rooms import RoomPresence
from chatservice.chat.session import Member, Session, unavailable


class Names:
    """The names of this process's connections, and identified users' names.

    Args:
        directory: Claims names over every instance.
        sanctions: Bans in force (a banned name cannot be taken).
        presence: Tells a displaced guest's rooms of its new name.
        clock: The time, for notices.
    """

    def __init__(
        self,
        directory: NameDirectory,
        sanctions: Sanctions,
        presence: RoomPresence,
        clock: IReactorTime,
    ) -> None:
        self.directory = directory
        self.sanctions = sanctions
        self.presence = presence
        self.clock = clock
        #: Names taken here (casefolded), by whom: guests, and claims on the way.
        self._holders: dict[str, Session] = {}
        #: Names of identified users (casefolded): theirs for good, with their
        #: user id and the name as they have it.
        self._reserved: dict[str, tuple[str, str]] = {}
        #: The connections of each identified user here.
        self._connections: dict[str, dict[Session, None]] = {}

    def guest_name(self, member: Member) -> str:
        """A free name like ``guest-7`` for a client that has not chosen one."""
        base = f"guest-{self.directory.guest_prefix}{member.conn_id}"
        name, n = base, 1
        while name.casefold() in self._holders or name.casefold() in self._reserved:
            n += 1
            name = f"{base}-{n}"
        return name

    def claim(self, session: Session, username: str, type: str) -> Deferred[None]:
        """Take `username` for guest `session`, here and on every instance: `hold`, then `take`.

        Raises:
            ProtocolError: As `hold` at once; as `take` through the Deferred.
        """
        self.hold(session, username, type)
        return ensureDeferred(self.take(session, username, type))

    def hold(self, session: Session, username: str, type: str) -> None:
        """Hold `username` here for `session` while the other instances are asked (`take`).

        Raises:
            ProtocolError: ``username-taken``, or ``forbidden`` (a banned name).
        """
        key = username.casefold()
        holder = self._holders.get(key)
        if (holder is not None and holder is not session) or key in self._reserved:
            raise ProtocolError("username-taken", f"{username!r} is taken", type)
        if self.sanctions and self.sanctions.find("ban", keys_of(username, None)):
            raise ProtocolError("forbidden", f"{username!r} is banned", type)
        self._holders[key] = session  # held here while the directory is asked

    async def take(self, session: Session, username: str, type: str) -> None:
        """Claim the name `hold` holds over every instance; once taken, `session` has it
        (and its old name is given back).

        Raises:
            ProtocolError: ``username-taken`` (another instance has it), or
                ``unavailable``.
        """
        key = username.casefold()
        conn_id = session.member.conn_id
        try:
            taken = await self.directory.claim(username, conn_id)
        except Unavailable:
            self._let_go(session, key, username)
            raise unavailable(type) from None
        except Exception:
            self._let_go(session, key, username)
            raise
        if key in self._reserved:
            taken = False  # an identified user took it meanwhile, here
        if not taken or not session.alive:
            self._let_go(session, key, username)
            if not taken:
                raise ProtocolError("username-taken", f"{username!r} is taken", type)
            self.directory.release(username, conn_id)  # closed meanwhile
            return
        old = session.name
        if old is not None and old.casefold() != key:
            if self._holders.get(old.casefold()) is session:
                del self._holders[old.casefold()]
            self.directory.release(old, conn_id)
        session.name = username

    def _let_go(self, session: Session, key: str, username: str) -> None:
        """A claim of `session`'s did not happen: the name is not held for it any more."""
        if self._holders.get(key) is session and session.name != username:
            del self._holders[key]

    def release(self, session: Session) -> None:
        """Give back guest `session`'s name, here and everywhere."""
        name = session.name
        assert name is not None
        if self._holders.get(name.casefold()) is session:
            del self._holders[name.casefold()]
        self.directory.release(name, session.member.conn_id)

    def forget(self, session: Session) -> None:
        """`session` closed: a guest's name is free; an identified user's stays theirs."""
        user = session.user()
        if user is not None:
            sessions = self._connections.get(user)
            if sessions is not None:
                sessions.pop(session, None)
                if not sessions:
                    del self._connections[user]
        elif session.name is not None:
            self.release(session)

    # Identified users.

    def owner(self, name: str) -> str | None:
        """The user id of the identified user here whose name `name` is, if known here."""
        known = self._reserved.get(name.casefold())
        return None if known is None else known[0]

    def shown(self, name: str, user: str) -> str:
        """`name` as user `user` has it, if it is theirs (the case they chose)."""
        known = self._reserved.get(name.casefold())
        return known[1] if known is not None and known[0] == user else name

    def user_of(self, name: str) -> Deferred[str | None]:
        """The user id of the identified user called `name`, if there is one."""
        known = self._reserved.get(name.casefold())
        if known is not None:
            return succeed(known[0])
        return self.directory.holder(name)

    def sign_in(self, session: Session, identity: Identity) -> None:
        """`session` is `identity`'s now (its claim succeeded): its name, one of its connections.

        A guest here that has the name is displaced.
        """
        name = identity.name
        key = name.casefold()
        self._reserved[key] = (identity.user, name)
        guest = self._holders.get(key)
        if guest is not None and guest is not session:
            if guest.name is not None and guest.name.casefold() == key:
                self.displace(guest)
            else:
                del self._holders[key]  # its claim is on its way: refused (see `take`)
        session.name = name
        self._connections.setdefault(identity.user, {})[session] = None

    def connections_of(self, user: str) -> list[Session]:
        """The connections of identified user `user` here."""
        return list(self._connections.get(user, ()))

    def displace_named(self, name: str) -> None:
        """An identified user elsewhere took `name`: a guest here that has it gets another."""
        guest = self._holders.get(name.casefold())
        if guest is not None and guest.identity is None:
            self.displace(guest)

    def displace(self, guest: Session) -> None:
        """A guest here has the name an identified user just took: it gets a guest name."""
        old = guest.name
        assert old is not None
        new = self.guest_name(guest.member)
        self._holders.pop(old.casefold(), None)
        self._holders[new.casefold()] = guest
        guest.name = new
        self.directory.release(old, guest.member.conn_id)
        self.directory.claim(new, guest.member.conn_id).addErrback(lambda _: None)
        guest.member.send_event(
            (
                "chat-notice",
                {
                    "message": f"{old} is an identified user's name; you are {new} now",
                    "time": iso_time(self.clock.seconds()),
                },
            )
        )
        self.presence.renamed(guest, old, new)
