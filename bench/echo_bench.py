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
        [--size 32] [--warmup 2] [--rounds 2] [--only ours|reference]

Exit status 0 whether or not the target is met (a benchmark is never pass or
fail); 1 if the benchmark could not run, or ran but the load generator saw
errors (wrong echoes, dropped connections), so its numbers do not count;
130 when interrupted.  Every process it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
LOADGEN = BENCH_DIR / "loadgen.mjs"
REFERENCE = BENCH_DIR / "reference_echo.py"

#: chatservice's throughput must be at least this fraction of the reference's.
TARGET = 0.95
#: Both servers print their port as ``port=N`` once listening.
PORT_RE = re.compile(r"port=(\d+)")
#: Lines bench/loadgen.mjs writes on stderr at the start and end of its window.
MEASURING = "loadgen: measuring"
MEASURED = "loadgen: measured"
#: Below this CPU share the server was not the bottleneck.
SATURATED = 0.9
#: Above this CPU share the load generator may have been the bottleneck.
LOADGEN_BUSY = 0.8

SERVER_START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
NPM_TIMEOUT = 300.0
#: Beyond warmup + duration: connecting (10 s in loadgen.mjs), closing, slack.
LOADGEN_SLACK = 30.0

#: Server names as given to --only, and as keys of the output.
SERVERS = {"reference": "reference", "ours": "chatservice"}


class BenchError(Exception):
    """The benchmark could not run."""


@dataclass(frozen=True)
class Params:
    """What one benchmark run does, from the command line."""

    duration: float
    warmup: float
    connections: int
    size: int
    rounds: int
    only: str | None


@dataclass(frozen=True)
class Pinning:
    """Command prefixes that pin the server and the load generator to CPUs.

    Attributes:
        server: Prefix for the server's command (empty: not pinned).
        loadgen: Prefix for the load generator's command.
        description: What was done, for the output.
    """

    server: tuple[str, ...]
    loadgen: tuple[str, ...]
    description: str


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
    args = parser.parse_args(argv)
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
    )


def choose_pinning() -> Pinning:
    """Server on CPU 0, load generator on CPU 1, if taskset and the CPUs exist."""
    taskset = shutil.which("taskset")
    cpus = os.sched_getaffinity(0)
    if taskset is None:
        return Pinning((), (), "none: taskset (util-linux) not found")
    if not {0, 1} <= cpus:
        return Pinning((), (), f"none: CPUs 0 and 1 are not both available (have {sorted(cpus)})")
    return Pinning(
        (taskset, "-c", "0"), (taskset, "-c", "1"), "server on CPU 0, load generator on CPU 1"
    )


def ensure_loadgen() -> str:
    """Check for Node.js and install bench/node_modules with ``npm ci`` if needed.

    Returns:
        The path of ``node``.

    Raises:
        BenchError: Node.js or npm is missing, or ``npm ci`` failed.
    """
    node = shutil.which("node")
    if node is None:
        raise BenchError("Node.js ('node') is needed for the load generator; install nodejs")
    if not (BENCH_DIR / "node_modules" / "ws").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            raise BenchError(
                "bench/node_modules is missing and npm is not installed to install it; "
                "install npm, or run 'npm ci' in bench/"
            )
        log("installing the load generator's dependencies: npm ci in bench/")
        try:
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=BENCH_DIR,
                stdout=sys.stderr,
                check=True,
                timeout=NPM_TIMEOUT,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            raise BenchError(f"npm ci in bench/ failed: {e}") from None
    return node


def environment(node: str) -> dict[str, str]:
    """Versions of what is measured and what measures it, for the output."""
    versions = {"python": platform.python_version()}
    for package in ("chatservice", "twisted", "autobahn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["node"] = subprocess.run(
        [node, "--version"], check=False, capture_output=True, text=True, timeout=10
    ).stdout.strip()
    return versions


def server_command(name: str) -> list[str]:
    """The command that starts server `name` on a free loopback port."""
    if name == "chatservice":
        twistd = Path(sys.executable).with_name("twistd")
        if not twistd.exists():
            raise BenchError(f"{twistd} not found: is chatservice installed in this environment?")
        # Default log level (info), as a user runs it.
        return [
            str(twistd),
            "-n",
            "--pidfile=",
            "chatservice",
            "--port",
            "tcp:0:interface=127.0.0.1",
        ]
    return [sys.executable, str(REFERENCE)]


