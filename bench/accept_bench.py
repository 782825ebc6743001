#!/usr/bin/env python3
"""Accept benchmark: how N worker processes should share one listening TCP port.

Three ways for --workers (default 2) Twisted processes to serve one port:

- ``shared``: this process binds and listens one socket (127.0.0.1, port 0,
  backlog 1024) and hands its file descriptor to every worker, which adopts it
  with ``reactor.adoptStreamPort(fd, AF_INET, factory)`` (what Autobahn's
  multicore example does).  One accept queue; every worker's epoll wakes for
  every connection and whichever calls accept() first gets it.
- ``balanced``: ``shared`` plus chatservice's balancing rule; what
  ``chatservice --workers N`` does.  This process also creates a scoreboard
  (``chatservice.workers.scoreboard.Scoreboard``, a file in a temporary directory of
  the run) and gives every worker its slot (``--board PATH --slot N``); a
  worker writes its pid in its row, adds 1 to its open connections (``OPEN``)
  for each connection it accepts and takes 1 off when the client closes it,
  and its port is wrapped (after the accept cap) with
  ``chatservice.workers.listening.balance_accepts``: a worker holding more than its
  share of the live workers' open connections
  (``chatservice.workers.scoreboard.overloaded``) stops watching the socket for
  ``YIELD_SECONDS`` (5 ms) so that another takes the connection, then accepts
  whatever is still waiting.
- ``reuseport``: every worker binds and listens its own socket with
  SO_REUSEPORT on the same port (backlog 1024) and adopts it.  One accept queue
  per worker; the kernel picks the queue by a hash of the connection's
  addresses, whatever the worker behind it is doing.

The workers are this script in ``--child`` mode (Twisted's epoll reactor): for
each connection accepted they burn --work-ms of CPU (default 1 ms, standing in
for a WebSocket handshake), write their pid and a newline, and keep the
connection until the client closes it.  Their port takes at most --accept-cap
(32) connections per reactor iteration, as chatservice's does
(``chatservice.workers.listening.pace_accepts``); ``--accept-cap 0`` leaves Twisted's
own behaviour (100 per iteration, 20 more whenever it took them all).

The client is this process (non-blocking sockets, one epoll loop): it opens
--connections (1000) connections to the port, measures each one's accept
latency (from starting connect() to receiving the pid line, so the time queued
plus the worker's work) and counts connections per worker.  It keeps every
connection that got its pid line open until the run ends (then resets them
all), as chat clients stay connected: the balancing rule weighs the workers'
open connections, so by the end of a run they hold all of them (``balanced``
rounds report the scoreboard's counts at that moment, ``board_open``).  Two
arrival patterns: ``burst`` (as fast as possible, at most --in-flight (200)
waiting for their pid line) and ``paced`` (a steady --rate (500) connections
a second).  Every (strategy, pattern) runs --rounds (3) times against fresh
workers; the strategies alternate within a round, and their order rotates
from round to round.  In a burst the latency is mostly the wait behind the
connections in flight (about in-flight x work-ms / workers, more since a
worker writes its replies only after a whole batch of accepts), so there p99
and max tell the strategies apart, not p50.

Reported per pattern and strategy: every round's connections per worker, their
spread (max/min, the coefficient of variation, the largest deviation from the
fair share in %; ``params.random_split_sd_pct`` is what a random choice of
worker per connection gives, about what SO_REUSEPORT's hash does), accept
latency p50/p99/max over all rounds, errors, and a ``conclusion`` computed
from them (which strategy spreads most evenly, and how the latencies compare).
Then a ``kill`` check of every strategy, each case with fresh workers,
--kill-connections (200) connections opened as fast as possible (and held),
counting how many succeed:

- ``after_kill``: SIGKILL one worker and open the connections at once, while
  the kernel may not yet have closed its sockets (with ``balanced`` its slot
  stays live in the scoreboard during the run: the moments before
  chatservice's master notices the death);
- ``after_exit``: SIGKILL one worker, wait until it has exited (and, with
  ``balanced``, retire its slot, as chatservice's master does), then open them;
- ``queued_at_kill``: SIGSTOP one worker (hung: it accepts nothing), open the
  connections, SIGKILL it 0.3 s later (with ``balanced``, retiring its slot once
  it has exited): what becomes of the connections waiting in its accept queue
  (with ``shared`` and ``balanced`` there is no queue of its own; with
  ``balanced`` the hung worker counts as live until then, so the other one
  steps back before each batch of accepts).

    .venv/bin/python bench/accept_bench.py [--workers 2] [--connections 1000]
        [--rounds 3] [--work-ms 1] [--rate 500] [--in-flight 200]
        [--accept-cap 32] [--kill-connections 200]

One JSON document goes to stdout, progress to stderr.  Exit status 0 when it
ran (a benchmark is never pass or fail), 1 if it could not run, 130 when
interrupted.  Every process it starts is stopped before it exits; the workers
also die with it if it is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import math
import os
import platform
import re
import select
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

from _common import BenchError, main_of

from chatservice.workers.scoreboard import OPEN, PID, Scoreboard, overloaded

SCRIPT = Path(__file__).resolve()
HOST = "127.0.0.1"
#: chatservice's listen backlog (``chatservice.workers.listening.LISTEN_BACKLOG``).
BACKLOG = 1024
STRATEGIES = ("shared", "balanced", "reuseport")
PATTERNS = ("burst", "paced")

#: Seconds for all workers to announce they listen.
READY_TIMEOUT = 30.0
#: Seconds a worker has to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0
#: Seconds between starting the connections and killing the stopped worker
#: in ``queued_at_kill``: long enough for all of them to be queued.
QUEUE_SETTLE_S = 0.3
#: New connections the client starts per loop turn, so that it reads replies
#: between starts and its own delay stays out of the latencies.
STARTS_PER_TURN = 16
#: Latencies within this fraction of each other count as similar.
LATENCY_TOLERANCE = 0.1
#: Above this CPU share the client may have limited the rate.
CLIENT_BUSY = 0.8
#: A 1-minute load average above this before the benchmark starts means other
#: work was taking CPU time.
BUSY_LOAD = 0.5
#: The paced client falling this far behind its schedule is worth a note.
PACE_LAG_MS = 50.0

READY_RE = re.compile(r"ready pid=(\d+) port=(\d+)")
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Params:
    """What one benchmark run does, from the command line."""

    workers: int
    connections: int
    rounds: int
    work_ms: float
    rate: float
    in_flight: int
    accept_cap: int
    timeout: float
    kill_connections: int


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"accept_bench: {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> Params:
    """The command line, checked."""
    parser = argparse.ArgumentParser(
        description="How N worker processes should share a listening port: "
        "one shared socket, the same balanced by chatservice's rule, or SO_REUSEPORT sockets."
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument(
        "--connections", type=int, default=1000, help="connections per run (default: 1000)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of each strategy and pattern (default: 3)"
    )
    parser.add_argument(
        "--work-ms",
        type=float,
        default=1.0,
        help="CPU a worker burns per connection accepted, in ms (default: 1)",
    )
    parser.add_argument(
        "--rate", type=float, default=500.0, help="paced arrivals per second (default: 500)"
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=200,
        help="connections outstanding at once, at most (default: 200)",
    )
    parser.add_argument(
        "--accept-cap",
        type=int,
        default=32,
        help="connections a worker accepts per reactor iteration, at most, as chatservice "
        "(default: 32; 0: Twisted's own, 100 and 20 more whenever it took them all)",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds a connection may take (default: 5)"
    )
    parser.add_argument(
        "--kill-connections",
        type=int,
        default=200,
        help="connections opened in the kill check (default: 200; 0: no kill check)",
    )
    args = parser.parse_args(argv)
    for name in ("workers", "connections", "rounds", "in_flight"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.work_ms < 0 or args.accept_cap < 0 or args.kill_connections < 0:
        parser.error("--work-ms, --accept-cap and --kill-connections must be >= 0")
    if args.rate <= 0 or args.timeout <= 0:
        parser.error("--rate and --timeout must be positive")
    return Params(
        workers=args.workers,
        connections=args.connections,
        rounds=args.rounds,
        work_ms=args.work_ms,
        rate=args.rate,
        in_flight=args.in_flight,
        accept_cap=args.accept_cap,
        timeout=args.timeout,
        kill_connections=args.kill_connections,
    )


# The worker (``--child``).


def burn(seconds: float) -> None:
    """Keep the CPU busy for `seconds`."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def die_with_parent(parent: int) -> None:
    """Be killed when the benchmark dies, even by SIGKILL (Linux); exit if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the benchmark's own clean-up has to do
    if os.getppid() != parent:
        os._exit(1)


def child(argv: Sequence[str]) -> int:
    """A worker: serve the listening socket given by --fd, or one of its own on --port;
    with --board and --slot, balance its accepts as chatservice does."""
    parser = argparse.ArgumentParser(prog="accept_bench.py --child")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--fd", type=int, help="adopt this listening socket (shared)")
    where.add_argument("--port", type=int, help="listen on this port with SO_REUSEPORT")
    parser.add_argument("--work-ms", type=float, required=True)
    parser.add_argument("--accept-cap", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--board", help="the scoreboard file (balanced)")
    parser.add_argument("--slot", type=int, help="this worker's slot on the board, 1 to --workers")
    parser.add_argument("--workers", type=int, help="the board's worker slots")
    args = parser.parse_args(argv)
    if (args.board is None) != (args.slot is None) or (args.board is None) != (
        args.workers is None
    ):
        parser.error("--board, --slot and --workers go together")
    die_with_parent(args.parent)

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # Warnings and errors (a failed accept, a traceback) to stderr, nothing else.
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)]
            )
        ],
        redirectStandardIO=False,
    )
    work_s = args.work_ms / 1000
    reply = f"{os.getpid()}\n".encode()
    slot: int = args.slot
    board = None
    if args.board is not None:
        board = Scoreboard(args.board, args.workers)
        board.set(slot, PID, os.getpid())

    class Worker(Protocol):
        counted = False

        def connectionMade(self) -> None:
            if board is not None:
                board.add(slot, OPEN, 1)
                self.counted = True
            burn(work_s)
            self.transport.write(reply)  # type: ignore[union-attr]

        def connectionLost(self, reason: Any = None) -> None:
            if self.counted:
                assert board is not None
                board.add(slot, OPEN, -1)
                self.counted = False

    factory = Factory.forProtocol(Worker)
    if args.fd is not None:
        port = reactor.adoptStreamPort(args.fd, socket.AF_INET, factory)  # type: ignore[attr-defined]
        os.close(args.fd)  # the port has its own duplicate
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as own:
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            own.bind((HOST, args.port))
            own.listen(BACKLOG)
            own.setblocking(False)
            port = reactor.adoptStreamPort(own.fileno(), socket.AF_INET, factory)  # type: ignore[attr-defined]
    if args.accept_cap:
        cap_accepts(port, args.accept_cap)
    if board is not None:
        # After the cap, as chatservice's SharedPortEndpoint wraps pace_accepts.
        from chatservice.workers.listening import balance_accepts

        balance_accepts(port, lambda: overloaded(board, slot), reactor)
    print(f"ready pid={os.getpid()} port={port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]
    return 0


def cap_accepts(port: Any, cap: int) -> None:
    """At most `cap` accepts per reactor iteration: chatservice's ``pace_accepts``."""
    accept = port.doRead

    def doRead() -> Any:
        port.numberAccepts = min(port.numberAccepts, cap)
        return accept()

    port.doRead = doRead


