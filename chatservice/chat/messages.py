"""The chat wire format: parse client frames into commands, encode events.

Specified in docs/protocol.md ("/chat"); no I/O and no Twisted here.
"""

from __future__ import annotations

import datetime
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

MAX_USERNAME_LENGTH = 32
MAX_ROOM_LENGTH = 64
DEFAULT_ROOM = "lobby"

_ROOM = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_ROOM_LENGTH}}}")

#: An event the server sends: its type and payload.
Event = tuple[str, dict[str, Any]]


class ProtocolError(Exception):
    """Bad input from a client; becomes a ``chat-error`` and the connection stays open.

    Args:
        code: The machine-readable error code (docs/protocol.md lists them).
        reason: What is wrong, for people.
        type: The type of the frame that caused it, when known.
        about: What it was about, when a client may have several such frames
            in flight (``{"room": ...}`` or ``{"with": ...}`` of a refused join).
    """

    def __init__(
        self, code: str, reason: str, type: str | None = None, about: dict[str, Any] | None = None
    ) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.type = type
        self.about = about

    def event(self) -> Event:
        """The ``chat-error`` event telling the client."""
        payload: dict[str, Any] = {"code": self.code, "reason": self.reason}
        if self.type is not None:
            payload["type"] = self.type
        if self.about:
            payload.update(self.about)
        return ("chat-error", payload)


def iso_time(seconds: float) -> str:
    """ISO 8601 UTC with milliseconds, as every wire ``time``: ``2026-11-22T04:02:02.123Z``."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# Commands, client to server.  Each knows the type of the frame it came in
# (`frame_type`), which errors about it name.


@dataclass(frozen=True, slots=True)
class Join:
    """``chat-join`` (text: ``/join``): enter `room`; the first one names the client."""

    frame_type: ClassVar[str] = "chat-join"
    room: str
    username: str | None = None
    since: int | None = None


@dataclass(frozen=True, slots=True)
class Say:
    """``chat-message`` (text: any line): say `message` in `room` (the current room if None)."""

    frame_type: ClassVar[str] = "chat-message"
    message: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Leave:
    """``chat-leave`` (text: ``/leave``): leave `room` (the current room if None)."""

    frame_type: ClassVar[str] = "chat-leave"
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Typing:
    """``chat-typing``: tell `room` (the current room if None) the client is typing."""

    frame_type: ClassVar[str] = "chat-typing"
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Nick:
    """``chat-nick`` (text: ``/nick``): the client is called `username` from now on."""

    frame_type: ClassVar[str] = "chat-nick"
    username: str


@dataclass(frozen=True, slots=True)
class Users:
    """A page of a room's member names (text dialect: ``/who``)."""

    frame_type: ClassVar[str] = "chat-users"

    room: str | None = None
    after: str | None = None


@dataclass(frozen=True, slots=True)
class Help:
    """Text dialect: list the commands."""

    frame_type: ClassVar[str] = "chat-help"


@dataclass(frozen=True, slots=True)
class Authenticate:
    """``chat-auth``: a signed token saying who the client is."""

    frame_type: ClassVar[str] = "chat-auth"

    token: str


@dataclass(frozen=True, slots=True)
class Direct:
    """``chat-join`` with ``with``: the direct conversation with another user."""

    frame_type: ClassVar[str] = "chat-join"

    username: str
    since: int | None = None


@dataclass(frozen=True, slots=True)
class Moderate:
    """``chat-kick``, ``chat-ban``, ``chat-mute`` (moderators only).

    Attributes:
        action: ``kick``, ``ban`` or ``mute``.
        duration: Seconds (0 lifts a ban or mute); None for the default.
    """

    action: str
    username: str
    room: str | None = None
    duration: float | None = None
    reason: str = ""

    @property
    def frame_type(self) -> str:
        """``chat-kick``, ``chat-ban`` or ``chat-mute``."""
        return f"chat-{self.action}"


@dataclass(frozen=True, slots=True)
class Delete:
    """``chat-delete``: remove a message from a room and its history (moderators only)."""

    frame_type: ClassVar[str] = "chat-delete"

    room: str
    id: int


Command = (
    Join | Say | Leave | Typing | Nick | Users | Help | Authenticate | Direct | Moderate | Delete
)

#: Longest token accepted, in characters.
MAX_TOKEN_LENGTH = 8192
#: Longest moderation reason kept, in characters.
MAX_REASON_LENGTH = 200


