#!/usr/bin/env python3
"""What permessage-deflate costs and saves on ``/chat``: the numbers behind its settings.

Threshold: for chat-message events whose text is N characters of chat as people
write it (a fixed corpus of chat lines, shuffled with a fixed seed), the event's
size as the server encodes it, its size compressed the way ``/chat`` compresses
it (`chatservice.web.frames`: one message on its own, no context), the fraction
saved, and the server CPU one compression costs, in microseconds (the median
over many events, in this process).  ``crossover_event_bytes`` is the event size
from which deflate saves a quarter of the frame (`WORTH_IT`);
`chatservice.web.frames.DEFLATE_MIN_SIZE` (``chosen_min_size``) is chosen near it.

Join history on the wire: a real ``twistd chatservice`` (in-memory database)
gets ``--history`` messages of such chat in one room through its HTTP API;
then clients join that room over raw sockets, one offering nothing and one
offering what Chromium offers (``permessage-deflate; client_max_window_bits``),
and the bytes the server sent each of them up to their ``chat-join`` are
counted, the ``chat-history`` frame's among them.

    .venv/bin/python bench/deflate_bench.py [--history 100] [--samples 300]

One JSON document on stdout, progress on stderr.  Exit status 0 when it ran, 1
when it could not.  Every process it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import BenchError, Pinning, chatservice_command, main_of, running_server

from chatservice.chat.messages import encode_json
from chatservice.web.frames import DEFLATE_MIN_SIZE, TextFrame, deflate, frame, window_for

#: Text lengths of the threshold table, in characters.
SIZES = (0, 16, 32, 64, 100, 128, 160, 192, 224, 256, 384, 512, 1000, 2000)
#: A compression must save at least this fraction of an event to be worth it:
#: below that, the bytes saved on a small frame (which travels with ~66 bytes
#: of TCP/IP headers anyway) do not repay even one compression per message.
WORTH_IT = 0.25
CHROMIUM_OFFER = "permessage-deflate; client_max_window_bits"
ROOM = "lobby"
TOKEN = "deflate-bench-token"

#: Chat as people write it: the material every text is cut from.
CORPUS = [
    "morning all",
    "did anyone else get the 502s on staging around 9?",
    "yes, the deploy restarted the workers one by one and nginx had no upstream for a bit",
    "ok thanks, I'll add a health check to the rollout",
    "lunch?",
    "give me 10 min, finishing a review",
    "the new build is 20% smaller, nice work",
    "can someone look at PR 4312? it's blocking the release",
    "looking now",
    "left two comments, otherwise good to go",
    "merged 🎉",
    "the customer call moved to 3pm, same link",
    "I can't make it, can you take notes?",
    "sure",
    "has anyone seen the flaky test in the payments suite again",
    "it's the clock one, it fails when the run crosses midnight UTC",
    "haha of course it does",
    "I'll pin the time in the fixture",
    "heads up: the office wifi is being replaced on friday, bring a cable if you need one",
    "where are the slides from yesterday's demo?",
    "in the shared drive under demos/2026-11",
    "thanks!",
    "quick question: do we still support the v1 API or can I remove the adapter?",
    "we promised six months after the v2 launch, so until march",
    "ok, leaving it then, adding a deprecation warning instead",
    "anyone up for a coffee run",
    "me ☕",
    "the dashboard shows p99 latency up since the last release, investigating",
    "looks like the cache hit rate dropped, the key format changed",
    "good catch, that explains the database load too",
    "fix is in review, should be out within the hour",
    "great, I'll tell support",
    "happy birthday Sam! 🎂",
    "thank you all 😊",
    "reminder: retro at 4, add your notes to the board before then",
    "the board link is in the channel topic",
    "is the build broken or is it just me?",
    "just you, try clearing the cache",
    "that worked, thanks",
    "see you tomorrow everyone",
]


def log(message: str) -> None:
    print(f"deflate_bench: {message}", file=sys.stderr, flush=True)


def chat_text(rng: random.Random, length: int) -> str:
    """About `length` characters of chat: corpus lines in random order, cut to size."""
    words: list[str] = []
    size = 0
    while size < length:
        line = rng.choice(CORPUS)
        words.append(line)
        size += len(line) + 1
    return " ".join(words)[:length].strip() or "ok"


def chat_event(rng: random.Random, message_id: int, length: int) -> bytes:
    """A chat-message event as the server encodes it (JSON dialect)."""
    payload = {
        "id": message_id,
        "room": ROOM,
        "username": rng.choice(["alice", "bob", "carol", "dave", "erin", "sam"]),
        "message": chat_text(rng, length),
        "time": f"2026-11-24T{rng.randrange(24):02d}:{rng.randrange(60):02d}:"
        f"{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z",
    }
    data = encode_json(("chat-message", payload))
    assert data is not None
    return data


def compressed_frame(event: bytes) -> bytes:
    """The frame `/chat` sends a member with deflate, as if every event were compressed.

    (`TextFrame.deflated` itself sends events under the threshold plain.)
    """
    return frame(0xC1, deflate(event, window_for(len(event), 15)))


def threshold_table(samples: int) -> dict[str, Any]:
    """The threshold table, and the event size it suggests."""
    rng = random.Random(20261124)
    rows = []
    for size in SIZES:
        events = [chat_event(rng, 1000 + i, size) for i in range(samples)]
        plain = [len(TextFrame(event).plain) for event in events]
        deflated = [len(compressed_frame(event)) for event in events]
        saved = [1 - d / p for d, p in zip(deflated, plain, strict=True)]
        timings = []
        for event in events:
            started = time.perf_counter()
            for _ in range(10):
                compressed_frame(event)
            timings.append((time.perf_counter() - started) / 10 * 1e6)
        rows.append(
            {
                "text_chars": size,
                "event_bytes": round(statistics.median(len(e) for e in events)),
                "deflated_bytes": round(statistics.median(deflated)),
                "saved_fraction": round(statistics.median(saved), 3),
                "compress_us": round(statistics.median(timings), 1),
            }
        )
        log(f"threshold: {rows[-1]}")
    return {
        "rows": rows,
        "worth_it_saved_fraction": WORTH_IT,
        "crossover_event_bytes": crossover(rows),
        "chosen_min_size": DEFLATE_MIN_SIZE,
    }


def crossover(rows: list[dict[str, Any]]) -> int | None:
    """The event size where deflate starts saving `WORTH_IT`, between two rows' sizes."""
    for below, above in itertools.pairwise(rows):
        if below["saved_fraction"] < WORTH_IT <= above["saved_fraction"]:
            share = (WORTH_IT - below["saved_fraction"]) / (
                above["saved_fraction"] - below["saved_fraction"]
            )
            size = below["event_bytes"] + share * (above["event_bytes"] - below["event_bytes"])
            return round(size)
    return None