# The workers, seen from the benchmark.


@dataclass(frozen=True)
class Workers:
    """Running workers serving one port.

    Attributes:
        strategy: "shared", "balanced" or "reuseport".
        port: The port they serve on 127.0.0.1.
        processes: The worker processes, in the order they were started; the
            first is in slot 1 of `board`, and so on.
        board: Their scoreboard (``balanced``), else None.
    """

    strategy: str
    port: int
    processes: list[subprocess.Popen[str]]
    board: Scoreboard | None = None

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]


@contextmanager
def running_workers(strategy: str, params: Params) -> Iterator[Workers]:
    """Start `params.workers` workers sharing a port by `strategy`; stop them on exit."""
    sockets: list[socket.socket] = []
    processes: list[subprocess.Popen[str]] = []
    board: Scoreboard | None = None
    board_dir: tempfile.TemporaryDirectory[str] | None = None
    try:
        if strategy in ("shared", "balanced"):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(listener)
            listener.bind((HOST, 0))
            listener.listen(BACKLOG)
            listener.setblocking(False)  # O_NONBLOCK is shared with the workers' copies
            where = ["--fd", str(listener.fileno())]
            pass_fds: tuple[int, ...] = (listener.fileno(),)
            port = listener.getsockname()[1]
        else:
            # Bound, not listening: holds the port for the workers without
            # joining their SO_REUSEPORT group, which only listeners are in.
            reservation = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(reservation)
            reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            reservation.bind((HOST, 0))
            port = reservation.getsockname()[1]
            where = ["--port", str(port)]
            pass_fds = ()
        command = [
            sys.executable,
            str(SCRIPT),
            "--child",
            *where,
            "--work-ms",
            str(params.work_ms),
            "--accept-cap",
            str(params.accept_cap),
            "--parent",
            str(os.getpid()),
        ]
        if strategy == "balanced":
            board_dir = tempfile.TemporaryDirectory(prefix="accept_bench.")
            board = Scoreboard.create(Path(board_dir.name) / "scoreboard", params.workers)
            command += ["--board", str(board.path), "--workers", str(params.workers)]
        for slot in range(1, params.workers + 1):
            processes.append(
                subprocess.Popen(
                    command + (["--slot", str(slot)] if board is not None else []),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    text=True,
                    pass_fds=pass_fds,
                )
            )
        deadline = time.monotonic() + READY_TIMEOUT
        for process in processes:
            wait_ready(process, port, deadline)
        if strategy != "reuseport":
            listener.close()  # the workers hold it now
        yield Workers(strategy, port, processes, board)
    finally:
        stop_all(processes)
        for s in sockets:
            s.close()
        if board is not None:
            board.close()
        if board_dir is not None:
            board_dir.cleanup()