def clean_username(value: object, type: str | None = None) -> str:
    """A username as the server keeps it: trimmed, 1-32 characters, no control characters.

    Raises:
        ProtocolError: ``bad-username``.
    """
    if not isinstance(value, str):
        raise ProtocolError("bad-username", "username must be a string", type)
    name = value.strip()
    if not 1 <= len(name) <= MAX_USERNAME_LENGTH:
        raise ProtocolError(
            "bad-username", f"username must be 1-{MAX_USERNAME_LENGTH} characters", type
        )
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise ProtocolError("bad-username", "username must not contain control characters", type)
    return name


def check_room(value: object, type: str | None = None) -> str:
    """A room name: 1-64 of letters, digits, ``-``, ``_``, ``.``.

    Raises:
        ProtocolError: ``bad-room``.
    """
    if not isinstance(value, str) or not _ROOM.fullmatch(value):
        raise ProtocolError(
            "bad-room", f"room names are 1-{MAX_ROOM_LENGTH} of letters, digits, '-_.'", type
        )
    return value


def _optional_room(payload: dict[str, Any], type: str) -> str | None:
    room = payload.get("room")
    return None if room is None else check_room(room, type)


def _since(payload: dict[str, Any], kind: str) -> int | None:
    since = payload.get("since")
    if since is not None and (type(since) is not int or since < 0):
        raise ProtocolError("bad-payload", "since must be a message id", kind)
    return since


def parse_token(value: object, kind: str = "chat-auth") -> Authenticate:
    """A ``chat-auth`` token: a non-empty string.

    Raises:
        ProtocolError: ``bad-payload``.
    """
    if not isinstance(value, str) or not 0 < len(value.strip()) <= MAX_TOKEN_LENGTH:
        raise ProtocolError(
            "bad-payload", f"token must be a string of 1-{MAX_TOKEN_LENGTH} characters", kind
        )
    return Authenticate(value.strip())


def parse_moderation(kind: str, payload: dict[str, Any]) -> Moderate:
    """A ``chat-kick``/``chat-ban``/``chat-mute`` payload (also the HTTP API's bodies).

    Raises:
        ProtocolError: ``bad-payload``, ``bad-room``, ``bad-username``.
    """
    action = kind.removeprefix("chat-")
    username = clean_username(payload.get("username"), kind)
    room = None if action == "kick" else _optional_room(payload, kind)
    duration = payload.get("duration")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0
    ):
        raise ProtocolError("bad-payload", "duration must be a number of seconds", kind)
    reason = payload.get("reason", "")
    if not isinstance(reason, str):
        raise ProtocolError("bad-payload", "reason must be a string", kind)
    return Moderate(
        action,
        username,
        room,
        None if duration is None else float(duration),
        reason.strip()[:MAX_REASON_LENGTH],
    )


