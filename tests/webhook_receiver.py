"""A webhook receiver process for the end-to-end tests and the soak (docs/hooks.md).

    python tests/webhook_receiver.py --port 0 --secret whsec_... --out events.jsonl

A twisted.web server on 127.0.0.1 that checks every request as an application
would, with the ``standardwebhooks`` library (the signature, the timestamp's
tolerance, the ``webhook-id``), and appends each event of a good request to
`--out` as one JSON line, ``{"webhook_id", "at", "event"}``, flushed before it
answers 204.  A request that fails the check is answered 400 and recorded as
``{"bad": reason, "webhook_id"}``.  Once listening it prints ``listening on
port N`` (and writes N to `--port-file`).

To fail on purpose: ``--fail-first N`` answers the first N requests 500,
``--status CODE`` answers every request CODE (nothing recorded), ``--hang``
never answers.  Such a request records only ``{"answered": CODE or null,
"webhook_id"}`` (`attempts` reads them).

Imported, it starts and stops such processes (`ReceiverProcess`) and reads
what they recorded (`read_log`, `events`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

HERE = Path(__file__).resolve()
#: A secret the tests and the soak sign with (``whsec_`` and 24 random bytes in base64).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


# -- reading what a receiver recorded -------------------------------------------


@dataclass(frozen=True)
class Received:
    """One event as a receiver took it.

    Attributes:
        webhook_id: The request's ``webhook-id``.
        at: When the receiver wrote it (seconds since the epoch).
        event: The event: ``{"id", "type", "time", "data"}``.
    """

    webhook_id: str
    at: float
    event: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.event["id"])

    @property
    def type(self) -> str:
        return str(self.event["type"])

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.event["data"]
        return data


def read_log(path: Path) -> tuple[list[Received], list[dict[str, Any]]]:
    """Everything a receiver wrote to `path`: the events taken, and the bad requests.

    A last line cut short (the receiver killed while writing) is ignored.
    """
    taken: list[Received] = []
    bad: list[dict[str, Any]] = []
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return taken, bad
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "bad" in record:
            bad.append(record)
        elif "event" in record:
            taken.append(Received(record["webhook_id"], record["at"], record["event"]))
    return taken, bad


def attempts(path: Path) -> list[tuple[int | None, str]]:
    """The requests answered on purpose with a failure (or never): (status, webhook-id)."""
    found = []
    for line in path.read_text("utf-8").splitlines() if path.exists() else ():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "answered" in record:
            found.append((record["answered"], record["webhook_id"]))
    return found


def events(path: Path, kind: str | None = None) -> list[Received]:
    """The events a receiver took (of type `kind`), in the order they came; no bad ones."""
    taken, _ = read_log(path)
    return [r for r in taken if kind is None or r.type == kind]


def event_order(event_id: str) -> tuple[int, ...]:
    """A sortable key of an event id: ``evt_12`` (SQLite) or ``evt_1765000000000-3`` (Redis)."""
    return tuple(int(part) for part in event_id.removeprefix("evt_").split("-"))


# -- running one ------------------------------------------------------------------


class ReceiverProcess:
    """``python tests/webhook_receiver.py`` as a child process, restartable on its port.

    Args:
        out: Where it records (appended to across restarts).
        secret: The signing secret it checks with.
        python: The interpreter (this one by default).
    """

    def __init__(self, out: Path, secret: str = SECRET, python: str | None = None) -> None:
        self.out = out
        self.secret = secret
        self.python = python or sys.executable
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def reserve(self) -> int:
        """Pick a free port for it without starting it (to start the service first)."""
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        return self.port

    def start(self, *options: str, timeout: float = 20.0) -> int:
        """Start it (on its port if it had one) with extra `options`; its port once listening."""
        if self.running:
            raise RuntimeError("the receiver is running")
        command = [
            *(self.python, str(HERE), "--port", str(self.port)),
            *("--secret", self.secret, "--out", str(self.out), *options),
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        # Reading blocks; a bind that keeps failing ends the process, hence EOF.
        for line in self.process.stdout:
            self.lines.append(line)
            match = re.match(r"listening on port (\d+)", line)
            if match:
                self.port = int(match.group(1))
                threading.Thread(target=self._drain, args=(self.process,), daemon=True).start()
                return self.port
            if time.monotonic() > deadline:
                break
        self.kill()
        raise RuntimeError(f"the webhook receiver did not start: {''.join(self.lines[-20:])}")

    def _drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL it, as a crash; the port is free again once this returns."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        """SIGTERM it and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def events(self, kind: str | None = None) -> list[Received]:
        """What it took so far (of type `kind`)."""
        return events(self.out, kind)

    def attempts(self) -> list[tuple[int | None, str]]:
        """The requests it failed on purpose: (status or None if it hung, webhook-id)."""
        return attempts(self.out)

    def bad(self) -> list[dict[str, Any]]:
        """The requests it refused as not properly signed."""
        return read_log(self.out)[1]