def wait_ready(process: subprocess.Popen[str], port: int, deadline: float) -> None:
    """Wait for a worker's ``ready`` line.

    Raises:
        BenchError: It exited, announced another port or nothing in time.
    """
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
    if not readable:
        raise BenchError(f"a worker did not start within {READY_TIMEOUT:.0f} s")
    line = process.stdout.readline()
    match = READY_RE.search(line)
    if match is None:
        try:
            status = process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise BenchError(f"a worker said {line!r} instead of announcing its port") from None
        raise BenchError(f"a worker exited with status {status} (its stderr is above)")
    if int(match.group(2)) != port:
        raise BenchError(f"a worker listens on port {match.group(2)}, not {port}")


def stop_all(processes: Sequence[subprocess.Popen[str]]) -> None:
    """Terminate the workers (stopped ones too) and kill those that do not exit in time."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
            process.send_signal(signal.SIGCONT)  # a stopped worker must run to exit
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def wait_stopped(pid: int, limit: float = 2.0) -> None:
    """Wait until process `pid` is stopped (state T in /proc/PID/stat)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] in "Tt":
            return
        time.sleep(0.001)
    raise BenchError(f"worker {pid} did not stop within {limit:g} s of SIGSTOP")


# The client.


class Connection:
    """One client connection under way."""

    __slots__ = ("buffer", "deadline", "sock", "started")

    def __init__(self, sock: socket.socket, started: float, deadline: float) -> None:
        self.sock: socket.socket | None = sock
        self.started = started
        self.deadline = deadline
        self.buffer = b""


