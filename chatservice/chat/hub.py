"""Rooms, presence and fan-out: the chat's state, without sockets or a reactor.

The hub talks to each connection through the small `Member` interface, so the
JSON and text dialects (and later a Redis bridge) are just implementations.
A broadcast encodes and frames an event once per dialect and hands the same
frame to every member; nothing here waits on a member.  Behaviour is specified
in docs/protocol.md ("/chat").
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from chatservice import logs
from chatservice.backplane.roles import Backplane
from chatservice.backplane.values import (
    Deletion,
    DirectOrder,
    Displacement,
    ModerationOrder,
    Notice,
    Order,
    Presence,
    StoredMessage,
    Unavailable,
    Watched,
)
from chatservice.chat.identity import DM_PREFIX, OFF, AuthError, AuthPolicy, Identity, dm_room
from chatservice.chat.messages import (
    DEFAULT_ROOM,
    MAX_ROOM_LENGTH,
    MAX_USERNAME_LENGTH,
    TEXT,
    TEXT_HELP,
    Authenticate,
    Command,
    Delete,
    Dialect,
    Direct,
    Event,
    Help,
    Join,
    Leave,
    Moderate,
    Nick,
    ProtocolError,
    Say,
    Typing,
    Users,
)
from chatservice.chat.moderation import Sanction, Sanctions, keys_of
from chatservice.chat.policy import FloodGuard, TokenBucket
from chatservice.chat.presence import USERS_PAGE, Changes, Roster
from chatservice.counters import Counters

_log = logs.logger("chatservice.hub")

#: How many messages a join without `since` gets.
JOIN_HISTORY = 50
#: Close code for a policy violation (RFC 6455 7.4.1).
CLOSE_POLICY = 1008
#: Close code for an error of ours (a bug).
CLOSE_INTERNAL_ERROR = 1011
#: Rooms with more members than this are large (docs/protocol.md, "Large rooms").
LARGE_ROOM = 500
#: Seconds between two ``chat-presence`` events of a large room, at least.
PRESENCE_INTERVAL = 1.0
#: Different join histories of one room kept encoded until its next message.
HISTORY_FRAMES = 16
#: What /help adds with --auth.
TEXT_AUTH_HELP = "/auth TOKEN signs you in with a token."
#: Seconds a ban or mute lasts when the moderator does not say.
DEFAULT_DURATIONS = {"ban": 3600.0, "mute": 600.0}
#: The frame type of each command, for its errors.
_TYPES: dict[type, str] = {
    Join: "chat-join",
    Direct: "chat-join",
    Say: "chat-message",
    Leave: "chat-leave",
    Typing: "chat-typing",
    Nick: "chat-nick",
    Users: "chat-users",
    Delete: "chat-delete",
}


class Member(Protocol):
    """What the hub needs of a connection."""

    conn_id: int
    dialect: Dialect

    def send_event(self, event: Event) -> None:
        """Send one event to this connection only."""

    def deliver(self, frame: Any) -> None:
        """Send a frame prepared by the hub's `prepare` (a broadcast)."""

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
        return {
            "max_message_size": self.max_message_size,
            "max_text_length": self.max_text_length,
            "rate": self.rate,
            "burst": self.burst,
            "max_username_length": MAX_USERNAME_LENGTH,
            "max_room_length": MAX_ROOM_LENGTH,
        }


def _debugging() -> bool:
    return logs.enabled(LogLevel.debug)


def unavailable(type: str) -> ProtocolError:
    """The error for a command the backplane could not carry out (Redis is away)."""
    return ProtocolError("unavailable", "the chat cannot reach its storage; try again soon", type)


def _sanction_text(sanction: Sanction, what: str) -> str:
    where = f" from #{sanction.room}" if sanction.room and what == "banned" else ""
    where = f" in #{sanction.room}" if sanction.room and what == "muted" else where
    because = f": {sanction.reason}" if sanction.reason else ""
    return f"you are {what}{where} until {iso_time(sanction.until)} by {sanction.by}{because}"