def post_history(port: int, count: int) -> None:
    """Fill the room with `count` messages through the HTTP API."""
    rng = random.Random(7)
    for n in range(count):
        body = json.dumps(
            {"message": chat_text(rng, rng.choice([12, 30, 60, 100, 180])), "username": "alice"}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/rooms/{ROOM}/messages",
            data=body,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 201:
                raise BenchError(f"posting message {n}: HTTP {response.status}")


def join_and_count(port: int, offer: str | None, username: str) -> dict[str, Any]:
    """Join over a raw socket; what the server sent until our chat-join came back."""
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    request = (
        f"GET /chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: chat.v1.json\r\n"
        + (f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else "")
        + "\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += _recv(sock)
        head, _, data = data.partition(b"\r\n\r\n")
        extensions = None
        for line in head.decode().split("\r\n"):
            if line.lower().startswith("sec-websocket-extensions:"):
                extensions = line.split(":", 1)[1].strip()
        join = json.dumps({"type": "chat-join", "payload": {"username": username, "room": ROOM}})
        sock.sendall(_client_frame(join.encode()))
        frames_bytes = 0
        history: dict[str, Any] = {}
        while True:
            frame = _next_frame(sock, data)
            first, payload, wire, data = frame
            frames_bytes += wire
            if first & 0x40:
                payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
            event = json.loads(payload)
            if event["type"] == "chat-history":
                history = {
                    "history_frame_bytes": wire,
                    "history_compressed": bool(first & 0x40),
                    "history_messages": len(event["payload"]["messages"]),
                    "history_json_bytes": len(payload),
                }
            if event["type"] == "chat-join" and event["payload"]["username"] == username:
                break
    return {"extensions": extensions, "bytes_until_joined": frames_bytes, **history}


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise BenchError("the server closed the connection")
    return chunk


def _client_frame(payload: bytes) -> bytes:
    """One masked text frame (payload under 64 KiB), the mask all zeroes."""
    n = len(payload)
    header = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
    return header + b"\x00\x00\x00\x00" + payload


def _next_frame(sock: socket.socket, data: bytes) -> tuple[int, bytes, int, bytes]:
    """The next server frame: first byte, payload, bytes on the wire, what is left."""
    while True:
        if len(data) >= 2:
            n = data[1] & 0x7F
            at = {126: 4, 127: 10}.get(n, 2)
            if len(data) >= at:
                if at > 2:
                    n = int.from_bytes(data[2:at], "big")
                if len(data) >= at + n:
                    return data[0], data[at : at + n], at + n, data[at + n :]
        data += _recv(sock)


def history_on_the_wire(history: int) -> dict[str, Any]:
    """Join history bytes without and with deflate, from a real server."""
    command = chatservice_command(
        "--database", ":memory:", "--admin-token", TOKEN, "--history", str(history)
    )
    with (
        tempfile.TemporaryDirectory(prefix="deflate-bench-") as tmp,
        running_server("chatservice", command, Pinning((), (), "none"), Path(tmp)) as (_, port),
    ):
        log(f"history: posting {history} messages")
        post_history(port, history)
        plain = join_and_count(port, None, "plain")
        deflated = join_and_count(port, CHROMIUM_OFFER, "browser")
    saved = 1 - deflated["bytes_until_joined"] / plain["bytes_until_joined"]
    return {
        "messages_kept": history,
        "uncompressed": plain,
        "chromium_offer": deflated,
        "history_frame_saved_fraction": round(
            1 - deflated["history_frame_bytes"] / plain["history_frame_bytes"], 3
        ),
        "join_saved_fraction": round(saved, 3),
    }


def run(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    document = {
        "bench": "deflate",
        "params": {"samples": args.samples, "history": args.history},
        "threshold": threshold_table(args.samples),
        "join_history": history_on_the_wire(args.history),
    }
    log(f"join history: {document['join_history']}")
    return document, True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--history", type=int, default=100, help="messages in the room (default: 100)"
    )
    parser.add_argument(
        "--samples", type=int, default=300, help="events per size in the table (default: 300)"
    )
    args = parser.parse_args(argv)
    if args.history < 1 or args.samples < 1:
        parser.error("--history and --samples must be >= 1")
    return main_of(lambda: run(args), log)


if __name__ == "__main__":
    sys.exit(main())
