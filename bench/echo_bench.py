#!/usr/bin/env python3
"""Echo benchmark: chatservice's ``/echo`` against a minimal Autobahn echo.

N connections (default 50) each send a small text message (32 bytes) to the
echo endpoint, wait for the echo and send the next, for a warmup and then a
measured window.  The load generator is Node.js with ``ws`` (bench/loadgen.mjs),
faster than the server, so the server is the bottleneck.  The same load runs
against `reference_echo.py` (Autobahn and nothing else) in the same run, and
the result is chatservice's throughput as a ratio of the reference's: the Site,
logging and options must not cost echo throughput (target: ratio >= 0.95).

With two or more CPUs and ``taskset``, the server runs on CPU 0 and the load
generator on CPU 1.  Rounds alternate reference, chatservice; the best run of
each counts.  One JSON document goes to stdout, progress to stderr.

    .venv/bin/python bench/echo_bench.py [--duration 10] [--connections 50]
        [--size 32] [--warmup 2] [--rounds 2] [--only ours|reference] [--workers N]

``--workers N`` measures chatservice alone: one process against ``--workers N``
(on a redis-server started here), in alternating rounds, first pinned (every
server process and Redis on CPU 0, the load generator on CPU 1) for echoes per
second of server CPU, summed over the master, the workers and Redis
(``workers_ratio_per_server_cpu``, target >= 0.85: the master and the
sharing cost little), then unpinned for the raw totals (``unpinned``: what N
workers get out of the machine, with the load generator competing for it).

Exit status 0 whether or not the target is met (a benchmark is never pass or
fail); 1 if the benchmark could not run, or ran but the load generator saw
errors (wrong echoes, dropped connections), so its numbers do not count;
130 when interrupted.  Every process it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    BenchError,
    Pinning,
    ServerCpuWindow,
    chatservice_command,
    choose_pinning,
    ensure_loadgen,
    environment,
    main_of,
    notes_on,
    ratio_of,
    run_loadgen,
    running_chatservice,
    running_server,
)

LOADGEN = BENCH_DIR / "loadgen.mjs"
REFERENCE = BENCH_DIR / "reference_echo.py"

#: chatservice's throughput must be at least this fraction of the reference's.
TARGET = 0.95
#: --workers N: echoes per second of server CPU, at least this fraction of one process's.
WORKERS_TARGET = 0.85
#: No pinning: the raw totals of --workers.
UNPINNED = Pinning((), (), "none (raw totals)")
#: Beyond warmup + duration: connecting (10 s in loadgen.mjs), closing, slack.
LOADGEN_SLACK = 30.0

#: Server names as given to --only, and as keys of the output.
SERVERS = {"reference": "reference", "ours": "chatservice"}


@dataclass(frozen=True)
class Params:
    """What one benchmark run does, from the command line."""

    duration: float
    warmup: float
    connections: int
    size: int
    rounds: int
    only: str | None
    workers: int


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"echo_bench: {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> Params:
    """The command line, checked."""
    parser = argparse.ArgumentParser(
        description="Echo benchmark: chatservice /echo against a minimal Autobahn echo.",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per run (default: 10)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds of load before measuring, not counted (default: 2)",
    )
    parser.add_argument(
        "--connections", type=int, default=50, help="concurrent connections (default: 50)"
    )
    parser.add_argument("--size", type=int, default=32, help="message size in bytes (default: 32)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="runs of each server, alternating; the best counts (default: 2)",
    )
    parser.add_argument("--only", choices=sorted(SERVERS), help="run only this server (no ratio)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="compare chatservice as one process with --workers N (N >= 2; no reference)",
    )
    args = parser.parse_args(argv)
    if args.workers and (args.workers < 2 or args.only):
        parser.error("--workers needs N >= 2 and no --only")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be > 0 and --warmup >= 0")
    if args.connections < 1 or args.size < 1 or args.rounds < 1:
        parser.error("--connections, --size and --rounds must be >= 1")
    return Params(
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        size=args.size,
        rounds=args.rounds,
        only=args.only,
        workers=args.workers,
    )


def server_command(name: str) -> list[str]:
    """The command that starts server `name` on a free loopback port."""
    if name == "chatservice":
        # Default log level (info), as a user runs it.
        return chatservice_command()
    return [sys.executable, str(REFERENCE)]


def load(
    node: str, port: int, server_pid: int | list[int], params: Params, pinning: Pinning
) -> dict[str, Any]:
    """Run the load generator against one server and sample the server's CPU.

    The server's CPU time is read when the load generator announces the start
    and the end of its measured window on stderr; its other stderr lines are
    passed on.

    Returns:
        The load generator's result plus ``server_cpu_share`` and
        ``messages_per_server_cpu_s``.

    Raises:
        BenchError: The load generator failed or did not finish in time.
    """
    command = [
        *pinning.loadgen,
        node,
        str(LOADGEN),
        "--url",
        f"ws://127.0.0.1:{port}/echo",
        "--connections",
        str(params.connections),
        "--size",
        str(params.size),
        "--warmup",
        str(params.warmup),
        "--duration",
        str(params.duration),
    ]
    window = ServerCpuWindow(server_pid)
    result = run_loadgen(command, params.warmup + params.duration + LOADGEN_SLACK, window)
    if window.share is None:
        raise BenchError("the load generator never announced its measured window")
    result["loadgen_cpu_share"] = result.pop("cpu_share")
    result["server_cpu_share"] = window.share
    # Throughput per second of server CPU: what another busy process on the
    # server's CPU does not change (it only takes time away from the server).
    result["messages_per_server_cpu_s"] = (
        round(result["messages_per_s"] / window.share, 1) if window.share else None
    )
    return result


def measure(name: str, node: str, params: Params, pinning: Pinning) -> dict[str, Any]:
    """One run: start server `name`, load it, stop it."""
    with (
        tempfile.TemporaryDirectory(prefix=f"echo-bench-{name}-") as tmp,
        running_server(name, server_command(name), pinning, Path(tmp)) as (pid, port),
    ):
        return load(node, port, pid, params, pinning)


def params_of(params: Params, pinning: Pinning, node: str) -> dict[str, Any]:
    """The output's ``params``."""
    return {
        "duration_s": params.duration,
        "warmup_s": params.warmup,
        "connections": params.connections,
        "size_bytes": params.size,
        "rounds": params.rounds,
        "pinning": pinning.description,
        "versions": environment(node),
    }


