#!/usr/bin/env python3
"""Join-storm benchmark: many connections joining at once, into one room or many.

What a deploy or a network blip looks like to the server: every client
reconnects at the same moment.  The load generator (bench/storm_loadgen.mjs,
Node.js) first joins --speakers members to the measured room, then opens
--connections (10,000) connections at once (at most --in-flight handshakes
and joins outstanding) that join

- ``rooms``: rooms of 100 members ("storm-0", "storm-1", ...), the baseline:
  what the connections themselves cost;
- ``one-room``: one room, "storm": what presence in a large room costs on top;
- ``reconnect`` (after ``one-room``, same server): every member drops its
  connection and reconnects at once with ``since``, the id of the last message
  it saw; its history must come back recovered.

Each storm runs against a fresh server (``reconnect`` follows ``one-room`` on
its server), pinned to CPU 0 with the load generator on CPU 1.  While it
runs, the speakers (10) send room messages (1 a second each: 10 a second in a room
of 10,000 is 100,000 deliveries a second) and the latency from send to receive
is measured at every speaker: join and leave traffic must not
hold up the chat.  Reported per storm: ``join_s`` (start until the last member
has joined), ``server_cpu_s`` (the server's CPU over the same time),
``bytes_received`` (everything the members got), speaker message latency
p50/p99/max, and errors.  Targets: one room of 10,000 joined within
10 s, at most 3x the time of rooms of 100, p99 latency <= 1 s during every
storm.

The server runs with its defaults (log level info included) except the
connection limits, raised for 10,000 clients on 127.0.0.1 (chatservice allows
100 per client address and 10,000 in all by default; the load generator
spreads its connections over source addresses 127.0.X.Y, 90 on each), and
``--history 1000``, so that recovery with ``since`` can succeed for every member.

    .venv/bin/python bench/storm_bench.py [--connections 10000] [--in-flight 500]
        [--speakers 10] [--speaker-rate 1] [--phase all|rooms|one-room]
        [--server-args "--large-room 500 --presence-interval 0.5"]

One JSON document goes to stdout, progress to stderr.  Exit status 0 whether or
not the targets are met, 1 if the benchmark could not run or the load
generator saw errors, 130 when interrupted; every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    Pinning,
    chatservice_command,
    choose_pinning,
    cpu_seconds,
    ensure_loadgen,
    environment,
    main_of,
    raise_open_files_limit,
    run_loadgen,
    running_server,
)

LOADGEN = BENCH_DIR / "storm_loadgen.mjs"
ROOM_SIZE = 100
PER_ADDRESS = 90
#: Targets: what a deploy's reconnect storm may cost.
TARGET_ONE_ROOM_S = 10.0
TARGET_RATIO = 3.0
TARGET_P99_MS = 1000.0
#: Seconds a storm may take, over which the load generator is killed (it gives up at 180).
LOADGEN_LIMIT = 600.0
SPARE_FILES = 1000
HISTORY = 1000


@dataclass(frozen=True)
class Params:
    connections: int
    in_flight: int
    speakers: int
    speaker_rate: float
    phase: str
    server_args: tuple[str, ...]


def log(message: str) -> None:
    print(f"storm: {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> Params:
    parser = argparse.ArgumentParser(
        description="Join storms: 10,000 connections joining rooms of 100, one room, "
        "and reconnecting with since."
    )
    parser.add_argument("--connections", type=int, default=10000, help="members in each storm")
    parser.add_argument(
        "--in-flight", type=int, default=500, help="handshakes and joins outstanding at once"
    )
    parser.add_argument("--speakers", type=int, default=10, help="members sending messages")
    parser.add_argument(
        "--speaker-rate", type=float, default=1.0, help="messages per second per speaker"
    )
    parser.add_argument("--phase", choices=("all", "rooms", "one-room"), default="all")
    parser.add_argument(
        "--server-args", default="", help="more `twistd chatservice` options, in one string"
    )
    args = parser.parse_args(argv)
    for name in ("connections", "in_flight", "speakers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.speaker_rate <= 0:
        parser.error("--speaker-rate must be positive")
    return Params(
        connections=args.connections,
        in_flight=args.in_flight,
        speakers=args.speakers,
        speaker_rate=args.speaker_rate,
        phase=args.phase,
        server_args=tuple(shlex.split(args.server_args)),
    )


def server_command(params: Params) -> list[str]:
    limit = str(3 * (params.connections + params.speakers))
    return chatservice_command(
        "--database",
        ":memory:",
        # Enough kept that a member reconnecting at the end of a storm recovers what
        # it missed during it (with 100, the speakers outrun the history).
        "--history",
        str(HISTORY),
        "--max-connections",
        limit,
        # A reconnecting member's new connection may come before its old one is gone.
        "--max-connections-per-address",
        str(3 * PER_ADDRESS),
        *params.server_args,
    )


class StormWindows:
    """A `LineWatcher`: the server's CPU seconds between each storm's start and end lines."""

    def __init__(self, server_pid: int) -> None:
        self._pid = server_pid
        self._started: dict[str, float] = {}
        self.cpu_s: dict[str, float] = {}

    def __call__(self, line: str, process: subprocess.Popen[str]) -> bool:
        parts = line.split()
        if len(parts) != 4 or parts[:2] != ["loadgen:", "storm"]:
            return False
        name, edge = parts[2], parts[3]
        if edge == "start":
            self._started[name] = cpu_seconds(self._pid)
        elif edge == "end" and name in self._started:
            self.cpu_s[name] = round(cpu_seconds(self._pid) - self._started[name], 2)
        return True


def run_storms(
    node: str, params: Params, pinning: Pinning, room_size: int, reconnect: bool
) -> list[dict[str, Any]]:
    """One server, one load generator: its storms' results, with the server's CPU."""
    with (
        tempfile.TemporaryDirectory(prefix="storm-bench-") as tmp,
        running_server("chatservice", server_command(params), pinning, Path(tmp)) as (pid, port),
    ):
        command = [
            *pinning.loadgen,
            node,
            str(LOADGEN),
            f"--url=ws://127.0.0.1:{port}/chat",
            f"--connections={params.connections}",
            f"--room-size={room_size}",
            f"--in-flight={params.in_flight}",
            f"--speakers={params.speakers}",
            f"--speaker-rate={params.speaker_rate}",
            f"--per-address={PER_ADDRESS}",
            *(["--reconnect"] if reconnect else []),
        ]
        windows = StormWindows(pid)
        result = run_loadgen(command, LOADGEN_LIMIT, windows)
    storms: list[dict[str, Any]] = result["storms"]
    for storm in storms:
        storm["server_cpu_s"] = windows.cpu_s.get(storm["name"])
        log(
            f"  {storm['name']}: {storm['connections']} joined in {storm['join_s']} s, "
            f"server CPU {storm['server_cpu_s']} s, {storm['bytes_per_connection']} bytes "
            f"per connection, speaker messages p50 {storm['p50_ms']} ms "
            f"p99 {storm['p99_ms']} ms, errors {storm['errors']}"
        )
    return storms


def run(params: Params) -> tuple[dict[str, Any], bool]:
    node = ensure_loadgen(log)
    pinning = choose_pinning()
    open_files = raise_open_files_limit(params.connections + params.speakers + SPARE_FILES)
    document: dict[str, Any] = {
        "bench": "storm",
        "params": {
            "connections": params.connections,
            "in_flight": params.in_flight,
            "speakers": params.speakers,
            "speaker_rate_per_s": params.speaker_rate,
            "room_size": ROOM_SIZE,
            "server_args": list(params.server_args),
            "connections_per_address": PER_ADDRESS,
            "open_files_limit": open_files,
            "pinning": pinning.description,
            "versions": environment(node),
        },
        "storms": {},
    }
    started = time.monotonic()
    if params.phase in ("all", "rooms"):
        log(f"{params.connections} connections joining rooms of {ROOM_SIZE}")
        for storm in run_storms(node, params, pinning, ROOM_SIZE, reconnect=False):
            document["storms"][storm["name"]] = storm
    if params.phase in ("all", "one-room"):
        log(f"{params.connections} connections joining one room, then reconnecting with since")
        for storm in run_storms(node, params, pinning, 0, reconnect=True):
            document["storms"][storm["name"]] = storm
    storms = document["storms"]
    targets: dict[str, Any] = {}
    if "one-room" in storms:
        targets["one_room_join_s"] = storms["one-room"]["join_s"]
        targets["one_room_within_10_s"] = storms["one-room"]["join_s"] <= TARGET_ONE_ROOM_S
    if "one-room" in storms and "rooms" in storms:
        ratio = round(storms["one-room"]["join_s"] / storms["rooms"]["join_s"], 3)
        document["one_room_over_rooms"] = ratio
        targets["one_room_at_most_3x_rooms"] = ratio <= TARGET_RATIO
    targets["p99_within_1_s_in_every_storm"] = all(
        s["p99_ms"] is not None and s["p99_ms"] <= TARGET_P99_MS for s in storms.values()
    )
    document["targets"] = targets
    document["wall_s"] = round(time.monotonic() - started, 1)
    return document, all(s["errors"] == 0 for s in storms.values())


def main(argv: Sequence[str] | None = None) -> int:
    params = parse_args(argv)
    return main_of(lambda: run(params), log)


if __name__ == "__main__":
    sys.exit(main())