@dataclass(frozen=True)
class Outcome:
    """What the client saw in one run.

    Attributes:
        latencies_ms: Accept latency of every connection that got its pid line.
        per_pid: Those connections, per worker pid.
        errors: Connections that failed, per reason (errno name, "closed", "timeout").
        wall_s: From the first connect() to the last connection's end.
        client_cpu_share: The client's CPU time over `wall_s`.
        max_start_lag_ms: How late the latest connection started after its
            scheduled time (paced runs).
        held_at_end: Connections still open when every connection had got its
            pid line or failed (all those that got it, unless a worker closed
            one), just before the client reset them.
        at_end: What `drive`'s ``at_end`` returned then.
    """

    latencies_ms: list[float]
    per_pid: dict[int, int]
    errors: dict[str, int]
    wall_s: float
    client_cpu_share: float
    max_start_lag_ms: float
    held_at_end: int
    at_end: Any = None


def error_name(error: OSError) -> str:
    """``ECONNRESET`` for a connection reset, and so on."""
    return errno.errorcode.get(error.errno or 0, type(error).__name__)


def drive(
    port: int,
    total: int,
    *,
    in_flight: int,
    rate: float | None,
    timeout: float,
    action: tuple[float, Callable[[], None]] | None = None,
    at_end: Callable[[], Any] | None = None,
) -> Outcome:
    """Open `total` connections to `port`, read each one's pid line and keep the
    connection open until all have ended; then reset them all.

    Args:
        port: The port on 127.0.0.1.
        total: Connections to open.
        in_flight: Connections outstanding at once, at most.
        rate: Connections started per second, or None for as fast as possible.
        timeout: Seconds after which a connection without its pid line fails.
        action: (seconds after the first connect(), what to do then), once;
            the run lasts at least that long.
        at_end: Called once every connection has got its pid line or failed,
            while those that got it are still open; its result goes in the
            outcome.
    """
    address = (HOST, port)
    linger = struct.pack("ii", 1, 0)
    selector = selectors.EpollSelector()
    waiting: deque[Connection] = deque()  # in start order, so also in deadline order
    held: list[socket.socket] = []  # connections that got their pid line, kept open
    latencies: list[float] = []
    per_pid: dict[int, int] = {}
    errors: dict[str, int] = {}
    started = finished = 0
    max_lag = 0.0

    def reset(sock: socket.socket) -> None:
        # Reset rather than close: no TIME_WAIT left behind by thousands of runs.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        sock.close()

    def finish(connection: Connection, error: str | None) -> None:
        nonlocal finished
        sock = connection.sock
        if sock is None:
            return
        selector.unregister(sock)
        if error is None:
            held.append(sock)  # open until the run ends, as a chat client stays
        else:
            reset(sock)
        connection.sock = None
        finished += 1
        if error is not None:
            errors[error] = errors.get(error, 0) + 1

    cpu_start = time.process_time()
    start = time.perf_counter()
    action_at = start + action[0] if action else None
    try:
        # Until every connection has ended and the action has been taken.
        while finished < total or action_at is not None:
            now = time.perf_counter()
            if action is not None and action_at is not None and now >= action_at:
                action[1]()
                action_at = None
            for _ in range(STARTS_PER_TURN):
                if started == total or started - finished >= in_flight:
                    break
                due = start + started / rate if rate else now
                if due > now:
                    break
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                now = time.perf_counter()
                code = sock.connect_ex(address)
                started += 1
                max_lag = max(max_lag, now - due)
                connection = Connection(sock, now, now + timeout)
                selector.register(sock, selectors.EVENT_READ, connection)
                if code not in (0, errno.EINPROGRESS):
                    finish(connection, errno.errorcode.get(code, str(code)))
                else:
                    waiting.append(connection)
            now = time.perf_counter()
            while waiting and (waiting[0].sock is None or waiting[0].deadline <= now):
                finish(waiting.popleft(), "timeout")
            wait = 0.05
            if started < total and started - finished < in_flight:
                wait = max(0.0, start + started / rate - now) if rate else 0.0
            if waiting:
                wait = min(wait, waiting[0].deadline - now)
            if action_at is not None:
                wait = min(wait, action_at - now)
            for key, _ in selector.select(max(0.0, wait)):
                connection = key.data
                assert connection.sock is not None
                try:
                    data = connection.sock.recv(64)
                except BlockingIOError:
                    continue
                except OSError as e:
                    finish(connection, error_name(e))
                    continue
                if not data:
                    finish(connection, "closed")
                    continue
                connection.buffer += data
                if b"\n" in connection.buffer:
                    latencies.append((time.perf_counter() - connection.started) * 1000)
                    pid = int(connection.buffer.split(b"\n", 1)[0])
                    per_pid[pid] = per_pid.get(pid, 0) + 1
                    finish(connection, None)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        held_at_end = sum(1 for sock in held if still_open(sock))
        ended = at_end() if at_end is not None else None
    finally:
        for connection in waiting:
            if connection.sock is not None:
                connection.sock.close()
        for sock in held:
            reset(sock)
        selector.close()
    return Outcome(
        latencies_ms=latencies,
        per_pid=per_pid,
        errors=errors,
        wall_s=wall,
        client_cpu_share=cpu / wall if wall else 0.0,
        max_start_lag_ms=max_lag * 1000,
        held_at_end=held_at_end,
        at_end=ended,
    )


