#!/usr/bin/env python3
"""Publish-proxy benchmark: what asking the application before every message costs.

chatservice without a proxy and with ``--publish-proxy`` (docs/hooks.md), in
the same run, under the loads of bench/broadcast_bench.py:

- Throughput: one room of ``--subscribers`` (1000) members and ``--senders``
  (256) senders in a closed loop (each sends a message, waits until it comes
  back, sends the next, at most ``--sender-rate`` 8 a second).  Room messages
  per second with the proxy over without: ``ratio`` (target >= 0.5).
- Latency: ``--latency-rate`` (100) room messages a second, open loop, from
  ``--latency-senders`` (100) of ``--latency-members`` (1000) members; every
  delivery's latency from send to receive.  ``added_p99_ms``: the p99 with the
  proxy minus the p99 without (target < 5 ms).

The proxy is bench/_proxy_app.py, a twisted.web application in a process of
its own that lets every message through at once, on 127.0.0.1: its CPU is not
the server's (with ``taskset``: the server on CPU 0, the load generator on CPU
1, the proxy on CPU 2 if there is one, else on the load generator's CPU); its
CPU share is reported.  Rounds alternate without, with; the best run of each
counts (the most room messages per second; the lowest p99).  One JSON
document on stdout, progress on stderr.

    .venv/bin/python bench/proxy_bench.py [--duration 10] [--warmup 3] [--rounds 2]
        [--subscribers 1000] [--senders 256] [--sender-rate 8]
        [--latency-rate 100] [--latency-members 1000] [--latency-senders 100]
        [--phase all|throughput|latency]

Exit status 0 whether or not the targets are met; 1 if the benchmark could not
run, or its load generator saw errors (chat-errors, such as ``unavailable``
from a proxy that did not answer in time, or messages missing); 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    Pinning,
    chatservice_command,
    choose_pinning,
    cpu_seconds,
    environment,
    find_node,
    main_of,
    raise_open_files_limit,
    running_server,
)
from broadcast_bench import (
    SPARE_FILES,
    Params,
    latency_level,
    latency_notes,
    measure_latency,
    measure_throughput,
    throughput_notes,
)

PROXY_APP = BENCH_DIR / "_proxy_app.py"
#: Room messages per second with the proxy over without, at least.
TARGET_RATIO = 0.5
#: p99 delivery latency the proxy adds at --latency-rate, less than this.
TARGET_ADDED_P99_MS = 5.0
PHASES = ("all", "throughput", "latency")


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"proxy_bench: {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> tuple[Params, str]:
    """The command line: the broadcast benchmark's `Params`, and the phase."""
    parser = argparse.ArgumentParser(description="chatservice with and without a publish proxy.")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds of each")
    parser.add_argument("--subscribers", type=int, default=1000, help="members that only receive")
    parser.add_argument("--senders", type=int, default=256, help="members that send")
    parser.add_argument("--sender-rate", type=float, default=8.0, help="messages/s per sender")
    parser.add_argument("--latency-rate", type=float, default=100.0, help="room messages/s")
    parser.add_argument("--latency-members", type=int, default=1000, help="latency room size")
    parser.add_argument("--latency-senders", type=int, default=100, help="latency senders")
    parser.add_argument("--phase", choices=PHASES, default="all")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.rounds < 1:
        parser.error("--duration must be positive, --warmup not negative, --rounds at least 1")
    params = Params(
        duration=args.duration,
        warmup=args.warmup,
        subscribers=args.subscribers,
        senders=args.senders,
        sender_rate=args.sender_rate,
        rounds=args.rounds,
        memory_connections=0,
        phase=args.phase,
        only="ours",
        deflate=0.0,
        message_size=0,
        compare_deflate=False,
        latency_rate=args.latency_rate,
        latency_members=args.latency_members,
        latency_senders=args.latency_senders,
    )
    return params, args.phase


def proxy_pinning(pinning: Pinning) -> Pinning:
    """Where the proxy runs: CPU 2 if there is one, else the load generator's CPU."""
    if not pinning.server:
        return pinning
    if 2 in os.sched_getaffinity(0):
        return Pinning(("taskset", "-c", "2"), (), "proxy on CPU 2")
    return Pinning(pinning.loadgen, (), "proxy on the load generator's CPU")


@contextmanager
def running_proxy(pinning: Pinning, workdir: Path) -> Iterator[tuple[int, str]]:
    """bench/_proxy_app.py running: its process id and its URL."""
    command = [sys.executable, str(PROXY_APP)]
    with running_server("proxy", command, proxy_pinning(pinning), workdir) as (pid, port):
        yield pid, f"http://127.0.0.1:{port}/publish"