# -- the process ------------------------------------------------------------------


def serve(argv: Sequence[str] | None = None) -> None:
    """Run a receiver until SIGTERM or SIGINT (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--fail-first", type=int, default=0, metavar="N")
    parser.add_argument("--status", type=int, default=204, metavar="CODE")
    parser.add_argument("--hang", action="store_true")
    args = parser.parse_args(argv)

    from standardwebhooks.webhooks import Webhook, WebhookVerificationError
    from twisted.internet import reactor as global_reactor
    from twisted.internet.error import CannotListenError
    from twisted.web import resource, server

    reactor: Any = global_reactor
    webhook = Webhook(args.secret)
    out: BinaryIO = open(args.out, "ab")  # open while the process lives
    answered = 0

    class Hooks(resource.Resource):
        isLeaf = True

        def render_POST(self, request: Any) -> bytes | int:
            nonlocal answered
            body = request.content.read()
            headers = {
                name.decode("latin-1").lower(): values[-1].decode("latin-1")
                for name, values in request.requestHeaders.getAllRawHeaders()
            }
            webhook_id = headers.get("webhook-id")
            answered += 1
            failing = None  # with --hang: never answered
            if args.hang:
                pass
            elif answered <= args.fail_first:
                failing = 500
            elif not 200 <= args.status < 300:
                failing = args.status
            if args.hang or failing is not None:
                record = {"answered": failing, "webhook_id": webhook_id}
                out.write(json.dumps(record).encode() + b"\n")
                out.flush()
                if args.hang:
                    return server.NOT_DONE_YET
                request.setResponseCode(failing)
                return b"not now\n"
            try:
                webhook.verify(body, headers)
                batch = json.loads(body)["events"]
                if not isinstance(batch, list):
                    raise ValueError("events is not a list")
            except (WebhookVerificationError, ValueError, KeyError, TypeError) as e:
                record = {"bad": f"{type(e).__name__}: {e}", "webhook_id": webhook_id}
                out.write(json.dumps(record).encode() + b"\n")
                out.flush()
                request.setResponseCode(400)
                return b"bad request\n"
            now = time.time()
            out.write(
                b"".join(
                    json.dumps({"webhook_id": webhook_id, "at": now, "event": e}).encode() + b"\n"
                    for e in batch
                )
            )
            out.flush()
            request.setResponseCode(args.status)
            return b""

    site = server.Site(Hooks())
    site.noisy = False
    deadline = time.monotonic() + 10
    while True:
        try:
            port = reactor.listenTCP(args.port, site, interface="127.0.0.1")
            break
        except CannotListenError:
            # The port of a receiver just killed, in TIME_WAIT or not yet closed.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    number = port.getHost().port
    if args.port_file:
        args.port_file.write_text(f"{number}\n")
    print(f"listening on port {number}", flush=True)
    reactor.run()
    out.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    serve()