def parse_json(data: bytes) -> Command:
    """Parse one JSON-dialect frame.

    Raises:
        ProtocolError: ``bad-json``, ``bad-type``, ``bad-payload``, ``bad-room``,
            ``bad-username``.
    """
    try:
        frame = json.loads(data)
    except (ValueError, RecursionError):
        raise ProtocolError("bad-json", "frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise ProtocolError("bad-json", 'frame must be an object {"type": ..., "payload": ...}')
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad-type", "frame has no string 'type'")
    payload = frame.get("payload", {})
    if not isinstance(payload, dict):
        raise ProtocolError("bad-payload", "payload must be an object", kind)

    if kind == "chat-join":
        since = _since(payload, kind)
        if "with" in payload:
            return Direct(clean_username(payload["with"], kind), since)
        room = payload.get("room", DEFAULT_ROOM)
        username = payload.get("username")
        return Join(
            room=check_room(room, kind),
            username=None if username is None else clean_username(username, kind),
            since=since,
        )
    if kind == "chat-message":
        message = payload.get("message")
        if not isinstance(message, str):
            raise ProtocolError("bad-payload", "message must be a string", kind)
        return Say(message=message, room=_optional_room(payload, kind))
    if kind == "chat-leave":
        return Leave(room=_optional_room(payload, kind))
    if kind == "chat-typing":
        return Typing(room=_optional_room(payload, kind))
    if kind == "chat-nick":
        return Nick(username=clean_username(payload.get("username"), kind))
    if kind == "chat-users":
        after = payload.get("after")
        if after is not None and not isinstance(after, str):
            raise ProtocolError("bad-payload", "after must be a username", kind)
        return Users(room=_optional_room(payload, kind), after=after)
    if kind == "chat-auth":
        return parse_token(payload.get("token"))
    if kind in ("chat-kick", "chat-ban", "chat-mute"):
        return parse_moderation(kind, payload)
    if kind == "chat-delete":
        message_id = payload.get("id")
        if type(message_id) is not int or not 0 < message_id < 2**63:
            raise ProtocolError("bad-payload", "id must be a message id", kind)
        return Delete(check_room(payload.get("room"), kind), message_id)
    raise ProtocolError("bad-type", f"unknown type {kind[:40]!r}", kind[:40])


def parse_text(line: str) -> Command:
    """Parse one text-dialect line.

    Raises:
        ProtocolError: for a command with a bad argument or an unknown command.
    """
    line = line.strip("\r\n")
    if not line.startswith("/"):
        return Say(message=line)
    command, _, argument = line[1:].partition(" ")
    argument = argument.strip()
    command = command.lower()
    if command == "nick":
        return Nick(username=clean_username(argument, "nick"))
    if command == "join":
        return Join(room=check_room(argument.lstrip("#"), "join"))
    if command == "leave":
        return Leave()
    if command == "who":
        return Users()
    if command == "help":
        return Help()
    if command == "auth":
        return parse_token(argument, "auth")
    raise ProtocolError("bad-type", f"unknown command /{command[:20]}; try /help")


# Encoding, server to client.


def encode_json(event: Event) -> bytes:
    """One JSON-dialect frame for `event`."""
    kind, payload = event
    return json.dumps(
        {"type": kind, "payload": payload}, ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")


TEXT_HELP = (
    "Commands: /nick NAME, /join ROOM, /leave, /who, /help. "
    "Anything else is a message to your current room."
)


def _line(kind: str, p: dict[str, Any]) -> str | None:
    if kind == "chat-message":
        return f"[{p['room']}] {p['username']}: {p['message']}"
    if kind == "chat-join":
        return f"* {p['username']} joined #{p['room']}"
    if kind == "chat-leave":
        return f"* {p['username']} left #{p['room']}"
    if kind == "chat-nick":
        return f"* {p['old']} is now known as {p['new']}"
    if kind == "chat-notice":
        return f"*** {p['message']}"
    if kind == "chat-error":
        return f"! {p['reason']}"
    if kind == "chat-users":
        count, users = p["count"], p["users"]
        if count > len(users):
            return f"* Users in #{p['room']} ({count}, first {len(users)}): {', '.join(users)}"
        return f"* Users in #{p['room']}: {', '.join(users)}"
    if kind == "chat-presence":
        return _presence_line(p)
    if kind == "chat-info":  # text dialect only: answers to /help
        return f"* {p['message']}"
    if kind == "chat-authenticated":
        return f"* You are {p['username']} (identified)"
    if kind == "chat-delete":
        return f"* a message in #{p['room']} was deleted by {p['by']}"
    if kind == "chat-moderated":
        return f"* done: {p['action']} {p.get('username', p.get('id'))}"
    return None


def _names(names: list[str], total: int) -> str:
    more = total - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def _presence_line(p: dict[str, Any]) -> str:
    parts = [f"* #{p['room']}: {p['count']} here"]
    if p["joins"]:
        parts.append(f"joined: {_names(p['joined'], p['joins'])}")
    if p["leaves"]:
        parts.append(f"left: {_names(p['left'], p['leaves'])}")
    if p["renamed"]:
        parts.append("renamed: " + ", ".join(f"{r['old']} -> {r['new']}" for r in p["renamed"]))
    return "; ".join(parts)


def text_lines(event: Event) -> list[str]:
    """The text-dialect lines for `event`, one frame each; none for typing."""
    kind, payload = event
    if kind == "chat-history":
        lines = [_line("chat-message", m) for m in payload["messages"]]
        return [line for line in lines if line is not None]
    if kind == "chat-welcome":
        return [f"* Welcome to {payload['server']}. {payload['motd']}".rstrip(), f"* {TEXT_HELP}"]
    line = _line(kind, payload)
    return [] if line is None else [line]


def encode_text(event: Event) -> bytes | None:
    """One text-dialect frame for a broadcast `event`, or None if not shown."""
    line = _line(*event)
    return None if line is None else line.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one kind of client sees broadcast events.

    Attributes:
        name: ``json`` or ``text``.
        encode: One frame for a broadcast event, or None if this dialect
            does not show it.
    """

    name: str
    encode: Callable[[Event], bytes | None]


JSON = Dialect("json", encode_json)
TEXT = Dialect("text", encode_text)
