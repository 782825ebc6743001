"""Rooms and their presence: who is in each room, here and on other instances.

`Room` is one room's state.  `RoomPresence` keeps the rooms of this process
and tells them who comes, goes, is renamed or types: one event each in a
small room; in a room over ``--large-room`` members, gathered into one
``chat-presence`` per ``--presence-interval`` (docs/protocol.md, "Large
rooms").  Members of other instances arrive as the backplane's `Presence`
events.  No sockets and no reactor: timers come from the injected clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import LogLevel

from chatservice import logs
from chatservice.backplane.roles import PresenceRelay
from chatservice.backplane.values import Presence, StoredMessage, Watched
from chatservice.chat.fanout import FanOut
from chatservice.chat.messages import Dialect, Event, iso_time
from chatservice.chat.presence import USERS_PAGE, Changes, Roster
from chatservice.chat.session import Member, Session

_log = logs.logger("chatservice.hub")

#: Rooms with more members than this are large (docs/protocol.md, "Large rooms").
LARGE_ROOM = 500
#: Seconds between two ``chat-presence`` events of a large room, at least.
PRESENCE_INTERVAL = 1.0


class Room:
    """One room's state in this process.

    Membership (`RoomPresence`):
        sessions: Members here; groups: the same by dialect, for encode-once
        fan-out; roster: every member's name (here and elsewhere), sorted;
        identified: the names of identified users, with their user ids;
        remote: members of other instances (``instance:connection`` -> name);
        changes: presence changes not yet sent (large rooms); flush: their
        pending send, if one is scheduled.

    The join pipeline (`chatservice.chat.joins.Joins`):
        joining: joiners waiting for their history (from a backplane a round
        trip away), with the room's messages that came meanwhile;
        catching_up: joiners whose history reached further than `last`, with
        the id it reached: they become members once `last` gets there;
        position: fires with the backplane's position in the room once it
        watches it; waiters: who waits for it; last: the id of the room's
        last message passed on here.

    The join-history cache (`chatservice.chat.histories.JoinHistories`):
        history_frames: join histories already encoded, by ``(since, up to,
        dialect)``, emptied by the room's next message; reads: histories
        being read, by ``(since, up to)``, with who else waits for the same.
    """

    __slots__ = (
        "catching_up",
        "changes",
        "flush",
        "groups",
        "history_frames",
        "identified",
        "joining",
        "last",
        "name",
        "position",
        "reads",
        "remote",
        "roster",
        "sessions",
        "waiters",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.sessions: dict[Session, None] = {}
        self.groups: dict[Dialect, dict[Member, None]] = {}
        self.roster = Roster()
        self.changes = Changes()
        self.flush: IDelayedCall | None = None
        self.history_frames: dict[tuple[int | None, int, Dialect], Any] = {}
        self.joining: dict[Session, list[StoredMessage]] = {}
        self.reads: dict[tuple[int | None, int], list[Deferred[Any]]] = {}
        self.position: Deferred[Watched] | None = None
        self.remote: dict[str, str] = {}
        self.waiters: list[Deferred[int]] = []
        self.last: int | None = None
        self.identified: dict[str, str] = {}
        self.catching_up: dict[Session, int] = {}

    def empty(self) -> bool:
        """Whether nobody is here, nor on the way in."""
        return not self.sessions and not self.joining

    def count(self) -> int:
        """Members here and on other instances (a user with several connections once)."""
        return len(self.roster)

    def add(self, session: Session) -> bool:
        """Add a member; True if its name was not here yet (another tab of it may be)."""
        assert session.name is not None  # joined, so named
        self.sessions[session] = None
        member = session.member
        self.groups.setdefault(member.dialect, {})[member] = None
        return self.arrived(session.name, session.user())

    def remove(self, session: Session) -> bool:
        """Remove a member; True if its name is gone (its last connection here)."""
        assert session.name is not None
        del self.sessions[session]
        member = session.member
        group = self.groups[member.dialect]
        del group[member]
        if not group:
            del self.groups[member.dialect]
        return self.went(session.name)

    def arrived(self, name: str, user: str | None) -> bool:
        """A name (of a member here or elsewhere) came; True if it was not here yet."""
        if user:
            self.identified[name] = user
        return self.roster.add(name)

    def went(self, name: str) -> bool:
        """A name went once; True if that was its last connection here."""
        gone = self.roster.remove(name)
        if gone:
            self.identified.pop(name, None)
        return gone

    def usernames(self) -> list[str]:
        """Every member's name, sorted case-insensitively."""
        return self.roster.all()

    def users(self, after: str | None = None, limit: int = USERS_PAGE) -> dict[str, Any]:
        """A ``chat-users`` payload: the member count and a page of names."""
        names, cursor = self.roster.page(after, limit)
        payload: dict[str, Any] = {"room": self.name, "users": names, "count": self.count()}
        if cursor is not None:
            payload["next"] = cursor
        if after is not None:
            payload["after"] = after
        if self.identified:
            payload["identified"] = [name for name in names if name in self.identified]
        return payload


