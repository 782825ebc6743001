"""``--workers N``: one master process listening, N worker processes serving.

The master listens on every ``--port`` (any endpoint: ``tcp:``, ``ssl:``,
``unix:``, ``systemd:``) and accepts nothing; it starts N workers, each
``twistd chatservice`` with the same options, giving them the listening sockets
(`chatservice.workers.listening.SharedPortEndpoint` accepts on them) and a slot of the
scoreboard (`chatservice.workers.scoreboard`).  Workers share rooms, presence and history
through Redis, like separate instances.  See `chatservice.workers.worker` for the pipes
between them.

The master supervises:
- a worker that dies is started again at once; while it keeps dying within
  `STABLE_AFTER` seconds of its start, after 1, 2, 4... (at most `MAX_BACKOFF`)
  seconds;
  one that stops sending heartbeats for `HUNG_AFTER` seconds is killed and
  started again;
- SIGTERM or SIGINT: every worker is asked to stop (SIGTERM: each closes its
  clients with 1001, as a single process does) and the master exits 0 once they
  have, or kills those still running after ``--shutdown-timeout`` + `STOP_GRACE`;
- SIGHUP: the options are read again; if they are valid, every worker is
  sent SIGHUP and reloads them;
- systemd: READY=1 once every worker listens; WATCHDOG=1 only while every
  worker is up and sent a heartbeat within the watchdog interval.
Workers' log events are written to the master's log with ``worker`` and
``worker_pid`` fields.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import ProcessProtocol, ServerFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, eventFromJSON, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from chatservice import internals, logs
from chatservice.config import Config
from chatservice.systemd import Notifier
from chatservice.workers.listening import AnnouncingEndpoint, StartupError, describe, with_backlog
from chatservice.workers.scoreboard import UP, Scoreboard
from chatservice.workers.worker import STATUS_FD, WORKER_ENV, WorkerLink

_log = logs.logger("chatservice.master")
_always = Logger(namespace="chatservice.master")

#: A worker that ran this long (seconds) before dying is started again at once.
STABLE_AFTER = 10.0
#: The longest wait (seconds) before starting a worker that keeps dying.
MAX_BACKOFF = 30.0
#: A worker silent this long (seconds, no heartbeat) is taken for hung and killed.
HUNG_AFTER = 30.0
#: Seconds a worker has beyond --shutdown-timeout to exit before it is killed.
STOP_GRACE = 5.0
#: The first file descriptor of the listening sockets in a worker.
FIRST_PORT_FD = STATUS_FD + 1
#: What systemd tells the main process only (a worker must not think it is it).
_SYSTEMD_ENV = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)


def worker_command(arguments: list[str]) -> list[str]:
    """How a worker is started: ``twistd chatservice`` with the master's options,
    logging JSON lines to its stdout."""
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "--nodaemon",
        "--pidfile=",
        "--logger=chatservice.logs.json_lines",
        "chatservice",
        *arguments,
    ]


class Master(MultiService):
    """The master of ``--workers N``.

    Args:
        config: The service's settings (``config.workers`` > 1).
        arguments: The ``twistd chatservice`` options, passed on to the workers.
        reactor: The reactor (the global one if None).
    """

    def __init__(self, config: Config, arguments: list[str], reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor
        self.config = config
        self.arguments = list(arguments)
        logs.set_level(config.log_level)
        self.notifier = Notifier()
        self.listening: list[IListeningPort] = []
        self.board: Scoreboard | None = None
        self._dir: str | None = None
        self._ready_once = False
        self._checks: LoopingCall | None = None
        self._watchdog: LoopingCall | None = None
        self._stopping = False
        self.workers = [WorkerSlot(self, slot) for slot in range(1, config.workers + 1)]
        idle = ServerFactory()  # the workers' sites serve; this one never accepts
        idle.noisy = False
        for description in config.ports:
            svc = strports.service(with_backlog(description), idle, reactor=reactor)
            svc.endpoint = AnnouncingEndpoint(
                svc.endpoint, description, self.listening, accept=False
            )
            svc.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """Listen on every port (as root, before twistd drops privileges)."""
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise StartupError(f"cannot listen: {describe(e)}") from None

    def startService(self) -> None:
        """Start the workers and the checks of their heartbeats."""
        if self.running:
            return
        super().startService()
        if self.config.admin_token_generated:
            _log.warn(
                "HTTP API token (made up at start; set --admin-token or "
                "CHATSERVICE_ADMIN_TOKEN to choose one): {token}",
                token=self.config.admin_token,
            )
        self._dir = tempfile.mkdtemp(prefix="chatservice-workers-")
        self.board = Scoreboard.create(Path(self._dir) / "scoreboard", len(self.workers))
        _always.info(
            "chatservice: starting {count} workers",
            count=len(self.workers),
            workers=len(self.workers),
        )
        for worker in self.workers:
            worker.start()
        self._checks = LoopingCall(self._check)
        self._checks.clock = self.reactor
        self._checks.start(1.0, now=False)

    # What workers say and do.

    def worker_ready(self, worker: WorkerSlot) -> None:
        """`worker` listens: once all do, systemd hears READY=1."""
        self._count_up()
        if self._ready_once or not all(w.ready for w in self.workers):
            return
        self._ready_once = True
        pids = [w.pid for w in self.workers]
        _always.info(
            "chatservice: {count} workers ready (pids {pids})",
            count=len(pids),
            pids=", ".join(map(str, pids)),
            workers=len(pids),
        )
        self.notifier.notify(
            f"READY=1\nSTATUS={len(pids)} workers listening on {len(self.listening)} port(s)"
        )
        if self.notifier.watchdog_interval:
            self._watchdog = LoopingCall(self._watchdog_ping)
            self._watchdog.clock = self.reactor
            self._watchdog.start(self.notifier.watchdog_interval)

    def worker_ended(self, worker: WorkerSlot, reason: Failure) -> None:
        """`worker`'s process ended: logged, and started again unless stopping."""
        if self.board is not None:
            # Its connections are gone; its counters stay in the totals.
            self.board.retire(worker.slot)
        self._count_up()
        if self._stopping:
            return
        delay = worker.next_delay()
        _always.warn(
            "chatservice: worker {worker} (pid {worker_pid}) {how}; starting it again{when}",
            worker=worker.slot,
            worker_pid=worker.pid,
            how=_how_it_ended(reason),
            when=f" in {delay:g} s" if delay else "",
            delay=delay,
        )
        worker.start_later(delay)

    def _count_up(self) -> None:
        if self.board is not None:
            self.board.set_header(UP, sum(1 for w in self.workers if w.ready))

    def _check(self) -> None:
        now = self.reactor.seconds()
        for worker in self.workers:
            if worker.ready and not worker.killed and now - worker.last_alive > HUNG_AFTER:
                _always.error(
                    "chatservice: worker {worker} (pid {worker_pid}) sent no heartbeat for "
                    "{seconds:.0f} s; killing it",
                    worker=worker.slot,
                    worker_pid=worker.pid,
                    seconds=now - worker.last_alive,
                )
                worker.kill()

    def _watchdog_ping(self) -> None:
        interval = self.notifier.watchdog_interval or 0
        now = self.reactor.seconds()
        if all(w.ready and now - w.last_alive <= max(interval, 2.0) for w in self.workers):
            self.notifier.notify("WATCHDOG=1")

    # Signals.

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop every worker, then exit 0; SIGHUP: reload them.

        Call once the reactor runs (it installs its own handlers at start).
        """

        def stop(signum: int, frame: Any) -> None:
            _log.info("received {signal}", signal=signal.Signals(signum).name)
            self.reactor.callFromThread(self._stop_reactor)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log_file = internals.twistd_log_file(signal.getsignal(signal.SIGUSR1))

        def reload(signum: int, frame: Any) -> None:
            if log_file is not None:
                self.reactor.callFromThread(log_file.reopen)
            self.reactor.callFromThread(self._reload)

        signal.signal(signal.SIGHUP, reload)

    #: Reads the configuration again; set by ``tap``.  None when it is not valid.
    reload_config: Callable[[], Config | None] | None = None

    def _reload(self) -> None:
        new = self.reload_config() if self.reload_config is not None else self.config
        if new is None:
            _log.warn("SIGHUP: the configuration is not valid; nothing changed")
            return
        logs.set_level(new.log_level)
        _log.info("SIGHUP: reloading {count} workers", count=len(self.workers))
        for worker in self.workers:
            worker.signal("HUP")

    def _stop_reactor(self) -> None:
        if not self._stopping:
            self._stopping = True
            self.reactor.stop()

    def stopService(self) -> Deferred[None]:
        """Stop every worker gracefully; kill those that do not stop in time."""
        self._stopping = True
        _log.info("chatservice shutting down {count} workers", count=len(self.workers))
        self.notifier.notify("STOPPING=1")
        for loop in (self._checks, self._watchdog):
            if loop is not None and loop.running:
                loop.stop()
        ended = [w.stop() for w in self.workers]
        grace = self.config.shutdown_timeout + STOP_GRACE

        def kill_late() -> None:
            for worker in self.workers:
                if worker.process is not None:
                    _always.warn(
                        "chatservice: worker {worker} (pid {worker_pid}) did not stop "
                        "within {seconds:g} s; killing it",
                        worker=worker.slot,
                        worker_pid=worker.pid,
                        seconds=grace,
                    )
                    worker.kill()

        late = self.reactor.callLater(grace, kill_late)

        def all_ended(result: object) -> object:
            if late.active():
                late.cancel()
            return result

        waiting: Deferred[Any] = defer.DeferredList(ended, consumeErrors=True)
        waiting.addBoth(all_ended)
        waiting.addBoth(lambda _: defer.maybeDeferred(super(Master, self).stopService))
        waiting.addBoth(lambda _: self._remove_board())
        return waiting

    def _remove_board(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # For the slots.

    def spawn(self, worker: WorkerSlot) -> Any:
        """Start `worker`'s process, with the listening sockets and its scoreboard slot."""
        assert self.board is not None and self._dir is not None
        fds = {FIRST_PORT_FD + i: port.fileno() for i, port in enumerate(self.listening)}  # type: ignore[attr-defined]
        link = WorkerLink(worker.slot, len(self.workers), tuple(fds), str(self.board.path))
        env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ENV}
        env[WORKER_ENV] = link.to_environ()
        # One API token for every worker, made up or not.
        env["CHATSERVICE_ADMIN_TOKEN"] = self.config.admin_token
        env["PYTHONUNBUFFERED"] = "1"
        command = worker_command(self.arguments)
        return self.reactor.spawnProcess(
            WorkerProtocol(worker),
            command[0],
            command,
            env=env,
            childFDs={0: "w", 1: "r", 2: "r", STATUS_FD: "r", **fds},
        )


