"""Bans and mutes: who may not do what, where, until when.

A plain class without I/O; the hub's moderation workflow
(`chatservice.chat.moderators`) applies moderators' orders to it, and the hub
asks it before a join, a message or a token is accepted.
Specified in docs/protocol.md ("Moderation").

Targets are keys: ``user:<id>`` for an identified user (whatever name their
next token gives them), ``name:<name, casefolded>`` for a name (a guest's).
A sanction's room is None for the whole service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from chatservice.chat.messages import iso_time

#: What a sanction forbids: ``ban`` (being here), ``mute`` (saying anything).
KINDS = ("ban", "mute")


@dataclass(frozen=True, slots=True)
class Sanction:
    """One ban or mute.

    Attributes:
        kind: ``ban`` or ``mute``.
        target: The key it applies to (``user:<id>`` or ``name:<folded>``).
        room: The room, or None for the whole service.
        until: When it ends (seconds since the epoch).
        by: Who ordered it (a moderator's name, or ``api``).
        reason: Why, for people.
    """

    kind: str
    target: str
    room: str | None
    until: float
    by: str
    reason: str = ""


def sanction_text(sanction: Sanction, what: str) -> str:
    """What the sanctioned user is told: ``you are banned from #room until ... by mod: why``.

    Args:
        sanction: The ban or mute in force.
        what: ``banned`` or ``muted``.
    """
    where = f" from #{sanction.room}" if sanction.room and what == "banned" else ""
    where = f" in #{sanction.room}" if sanction.room and what == "muted" else where
    because = f": {sanction.reason}" if sanction.reason else ""
    return f"you are {what}{where} until {iso_time(sanction.until)} by {sanction.by}{because}"


def keys_of(name: str | None, user: str | None) -> tuple[str, ...]:
    """The keys a connection with this name (and user id) is known by."""
    keys: list[str] = []
    if user is not None:
        keys.append(f"user:{user}")
    if name is not None:
        keys.append(f"name:{name.casefold()}")
    return tuple(keys)


class Sanctions:
    """The bans and mutes in force.

    Args:
        seconds: The time now (the reactor's ``seconds``).
    """

    def __init__(self, seconds: Callable[[], float]) -> None:
        self._seconds = seconds
        self._in_force: dict[tuple[str, str, str | None], Sanction] = {}

    def __len__(self) -> int:
        self._expire()
        return len(self._in_force)

    def __bool__(self) -> bool:
        """Whether any sanction was imposed (and maybe not expired yet): cheap."""
        return bool(self._in_force)

    def impose(self, sanction: Sanction) -> None:
        """Put `sanction` in force (replacing the same kind for the same target and room)."""
        key = (sanction.kind, sanction.target, sanction.room)
        if sanction.until <= self._seconds():
            self._in_force.pop(key, None)  # a duration of 0 lifts it
        else:
            self._in_force[key] = sanction

    def find(self, kind: str, keys: Iterable[str], room: str | None = None) -> Sanction | None:
        """The sanction of `kind` in force for any of `keys` in `room` (or service-wide).

        Without a room, only service-wide ones count.
        """
        now = self._seconds()
        rooms = (None,) if room is None else (None, room)
        for key in keys:
            for where in rooms:
                found = self._in_force.get((kind, key, where))
                if found is not None:
                    if found.until > now:
                        return found
                    del self._in_force[(kind, key, where)]
        return None

    def _expire(self) -> None:
        now = self._seconds()
        for key in [k for k, s in self._in_force.items() if s.until <= now]:
            del self._in_force[key]
