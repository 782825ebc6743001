#!/usr/bin/env python3
"""Webhook delivery: events sent to a local receiver per second of the server's CPU.

    .venv/bin/python bench/webhook_bench.py [--events 20000] [--topology both]

For each topology (``single``: one process on SQLite; ``redis``: one instance
``--redis`` on a redis-server started here, no persistence), it starts
chatservice with ``--webhook`` to a port where nothing listens yet and
``--webhook-events message`` (so the count is exact), pre-loads N events (one
WebSocket client sends N chat messages back to back and waits until each came
back: stored, hence in the outbox), then starts the receiver and measures the
server's CPU time (``/proc/PID/stat``, as the other benchmarks) from then until
the receiver had all N.  The receiver is a separate process: a minimal asyncio
HTTP/1.1 server (this file, ``--sink``) that counts the events in each body and
answers 204, without checking signatures or parsing JSON, so that it is not the
bottleneck.  With taskset and two CPUs the server (and Redis) run on CPU 0 and
the receiver on CPU 1.  One JSON document on stdout; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BenchError,
    Pinning,
    chatservice_command,
    choose_pinning,
    cpu_seconds,
    free_port,
    running_redis,
    running_server,
    stop,
)

#: The signing secret (the receiver does not check it).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#: The target: events delivered per second of the chatservice process's CPU.
TARGET = 5000
#: What marks one event in a request's body: each starts with its id.
EVENT_MARK = b'{"id":"evt_'
#: Chat messages in flight while pre-loading.
WINDOW = 200


# -- the receiver ------------------------------------------------------------------


class Sink(asyncio.Protocol):
    """One HTTP/1.1 connection: count each POST's events, answer 204; GET: the counts."""

    counts = {"events": 0, "requests": 0, "bytes": 0, "first": 0.0, "last": 0.0}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            if head.startswith("GET"):
                answer = json.dumps(self.counts).encode()
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
                )
                continue
            now = time.time()
            counts = self.counts
            counts["events"] += body.count(EVENT_MARK)
            counts["requests"] += 1
            counts["bytes"] += len(body)
            counts["first"] = counts["first"] or now
            counts["last"] = now
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


async def sink(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", port)
    print(f"sink listening on port={port}", flush=True)
    async with server:
        await server.serve_forever()


def sink_counts(port: int) -> dict[str, float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/")
        counts: dict[str, float] = json.loads(connection.getresponse().read())
        return counts
    finally:
        connection.close()


# -- the measurement ---------------------------------------------------------------------


def log(message: str) -> None:
    print(f"webhook_bench: {message}", file=sys.stderr, flush=True)


def preload(port: int, events: int) -> float:
    """Send `events` chat messages into one room, back to back; wait until all came back.

    Returns:
        The seconds it took.
    """
    from websockets.sync.client import connect

    started = time.monotonic()
    with connect(
        f"ws://127.0.0.1:{port}/chat",
        subprotocols=["chat.v1.json"],  # type: ignore[list-item]
        max_queue=None,
    ) as ws:
        ws.send(json.dumps({"type": "chat-join", "payload": {"username": "bench", "room": "b"}}))
        text = "x" * 64
        sent = came = 0
        while came < events:
            # At most WINDOW in flight: the server's Redis commands all wait in one
            # queue, and 20000 at once would outlast its reply timeout.
            while sent < events and sent - came < WINDOW:
                message = {"type": "chat-message", "payload": {"message": f"{sent} {text}"}}
                ws.send(json.dumps(message))
                sent += 1
            event = json.loads(ws.recv(timeout=60))
            if event["type"] == "chat-message":
                came += 1
            elif event["type"] == "chat-error":
                raise BenchError(f"chat-error while pre-loading: {event['payload']}")
    return time.monotonic() - started


def measure(topology: str, events: int, pinning: Pinning, workdir: Path) -> dict[str, Any]:
    sink_port = free_port()
    options = [
        *("--webhook", f"http://127.0.0.1:{sink_port}/hooks", "--webhook-secret", SECRET),
        *("--webhook-events", "message", "--rate", "100000", "--burst", "100000"),
        *("--max-send-buffer", str(64 * 1024 * 1024), "--log-level", "warn"),
    ]
    with ExitStack() as stack:
        redis_pid = None
        if topology == "redis":
            redis_pid, url = stack.enter_context(running_redis(pinning, workdir))
            options += ["--redis", url]
        else:
            options += ["--database", str(workdir / f"{topology}.sqlite3")]
        pid, port = stack.enter_context(
            running_server(topology, chatservice_command(*options), pinning, workdir)
        )
        # (The listening line is logged at any level.)
        took = preload(port, events)
        log(f"{topology}: {events} events pre-loaded in {took:.1f} s; starting the receiver")
        pids = [pid, *([redis_pid] if redis_pid else [])]
        cpu_before = [cpu_seconds(p) for p in pids]
        receiver = subprocess.Popen(
            [*pinning.loadgen, sys.executable, __file__, "--sink", str(sink_port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        stack.callback(stop, receiver)
        assert receiver.stdout is not None
        if "port=" not in receiver.stdout.readline():
            raise BenchError("the receiver did not start")
        started = time.monotonic()
        while True:
            counts = sink_counts(sink_port)
            if counts["events"] >= events:
                break
            if time.monotonic() - started > 120:
                raise BenchError(f"{topology}: only {counts['events']} of {events} events came")
            time.sleep(0.02)
        cpu = [cpu_seconds(p) - before for p, before in zip(pids, cpu_before, strict=True)]
        waited = time.monotonic() - started
    span = counts["last"] - counts["first"]
    result = {
        "events": int(counts["events"]),
        "requests": int(counts["requests"]),
        "events_per_request": round(counts["events"] / counts["requests"], 1),
        "body_bytes": int(counts["bytes"]),
        "server_cpu_s": round(cpu[0], 3),
        "events_per_server_cpu_s": round(events / cpu[0]),
        "delivery_wall_s": round(span, 3),
        "events_per_wall_s": round(events / span) if span else None,
        "waited_for_retry_s": round(waited - span, 2),
        "preload_s": round(took, 2),
        "meets_target": events / cpu[0] >= TARGET,
    }
    if redis_pid:
        result["redis_cpu_s"] = round(cpu[1], 3)
        result["events_per_cpu_s_with_redis"] = round(events / (cpu[0] + cpu[1]))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--topology", choices=("single", "redis", "both"), default="both")
    parser.add_argument("--sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink is not None:
        asyncio.run(sink(args.sink))
        return 0
    pinning = choose_pinning()
    topologies = ("single", "redis") if args.topology == "both" else (args.topology,)
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmp:
            for topology in topologies:
                results[topology] = measure(topology, args.events, pinning, Path(tmp))
                log(f"{topology}: {json.dumps(results[topology])}")
    except BenchError as e:
        log(str(e))
        return 1
    document = {
        "benchmark": "webhook delivery",
        "params": {
            "events": args.events,
            "pinning": pinning.description,
            "receiver": "asyncio, counts events, answers 204, no signature check",
        },
        **results,
        "target_events_per_server_cpu_s": TARGET,
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