def still_open(sock: socket.socket) -> bool:
    """Whether the other end of a connected socket has not closed or reset it."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


# Numbers.


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The `q`-th percentile (nearest rank) of sorted `ordered`, or None if empty."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency_of(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 and max of `latencies_ms`, rounded to 0.01 ms."""
    ordered = sorted(latencies_ms)

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    return {
        "p50_ms": rounded(percentile(ordered, 50)),
        "p99_ms": rounded(percentile(ordered, 99)),
        "max_ms": rounded(ordered[-1] if ordered else None),
    }


def spread_of(counts: Sequence[int]) -> dict[str, Any]:
    """How evenly `counts` (connections per worker) are spread.

    ``max_min``: the largest count over the smallest (None if one is 0);
    ``cv``: the coefficient of variation (population standard deviation over
    the mean); ``max_dev_pct``: the largest deviation from the fair share
    (total / workers), in % of it.
    """
    total = sum(counts)
    if total == 0:
        return {"shares": None, "max_min": None, "cv": None, "max_dev_pct": None}
    fair = total / len(counts)
    return {
        "shares": [round(count / total, 3) for count in counts],
        "max_min": round(max(counts) / min(counts), 3) if min(counts) else None,
        "cv": round(statistics.pstdev(counts) / fair, 4),
        "max_dev_pct": round(max(abs(count - fair) for count in counts) / fair * 100, 2),
    }


def round_result(outcome: Outcome, pids: Sequence[int]) -> dict[str, Any]:
    """One run's numbers; counts are per worker, in the order they were started.

    ``held_open_at_end``: connections the client still held open once all had
    ended; ``board_open`` (``balanced``): the workers' open connections on the
    scoreboard at that moment, what the balancing rule last saw.
    """
    counts = [outcome.per_pid.get(pid, 0) for pid in pids]
    board = {} if outcome.at_end is None else {"board_open": outcome.at_end}
    return {
        "counts": counts,
        **spread_of(counts),
        **latency_of(outcome.latencies_ms),
        "ok": len(outcome.latencies_ms),
        "errors": dict(sorted(outcome.errors.items())),
        "wall_s": round(outcome.wall_s, 3),
        "connections_per_s": round(len(outcome.latencies_ms) / outcome.wall_s, 1)
        if outcome.wall_s
        else None,
        "client_cpu_share": round(outcome.client_cpu_share, 3),
        "max_start_lag_ms": round(outcome.max_start_lag_ms, 2),
        "held_open_at_end": outcome.held_at_end,
        **board,
    }


def summary(rounds: list[dict[str, Any]], latencies_ms: Sequence[float]) -> dict[str, Any]:
    """A strategy's numbers for one pattern over all its rounds."""
    devs = [r["max_dev_pct"] for r in rounds if r["max_dev_pct"] is not None]
    cvs = [r["cv"] for r in rounds if r["cv"] is not None]
    ratios = [r["max_min"] for r in rounds]
    return {
        "max_dev_pct_mean": round(statistics.fmean(devs), 2) if devs else None,
        "max_dev_pct_worst": max(devs) if devs else None,
        "cv_mean": round(statistics.fmean(cvs), 4) if cvs else None,
        "max_min_worst": None if None in ratios else max(ratios),
        "latency_all_rounds": latency_of(latencies_ms),
        "errors": sum(sum(r["errors"].values()) for r in rounds),
        "rounds": rounds,
    }


