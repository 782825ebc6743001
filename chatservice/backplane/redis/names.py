"""The name directory on Redis: who holds which name, over every instance.

The names hash maps a folded name to the member (``<instance>:<connection>``)
that claimed it, or to ``user:<id>`` for good once an identified user did
(the `CLAIM` and `CLAIM_USER` scripts).  Each instance also lists the names
it claimed (`Keys.instance` ``names``), so that the others give them back if
it dies, and remembers them itself, to claim them again after an outage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from chatservice import logs
from chatservice.backplane.redis import codec, scripts
from chatservice.backplane.redis.connection import RedisConnection, quietly
from chatservice.backplane.redis.keys import Keys
from chatservice.backplane.values import Displacement, KnownOrder

_log = logs.logger("chatservice.redis_backplane")


class RedisNames:
    """The `NameDirectory` role over Redis (without `guest_prefix`: the backplane has it).

    Args:
        connection: The connection to Redis.
        keys: The deployment's key and channel names.
        instance: This instance's id.
        order: Hands an order to every other instance (the control bus's).
    """

    def __init__(
        self,
        connection: RedisConnection,
        keys: Keys,
        instance: str,
        order: Callable[[KnownOrder], object],
    ) -> None:
        self._connection = connection
        self._keys = keys
        self._instance = instance
        self._order = order
        #: The names this instance's guests hold, folded -> member, to put back after an outage.
        self._claims: dict[str, str] = {}

    @property
    def held(self) -> bool:
        """Whether connections here hold names (that an outage would make Redis forget)."""
        return bool(self._claims)

    def claim(self, name: str, conn_id: int, user: str | None = None) -> Deferred[bool]:
        """Take `name` (any case) for `conn_id`, or for `user` for good; False if taken.

        A guest that held the name an identified user claims loses it; a guest
        elsewhere is renamed by its instance (a `Displacement` order).
        """
        folded = name.casefold()
        if user is not None:
            owner = f"user:{user}"
            d = self._connection.command(
                "eval", scripts.CLAIM_USER, [self._keys.names], [folded, owner]
            )

            def answered_user(reply: Any) -> bool:
                if isinstance(reply, bytes | str):
                    # A guest (of any instance) had it: its instance renames it.
                    self._order(Displacement(name))
                    return True
                return bool(int(reply))

            return d.addCallback(answered_user)
        member = codec.member_id(self._instance, conn_id)
        keys = [self._keys.names, self._keys.instance(self._instance, "names")]
        d = self._connection.command("eval", scripts.CLAIM, keys, [folded, member])

        def answered(taken: Any) -> bool:
            if int(taken):
                self._claims[folded] = member
                return True
            return False

        return d.addCallback(answered)

    def holder(self, name: str) -> Deferred[str | None]:
        """The user id whose name `name` is, if an identified user claimed it."""
        d = self._connection.command("hget", self._keys.names, name.casefold())

        def answered(holder: Any) -> str | None:
            text = codec.text(holder) if holder is not None else ""
            return text[5:] if text.startswith("user:") else None

        return d.addCallback(answered)

    def release(self, name: str, conn_id: int) -> None:
        """Give back a name `conn_id` claimed (if it still holds it)."""
        folded, member = name.casefold(), codec.member_id(self._instance, conn_id)
        if self._claims.get(folded) == member:
            del self._claims[folded]
        if self._connection.ready:
            d = self._connection.command(
                "eval", scripts.RELEASE, [self._keys.names], [folded, member]
            )
            quietly(d, "release")

    def converse(self, user: str, room: str, other: str) -> None:
        """Remember that user `user` has the direct conversation `room` with `other` (a name)."""
        key = self._keys.directs(user)
        quietly(self._connection.command("hset", key, room, other), "converse")

    def conversations(self, user: str) -> Deferred[dict[str, str]]:
        """User `user`'s direct conversations: room -> the other's name."""
        d = self._connection.command("hgetall", self._keys.directs(user))
        return d.addCallback(lambda kept: {codec.text(r): codec.text(o) for r, o in kept.items()})

    def restore(self) -> None:
        """Claim again the names connections here hold (after an outage, or being reaped)."""
        for folded, member in list(self._claims.items()):
            keys = [self._keys.names, self._keys.instance(self._instance, "names")]
            d = self._connection.command("eval", scripts.CLAIM, keys, [folded, member])

            def checked(taken: Any, folded: str = folded) -> None:
                if not int(taken):
                    _log.warn(
                        "redis: the name {name!r} was taken elsewhere while Redis was away",
                        name=folded,
                    )

            d.addCallback(checked)
            quietly(d, "claim")
