#!/usr/bin/env python3
"""Broadcast benchmark: chatservice's ``/chat`` rooms against a minimal Autobahn broadcast.

Throughput: 1000 subscribers and 256 senders join one room over the JSON
dialect; each sender sends a chat message, waits until it comes back to
itself, and sends the next (at most 8 a second each, under chatservice's rate
limit), and every member counts the messages it receives and their latency
from send to receive.  After a warmup it measures: deliveries per second (to
all members), room messages per second, p50/p99 latency.  The load generator
is Node.js with a minimal WebSocket client of its own
(bench/broadcast_loadgen.mjs), faster than the server, so the server is the
bottleneck; both CPU shares are reported to show it.
The same load runs against `reference_broadcast.py` (Autobahn, JSON and a
prepared frame sent to every member, nothing else) in the same run, and the
result is chatservice's throughput as a ratio of the reference's: features must
not cost broadcast throughput (target: ratio >= 1.0).

What browsers get: with ``--deflate SHARE`` that share of the members offers
permessage-deflate as Chromium does (and decodes what comes compressed), and
with ``--message-size N`` the senders' texts are about N characters of chat, long
enough to be compressed (chatservice sends events under 256 bytes plain).
``--compare-deflate`` measures chatservice alone, uncompressed (share 0) and
with every member compressing (share 1), in alternating rounds, and reports
``deflate_ratio_per_server_cpu``: the compressed run's deliveries per second of
server CPU over the uncompressed run's (target: >= 0.8), and the bytes on the
wire per delivery of each.  (The reference is left out there: Autobahn's
prepared messages fall back to compressing once per member.)

What scaling out costs: ``--redis`` measures chatservice alone, one embedded
instance against the same room's members split over two instances on one
redis-server (started here, on the servers' CPU), in alternating rounds, and
reports ``redis_ratio_per_server_cpu``: deliveries per second of the two
instances' CPU over the embedded instance's (target: >= 0.7), besides Redis's
own CPU share and the deliveries per second of all three processes' CPU.

Latency (``--phase latency``, chatservice alone, not part of ``all``): what
users feel at a load the server can carry, rather than the queueing of a
saturated server.  Senders send room messages on a fixed schedule (open loop:
never waiting for their own to come back) at a fixed total rate into one room of
``--latency-members`` 1000 members (senders included), spread over
``--latency-senders`` 100 senders or more, so that none sends over 5 a second
(chatservice allows 10 sustained, 30 in a burst).  Each message carries its
send time, and every member records each delivery's latency; the load
generator is one process, so send and receive times come from one clock.  Two
levels, each on a fresh server for ``--warmup`` + ``--duration`` seconds:
``fixed`` at ``--latency-rate`` (100) room messages a second, and ``half_max``
at half the maximum, which a throughput run (closed loop, as above, with the
same members: the best of ``--rounds``) measures first, unless ``--latency-max
RATE`` gives it.  Per level: p50/p99/p99.9/max delivery latency, messages
offered and delivered per second, deliveries missing (errors), both CPU shares,
and ``meets_target``: p99 at most 20 ms with no errors (the target is the
``half_max`` level's).

Memory: 10,000 idle connections joined to rooms of 100 members each, to each
server in turn; the server's resident memory before connecting and once all
have joined and things have settled gives KiB per connection (target for
chatservice: at most 10 KiB).

chatservice allows 100 connections per client address, so the load generator
spreads its connections over source addresses 127.0.X.Y, 90 on each.  The
open-files limit is raised to the hard limit for the servers and the load
generator.  With two or more CPUs and ``taskset``, the server runs on CPU 0 and
the load generator on CPU 1.  Throughput rounds alternate reference,
chatservice; the best run of each counts.  One JSON document goes to stdout,
progress to stderr.

    .venv/bin/python bench/broadcast_bench.py [--duration 10] [--warmup 3]
        [--subscribers 1000] [--senders 256] [--sender-rate 8] [--rounds 2]
        [--memory-connections 10000] [--phase all|throughput|memory|latency]
        [--only ours|reference] [--deflate SHARE] [--message-size N]
        [--compare-deflate] [--redis] [--latency-rate 100] [--latency-max RATE]
        [--latency-members 1000] [--latency-senders 100]

Exit status 0 whether or not the targets are met (a benchmark is never pass or
fail); 1 if the benchmark could not run, or ran but the load generator saw
errors (chat-errors, dropped connections, messages missing), so its numbers
do not count; 130 when interrupted.  Every process it starts is stopped before
it exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    LOADGEN_BUSY,
    MEASURED,
    MEASURING,
    SATURATED,
    BenchError,
    Pinning,
    ServerCpuWindow,
    chatservice_command,
    choose_pinning,
    environment,
    find_node,
    main_of,
    notes_on,
    raise_open_files_limit,
    ratio_of,
    run_loadgen,
    running_chatservice,
    running_redis,
    running_server,
)

LOADGEN = BENCH_DIR / "broadcast_loadgen.mjs"
REFERENCE = BENCH_DIR / "reference_broadcast.py"

#: chatservice's deliveries per second must be at least this fraction of the reference's.
TARGET = 1.0
#: With every member compressing, deliveries per server-CPU-second must be at
#: least this fraction of the uncompressed run's.
DEFLATE_TARGET = 0.8
#: With --redis, two instances' deliveries per server-CPU-second must be at
#: least this fraction of one embedded instance's.
REDIS_TARGET = 0.7
#: --workers N: deliveries per second of server CPU (master, workers, Redis) over one
#: process's, at least.
WORKERS_TARGET = 0.85
#: chatservice's memory per idle joined connection must be at most this, in KiB.
TARGET_KIB = 10.0
#: Members per room in the memory phase.
MEMORY_ROOM_SIZE = 100
#: Connections per source address: under chatservice's 100 per client address.
PER_ADDRESS = 90
#: Seconds the server is left alone before each memory sample.
MEMORY_SETTLE = 3.0
#: Line broadcast_loadgen.mjs writes on stderr once all its members have joined.
JOINED = "loadgen: joined"
#: Senders close to this fraction of their rate cap may be what limits throughput.
SENDERS_CAPPED = 0.9
#: Open files a process needs beyond one per connection.
SPARE_FILES = 100
#: Beyond warmup + duration: connecting and joining (120 s in
#: broadcast_loadgen.mjs), draining (5 s), slack.
LOADGEN_SLACK = 160.0

#: Server names as given to --only, and as keys of the output.
SERVERS = {"reference": "reference", "ours": "chatservice"}
#: "all" is throughput and memory: latency (--phase latency) runs only when asked.
PHASES = ("all", "throughput", "memory", "latency")

#: Latency phase: p99 delivery latency at LATENCY_MAX_SHARE of the maximum must be at most this.
LATENCY_TARGET_P99_MS = 20.0
#: The second latency level: this fraction of the maximum room messages per second.
LATENCY_MAX_SHARE = 0.5
#: Most messages per second one latency sender sends: half chatservice's
#: sustained 10 a second, so a late timer's catch-up never nears its limit.
#: Above senders x this, a level gets more senders (and fewer subscribers).
LATENCY_SENDER_CAP = 5.0
#: Notes: the load generator fell behind its schedule (p99 of how late its sends were).
LATENCY_SEND_LAG_MS = 5.0
#: Notes: the machine spent more than this share of a core outside the server and
#: the load generator during a latency level (other programs compete with both).
LATENCY_OTHER_BUSY = 0.2
#: Notes: the offered rate fell short of the level's rate by more than this fraction.
LATENCY_RATE_SHORTFALL = 0.02


@dataclass(frozen=True)
class Params:
    """What one benchmark run does, from the command line."""

    duration: float
    warmup: float
    subscribers: int
    senders: int
    sender_rate: float
    rounds: int
    memory_connections: int
    phase: str
    only: str | None
    deflate: float
    message_size: int
    compare_deflate: bool
    redis: bool = False
    latency_rate: float = 100.0
    latency_max: float | None = None
    latency_members: int = 1000
    latency_senders: int = 100
    workers: int = 0

    @property
    def throughput(self) -> bool:
        """Whether the throughput phase runs."""
        return self.phase in ("all", "throughput")

    @property
    def memory(self) -> bool:
        """Whether the memory phase runs (not with --redis)."""
        return self.phase in ("all", "memory") and not self.redis

    @property
    def latency(self) -> bool:
        """Whether the latency phase runs (only when asked for: not in "all")."""
        return self.phase == "latency"


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"broadcast_bench: {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> Params:
    """The command line, checked."""
    parser = argparse.ArgumentParser(
        description="Broadcast benchmark: chatservice /chat against a minimal Autobahn broadcast.",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per run (default: 10)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        help="seconds of load before measuring, not counted (default: 3)",
    )
    parser.add_argument(
        "--subscribers",
        type=int,
        default=1000,
        help="members of the room that only receive (default: 1000)",
    )
    parser.add_argument(
        "--senders",
        type=int,
        default=256,
        help="members of the room that also send, each in a closed loop (default: 256)",
    )
    parser.add_argument(
        "--sender-rate",
        type=float,
        default=8.0,
        help="most messages per second each sender sends; chatservice allows 10 (default: 8)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="throughput runs of each server, alternating; the best counts (default: 2)",
    )
    parser.add_argument(
        "--memory-connections",
        type=int,
        default=10_000,
        help="idle joined connections in the memory phase (default: 10000)",
    )
    parser.add_argument(
        "--phase",
        choices=PHASES,
        default="all",
        help="what to measure; all is throughput and memory (default: all)",
    )
    parser.add_argument("--only", choices=sorted(SERVERS), help="run only this server (no ratio)")
    parser.add_argument(
        "--deflate",
        type=float,
        default=0.0,
        help="share of the members offering permessage-deflate, 0 to 1 (default: 0)",
    )
    parser.add_argument(
        "--message-size",
        type=int,
        default=0,
        help="senders' texts of about this many characters of chat (default: 0, short)",
    )
    parser.add_argument(
        "--compare-deflate",
        action="store_true",
        help="chatservice uncompressed against every member compressing (no reference)",
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="chatservice embedded against two instances on one Redis (throughput only)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=100.0,
        help="latency phase: the fixed level, room messages per second (default: 100)",
    )
    parser.add_argument(
        "--latency-max",
        type=float,
        metavar="RATE",
        help="latency phase: the maximum room messages per second, instead of measuring it",
    )
    parser.add_argument(
        "--latency-members",
        type=int,
        default=1000,
        help="latency phase: members of the room, senders included (default: 1000)",
    )
    parser.add_argument(
        "--latency-senders",
        type=int,
        default=100,
        help=f"latency phase: senders, at least; more where a level needs them to "
        f"send at most {LATENCY_SENDER_CAP:g}/s each (default: 100)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="compare chatservice as one process with --workers N on a redis-server started "
        "here: throughput pinned (per second of server CPU, Redis included) and unpinned "
        "(raw totals); with --phase latency, the latency of each",
    )
    args = parser.parse_args(argv)
    if args.workers and (
        args.workers < 2
        or args.only
        or args.compare_deflate
        or args.redis
        or args.phase not in ("throughput", "latency")
    ):
        parser.error(
            "--workers N needs N >= 2, --phase throughput or latency, "
            "and no --only, --compare-*, --redis"
        )
    if args.phase == "latency" and (args.only == "reference" or args.compare_deflate or args.redis):
        parser.error(
            "--phase latency measures chatservice alone: no --only reference, --compare-*, --redis"
        )
    if args.latency_rate <= 0 or (args.latency_max is not None and args.latency_max <= 0):
        parser.error("--latency-rate and --latency-max must be > 0")
    if not 1 <= args.latency_senders < args.latency_members:
        parser.error("--latency-senders must be >= 1 and below --latency-members")
    if args.redis and (args.only or args.compare_deflate or args.phase == "memory"):
        parser.error("--redis compares chatservice embedded and on Redis: no --only, --compare-*")
    if not 0 <= args.deflate <= 1 or args.message_size < 0:
        parser.error("--deflate must be from 0 to 1 and --message-size >= 0")
    if args.compare_deflate and (args.only or args.deflate):
        parser.error(
            "--compare-deflate runs chatservice at --deflate 0 and 1: no --only, --deflate"
        )
    if args.duration <= 0 or args.warmup < 0 or args.sender_rate <= 0:
        parser.error("--duration and --sender-rate must be > 0 and --warmup >= 0")
    if args.subscribers < 0:
        parser.error("--subscribers must be >= 0")
    if args.senders < 1 or args.rounds < 1 or args.memory_connections < 1:
        parser.error("--senders, --rounds and --memory-connections must be >= 1")
    return Params(
        duration=args.duration,
        warmup=args.warmup,
        subscribers=args.subscribers,
        senders=args.senders,
        sender_rate=args.sender_rate,
        rounds=args.rounds,
        memory_connections=args.memory_connections,
        phase=args.phase,
        only=args.only,
        deflate=args.deflate,
        message_size=args.message_size,
        compare_deflate=args.compare_deflate,
        redis=args.redis,
        latency_rate=args.latency_rate,
        latency_max=args.latency_max,
        latency_members=args.latency_members,
        latency_senders=args.latency_senders,
        workers=args.workers,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_command(name: str) -> list[str]:
    """The command that starts server `name` on a free loopback port."""
    if name == "chatservice":
        # Default options (log level info, limits) but a fresh in-memory
        # database, so every run starts with empty rooms.
        return chatservice_command("--database", ":memory:")
    return [sys.executable, str(REFERENCE)]


def loadgen_command(
    node: str, port: int | Sequence[int], pinning: Pinning, *options: str
) -> list[str]:
    """The load generator's command line against the server on `port` (or instances on ports)."""
    ports = [port] if isinstance(port, int) else list(port)
    url = ",".join(f"ws://127.0.0.1:{p}/chat" for p in ports)
    return [
        *pinning.loadgen,
        node,
        str(LOADGEN),
        f"--url={url}",
        f"--per-address={PER_ADDRESS}",
        *options,
    ]


