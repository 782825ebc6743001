"""The control bus on Redis: announcements and orders between instances, and kept orders.

Announcements and orders travel on the notices channel (`Keys.notices`), as
JSON objects that name the instance they come from (which ignores its own)::

    {"instance": "<id>", "message": "...", "time": "..."}   an announcement
    {"instance": "<id>", "order": {"kind": ...}}            an order

An order's own fields are `chatservice.backplane.codec`'s.  The orders in
force (bans, mutes) are kept in the orders hash, by their key, as the same
JSON, for the instances that start later.
"""

from __future__ import annotations

import json
import time
from typing import Any

from chatservice import logs
from chatservice.backplane.codec import ended, order_fields, order_json, parse_order
from chatservice.backplane.redis import codec
from chatservice.backplane.redis.connection import RedisConnection, quietly
from chatservice.backplane.redis.keys import Keys
from chatservice.backplane.roles import BackplaneEvents
from chatservice.backplane.values import KnownOrder, ModerationOrder, Notice

_log = logs.logger("chatservice.redis_backplane")


class RedisControl:
    """The `ControlBus` role over Redis.

    Hands the other instances' announcements and orders, and the kept orders
    it replays, to `events` (nothing while None).  While Redis cannot be
    reached, announcements and orders are not passed on (a warning says so).

    Args:
        connection: The connection to Redis.
        keys: The deployment's key and channel names.
        instance: This instance's id.
    """

    def __init__(self, connection: RedisConnection, keys: Keys, instance: str) -> None:
        self._connection = connection
        self._keys = keys
        self._instance = instance
        #: Where other instances' announcements and orders go.
        self.events: BackplaneEvents | None = None

    def announce(self, notice: Notice) -> None:
        """Have every other instance tell all its connections `notice`."""
        if not self._connection.ready:
            _log.warn("redis unavailable: the announcement reached this instance only")
            return
        payload = codec.compact(
            {"instance": self._instance, "message": notice.message, "time": notice.time}
        )
        quietly(self._connection.command("publish", self._keys.notices, payload), "announce")

    def order(self, order: KnownOrder) -> None:
        """Hand `order` to every other instance."""
        fields = order_fields(order)
        if not self._connection.ready:
            _log.warn("redis unavailable: {kind} reached this instance only", kind=fields["kind"])
            return
        payload = codec.compact({"instance": self._instance, "order": fields})
        quietly(self._connection.command("publish", self._keys.notices, payload), "order")

    def keep_order(self, order: ModerationOrder) -> None:
        """Keep `order` under its key while it is in force; forget the key once it has ended."""
        key = order.key
        if (order.until or 0) > time.time():
            d = self._connection.command("hset", self._keys.orders, key, order_json(order))
        else:
            d = self._connection.command("hdel", self._keys.orders, key)
        d.addErrback(
            lambda failure: _log.warn(
                "redis: the order {key} could not be kept: {why}",
                key=key,
                why=failure.getErrorMessage(),
            )
        )

    def replay_orders(self) -> None:
        """Hand the kept orders in force to `events`, ``replayed``; forget those that ended.

        Does nothing while Redis cannot be reached: it runs again whenever the
        command connection comes back.
        """
        if not self._connection.ready:
            return  # done when the connection comes

        def replay(kept: dict[Any, Any]) -> None:
            now = time.time()
            for key, body in kept.items():
                try:
                    fields = json.loads(body)
                except ValueError:
                    fields = None
                if ended(fields, now):
                    quietly(self._connection.command("hdel", self._keys.orders, key), "hdel")
                elif self.events is not None:
                    # (One this version does not know is kept: a newer one may.)
                    self.events.on_order(parse_order(fields, replayed=True))

        d = self._connection.command("hgetall", self._keys.orders).addCallback(replay)
        quietly(d, "replay orders")

    def received(self, payload: Any) -> None:
        """What came on the notices channel: another instance's announcement or order."""
        try:
            notice = json.loads(payload)
            if not isinstance(notice, dict):
                raise TypeError("not a JSON object")
            if notice.get("instance") == self._instance or self.events is None:
                return
            if "order" not in notice:
                announced = Notice(str(notice["message"]), str(notice["time"]))
        except (ValueError, KeyError, TypeError):
            _log.warn(
                "redis: ignored what is not a notice or an order: {payload!r}",
                payload=payload[:200],
            )
            return
        if "order" in notice:
            self.events.on_order(parse_order(notice["order"]))
        else:
            self.events.on_notice(announced)
