"""The running service: one Site listening on every configured endpoint.

With ``--workers N`` this is one worker: it accepts on the sockets its master
listens on (`chatservice.workers.listening.SharedPortEndpoint`) and shares the
connection limits and metrics through the scoreboard (`chatservice.workers.scoreboard`).
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatservice import internals, logs
from chatservice.backplane.history import History, ThreadExecutor, immediate_executor
from chatservice.backplane.local import LocalBackplane
from chatservice.backplane.redis import RedisBackplane, parse_redis_url
from chatservice.backplane.roles import Backplane
from chatservice.chat.gate import Gate
from chatservice.chat.hub import Hub
from chatservice.chat.identity import AuthPolicy
from chatservice.chat.session import ChatLimits
from chatservice.config import Config
from chatservice.counters import Counters
from chatservice.hooks.decisions import ProxyGate, ProxySettings
from chatservice.hooks.proxy import ProxyClient
from chatservice.hooks.webhooks import WebhookSender
from chatservice.systemd import Notifier
from chatservice.web.endpoint import CLOSE_GOING_AWAY, SERVER_NAME
from chatservice.web.frames import TextFrame
from chatservice.web.policy import OriginPolicy
from chatservice.web.site import ChatSite, make_site
from chatservice.workers.listening import (
    AnnouncingEndpoint,
    SharedPortEndpoint,
    StartupError,
    describe,
    with_backlog,
)
from chatservice.workers.scoreboard import PID, Scoreboard, overloaded
from chatservice.workers.worker import HEARTBEAT, MasterPipe, WorkerLink, connect_master

_log = logs.logger("chatservice.service")
#: For the few lines written at any --log-level.
_always = Logger()


def make_hub(
    config: Config,
    backplane: Backplane,
    clock: IReactorTime,
    auth: AuthPolicy,
    stats: Counters,
    gate: Gate | None = None,
) -> Hub:
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
        auth=auth,
        stats=stats,
        gate=gate,
    )


class ChatService(MultiService):
    """The whole service, as twistd runs it.

    Args:
        config: The service's settings.
        reactor: The reactor to listen with (the global one if None).
        worker: With ``--workers``: what the master told this worker.

    Attributes:
        site: The one Site every port serves.
        listening: The listening ports, once started.
    """

    def __init__(
        self, config: Config, reactor: Any = None, worker: WorkerLink | None = None
    ) -> None:
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
        self.history = History(
            config.database, config.history, self._run_history, hooks=config.hooks
        )
        self.redis: RedisBackplane | None = None
        self.local: LocalBackplane | None = None
        self.backplane: Backplane
        if config.redis:
            # Several instances: Redis keeps the history, SQLite is not used.
            self.backplane = self.redis = RedisBackplane(
                parse_redis_url(config.redis),
                config.history,
                reactor,
                ttl=config.instance_ttl,
                hooks=config.hooks,
                offline_delay=config.webhook_offline_delay,
            )
        else:
            self.backplane = self.local = LocalBackplane(
                self.history, reactor, config.webhook_offline_delay
            )
        #: With --webhook: what sends the outbox's events to the application.
        self.webhooks: WebhookSender | None = None
        if config.webhook_url:
            self.webhooks = WebhookSender(
                self.backplane,
                config.webhook_url,
                config.webhook_secret,
                reactor,
                timeout=config.webhook_timeout,
                max_age=config.webhook_max_age,
            )
        self.auth = AuthPolicy.from_config(config)
        #: What /chat counts, with the hub: read by /metrics.
        self.stats = Counters()
        #: Calls the proxies (docs/hooks.md), if any.
        self.proxies: ProxyClient | None = None
        proxies = ProxySettings.from_config(config)
        gate = None
        if proxies:
            gate, self.proxies = ProxyGate.start(proxies, reactor)
        self.hub = make_hub(config, self.backplane, reactor, self.auth, self.stats, gate)
        self.worker = worker
        self._master: MasterPipe | None = None
        self._heartbeat: LoopingCall | None = None
        self.board: Scoreboard | None = None
        if worker is not None:
            self.board = Scoreboard(worker.board, worker.workers)
            self.board.clear(worker.slot)
            self.board.set(worker.slot, PID, os.getpid())
        self.site: ChatSite = make_site(
            config,
            self.hub,
            self.backplane,
            self.auth,
            self.stats,
            reactor,
            webhooks=self.webhooks.stats if self.webhooks is not None else None,
            board=self.board,
            slot=worker.slot if worker else 0,
        )
        if self.redis is None:
            self.history.observe_append = self.site.metrics.history_append.observe
        self.listening: list[IListeningPort] = []
        for i, description in enumerate(config.ports):
            if worker is None:
                # strports.service raises listen errors from privilegedStartService.
                svc = strports.service(with_backlog(description), self.site, reactor=reactor)
                svc.endpoint = AnnouncingEndpoint(svc.endpoint, description, self.listening)
            else:
                shared = SharedPortEndpoint(reactor, worker.fds[i], description, self._overloaded)
                endpoint = AnnouncingEndpoint(shared, description, self.listening, announce=False)
                svc = StreamServerEndpointService(endpoint, self.site)
                internals.raise_listen_errors(svc)
            svc.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """Open the history and listen (as root, before twistd drops privileges)."""
        self._open_history()
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise StartupError(f"cannot listen: {describe(e)}") from None

    def startService(self) -> None:
        """Start the backplane (SQLite's thread, or Redis) and tell systemd once ready."""
        if self.config.admin_token_generated and not self.running:
            _log.warn(
                "HTTP API token (made up at start; set --admin-token or "
                "CHATSERVICE_ADMIN_TOKEN to choose one): {token}",
                token=self.config.admin_token,
            )
        self._open_history()
        self.backplane.replay_orders()  # (on Redis: once connected)
        if self.redis is not None:
            if not self.running:
                _log.info("redis {address}: connecting", address=str(self.redis.address))
                self.redis.start()
        elif self._executor is None:
            # From now on SQLite runs in its own thread, never in the reactor's.
            # (Started only now: a thread would keep a process that failed to
            # listen from exiting.)
            self._executor = ThreadExecutor(self.reactor)
            assert self.local is not None
            self.local.start()
        if self.webhooks is not None and not self.running:
            self.webhooks.start()
        super().startService()
        # Listening (twistd binds in privilegedStartService), the history
        # loaded, and (once the reactor runs) our signal handlers in place:
        # ready, for systemd's Type=notify.
        self.reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        if not self.running:
            return
        if self.worker is not None:
            self._worker_ready()
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
        for loop in (self._watchdog, self._heartbeat):
            if loop is not None and loop.running:
                loop.stop()
        if self._master is not None:
            self._master.close()
        d: Deferred[Any] = defer.maybeDeferred(super().stopService)
        d.addBoth(lambda _: self._close_connections())
        if self.webhooks is not None:
            webhooks = self.webhooks
            d.addBoth(lambda _: webhooks.stop())
        if self.local is not None:
            d.addBoth(lambda _: self.local.stop() if self.local is not None else None)
        if self._executor is not None:
            d.addBoth(lambda _: self.history.close())
            d.addBoth(lambda _: self._stop_executor())
        if self.redis is not None:
            redis = self.redis
            d.addBoth(lambda _: redis.stop())
        if self.proxies is not None:
            proxies = self.proxies
            d.addBoth(lambda _: proxies.close())
        return d

    def _overloaded(self) -> bool:
        """Whether this worker holds more than its share of the connections."""
        assert self.board is not None and self.worker is not None
        return overloaded(self.board, self.worker.slot)

    def _worker_ready(self) -> None:
        """Tell the master this worker listens; then ``alive`` every second."""
        self._master = connect_master(self.reactor, self._master_gone)
        self._master.send("ready")
        share = self.site.metrics.share

        def beat() -> None:
            assert self._master is not None
            self._master.send("alive")
            if share is not None:
                share()

        self._heartbeat = LoopingCall(beat)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(HEARTBEAT, now=False)

    def _master_gone(self) -> None:
        _always.warn("chatservice: the master process is gone; this worker stops")
        self._stop_reactor()

    def _stop_reactor(self) -> None:
        if not self._stopping:
            self._stopping = True
            self.reactor.stop()

    _stopping = False

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

        A worker of ``--workers`` ignores SIGINT: Ctrl-C in a terminal reaches
        every process of the group, and the master stops its workers itself.
        """

        def stop(signum: int, frame: Any) -> None:
            _log.info("received {signal}", signal=signal.Signals(signum).name)
            self.reactor.callFromThread(self._stop_reactor)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop if self.worker is None else signal.SIG_IGN)
        log_file = internals.twistd_log_file(signal.getsignal(signal.SIGUSR1))
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
