"""The hub: the chat's facade, which the WebSocket protocol and the HTTP API call.

It keeps the connections (`Session` by `Member`), carries out each client's
commands in the order they came, and dispatches each to the unit that owns
its concern:

- `rooms.RoomPresence`: the rooms, who is in them here and elsewhere, and
  telling them (large rooms gathered);
- `joins.Joins`: joining with history and catching up, leaving, and the
  room messages joiners wait for;
- `histories.JoinHistories`: joiners' histories read and encoded once;
- `names.Names`: guests' names, identified users' names, displacement;
- `signin.SignIn`: tokens, identities, deadlines and expiry;
- `direct.Conversations`: direct conversations of two users;
- `moderators.Moderators`: kicks, bans, mutes and deletions;
- `fanout.FanOut`: one event, framed once, to many connections;
- `gated.Gated`: what waits for the application's decision (proxies).

Nothing here touches a socket or the reactor (timers come from the injected
clock), and nothing waits on a member.  The backplane's events reach the hub
through the one object it registers: the hub itself (`on_message` and the
rest).  Behaviour is specified in docs/protocol.md ("/chat").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
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
)
from chatservice.chat.direct import Conversations
from chatservice.chat.fanout import FanOut
from chatservice.chat.gate import Gate, Handshake
from chatservice.chat.gated import Gated
from chatservice.chat.histories import JoinHistories
from chatservice.chat.identity import OFF, AuthPolicy
from chatservice.chat.joins import Joins
from chatservice.chat.messages import (
    DEFAULT_ROOM,
    TEXT,
    TEXT_HELP,
    Authenticate,
    Command,
    Delete,
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
    iso_time,
)
from chatservice.chat.moderation import Sanctions, sanction_text
from chatservice.chat.moderators import Moderators
from chatservice.chat.names import Names
from chatservice.chat.policy import FloodGuard, TokenBucket
from chatservice.chat.rooms import LARGE_ROOM, PRESENCE_INTERVAL, Room, RoomPresence
from chatservice.chat.session import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY,
    ChatLimits,
    Member,
    Session,
    report,
    unavailable,
)
from chatservice.chat.signin import SignIn
from chatservice.counters import Counters

_log = logs.logger("chatservice.hub")

#: What /help adds with --auth.
TEXT_AUTH_HELP = "/auth TOKEN signs you in with a token."


class Hub:
    """All rooms and connections of one process.

    Args:
        backplane: Where messages are numbered, kept and passed on, names
            claimed, and the other instances told; each unit gets the role
            it needs of it, and the hub registers for its events.
        clock: The reactor, or a `Clock` in tests: the time, and the timers
            of large rooms' presence events and of tokens.
        prepare: Frames an encoded event once for many connections
            (`chatservice.web.frames.TextFrame`; identity in tests).
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
            which rooms are private (`chatservice.chat.identity`); off by default.
        gate: The application's decisions about connections, messages and
            joins (docs/hooks.md); None (the default): nobody is asked.
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
        gate: Gate | None = None,
    ) -> None:
        self.backplane = backplane
        self.auth = auth
        self.stats = stats if stats is not None else Counters()
        self.clock = clock
        self.server = server
        self.motd = motd
        self.limits = limits or ChatLimits()
        #: The open connections.
        self.sessions: dict[Member, Session] = {}
        self.sanctions = Sanctions(clock.seconds)
        self.fanout = FanOut(prepare, self.stats)
        self.presence = RoomPresence(backplane, self.fanout, clock, large_room, presence_interval)
        self.histories = JoinHistories(backplane, prepare, self.stats)
        self.names = Names(backplane, self.sanctions, self.presence, clock)
        self.joins = Joins(
            backplane, self.presence, self.histories, self.names, auth, self.sanctions
        )
        self.conversations = Conversations(self.names, self.joins, backplane, backplane)
        self.signin = SignIn(
            auth,
            clock,
            backplane,
            self.names,
            self.joins,
            self.conversations,
            self.sanctions,
            self.stats,
            self.close,
        )
        self.moderators = Moderators(
            self.names,
            self.sanctions,
            backplane,
            backplane,
            self.joins,
            self.sessions,
            self.close,
            self.stats,
            clock,
            backplane,
        )
        self.gate = gate
        self.gated = None if gate is None else self._gated(gate)
        backplane.register(self)

    def _gated(self, gate: Gate) -> Gated:
        return Gated(
            gate,
            self.signin,
            self.joins,
            self.names,
            self._checked_text,
            self._store,
            lambda room, name, text: self.backplane.store(room, name, text, self._now()),
            self.close,
        )

    @property
    def rooms(self) -> dict[str, Room]:
        """The rooms with members (or joiners) here, by name."""
        return self.presence.rooms

    # Connections.

    def connect(self, member: Member) -> Session:
        """Register a new connection and welcome it."""
        limits = self.limits
        seconds = self.clock.seconds
        session = Session(
            member,
            TokenBucket(limits.rate, limits.burst, seconds),
            FloodGuard(limits.flood_drops, limits.flood_window, seconds),
        )
        self.sessions[member] = session
        welcome: dict[str, Any] = {
            "id": member.conn_id,
            "server": self.server,
            "motd": self.motd,
            "limits": limits.welcome(),
        }
        auth = self.signin.welcome(session)
        if auth is not None:
            welcome["auth"] = auth
        member.send_event(("chat-welcome", welcome))
        return session

    def start(
        self, session: Session, token: str | None = None, handshake: Handshake | None = None
    ) -> None:
        """What a connection does first: the token of its handshake (``?token=``),
        or, for a text client, join the lobby as a guest.

        With a connect proxy (`handshake` given), the application is asked first
        who it is; what the client sends meanwhile waits (`Session.hold`).
        """
        gated = self.gated
        if handshake is not None and gated is not None and gated.gate.identifies:
            session.busy = True
            asking = gated.connect(session, handshake, lambda: self._first(session, token))
            asking.addBoth(self._done, session)
            return
        try:
            if token is not None:
                self.handle(session, Authenticate(token))
            elif session.member.dialect is TEXT and self.auth.mode != "required":
                self.handle(session, Join(DEFAULT_ROOM, self.names.guest_name(session.member)))
        except ProtocolError as error:
            session.member.send_event(error.event())

    def _first(self, session: Session, token: str | None) -> Command | None:
        """What `start` does once the connect proxy answered (as a command)."""
        if token is not None:
            return Authenticate(token)
        if (
            session.member.dialect is TEXT
            and session.identity is None
            and not session.rooms
            and self.auth.mode != "required"
        ):
            return Join(DEFAULT_ROOM, self.names.guest_name(session.member))
        return None

    def disconnect(self, member: Member) -> None:
        """Forget a connection: it leaves its rooms, its name is free.  Idempotent."""
        session = self.sessions.pop(member, None)
        if session is None:
            return
        session.alive = False
        session.cancel_timer()
        for room in list(session.rooms):
            self.joins.leave(session, room, tell_leaver=False)
        self.names.forget(session)

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
        return self.names.guest_name(member)

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
        if session.hold(command):
            return
        waiting = self._carry_out(session, command)
        if waiting is not None:
            # (Done already, it calls _done at once.)
            session.busy = True
            waiting.addBoth(self._done, session)

    def _done(self, result: object, session: Session) -> None:
        """A command that waited is done: carry out what came meanwhile, in order."""
        session.busy = False
        member = session.member
        while (command := session.next_held()) is not None:
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
                return self.signin.authenticate(session, command.token)
            if self.auth.mode == "required" and not isinstance(command, Help):
                raise ProtocolError(
                    "auth-required", "send chat-auth with your token first", command.frame_type
                )
        match command:
            case Say():
                return self._say(session, command)
            case Join():
                if self.gated is not None and self.gated.gate.joins(command.room):
                    return self.gated.join(session, command)
                return self.joins.join(session, command)
            case Typing():
                room = session.joined_room(command.room, "chat-typing")
                self.presence.typing(session, room)
            case Leave():
                room = session.joined_room(command.room, "chat-leave")
                self.joins.leave(session, room, tell_leaver=True)
            case Nick():
                return self._nick(session, command.username)
            case Users():
                room = session.joined_room(command.room, "chat-users")
                users = self.presence.users(self.rooms[room], command.after)
                session.member.send_event(("chat-users", users))
            case Help():
                text = TEXT_HELP if self.auth.mode == "off" else f"{TEXT_HELP} {TEXT_AUTH_HELP}"
                session.member.send_event(("chat-info", {"message": text}))
            case Authenticate():
                return self.signin.authenticate(session, command.token)
            case Direct():
                return self.conversations.open(session, command)
            case Moderate() | Delete():
                self.moderators.command(session, command)
        return None

    def _say(self, session: Session, command: Say) -> Deferred[None] | None:
        room = session.joined_room(command.room, "chat-message")
        text = self._checked_text(command.message)
        if not text:
            return None
        assert session.name is not None  # joined, so named
        if self.sanctions:
            muted = self.sanctions.find("mute", session.keys(), room)
            if muted is not None:
                raise ProtocolError("muted", sanction_text(muted, "muted"), "chat-message")
        if self.gated is not None and self.gated.gate.publishes:
            return self.gated.say(session, room, text)
        stored = self.backplane.store(room, session.name, text, self._now(), session.user())
        stored.addErrback(self._not_stored, session)
        return None

    def _store(self, session: Session, room: str, text: str) -> None:
        """Store a message the application let through (`_say` does the same inline)."""
        assert session.name is not None
        stored = self.backplane.store(room, session.name, text, self._now(), session.user())
        stored.addErrback(self._not_stored, session)

    def _not_stored(self, failure: Any, session: Session) -> None:
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
        if session.alive:
            session.member.send_event(error.event())

    def _nick(self, session: Session, username: str) -> Deferred[None] | None:
        old = session.name
        if session.identity is not None:
            raise ProtocolError("name-fixed", "your name is your token's", "chat-nick")
        if old == username:
            return None
        self.names.hold(session, username, "chat-nick")
        return ensureDeferred(self._rename(session, old, username))

    async def _rename(self, session: Session, old: str | None, new: str) -> None:
        try:
            await self.names.take(session, new, "chat-nick")
            if session.alive and old is not None:  # (named before any join: nobody to tell)
                self.presence.renamed(session, old, new)
        except Exception:
            report(session, Failure())

    def _checked_text(self, message: str) -> str:
        text = message.strip()
        if len(text) > self.limits.max_text_length:
            raise ProtocolError(
                "too-long",
                f"messages are at most {self.limits.max_text_length} characters",
                "chat-message",
            )
        return text

    def _now(self) -> str:
        return iso_time(self.clock.seconds())

    # What the HTTP API does and reads.

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
        if self.gated is not None and self.gated.gate.publishes:
            # Fails also with `chatservice.chat.gate.Refused` or `Dismissed`.
            return ensureDeferred(self.gated.publish(room, username, text))
        return self.backplane.store(room, username, text, self._now())

    def notice(self, message: str) -> int:
        """A server-wide announcement to every connection, on every instance.

        Returns:
            How many connections of this instance got it (the others' deliver
            it to theirs).
        """
        notice = Notice(message, self._now())
        self.backplane.announce(notice)
        return self.on_notice(notice)

    def moderate(self, actor: str, command: Moderate) -> Deferred[dict[str, Any]]:
        """Kick, ban or mute a user on every instance; fires with what was done."""
        return self.moderators.moderate(actor, command)

    def delete_message(self, actor: str, room: str, message_id: int) -> Deferred[dict[str, Any]]:
        """Remove a message from `room` and its history; fires with what was done.

        Raises (through the Deferred):
            ProtocolError: ``no-such-message``.
        """
        return self.moderators.delete_message(actor, room, message_id)

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

    # The backplane's events (`chatservice.backplane.roles.BackplaneEvents`).

    def on_message(self, message: StoredMessage) -> None:
        """A stored message of a room here: to its members (and joiners, later)."""
        self.joins.deliver(message)

    def on_deletion(self, deletion: Deletion) -> None:
        """A message was removed on another instance: the room here hears it."""
        self.joins.deleted(deletion.room, deletion.id, deletion.by)

    def on_presence(self, event: Presence) -> None:
        """A member of another instance did something in a room here."""
        self.presence.on_presence(event)

    def on_notice(self, notice: Notice) -> int:
        """An announcement, to every connection here; returns how many got it."""
        event: Event = ("chat-notice", {"message": notice.message, "time": notice.time})
        return self.fanout.to_all(self.sessions, event)

    def on_order(self, order: Order) -> None:
        """Carry out an order of another instance's (or a kept one) here."""
        if isinstance(order, Displacement):
            self.names.displace_named(order.name)
        elif isinstance(order, DirectOrder):
            self.conversations.told(order)
        elif isinstance(order, ModerationOrder):
            self.moderators.obey(order)
        elif order.malformed:
            _log.warn("ignored a malformed order of kind {kind!r}", kind=order.kind)
        else:
            _log.warn("ignored an order of unknown kind {kind!r}", kind=order.kind)