class RoomPresence:
    """The rooms of this process, and who comes, goes, is renamed or types in them.

    Args:
        relay: Tells the other instances what members here do.
        fanout: Sends events to a room's members.
        clock: The time, and the timers of large rooms' gathered presence.
        large_room: Rooms with more members than this are large.
        presence_interval: Seconds between two ``chat-presence`` of a room, at least.
    """

    def __init__(
        self,
        relay: PresenceRelay,
        fanout: FanOut,
        clock: IReactorTime,
        large_room: int = LARGE_ROOM,
        presence_interval: float = PRESENCE_INTERVAL,
    ) -> None:
        self.relay = relay
        self.fanout = fanout
        self.clock = clock
        self.large_room = large_room
        self.presence_interval = presence_interval
        #: The rooms with members (or joiners) here, by name.
        self.rooms: dict[str, Room] = {}

    def open(self, name: str) -> Room:
        """A new room called `name` (there was none)."""
        room = self.rooms[name] = Room(name)
        return room

    def forget(self, room: Room) -> None:
        """Drop `room` (nobody is in it any more)."""
        if room.flush is not None:
            room.flush.cancel()
            room.flush = None
        del self.rooms[room.name]

    def is_large(self, room: Room) -> bool:
        """Whether `room`'s presence is gathered (over ``--large-room`` members)."""
        return room.count() > self.large_room

    def users(self, room: Room, after: str | None = None) -> dict[str, Any]:
        """A joiner's (or a ``chat-users`` asker's) page: a small room's every name."""
        if after is None and not self.is_large(room):
            return room.users(limit=room.count())
        return room.users(after)

    def to_room(self, room: Room, event: Event) -> int:
        """`event` to every member of `room` here."""
        return self.fanout.send(room.groups.items(), event)

    def _now(self) -> str:
        return iso_time(self.clock.seconds())

    def _payload(self, name: str, room: str, user: str | None) -> dict[str, Any]:
        """A ``chat-join``/``chat-leave`` payload (``user`` for an identified user)."""
        payload: dict[str, Any] = {"username": name, "room": room, "time": self._now()}
        if user:
            payload["user"] = user
        return payload

    # Members here.

    def arrived(self, session: Session, room: Room, first: bool) -> None:
        """`session` is a member of `room` now (`first`: its user was not here yet): say so."""
        assert session.name is not None  # joined, so named
        name = room.name
        user = session.user()
        self.relay.joined(name, session.member.conn_id, session.name, user)
        if not first:
            pass  # another connection of the same user is here: nothing changes for the others
        elif self.is_large(room):
            room.changes.join(session.name)
            self._schedule(room)
        else:
            self.to_room(room, ("chat-join", self._payload(session.name, name, user)))
        _log.info(
            "conn={conn_id} {username} joined {room} ({members} members)",
            conn_id=session.member.conn_id,
            username=session.name,
            room=name,
            members=len(room.sessions),
        )

    def depart(self, session: Session, room: Room, announced: bool, tell_leaver: bool) -> None:
        """`session` left `room` (`announced`: it was a member, not still joining).

        The room hears it (unless its user is still there through another
        connection), and the leaver too if `tell_leaver`.
        """
        name = room.name
        assert session.name is not None  # joined, so named
        gone = False
        if announced:
            gone = room.remove(session)
            self.relay.left(name, session.member.conn_id, session.name)
        tell_room = False
        if not announced or not room.sessions or not gone:
            pass
        elif self.is_large(room):
            room.changes.leave(session.name)
            self._schedule(room)
        else:
            self.flush(room)
            tell_room = True
        if tell_room or tell_leaver:
            event: Event = ("chat-leave", self._payload(session.name, name, session.user()))
            if tell_room:
                self.to_room(room, event)
            if tell_leaver:
                session.member.send_event(event)
        if tell_leaver:
            _log.info(
                "conn={conn_id} {username} left {room}",
                conn_id=session.member.conn_id,
                username=session.name,
                room=name,
            )
        elif logs.enabled(LogLevel.debug):
            # A closed connection's close is logged (at info); its leaves only when debugging.
            _log.debug(
                "conn={conn_id} {username} left {room} (closed)",
                conn_id=session.member.conn_id,
                username=session.name,
                room=name,
            )

    def renamed(self, session: Session, old: str, new: str) -> None:
        """`session` is called `new` now: its rooms (each member once) and itself hear it."""
        rooms = list(session.rooms)
        event: Event = ("chat-nick", {"old": old, "new": new, "rooms": rooms})
        audience: dict[Dialect, dict[Member, None]] = {
            session.member.dialect: {session.member: None}
        }
        for name in rooms:
            room = self.rooms[name]
            if session in room.joining:
                continue  # it comes in under its new name
            room.roster.rename(old, new)
            if self.is_large(room):
                room.changes.rename(old, new)
                self._schedule(room)
                continue
            for dialect, group in room.groups.items():
                audience.setdefault(dialect, {}).update(group)
        self.fanout.send(audience.items(), event)
        announced = [name for name in rooms if session not in self.rooms[name].joining]
        self.relay.renamed(announced, session.member.conn_id, old, new)
        _log.info(
            "conn={conn_id} {old} is now {new}",
            conn_id=session.member.conn_id,
            old=old,
            new=new,
        )

    def typing(self, session: Session, name: str) -> None:
        """`session` is typing in its room `name` (not told in a large room)."""
        room = self.rooms[name]
        if self.is_large(room):
            return  # thousands typing is noise, and the square of the room's size in events
        event: Event = ("chat-typing", {"username": session.name, "room": name})
        self.fanout.send(room.groups.items(), event, exclude=session.member)
        assert session.name is not None  # joined, so named
        self.relay.typing(name, session.member.conn_id, session.name)

    # Members of other instances.

    def watched(self, room: Room, watched: Watched) -> None:
        """The backplane watches `room` now: who was in it elsewhere then."""
        for member, name in watched.members.items():
            if member not in room.remote:
                room.remote[member] = name
                room.arrived(name, watched.users.get(member))

    def on_presence(self, event: Presence) -> None:
        """A member elsewhere did something in a room here."""
        room = self.rooms.get(event.room)
        if room is None:
            return
        kind = event.kind
        if kind == "join":
            self._remote_joined(room, event.member, event.name, event.user)
        elif kind == "leave":
            self._remote_left(room, event.member)
        elif kind == "nick":
            self._remote_renamed(room, event)
        elif kind == "typing":
            if event.member in room.remote and not self.is_large(room):
                typing: Event = ("chat-typing", {"username": event.name, "room": room.name})
                self.to_room(room, typing)
        elif kind == "members" and event.members is not None:
            # After a reconnect: whoever came or went meanwhile.
            for member in [m for m in room.remote if m not in event.members]:
                self._remote_left(room, member)
            for member, name in event.members.items():
                if member not in room.remote:
                    self._remote_joined(room, member, name)
                elif room.remote[member] != name:
                    room.roster.rename(room.remote[member], name)
                    room.remote[member] = name

    def _remote_joined(self, room: Room, member: str, name: str, user: str = "") -> None:
        if member in room.remote:
            return
        room.remote[member] = name
        if not room.arrived(name, user or None):
            return  # another connection of the same user
        if self.is_large(room):
            room.changes.join(name)
            self._schedule(room)
        else:
            self.to_room(room, ("chat-join", self._payload(name, room.name, user or None)))

    def _remote_left(self, room: Room, member: str) -> None:
        name = room.remote.pop(member, None)
        if name is None:
            return
        user = room.identified.get(name)
        if not room.went(name):
            return  # the same user is still here through another connection
        if self.is_large(room):
            room.changes.leave(name)
            self._schedule(room)
        else:
            self.flush(room)
            self.to_room(room, ("chat-leave", self._payload(name, room.name, user)))

    def _remote_renamed(self, room: Room, event: Presence) -> None:
        old = room.remote.get(event.member)
        if old is None:
            return
        new = event.name
        room.remote[event.member] = new
        room.roster.rename(old, new)
        if self.is_large(room):
            room.changes.rename(old, new)
            self._schedule(room)
            return
        # Each member here hears of it once: through the first of the
        # renamed member's rooms that it is in too.
        audience: dict[Dialect, list[Member]] = {}
        for session in room.sessions:
            first = next((r for r in event.rooms if r in session.rooms), None)
            if first == room.name:
                audience.setdefault(session.member.dialect, []).append(session.member)
        nick: Event = ("chat-nick", {"old": old, "new": new, "rooms": list(event.rooms)})
        self.fanout.send(audience.items(), nick)

    # Large rooms: presence gathered.

    def _schedule(self, room: Room) -> None:
        if room.flush is None:
            room.flush = self.clock.callLater(self.presence_interval, self.flush, room)

    def flush(self, room: Room) -> None:
        """Send a room's gathered presence changes now, if it has any."""
        if room.flush is not None:
            if room.flush.active():
                room.flush.cancel()
            room.flush = None
        changes = room.changes
        if not changes or self.rooms.get(room.name) is not room:
            return
        room.changes = Changes()
        payload = changes.payload(room.name, len(room.sessions), self._now())
        self.to_room(room, ("chat-presence", payload))
