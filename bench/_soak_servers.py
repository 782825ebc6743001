"""bench/soak.py's processes: chatservice instances, a redis-server, a webhook receiver, RSS, logs.

Everything runs on 127.0.0.1 on free ports, in a temporary directory; every
process started here is stopped by `stop` (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from webhook_receiver import SECRET as WEBHOOK_SECRET  # noqa: E402
from webhook_receiver import ReceiverProcess  # noqa: E402

TWISTD = ROOT / ".venv" / "bin" / "twistd"
ADMIN_TOKEN = "soak-admin-token"
#: Messages kept per room (--history): small, so that the servers' caches are
#: full early in a run and their memory can be judged flat after that; the soak
#: reads what they keep every second (soak.Recorder) to know everything ever kept.
HISTORY = 100

#: Limits of every instance: well-behaved soak clients stay far under them.
#: --max-text-length and --max-send-buffer make the slow consumers' case
#: reachable in seconds (large messages, a small buffer); see bench/README.md.
SERVER_LIMITS = (
    *("--rate", "50", "--burst", "100"),
    *("--max-text-length", "60000"),
    *("--max-send-buffer", "262144"),
    *("--max-connections-per-address", "100000"),
    *("--shutdown-timeout", "2"),
)


def webhook_receiver(workdir: Path) -> ReceiverProcess:
    """The receiver every instance sends its webhooks to (tests/webhook_receiver.py):
    it checks each request's signature and records the events in ``webhooks.jsonl``."""
    return ReceiverProcess(workdir / "webhooks.jsonl", WEBHOOK_SECRET)


def webhook_options(receiver: ReceiverProcess) -> tuple[str, ...]:
    """The options that send an instance's events to `receiver`."""
    return ("--webhook", receiver.url, "--webhook-secret", WEBHOOK_SECRET)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    match = re.search(r"^State:\s+(\S)", status, re.M)
    return bool(match) and match.group(1) != "Z"


def rss_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) if match else None


def children(pid: int) -> list[int]:
    """The child processes of `pid` (``ps --ppid``): a --workers master's workers."""
    out = subprocess.run(
        ["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


def _stop_process(process: subprocess.Popen[Any] | None, timeout: float = 15.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Instance:
    """One chatservice (`twistd -n chatservice`), its log appended to across restarts."""

    def __init__(self, name: str, workdir: Path, extra: tuple[str, ...], workers: int = 1):
        self.name = name
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        self.db = workdir / f"{name}.sqlite3"
        self.extra = extra
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path.touch()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/chat"

    def command(self) -> list[str]:
        return [
            *(str(TWISTD), "-n", "--pidfile=", "chatservice"),
            *("--port", f"tcp:{self.port}:interface=127.0.0.1"),
            *("--database", str(self.db), "--history", str(HISTORY), "--log-level", "info"),
            *("--admin-token", ADMIN_TOKEN),
            *SERVER_LIMITS,
            *self.extra,
            *(("--workers", str(self.workers)) if self.workers > 1 else ()),
        ]

    def start(self, timeout: float = 40.0) -> None:
        offset = self.log_path.stat().st_size
        with open(self.log_path, "ab") as out:
            out.write(f"==== soak: start {self.starts + 1} of {self.name}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        self.starts += 1
        ready = re.compile(r"workers ready" if self.workers > 1 else r"chatservice listening on")
        deadline = time.monotonic() + timeout
        while True:
            if ready.search(self.log_since(offset)):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not start (status {self.process.poll()}); "
                    f"log: {self.log_since(offset)[-2000:]}"
                )
            time.sleep(0.05)

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.poll() is None else None

    def pids(self) -> list[tuple[str, int]]:
        """(role, pid) of every live process: the one, or the master and its workers."""
        if self.pid is None:
            return []
        if self.workers <= 1:
            return [("process", self.pid)]
        return [("master", self.pid), *(("worker", p) for p in children(self.pid))]

    def kill(self) -> None:
        """SIGKILL the instance (its master: the workers stop too); wait until all are gone."""
        assert self.process is not None
        doomed = [p for _, p in self.pids()]
        self.process.kill()
        self.process.wait()
        deadline = time.monotonic() + 20
        while any(alive(p) for p in doomed) and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill_worker(self, choice: int) -> int | None:
        workers = [p for role, p in self.pids() if role == "worker"]
        if not workers:
            return None
        victim = workers[choice % len(workers)]
        os.kill(victim, signal.SIGKILL)
        return victim

    def hup(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGHUP)

    def stop(self) -> None:
        _stop_process(self.process)


class Redis:
    """A redis-server with an append-only file in the work directory."""

    def __init__(self, workdir: Path):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [
                    *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "yes", "--dir", str(self.workdir)),
                    *("--protected-mode", "no"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                pass
            except RuntimeError as e:  # an error reply
                if not str(e).startswith("LOADING"):  # (still reading its append-only file)
                    raise
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def restart(self) -> None:
        """SIGTERM (Redis writes its append-only file), then start on the same dir and port."""
        _stop_process(self.process, 30)
        self.start()

    def kill_pubsub(self) -> str:
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        out = subprocess.run(
            [cli, "-p", str(self.port), "CLIENT", "KILL", "TYPE", "pubsub"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return (out.stdout + out.stderr).strip()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.poll() is None else None

    def stop(self) -> None:
        _stop_process(self.process, 30)

    def command(self, *words: str) -> Any:
        """One command in RESP; its decoded reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
            parts = [f"*{len(words)}\r\n".encode()]
            for w in words:
                b = w.encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
            conn.sendall(b"".join(parts))
            reader = conn.makefile("rb")
            return _read_resp(reader)


def _read_resp(reader: Any) -> Any:
    line = reader.readline()
    if not line:
        raise OSError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = reader.read(n + 2)[:-2]
        return data.decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_resp(reader) for _ in range(n)]
    raise RuntimeError(f"bad RESP line {line!r}")


def tracebacks(log_path: Path) -> list[str]:
    """The lines around every 'Traceback' of a log (at most 5 excerpts)."""
    lines = log_path.read_text("utf-8", "replace").splitlines()
    found = []
    for i, line in enumerate(lines):
        if "Traceback" in line:
            found.append("\n".join(lines[max(0, i - 2) : i + 14]))
    return found
