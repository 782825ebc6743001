"""The backplane of several instances: Redis (or Valkey, the same protocol).

The promises are `chatservice.backplane`'s; this is how Redis keeps them.

Keys (``chatservice:`` is the default prefix)::

    chatservice:ids                  INCR counter: message ids, all rooms
    chatservice:rooms                set of the rooms with kept messages
    chatservice:room:<room>:log      stream: the kept messages, entry id "<id>-0"
    chatservice:room:<room>:marks    hash: newest (last id given), pruned (last dropped)
    chatservice:room:<room>          pub/sub channel: the room's messages

One script (`_STORE`) numbers, keeps, trims and publishes a message, so Redis
does all of it or none, and publishes in id order: every instance's
subscriber connection receives a room's messages in that order.  The
instance that stored a message passes it on when its subscription brings it,
like every other instance, not when the script answers.

Pub/sub forgets what a disconnected subscriber missed, so the messages of
watched rooms are counted by id (`_Watch.last`): when the subscriber
connection comes back, each watched room's stream is read from there
(backfill) and messages that come live meanwhile wait, so the listener gets
each message once and in order, as if the connection never dropped (as far
as the stream still keeps them: ``--history``).

Commands go over one connection (Twisted-native txredisapi, with hiredis
parsing; chosen by bench/redis_clients_bench.py), the subscription over a
second; both reconnect by themselves with backoff.  While either is down,
`store` and the reads fail at once with `Unavailable`.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatservice import logs
from chatservice.backplane import Listener, Unavailable
from chatservice.history import JOIN_HISTORY, StoredMessage

_log = Logger(observer=logs.filtered)

DEFAULT_PORT = 6379
#: Seconds a command may take before Redis counts as unavailable.
REPLY_TIMEOUT = 5.0

# KEYS: ids, log, marks, channel, rooms.  ARGV: keep, room, the message's JSON
# object without its opening brace (the script puts the id in front).
_STORE = """
local id = redis.call('INCR', KEYS[1])
local keep = tonumber(ARGV[1])
local payload = '{"id":' .. id .. ',' .. ARGV[3]
redis.call('HSET', KEYS[3], 'newest', id)
if keep > 0 then
  redis.call('XADD', KEYS[2], id .. '-0', 'm', payload)
  redis.call('SADD', KEYS[5], ARGV[2])
  local over = redis.call('XLEN', KEYS[2]) - keep
  if over > 0 then
    local dropped = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', over)
    local last = dropped[#dropped][1]
    redis.call('XTRIM', KEYS[2], 'MAXLEN', keep)
    redis.call('HSET', KEYS[3], 'pruned', string.match(last, '^%d+'))
  end
else
  redis.call('HSET', KEYS[3], 'pruned', id)
end
redis.call('PUBLISH', KEYS[4], payload)
return id
"""

# KEYS: log, marks.  ARGV: since, limit.  Returns {recovered, entries}, as
# `History.since` decides.
_SINCE = """
local marks = redis.call('HMGET', KEYS[2], 'newest', 'pruned')
local newest = tonumber(marks[1]) or 0
local pruned = tonumber(marks[2]) or 0
local since = tonumber(ARGV[1])
if since < 0 or since > newest or since < pruned then
  return {0, redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[2])}