def iso_time(seconds: float) -> str:
    """ISO 8601 UTC with milliseconds: ``2026-11-22T04:02:02.123Z``."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Session:
    """The hub's state of one connection."""

    __slots__ = (
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
        self.name: str | None = None
        #: Who the connection's token says it is; None for a guest.
        self.identity: Identity | None = None
        #: The deadline for a token (``--auth required``), then its expiry.
        self.timer: IDelayedCall | None = None
        #: Whether a join or rename waits for the backplane; commands that come
        #: meanwhile wait in `queued`, so they are carried out in order.
        self.busy = False
        self.queued: list[Command] = []
        #: Joined rooms, in join order: the last is the current room.
        self.rooms: dict[str, None] = {}
        self.bucket = bucket
        self.flood = flood

    def current_room(self) -> str | None:
        return next(reversed(self.rooms), None)

    def user(self) -> str | None:
        """The identified user's id, or None for a guest."""
        return None if self.identity is None else self.identity.user

    def keys(self) -> tuple[str, ...]:
        """What bans and mutes of this connection's user are filed under."""
        return keys_of(self.name, self.user())


class Room:
    """A room's live members, grouped by dialect for encode-once fan-out.

    Attributes:
        roster: The members' names, sorted.
        changes: Presence changes not yet sent (large rooms).
        flush: The pending send of `changes`, if one is scheduled.
        history_frames: Join histories already encoded, by ``(since, up to,
            dialect)``; emptied by the room's next message.
        joining: Joiners waiting for their history (from a backplane a round
            trip away), with the room's messages that came meanwhile.
        reads: Histories being read, by ``(since, up to)``, with who else waits
            for the same.
        position: Fires with the backplane's position in the room once it
            watches it (`Backplane.watch`).
        last: The id of the room's last message passed on here.
        remote: Members of other instances (``instance:connection`` -> name).
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
        self.history_frames: dict[tuple[int | None, int, Dialect], tuple[Any, int, int]] = {}
        self.joining: dict[Session, list[StoredMessage]] = {}
        self.reads: dict[tuple[int | None, int], list[Deferred[Any]]] = {}
        self.position: Deferred[Watched] | None = None
        self.remote: dict[str, str] = {}
        #: Who waits for `position`.
        self.waiters: list[Deferred[int]] = []
        self.last: int | None = None
        #: The names here of identified users, with their user ids.
        self.identified: dict[str, str] = {}
        #: Joiners whose history reached further than `last` (see `Hub._joined`),
        #: with the id it reached: they become members once `last` gets there.
        self.catching_up: dict[Session, int] = {}

    def empty(self) -> bool:
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
        if user:
            self.identified[name] = user
        return self.roster.add(name)

    def went(self, name: str) -> bool:
        gone = self.roster.remove(name)
        if gone:
            self.identified.pop(name, None)
        return gone

    def usernames(self) -> list[str]:
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


class Hub:
    """All rooms and connections of one process.

    Args:
        backplane: Where messages are numbered, kept and passed on (and
            rooms' histories read); the hub is its listener.
        clock: The reactor, or a `Clock` in tests: the time, and the timers
            of large rooms' presence events.
        prepare: Frames an encoded event once for many connections
            (`chatservice.frames.TextFrame`; identity in tests).
        server: The server's name, for the welcome.
        motd: Message of the day, for the welcome.
        limits: What clients are held to.
        stats: Where deliveries and rate limits are counted (plain ints,
            for /metrics); a new `Counters` if None.
        large_room: Rooms with more members than this are large: their joins,
            leaves and renames are gathered into ``chat-presence`` events.
        presence_interval: Seconds between two ``chat-presence`` events of a
            room, at least.
        auth: Whether and how clients identify themselves with tokens, and
            which rooms are private (`chatservice.identity`); off by default.
    """

    def __init__(
        self,
        backplane: Backplane,
        clock: IReactorTime,
        prepare: Callable[[bytes], Any],
        server: str,
        motd: str = "",
        limits: ChatLimits | None = None,
        stats: Counters | None = None,
        large_room: int = LARGE_ROOM,
        presence_interval: float = PRESENCE_INTERVAL,
        auth: AuthPolicy = OFF,
    ) -> None:
        self.backplane = backplane
        backplane.register(self)
        self.auth = auth
        self.stats = stats if stats is not None else Counters()
        self.clock = clock
        self.seconds = clock.seconds
        self.large_room = large_room
        self.presence_interval = presence_interval
        self.prepare = prepare
        self.server = server
        self.motd = motd
        self.limits = limits or ChatLimits()
        self.rooms: dict[str, Room] = {}
        self.sessions: dict[Member, Session] = {}
        self._names: dict[str, Session] = {}
        #: Names of identified users (casefolded): theirs for good, with
        #: their user id and the name as they have it.
        self._reserved: dict[str, tuple[str, str]] = {}
        #: The connections of each identified user here.
        self._connections_of: dict[str, dict[Session, None]] = {}
        self.sanctions = Sanctions(self.seconds)

    # Connections.

    def connect(self, member: Member) -> Session:
        """Register a new connection and welcome it."""
        limits = self.limits
        session = Session(
            member,
            TokenBucket(limits.rate, limits.burst, self.seconds),
            FloodGuard(limits.flood_drops, limits.flood_window, self.seconds),
        )
        self.sessions[member] = session
        welcome: dict[str, Any] = {
            "id": member.conn_id,
            "server": self.server,
            "motd": self.motd,
            "limits": limits.welcome(),
        }
        auth = self.auth
        if auth.mode != "off":
            welcome["auth"] = {"mode": auth.mode}
            if auth.refresh_url:
                welcome["auth"]["refresh_url"] = auth.refresh_url
            if auth.mode == "required":
                session.timer = self.clock.callLater(
                    auth.timeout, self._unidentified, member, session
                )
        member.send_event(("chat-welcome", welcome))
        return session

    def start(self, session: Session, token: str | None = None) -> None:
        """What a connection does first: the token of its handshake (``?token=``),
        or, for a text client, join the lobby as a guest."""
        try:
            if token is not None:
                self.handle(session, Authenticate(token))
            elif session.member.dialect is TEXT and self.auth.mode != "required":
                self.handle(session, Join(DEFAULT_ROOM, self.guest_name(session.member)))
        except ProtocolError as error:
            session.member.send_event(error.event())

    def disconnect(self, member: Member) -> None:
        """Forget a connection: it leaves its rooms, its name is free.  Idempotent."""
        session = self.sessions.pop(member, None)
        if session is None:
            return
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        for room in list(session.rooms):
            self._leave(session, room, tell_leaver=False)
        user = session.user()
        if user is not None:
            # An identified user's name stays theirs.
            sessions = self._connections_of.get(user)
            if sessions is not None:
                sessions.pop(session, None)
                if not sessions:
                    del self._connections_of[user]
        elif session.name is not None:
            if self._names.get(session.name.casefold()) is session:
                del self._names[session.name.casefold()]
            self.backplane.release(session.name, member.conn_id)

    def admit(self, session: Session) -> bool:
        """Whether a frame from `session` may be handled (the rate limit).

        A refused frame is answered with ``rate-limited``; a connection that keeps
        flooding is closed with 1008.
        """
        if session.bucket.take():
            return True
        self.stats.rate_limited += 1
        if session.flood.dropped():
            self.stats.flood_closes += 1
            _log.info(
                "conn={conn_id} closed for flooding (over {drops} dropped frames in {window}s)",
                conn_id=session.member.conn_id,
                drops=self.limits.flood_drops,
                window=self.limits.flood_window,
            )
            self.close(session.member, CLOSE_POLICY, "flooding")
            return False
        session.member.send_event(
            ProtocolError(
                "rate-limited", f"over {self.limits.rate:g} messages/s; this one was dropped"
            ).event()
        )
        return False

    def close(self, member: Member, code: int, reason: str) -> None:
        """Forget `member`, then close it (so nothing more is sent to it)."""
        self.disconnect(member)
        member.close(code, reason)

    def guest_name(self, member: Member) -> str:
        """A free name like ``guest-7`` for a client that has not chosen one."""
        base = f"guest-{self.backplane.guest_prefix}{member.conn_id}"
        name, n = base, 1
        while name.casefold() in self._names or name.casefold() in self._reserved:
            n += 1
            name = f"{base}-{n}"
        return name

    # Commands.

    def handle(self, session: Session, command: Command) -> None:
        """Carry out a client's command, in order with those before it.

        A join or rename may wait for the backplane (Redis: a round trip or
        more); what the client sends meanwhile (a message to the room it is
        joining, typically) waits for it, as it would have found it done in one
        process.

        Raises:
            ProtocolError: The command cannot be carried out; tell the client.
        """
        if session.busy:
            session.queued.append(command)
            return
        waiting = self._carry_out(session, command)
        if waiting is not None:
            # (Done already, it calls _done at once.)
            session.busy = True
            waiting.addBoth(self._done, session)

    def _done(self, result: object, session: Session) -> None:
        """A join or rename is done: carry out what came meanwhile, in order."""
        session.busy = False
        member = session.member
        while session.queued and not session.busy:
            if self.sessions.get(member) is not session:
                session.queued.clear()
                return
            command = session.queued.pop(0)
            try:
                self.handle(session, command)
            except ProtocolError as error:
                member.send_event(error.event())
            except Exception:
                _log.failure("conn={conn_id} error handling a frame", conn_id=member.conn_id)
                self.close(member, CLOSE_INTERNAL_ERROR, "Internal Server Error")
                return

    def _carry_out(self, session: Session, command: Command) -> Deferred[None] | None:
        """`handle` a command; a Deferred if it is not done yet."""
        if session.identity is None and self.auth.mode != "off":
            if isinstance(command, Authenticate):
                return self._authenticate(session, command.token)
            if self.auth.mode == "required" and not isinstance(command, Help):
                raise ProtocolError(
                    "auth-required",
                    "send chat-auth with your token first",
                    _TYPES.get(type(command), "chat-" + type(command).__name__.lower()),
                )
        if isinstance(command, Say):
            self._say(session, command)
        elif isinstance(command, Join):
            return self._join(session, command)
        elif isinstance(command, Typing):
            self._typing(session, command)
        elif isinstance(command, Leave):
            room = self._joined_room(session, command.room, "chat-leave")
            self._leave(session, room, tell_leaver=True)
        elif isinstance(command, Nick):
            return self._nick(session, command.username)
        elif isinstance(command, Users):
            room = self._joined_room(session, command.room, "chat-users")
            session.member.send_event(("chat-users", self._users(self.rooms[room], command.after)))
        elif isinstance(command, Help):
            text = TEXT_HELP if self.auth.mode == "off" else f"{TEXT_HELP} {TEXT_AUTH_HELP}"
            session.member.send_event(("chat-info", {"message": text}))
        elif isinstance(command, Authenticate):
            return self._authenticate(session, command.token)
        elif isinstance(command, Direct):
            return self._direct(session, command)
        elif isinstance(command, Moderate | Delete):
            self._moderation(session, command)
        return None

    # What the HTTP API reads.

    def live_rooms(self) -> list[str]:
        """The rooms with members (or joiners) here."""
        return list(self.rooms)

    def member_count(self, room: str) -> int:
        """`room`'s members as this instance knows them (here and elsewhere); 0 if none here."""
        live = self.rooms.get(room)
        return live.count() if live is not None else 0

    def users_page(self, room: str, after: str | None, limit: int) -> dict[str, Any] | None:
        """A ``chat-users`` page of `room` if it has members here, else None."""
        live = self.rooms.get(room)
        return None if live is None else live.users(after, limit)

    def notice(self, message: str) -> int:
        """A server-wide announcement to every connection, on every instance.

        Returns:
            How many connections of this instance got it (the others' deliver
            it to theirs).
        """
        notice = Notice(message, iso_time(self.seconds()))
        self.backplane.announce(notice)
        return self.on_notice(notice)

    def on_message(self, message: StoredMessage) -> None:
        self._deliver(message)

    def on_deletion(self, deletion: Deletion) -> None:
        self._deleted(deletion.room, deletion.id, deletion.by)

    def on_presence(self, event: Presence) -> None:
        self._presence(event)

    def on_notice(self, notice: Notice) -> int:
        return self._notify(notice.message, notice.time)

    def on_order(self, order: Order) -> None:
        self._obey(order)

    def _notify(self, message: str, time: str) -> int:
        event: Event = ("chat-notice", {"message": message, "time": time})
        groups: dict[Dialect, list[Member]] = {}
        for member in self.sessions:
            groups.setdefault(member.dialect, []).append(member)
        return self._fan_out(groups.items(), event)

    def _joined_room(self, session: Session, room: str | None, type: str) -> str:
        name = room if room is not None else session.current_room()
        if name is None or name not in session.rooms:
            what = f"room {name!r}" if name else "any room"
            raise ProtocolError("not-joined", f"you have not joined {what}", type)
        return name

    def _claim(self, session: Session, username: str, type: str) -> Deferred[None]:
        """Take `username` for `session`, here and on every instance.

        Raises:
            ProtocolError: ``username-taken`` here (at once); through the
                Deferred when another instance has it.
        """
        key = username.casefold()
        holder = self._names.get(key)
        if (holder is not None and holder is not session) or key in self._reserved:
            raise ProtocolError("username-taken", f"{username!r} is taken", type)
        if self.sanctions and self.sanctions.find("ban", keys_of(username, None)):
            raise ProtocolError("forbidden", f"{username!r} is banned", type)
        self._names[key] = session  # held here while the backplane is asked
        member = session.member

        def answered(taken: bool) -> None:
            if not taken or self.sessions.get(member) is not session:
                if self._names.get(key) is session and session.name != username:
                    del self._names[key]
                if not taken:
                    raise ProtocolError("username-taken", f"{username!r} is taken", type)
                self.backplane.release(username, member.conn_id)  # closed meanwhile
                return
            old = session.name
            if old is not None and old.casefold() != key:
                if self._names.get(old.casefold()) is session:
                    del self._names[old.casefold()]
                self.backplane.release(old, member.conn_id)
            session.name = username

        def refused(failure: Failure) -> None:
            if self._names.get(key) is session and session.name != username:
                del self._names[key]
            if failure.check(Unavailable):
                raise unavailable(type)
            failure.raiseException()

        return self.backplane.claim(username, member.conn_id).addCallbacks(answered, refused)

    def _then(
        self, d: Deferred[None], session: Session, go: Callable[[], Deferred[None] | None]
    ) -> Deferred[None]:
        """Go on with a command once `d` fired; tell the client if it failed.

        Returns:
            `d`, fired once `go` (and what it waits for) is done.
        """

        d.addCallback(lambda _: go() if self.sessions.get(session.member) is session else None)
        d.addErrback(self._failed, session)
        return d

    def _failed(self, failure: Failure, session: Session) -> None:
        """Tell the client a command that waited for something failed."""
        error = failure.value if failure.check(ProtocolError) else None
        if error is None:
            _log.failure("conn={conn_id} command failed", failure, conn_id=session.member.conn_id)
            error = ProtocolError("server-error", "that did not work; try again")
        if self.sessions.get(session.member) is session:
            session.member.send_event(error.event())

    def _join(self, session: Session, command: Join) -> Deferred[None] | None:
        if self.auth.mode != "off" or self.sanctions:
            self._check_entry(session, command.room)
        if session.name is None:
            username = command.username
            if username is None and session.member.dialect is TEXT:
                # A text client never names itself on joining: it is a guest
                # (its lobby join at connect did not happen: Redis was away).
                username = self.guest_name(session.member)
            if username is None:
                raise ProtocolError(
                    "bad-username", "the first chat-join needs a username", "chat-join"
                )
            claimed = self._claim(session, username, "chat-join")
            return self._then(claimed, session, lambda: self._enter(session, command))
        return self._enter(session, command)

    def _check_entry(self, session: Session, room: str) -> None:
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
                "forbidden", _sanction_text(banned, "banned"), "chat-join", {"room": room}
            )

    def _enter(self, session: Session, command: Join) -> Deferred[None] | None:
        """Join a room; a Deferred until its history is sent (None if at once)."""
        name = command.room
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name)
            room.position = self.backplane.watch(name)
            room.position.addCallbacks(
                self._watching, self._not_watching, callbackArgs=(room,), errbackArgs=(room,)
            )
        already = name in session.rooms
        session.rooms.pop(name, None)
        session.rooms[name] = None  # now the current room
        if session in room.joining:
            return None  # its first join is on the way
        if not already:
            room.joining[session] = []
        # The history up to the room's last message here; what comes after
        # it waits in `room.joining` (with a backplane that answers at once,
        # as in one process, all of this happens right here).
        d = self._last_id(room)
        d.addCallback(self._read_history, room, command.since, session.member.dialect)
        d.addCallbacks(
            self._joined,
            self._join_failed,
            callbackArgs=(session, room, already),
            errbackArgs=(session, room, already),
        )
        return d  # type: ignore[return-value]  # (fires with None: _joined's)

    def _watching(self, watched: Watched, room: Room) -> None:
        if room.last is None or room.last < watched.position:
            room.last = watched.position
        for member, name in watched.members.items():
            if member not in room.remote:
                room.remote[member] = name
                room.arrived(name, watched.users.get(member))
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
            room.position = self.backplane.watch(room.name)
            room.position.addCallbacks(
                self._watching, self._not_watching, callbackArgs=(room,), errbackArgs=(room,)
            )
            if room.position is None:  # answered at once
                if room.last is not None:
                    return succeed(room.last)
                return fail(Unavailable(f"cannot watch room {room.name!r}"))
        waiter: Deferred[int] = Deferred()
        room.waiters.append(waiter)
        return waiter

    def _joined(self, history: Any, session: Session, room: Room, already: bool) -> None:
        member = session.member
        if already:
            if room.name in session.rooms and self.sessions.get(member) is session:
                self._send_history(member, history)
                member.send_event(("chat-users", self._users(room)))
            return
        if session not in room.joining:
            return  # left, or closed, meanwhile
        cut = self._send_history(member, history)
        if room.last is not None and cut > room.last:
            # The client saw more than this instance has passed on yet (through
            # another instance, before a reconnect, while this one's Redis
            # subscription was away): what lies between comes live, and would
            # come twice.  The joiner waits until it has (see _deliver).
            room.catching_up[session] = cut
            return
        self._complete_join(session, room, cut)

    def _complete_join(self, session: Session, room: Room, cut: int) -> None:
        """Make a joiner that has its history (up to id `cut`) a member, and say so."""
        member = session.member
        came = room.joining.pop(session, [])
        if self.sessions.get(member) is not session:
            return  # closed while sending its history (a slow consumer)
        first = room.add(session)
        member.send_event(("chat-users", self._users(room)))
        for message in came:
            if message.id > cut:
                member.send_event(("chat-message", message.payload()))
        if self.sessions.get(member) is not session:
            return  # closed while sending (a slow consumer)
        assert session.name is not None  # claimed above
        name = room.name
        user = session.user()
        self.backplane.joined(name, member.conn_id, session.name, user)
        if not first:
            pass  # another connection of the same user is here: nothing changes for the others
        elif self._is_large(room):
            room.changes.join(session.name)
            self._schedule_presence(room)
        else:
            self._to_room(room, ("chat-join", self._presence_payload(session.name, name, user)))
        _log.info(
            "conn={conn_id} {username} joined {room} ({members} members)",
            conn_id=member.conn_id,
            username=session.name,
            room=name,
            members=len(room.sessions),
        )

    def _join_failed(self, failure: Failure, session: Session, room: Room, already: bool) -> None:
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
        if self.sessions.get(session.member) is session:
            session.member.send_event(error.event())
        if room.empty() and self.rooms.get(room.name) is room:
            self._drop_room(room)

    def _drop_room(self, room: Room) -> None:
        if room.flush is not None:
            room.flush.cancel()
            room.flush = None
        del self.rooms[room.name]
        self.backplane.unwatch(room.name)

    def _leave(self, session: Session, name: str, tell_leaver: bool) -> None:
        del session.rooms[name]
        room = self.rooms[name]
        assert session.name is not None  # joined, so named
        tell_room = False
        # One still waiting for its history was never announced.
        room.catching_up.pop(session, None)
        announced = room.joining.pop(session, None) is None
        gone = False
        if announced:
            gone = room.remove(session)
            self.backplane.left(name, session.member.conn_id, session.name)
        if room.empty():
            self._drop_room(room)
        elif not announced or not room.sessions or not gone:
            pass
        elif self._is_large(room):
            room.changes.leave(session.name)
            self._schedule_presence(room)
        else:
            self._flush_presence(room)
            tell_room = True
        if tell_room or tell_leaver:
            event: Event = (
                "chat-leave",
                self._presence_payload(session.name, name, session.user()),
            )
            if tell_room:
                self._to_room(room, event)
            if tell_leaver:
                session.member.send_event(event)
        if tell_leaver:
            _log.info(
                "conn={conn_id} {username} left {room}",
                conn_id=session.member.conn_id,
                username=session.name,
                room=name,
            )
        elif _debugging():
            # A closed connection's close is logged (at info); its leaves only when debugging.
            _log.debug(
                "conn={conn_id} {username} left {room} (closed)",
                conn_id=session.member.conn_id,
                username=session.name,
                room=name,
            )

    def publish(self, room: str, username: str, message: str) -> Deferred[StoredMessage]:
        """Say `message` in `room` as `username` (not a connection: the HTTP API).

        Returns:
            The stored message, once stored (and, in one process, delivered
            to the room; through Redis, every instance delivers it next).

        Raises:
            ProtocolError: ``too-long``, or empty text (``bad-payload``).
        """
        text = self._checked_text(message)
        if not text:
            raise ProtocolError("bad-payload", "message is empty", "chat-message")
        return self.backplane.store(room, username, text, self._now())

    def _checked_text(self, message: str) -> str:
        text = message.strip()
        if len(text) > self.limits.max_text_length:
            raise ProtocolError(
                "too-long",
                f"messages are at most {self.limits.max_text_length} characters",
                "chat-message",
            )
        return text

    def _say(self, session: Session, command: Say) -> None:
        room = self._joined_room(session, command.room, "chat-message")
        text = self._checked_text(command.message)
        if not text:
            return
        assert session.name is not None  # joined, so named
        if self.sanctions:
            muted = self.sanctions.find("mute", session.keys(), room)
            if muted is not None:
                raise ProtocolError("muted", _sanction_text(muted, "muted"), "chat-message")
        stored = self.backplane.store(room, session.name, text, self._now(), session.user())
        stored.addErrback(self._not_stored, session)

    def _deliver(self, message: StoredMessage) -> None:
        """The backplane's listener: a stored message of any room, in id order.

        Delivered only once stored: a message anybody saw survives a crash.
        """
        room = self.rooms.get(message.room)
        if room is None:
            return
        room.last = message.id
        room.history_frames.clear()
        for waiting in room.joining.values():
            waiting.append(message)
        self._to_room(room, ("chat-message", message.payload()))
        if room.catching_up:
            for session, cut in list(room.catching_up.items()):
                if cut <= message.id and room.catching_up.pop(session, None) is not None:
                    self._complete_join(session, room, cut)

    def _not_stored(self, failure: Failure, session: Session) -> None:
        if failure.check(Unavailable):
            error = unavailable("chat-message")
        else:
            _log.failure(
                "conn={conn_id} message could not be stored",
                failure,
                conn_id=session.member.conn_id,
            )
            error = ProtocolError(
                "server-error", "the message could not be stored; try again", "chat-message"
            )
        if session.member in self.sessions:
            session.member.send_event(error.event())

    def _typing(self, session: Session, command: Typing) -> None:
        name = self._joined_room(session, command.room, "chat-typing")
        room = self.rooms[name]
        if self._is_large(room):
            return  # thousands typing is noise, and the square of the room's size in events
        event: Event = ("chat-typing", {"username": session.name, "room": name})
        self._fan_out(room.groups.items(), event, exclude=session.member)
        assert session.name is not None  # joined, so named
        self.backplane.typing(name, session.member.conn_id, session.name)

    def _nick(self, session: Session, username: str) -> Deferred[None] | None:
        old = session.name
        if session.identity is not None:
            raise ProtocolError("name-fixed", "your name is your token's", "chat-nick")
        if old == username:
            return None
        claimed = self._claim(session, username, "chat-nick")
        if old is None:
            return self._then(claimed, session, lambda: None)  # named before any join
        return self._then(claimed, session, lambda: self._renamed(session, old, username))

    def _renamed(self, session: Session, old: str, username: str) -> None:
        rooms = list(session.rooms)
        event: Event = ("chat-nick", {"old": old, "new": username, "rooms": rooms})
        audience: dict[Dialect, dict[Member, None]] = {
            session.member.dialect: {session.member: None}
        }
        for name in rooms:
            room = self.rooms[name]
            if session in room.joining:
                continue  # it comes in under its new name
            room.roster.rename(old, username)
            if self._is_large(room):
                room.changes.rename(old, username)
                self._schedule_presence(room)
                continue
            for dialect, group in room.groups.items():
                audience.setdefault(dialect, {}).update(group)
        self._fan_out(audience.items(), event)
        announced = [name for name in rooms if session not in self.rooms[name].joining]
        self.backplane.renamed(announced, session.member.conn_id, old, username)
        _log.info(
            "conn={conn_id} {old} is now {new}",
            conn_id=session.member.conn_id,
            old=old,
            new=username,
        )

    # Identity: tokens, direct conversations, moderation.

    def _presence_payload(self, name: str, room: str, user: str | None) -> dict[str, Any]:
        """A ``chat-join``/``chat-leave`` payload (``user`` for an identified user)."""
        payload: dict[str, Any] = {"username": name, "room": room, "time": self._now()}
        if user:
            payload["user"] = user
        return payload

    def _authenticate(self, session: Session, token: str) -> Deferred[None] | None:
        """``chat-auth``: who the connection is, or a refresh of its token."""
        verifier = self.auth.verifier
        if self.auth.mode == "off" or verifier is None:
            raise ProtocolError("bad-type", "this server takes no tokens (--auth off)", "chat-auth")
        try:
            identity = verifier.verify(token)
        except AuthError as e:
            self._count_sign_in(e.code)
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
                self._leave(session, room, tell_leaver=True)
            if self._names.get(session.name.casefold()) is session:
                del self._names[session.name.casefold()]
            self.backplane.release(session.name, member.conn_id)
            session.name = None
        if self.sanctions:
            banned = self.sanctions.find("ban", keys_of(identity.name, identity.user))
            if banned is not None:
                self._count_sign_in("refused")
                self.close(member, CLOSE_POLICY, _sanction_text(banned, "banned"))
                return None
        name = identity.name
        key = name.casefold()
        owner = self._reserved.get(key)
        if owner is not None and owner[0] != identity.user:
            raise ProtocolError("username-taken", f"{name!r} is another user's name", "chat-auth")

        def claimed(ok: bool) -> None:
            self._count_sign_in("ok" if ok else "refused")
            if not ok:
                raise ProtocolError(
                    "username-taken", f"{name!r} is another user's name", "chat-auth"
                )
            if self.sessions.get(member) is not session:
                return
            self._reserved[key] = (identity.user, name)
            guest = self._names.get(key)
            if guest is not None and guest is not session:
                self._displace(guest)
            session.name = name
            self._connections_of.setdefault(identity.user, {})[session] = None
            self._identify(session, identity)
            self.backplane.conversations(identity.user).addCallbacks(
                self._resume, lambda _: None, callbackArgs=(session,)
            )

        def refused(failure: Failure) -> None:
            if failure.check(Unavailable):
                raise unavailable("chat-auth")
            failure.raiseException()

        d = self.backplane.claim(name, member.conn_id, identity.user).addCallbacks(claimed, refused)
        return self._then(d, session, lambda: self._after_auth(session))

    def _resume(self, conversations: dict[str, str], session: Session) -> None:
        """A user signed in: its direct conversations (``chat-direct``, ``resumed``)."""
        if self.sessions.get(session.member) is not session:
            return
        for room, other in sorted(conversations.items(), key=lambda item: item[1].casefold()):
            session.member.send_event(
                ("chat-direct", {"room": room, "with": other, "resumed": True})
            )

    def _count_sign_in(self, result: str) -> None:
        counts = self.stats.sign_ins
        counts[result if result in counts else "refused"] += 1

    def _after_auth(self, session: Session) -> Deferred[None] | None:
        if session.member.dialect is TEXT and not session.rooms:
            return self._carry_out(session, Join(DEFAULT_ROOM))  # as a guest's would
        return None

    def _identify(self, session: Session, identity: Identity) -> None:
        """Take a verified token: who, until when; rooms no longer granted are left."""
        member = session.member
        session.identity = identity
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = None
        if identity.expires is not None:
            left = identity.expires + self.auth.leeway - self.seconds()
            session.timer = self.clock.callLater(max(left, 0), self._expired, member, session)
        for room in list(session.rooms):
            if (
                self.auth.is_private(room)
                and not room.startswith(DM_PREFIX)
                and not identity.may_enter(room)
            ):
                self._leave(session, room, tell_leaver=True)
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

    def _displace(self, guest: Session) -> None:
        """A guest here has the name an identified user just took: it gets a guest name."""
        old = guest.name
        assert old is not None
        new = self.guest_name(guest.member)
        self._names.pop(old.casefold(), None)
        self._names[new.casefold()] = guest
        guest.name = new
        self.backplane.release(old, guest.member.conn_id)
        self.backplane.claim(new, guest.member.conn_id).addErrback(lambda _: None)
        guest.member.send_event(
            (
                "chat-notice",
                {
                    "message": f"{old} is an identified user's name; you are {new} now",
                    "time": self._now(),
                },
            )
        )
        self._renamed(guest, old, new)

    def _unidentified(self, member: Member, session: Session) -> None:
        """``--auth required``: no valid token in time."""
        session.timer = None
        if self.sessions.get(member) is session and session.identity is None:
            _log.info("conn={conn_id} closed: no token in time", conn_id=member.conn_id)
            self.stats.auth_closes["no-token"] += 1
            self.close(member, CLOSE_POLICY, "authentication required")

    def _expired(self, member: Member, session: Session) -> None:
        session.timer = None
        if self.sessions.get(member) is session:
            _log.info("conn={conn_id} closed: its token expired", conn_id=member.conn_id)
            self.stats.auth_closes["token-expired"] += 1
            self.close(member, CLOSE_POLICY, "token expired")

    def _user_of(self, name: str) -> Deferred[str | None]:
        """The user id of the identified user called `name`, if there is one."""
        known = self._reserved.get(name.casefold())
        if known is not None:
            return succeed(known[0])
        return self.backplane.holder(name)

    def _direct(self, session: Session, command: Direct) -> Deferred[None] | None:
        """``chat-join`` ``with``: the conversation of two identified users."""
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
        member = session.member

        def found(user: str | None) -> Deferred[None] | None:
            if user is None:
                raise ProtocolError(
                    "no-such-user",
                    f"{other!r} is not an identified user",
                    "chat-join",
                    {"with": other},
                )
            if self.sessions.get(member) is not session:
                return None
            room = dm_room(identity.user, user)
            known = self._reserved.get(other.casefold())
            name = known[1] if known is not None and known[0] == user else other
            member.send_event(("chat-direct", {"room": room, "with": name}))
            if command.since is None:
                # Tell the other one's connections, everywhere (their clients join
                # too), and remember it for both: their next sign-in is told again.
                assert session.name is not None  # identified, so named
                order = DirectOrder(user, room, session.name)
                self._obey(order)
                self.backplane.order(order)
                self.backplane.converse(identity.user, room, name)
                self.backplane.converse(user, room, session.name)
            return self._enter(session, Join(room, since=command.since))

        def failed(failure: Failure) -> None:
            if failure.check(Unavailable):
                raise unavailable("chat-join")
            failure.raiseException()

        d = self._user_of(other).addCallbacks(found, failed)
        d.addErrback(self._failed, session)
        return d

    def _moderation(self, session: Session, command: Moderate | Delete) -> None:
        """A moderator's command from the chat (answered with ``chat-moderated``)."""
        kind = _TYPES.get(type(command)) or f"chat-{getattr(command, 'action', '')}"
        identity = session.identity
        if identity is None or not identity.admin:
            raise ProtocolError("forbidden", "only moderators may do that", kind)
        actor = session.name or identity.user
        member = session.member
        done: Deferred[dict[str, Any]]
        if isinstance(command, Delete):
            done = self.delete_message(actor, command.room, command.id)
        else:
            done = self.moderate(actor, command)

        def answered(result: dict[str, Any]) -> None:
            if self.sessions.get(member) is session:
                member.send_event(("chat-moderated", result))

        def failed(failure: Failure) -> None:
            if failure.check(Unavailable):
                raise unavailable(kind)
            failure.raiseException()

        done.addCallbacks(answered, failed).addErrback(self._failed, session)

    def moderate(self, actor: str, command: Moderate) -> Deferred[dict[str, Any]]:
        """Kick, ban or mute a user, on every instance (the chat and the HTTP API).

        Returns:
            What was done (the ``chat-moderated`` payload), once done here.
        """
        action = command.action
        duration = command.duration
        if duration is None:
            duration = DEFAULT_DURATIONS.get(action, 0.0)

        def found(user: str | None) -> dict[str, Any]:
            until = None if action == "kick" else self.seconds() + duration
            order = ModerationOrder(
                action, command.username, user, command.room, until, actor, command.reason
            )
            _log.info(
                "moderation: {by} {action} {target} user={user} room={room} "
                "duration={duration} reason={reason!r}",
                by=actor,
                action=action if duration or action == "kick" else f"un{action}",
                target=command.username,
                user=user,
                room=command.room,
                duration=duration,
                reason=command.reason,
            )
            self.stats.moderation[action] += 1
            self._obey(order)
            self.backplane.order(order)
            if until is not None:
                self.backplane.keep_order(order)
            result: dict[str, Any] = {"action": action, "username": command.username, "by": actor}
            if command.room is not None:
                result["room"] = command.room
            if until is not None:
                result["until"] = iso_time(until) if duration else None
            return result

        return self._user_of(command.username).addCallback(found)

    def delete_message(self, actor: str, room: str, message_id: int) -> Deferred[dict[str, Any]]:
        """Remove a message from `room` and its history; its members see ``chat-delete``.

        Raises (through the Deferred):
            ProtocolError: ``no-such-message``.
        """

        def deleted(found: bool) -> dict[str, Any]:
            if not found:
                raise ProtocolError(
                    "no-such-message", f"#{room} keeps no message {message_id}", "chat-delete"
                )
            _log.info(
                "moderation: {by} delete {id} room={room}", by=actor, id=message_id, room=room
            )
            self.stats.moderation["delete"] += 1
            self._deleted(room, message_id, actor)
            return {"action": "delete", "room": room, "id": message_id, "by": actor}

        return self.backplane.delete(room, message_id, actor).addCallback(deleted)

    def _deleted(self, name: str, message_id: int, by: str) -> None:
        room = self.rooms.get(name)
        if room is None:
            return
        room.history_frames.clear()
        for waiting in room.joining.values():
            waiting[:] = [m for m in waiting if m.id != message_id]
        self._to_room(room, ("chat-delete", {"room": name, "id": message_id, "by": by}))

    def _obey(self, order: Order) -> None:
        """Carry out a moderator's (or a direct conversation's) order here."""
        if isinstance(order, Displacement):
            # An identified user elsewhere took the name a guest here has.
            guest = self._names.get(order.name.casefold())
            if guest is not None and guest.identity is None:
                self._displace(guest)
            return
        if isinstance(order, DirectOrder):
            event: Event = ("chat-direct", {"room": order.room, "with": order.other})
            for session in list(self._connections_of.get(order.user, ())):
                session.member.send_event(event)
            return
        kind = order.action
        targets = keys_of(order.name, order.user)
        room, by, reason = order.room, order.by, order.reason
        until = order.until
        if kind != "kick" and until is not None:
            for key in targets:
                self.sanctions.impose(Sanction(kind, key, room, float(until), by, reason))
        lifted = until is not None and float(until) <= self.seconds()
        if order.replayed:
            return  # kept from before: in force again, nobody told again
        for session in [s for s in self.sessions.values() if set(s.keys()) & set(targets)]:
            member = session.member
            because = f": {reason}" if reason else ""
            if kind == "kick":
                self.close(member, CLOSE_POLICY, f"kicked by {by}{because}")
                continue
            if kind == "ban" and room is None and not lifted:
                self.close(member, CLOSE_POLICY, f"banned by {by}{because}")
                continue
            if kind == "ban" and room in session.rooms and not lifted:
                self._leave(session, room, tell_leaver=True)
            where = (f" from #{room}" if kind == "ban" else f" in #{room}") if room else ""
            if lifted:
                text = f"your {kind}{where} was lifted by {by}"
            else:
                done = "banned" if kind == "ban" else "muted"
                ends = iso_time(float(until or 0))
                text = f"you were {done}{where} by {by} until {ends}{because}"
            member.send_event(("chat-notice", {"message": text, "time": self._now()}))

    # Presence and what joiners get.

    def _is_large(self, room: Room) -> bool:
        return room.count() > self.large_room

    # What members of other instances do.

    def _presence(self, event: Presence) -> None:
        """The backplane's presence listener: a member elsewhere did something in a room here."""
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
            if event.member in room.remote and not self._is_large(room):
                typing: Event = ("chat-typing", {"username": event.name, "room": room.name})
                self._fan_out(room.groups.items(), typing)
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
        if self._is_large(room):
            room.changes.join(name)
            self._schedule_presence(room)
        else:
            event: Event = ("chat-join", self._presence_payload(name, room.name, user or None))
            self._to_room(room, event)

    def _remote_left(self, room: Room, member: str) -> None:
        name = room.remote.pop(member, None)
        if name is None:
            return
        user = room.identified.get(name)
        if not room.went(name):
            return  # the same user is still here through another connection
        if self._is_large(room):
            room.changes.leave(name)
            self._schedule_presence(room)
        else:
            self._flush_presence(room)
            event: Event = ("chat-leave", self._presence_payload(name, room.name, user))
            self._to_room(room, event)

    def _remote_renamed(self, room: Room, event: Presence) -> None:
        old = room.remote.get(event.member)
        if old is None:
            return
        new = event.name
        room.remote[event.member] = new
        room.roster.rename(old, new)
        if self._is_large(room):
            room.changes.rename(old, new)
            self._schedule_presence(room)
            return
        # Each member here hears of it once: through the first of the
        # renamed member's rooms that it is in too.
        audience: dict[Dialect, list[Member]] = {}
        for session in room.sessions:
            first = next((r for r in event.rooms if r in session.rooms), None)
            if first == room.name:
                audience.setdefault(session.member.dialect, []).append(session.member)
        nick: Event = ("chat-nick", {"old": old, "new": new, "rooms": list(event.rooms)})
        self._fan_out(audience.items(), nick)

    def _users(self, room: Room, after: str | None = None) -> dict[str, Any]:
        if after is None and not self._is_large(room):
            return room.users(limit=room.count())  # a small room: everybody
        return room.users(after)

    def _schedule_presence(self, room: Room) -> None:
        if room.flush is None:
            room.flush = self.clock.callLater(self.presence_interval, self._flush_presence, room)

    def _flush_presence(self, room: Room) -> None:
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
        self._to_room(room, ("chat-presence", payload))

    def _read_history(
        self, up_to: int, room: Room, since: int | None, dialect: Dialect
    ) -> Deferred[Any]:
        """A joiner's ``chat-history`` up to id `up_to`, encoded once for all who ask the same.

        A reconnect storm asks for the same history thousands of times: the
        framed (and, for compressing members, compressed) event is kept until
        the room's next message.

        Returns:
            ``(frame, size, cut)``, or ``(event, cut)`` for a dialect that shows
            history line by line; ``cut`` is the last id it holds (or `up_to`).
        """
        key = (since, up_to, dialect)
        cached = room.history_frames.get(key)
        if cached is not None:
            return succeed(cached)
        return self._find_history(room, since, up_to).addCallback(self._encode_history, room, key)

    def _find_history(
        self, room: Room, since: int | None, up_to: int
    ) -> Deferred[tuple[list[StoredMessage], bool]]:
        """Read a history, once for every joiner that asks the same while it is read."""
        key = (since, up_to)
        waiters = room.reads.get(key)
        if waiters is not None:
            waiter: Deferred[tuple[list[StoredMessage], bool]] = Deferred()
            waiters.append(waiter)
            return waiter
        waiters = room.reads[key] = []
        found: Deferred[tuple[list[StoredMessage], bool]]
        if since is None:
            found = self.backplane.recent(room.name, JOIN_HISTORY, up_to=up_to).addCallback(
                lambda messages: (messages, False)
            )
        else:
            # Up to `up_to` too: later ones come live (with Redis, the stream
            # may hold some this instance has not passed on yet).
            found = self.backplane.since(room.name, since, JOIN_HISTORY).addCallback(
                lambda found: ([m for m in found[0] if m.id <= up_to], found[1])
            )

        def read(result: Any) -> Any:
            if room.reads.get(key) is waiters:
                del room.reads[key]
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            return result

        return found.addBoth(read)

    def _encode_history(
        self, found: tuple[list[StoredMessage], bool], room: Room, key: tuple[Any, int, Dialect]
    ) -> Any:
        cached = room.history_frames.get(key)
        if cached is not None:  # encoded for another joiner of the same read
            return cached
        messages, recovered = found
        since, up_to, dialect = key
        cut = max(up_to, messages[-1].id if messages else 0)
        if recovered and since is not None:
            cut = max(cut, since)  # the client has seen everything up to `since`
        event: Event = (
            "chat-history",
            {
                "room": room.name,
                "messages": [m.payload() for m in messages],
                "recovered": recovered,
            },
        )
        data = dialect.encode(event)
        if data is None:  # a dialect that shows history line by line
            return (event, cut)
        if len(room.history_frames) >= HISTORY_FRAMES:
            room.history_frames.clear()
        framed = room.history_frames[key] = (self.prepare(data), len(data), cut)
        return framed

    def _send_history(self, member: Member, history: Any) -> int:
        """Send what `_read_history` gave; returns its ``cut``."""
        if len(history) == 2:
            event, cut = history
            member.send_event(event)
            return int(cut)
        frame, size, cut = history
        member.deliver(frame)
        self.stats.messages_sent += 1
        self.stats.bytes_sent += size
        return int(cut)

    # Fan-out.

    def _to_room(self, room: Room, event: Event) -> int:
        return self._fan_out(room.groups.items(), event)

    def _fan_out(
        self,
        groups: Iterable[tuple[Dialect, Iterable[Member]]],
        event: Event,
        exclude: Member | None = None,
    ) -> int:
        """Encode and frame `event` once per dialect; the same frame to every member.

        Counted once per dialect, not per member: ``n`` deliveries of ``len(data)``.
        """
        sent = 0
        sent_bytes = 0
        # Snapshots: a delivery may close a slow member, which leaves its rooms.
        for dialect, members in tuple(groups):
            data = dialect.encode(event)
            if data is None:
                continue
            frame = self.prepare(data)
            before = sent
            for member in tuple(members):
                if member is not exclude:
                    member.deliver(frame)
                    sent += 1
            sent_bytes += (sent - before) * len(data)
        stats = self.stats
        stats.messages_sent += sent
        stats.bytes_sent += sent_bytes
        return sent

    def _now(self) -> str:
        return iso_time(self.seconds())