def rounds_lower(results: dict[str, dict[str, Any]], field: str, lower: str, other: str) -> str:
    """How many rounds `lower`'s `field` was below `other`'s in, as "in K of N rounds",
    comparing the runs of a round (they ran one after the other)."""
    pairs = list(zip(results[lower]["rounds"], results[other]["rounds"], strict=True))
    below = sum(
        1 for a, b in pairs if a[field] is not None and b[field] is not None and a[field] < b[field]
    )
    return f"in {below} of {len(pairs)} rounds"


def compare_latency(results: dict[str, dict[str, Any]], field: str) -> str:
    """One latency figure (``p50_ms``...) of every strategy, over all rounds and per round."""
    values = {s: results[s]["latency_all_rounds"][field] for s in STRATEGIES}
    figures = f"{field.removesuffix('_ms')} " + ", ".join(f"{s} {v}" for s, v in values.items())
    known = {s: v for s, v in values.items() if v is not None}
    if len(known) < len(values):
        return f"{figures} ms (not comparable)"
    lowest = min(known, key=lambda s: known[s])
    per_round = ", ".join(
        f"than {s} {rounds_lower(results, field, lowest, s)}" for s in known if s != lowest
    )
    top = max(known.values())
    if top - known[lowest] <= LATENCY_TOLERANCE * top:
        return f"{figures} ms (similar; lowest for {lowest}, lower {per_round})"
    return f"{figures} ms (lowest for {lowest} over all rounds; lower {per_round})"


def balancing_cost(results: dict[str, dict[str, Any]]) -> str:
    """The accept latency ``balanced`` adds to ``shared`` (the balancing rule's price)."""
    parts = []
    for field in ("p50_ms", "p99_ms"):
        a = results["shared"]["latency_all_rounds"][field]
        b = results["balanced"]["latency_all_rounds"][field]
        name = field.removesuffix("_ms")
        if a is None or b is None:
            parts.append(f"{name} not comparable")
        else:
            parts.append(
                f"{name} {b - a:+.2f} ms (balanced higher "
                f"{rounds_lower(results, field, 'shared', 'balanced')})"
            )
    return "balanced vs shared: " + ", ".join(parts)


def random_split_sd_pct(connections: int, workers: int) -> float:
    """The standard deviation of a worker's count, in % of its fair share, when each of
    `connections` goes to one of `workers` at random: sqrt((workers - 1) / connections).

    What an SO_REUSEPORT hash gives at best; spreads whose mean max deviations
    differ by less than this count as equally even.
    """
    return round(100 * math.sqrt((workers - 1) / connections), 2)


def conclude_pattern(pattern: str, results: dict[str, dict[str, Any]], noise_pct: float) -> str:
    """Which strategy spreads the connections most evenly (strategies whose mean max
    deviations are within `noise_pct` of the best, see `random_split_sd_pct`, count
    as about as even), and how their latencies compare."""
    devs = {s: results[s]["max_dev_pct_mean"] for s in STRATEGIES}
    if None in devs.values():
        spread = "spread not comparable (a strategy served no connection)"
    else:
        ranked = sorted(STRATEGIES, key=lambda s: devs[s])
        best = ranked[0]
        figures = (
            f"mean max deviation from the fair share {best} {devs[best]}% "
            f"(worst round {results[best]['max_dev_pct_worst']}%)"
        )
        for other in ranked[1:]:
            figures += (
                f", {other} {devs[other]}% (worst round {results[other]['max_dev_pct_worst']}%; "
                f"{best} more even {rounds_lower(results, 'max_dev_pct', best, other)})"
            )
        even = [s for s in ranked if devs[s] - devs[best] < noise_pct]
        if len(even) == 1:
            spread = f"{best} spreads most evenly: {figures}"
        else:
            names = ", ".join(even[:-1]) + f" and {even[-1]}"
            spread = (
                f"{names} spread about as evenly (within a random split's "
                f"{noise_pct}% standard deviation of the best), {best} the most: {figures}"
            )
    latency = "; ".join(compare_latency(results, f) for f in ("p50_ms", "p99_ms", "max_ms"))
    return f"{pattern}: {spread}. Accept latency: {latency}; {balancing_cost(results)}"


# The runs.


def open_counts(board: Scoreboard) -> list[int]:
    """Every worker slot's open connections on `board`."""
    return [int(board.get(slot, OPEN)) for slot in range(1, board.workers + 1)]