def with_cpu_share(pid: int, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`measure()`'s result with ``proxy_cpu_share``: process `pid`'s CPU time over the
    whole run's wall time (connecting and warmup included, so a lower bound)."""
    cpu, started = cpu_seconds(pid), time.monotonic()
    result = measure()
    result["proxy_cpu_share"] = round((cpu_seconds(pid) - cpu) / (time.monotonic() - started), 3)
    return result


def run(params: Params, phase: str) -> tuple[dict[str, Any], bool]:
    """The whole benchmark: the document, and whether every run was free of errors."""
    node = find_node()
    pinning = choose_pinning()
    open_files = raise_open_files_limit(
        max(params.subscribers + params.senders, params.latency_members) + SPARE_FILES
    )
    document: dict[str, Any] = {
        "bench": "publish-proxy",
        "params": {
            "duration_s": params.duration,
            "warmup_s": params.warmup,
            "rounds": params.rounds,
            "subscribers": params.subscribers,
            "senders": params.senders,
            "sender_rate_per_s": params.sender_rate,
            "latency_rate_per_s": params.latency_rate,
            "latency_members": params.latency_members,
            "latency_senders": params.latency_senders,
            "open_files_limit": open_files,
            "pinning": f"{pinning.description}; {proxy_pinning(pinning).description}",
            "versions": environment(node),
        },
    }
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    plain = chatservice_command("--database", ":memory:")
    with (
        tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp,
        running_proxy(pinning, Path(tmp)) as (proxy_pid, url),
    ):
        proxied = [*plain, "--publish-proxy", url]
        contenders = [("without_proxy", plain), ("with_proxy", proxied)]
        if phase in ("all", "throughput"):
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in contenders}
            for number in range(1, params.rounds + 1):
                for label, command in contenders:
                    log(f"throughput round {number}/{params.rounds}: {label}")
                    result = with_cpu_share(
                        proxy_pid,
                        lambda command=command: measure_throughput(  # type: ignore[misc]
                            "chatservice", node, params, pinning, 0.0, command
                        ),
                    )
                    log(
                        f"  {result['room_messages_per_s']:.1f} room messages/s, "
                        f"p99 {result['p99_ms']} ms, errors {result['errors']}, CPU server "
                        f"{result['server_cpu_share']} proxy {result['proxy_cpu_share']}"
                    )
                    runs[label].append(result)
                    results.append(result)
            throughput: dict[str, Any] = {}
            for label, _ in contenders:
                best = max(runs[label], key=lambda r: r["room_messages_per_s"])
                throughput[label] = {
                    **best,
                    "runs_room_messages_per_s": [r["room_messages_per_s"] for r in runs[label]],
                }
                notes += throughput_notes(label, best, params)
            without = throughput["without_proxy"]["room_messages_per_s"]
            ratio = (
                round(throughput["with_proxy"]["room_messages_per_s"] / without, 3)
                if without
                else None
            )
            throughput.update(
                ratio=ratio,
                target_ratio=TARGET_RATIO,
                meets_target=ratio is not None and ratio >= TARGET_RATIO,
            )
            document["throughput"] = throughput
        if phase in ("all", "latency"):
            level = latency_level("fixed", params.latency_rate, params)
            latency: dict[str, Any] = {"rate_per_s": level.rate, "members": level.members}
            tries: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in contenders}
            for number in range(1, params.rounds + 1):
                for label, command in contenders:
                    log(
                        f"latency round {number}/{params.rounds}: {label}, "
                        f"{level.rate:g} room messages/s"
                    )
                    result = with_cpu_share(
                        proxy_pid,
                        lambda command=command: measure_latency(  # type: ignore[misc]
                            node, level, params, pinning, command
                        ),
                    )
                    log(
                        f"  p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                        f"errors {result['errors']}, CPU server {result['server_cpu_share']} "
                        f"proxy {result['proxy_cpu_share']}"
                    )
                    tries[label].append(result)
                    results.append(result)
            for label, _ in contenders:
                best = min(tries[label], key=lambda r: r["p99_ms"] or float("inf"))
                latency[label] = {**best, "runs_p99_ms": [r["p99_ms"] for r in tries[label]]}
                notes += latency_notes(f"latency {label}", best)
            before, after = latency["without_proxy"]["p99_ms"], latency["with_proxy"]["p99_ms"]
            added = None if before is None or after is None else round(after - before, 2)
            latency.update(
                added_p99_ms=added,
                added_p50_ms=round(
                    latency["with_proxy"]["p50_ms"] - latency["without_proxy"]["p50_ms"], 2
                ),
                target_added_p99_ms=TARGET_ADDED_P99_MS,
                meets_target=added is not None and added < TARGET_ADDED_P99_MS,
            )
            document["latency"] = latency
    document["notes"] = notes
    return document, all(r["errors"] == 0 for r in results)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON document; the exit status."""
    params, phase = parse_args(argv)
    return main_of(lambda: run(params, phase), log)


if __name__ == "__main__":
    sys.exit(main())
