"""The moderation workflow: kicks, bans, mutes and deletions, ordered here, done everywhere.

A moderator (a token with ``"admin": true``, in the chat; the admin token or
an admin's token, in the HTTP API) orders; the order is carried out here at
once, handed to every other instance, and bans and mutes are kept until they
end so that a restart or an instance started later knows them.  What is in
force is plain state (`chatservice.chat.moderation.Sanctions`).  Every action
is logged with who did it.  Specified in docs/protocol.md ("Moderation").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from chatservice import logs
from chatservice.backplane.outbox import MODERATION
from chatservice.backplane.roles import ControlBus, MessageLog, Outbox
from chatservice.backplane.values import ModerationOrder, Unavailable
from chatservice.chat.joins import Joins
from chatservice.chat.messages import Delete, Moderate, ProtocolError, iso_time
from chatservice.chat.moderation import Sanction, Sanctions, keys_of
from chatservice.chat.names import Names
from chatservice.chat.session import CLOSE_POLICY, Member, Session, report, unavailable
from chatservice.counters import Counters

_log = logs.logger("chatservice.hub")

#: Seconds a ban or mute lasts when the moderator does not say.
DEFAULT_DURATIONS = {"ban": 3600.0, "mute": 600.0}


class Moderators:
    """Carries out moderators' orders: from the chat, the HTTP API and other instances.

    Args:
        names: Finds the user id of a name.
        sanctions: The bans and mutes in force here.
        bus: Hands orders to the other instances, and keeps bans and mutes.
        log: Removes deleted messages.
        joins: Takes banned users out of rooms; tells rooms of deletions.
        sessions: This process's connections.
        close: Forgets and closes a connection (the hub's).
        stats: Where actions are counted.
        clock: The time.
        outbox: Where the application hears of every action (with webhooks;
            a deletion it hears of from the log, as ``message.deleted``).
    """

    def __init__(
        self,
        names: Names,
        sanctions: Sanctions,
        bus: ControlBus,
        log: MessageLog,
        joins: Joins,
        sessions: Mapping[Member, Session],
        close: Callable[[Member, int, str], None],
        stats: Counters,
        clock: IReactorTime,
        outbox: Outbox | None = None,
    ) -> None:
        self.outbox = outbox
        self.names = names
        self.sanctions = sanctions
        self.bus = bus
        self.log = log
        self.joins = joins
        self.sessions = sessions
        self.close = close
        self.stats = stats
        self.clock = clock

    def command(self, session: Session, command: Moderate | Delete) -> None:
        """A moderator's command from the chat (answered with ``chat-moderated``).

        Raises:
            ProtocolError: ``forbidden`` for anybody but a moderator.
        """
        kind = command.frame_type
        identity = session.identity
        if identity is None or not identity.admin:
            raise ProtocolError("forbidden", "only moderators may do that", kind)
        actor = session.name or identity.user
        if isinstance(command, Delete):
            done = self.delete_message(actor, command.room, command.id)
        else:
            done = self.moderate(actor, command)
        ensureDeferred(self._answer(session, kind, done))

    async def _answer(self, session: Session, kind: str, done: Deferred[dict[str, Any]]) -> None:
        try:
            try:
                result = await done
            except Unavailable:
                raise unavailable(kind) from None
            if session.alive:
                session.member.send_event(("chat-moderated", result))
        except Exception:
            report(session, Failure())

    def moderate(self, actor: str, command: Moderate) -> Deferred[dict[str, Any]]:
        """Kick, ban or mute a user, on every instance (the chat and the HTTP API).

        Returns:
            What was done (the ``chat-moderated`` payload), once done here.
        """
        return ensureDeferred(self._moderate(actor, command))

    async def _moderate(self, actor: str, command: Moderate) -> dict[str, Any]:
        action = command.action
        duration = command.duration
        if duration is None:
            duration = DEFAULT_DURATIONS.get(action, 0.0)
        user = await self.names.user_of(command.username)
        until = None if action == "kick" else self.clock.seconds() + duration
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
        self.obey(order)
        self.bus.order(order)
        if until is not None:
            self.bus.keep_order(order)
        result: dict[str, Any] = {"action": action, "username": command.username, "by": actor}
        if command.room is not None:
            result["room"] = command.room
        if until is not None:
            result["until"] = iso_time(until) if duration else None
        if self.outbox is not None:
            told = dict(result, user=user)
            if command.reason:
                told["reason"] = command.reason
            self.outbox.record(MODERATION, told)
        return result

    def delete_message(self, actor: str, room: str, message_id: int) -> Deferred[dict[str, Any]]:
        """Remove a message from `room` and its history; its members see ``chat-delete``.

        Raises (through the Deferred):
            ProtocolError: ``no-such-message``.
        """
        return ensureDeferred(self._delete(actor, room, message_id))

    async def _delete(self, actor: str, room: str, message_id: int) -> dict[str, Any]:
        found = await self.log.delete(room, message_id, actor)
        if not found:
            raise ProtocolError(
                "no-such-message", f"#{room} keeps no message {message_id}", "chat-delete"
            )
        _log.info("moderation: {by} delete {id} room={room}", by=actor, id=message_id, room=room)
        self.stats.moderation["delete"] += 1
        self.joins.deleted(room, message_id, actor)
        return {"action": "delete", "room": room, "id": message_id, "by": actor}

    def obey(self, order: ModerationOrder) -> None:
        """Carry out a kick, ban or mute here (ordered here, elsewhere, or kept from before)."""
        kind = order.action
        targets = keys_of(order.name, order.user)
        room, by, reason, until = order.room, order.by, order.reason, order.until
        if kind != "kick" and until is not None:
            for key in targets:
                self.sanctions.impose(Sanction(kind, key, room, until, by, reason))
        lifted = until is not None and until <= self.clock.seconds()
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
                self.joins.leave(session, room, tell_leaver=True)
            where = (f" from #{room}" if kind == "ban" else f" in #{room}") if room else ""
            if lifted:
                text = f"your {kind}{where} was lifted by {by}"
            else:
                done = "banned" if kind == "ban" else "muted"
                ends = iso_time(until or 0)
                text = f"you were {done}{where} by {by} until {ends}{because}"
            member.send_event(
                ("chat-notice", {"message": text, "time": iso_time(self.clock.seconds())})
            )