def measure(strategy: str, pattern: str, params: Params) -> dict[str, Any]:
    """One run against fresh workers; the round's numbers plus its raw latencies."""
    with running_workers(strategy, params) as workers:
        outcome = drive(
            workers.port,
            params.connections,
            in_flight=params.in_flight,
            rate=params.rate if pattern == "paced" else None,
            timeout=params.timeout,
            at_end=None if workers.board is None else partial(open_counts, workers.board),
        )
        died = [p.pid for p in workers.processes if p.poll() is not None]
    if died:
        raise BenchError(f"workers {died} died during the {strategy} {pattern} run")
    result = round_result(outcome, workers.pids)
    log(
        f"  {strategy:9} {pattern}: counts {result['counts']}, max dev {result['max_dev_pct']}%, "
        f"p50 {result['p50_ms']} p99 {result['p99_ms']} max {result['max_ms']} ms, "
        f"errors {sum(outcome.errors.values())}"
    )
    return {"result": result, "latencies_ms": outcome.latencies_ms}


def kill_result(outcome: Outcome, pids: Sequence[int], killed: int) -> dict[str, Any]:
    """What the client saw when worker `killed` (one of `pids`) was killed."""
    return {
        "connections": sum(outcome.per_pid.values()) + sum(outcome.errors.values()),
        "ok": len(outcome.latencies_ms),
        "failed": sum(outcome.errors.values()),
        "errors": dict(sorted(outcome.errors.items())),
        "served_by_killed_worker": outcome.per_pid.get(killed, 0),
        "counts_survivors": [outcome.per_pid.get(pid, 0) for pid in pids if pid != killed],
        **latency_of(outcome.latencies_ms),
    }


#: The kill check's cases: what is done to the first worker, in the output's words.
KILL_CASES = {
    "after_kill": "opened right after SIGKILL",
    "after_exit": "opened once the killed worker had exited",
    "queued_at_kill": "queued at a hung (SIGSTOPped) worker, which was then SIGKILLed",
}


def kill_case(strategy: str, case: str, params: Params) -> dict[str, Any]:
    """Fresh workers, the first one killed as `case` says, and `params.kill_connections`
    connections opened as fast as possible."""
    n = params.kill_connections
    action: tuple[float, Callable[[], None]] | None = None
    exit_ms = None
    with running_workers(strategy, params) as workers:
        victim = workers.processes[0]
        board = workers.board

        def retire() -> None:
            """Once the victim has exited, retire its slot (``balanced``), as
            chatservice's master does when a worker ends."""
            if board is not None:
                victim.wait()
                board.retire(1)

        def kill_and_retire() -> None:
            victim.kill()
            retire()

        if case == "after_kill":
            # SIGKILL; no waiting: the connections start at once (and its slot
            # stays live: the master has not noticed yet).
            victim.kill()
        elif case == "after_exit":
            killed = time.perf_counter()
            victim.kill()
            victim.wait()
            exit_ms = round((time.perf_counter() - killed) * 1000, 2)
            retire()
        else:
            victim.send_signal(signal.SIGSTOP)  # hung: accepts nothing, its queue fills
            wait_stopped(victim.pid)
            action = (QUEUE_SETTLE_S, kill_and_retire)
        outcome = drive(
            workers.port, n, in_flight=n, rate=None, timeout=params.timeout, action=action
        )
        victim.wait()
    result = kill_result(outcome, workers.pids, victim.pid)
    if exit_ms is not None:
        result["kill_to_exit_ms"] = exit_ms
    log(f"  {strategy:9} {case}: {result['ok']}/{n} ok, errors {result['errors'] or 'none'}")
    return result


def kill_check(strategy: str, params: Params) -> dict[str, Any]:
    """Every case of `KILL_CASES` for `strategy`."""
    return {case: kill_case(strategy, case, params) for case in KILL_CASES}


def conclude_kill(kill: dict[str, dict[str, Any]], n: int) -> str:
    """The kill check in a sentence."""
    parts = []
    for case, what in KILL_CASES.items():
        results = {s: kill[s][case] for s in STRATEGIES}
        ok = ", ".join(f"{s} {r['ok']}" for s, r in results.items())
        failures = ", ".join(f"{s} {r['errors'] or 'none'}" for s, r in results.items())
        p99 = ", ".join(f"{s} {r['p99_ms']}" for s, r in results.items())
        parts.append(
            f"of {n} connections {what}, succeeded: {ok} (failures: {failures}; p99 ms: {p99})"
        )
    return "; ".join(parts)


def read_sysctl(name: str) -> str | None:
    """A sysctl's value, or None if it cannot be read."""
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return None


def versions() -> dict[str, str]:
    """Versions of what is measured, for the output."""
    found = {"python": platform.python_version(), "kernel": platform.release()}
    try:
        found["twisted"] = metadata.version("twisted")
    except metadata.PackageNotFoundError:
        found["twisted"] = "not installed"
    return found