def stop(process: subprocess.Popen[Any]) -> None:
    """Terminate a process we started, and kill it if it does not stop in time."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running_server(name: str, pinning: Pinning, workdir: Path) -> Iterator[tuple[int, int]]:
    """Start server `name`, wait until it listens, and stop it on exit.

    Its output goes to a log file in `workdir`, read for the port.

    Yields:
        The server's process id and port.
    """
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*pinning.server, *server_command(name)],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process.pid, _wait_for_port(name, process, log_path)
    finally:
        stop(process)


def _wait_for_port(name: str, process: subprocess.Popen[bytes], log_path: Path) -> int:
    """The port server `name` announces in its log.

    Raises:
        BenchError: It exited or did not announce a port in time.
    """
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        output = log_path.read_text(errors="replace")
        if match := PORT_RE.search(output):
            return int(match.group(1))
        if process.poll() is not None:
            what = f"exited with status {process.returncode}"
        elif time.monotonic() > deadline:
            what = f"announced no port within {SERVER_START_TIMEOUT:.0f} s"
        else:
            time.sleep(0.05)
            continue
        raise BenchError(f"{name} server {what}; its output:\n{output[-2000:]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process `pid` (all its threads) has used."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which is in parentheses and may hold spaces:
    # state is field 3, utime 14 and stime 15 (proc(5)).
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_loadgen(
    node: str, port: int, server_pid: int, params: Params, pinning: Pinning
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
    limit = params.warmup + params.duration + LOADGEN_SLACK
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(limit, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None and process.stderr is not None
        window = _server_cpu_window(process.stderr, server_pid)
        output = process.stdout.read()
        status = process.wait()
    finally:
        watchdog.cancel()
        stop(process)
    if status != 0:
        why = f"was killed after {limit:.0f} s" if status < 0 else f"exited with status {status}"
        raise BenchError(f"the load generator {why}")
    if window is None:
        raise BenchError("the load generator never announced its measured window")
    try:
        result: dict[str, Any] = json.loads(output)
    except json.JSONDecodeError:
        raise BenchError(f"the load generator printed no JSON result: {output!r}") from None
    result["loadgen_cpu_share"] = result.pop("cpu_share")
    result["server_cpu_share"] = window
    # Throughput per second of server CPU: what another busy process on the
    # server's CPU does not change (it only takes time away from the server).
    result["messages_per_server_cpu_s"] = (
        round(result["messages_per_s"] / window, 1) if window else None
    )
    return result


def _server_cpu_window(stderr: IO[str], server_pid: int) -> float | None:
    """Read the load generator's stderr to its end; the server's CPU share in the window.

    Returns:
        The server's CPU time over wall time between the MEASURING and
        MEASURED lines, or None if they did not both come.
    """
    start: tuple[float, float] | None = None
    share = None
    for line in stderr:
        line = line.rstrip("\n")
        if line == MEASURING:
            start = (time.monotonic(), cpu_seconds(server_pid))
        elif line == MEASURED and start is not None:
            wall = time.monotonic() - start[0]
            share = round((cpu_seconds(server_pid) - start[1]) / wall, 3)
        else:
            print(line, file=sys.stderr, flush=True)
    return share


def measure(name: str, node: str, params: Params, pinning: Pinning) -> dict[str, Any]:
    """One run: start server `name`, load it, stop it."""
    with (
        tempfile.TemporaryDirectory(prefix=f"echo-bench-{name}-") as tmp,
        running_server(name, pinning, Path(tmp)) as (pid, port),
    ):
        return run_loadgen(node, port, pid, params, pinning)


def notes_on(name: str, result: dict[str, Any]) -> list[str]:
    """Warnings about a result that does not show the server as the bottleneck."""
    notes = []
    if result["server_cpu_share"] < SATURATED:
        notes.append(
            f"{name}: server CPU share {result['server_cpu_share']} < {SATURATED}: "
            "the server was not the bottleneck (something else busy on its CPU?)"
        )
    if result["loadgen_cpu_share"] > LOADGEN_BUSY:
        notes.append(
            f"{name}: load generator CPU share {result['loadgen_cpu_share']} > {LOADGEN_BUSY}: "
            "it may have limited the throughput"
        )
    if result["errors"]:
        notes.append(f"{name}: the load generator saw {result['errors']} errors")
    return notes


def run(params: Params) -> tuple[dict[str, Any], bool]:
    """The whole benchmark.

    Returns:
        The output document, and whether every run was free of errors.
    """
    node = ensure_loadgen()
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
        "params": {
            "duration_s": params.duration,
            "warmup_s": params.warmup,
            "connections": params.connections,
            "size_bytes": params.size,
            "rounds": params.rounds,
            "pinning": pinning.description,
            "versions": environment(node),
        },
    }
    notes: list[str] = []
    for name in names:
        best = max(runs[name], key=lambda r: r["messages_per_s"])
        document[name] = {**best, "runs_messages_per_s": [r["messages_per_s"] for r in runs[name]]}
        notes += notes_on(name, best)
    if len(names) == 2:
        ratio = _ratio(document, "messages_per_s")
        document.update(
            ratio=ratio,
            target=TARGET,
            meets_target=ratio is not None and ratio >= TARGET,
            ratio_per_server_cpu=_ratio(document, "messages_per_server_cpu_s"),
        )
    document["notes"] = notes
    clean = all(r["errors"] == 0 for rs in runs.values() for r in rs)
    return document, clean


def _ratio(document: dict[str, Any], field: str) -> float | None:
    """chatservice's `field` over the reference's, or None if undefined."""
    ours, reference = document["chatservice"][field], document["reference"][field]
    return round(ours / reference, 3) if ours is not None and reference else None


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so every process started is stopped."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON document; the exit status."""
    params = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        document, clean = run(params)
    except BenchError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    print(json.dumps(document, indent=2))
    if not clean:
        log("error: the load generator saw errors; these numbers do not count")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
