"""The running service: one Site listening on every configured endpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from zope.interface import implementer

from chatservice import logs
from chatservice.backplane import Backplane, LocalBackplane
from chatservice.config import Config
from chatservice.frames import TextFrame
from chatservice.history import History, ThreadExecutor, immediate_executor
from chatservice.hub import ChatLimits, Hub
from chatservice.policy import OriginPolicy
from chatservice.protocol import CLOSE_GOING_AWAY, SERVER_NAME
from chatservice.redis_backplane import RedisBackplane, parse_redis_url
from chatservice.systemd import Notifier
from chatservice.web import ChatSite, make_site

_log = Logger(observer=logs.filtered)
#: For the few lines written at any --log-level.
_always = Logger()


@implementer(IStreamServerEndpoint)
class _AnnouncingEndpoint:
    """Wraps an endpoint to log the address it listens on and keep the port.

    With ``tcp:0`` the port number is only known once listening; scripts and
    tests read it from the log event or from `ChatService.listening`.
    """

    def __init__(
        self, endpoint: IStreamServerEndpoint, description: str, ports: list[IListeningPort]
    ):
        self._endpoint = endpoint
        self._description = description
        self._ports = ports

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        def announce(port: IListeningPort) -> IListeningPort:
            self._ports.append(port)
            pace_accepts(port)
            address = port.getHost()
            # At any --log-level: scripts (and people) read the port from it.
            _always.info(
                "chatservice listening on {address} (from {description!r})",
                address=str(address),
                host=getattr(address, "host", None),
                port=getattr(address, "port", None),
                description=self._description,
            )
            return port

        d: Deferred[IListeningPort] = self._endpoint.listen(factory)
        return d.addCallback(announce)


#: New connections a port accepts in one reactor iteration, at most.
ACCEPTS_PER_ITERATION = 32


def pace_accepts(port: IListeningPort) -> None:
    """Accept at most `ACCEPTS_PER_ITERATION` connections per reactor iteration.

    Twisted's port accepts ``numberAccepts`` connections per iteration and adds 20
    whenever it took them all, so during a reconnect storm one iteration takes in
    hundreds, handles all their handshakes and joins (about 1 ms each) before
    anything else, and room messages wait for seconds.  Capped, the handshakes
    are spread over many short iterations, with room messages delivered between
    them; the rate of joins stays what the CPU allows.
    """
    if not hasattr(port, "numberAccepts"):
        return  # not a Twisted stream port (e.g. a test double)
    accept = port.doRead  # type: ignore[attr-defined]

    def doRead() -> Any:
        port.numberAccepts = min(port.numberAccepts, ACCEPTS_PER_ITERATION)  # type: ignore[attr-defined]
        return accept()

    port.doRead = doRead  # type: ignore[attr-defined]


#: Connections the kernel queues for a TCP port until they are accepted (Twisted's
#: default is 50): a reconnect storm of thousands must not see refused SYNs.
LISTEN_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """A TCP or TLS endpoint string with a listen backlog of `LISTEN_BACKLOG`,
    unless it sets one."""
    kind = description.split(":", 1)[0].lower()
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


def make_hub(config: Config, backplane: Backplane, clock: IReactorTime) -> Hub:
    """The chat hub as `config` describes it."""
    return Hub(
        backplane,
        clock,
        TextFrame,
        server=SERVER_NAME,
        motd=config.motd,
        limits=ChatLimits(
            max_message_size=config.chat_max_message_size,
            max_text_length=config.max_text_length,
            rate=config.rate,
            burst=config.burst,
        ),
        large_room=config.large_room,
        presence_interval=config.presence_interval,
    )


class ChatService(MultiService):
    """The whole service, as twistd runs it.

    Args:
        config: The service's settings.
        reactor: The reactor to listen with (the global one if None).

    Attributes:
        site: The one Site every port serves.
        listening: The listening ports, once started.
    """

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.config = config
        logs.set_level(config.log_level)
        self.reactor = reactor
        self._executor: ThreadExecutor | None = None
        self._history_open = False
        self.notifier = Notifier()
        self._watchdog: LoopingCall | None = None
        self.history = History(config.database, config.history, self._run_history)
        self.redis: RedisBackplane | None = None
        backplane: Backplane
        if config.redis:
            # Several instances: Redis keeps the history, SQLite is not used.
            backplane = self.redis = RedisBackplane(
                parse_redis_url(config.redis), config.history, reactor, ttl=config.instance_ttl
            )
        else:
            backplane = LocalBackplane(self.history)
        self.hub = make_hub(config, backplane, reactor)
        self.site: ChatSite = make_site(config, self.hub, reactor)
        self.listening: list[IListeningPort] = []
        for description in config.ports:
            # strports.service raises listen errors from privilegedStartService.
            svc = strports.service(with_backlog(description), self.site, reactor=reactor)
            svc.endpoint = _AnnouncingEndpoint(svc.endpoint, description, self.listening)
            svc.setServiceParent(self)

    def privilegedStartService(self) -> None:
        self._open_history()
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise StartupError(f"cannot listen: {_describe(e)}") from None

    def startService(self) -> None:
        if self.config.admin_token_generated and not self.running:
            _log.warn(
                "HTTP API token (made up at start; set --admin-token or "
                "CHATSERVICE_ADMIN_TOKEN to choose one): {token}",
                token=self.config.admin_token,
            )
        self._open_history()
        if self.redis is not None:
            if not self.running:
                _log.info("redis {address}: connecting", address=str(self.redis.address))
                self.redis.start()
        elif self._executor is None:
            # From now on SQLite runs in its own thread, never in the reactor's.
            # (Started only now: a thread would keep a process that failed to
            # listen from exiting.)
            self._executor = ThreadExecutor(self.reactor)
        super().startService()
        # Listening (twistd binds in privilegedStartService), the history
        # loaded, and (once the reactor runs) our signal handlers in place:
        # ready, for systemd's Type=notify.
        self.reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        if not self.running:
            return
        self.notifier.notify(f"READY=1\nSTATUS=listening on {len(self.listening)} port(s)")
        if self.notifier.watchdog_interval:
            self._watchdog = LoopingCall(self.notifier.notify, "WATCHDOG=1")
            self._watchdog.clock = self.reactor
            self._watchdog.start(self.notifier.watchdog_interval)

    def stopService(self) -> Deferred[None]:
        """Shut down gracefully.

        Stop accepting, send every WebSocket client 1001 "going away", wait for
        their closing handshakes (at most ``shutdown_timeout``), drop whoever is
        left, then close the history.
        """
        self.site.health.shutting_down = True
        _log.info("chatservice shutting down")
        self.notifier.notify("STOPPING=1")
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        d: Deferred[Any] = defer.maybeDeferred(super().stopService)
        d.addBoth(lambda _: self._close_connections())
        if self._executor is not None:
            d.addBoth(lambda _: self.history.close())
            d.addBoth(lambda _: self._stop_executor())
        if self.redis is not None:
            redis = self.redis
            d.addBoth(lambda _: redis.stop())
        return d

    def _close_connections(self) -> Deferred[Any]:
        connections = [c for f in self.site.websocket_factories for c in f.open_connections]
        closed = [c.is_closed for c in connections]
        for connection in connections:
            connection.close_with(CLOSE_GOING_AWAY, "going away")
        waiting: Deferred[Any] = defer.DeferredList(closed, consumeErrors=True)
        timeout = self.config.shutdown_timeout
        waiting.addTimeout(timeout, self.reactor)

        def timed_out(failure: Failure) -> None:
            failure.trap(defer.TimeoutError)
            left = [c for c in connections if not c.is_closed.called]
            _log.info(
                "{count} clients did not finish closing within {timeout}s; dropping them",
                count=len(left),
                timeout=timeout,
            )
            for connection in left:
                connection.dropConnection(abort=True)

        return waiting.addErrback(timed_out)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the reactor gracefully, and twistd exits 0.

        (twistd's own handlers re-raise the signal after shutdown, which ends
        the process with -15 for systemd and shells.)  Call once the reactor
        runs: it installs its handlers at start.
        """
        import signal

        def stop(signum: int, frame: Any) -> None:
            _log.info("received {signal}", signal=signal.Signals(signum).name)
            self.reactor.callFromThread(self.reactor.stop)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log_file = _twistd_log_file(signal.getsignal(signal.SIGUSR1))
        reload_config = self.reload_config

        def reload(signum: int, frame: Any) -> None:
            if log_file is not None:
                # After logrotate moved it: write to a new file at the same path.
                self.reactor.callFromThread(log_file.reopen)
            if reload_config is not None:
                self.reactor.callFromThread(self._reload, reload_config)

        signal.signal(signal.SIGHUP, reload)

    #: Reads the configuration again (the command line and ``--config`` file);
    #: set by ``tap`` to enable SIGHUP.  Returns None when it is not valid.
    reload_config: Callable[[], Config | None] | None = None

    #: What SIGHUP changes in a running service; the rest needs a restart.
    RELOADABLE = ("motd", "allowed_origins", "log_level")

    def _reload(self, read: Callable[[], Config | None]) -> None:
        new = read()
        if new is None:
            _log.warn("SIGHUP: the configuration is not valid; nothing changed")
            return
        old = self.config
        changed = [f for f in self.RELOADABLE if getattr(new, f) != getattr(old, f)]
        ignored = [
            f
            for f in dataclasses.asdict(new)
            if f not in self.RELOADABLE
            and f not in ("admin_token", "admin_token_generated")
            and getattr(new, f) != getattr(old, f)
        ]
        self.hub.motd = new.motd
        for factory in self.site.websocket_factories:
            factory.origins = OriginPolicy(new.allowed_origins)
            factory.log_messages = new.log_level == "debug"
        self.config = dataclasses.replace(old, **{f: getattr(new, f) for f in self.RELOADABLE})
        _log.info(
            "SIGHUP: reloaded {changed}; needs a restart to change: {ignored}",
            changed=", ".join(changed) or "nothing changed",
            ignored=", ".join(ignored) or "nothing",
        )
        logs.set_level(new.log_level)  # after saying so: at warn the line above is info

    def _open_history(self) -> None:
        """Load the history before any port listens: at start-up, blocking is fine."""
        if self._history_open or self.redis is not None:
            return
        failures: list[Failure] = []
        self.history.open(executor=immediate_executor).addErrback(failures.append)
        if failures:
            raise StartupError(
                f"cannot open the history database {self.config.database!r}: "
                f"{failures[0].getErrorMessage()}"
            )
        self._history_open = True

    def _run_history(self, f: Any) -> Deferred[Any]:
        assert self._executor is not None, "the history is used before the service started"
        return self._executor(f)

    def _stop_executor(self) -> None:
        if self._executor is not None:
            self._executor.stop()


def _twistd_log_file(usr1_handler: Any) -> LogFile | None:
    """The `LogFile` of twistd's ``--logfile``, if there is one.

    twistd keeps it only in the closure of the SIGUSR1 handler it installs
    to rotate it; that handler is where we find it, to reopen it on SIGHUP.
    """
    for cell in getattr(usr1_handler, "__closure__", None) or ():
        contents = cell.cell_contents
        if isinstance(contents, LogFile):
            return contents
    return None


class StartupError(Exception):
    """The service cannot start; the message says why, in one line.

    twistd removes its pid file for any Exception and re-raises it; `tap`
    installs an excepthook that prints this one as its message alone.
    """

    def __str__(self) -> str:
        return f"chatservice: {self.args[0]}"


def _describe(error: CannotListenError) -> str:
    interface = error.interface or "all interfaces"
    reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
    return f"port {error.port} on {interface}: {reason}"