class WorkerSlot:
    """One of the master's N workers, through its restarts.

    Attributes:
        slot: 1 to N: its row of the scoreboard, and its name in the log.
        process: Its process while it runs.
        ready: Whether it listens (said ``ready``) and runs.
        last_alive: When (reactor seconds) it last said ``alive``.
    """

    def __init__(self, master: Master, slot: int) -> None:
        self.master = master
        self.slot = slot
        self.process: Any = None
        self.pid: int | None = None
        self.ready = False
        self.killed = False
        self.last_alive = 0.0
        self._started_at = 0.0
        self._failures = 0
        self._restart: IDelayedCall | None = None
        self._ended: list[Deferred[None]] = []

    def start(self) -> None:
        """Start its process now."""
        self._restart = None
        self.ready = False
        self.killed = False
        self._started_at = self.last_alive = self.master.reactor.seconds()
        self.process = self.master.spawn(self)
        self.pid = self.process.pid
        _log.info(
            "chatservice: worker {worker} started (pid {worker_pid})",
            worker=self.slot,
            worker_pid=self.pid,
        )

    def start_later(self, delay: float) -> None:
        """Start it again in `delay` seconds."""
        self._restart = self.master.reactor.callLater(delay, self.start)

    def next_delay(self) -> float:
        """How long to wait before starting it again, after it died: not at all
        the first time, then 1, 2, 4... seconds while it keeps dying young."""
        lived = self.master.reactor.seconds() - self._started_at
        self._failures = 1 if lived >= STABLE_AFTER else self._failures + 1
        if self._failures == 1:
            return 0.0
        return min(2.0 ** (self._failures - 2), MAX_BACKOFF)

    def said(self, line: str) -> None:
        """A line from its status pipe: ``alive`` or ``ready``."""
        if line == "alive":
            self.last_alive = self.master.reactor.seconds()
        elif line == "ready":
            self.ready = True
            self.last_alive = self.master.reactor.seconds()
            self.master.worker_ready(self)

    def ended(self, reason: Failure) -> None:
        """Its process ended; whoever waits in `stop` hears it."""
        self.process = None
        self.ready = False
        self.master.worker_ended(self, reason)
        ended, self._ended = self._ended, []
        for d in ended:
            d.callback(None)

    def signal(self, name: str) -> None:
        """Send its process the signal `name` (``TERM``, ``KILL``...), if it runs."""
        if self.process is not None:
            try:
                self.process.signalProcess(name)
            except OSError:
                pass  # it just ended: processEnded follows

    def kill(self) -> None:
        """SIGKILL it (hung: no heartbeat)."""
        self.killed = True
        self.signal("KILL")

    def stop(self) -> Deferred[None]:
        """Ask it to stop (SIGTERM); fires once it has ended."""
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
            self._restart = None
        if self.process is None:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._ended.append(d)
        self.signal("TERM")
        return d


