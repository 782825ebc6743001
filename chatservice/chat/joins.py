"""The join pipeline: entering a room with its history, catching up, and leaving.

A join is checked (private rooms, bans), names a guest that has no name yet,
watches the room on the backplane, reads the joiner's history up to the
room's position (`chatservice.chat.histories`), and only then makes the
joiner a member: the room's messages that come meanwhile wait for it, and
reach it once, after its history, in order (docs/protocol.md, "/chat").  With
Redis a joiner may even have seen more than this instance has passed on yet:
it waits until the room catches up.  The room's stored messages and
deletions pass through here too, since joiners wait for them.

With the local backplane every read has answered already: a join is carried
out at once, as one process always did.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.python.failure import Failure

from chatservice import logs
from chatservice.backplane.roles import MessageLog
from chatservice.backplane.values import StoredMessage, Unavailable, Watched
from chatservice.chat.histories import JoinHistories, JoinHistory
from chatservice.chat.identity import DM_PREFIX, AuthPolicy
from chatservice.chat.messages import TEXT, Join, ProtocolError
from chatservice.chat.moderation import Sanctions, sanction_text
from chatservice.chat.names import Names
from chatservice.chat.rooms import Room, RoomPresence
from chatservice.chat.session import Session, report, unavailable

_log = logs.logger("chatservice.hub")


class Joins:
    """Joins and leaves of this process's connections, and the room messages they wait for.

    Args:
        log: Where rooms are watched and their messages kept.
        presence: The rooms, and telling them who comes and goes.
        histories: Joiners' histories, read and encoded once for all.
        names: Names a guest on its first join.
        auth: Which rooms are private.
        sanctions: Bans in force.
    """

    def __init__(
        self,
        log: MessageLog,
        presence: RoomPresence,
        histories: JoinHistories,
        names: Names,
        auth: AuthPolicy,
        sanctions: Sanctions,
    ) -> None:
        self.log = log
        self.presence = presence
        self.rooms = presence.rooms
        self.histories = histories
        self.names = names
        self.auth = auth
        self.sanctions = sanctions

    def join(self, session: Session, command: Join) -> Deferred[None] | None:
        """``chat-join``: a Deferred until the joiner has its history (None if at once).

        Raises:
            ProtocolError: ``forbidden``, ``bad-username``, ``username-taken``
                at once; later ones reach the client through `report`.
        """
        if self.auth.mode != "off" or self.sanctions:
            self.check_entry(session, command.room)
        if session.name is not None:
            return self.enter(session, command)
        username = command.username
        if username is None and session.member.dialect is TEXT:
            # A text client never names itself on joining: it is a guest
            # (its lobby join at connect did not happen: Redis was away).
            username = self.names.guest_name(session.member)
        if username is None:
            raise ProtocolError("bad-username", "the first chat-join needs a username", "chat-join")
        self.names.hold(session, username, "chat-join")
        return ensureDeferred(self._join_named(session, command, username))

    async def _join_named(self, session: Session, command: Join, username: str) -> None:
        try:
            await self.names.take(session, username, "chat-join")
            if session.alive:
                begun = self._begin(session, command)
                if begun is not None:
                    await self._enter(session, *begun, command.since)
        except Exception:
            report(session, Failure())

    def check_entry(self, session: Session, room: str) -> None:
        """Whether `session` may join `room` (private rooms, bans).

        Raises:
            ProtocolError: ``forbidden``.
        """
        if self.auth.is_private(room):
            if room.startswith(DM_PREFIX):
                raise ProtocolError(
                    "forbidden",
                    'direct conversations are joined with chat-join {"with": username}',
                    "chat-join",
                    {"room": room},
                )
            if session.identity is None or not session.identity.may_enter(room):
                raise ProtocolError(
                    "forbidden", f"#{room} is a private room", "chat-join", {"room": room}
                )
        banned = self.sanctions.find("ban", session.keys(), room) if self.sanctions else None
        if banned is not None:
            raise ProtocolError(
                "forbidden", sanction_text(banned, "banned"), "chat-join", {"room": room}
            )

    def enter(self, session: Session, command: Join) -> Deferred[None] | None:
        """Join a named `session` to a room; a Deferred until its history is sent.

        None when nothing is to wait for: its first join of the room is on the way.
        """
        begun = self._begin(session, command)
        if begun is None:
            return None
        return ensureDeferred(self._enter(session, *begun, command.since))

    def _begin(self, session: Session, command: Join) -> tuple[Room, bool] | None:
        """The room `session` joins (and whether it was in it already), the room
        watched if new; None if its first join of the room is on the way."""
        name = command.room
        room = self.rooms.get(name)
        if room is None:
            room = self.presence.open(name)
            self._watch(room)
        already = name in session.rooms
        session.rooms.pop(name, None)
        session.rooms[name] = None  # now the current room
        if session in room.joining:
            return None  # its first join is on the way
        if not already:
            room.joining[session] = []
        return room, already

    async def _enter(self, session: Session, room: Room, already: bool, since: int | None) -> None:
        """The history up to the room's last message here; what comes after it
        waits in `room.joining`.  (In a storm of joins most rooms' positions are
        known and most histories encoded already: those are taken as they are.)"""
        dialect = session.member.dialect
        try:
            known = room.position is None and room.last is not None
            up_to = room.last if known else await self._last_id(room)
            assert up_to is not None
            history = self.histories.cached(room, up_to, since, dialect)
            if history is None:
                history = await self.histories.read(room, up_to, since, dialect)
        except Exception:
            self._failed(Failure(), session, room, already)
            return
        self._joined(history, session, room, already)

    # The room's position: where its history ends and live messages begin.

    def _watch(self, room: Room) -> None:
        room.position = self.log.watch(room.name)
        room.position.addCallbacks(
            self._watching, self._not_watching, callbackArgs=(room,), errbackArgs=(room,)
        )

    def _watching(self, watched: Watched, room: Room) -> None:
        if room.last is None or room.last < watched.position:
            room.last = watched.position
        self.presence.watched(room, watched)
        waiters, room.position = room.waiters, None
        room.waiters = []
        for waiter in waiters:
            waiter.callback(room.last)

    def _not_watching(self, failure: Failure, room: Room) -> None:
        waiters, room.position = room.waiters, None
        room.waiters = []
        for waiter in waiters:
            waiter.errback(failure)

    def _last_id(self, room: Room) -> Deferred[int]:
        if room.position is None and room.last is not None:
            return succeed(room.last)
        if room.position is None:  # watching failed before: try again
            self._watch(room)
            if room.position is None:  # answered at once
                if room.last is not None:
                    return succeed(room.last)
                return fail(Unavailable(f"cannot watch room {room.name!r}"))
        waiter: Deferred[int] = Deferred()
        room.waiters.append(waiter)
        return waiter

    # A joiner with its history.

    def _joined(self, history: JoinHistory, session: Session, room: Room, already: bool) -> None:
        member = session.member
        if already:
            if room.name in session.rooms and session.alive:
                self.histories.send(member, history)
                member.send_event(("chat-users", self.presence.users(room)))
            return
        if session not in room.joining:
            return  # left, or closed, meanwhile
        cut = self.histories.send(member, history)
        if room.last is not None and cut > room.last:
            # The client saw more than this instance has passed on yet (through
            # another instance, before a reconnect, while this one's Redis
            # subscription was away): what lies between comes live, and would
            # come twice.  The joiner waits until it has (see `deliver`).
            room.catching_up[session] = cut
            return
        self._complete(session, room, cut)

    def _complete(self, session: Session, room: Room, cut: int) -> None:
        """Make a joiner that has its history (up to id `cut`) a member, and say so."""
        member = session.member
        came = room.joining.pop(session, [])
        if not session.alive:
            return  # closed while sending its history (a slow consumer)
        first = room.add(session)
        member.send_event(("chat-users", self.presence.users(room)))
        for message in came:
            if message.id > cut:
                member.send_event(("chat-message", message.payload()))
        if not session.alive:
            return  # closed while sending (a slow consumer)
        self.presence.arrived(session, room, first)

    def _failed(self, failure: Failure, session: Session, room: Room, already: bool) -> None:
        if not already and room.joining.pop(session, None) is None:
            return  # left, or closed, meanwhile
        if failure.check(Unavailable):
            error = unavailable("chat-join")
        else:
            _log.failure(
                "conn={conn_id} join of {room} failed",
                failure,
                conn_id=session.member.conn_id,
                room=room.name,
            )
            error = ProtocolError("server-error", "the room could not be joined", "chat-join")
        if not already:
            session.rooms.pop(room.name, None)
        if session.alive:
            session.member.send_event(error.event())
        if room.empty() and self.rooms.get(room.name) is room:
            self._drop(room)

    # Leaving.

    def leave(self, session: Session, name: str, tell_leaver: bool) -> None:
        """`session` leaves its room `name` (`tell_leaver`: it asked; else it closed)."""
        del session.rooms[name]
        room = self.rooms[name]
        # One still waiting for its history was never announced.
        room.catching_up.pop(session, None)
        announced = room.joining.pop(session, None) is None
        self.presence.depart(session, room, announced, tell_leaver)
        # (Telling the room may have closed its last other member, a slow
        # consumer, whose own leave dropped the room already.)
        if room.empty() and self.rooms.get(name) is room:
            self._drop(room)

    def _drop(self, room: Room) -> None:
        self.presence.forget(room)
        self.log.unwatch(room.name)

    # The room's messages, which joiners wait for.

    def deliver(self, message: StoredMessage) -> None:
        """A stored message of a room here, in id order: to its members, and its joiners later.

        Delivered only once stored: a message anybody saw survives a crash.
        """
        room = self.rooms.get(message.room)
        if room is None:
            return
        room.last = message.id
        self.histories.forget(room)
        for waiting in room.joining.values():
            waiting.append(message)
        self.presence.to_room(room, ("chat-message", message.payload()))
        if room.catching_up:
            for session, cut in list(room.catching_up.items()):
                if cut <= message.id and room.catching_up.pop(session, None) is not None:
                    self._complete(session, room, cut)

    def deleted(self, name: str, message_id: int, by: str) -> None:
        """Message `message_id` was removed from room `name`: its members see ``chat-delete``."""
        room = self.rooms.get(name)
        if room is None:
            return
        self.histories.forget(room)
        for waiting in room.joining.values():
            waiting[:] = [m for m in waiting if m.id != message_id]
        self.presence.to_room(room, ("chat-delete", {"room": name, "id": message_id, "by": by}))
