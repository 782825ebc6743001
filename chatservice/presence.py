"""Who is in a room, for rooms of any size: sorted names in pages, changes gathered.

Plain classes without I/O; the hub (`chatservice.hub`) decides when to use them.
Specified in docs/protocol.md ("Large rooms").
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from heapq import nsmallest
from typing import Any

#: Names in the joiner's ``chat-users`` of a large room, and in one requested page.
USERS_PAGE = 100
#: Names of each kind (joined, left, renamed) one ``chat-presence`` lists at most.
PRESENCE_NAMES = 50


def _key(name: str) -> str:
    return name.casefold()


class Roster:
    """A room's member names, kept sorted case-insensitively.

    Adding or removing a name costs a binary search and a move of the list's
    tail (a C ``memmove``), so a page of names never needs a sort.  Names are
    unique case-insensitively (the hub guarantees it).
    """

    __slots__ = ("_names",)

    def __init__(self) -> None:
        self._names: list[str] = []

    def __len__(self) -> int:
        return len(self._names)

    def add(self, name: str) -> None:
        insort(self._names, name, key=_key)

    def remove(self, name: str) -> None:
        names = self._names
        at = bisect_left(names, _key(name), key=_key)
        if at < len(names) and names[at] == name:
            del names[at]

    def rename(self, old: str, new: str) -> None:
        self.remove(old)
        self.add(new)

    def all(self) -> list[str]:
        return list(self._names)

    def page(self, after: str | None, limit: int) -> tuple[list[str], str | None]:
        """Up to `limit` names sorting after `after` (from the first without it).

        Returns:
            The names, and the cursor for the next page (the last name given),
            or None if no more names follow.
        """
        names = self._names
        start = 0 if after is None else bisect_right(names, _key(after), key=_key)
        end = start + limit
        chunk = names[start:end]
        return chunk, (chunk[-1] if end < len(names) and chunk else None)


class Changes:
    """Joins, leaves and renames in a room since its last ``chat-presence``.

    Joins and leaves are net: a name that joins and leaves again (or leaves
    and comes back) within one interval is in neither list.
    """

    __slots__ = ("joined", "left", "renamed")

    def __init__(self) -> None:
        self.joined: dict[str, None] = {}
        self.left: dict[str, None] = {}
        self.renamed: list[tuple[str, str]] = []

    def __bool__(self) -> bool:
        return bool(self.joined or self.left or self.renamed)

    def join(self, name: str) -> None:
        if name in self.left:
            del self.left[name]
        else:
            self.joined[name] = None

    def leave(self, name: str) -> None:
        if name in self.joined:
            del self.joined[name]
        else:
            self.left[name] = None

    def rename(self, old: str, new: str) -> None:
        if old in self.joined:
            # Joined and renamed within the interval: the others only see the new name.
            del self.joined[old]
            self.join(new)
        else:
            self.renamed.append((old, new))

    def payload(self, room: str, count: int, time: str) -> dict[str, Any]:
        """The ``chat-presence`` payload for these changes; see docs/protocol.md."""
        return {
            "room": room,
            "count": count,
            "joins": len(self.joined),
            "leaves": len(self.left),
            "joined": _first_sorted(self.joined),
            "left": _first_sorted(self.left),
            "renamed": [{"old": o, "new": n} for o, n in self.renamed[:PRESENCE_NAMES]],
            "time": time,
        }


def _first_sorted(names: dict[str, None]) -> list[str]:
    return nsmallest(PRESENCE_NAMES, names, key=_key)