end
return {1, redis.call('XRANGE', KEYS[1], (since + 1) .. '-0', '+')}
"""

# KEYS: log, marks.  ARGV: after.  Returns {newest, pruned, entries after
# `after`}, or all entries if newest < after (Redis lost its data and counts again).
_BACKFILL = """
local marks = redis.call('HMGET', KEYS[2], 'newest', 'pruned')
local newest = tonumber(marks[1]) or 0
local after = tonumber(ARGV[1])
if newest < after then after = 0 end
return {newest, tonumber(marks[2]) or 0, redis.call('XRANGE', KEYS[1], (after + 1) .. '-0', '+')}
"""


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is, from a ``--redis`` URL (see `parse_redis_url`)."""

    host: str = "localhost"
    port: int = DEFAULT_PORT
    path: str | None = None  # a unix socket
    tls: bool = False
    password: str | None = None
    username: str | None = None
    db: int | None = None

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        if self.path is not None:
            return UNIXClientEndpoint(reactor, self.path)
        endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, self.host, self.port)
        if self.tls:
            endpoint = wrapClientTLS(optionsForClientTLS(self.host), endpoint)
        return endpoint

    def __str__(self) -> str:
        """The address without the password, for logs."""
        if self.path is not None:
            where = f"unix://{self.path}"
        else:
            where = f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}"
        return where + (f"/{self.db}" if self.db else "")


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS), ``unix:///path[?db=N]``.

    Raises:
        ValueError: With a one-line reason.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad Redis URL {url!r}: {e}") from None
    scheme = parts.scheme.lower()
    query = urllib.parse.parse_qs(parts.query)
    password = urllib.parse.unquote(parts.password) if parts.password else None
    username = urllib.parse.unquote(parts.username) if parts.username else None
    db_text = query.get("db", [""])[0]
    if scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ValueError(f"bad Redis URL {url!r}: no host")
        db_text = parts.path.strip("/") or db_text
    elif scheme == "unix":
        if not parts.path:
            raise ValueError(f"bad Redis URL {url!r}: no socket path")
    else:
        raise ValueError(f"bad Redis URL {url!r}: use redis://, rediss:// or unix://")
    db: int | None = None
    if db_text:
        if not db_text.isdigit():
            raise ValueError(f"bad Redis URL {url!r}: the database must be a number")
        db = int(db_text)
    if scheme == "unix":
        return RedisAddress(path=parts.path, password=password, username=username, db=db)
    return RedisAddress(
        host=parts.hostname or "localhost",
        port=port or DEFAULT_PORT,
        tls=scheme == "rediss",
        password=password,
        username=username,
        db=db,
    )


def _message_json(room: str, username: str, message: str, time: str) -> str:
    """The ``chat-message`` payload's JSON without ``{`` (the script adds the id)."""
    fields = {"room": room, "username": username, "message": message, "time": time}
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))[1:]


def _parse(payload: bytes | str) -> StoredMessage:
    fields = json.loads(payload)
    return StoredMessage(
        fields["id"], fields["room"], fields["username"], fields["message"], fields["time"]
    )


def _entries(entries: list[Any]) -> list[StoredMessage]:
    """Stream entries ``[id, [b"m", payload]]`` as messages."""
    return [_parse(fields[1]) for _, fields in entries]


class _Watch:
    """A watched room: the last id passed on, and what waits for a backfill."""

    __slots__ = ("callers", "channel", "last", "waiting")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        #: The last id passed on (or the position); None until known.
        self.last: int | None = None
        #: Live messages that came while the position or a backfill was read, else None.
        self.waiting: list[StoredMessage] | None = None
        #: Who waits for the position.
        self.callers: list[Deferred[int]] = []


class _Subscriber(txredisapi.SubscriberProtocol):
    on_message: Callable[[str, bytes], None] | None = None

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        if self.on_message is not None:
            self.on_message(channel, message)