def run(params: Params) -> tuple[dict[str, Any], bool]:
    """The whole benchmark; the output document, and True (errors are in the notes)."""
    try:
        import twisted.internet.epollreactor  # noqa: F401  (the workers need it)
    except ImportError as e:
        raise BenchError(f"the workers need Twisted's epoll reactor: {e}") from None
    migrate = read_sysctl("net.ipv4.tcp_migrate_req")
    document: dict[str, Any] = {
        "bench": "accept",
        "params": {
            "workers": params.workers,
            "connections": params.connections,
            "rounds": params.rounds,
            "work_ms": params.work_ms,
            "paced_rate_per_s": params.rate,
            "in_flight": params.in_flight,
            "accept_cap": params.accept_cap or "twisted default",
            "timeout_s": params.timeout,
            "kill_connections": params.kill_connections,
            "backlog": BACKLOG,
            "cpus": len(os.sched_getaffinity(0)),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
            "tcp_migrate_req": migrate,
            "versions": versions(),
        },
    }
    noise = random_split_sd_pct(params.connections, params.workers)
    document["params"]["random_split_sd_pct"] = noise
    started = time.monotonic()
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {
        p: {s: [] for s in STRATEGIES} for p in PATTERNS
    }
    latencies: dict[str, dict[str, list[float]]] = {
        p: {s: [] for s in STRATEGIES} for p in PATTERNS
    }
    for round_number in range(1, params.rounds + 1):
        # Alternate the strategies within a round, and rotate their order: each
        # goes first, second, third in turn.
        shift = (round_number - 1) % len(STRATEGIES)
        order = STRATEGIES[shift:] + STRATEGIES[:shift]
        log(f"round {round_number}/{params.rounds}")
        for pattern in PATTERNS:
            for strategy in order:
                measured = measure(strategy, pattern, params)
                rounds[pattern][strategy].append(measured["result"])
                latencies[pattern][strategy] += measured["latencies_ms"]

    notes: list[str] = []
    for pattern in PATTERNS:
        results = {s: summary(rounds[pattern][s], latencies[pattern][s]) for s in STRATEGIES}
        conclusion = conclude_pattern(pattern, results, noise)
        document[pattern] = {**results, "conclusion": conclusion}
        for strategy in STRATEGIES:
            for i, r in enumerate(rounds[pattern][strategy], 1):
                where = f"{pattern} {strategy} round {i}"
                if r["errors"]:
                    notes.append(f"{where}: connections failed: {r['errors']}")
                if r["held_open_at_end"] != r["ok"]:
                    notes.append(
                        f"{where}: only {r['held_open_at_end']} of the {r['ok']} connections "
                        "served were still open at the end: a worker closed some"
                    )
                if "board_open" in r and r["board_open"] != r["counts"]:
                    notes.append(
                        f"{where}: the scoreboard counted {r['board_open']} open connections "
                        f"per worker at the end, the client {r['counts']}"
                    )
                if r["client_cpu_share"] > CLIENT_BUSY:
                    notes.append(
                        f"{where}: client CPU share {r['client_cpu_share']} > {CLIENT_BUSY}: "
                        "the client may have been the bottleneck"
                    )
                if pattern == "paced" and r["max_start_lag_ms"] > PACE_LAG_MS:
                    notes.append(
                        f"{where}: a connection started {r['max_start_lag_ms']} ms late: "
                        "the arrivals were not steady (the client was held up, or the "
                        "in-flight limit was reached)"
                    )

    if params.kill_connections and params.workers >= 2:
        log(f"kill check: {params.kill_connections} connections, one of {params.workers} killed")
        kill: dict[str, Any] = {s: kill_check(s, params) for s in STRATEGIES}
        kill["conclusion"] = conclude_kill(kill, params.kill_connections)
        document["kill"] = kill
    elif params.kill_connections:
        notes.append("kill check skipped: it needs --workers 2 or more")
    if migrate not in (None, "0"):
        notes.append(
            f"net.ipv4.tcp_migrate_req is {migrate}: the kernel moves connections queued at "
            "a closed SO_REUSEPORT listener to another one, which changes the kill check"
        )

    conclusions = [document[p]["conclusion"] for p in PATTERNS]
    if "kill" in document:
        conclusions.append(f"kill: {document['kill']['conclusion']}")
    load = os.getloadavg()[0]
    document["params"]["load_average_1m_at_end"] = round(load, 2)
    before = document["params"]["load_average_1m_at_start"]
    if before > BUSY_LOAD:
        notes.append(
            f"load average {before:.2f} on {document['params']['cpus']} CPUs before the "
            "benchmark started: other work competed with the workers for CPU, so "
            "latencies (p99 above all) and the spread of shared are noisy"
        )
    document["conclusion"] = " | ".join(conclusions)
    document["notes"] = notes
    document["wall_s"] = round(time.monotonic() - started, 1)
    return document, True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with ``--child``, be a worker); the exit status."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["--child"]:
        return child(arguments[1:])
    params = parse_args(arguments)
    return main_of(lambda: run(params), log)


if __name__ == "__main__":
    sys.exit(main())
