"""The JSON on Redis's wire: messages, room events, and members hashes' values.

A room's channel carries JSON objects: messages (they have an ``id``; the
`STORE` script writes them, with the same text it keeps in the room's
stream) and events (they have an ``event``: ``join``, ``leave``, ``nick``,
``typing``, ``delete``).  A member is ``<instance>:<connection>``; in a
room's members hash its value is its name, or for an identified user the
name, `USER_MARK` and the user id (join events carry that value as their
``name``).

The shapes stay as they are: instances of an earlier version, during a
rolling upgrade, read and write the same.  The notices channel's JSON is
`chatservice.backplane.redis.control`'s; orders' is `chatservice.backplane.codec`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from chatservice.backplane.values import Deletion, Presence, StoredMessage, Watched

#: Between a member's name and user id in a room's members hash.
USER_MARK = "\x1f"


def member_id(instance: str, conn_id: int) -> str:
    """Connection `conn_id` of `instance`, as members hashes and the names hash know it."""
    return f"{instance}:{conn_id}"


def of_instance(member: object, instance: str) -> bool:
    """Whether `member` (``<instance>:<connection>``) is a connection of `instance`."""
    return str(member).startswith(instance + ":")


def text(value: Any) -> str:
    """A reply's bytes (or number) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def pairs(flat: list[Any]) -> dict[str, str]:
    """A hash from HGETALL's flat list."""
    return {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat), 2)}


def compact(fields: dict[str, Any]) -> str:
    """`fields` as compact JSON text (not ASCII-escaped)."""
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


# -- messages ----------------------------------------------------------------


def message_json(room: str, username: str, message: str, time: str, user: str | None) -> str:
    """The ``chat-message`` payload's JSON without ``{`` (the script adds the id)."""
    fields = {"room": room, "username": username, "message": message, "time": time}
    if user is not None:
        fields["user"] = user
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))[1:]


def message(fields: dict[str, Any]) -> StoredMessage:
    """The message a decoded payload describes.

    Raises:
        KeyError, TypeError: It describes none.
    """
    return StoredMessage(
        fields["id"],
        fields["room"],
        fields["username"],
        fields["message"],
        fields["time"],
        fields.get("user"),
    )


def entries(reply: list[Any]) -> list[StoredMessage]:
    """Stream entries ``[id, [b"m", payload]]`` as messages."""
    return [message(json.loads(fields[1])) for _, fields in reply]


# -- room events ---------------------------------------------------------------


def member_value(name: str, user: str | None) -> str:
    """A member's value in a room's members hash: its name, and its user id if any."""
    return name if user is None else f"{name}{USER_MARK}{user}"


def member_name(value: Any) -> str:
    """The name in a members hash's value (without the user mark and id)."""
    return text(value).partition(USER_MARK)[0]


def member_user(value: Any) -> str | None:
    """The user id in a members hash's value, None for a guest."""
    _, mark, user = text(value).partition(USER_MARK)
    return user if mark else None


def watched(position: int, flat: list[Any], instance: str) -> Watched:
    """`position`, and who is in a room on other instances than `instance`.

    Args:
        position: The room's position (see `Watched`).
        flat: The room's members hash, as HGETALL gives it.
        instance: This instance's id: its own members are left out.
    """
    members, users = {}, {}
    for member, value in pairs(flat).items():
        if of_instance(member, instance):
            continue
        name, _, user = value.partition(USER_MARK)
        members[member] = name
        if user:
            users[member] = user
    return Watched(position, members, users)


def presence_json(event: str, room: str, member: str, name: str) -> str:
    """A ``join``, ``leave`` or ``typing`` event (a join's `name` is a `member_value`)."""
    return compact({"event": event, "room": room, "member": member, "name": name})


def nick_json(room: str, member: str, new: str, old: str, rooms: Sequence[str]) -> str:
    """The ``nick`` event of `member`, now `new`, in `room` (one of `rooms`)."""
    return compact(
        {
            "event": "nick",
            "room": room,
            "member": member,
            "name": new,
            "old": old,
            "rooms": list(rooms),
        }
    )


def deletion_json(room: str, member: str, message_id: int, by: str) -> str:
    """The ``delete`` event of message `message_id`, removed by `by` (a name)."""
    return compact(
        {
            "event": "delete",
            "room": room,
            "member": member,
            "id": message_id,
            "name": by,
        }
    )


def _presence(fields: dict[str, Any]) -> Presence | Deletion:
    name, _, user = str(fields.get("name", "")).partition(USER_MARK)
    if fields["event"] == "delete":
        return Deletion(fields["room"], int(fields["id"]), name)
    return Presence(
        kind=fields["event"],
        room=fields["room"],
        member=fields.get("member", ""),
        name=name,
        old=fields.get("old", ""),
        rooms=tuple(fields.get("rooms") or ()),
        user=fields.get("user") or user,
    )


def room_item(payload: bytes | str, instance: str) -> StoredMessage | Presence | Deletion | None:
    """What a room's channel brought; None for an event of `instance`'s own (the hub knows).

    Raises:
        ValueError, KeyError, TypeError: It is neither a message nor an event.
    """
    fields = json.loads(payload)
    if not isinstance(fields, dict):
        raise TypeError("not a JSON object")
    # (Presence events name their "event"; a reaper's come from Lua's
    # cjson, whose keys are in no particular order.)
    if "event" in fields and of_instance(fields.get("member", ""), instance):
        return None  # our own: the hub knows
    return _presence(fields) if "event" in fields else message(fields)
