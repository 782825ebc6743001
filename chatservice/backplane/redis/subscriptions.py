"""The channels this instance hears: watched rooms, and the fixed ones (notices).

A watched room's messages reach the registered events once and in id order,
across reconnections of the subscriber connection: its position is counted
by id (`_Watch.last`), and after a reconnection the room's stream is read
from there (backfill) while live messages wait (see the package's
docstring).  Presence events are not kept: after a backfill, a ``members``
event tells who is there now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from chatservice import logs
from chatservice.backplane.redis import codec, scripts
from chatservice.backplane.redis.connection import RedisConnection
from chatservice.backplane.redis.keys import Keys
from chatservice.backplane.roles import BackplaneEvents
from chatservice.backplane.values import Deletion, Presence, StoredMessage, Unavailable, Watched

_log = logs.logger("chatservice.redis_backplane")


class _Watch:
    """A watched room: the last id passed on, and what waits for a backfill."""

    __slots__ = ("callers", "channel", "last", "waiting")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        #: The last id passed on (or the position); None until known.
        self.last: int | None = None
        #: What came live while the position or a backfill was read, else None.
        self.waiting: list[StoredMessage | Presence | Deletion] | None = None
        #: Who waits for the position.
        self.callers: list[Deferred[Watched]] = []


class Subscriptions:
    """The watched rooms: each one's messages once and in id order, and its presence.

    Hands what it hears to `events` (the hub's; nothing is handed on while
    None).  It subscribes again, and backfills, whenever the subscriber
    connection comes back: the owner tells it (`subscriber_up` and the like).

    Args:
        connection: The connection to Redis.
        keys: The deployment's key and channel names.
        instance: This instance's id (its own presence events are not handed on).
        keep: How many messages of each room are kept (``--history``), for logs.
    """

    def __init__(self, connection: RedisConnection, keys: Keys, instance: str, keep: int) -> None:
        self._connection = connection
        self._keys = keys
        self._instance = instance
        self._keep = keep
        #: Where what is heard goes.
        self.events: BackplaneEvents | None = None
        self._watches: dict[str, _Watch] = {}
        self._by_channel: dict[str, str] = {}
        #: Channels heard on every subscriber connection, not rooms: their handlers.
        self._fixed: dict[str, Callable[[Any], object]] = {}

    def listen(self, channel: str, handler: Callable[[Any], object]) -> None:
        """Hear `channel` on every subscriber connection; hand `handler` each payload."""
        self._fixed[channel] = handler
        if self._connection.subscribed:
            self._connection.subscribe(channel).addErrback(self._subscribe_failed)

    # -- the subscriber connection comes and goes ------------------------------

    def subscriber_up(self) -> None:
        """Subscribe (again) to every channel; the rooms backfill once subscribed."""
        conn = self._connection
        for channel in self._fixed:
            conn.subscribe(channel).addErrback(self._subscribe_failed)
        for room, watch in list(self._watches.items()):
            if watch.last is None:
                continue  # its watch() failed with the last connection
            # One channel per SUBSCRIBE: each has its own confirmation.
            watch.waiting = []
            d = conn.subscribe(watch.channel)
            d.addCallbacks(self._subscribed, self._subscribe_failed, callbackArgs=(room, watch))

    def subscriber_down(self) -> None:
        """The subscriptions are gone: what comes next waits for a backfill."""
        for watch in self._watches.values():
            watch.waiting = None  # the next connection backfills from `last`

    def commands_up(self) -> None:
        """Start again the backfills that failed while only the subscriber was back."""
        if self._connection.subscribed:
            for room, watch in list(self._watches.items()):
                if watch.last is not None and watch.waiting is not None:
                    self._backfill(room, watch)

    def _subscribed(self, _: object, room: str, watch: _Watch) -> None:
        if self._watches.get(room) is watch:
            self._backfill(room, watch)

    def _subscribe_failed(self, failure: Failure) -> None:
        # The connection went again: the next one subscribes.
        _log.warn("redis subscribe failed: {why}", why=failure.getErrorMessage())

    # -- watching rooms ----------------------------------------------------

    def watch(self, room: str) -> Deferred[Watched]:
        """Pass on `room`'s messages and presence from now on; fires with the position.

        Fails with `Unavailable` if Redis cannot be reached (then `room` is not watched).
        """
        watch = self._watches.get(room)
        if not self._connection.subscribed:
            return defer.fail(self._connection.unreachable())
        if watch is not None and watch.last is not None:
            last = watch.last
            d = self._connection.command(
                "eval", scripts.WATCH, [self._keys.marks(room), self._keys.members(room)]
            )
            return d.addCallback(lambda reply: codec.watched(last, reply[1], self._instance))
        caller: Deferred[Watched] = Deferred()
        if watch is None:
            watch = self._watches[room] = _Watch(self._keys.channel(room))
            self._by_channel[watch.channel] = room
            watch.callers.append(caller)
            self._locate(room, watch)
        else:
            watch.callers.append(caller)  # its position is on the way
        return caller

    def _locate(self, room: str, watch: _Watch) -> None:
        """Subscribe, then read the position: what is published after it comes live."""
        watch.waiting = []
        d = self._connection.subscribe(watch.channel)
        keys = [self._keys.marks(room), self._keys.members(room)]
        d.addCallback(lambda _: self._connection.command("eval", scripts.WATCH, keys))

        def positioned(reply: list[Any]) -> None:
            if self._watches.get(room) is not watch:
                return
            position = codec.watched(int(reply[0]), reply[1], self._instance)
            watch.last = position.position
            # The members then, and what came since (joins and leaves again
            # of members already counted are harmless).
            callers, watch.callers = watch.callers, []
            for caller in callers:
                caller.callback(position)
            self._release(room, watch)

        def failed(failure: Failure) -> None:
            if self._watches.get(room) is not watch:
                return
            self.unwatch(room)
            why = failure.value if failure.check(Unavailable) else None
            error = why or Unavailable(f"Redis did not answer: {failure.getErrorMessage()}")
            callers, watch.callers = watch.callers, []
            for caller in callers:
                caller.errback(error)

        d.addCallbacks(positioned, failed)

    def unwatch(self, room: str) -> None:
        """Stop passing on `room`'s messages (and hearing its channel)."""
        watch = self._watches.pop(room, None)
        if watch is None:
            return
        del self._by_channel[watch.channel]
        self._connection.unsubscribe(watch.channel)

    def published(self, channel: Any, payload: Any) -> None:
        """Something came on a subscribed channel: hand it on, or hold it while a room backfills."""
        if isinstance(channel, bytes):
            channel = channel.decode()
        handler = self._fixed.get(channel)
        if handler is not None:
            handler(payload)
            return
        room = self._by_channel.get(channel)
        if room is None:
            return  # unwatched meanwhile
        watch = self._watches[room]
        try:
            item = codec.room_item(payload, self._instance)
        except (ValueError, KeyError, TypeError):
            _log.warn(
                "redis: ignored what is not an event on {channel}: {payload!r}",
                channel=channel,
                payload=payload[:200],
            )
            return
        if item is None:
            return  # our own: the hub knows
        if watch.waiting is not None:
            watch.waiting.append(item)
        else:
            self._pass_on(watch, item)

    def _pass_on(self, watch: _Watch, message: StoredMessage | Presence | Deletion) -> None:
        events = self.events
        if isinstance(message, Presence):
            if events is not None:
                events.on_presence(message)
            return
        if isinstance(message, Deletion):
            if events is not None:
                events.on_deletion(message)
            return
        if watch.last is not None and message.id <= watch.last:
            return  # had it already (a backfill overlapping the live messages)
        watch.last = message.id
        if events is not None:
            events.on_message(message)

    def _release(self, room: str, watch: _Watch) -> None:
        """Pass on the live messages that waited for a position or backfill."""
        waiting, watch.waiting = watch.waiting or [], None
        for message in waiting:
            if self._watches.get(room) is not watch:
                return
            self._pass_on(watch, message)

    def _backfill(self, room: str, watch: _Watch) -> None:
        """After a reconnect: what the stream kept after `watch.last`, then the waiting."""
        last = watch.last
        assert last is not None
        keys = [self._keys.log(room), self._keys.marks(room), self._keys.members(room)]
        d = self._connection.command("eval", scripts.BACKFILL, keys, [last])

        def read(reply: list[Any]) -> None:
            if self._watches.get(room) is not watch or watch.waiting is None:
                return
            newest, pruned, entries = int(reply[0]), int(reply[1]), codec.entries(reply[2])
            if newest < last:
                # Redis lost its data (restarted without persistence): its ids
                # start again, and they must not be taken for old ones.
                _log.warn(
                    "redis forgot room={room}: its newest id is {newest}, "
                    "{last} was passed on; see README, Scaling out",
                    room=room,
                    newest=newest,
                    last=last,
                )
                watch.last = 0
            elif pruned > last:
                _log.warn(
                    "redis backfill room={room}: messages after {last} up to {pruned} "
                    "were no longer kept (--history {keep}); its members missed them",
                    room=room,
                    last=last,
                    pruned=pruned,
                    keep=self._keep,
                )
            elif entries:
                _log.info(
                    "redis backfill room={room} messages={n} after={last}",
                    room=room,
                    n=len(entries),
                    last=last,
                )
            for message in entries:
                self._pass_on(watch, message)
            # Presence events were lost with the connection: who is there now.
            now = codec.watched(0, reply[3], self._instance)
            self._pass_on(watch, Presence("members", room, members=now.members))
            self._release(room, watch)

        def failed(failure: Failure) -> None:
            # Live messages keep waiting; the command connection's return
            # (or the next subscriber connection) starts the backfill again.
            _log.warn(
                "redis backfill room={room} failed: {why}",
                room=room,
                why=failure.getErrorMessage(),
            )

        d.addCallbacks(read, failed)
