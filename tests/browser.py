"""Helpers for the real-browser tests: Debian's Chromium and a twistd on a fixed port."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

#: Debian's Chromium (``apt-get install chromium``, done by ``scripts/test``).
#: Playwright's own browser download does not work offline.
CHROMIUM = "/usr/bin/chromium"

#: Headless, and quiet: without the last four Chromium keeps calling home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # the tests may run as root (CI containers)
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    """A loopback port that was free a moment ago (bind to 0, read it, close)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Twistd:
    """``twistd -n chatservice`` on one fixed loopback port, to be stopped and restarted.

    Its output goes to a file (a pipe nobody reads could fill up and stall it).
    """

    def __init__(self, twistd: Path, cwd: Path, *args: str, port: int | None = None) -> None:
        self.twistd = twistd
        self.cwd = cwd
        self.args = args
        self.port = port if port is not None else free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 20) -> None:
        self.starts += 1
        log = self.cwd / f"twistd-{self.port}-{self.starts}.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    str(self.twistd),
                    "-n",
                    "--pidfile=",
                    "chatservice",
                    "--port",
                    f"tcp:{self.port}:interface=127.0.0.1",
                    *self.args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if re.search(rf"chatservice listening on .*port={self.port}\b", text):
                return
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited with {self.process.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"twistd did not listen on {self.port} within {timeout} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
