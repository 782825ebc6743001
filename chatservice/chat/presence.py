"""Who is in a room, for rooms of any size: sorted names in pages, changes gathered.

Plain classes without I/O; the hub's room presence (`chatservice.chat.rooms`) decides
when to use them.
Specified in docs/protocol.md ("Large rooms").
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
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
    unique case-insensitively (the hub guarantees it), but one identified
    user may be there several times (two tabs, a phone, other instances): a
    name is listed once, and counted, so that it goes with its last.
    """

    __slots__ = ("_names", "_repeats")

    def __init__(self) -> None:
        self._names: list[str] = []
        #: Names that are here more than once, and how many more times.
        self._repeats: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._names)

    def add(self, name: str) -> bool:
        """Add a name; True if it was not here yet."""
        names = self._names
        at = bisect_left(names, _key(name), key=_key)
        if at < len(names) and names[at] == name:
            self._repeats[name] = self._repeats.get(name, 0) + 1
            return False
        names.insert(at, name)
        return True

    def remove(self, name: str) -> bool:
        """Remove a name once; True if it is gone (its last time here)."""
        repeats = self._repeats.get(name)
        if repeats:
            if repeats == 1:
                del self._repeats[name]
            else:
                self._repeats[name] = repeats - 1
            return False
        names = self._names
        at = bisect_left(names, _key(name), key=_key)
        if at < len(names) and names[at] == name:
            del names[at]
            return True
        return False

    def rename(self, old: str, new: str) -> None:
        """`old` is called `new` now (once)."""
        self.remove(old)
        self.add(new)

    def all(self) -> list[str]:
        """Every name, sorted case-insensitively."""
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
        """`name` joined (cancels a leave of this interval)."""
        if name in self.left:
            del self.left[name]
        else:
            self.joined[name] = None

    def leave(self, name: str) -> None:
        """`name` left (cancels a join of this interval)."""
        if name in self.joined:
            del self.joined[name]
        else:
            self.left[name] = None

    def rename(self, old: str, new: str) -> None:
        """`old` is `new` now: a rename (or `new` joining, if `old` joined in this interval)."""
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