class WorkerProtocol(ProcessProtocol):
    """The master's end of one worker process's pipes."""

    def __init__(self, worker: WorkerSlot) -> None:
        self.worker = worker
        self._buffers: dict[int, bytes] = {}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """Lines from the worker: its log (JSON lines), its stderr, its status pipe."""
        lines = (self._buffers.get(childFD, b"") + data).split(b"\n")
        self._buffers[childFD] = lines.pop()
        for line in lines:
            if line.strip():
                self._line(childFD, line)

    def _line(self, fd: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip("\x1e\r ")
        worker = self.worker
        if fd == STATUS_FD:
            worker.said(text)
            return
        if fd == 1 and text.startswith("{"):
            try:
                event = eventFromJSON(text)
            except ValueError:
                pass
            else:
                # Formatted here: its fields came through JSON already flattened.
                event["worker_text"] = formatEvent(event)
                event.pop("log_flattened", None)
                event["log_format"] = "[worker {worker}] {worker_text}"
                event["worker"] = worker.slot
                event["worker_pid"] = worker.pid
                globalLogPublisher(event)
                return
        level = "info" if fd == 1 else "warn"
        getattr(_always, level)(
            "[worker {worker}] {line}", worker=worker.slot, worker_pid=worker.pid, line=text
        )

    def processEnded(self, reason: Failure) -> None:
        """The worker ended: what it wrote last, then its slot hears it."""
        for fd, rest in self._buffers.items():
            if rest.strip():
                self._line(fd, rest)
        self._buffers.clear()
        self.worker.ended(reason)


def _how_it_ended(reason: Failure) -> str:
    error = reason.value
    if isinstance(error, ProcessTerminated) and error.signal is not None:
        try:
            name = signal.Signals(error.signal).name
        except ValueError:
            name = str(error.signal)
        return f"was killed by {name}"
    if isinstance(error, ProcessDone):
        return "exited"
    code = getattr(error, "exitCode", None)
    return f"exited with status {code}"
