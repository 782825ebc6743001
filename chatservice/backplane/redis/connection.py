"""The one connection object to Redis: commands over one connection, subscriptions over another.

Both reconnect by themselves with backoff (see the package's docstring for
why txredisapi).  While either is down, `RedisConnection.problem` says why,
and commands fail at once with `Unavailable`.  Whoever needs to know when a
connection comes back or goes asks to be told
(`RedisConnection.when_commands_up` and the like).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from chatservice import logs
from chatservice.backplane.redis.address import RedisAddress
from chatservice.backplane.values import Unavailable

_log = logs.logger("chatservice.redis_backplane")

#: Error replies of a Redis that is there but cannot serve yet: after a restart,
#: reading its data (LOADING); a replica without its master (MASTERDOWN).
_NOT_READY = ("LOADING", "MASTERDOWN")
#: Seconds a command may take before Redis counts as unavailable.
REPLY_TIMEOUT = 5.0
#: Seconds between attempts to reach Redis, at most (from 1 s, growing).
MAX_RETRY_DELAY = 5.0


def quietly(d: Deferred[Any], what: str) -> None:
    """Log at debug level, and forget, a failure of `d` (a best-effort command)."""
    # Presence is best effort while Redis is away: `RedisPresence` puts back
    # what this instance has when it returns.
    d.addErrback(lambda failure: _log.debug("redis {what} failed: {why}", what=what, why=failure))


class RedisConnection:
    """Both connections to one Redis, their status, and the commands run over them.

    Args:
        address: Where Redis is.
        reactor: The reactor (connections, their retries, the watchdog's timer).
    """

    def __init__(self, address: RedisAddress, reactor: Any) -> None:
        self.address = address
        self.reactor = reactor
        self._command_factory = _CommandFactory(self, address)
        self._subscriber_factory = _SubscriberFactory(self)
        for factory in (self._command_factory, self._subscriber_factory):
            factory.charset = None
            factory.password = address.password
            factory.username = address.username
            factory.dbid = address.db
        self._subscriber: Any = None
        self._commands_ready = False
        self._problem: str | None = f"connecting to Redis at {address}"
        self._connecting = True
        self._stopping = False
        #: Why the last connection attempt failed, if it did.
        self._why = ""
        #: Whether a PING on the subscriber connection is waiting for its answer.
        self._pinging = False
        self._on_commands_up: list[Callable[[], object]] = []
        self._on_subscriber_up: list[Callable[[], object]] = []
        self._on_subscriber_down: list[Callable[[], object]] = []
        self._on_message: Callable[[Any, Any], object] | None = None

    # -- who is told what ----------------------------------------------------

    def when_commands_up(self, callback: Callable[[], object]) -> None:
        """Call `callback` whenever the command connection is (back) up, after earlier ones."""
        self._on_commands_up.append(callback)

    def when_subscriber_up(self, callback: Callable[[], object]) -> None:
        """Call `callback` whenever the subscriber connection is (back) up: time to subscribe."""
        self._on_subscriber_up.append(callback)

    def when_subscriber_down(self, callback: Callable[[], object]) -> None:
        """Call `callback` whenever the subscriber connection is lost (and its subscriptions)."""
        self._on_subscriber_down.append(callback)

    def receive(self, handler: Callable[[Any, Any], object]) -> None:
        """Hand what comes on subscribed channels to `handler(channel, payload)`, raw bytes."""
        self._on_message = handler

    # -- status ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether the command connection is up (commands can be sent)."""
        return self._commands_ready

    @property
    def subscribed(self) -> bool:
        """Whether the subscriber connection is up (`subscribe` can be called)."""
        return self._subscriber is not None

    @property
    def problem(self) -> str | None:
        """Why Redis cannot be used now, or None when it can."""
        return self._problem

    def unreachable(self) -> Unavailable:
        """The error of whatever needs Redis while a connection is down."""
        return Unavailable(f"cannot reach Redis at {self.address}")

    # -- starting and stopping ------------------------------------------------

    def start(self) -> None:
        """Connect both connections, and keep reconnecting them while they drop."""
        for factory in (self._command_factory, self._subscriber_factory):
            factory.startConnecting(_Reporting(self.address.endpoint(self.reactor), self))

    def close(self, farewell: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        """Say nothing more of Redis's status, run `farewell` (last commands), close both.

        `farewell`'s Deferred must not fail; the result fires once both are closed.
        """
        self._stopping = True
        gone = farewell()

        def close(_: Any) -> Deferred[Any]:
            return defer.gatherResults(
                [self._command_factory.disconnect(), self._subscriber_factory.disconnect()],
                consumeErrors=True,
            )

        return gone.addCallback(close)

    # -- commands --------------------------------------------------------------

    def command(self, name: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Run a command now, or fail with `Unavailable` at once if Redis is not there.

        A Redis that is there but cannot serve yet (LOADING, MASTERDOWN), or
        that does not answer in `REPLY_TIMEOUT`, fails it with `Unavailable`
        too; any other error reply is a bug and fails it as it is.
        """
        if not self._commands_ready:
            return defer.fail(self.unreachable())
        d: Deferred[Any] = getattr(self._command_factory.handler, name)(*args, **kwargs)
        return d.addErrback(self._unavailable)

    @staticmethod
    def _unavailable(failure: Failure) -> Failure:
        if failure.check(txredisapi.ResponseError) and not str(failure.value).startswith(
            _NOT_READY
        ):
            return failure  # a bug of ours, not an outage: keep its message
        raise Unavailable(f"Redis did not answer: {failure.getErrorMessage()}")

    # -- the subscription -----------------------------------------------------

    def subscribe(self, channel: str) -> Deferred[Any]:
        """Subscribe to `channel` on the subscriber connection (only while `subscribed`)."""
        d: Deferred[Any] = self._subscriber.subscribe(channel)
        return d

    def unsubscribe(self, channel: str) -> None:
        """Stop hearing `channel`, if the subscriber connection is up (else it is gone already)."""
        if self._subscriber is not None:
            self._subscriber.unsubscribe(channel).addErrback(lambda _: None)

    def ping_subscriber(self) -> None:
        """Drop the subscriber connection if Redis does not answer a PING on it in time.

        A subscription is silent when no message comes: a connection that died
        without a word (a lost NAT entry, a Redis failover behind a virtual
        address) would look the same, and its rooms would get nothing, for
        good.  Dropped, it comes back, subscribes again and backfills.
        """
        subscriber = self._subscriber
        if subscriber is None or self._pinging:
            return
        self._pinging = True

        def silent() -> None:
            _log.warn(
                "redis: no answer on the subscriber connection within {timeout} s; reconnecting",
                timeout=REPLY_TIMEOUT,
            )
            subscriber.transport.abortConnection()

        timer = self.reactor.callLater(REPLY_TIMEOUT, silent)

        def answered(_: Any) -> None:
            self._pinging = False
            if timer.active():
                timer.cancel()

        subscriber.ping().addBoth(answered)

    # -- what the factories tell -----------------------------------------------

    def _commands_up(self) -> None:
        self._why = ""
        self._commands_ready = True
        self._update_status()
        for callback in self._on_commands_up:
            callback()

    def _commands_down(self) -> None:
        self._commands_ready = False
        self._update_status()

    def _subscriber_up(self, conn: Any) -> None:
        self._subscriber = conn
        conn.on_message = self._message
        self._update_status()
        for callback in self._on_subscriber_up:
            callback()

    def _subscriber_down(self, conn: Any) -> None:
        if self._subscriber is conn:
            self._subscriber = None
        for callback in self._on_subscriber_down:
            callback()
        self._update_status()

    def _message(self, channel: Any, payload: Any) -> None:
        if self._on_message is not None:
            self._on_message(channel, payload)

    def _attempt_failed(self, why: str) -> None:
        """A connection attempt failed (they go on, with backoff)."""
        self._why = why
        self._connecting = False
        self._update_status()

    def _update_status(self) -> None:
        if self._stopping:
            return
        if self._commands_ready and self._subscriber is not None:
            problem = None
        elif self._connecting:
            return  # the first connections are not both up yet
        else:
            problem = f"cannot reach Redis at {self.address}"
            if self._why:
                problem += f": {self._why}"
        if problem is None:
            self._connecting = False
        if problem != self._problem:
            self._problem = problem
            if problem is None:
                _log.info("redis connected address={address}", address=str(self.address))
            else:
                _log.warn("redis unavailable: {problem}", problem=problem)


@implementer(IStreamClientEndpoint)
class _Reporting:
    """An endpoint that tells the connection why a connection attempt failed."""

    def __init__(self, endpoint: IStreamClientEndpoint, connection: RedisConnection) -> None:
        self._endpoint = endpoint
        self._connection = connection

    def __repr__(self) -> str:
        return f"<Redis at {self._connection.address}>"

    def connect(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = self._endpoint.connect(factory)
        return d.addErrback(self._failed)

    def _failed(self, failure: Failure) -> Failure:
        self._connection._attempt_failed(failure.getErrorMessage())
        return failure


class _Subscriber(txredisapi.SubscriberProtocol):
    """The subscriber connection's protocol: hands each message to `on_message`."""

    on_message: Callable[[str, bytes], None] | None = None

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        if self.on_message is not None:
            self.on_message(channel, message)


class _SubscriberFactory(txredisapi.SubscriberFactory):
    """The subscriber connection's factory: tells the connection when it is up or down."""

    protocol = _Subscriber
    maxDelay = MAX_RETRY_DELAY

    def __init__(self, connection: RedisConnection) -> None:
        super().__init__(isLazy=True)
        self.connection = connection

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.connection._subscriber_up(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.connection._subscriber_down(conn)


class _CommandFactory(txredisapi.RedisFactory):
    """The command connection's factory: tells the connection when it is up or down."""

    maxDelay = MAX_RETRY_DELAY

    def __init__(self, connection: RedisConnection, address: RedisAddress) -> None:
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
        self.connection = connection

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.connection._commands_up()

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.connection._commands_down()