def rss_kib(pid: int) -> int:
    """Resident memory of process `pid`, in KiB (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS in /proc/{pid}/status")


class CpuWindows:
    """A `LineWatcher`: the CPU shares of groups of processes, like `ServerCpuWindow`."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self._windows = {
            label: [ServerCpuWindow(pid) for pid in pids] for label, pids in groups.items()
        }

    def __call__(self, line: str, process: subprocess.Popen[str]) -> bool:
        taken = [w(line, process) for ws in self._windows.values() for w in ws]
        return any(taken)

    def share(self, label: str) -> float | None:
        shares = [w.share for w in self._windows[label]]
        return None if None in shares else round(sum(s for s in shares if s is not None), 3)


def measure_on_redis(node: str, params: Params, pinning: Pinning, deflate: float) -> dict[str, Any]:
    """One throughput run with the room's members split over two instances on one Redis."""
    with (
        tempfile.TemporaryDirectory(prefix="broadcast-bench-redis-") as tmp,
        running_redis(pinning, Path(tmp)) as (redis_pid, url),
    ):
        command = chatservice_command("--database", ":memory:", "--redis", url)
        with (
            running_server("instance-1", command, pinning, Path(tmp)) as (pid1, port1),
            running_server("instance-2", command, pinning, Path(tmp)) as (pid2, port2),
        ):
            time.sleep(1.0)  # both connected to Redis
            windows = CpuWindows({"servers": [pid1, pid2], "redis": [redis_pid]})
            result = run_loadgen(
                throughput_command(node, (port1, port2), params, pinning, deflate),
                params.warmup + params.duration + LOADGEN_SLACK,
                windows,
            )
    share, redis_share = windows.share("servers"), windows.share("redis")
    if share is None or redis_share is None:
        raise BenchError("the load generator never announced its measured window")
    result["loadgen_cpu_share"] = result.pop("cpu_share")
    result["server_cpu_share"] = share
    result["redis_cpu_share"] = redis_share
    result["deliveries_per_server_cpu_s"] = (
        round(result["deliveries_per_s"] / share, 1) if share else None
    )
    result["deliveries_per_cpu_s_with_redis"] = round(
        result["deliveries_per_s"] / (share + redis_share), 1
    )
    return result