class _Subscriptions(txredisapi.SubscriberFactory):
    """The subscriber connection's factory: tells the backplane when it is up or down."""

    protocol = _Subscriber

    def __init__(self, backplane: RedisBackplane) -> None:
        super().__init__(isLazy=True)
        self.backplane = backplane

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.backplane._subscriber_up(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.backplane._subscriber_down(conn)


class _Commands(txredisapi.RedisFactory):
    """The command connection's factory: tells the backplane when it is up or down."""

    def __init__(self, backplane: RedisBackplane, address: RedisAddress) -> None:
        super().__init__(
            str(address),
            address.db,
            1,
            isLazy=True,
            charset=None,
            password=address.password,
            replyTimeout=REPLY_TIMEOUT,
            # Room names like "123" stay strings.
            convertNumbers=False,
            username=address.username,
        )
        self.backplane = backplane

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.backplane._commands_up()

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.backplane._commands_down()


class RedisBackplane:
    """Rooms shared by every instance on one Redis.

    Args:
        address: Where Redis is.
        keep: How many messages of each room are kept (``--history``).
        reactor: The reactor (connections and their retries).
        prefix: Put before every key and channel name.
    """

    def __init__(
        self, address: RedisAddress, keep: int, reactor: Any, prefix: str = "chatservice:"
    ) -> None:
        self.address = address
        self.keep = keep
        self.reactor = reactor
        self.prefix = prefix
        self.listener: Listener | None = None
        #: Called with None when Redis is reachable again, or with the reason it is not.
        self.on_status: Callable[[str | None], None] | None = None
        self._watches: dict[str, _Watch] = {}
        self._by_channel: dict[str, str] = {}
        self._commands = _Commands(self, address)
        self._subscriptions = _Subscriptions(self)
        for factory in (self._commands, self._subscriptions):
            factory.charset = None
            factory.password = address.password
            factory.username = address.username
            factory.dbid = address.db
        self._subscriber: Any = None
        self._commands_ready = False
        self._problem: str | None = "connecting"

    # -- connecting --------------------------------------------------------

    def start(self) -> None:
        """Connect (and keep reconnecting) both connections."""
        self._commands.startConnecting(self.address.endpoint(self.reactor))
        self._subscriptions.startConnecting(self.address.endpoint(self.reactor))

    def stop(self) -> Deferred[Any]:
        """Close both connections; no more reconnecting."""
        return defer.gatherResults(
            [self._commands.disconnect(), self._subscriptions.disconnect()], consumeErrors=True
        )

    @property
    def problem(self) -> str | None:
        """Why Redis cannot be used now, or None when it can."""
        return self._problem

    def _commands_up(self) -> None:
        self._commands_ready = True
        self._update_status()
        # Backfills that failed while only the subscriber was back.
        if self._subscriber is not None:
            for room, watch in list(self._watches.items()):
                if watch.last is not None and watch.waiting is not None:
                    self._backfill(room, watch)

    def _commands_down(self) -> None:
        self._commands_ready = False
        self._update_status()

    def _subscriber_up(self, conn: Any) -> None:
        self._subscriber = conn
        conn.on_message = self._published
        self._update_status()
        for room, watch in list(self._watches.items()):
            if watch.last is None:
                continue  # its watch() failed with the last connection
            # One channel per SUBSCRIBE: each has its own confirmation.
            watch.waiting = []
            d = conn.subscribe(watch.channel)
            d.addCallbacks(self._subscribed, self._subscribe_failed, callbackArgs=(room, watch))

    def _subscriber_down(self, conn: Any) -> None:
        if self._subscriber is conn:
            self._subscriber = None
        for watch in self._watches.values():
            watch.waiting = None  # the next connection backfills from `last`
        self._update_status()

    def _update_status(self) -> None:
        if self._commands_ready and self._subscriber is not None:
            problem = None
        elif self._problem == "connecting":
            return  # the first connections are not both up yet
        else:
            problem = f"cannot reach Redis at {self.address}"
        if problem != self._problem:
            self._problem = problem
            if problem is None:
                _log.info("redis connected address={address}", address=str(self.address))
            else:
                _log.warn("redis unavailable: {problem}", problem=problem)
            if self.on_status is not None:
                self.on_status(problem)

    def _subscribed(self, _: object, room: str, watch: _Watch) -> None:
        if self._watches.get(room) is watch:
            self._backfill(room, watch)

    def _subscribe_failed(self, failure: Failure) -> None:
        # The connection went again: the next one subscribes.
        _log.warn("redis subscribe failed: {why}", why=failure.getErrorMessage())

    # -- commands ----------------------------------------------------------

    def _key(self, room: str, what: str) -> str:
        return f"{self.prefix}room:{room}:{what}"

    def _channel(self, room: str) -> str:
        return f"{self.prefix}room:{room}"

    def _command(self, name: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Run a command now, or fail with `Unavailable` at once if Redis is not there."""
        if not self._commands_ready:
            return defer.fail(Unavailable(f"cannot reach Redis at {self.address}"))
        d: Deferred[Any] = getattr(self._commands.handler, name)(*args, **kwargs)
        return d.addErrback(self._unavailable)

    def _unavailable(self, failure: Failure) -> Failure:
        if failure.check(txredisapi.ResponseError):
            return failure  # a bug of ours, not an outage: keep its message
        raise Unavailable(f"Redis did not answer: {failure.getErrorMessage()}")

    def store(self, room: str, username: str, message: str, time: str) -> Deferred[StoredMessage]:
        keys = [
            f"{self.prefix}ids",
            self._key(room, "log"),
            self._key(room, "marks"),
            self._channel(room),
            f"{self.prefix}rooms",
        ]
        args = [self.keep, room, _message_json(room, username, message, time)]
        d = self._command("eval", _STORE, keys, args)
        return d.addCallback(lambda id: StoredMessage(int(id), room, username, message, time))

    def recent(
        self, room: str, limit: int = JOIN_HISTORY, up_to: int | None = None
    ) -> Deferred[list[StoredMessage]]:
        if limit <= 0:
            return defer.succeed([])
        top = f"{up_to}-0" if up_to is not None else "+"
        d = self._command(
            "execute_command", "XREVRANGE", self._key(room, "log"), top, "-", "COUNT", limit
        )
        return d.addCallback(lambda entries: _entries(entries)[::-1])

    def since(
        self, room: str, since_id: int, limit: int = JOIN_HISTORY
    ) -> Deferred[tuple[list[StoredMessage], bool]]:
        keys = [self._key(room, "log"), self._key(room, "marks")]
        d = self._command("eval", _SINCE, keys, [since_id, max(limit, 0)])

        def answered(reply: list[Any]) -> tuple[list[StoredMessage], bool]:
            recovered, entries = reply
            if recovered:
                return _entries(entries), True
            return (_entries(entries)[::-1] if limit > 0 else []), False

        return d.addCallback(answered)

    def rooms(self) -> Deferred[list[str]]:
        d = self._command("smembers", f"{self.prefix}rooms")
        return d.addCallback(lambda names: sorted(n.decode() for n in names))

    def _newest(self, room: str) -> Deferred[int]:
        d = self._command("hget", self._key(room, "marks"), "newest")
        return d.addCallback(lambda newest: int(newest or 0))

    # -- watching rooms ----------------------------------------------------

    def watch(self, room: str) -> Deferred[int]:
        watch = self._watches.get(room)
        if watch is not None and watch.last is not None:
            return defer.succeed(watch.last)
        if self._subscriber is None:
            return defer.fail(Unavailable(f"cannot reach Redis at {self.address}"))
        caller: Deferred[int] = Deferred()
        if watch is None:
            watch = self._watches[room] = _Watch(self._channel(room))
            self._by_channel[watch.channel] = room
            watch.callers.append(caller)
            self._locate(room, watch)
        else:
            watch.callers.append(caller)  # its position is on the way
        return caller

    def _locate(self, room: str, watch: _Watch) -> None:
        """Subscribe, then read the position: what is published after it comes live."""
        watch.waiting = []
        d = self._subscriber.subscribe(watch.channel)
        d.addCallback(lambda _: self._newest(room))

        def positioned(newest: int) -> None:
            if self._watches.get(room) is not watch:
                return
            watch.last = newest
            self._release(room, watch)
            callers, watch.callers = watch.callers, []
            for caller in callers:
                caller.callback(newest)

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
        watch = self._watches.pop(room, None)
        if watch is None:
            return
        del self._by_channel[watch.channel]
        if self._subscriber is not None:
            self._subscriber.unsubscribe(watch.channel).addErrback(lambda _: None)

    def _published(self, channel: Any, payload: Any) -> None:
        if isinstance(channel, bytes):
            channel = channel.decode()
        room = self._by_channel.get(channel)
        if room is None:
            return  # unwatched meanwhile
        watch = self._watches[room]
        message = _parse(payload)
        if watch.waiting is not None:
            watch.waiting.append(message)
        else:
            self._pass_on(watch, message)

    def _pass_on(self, watch: _Watch, message: StoredMessage) -> None:
        if watch.last is not None and message.id <= watch.last:
            return  # had it already (a backfill overlapping the live messages)
        watch.last = message.id
        if self.listener is not None:
            self.listener(message)

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
        keys = [self._key(room, "log"), self._key(room, "marks")]
        d = self._command("eval", _BACKFILL, keys, [last])

        def read(reply: list[Any]) -> None:
            if self._watches.get(room) is not watch or watch.waiting is None:
                return
            newest, pruned, entries = int(reply[0]), int(reply[1]), _entries(reply[2])
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
                    keep=self.keep,
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
