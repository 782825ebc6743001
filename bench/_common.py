"""What the benchmarks share: pinning, servers, the Node.js load generator, CPU time.

Both `echo_bench.py` and `broadcast_bench.py` start a server (chatservice or a
minimal Autobahn reference) pinned to one CPU, drive it with a Node.js ``ws``
load generator pinned to another, and sample the server's CPU time over the
load generator's measured window.  Nothing here prints to stdout: each
benchmark prints one JSON document there.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent

#: Every server prints its port as ``port=N`` once listening.
PORT_RE = re.compile(r"port=(\d+)")
#: chatservice --workers N says so once every worker listens.
WORKERS_READY_RE = re.compile(r"chatservice: \d+ workers ready")
#: Lines the load generators write on stderr at the start and end of their window.
MEASURING = "loadgen: measuring"
MEASURED = "loadgen: measured"
#: Below this CPU share the server was not the bottleneck.
SATURATED = 0.9
#: Above this CPU share the load generator may have been the bottleneck.
LOADGEN_BUSY = 0.8

SERVER_START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
NPM_TIMEOUT = 300.0

#: A load generator's stderr line handler: True if it took the line, False to
#: pass the line on to our stderr.  It gets the load generator's process too.
LineWatcher = Callable[[str, "subprocess.Popen[str]"], bool]


class BenchError(Exception):
    """The benchmark could not run."""


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


def find_node() -> str:
    """The path of ``node``.

    Raises:
        BenchError: Node.js is not installed.
    """
    node = shutil.which("node")
    if node is None:
        raise BenchError("Node.js ('node') is needed for the load generator; install nodejs")
    return node


def ensure_loadgen(log: Callable[[str], None]) -> str:
    """Check for Node.js and install bench/node_modules with ``npm ci`` if needed.

    Args:
        log: Where progress goes.

    Returns:
        The path of ``node``.

    Raises:
        BenchError: Node.js or npm is missing, or ``npm ci`` failed.
    """
    node = find_node()
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


def twistd() -> Path:
    """The ``twistd`` next to the Python running the benchmark.

    Raises:
        BenchError: There is none.
    """
    path = Path(sys.executable).with_name("twistd")
    if not path.exists():
        raise BenchError(f"{path} not found: is chatservice installed in this environment?")
    return path


def raise_open_files_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; children inherit it.

    Returns:
        The new soft limit.

    Raises:
        BenchError: The hard limit is below `needed`.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = int(Path("/proc/sys/fs/nr_open").read_text())
    if hard < needed:
        raise BenchError(
            f"the open-files hard limit is {hard}, {needed} are needed: raise it "
            "(ulimit -Hn, limits.conf) or pass fewer connections"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def chatservice_command(*options: str) -> list[str]:
    """``twistd chatservice`` in the foreground on a free loopback port, with `options`
    (it announces the port in its log, see `running_server`)."""
    return [
        str(twistd()),
        "-n",
        "--pidfile=",
        "chatservice",
        "--port",
        "tcp:0:interface=127.0.0.1",
        *options,
    ]


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
def running_server(
    name: str,
    command: Sequence[str],
    pinning: Pinning,
    workdir: Path,
    ready: re.Pattern[str] | None = None,
) -> Iterator[tuple[int, int]]:
    """Start server `name` with `command`, wait until it listens, and stop it on exit.

    Its output goes to a log file in `workdir`, read for the port: the server
    announces it as ``port=N``; with `ready`, also for a line matching it
    (chatservice ``--workers``: every worker listens).

    Yields:
        The server's process id and port.
    """
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*pinning.server, *command],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process.pid, _wait_for_port(name, process, log_path, ready)
    finally:
        stop(process)


def _wait_for_port(
    name: str, process: subprocess.Popen[bytes], log_path: Path, ready: re.Pattern[str] | None
) -> int:
    """The port server `name` announces in its log (once `ready` matches a line).

    Raises:
        BenchError: It exited or did not announce a port in time.
    """
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        output = log_path.read_text(errors="replace")
        match = PORT_RE.search(output)
        if match and (ready is None or ready.search(output)):
            return int(match.group(1))
        if process.poll() is not None:
            what = f"exited with status {process.returncode}"
        elif time.monotonic() > deadline:
            what = f"announced no port within {SERVER_START_TIMEOUT:.0f} s"
        else:
            time.sleep(0.05)
            continue
        raise BenchError(f"{name} server {what}; its output:\n{output[-2000:]}")


def children_of(pid: int) -> list[int]:
    """The child processes of `pid` (chatservice --workers: its workers)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_redis(pinning: Pinning, workdir: Path) -> Iterator[tuple[int, str]]:
    """A redis-server on a free loopback port, pinned like the servers; no persistence.

    Yields:
        Its process id and URL.
    """
    server = shutil.which("redis-server")
    if server is None:
        raise BenchError("this needs redis-server (apt-get install redis-server)")
    port = free_port()
    redis = subprocess.Popen(
        [
            *(*pinning.server, server, "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(workdir)),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if redis.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield redis.pid, f"redis://127.0.0.1:{port}"
    finally:
        stop(redis)


@dataclass(frozen=True)
class Service:
    """A running chatservice: its port, and the processes whose CPU time counts.

    Attributes:
        port: Where it listens.
        pids: Its processes: the one, or the master and its workers.
        redis_pid: The redis-server of ``--workers``, or None.
    """

    port: int
    pids: tuple[int, ...]
    redis_pid: int | None = None

    @property
    def all_pids(self) -> list[int]:
        """Every process of the service, Redis included."""
        return [*self.pids, *([self.redis_pid] if self.redis_pid else [])]


@contextmanager
def running_chatservice(
    name: str, pinning: Pinning, workdir: Path, *options: str, workers: int = 1
) -> Iterator[Service]:
    """chatservice with `options`: one process, or (`workers` > 1) ``--workers``
    on a redis-server started here, everything pinned as the server."""
    if workers <= 1:
        with running_server(name, chatservice_command(*options), pinning, workdir) as (pid, port):
            yield Service(port, (pid,))
        return
    with running_redis(pinning, workdir) as (redis_pid, url):
        command = chatservice_command("--workers", str(workers), "--redis", url, *options)
        with running_server(name, command, pinning, workdir, WORKERS_READY_RE) as (pid, port):
            yield Service(port, (pid, *children_of(pid)), redis_pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process `pid` (all its threads) has used."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which is in parentheses and may hold spaces:
    # state is field 3, utime 14 and stime 15 (proc(5)).
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerCpuWindow:
    """A `LineWatcher`: the server's CPU share between MEASURING and MEASURED.

    Args:
        server_pid: The server's process, or all of its processes (the master,
            the workers and Redis of chatservice ``--workers``): their CPU
            time is added up.

    Attributes:
        share: The server's CPU time over wall time between the two lines
            (1.0 is one full core), or None until both have come.
    """

    def __init__(self, server_pid: int | Sequence[int]) -> None:
        self._pids = [server_pid] if isinstance(server_pid, int) else list(server_pid)
        self._start: tuple[float, float] | None = None
        self.share: float | None = None

    def _cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self._pids)

    def __call__(self, line: str, process: subprocess.Popen[str]) -> bool:
        if line == MEASURING:
            self._start = (time.monotonic(), self._cpu())
        elif line == MEASURED and self._start is not None:
            wall = time.monotonic() - self._start[0]
            self.share = round((self._cpu() - self._start[1]) / wall, 3)
        else:
            return False
        return True


def run_loadgen(command: Sequence[str], limit: float, watch: LineWatcher) -> dict[str, Any]:
    """Run a load generator to its end and parse the JSON object it prints.

    Every line it writes on stderr goes to `watch` first, as it comes, and on
    to our stderr unless `watch` took it.  Its stdin is a pipe that stays open
    until `watch` closes it or the load generator has exited.

    Args:
        command: The load generator's command line, pinning included.
        limit: Seconds after which it is killed.
        watch: The stderr line handler.

    Raises:
        BenchError: It failed, did not finish in time, or printed no JSON.
    """
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(limit, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None and process.stderr is not None
        for line in process.stderr:
            line = line.rstrip("\n")
            if not watch(line, process):
                print(line, file=sys.stderr, flush=True)
        output = process.stdout.read()
        status = process.wait()
    finally:
        watchdog.cancel()
        stop(process)
        if process.stdin is not None:
            process.stdin.close()
    if status != 0:
        why = f"was killed after {limit:.0f} s" if status < 0 else f"exited with status {status}"
        raise BenchError(f"the load generator {why}")
    try:
        result: dict[str, Any] = json.loads(output)
    except json.JSONDecodeError:
        raise BenchError(f"the load generator printed no JSON result: {output!r}") from None
    return result


def ratio_of(
    document: dict[str, Any], field: str, top: str = "chatservice", bottom: str = "reference"
) -> float | None:
    """`top`'s `field` over `bottom`'s in `document` (by default chatservice's over the
    reference's), or None if undefined."""
    ours, reference = document[top][field], document[bottom][field]
    return round(ours / reference, 3) if ours is not None and reference else None


def notes_on(name: str, result: dict[str, Any]) -> list[str]:
    """Warnings about a result that does not show the server as the bottleneck.

    `result` has ``server_cpu_share``, ``loadgen_cpu_share`` and ``errors``.
    """
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


def interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so every process started is stopped."""
    raise KeyboardInterrupt


def main_of(run: Callable[[], tuple[dict[str, Any], bool]], log: Callable[[str], None]) -> int:
    """Run a benchmark and print its JSON document; return the exit status.

    0 when it ran (whether or not a target was met), 1 when it could not run
    or its load generator saw errors (its numbers do not count), 130 when
    interrupted (Ctrl-C or SIGTERM).
    """
    signal.signal(signal.SIGTERM, interrupt)
    try:
        document, clean = run()
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