def throughput_command(
    node: str, ports: int | Sequence[int], params: Params, pinning: Pinning, deflate: float
) -> list[str]:
    return loadgen_command(
        node,
        ports,
        pinning,
        "--mode=throughput",
        f"--subscribers={params.subscribers}",
        f"--senders={params.senders}",
        f"--rate={params.sender_rate}",
        f"--warmup={params.warmup}",
        f"--duration={params.duration}",
        f"--deflate={deflate}",
        f"--message-size={params.message_size}",
    )


@contextmanager
def serving(
    name: str, pinning: Pinning, workdir: Path, command: Sequence[str] | None, workers: int
) -> Iterator[tuple[list[int], int]]:
    """Server `name` running (see `measure_throughput`): its processes and port."""
    if workers > 1:
        with running_chatservice(
            name, pinning, workdir, "--database", ":memory:", workers=workers
        ) as service:
            yield service.all_pids, service.port
    else:
        with running_server(name, command or server_command(name), pinning, workdir) as (
            pid,
            port,
        ):
            yield [pid], port


def measure_throughput(
    name: str,
    node: str,
    params: Params,
    pinning: Pinning,
    deflate: float,
    command: Sequence[str] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """One throughput run: start server `name` (with `command`, by default `server_command`'s;
    chatservice with `workers` > 1: ``--workers`` on a redis-server), load it (`deflate`: the
    share offering it), stop it.

    Returns:
        The load generator's result plus ``server_cpu_share`` (every process of the
        server, Redis included) and ``deliveries_per_server_cpu_s``.
    """
    with tempfile.TemporaryDirectory(prefix=f"broadcast-bench-{name}-") as tmp:
        with serving(name, pinning, Path(tmp), command, workers) as (pids, port):
            window = ServerCpuWindow(pids)
            result = run_loadgen(
                throughput_command(node, port, params, pinning, deflate),
                params.warmup + params.duration + LOADGEN_SLACK,
                window,
            )
    if window.share is None:
        raise BenchError("the load generator never announced its measured window")
    result["loadgen_cpu_share"] = result.pop("cpu_share")
    result["server_cpu_share"] = window.share
    # Throughput per second of server CPU: what another busy process on the
    # server's CPU does not change (it only takes time away from the server).
    result["deliveries_per_server_cpu_s"] = (
        round(result["deliveries_per_s"] / window.share, 1) if window.share else None
    )
    return result


class MemorySampler:
    """A `LineWatcher` for the memory phase: samples the server once all have joined.

    On the JOINED line it waits MEMORY_SETTLE seconds, reads the server's
    resident memory and closes the load generator's stdin, which releases
    the connections.

    Attributes:
        rss_kib: The server's resident memory then, in KiB; None until sampled.
    """

    def __init__(self, server_pid: int) -> None:
        self._pid = server_pid
        self.rss_kib: int | None = None

    def __call__(self, line: str, process: subprocess.Popen[str]) -> bool:
        if line != JOINED:
            return False
        time.sleep(MEMORY_SETTLE)
        self.rss_kib = rss_kib(self._pid)
        assert process.stdin is not None
        process.stdin.close()
        return True


def measure_memory(
    name: str, node: str, params: Params, pinning: Pinning, deflate: float
) -> dict[str, Any]:
    """The memory phase for server `name`: RSS before and with idle joined connections.

    Returns:
        The load generator's result plus ``rss_before_kib``, ``rss_after_kib``
        and ``kib_per_conn``.
    """
    with (
        tempfile.TemporaryDirectory(prefix=f"broadcast-bench-{name}-") as tmp,
        running_server(name, server_command(name), pinning, Path(tmp)) as (pid, port),
    ):
        time.sleep(MEMORY_SETTLE)
        before = rss_kib(pid)
        command = loadgen_command(
            node,
            port,
            pinning,
            "--mode=memory",
            f"--connections={params.memory_connections}",
            f"--room-size={MEMORY_ROOM_SIZE}",
            f"--deflate={deflate}",
        )
        sampler = MemorySampler(pid)
        result = run_loadgen(command, MEMORY_SETTLE + LOADGEN_SLACK, sampler)
    if sampler.rss_kib is None:
        raise BenchError("the load generator never announced that all had joined")
    return {
        **result,
        "rss_before_kib": before,
        "rss_after_kib": sampler.rss_kib,
        "kib_per_conn": round((sampler.rss_kib - before) / result["connections"], 2),
    }


def throughput_notes(name: str, result: dict[str, Any], params: Params) -> list[str]:
    """Warnings about a throughput result: the general ones, and senders at their cap."""
    notes = notes_on(name, result)
    cap = params.senders * params.sender_rate
    if result["room_messages_per_s"] >= SENDERS_CAPPED * cap:
        notes.append(
            f"{name}: {result['room_messages_per_s']} room messages/s is close to the senders' "
            f"cap of {cap:g}/s: the senders may have limited the throughput (use more --senders)"
        )
    return notes


@dataclass(frozen=True)
class LatencyLevel:
    """One load level of the latency phase.

    Attributes:
        name: Its key in the output (``fixed``, ``half_max``).
        rate: Room messages per second offered, over all senders.
        members: Members of the room, senders included.
        senders: How many of them send, each ``rate / senders`` a second.
    """

    name: str
    rate: float
    members: int
    senders: int


def latency_level(name: str, rate: float, params: Params) -> LatencyLevel:
    """Level `name` at `rate` room messages per second: --latency-senders senders, or more if
    that many would each send over LATENCY_SENDER_CAP a second.

    Raises:
        BenchError: The room has too few members for the senders `rate` needs.
    """
    senders = max(params.latency_senders, math.ceil(rate / LATENCY_SENDER_CAP))
    if senders >= params.latency_members:
        raise BenchError(
            f"latency level {name}: {rate:g} room messages/s needs {senders} senders at "
            f"{LATENCY_SENDER_CAP:g}/s each, and the room has {params.latency_members} members"
        )
    return LatencyLevel(name, round(rate, 1), params.latency_members, senders)


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine have been busy (not idle or waiting for I/O),
    from the first line of /proc/stat (proc(5))."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    # user nice system idle iowait irq softirq steal (guest time is in user already)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class MachineCpuWindow:
    """A `LineWatcher`: the whole machine's busy CPU time between MEASURING and MEASURED.

    Attributes:
        share: Busy CPU time over wall time between the two lines (1.0 is one
            full core; at most the number of CPUs), or None until both have come.
    """

    def __init__(self) -> None:
        self._start: tuple[float, float] | None = None
        self.share: float | None = None

    def __call__(self, line: str, process: subprocess.Popen[str]) -> bool:
        if line == MEASURING:
            self._start = (time.monotonic(), machine_busy_seconds())
        elif line == MEASURED and self._start is not None:
            wall = time.monotonic() - self._start[0]
            self.share = round((machine_busy_seconds() - self._start[1]) / wall, 3)
        else:
            return False
        return True


def latency_command(
    node: str, ports: int | Sequence[int], level: LatencyLevel, params: Params, pinning: Pinning
) -> list[str]:
    """The load generator's command line for one latency level."""
    return loadgen_command(
        node,
        ports,
        pinning,
        "--mode=latency",
        f"--subscribers={level.members - level.senders}",
        f"--senders={level.senders}",
        f"--total-rate={level.rate}",
        f"--warmup={params.warmup}",
        f"--duration={params.duration}",
        f"--deflate={params.deflate}",
        f"--message-size={params.message_size}",
    )


def load_latency(
    node: str,
    server_pids: Sequence[int],
    ports: Sequence[int],
    level: LatencyLevel,
    params: Params,
    pinning: Pinning,
) -> dict[str, Any]:
    """One latency level against servers already listening on `ports` (members take turns
    between them); `server_pids`: the processes whose CPU counts as the server's.

    Returns:
        The load generator's result plus ``loadgen_cpu_share``, ``server_cpu_share``
        (all of `server_pids`, summed) and ``meets_target``.
    """
    windows = CpuWindows({"servers": list(server_pids)})
    machine = MachineCpuWindow()

    def watch(line: str, process: subprocess.Popen[str]) -> bool:
        return any([windows(line, process), machine(line, process)])

    result = run_loadgen(
        latency_command(node, ports, level, params, pinning),
        params.warmup + params.duration + LOADGEN_SLACK,
        watch,
    )
    share = windows.share("servers")
    if share is None or machine.share is None:
        raise BenchError("the load generator never announced its measured window")
    result["loadgen_cpu_share"] = result.pop("cpu_share")
    result["server_cpu_share"] = share
    result["other_cpu_share"] = round(
        max(0.0, machine.share - share - result["loadgen_cpu_share"]), 3
    )
    p99 = result["p99_ms"]
    result["meets_target"] = (
        result["errors"] == 0 and p99 is not None and p99 <= LATENCY_TARGET_P99_MS
    )
    return result


def measure_latency(
    node: str,
    level: LatencyLevel,
    params: Params,
    pinning: Pinning,
    command: Sequence[str] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """One latency level: start chatservice with `command` (by default `server_command`'s;
    `workers` > 1: ``--workers`` on a redis-server), load it (`load_latency`), stop it."""
    with (
        tempfile.TemporaryDirectory(prefix="broadcast-bench-latency-") as tmp,
        serving("chatservice", pinning, Path(tmp), command, workers) as (pids, port),
    ):
        return load_latency(node, pids, [port], level, params, pinning)


def measure_max_rate(
    node: str,
    params: Params,
    pinning: Pinning,
    command: Sequence[str] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """chatservice's maximum for the latency room: the best of --rounds throughput runs
    (closed loop, the server saturated) with --latency-members members, --senders of
    them sending (fewer if the room is smaller); `command` as for `measure_throughput`.

    Returns:
        The best run's result plus ``runs_room_messages_per_s``.
    """
    senders = min(params.senders, params.latency_members)
    room = dataclasses.replace(
        params, subscribers=params.latency_members - senders, senders=senders
    )
    runs = []
    for round_number in range(1, params.rounds + 1):
        log(
            f"latency: maximum, round {round_number}/{params.rounds}: throughput with "
            f"{params.latency_members} members ({params.warmup:g} s warmup + {params.duration:g} s)"
        )
        result = measure_throughput(
            "chatservice", node, room, pinning, params.deflate, command, workers
        )
        log(
            f"  {result['room_messages_per_s']:.1f} room messages/s, "
            f"errors {result['errors']}, CPU server {result['server_cpu_share']} "
            f"loadgen {result['loadgen_cpu_share']}"
        )
        runs.append(result)
    best = max(runs, key=lambda r: r["room_messages_per_s"])
    return {**best, "runs_room_messages_per_s": [r["room_messages_per_s"] for r in runs]}


def latency_notes(name: str, result: dict[str, Any]) -> list[str]:
    """Warnings about a latency level: the server saturated (so the latency is mostly
    queueing), the load generator busy or behind, the rate not offered, errors."""
    notes = []
    if result["server_cpu_share"] >= SATURATED:
        notes.append(
            f"{name}: server CPU share {result['server_cpu_share']} >= {SATURATED} at "
            f"{result['rate_per_s']:g} room messages/s: saturated, so the latency is mostly "
            "queueing (or something else busy on its CPU)"
        )
    if result["loadgen_cpu_share"] > LOADGEN_BUSY:
        notes.append(
            f"{name}: load generator CPU share {result['loadgen_cpu_share']} > {LOADGEN_BUSY}: "
            "its own queueing may be part of the latency"
        )
    if result["other_cpu_share"] > LATENCY_OTHER_BUSY:
        notes.append(
            f"{name}: {result['other_cpu_share']} of a core busy outside the server and the "
            f"load generator (> {LATENCY_OTHER_BUSY}): other work on the machine may have "
            "delayed either, and so added latency"
        )
    lag = result["send_lag_p99_ms"]
    if lag is not None and lag > LATENCY_SEND_LAG_MS:
        notes.append(
            f"{name}: the load generator's sends were up to {lag} ms late on their schedule "
            f"(p99 > {LATENCY_SEND_LAG_MS:g} ms): it was busy, so its receive times may be late too"
        )
    if (
        result["room_messages_delivered_per_s"]
        < (1 - LATENCY_RATE_SHORTFALL) * result["offered_per_s"]
    ):
        notes.append(
            f"{name}: {result['room_messages_delivered_per_s']} room messages/s delivered of "
            f"{result['offered_per_s']} offered: the server fell behind, and the latency grew "
            "through the window"
        )
    if result["offered_per_s"] < (1 - LATENCY_RATE_SHORTFALL) * result["rate_per_s"]:
        notes.append(
            f"{name}: offered {result['offered_per_s']} room messages/s of {result['rate_per_s']}"
        )
    if result["errors"]:
        notes.append(
            f"{name}: the load generator saw {result['errors']} errors "
            f"({result['deliveries_missing']} deliveries missing)"
        )
    return notes


def latency_phase(
    node: str,
    params: Params,
    pinning: Pinning,
    command: Sequence[str] | None = None,
    workers: int = 1,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """The latency phase: chatservice's delivery latency at a fixed rate and at
    LATENCY_MAX_SHARE of its maximum (measured first, unless --latency-max).
    `command` starts chatservice for every run (by default `server_command`'s).

    Returns:
        The output's ``latency`` section, every run's result (for errors), and notes.
    """
    section: dict[str, Any] = {
        "members": params.latency_members,
        "target_p99_ms": LATENCY_TARGET_P99_MS,
        "max_share": LATENCY_MAX_SHARE,
    }
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    if params.latency_max is not None:
        maximum = params.latency_max
        section["max_source"] = "--latency-max"
    else:
        max_run = measure_max_rate(node, params, pinning, command, workers)
        maximum = max_run["room_messages_per_s"]
        section["max_source"] = "measured"
        section["max_run"] = max_run
        results.append(max_run)
        notes += throughput_notes("latency max_run", max_run, params)
    section["max_room_messages_per_s"] = maximum
    levels = [
        latency_level("fixed", params.latency_rate, params),
        latency_level("half_max", LATENCY_MAX_SHARE * maximum, params),
    ]
    section["levels"] = {}
    for level in levels:
        log(
            f"latency: {level.name}, {level.rate:g} room messages/s from {level.senders} of "
            f"{level.members} members ({params.warmup:g} s warmup + {params.duration:g} s)"
        )
        result = measure_latency(node, level, params, pinning, command, workers)
        result["share_of_max"] = round(level.rate / maximum, 3) if maximum else None
        log(
            f"  p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
            f"p99.9 {result['p999_ms']} ms, max {result['max_ms']} ms; "
            f"{result['offered_per_s']} offered/s, {result['deliveries_per_s']:.0f} deliveries/s, "
            f"missing {result['deliveries_missing']}, errors {result['errors']}, "
            f"CPU server {result['server_cpu_share']} loadgen {result['loadgen_cpu_share']} "
            f"other {result['other_cpu_share']}"
        )
        section["levels"][level.name] = result
        results.append(result)
        notes += latency_notes(f"latency {level.name}", result)
    section["meets_target"] = section["levels"]["half_max"]["meets_target"]
    return section, results, notes


def workers_phase(
    node: str, params: Params, pinning: Pinning
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """``--workers N``: chatservice as one process against N workers on Redis.

    Throughput (--phase throughput) in alternating rounds, pinned (servers and
    Redis on the server's CPU: deliveries per second of their summed CPU) and
    unpinned (raw totals, the load generator competing for the same 2 cores);
    or latency (--phase latency) of each, pinned.

    Returns:
        The output's ``workers`` section, every run's result (for errors), and notes.
    """
    kinds = {"one_process": 1, "workers": params.workers}
    section: dict[str, Any] = {"workers": params.workers}
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    if params.latency:
        for name, workers in kinds.items():
            log(f"latency: {name} ({workers})")
            section[name], more, more_notes = latency_phase(node, params, pinning, workers=workers)
            results += more
            notes += [f"{name}: {n}" for n in more_notes]
        section["meets_target"] = all(section[name]["meets_target"] for name in kinds)
        return section, results, notes
    placements = (("pinned", pinning), ("unpinned", Pinning((), (), "none (raw totals)")))
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_number in range(1, params.rounds + 1):
        for placed, how in placements:
            for name, workers in kinds.items():
                log(
                    f"round {round_number}/{params.rounds}: {name} ({workers}), {placed}, "
                    f"{params.subscribers + params.senders} members"
                )
                result = measure_throughput(
                    "chatservice", node, params, how, params.deflate, workers=workers
                )
                log(
                    f"  {result['deliveries_per_s']:.0f} deliveries/s, "
                    f"{result['deliveries_per_server_cpu_s']} per server CPU-s, "
                    f"p50 {result['p50_ms']} ms, errors {result['errors']}, "
                    f"CPU server {result['server_cpu_share']} "
                    f"loadgen {result['loadgen_cpu_share']}"
                )
                runs.setdefault((placed, name), []).append(result)
                results.append(result)
    for placed, field in (
        ("pinned", "deliveries_per_server_cpu_s"),
        ("unpinned", "deliveries_per_s"),
    ):
        part: dict[str, Any] = {}
        for name in kinds:
            mine = runs[(placed, name)]
            part[name] = {
                **max(mine, key=lambda r: r[field]),
                f"runs_{field}": [r[field] for r in mine],
            }
        ratio = ratio_of(part, field, "workers", "one_process")
        part["ratio"] = ratio
        section[placed] = part
    ratio = section["pinned"]["ratio"]
    section.update(
        ratio_per_server_cpu=ratio,
        target=WORKERS_TARGET,
        meets_target=ratio is not None and ratio >= WORKERS_TARGET,
    )
    for name in kinds:
        notes += throughput_notes(f"pinned {name}", section["pinned"][name], params)
    return section, results, notes


def run(params: Params) -> tuple[dict[str, Any], bool]:
    """The whole benchmark.

    Returns:
        The output document, and whether every run was free of errors.
    """
    node = find_node()
    pinning = choose_pinning()
    members = params.subscribers + params.senders
    open_files = raise_open_files_limit(
        max(
            members,
            params.memory_connections if params.memory else 0,
            params.latency_members if params.latency else 0,
        )
        + SPARE_FILES
    )
    # (label in the output, server, share of members offering permessage-deflate)
    contenders: list[tuple[str, str, float]]
    if params.compare_deflate:
        contenders = [("uncompressed", "chatservice", 0.0), ("deflate", "chatservice", 1.0)]
    elif params.redis:
        contenders = [
            ("embedded", "chatservice", params.deflate),
            ("redis", "redis", params.deflate),
        ]
    else:
        names = [SERVERS[params.only]] if params.only else ["reference", "chatservice"]
        contenders = [(name, name, params.deflate) for name in names]
    labels = [label for label, _, _ in contenders]
    document: dict[str, Any] = {
        "bench": "broadcast",
        "params": {
            "duration_s": params.duration,
            "warmup_s": params.warmup,
            "subscribers": params.subscribers,
            "senders": params.senders,
            "members": members,
            "sender_rate_per_s": params.sender_rate,
            "rounds": params.rounds,
            "memory_connections": params.memory_connections,
            "memory_room_size": MEMORY_ROOM_SIZE,
            "connections_per_address": PER_ADDRESS,
            "open_files_limit": open_files,
            "phase": params.phase,
            "deflate_share": params.deflate,
            "message_size": params.message_size,
            "compare_deflate": params.compare_deflate,
            "redis": params.redis,
            "pinning": pinning.description,
            "versions": environment(node),
        },
    }
    notes: list[str] = []
    results: list[dict[str, Any]] = []

    if params.workers:
        document["params"]["workers"] = params.workers
        document["workers"], results, notes = workers_phase(node, params, pinning)
        document["notes"] = notes
        return document, all(r["errors"] == 0 for r in results)

    if params.throughput:
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
        for round_number in range(1, params.rounds + 1):
            for label, server, deflate in contenders:
                log(
                    f"round {round_number}/{params.rounds}: {label}, {members} members "
                    f"({params.warmup:g} s warmup + {params.duration:g} s)"
                )
                if server == "redis":
                    result = measure_on_redis(node, params, pinning, deflate)
                else:
                    result = measure_throughput(server, node, params, pinning, deflate)
                log(
                    f"  {result['deliveries_per_s']:.0f} deliveries/s "
                    f"({result['room_messages_per_s']:.1f} room messages/s), "
                    f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                    f"errors {result['errors']}, CPU server {result['server_cpu_share']} "
                    f"loadgen {result['loadgen_cpu_share']}, "
                    f"{result['wire_bytes_per_delivery']} bytes/delivery"
                )
                runs[label].append(result)
                results.append(result)
        for label in labels:
            best = max(runs[label], key=lambda r: r["deliveries_per_s"])
            document[label] = {
                **best,
                "runs_deliveries_per_s": [r["deliveries_per_s"] for r in runs[label]],
            }
            notes += throughput_notes(label, best, params)
        if params.compare_deflate:
            ratio = ratio_of(document, "deliveries_per_server_cpu_s", "deflate", "uncompressed")
            document.update(
                deflate_ratio_per_server_cpu=ratio,
                deflate_target=DEFLATE_TARGET,
                meets_deflate_target=ratio is not None and ratio >= DEFLATE_TARGET,
                wire_bytes_ratio=ratio_of(
                    document, "wire_bytes_per_delivery", "deflate", "uncompressed"
                ),
            )
        elif params.redis:
            ratio = ratio_of(document, "deliveries_per_server_cpu_s", "redis", "embedded")
            document.update(
                redis_ratio_per_server_cpu=ratio,
                redis_target=REDIS_TARGET,
                meets_redis_target=ratio is not None and ratio >= REDIS_TARGET,
                redis_ratio_per_cpu_with_redis=round(
                    document["redis"]["deliveries_per_cpu_s_with_redis"]
                    / document["embedded"]["deliveries_per_server_cpu_s"],
                    3,
                ),
            )
        elif len(labels) == 2:
            ratio = ratio_of(document, "deliveries_per_s")
            document.update(
                ratio=ratio,
                target=TARGET,
                meets_target=ratio is not None and ratio >= TARGET,
                ratio_per_server_cpu=ratio_of(document, "deliveries_per_server_cpu_s"),
            )

    if params.memory:
        memory: dict[str, Any] = {"connections": params.memory_connections}
        for label, server, deflate in contenders:
            log(f"memory: {label}, {params.memory_connections} idle joined connections")
            result = measure_memory(server, node, params, pinning, deflate)
            log(
                f"  {result['kib_per_conn']} KiB per connection "
                f"({result['rss_before_kib']} -> {result['rss_after_kib']} KiB), "
                f"errors {result['errors']}"
            )
            if result["errors"]:
                notes.append(f"{label} memory: the load generator saw {result['errors']} errors")
            memory[label] = result
            memory[f"{label}_kib_per_conn"] = result["kib_per_conn"]
            results.append(result)
        memory["target_kib"] = TARGET_KIB
        ours = [label for label, server, _ in contenders if server == "chatservice"]
        if ours:
            memory["meets_target"] = all(
                memory[f"{label}_kib_per_conn"] <= TARGET_KIB for label in ours
            )
        document["memory"] = memory

    if params.latency:
        document["latency"], latency_results, more_notes = latency_phase(node, params, pinning)
        results += latency_results
        notes += more_notes

    document["notes"] = notes
    return document, all(r["errors"] == 0 for r in results)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON document; the exit status."""
    params = parse_args(argv)
    return main_of(lambda: run(params), log)


if __name__ == "__main__":
    sys.exit(main())
