"""Orders as JSON, at the SQLite and Redis edge: the one place that knows their shape.

Kept orders live in SQLite's ``orders`` table and Redis's ``orders`` hash, and
orders travel between instances over Redis, as JSON objects with a ``kind``::

    {"kind": "kick"|"ban"|"mute", "name", "user", "room", "until", "by", "reason"}
    {"kind": "direct", "user", "room", "with"}
    {"kind": "displace", "name"}

The shapes stay as they are: a database or a Redis written by an earlier
version, and instances of an earlier version during a rolling upgrade, keep
working.
"""

from __future__ import annotations

import json
from typing import Any

from chatservice.backplane.values import (
    ORDERED_ACTIONS,
    DirectOrder,
    Displacement,
    KnownOrder,
    ModerationOrder,
    Order,
    UnknownOrder,
)


def order_fields(order: KnownOrder) -> dict[str, Any]:
    """`order` as a JSON-able object."""
    if isinstance(order, ModerationOrder):
        return {
            "kind": order.action,
            "name": order.name,
            "user": order.user,
            "room": order.room,
            "until": order.until,
            "by": order.by,
            "reason": order.reason,
        }
    if isinstance(order, DirectOrder):
        return {"kind": "direct", "user": order.user, "room": order.room, "with": order.other}
    return {"kind": "displace", "name": order.name}


def order_json(order: KnownOrder) -> str:
    """`order` as compact JSON text (as Redis has it)."""
    return json.dumps(order_fields(order), ensure_ascii=False, separators=(",", ":"))


def parse_order(fields: object, replayed: bool = False) -> Order:
    """The order a decoded JSON object describes (`UnknownOrder` if none this version knows).

    Args:
        fields: The decoded JSON.
        replayed: Whether it is a kept order handed on again (see `ModerationOrder`).
    """
    if not isinstance(fields, dict):
        return UnknownOrder(None, malformed=True)
    kind = fields.get("kind")
    try:
        if kind in ORDERED_ACTIONS:
            until = fields.get("until")
            room = fields.get("room")
            user = fields.get("user")
            return ModerationOrder(
                action=kind,
                name=str(fields["name"]),
                user=None if user is None else str(user),
                room=None if room is None else str(room),
                until=None if until is None else float(until),
                by=str(fields.get("by", "?")),
                reason=str(fields.get("reason") or ""),
                replayed=replayed,
            )
        if kind == "direct":
            return DirectOrder(str(fields["user"]), str(fields["room"]), str(fields["with"]))
        if kind == "displace":
            return Displacement(str(fields["name"]))
    except (KeyError, TypeError, ValueError):
        return UnknownOrder(str(kind), malformed=True)
    return UnknownOrder(None if kind is None else str(kind))


def ended(fields: object, now: float) -> bool:
    """Whether a kept order (decoded JSON, of any kind) is over at `now`: its ``until`` passed."""
    until = fields.get("until") if isinstance(fields, dict) else None
    try:
        return float(until or 0) <= now
    except (TypeError, ValueError):
        return True