def measure_workers(workers: int, node: str, params: Params, pinning: Pinning) -> dict[str, Any]:
    """One run of chatservice, one process (`workers` 1) or ``--workers`` on Redis."""
    with (
        tempfile.TemporaryDirectory(prefix=f"echo-bench-workers-{workers}-") as tmp,
        running_chatservice(f"workers-{workers}", pinning, Path(tmp), workers=workers) as service,
    ):
        result = load(node, service.port, service.all_pids, params, pinning)
    result["processes"] = len(service.all_pids)
    return result


def run_workers(params: Params) -> tuple[dict[str, Any], bool]:
    """``--workers N``: one process against N workers, pinned and unpinned."""
    node = ensure_loadgen(log)
    pinning = choose_pinning()
    kinds = {"one_process": 1, "workers": params.workers}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_number in range(1, params.rounds + 1):
        for placed, how in (("pinned", pinning), ("unpinned", UNPINNED)):
            for name, workers in kinds.items():
                log(f"round {round_number}/{params.rounds}: {name} ({workers}), {placed}")
                result = measure_workers(workers, node, params, how)
                log(
                    f"  {result['messages_per_s']:.0f} messages/s, "
                    f"{result['messages_per_server_cpu_s']} per server CPU-s, "
                    f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                    f"CPU server {result['server_cpu_share']} loadgen {result['loadgen_cpu_share']}"
                )
                runs.setdefault((placed, name), []).append(result)

    def best(placed: str, name: str, field: str) -> dict[str, Any]:
        results = runs[(placed, name)]
        top = max(results, key=lambda r: r[field])
        return {**top, f"runs_{field}": [r[field] for r in results]}

    pinned = {name: best("pinned", name, "messages_per_server_cpu_s") for name in kinds}
    unpinned = {name: best("unpinned", name, "messages_per_s") for name in kinds}
    ratio = ratio_of(pinned, "messages_per_server_cpu_s", "workers", "one_process")
    document: dict[str, Any] = {
        "bench": "echo-workers",
        "params": {**params_of(params, pinning, node), "workers": params.workers},
        **pinned,
        "workers_ratio_per_server_cpu": ratio,
        "target": WORKERS_TARGET,
        "meets_target": ratio is not None and ratio >= WORKERS_TARGET,
        "unpinned": {
            **unpinned,
            "workers_ratio": ratio_of(unpinned, "messages_per_s", "workers", "one_process"),
        },
        "notes": [n for name in kinds for n in notes_on(name, pinned[name])],
    }
    clean = all(r["errors"] == 0 for rs in runs.values() for r in rs)
    return document, clean


def run(params: Params) -> tuple[dict[str, Any], bool]:
    """The whole benchmark.

    Returns:
        The output document, and whether every run was free of errors.
    """
    node = ensure_loadgen(log)
    pinning = choose_pinning()
    names = [SERVERS[params.only]] if params.only else ["reference", "chatservice"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_number in range(1, params.rounds + 1):
        for name in names:
            log(
                f"round {round_number}/{params.rounds}: {name} "
                f"({params.warmup:g} s warmup + {params.duration:g} s)"
            )
            result = measure(name, node, params, pinning)
            log(
                f"  {result['messages_per_s']:.0f} messages/s, p50 {result['p50_ms']} ms, "
                f"p99 {result['p99_ms']} ms, errors {result['errors']}, "
                f"CPU server {result['server_cpu_share']} loadgen {result['loadgen_cpu_share']}"
            )
            runs[name].append(result)

    document: dict[str, Any] = {
        "bench": "echo",
        "params": params_of(params, pinning, node),
    }
    notes: list[str] = []
    for name in names:
        best = max(runs[name], key=lambda r: r["messages_per_s"])
        document[name] = {**best, "runs_messages_per_s": [r["messages_per_s"] for r in runs[name]]}
        notes += notes_on(name, best)
    if len(names) == 2:
        ratio = ratio_of(document, "messages_per_s")
        document.update(
            ratio=ratio,
            target=TARGET,
            meets_target=ratio is not None and ratio >= TARGET,
            ratio_per_server_cpu=ratio_of(document, "messages_per_server_cpu_s"),
        )
    document["notes"] = notes
    clean = all(r["errors"] == 0 for rs in runs.values() for r in rs)
    return document, clean


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON document; the exit status."""
    params = parse_args(argv)
    if params.workers:
        return main_of(lambda: run_workers(params), log)
    return main_of(lambda: run(params), log)


if __name__ == "__main__":
    sys.exit(main())
