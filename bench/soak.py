#!/usr/bin/env python3
"""Soak under faults: load and faults at once, then a checker.

    .venv/bin/python bench/soak.py --topology single --minutes 1
    .venv/bin/python bench/soak.py --topology redis --minutes 10 --seed 7

Starts its own servers on 127.0.0.1 (one process on SQLite, or two instances and a
``--workers 2`` instance on a redis-server), drives them with seeded asyncio clients
(``websockets``) of both dialects, injects faults on a seeded schedule, and checks
what the clients actually received against the history kept in the end.  One JSON
document on stdout, progress on stderr; exit 1 on any violation.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import datetime
import http.client
import json
import os
import random
import re
import socket
import sqlite3
import struct
import sys
import tempfile
import time
from array import array
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

from _soak_servers import (
    ADMIN_TOKEN,
    HISTORY,
    SERVER_LIMITS,
    Instance,
    Redis,
    rss_kib,
    tracebacks,
    webhook_options,
    webhook_receiver,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

ROOMS = [f"r{i}" for i in range(6)]
BULK, FLOOD, JUNK = "bulk", "flood", "junk"
JSON_PROTO, TEXT_PROTO = "chat.v1.json", "plain-text"
#: chat-error codes a well-behaved client may get without anything being wrong.
BENIGN_ERRORS = {"unavailable", "not-joined"}
#: ... and their reasons, as the text dialect shows them ("! reason").
BENIGN_TEXT_ERRORS = ("cannot reach its storage", "you have not joined")
#: A server-side close of a well-behaved client within this many seconds after a
#: kill of its instance (or worker) is explained by the fault.
FAULT_WINDOW = (-3.0, 20.0)
#: Latency samples this long after a fault was done are still the fault's.
FAULT_SETTLE = 5.0
#: The RSS rule (rss_report): warm points, the span judged, the growth allowed.
RSS_WARMUP, LIFE_WARMUP, RSS_SPAN, RSS_GROWTH_PCT = 0.4, 60.0, 0.3, 5.0
#: Seconds the webhooks may take, once the load is over, to bring the receiver every
#: kept message (a retry backs off to 16 s after a few failures; on Redis a
#: killed sender's batch is claimed after 10 s).
WEBHOOK_DRAIN = 90.0
WORDS = "the quick brown fox jumps over a lazy dog while soak tests run on".split()

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"soak [{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def now() -> float:
    return time.monotonic() - T0


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 2)


def parse_time(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class Soak:
    """The shared state: servers, counters, what every client saw, violations."""

    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = workdir
        self.duration = args.minutes * 60
        self.redis: Redis | None = None
        self.instances: list[Instance] = []
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.violations: dict[str, list[Any]] = defaultdict(list)
        self.intervals: list[dict[str, Any]] = []
        self.acks: list[tuple[str, str, int | None, str]] = []  # (who, room, id, token)
        self.seen: dict[str, dict[int, str]] = defaultdict(dict)  # room -> id -> token
        self.echo_ms: list[float] = []
        self.delivery_ms = array("d")  # live deliveries: latency (ms) ...
        self.delivery_at = array("d")  # ... and when (now())
        self.abuse: list[list[Any]] = []  # [start, end, "slow"|"flood"]: slow consumers, flooders
        self.faults: list[dict[str, Any]] = []
        self.rss: dict[str, list[tuple[float, int]]] = {}
        self.stopping = asyncio.Event()
        self.bulk_active = 0
        self.slow: list[dict[str, Any]] = []
        self.floods: list[dict[str, Any]] = []
        self.garbage: Counter[str] = Counter()
        self.server_closes: list[dict[str, Any]] = []
        self.load_end = 0.0
        self.recorder = Recorder(self)
        self.receiver = webhook_receiver(workdir)
        self.webhooks = Webhooks(self)

    def violation(self, kind: str, example: Any) -> None:
        self.violations[kind].append(example)

    # --- the servers -----------------------------------------------------------

    def start_servers(self) -> None:
        hooks: tuple[str, ...] = ()
        if not self.args.no_webhooks:
            self.receiver.start()
            log(f"webhook receiver on port {self.receiver.port}")
            hooks = webhook_options(self.receiver)
        if self.args.topology == "single":
            self.instances = [Instance("A", self.workdir, hooks)]
        else:
            self.redis = Redis(self.workdir)
            self.redis.start()
            extra = ("--redis", self.redis.url, *hooks)
            self.instances = [
                Instance("A", self.workdir, extra),
                Instance("B", self.workdir, extra),
                Instance("C", self.workdir, extra, workers=2),
            ]
        for inst in self.instances:
            inst.start()
            log(f"instance {inst.name} on port {inst.port} (pids {inst.pids()})")

    def stop_servers(self) -> None:
        for inst in self.instances:
            inst.stop()
        if self.redis is not None:
            self.redis.stop()
        self.receiver.stop()

    def pick(self, rng: random.Random, avoid: Instance | None = None) -> Instance:
        choices = [i for i in self.instances if i is not avoid] or self.instances
        return rng.choice(choices)

    def explained(self, inst_name: str, t: float) -> bool:
        """Whether a kill of `inst_name` (instance or worker) explains a drop at `t`."""
        return any(
            f["target"] == inst_name
            and f["kind"] in ("kill-instance", "kill-worker")
            and f["t"] + FAULT_WINDOW[0] <= t <= f.get("t_done", f["t"]) + FAULT_WINDOW[1]
            for f in self.faults
        )

    # --- RSS ------------------------------------------------------------------

    async def sample_rss(self) -> None:
        while not self.stopping.is_set():
            t = round(now() - self.load_start, 1)
            procs = [
                (f"{i.name}:{role}:{pid}", pid) for i in self.instances for role, pid in i.pids()
            ]
            if self.redis is not None and self.redis.pid:
                procs.append((f"redis:{self.redis.pid}", self.redis.pid))
            for key, pid in procs:
                kib = rss_kib(pid)
                if kib is not None:
                    self.rss.setdefault(key, []).append((t, kib))
            try:
                await asyncio.wait_for(self.stopping.wait(), self.args.rss_interval)
            except TimeoutError:
                pass

    # --- faults -----------------------------------------------------------------

    def killable(self) -> list[Instance]:
        """The instances a SIGKILL may hit now.  In runs long enough for the RSS
        rule, a process must live to the end: instance A is never killed in the
        redis topology, and the single topology's only instance is not killed in
        the second half (it is sent SIGHUP instead)."""
        if self.args.minutes < 5:
            return self.instances
        if self.args.topology == "redis":
            return self.instances[1:]
        return self.instances if now() < self.load_start + 0.5 * self.duration else []

    async def run_faults(self) -> None:
        rng = random.Random(self.args.seed * 7919 + 1)
        kinds = (
            ["kill-instance", "sighup"]
            if self.args.topology == "single"
            else ["kill-instance", "kill-worker", "redis-restart", "pubsub-kill", "sighup"]
        )
        order: list[str] = []
        t = self.load_start + 0.15 * self.duration
        end = self.load_start + 0.85 * self.duration
        while t < end and not self.args.no_faults:
            await asyncio.sleep(max(0.0, t - now()))
            if not order:
                order = kinds[:]
                rng.shuffle(order)
            kind = order.pop()
            victims = self.killable()
            if kind == "kill-instance" and not victims:
                kind = "sighup"
            fault: dict[str, Any] = {"kind": kind, "t": round(now(), 2)}
            self.faults.append(fault)
            try:
                if kind == "kill-instance":
                    inst = rng.choice(victims)
                    fault["target"] = inst.name
                    log(f"fault: SIGKILL instance {inst.name}")
                    await asyncio.to_thread(inst.kill)
                    await asyncio.sleep(rng.uniform(0.2, 1.5))
                    await asyncio.to_thread(inst.start)
                elif kind == "kill-worker":
                    inst = self.instances[2]
                    fault["target"] = inst.name
                    fault["pid"] = await asyncio.to_thread(inst.kill_worker, rng.randrange(2))
                    log(f"fault: SIGKILL worker {fault['pid']} of {inst.name}")
                elif kind == "sighup":
                    inst = rng.choice(self.instances)
                    fault["target"] = inst.name
                    log(f"fault: SIGHUP {inst.name}")
                    inst.hup()
                elif kind == "redis-restart":
                    assert self.redis is not None
                    fault["target"] = "redis"
                    log("fault: redis-server restart")
                    await asyncio.to_thread(self.redis.restart)
                elif kind == "pubsub-kill":
                    assert self.redis is not None
                    fault["target"] = "redis"
                    fault["result"] = await asyncio.to_thread(self.redis.kill_pubsub)
                    log(f"fault: CLIENT KILL TYPE pubsub: {fault['result']}")
            except Exception as e:  # a fault that could not be done is a soak error
                fault["error"] = repr(e)
                self.violation("fault-failed", fault)
                log(f"fault {kind} failed: {e!r}")
            fault["t_done"] = round(now(), 2)
            # Short runs (the test command's) get faults more often: every kind at
            # least once (kinds come in shuffled rounds).
            t += rng.uniform(8.0, 14.0) if self.args.minutes >= 5 else rng.uniform(4.0, 7.0)

    # --- HTTP API -------------------------------------------------------------

    def http(
        self, inst: Instance, method: str, path: str, body: dict | None = None
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=10)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            try:
                return response.status, json.loads(raw)
            except ValueError:
                return response.status, raw[:200].decode("utf-8", "replace")
        finally:
            conn.close()

    async def api_load(self) -> None:
        rng = random.Random(self.args.seed * 31 + 5)
        k = 0
        while not self.stopping.is_set():
            await asyncio.sleep(rng.uniform(0.5, 2.5))
            if self.stopping.is_set():
                break
            inst = self.pick(rng)
            k += 1
            try:
                if k % 8 == 0:
                    status, body = await asyncio.to_thread(
                        self.http, inst, "POST", f"/broadcast/soak-notice-{k}"
                    )
                    self.counts[f"api_broadcast_{status}"] += 1
                else:
                    room = rng.choice(ROOMS)
                    token = f"api-m{k}"
                    status, body = await asyncio.to_thread(
                        self.http,
                        inst,
                        "POST",
                        f"/api/rooms/{room}/messages",
                        {"message": f"{token} from the HTTP API", "username": "api"},
                    )
                    self.counts[f"api_post_{status}"] += 1
                    if status == 201:
                        self.acks.append(("api", room, body.get("id"), token))
                        self.counts["messages_sent"] += 1
                        self.counts["messages_acked"] += 1
                    elif status not in (503,) and not self.explained(inst.name, now()):
                        self.violation(
                            "api-error",
                            {
                                "t": round(now(), 2),
                                "instance": inst.name,
                                "status": status,
                                "body": body,
                            },
                        )
            except OSError as e:
                self.counts["api_unreachable"] += 1
                if not self.explained(inst.name, now()):
                    self.violation(
                        "api-unreachable",
                        {"t": round(now(), 2), "instance": inst.name, "error": repr(e)},
                    )


class Client:
    """A well-behaved chat client: JSON (`chat.v1.json`) or text (`plain-text`)."""

    def __init__(self, soak: Soak, index: int, dialect: str, bulk: bool = False):
        self.soak = soak
        self.index = index
        self.dialect = dialect
        self.bulk = bulk
        self.rng = random.Random(soak.args.seed * 1_000_003 + index)
        self.prefix = ("b" if bulk else "c" if dialect == JSON_PROTO else "t") + str(index)
        self.deflate = dialect == JSON_PROTO and self.rng.random() < 0.2
        self.gen = 0
        self.name = ""
        self.msg_no = 0
        self.last_seen: dict[str, int] = {}
        self.pending: dict[str, tuple[float, str]] = {}  # token -> (sent at, room)
        self.open: dict[str, dict[str, Any]] = {}  # room -> interval
        self.join_since: dict[str, int | None] = {}
        self.joined: set[str] = set()
        self.nick_no = 0

    # The reader -------------------------------------------------------------------

    def on_json(self, frame: dict[str, Any], conn: dict[str, Any]) -> None:
        soak = self.soak
        kind, p = frame.get("type"), frame.get("payload") or {}
        if kind == "chat-message":
            room, mid = p["room"], p["id"]
            soak.counts["messages_delivered"] += 1
            if room != BULK:
                soak.delivery_ms.append((time.time() - parse_time(p["time"])) * 1000)
                soak.delivery_at.append(now())
            token = p["message"].split(" ", 1)[0]
            soak.seen[room][mid] = token
            iv = self.open.get(room)
            if iv is None:
                soak.violation(
                    "message-outside-membership",
                    {"client": self.prefix, "conn": conn["id"], "room": room, "id": mid},
                )
            else:
                iv["ids"].append(mid)
                iv["live"].append((len(iv["ids"]) - 1, round(now(), 3)))
                iv["stamped"].append((mid, parse_time(p["time"])))
            self.last_seen[room] = max(self.last_seen.get(room, 0), mid)
            sent = self.pending.pop(token, None)
            if sent is not None:
                soak.echo_ms.append((time.monotonic() - sent[0]) * 1000)
                soak.acks.append((self.prefix, room, mid, token))
                soak.counts["messages_acked"] += 1
        elif kind == "chat-history":
            room = p["room"]
            self.close_interval(room)
            ids = [m["id"] for m in p["messages"]]
            for m in p["messages"]:
                soak.seen[room][m["id"]] = m["message"].split(" ", 1)[0]
            since = self.join_since.pop(room, None)
            iv = {
                "client": self.prefix,
                "conn": conn["id"],
                "instance": conn["instance"],
                "room": room,
                "since": since,
                "recovered": p.get("recovered"),
                "history": len(ids),
                "ids": ids,
                "t": round(now(), 2),
                "at": time.time(),
                "live": [],
                # (id, server time) of each live message: see "not-recovered".
                "stamped": [],
            }
            self.soak.intervals.append(iv)
            self.open[room] = iv
            self.joined.add(room)
            if ids:
                self.last_seen[room] = max(self.last_seen.get(room, 0), max(ids))
            if since is not None:
                soak.counts["joins_with_since"] += 1
                if not p.get("recovered"):
                    soak.counts["since_not_recovered"] += 1
        elif kind == "chat-leave":
            if p.get("username") == self.name:
                self.close_interval(p["room"])
                self.joined.discard(p["room"])
        elif kind == "chat-nick":
            if p.get("old") == self.name:
                self.name = p["new"]
        elif kind == "chat-error":
            code = p.get("code")
            soak.errors[code] += 1
            if code not in BENIGN_ERRORS:
                soak.violation(
                    "chat-error",
                    {"client": self.prefix, "conn": conn["id"], "payload": p, "t": round(now(), 2)},
                )
            if p.get("type") == "chat-join" and p.get("room"):
                self.join_since.pop(p["room"], None)
        elif kind == "chat-notice":
            soak.counts["notices_received"] += 1
        elif kind == "chat-welcome":
            conn["server_id"] = p.get("id")

    def close_interval(self, room: str) -> None:
        self.open.pop(room, None)

    def on_text(self, line: str, conn: dict[str, Any]) -> None:
        soak = self.soak
        match = re.match(r"\[([^\]]+)\] (\S+): (\S+)", line)
        if match:
            soak.counts["messages_delivered"] += 1
            room, token = match.group(1), match.group(3)
            sent = self.pending.pop(token, None)
            if sent is not None:
                soak.echo_ms.append((time.monotonic() - sent[0]) * 1000)
                soak.acks.append((self.prefix, room, None, token))
                soak.counts["messages_acked"] += 1
        elif line.startswith("***"):
            soak.counts["notices_received"] += 1
        elif line.startswith("! "):
            soak.errors["text:" + line[2:40]] += 1
            # (The text dialect shows reasons, not codes: those of BENIGN_ERRORS.)
            if not any(reason in line for reason in BENIGN_TEXT_ERRORS):
                soak.violation(
                    "chat-error",
                    {"client": self.prefix, "conn": conn["id"], "line": line, "t": round(now(), 2)},
                )

    async def reader(self, ws: Any, conn: dict[str, Any]) -> None:
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    self.soak.violation("binary-from-server", {"client": self.prefix})
                    continue
                if self.dialect == JSON_PROTO:
                    self.on_json(json.loads(raw), conn)
                else:
                    for line in raw.split("\n"):
                        self.on_text(line, conn)
        except ConnectionClosed:
            pass
        except Exception as e:
            self.soak.violation(
                "client-error", {"client": self.prefix, "conn": conn["id"], "error": repr(e)}
            )

    # The writer -------------------------------------------------------------------

    def text_of(self, size: int | None = None) -> tuple[str, str]:
        self.msg_no += 1
        token = f"{self.prefix}-m{self.msg_no}"
        if size:
            return token, token + " " + ("x" * size)
        words = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(1, 30)))
        return token, f"{token} {words}"

    async def send(self, ws: Any, kind: str, payload: dict[str, Any]) -> None:
        await ws.send(json.dumps({"type": kind, "payload": payload}))

    async def join(self, ws: Any, room: str) -> None:
        since = self.last_seen.get(room)
        payload: dict[str, Any] = {"username": self.name, "room": room}
        if since is not None:
            payload["since"] = since
        self.join_since[room] = since
        await self.send(ws, "chat-join", payload)

    async def act_json(self, ws: Any) -> bool:
        """One action; False to drop the connection."""
        rng = self.rng
        if self.bulk:
            if self.soak.bulk_active:
                token, text = self.text_of(40_000)
                await asyncio.sleep(1 / 12)
            else:
                token, text = self.text_of()
                await asyncio.sleep(rng.uniform(1.0, 3.0))
            if BULK in self.joined:
                self.pending[token] = (time.monotonic(), BULK)
                self.soak.counts["messages_sent"] += 1
                await self.send(ws, "chat-message", {"message": text, "room": BULK})
            return rng.random() > 0.005
        await asyncio.sleep(rng.uniform(0.4, 3.6))
        roll = rng.random()
        joined = sorted(self.joined)
        if roll < 0.45 and joined:
            room = rng.choice(joined)
            token, text = self.text_of()
            self.pending[token] = (time.monotonic(), room)
            self.soak.counts["messages_sent"] += 1
            await self.send(ws, "chat-message", {"message": text, "room": room})
        elif roll < 0.60 and joined:
            await self.send(ws, "chat-typing", {"room": rng.choice(joined)})
        elif roll < 0.64:
            self.nick_no += 1
            await self.send(
                ws, "chat-nick", {"username": f"{self.prefix}-{self.gen}n{self.nick_no}"}
            )
        elif roll < 0.74 and len(joined) < 3:
            free = [r for r in ROOMS if r not in self.joined and r not in self.join_since]
            if free:  # never a second join of a room whose history has not come yet
                await self.join(ws, rng.choice(free))
        elif roll < 0.80 and len(joined) > 1:
            await self.send(ws, "chat-leave", {"room": rng.choice(joined)})
        elif roll < 0.83:
            return False
        return True

    async def act_text(self, ws: Any) -> bool:
        rng = self.rng
        await asyncio.sleep(rng.uniform(0.4, 3.6))
        roll = rng.random()
        if roll < 0.6:
            token, text = self.text_of()
            self.pending[token] = (time.monotonic(), "")
            self.soak.counts["messages_sent"] += 1
            await ws.send(text)
        elif roll < 0.7:
            await ws.send(f"/join {rng.choice(ROOMS)}")
        elif roll < 0.75:
            await ws.send("/who")
        elif roll < 0.78:
            self.nick_no += 1
            self.name = f"{self.prefix}-{self.gen}n{self.nick_no}"
            await ws.send(f"/nick {self.name}")
        elif roll < 0.81:
            return False
        return True

    async def run(self, start_delay: float) -> None:
        soak = self.soak
        await asyncio.sleep(start_delay)
        inst: Instance | None = None
        while not soak.stopping.is_set():
            inst = soak.pick(self.rng, inst) if inst is not None else soak.pick(self.rng)
            self.gen += 1
            self.nick_no = 0
            self.name = f"{self.prefix}-{self.gen}"
            try:
                ws = await connect(
                    inst.url,
                    subprotocols=[self.dialect],
                    open_timeout=5,
                    ping_interval=None,
                    max_size=2**24,
                    compression="deflate" if self.deflate else None,
                    close_timeout=2,
                )
            except Exception:
                soak.counts["connect_failures"] += 1
                await asyncio.sleep(self.rng.uniform(0.5, 2.0))
                continue
            soak.counts["connections"] += 1
            if self.gen > 1:
                soak.counts["reconnects"] += 1
            conn = {"id": f"{self.prefix}.{self.gen}", "instance": inst.name}
            self.open.clear()
            self.joined.clear()
            self.join_since.clear()
            self.pending.clear()
            reading = asyncio.create_task(self.reader(ws, conn))
            dropped = False
            try:
                if self.dialect == JSON_PROTO:
                    rooms = [BULK] if self.bulk else self.rng.sample(ROOMS, self.rng.randint(1, 2))
                    for room in rooms:
                        await self.join(ws, room)
                else:
                    await ws.send(f"/nick {self.name}")
                    await ws.send(f"/join {self.rng.choice(ROOMS)}")
                act = self.act_json if self.dialect == JSON_PROTO else self.act_text
                while not soak.stopping.is_set() and not reading.done():
                    if not await act(ws):
                        dropped = True
                        soak.counts["abrupt_drops"] += 1
                        ws.transport.abort()
                        break
            except ConnectionClosed:
                pass
            if soak.stopping.is_set() and not dropped:
                try:
                    await asyncio.wait_for(ws.close(), 5)
                except Exception:
                    pass
            try:
                await asyncio.wait_for(reading, 10)
            except TimeoutError:
                reading.cancel()
            if not dropped and not soak.stopping.is_set():
                code = ws.close_code
                t = round(now(), 2)
                record = {
                    "client": self.prefix,
                    "conn": conn["id"],
                    "instance": inst.name,
                    "code": code,
                    "reason": ws.close_reason,
                    "t": t,
                }
                soak.server_closes.append(record)
                if code not in (1006, None, 1001) or not soak.explained(inst.name, t):
                    soak.violation("unexpected-close", record)
                await asyncio.sleep(self.rng.uniform(0.5, 2.0))
            else:
                await asyncio.sleep(self.rng.uniform(0.1, 1.0))


# --- slow consumers, flooder, garbage -----------------------------------------------


def frames_of(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Unmasked server frames in `buf`, and what is left of an incomplete one."""
    out = []
    while len(buf) >= 2:
        opcode, length, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                break
            length, at = struct.unpack("!H", buf[2:4])[0], 4
        elif length == 127:
            if len(buf) < 10:
                break
            length, at = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < at + length:
            break
        out.append((opcode, buf[at : at + length]))
        buf = buf[at + length :]
    return out, buf


def masked(payload: bytes, opcode: int = 1) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def slow_consumer(soak: Soak, k: int, inst: Instance) -> None:
    """A client that joins the bulk room and never reads: closed 1008 'slow consumer'.

    Tried again (up to 3 times) while a fault restarted its instance meanwhile.
    """
    for attempt in range(3):
        while any("t_done" not in f for f in soak.faults):  # its instance may be down
            await asyncio.sleep(0.5)
        if soak.stopping.is_set() or not await _slow_consumer(soak, k, attempt, inst):
            return


async def _slow_consumer(soak: Soak, k: int, attempt: int, inst: Instance) -> bool:
    """One try; True if it was voided by a fault."""
    loop = asyncio.get_running_loop()
    record: dict[str, Any] = {
        "n": k,
        "attempt": attempt,
        "instance": inst.name,
        "t": round(now(), 2),
    }
    soak.slow.append(record)
    starts = inst.starts
    offset = inst.log_size()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", inst.port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(
            sock,
            (
                f"GET /chat HTTP/1.1\r\nHost: 127.0.0.1:{inst.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: {JSON_PROTO}\r\n\r\n"
            ).encode(),
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += await asyncio.wait_for(loop.sock_recv(sock, 1), 10)
        if not buf.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake: {buf[:80]!r}")
        rest = b""
        frames: list[tuple[int, bytes]] = []
        while not frames:
            rest += await asyncio.wait_for(loop.sock_recv(sock, 256), 10)
            frames, _ = frames_of(rest)
        conn_id = json.loads(frames[0][1])["payload"]["id"]
        record["conn_id"] = conn_id
        join = {
            "type": "chat-join",
            "payload": {"username": f"slow{k}-{attempt}-{conn_id}", "room": BULK},
        }
        await loop.sock_sendall(sock, masked(json.dumps(join).encode()))
        # Read until the join is answered (then never again): a join refused
        # while Redis is away (unavailable) makes no slow consumer.
        answer = None
        while answer is None:
            rest += await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
            frames, _ = frames_of(rest)
            for _, payload in frames[1:]:
                kind = json.loads(payload).get("type")
                if kind in ("chat-history", "chat-error"):
                    answer = kind
                    break
        if answer == "chat-error":
            record["voided"] = "its join was refused (Redis was away)"
            return True
        soak.bulk_active += 1
        abuse: list[Any] = [now(), float("inf"), "slow"]
        soak.abuse.append(abuse)
        pattern = re.compile(rf"conn={conn_id} closed as a slow consumer")
        try:
            deadline = now() + 60
            while now() < deadline:
                await asyncio.sleep(0.5)
                if inst.starts != starts:
                    record["voided"] = "its instance was restarted"
                    break
                if pattern.search(inst.log_since(offset)):
                    record["closed_after_s"] = round(now() - record["t"], 2)
                    break
        finally:
            soak.bulk_active -= 1
            abuse[1] = now() + 2.0
        # Drain what was sent, to the end: a close frame (1008), or a drop.
        data = bytearray()
        deadline = now() + 15
        while now() < deadline:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            data += chunk
        frames, _ = frames_of(rest + bytes(data))
        closes = [f for op, f in frames if op == 8]
        if closes and len(closes[0]) >= 2:
            record["close_code"] = struct.unpack("!H", closes[0][:2])[0]
            record["close_reason"] = closes[0][2:].decode("utf-8", "replace")
        else:
            record["close_code"] = None  # dropped without a close frame that got through
        record["bytes_drained"] = len(data)
    except ConnectionRefusedError as e:
        record["voided"] = f"its instance was down: {e!r}"
    except Exception as e:
        record["error"] = repr(e)
    finally:
        sock.close()
    ok = "closed_after_s" in record and record.get("close_code") in (1008, None)
    if not ok and "voided" not in record:
        soak.violation("slow-consumer-not-closed", record)
    log(f"slow consumer {k}: {record}")
    return "voided" in record


async def flooder(soak: Soak, k: int, inst: Instance) -> None:
    """Sends far above the rate limit: closed 1008 'flooding'."""
    while any("t_done" not in f for f in soak.faults):  # its instance may be down
        await asyncio.sleep(0.5)
    record: dict[str, Any] = {"n": k, "instance": inst.name, "t": round(now(), 2)}
    soak.floods.append(record)
    abuse: list[Any] = [now(), float("inf"), "flood"]
    soak.abuse.append(abuse)
    starts = inst.starts
    try:
        async with connect(
            inst.url, subprotocols=[JSON_PROTO], open_timeout=5, ping_interval=None, close_timeout=2
        ) as ws:
            await ws.send(
                json.dumps(
                    {"type": "chat-join", "payload": {"username": f"flood{k}", "room": FLOOD}}
                )
            )

            async def drain() -> None:
                try:
                    async for _ in ws:
                        pass
                except ConnectionClosed:
                    pass

            draining = asyncio.create_task(drain())
            sent = 0
            try:
                for sent in range(20_000):
                    await ws.send('{"type": "chat-typing", "payload": {"room": "flood"}}')
                    if sent % 200 == 0:
                        await asyncio.sleep(0)
                        if draining.done():
                            break
            except ConnectionClosed:
                pass
            await asyncio.wait_for(draining, 20)
            record.update(sent=sent, code=ws.close_code, reason=ws.close_reason)
    except Exception as e:
        record["error"] = repr(e)
    abuse[1] = now() + 2.0
    if inst.starts != starts:
        record["voided"] = "its instance was restarted"
    elif (record.get("code"), record.get("reason")) != (1008, "flooding"):
        soak.violation("flooder-not-closed", record)
    log(f"flooder {k}: {record}")


async def garbage(soak: Soak) -> None:
    """Bad JSON (chat-error bad-json, the connection stays) and binary frames (1003)."""
    rng = random.Random(soak.args.seed * 17 + 3)
    k = 0
    while not soak.stopping.is_set():
        await asyncio.sleep(rng.uniform(2.0, 5.0))
        if soak.stopping.is_set():
            break
        k += 1
        inst = soak.pick(rng)
        starts = inst.starts
        dialect = JSON_PROTO if k % 3 else TEXT_PROTO
        record: dict[str, Any] = {
            "n": k,
            "instance": inst.name,
            "dialect": dialect,
            "t": round(now(), 2),
        }
        try:
            async with connect(
                inst.url,
                subprotocols=[dialect],
                open_timeout=5,
                ping_interval=None,
                close_timeout=2,
            ) as ws:
                if dialect == JSON_PROTO:
                    await ws.send(
                        '{"type": "chat-join", "payload": {"username": '
                        f'"junk{k}", "room": "{JUNK}"}}}}'
                    )
                    await ws.send('{"type": "chat-message", "payload": {"message": oops')
                    token = f"g{k}-m1"
                    got_error = got_echo = False
                    record["received"] = received = []
                    record["token"] = token
                    await ws.send(
                        json.dumps(
                            {
                                "type": "chat-message",
                                "payload": {"message": f"{token} after junk", "room": JUNK},
                            }
                        )
                    )
                    deadline = now() + 10
                    while now() < deadline and not (got_error and got_echo):
                        frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - now()))
                        p = frame.get("payload") or {}
                        received.append(
                            [round(now(), 2), frame["type"], p.get("code") or p.get("id")]
                        )
                        if frame["type"] == "chat-error" and p.get("code") == "bad-json":
                            got_error = True
                        elif frame["type"] == "chat-message" and p.get("message", "").startswith(
                            token
                        ):
                            got_echo = True
                            soak.acks.append((f"junk{k}", JUNK, p["id"], token))
                            soak.seen[JUNK][p["id"]] = token
                            soak.counts["messages_acked"] += 1
                    soak.counts["messages_sent"] += 1
                    record.update(bad_json_error=got_error, stayed_open=got_echo)
                    soak.garbage["bad_json_answered" if got_error else "bad_json_unanswered"] += 1
                else:
                    await ws.recv()
                await ws.send(b"\x00\xffgarbage")
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)
                except ConnectionClosed:
                    pass
                record.update(code=ws.close_code)
                soak.garbage[f"binary_close_{ws.close_code}"] += 1
        except Exception as e:
            record["error"] = repr(e)
        unavailable = any(r[2] == "unavailable" for r in record.get("received", []))
        if unavailable:  # Redis (or its subscription) was down: the join was refused
            soak.garbage["voided_by_unavailable"] += 1
            continue
        if inst.starts != starts or (
            record.get("code") in (1006, None) and soak.explained(inst.name, now())
        ):
            soak.garbage["voided_by_fault"] += 1
            continue
        if (
            record.get("code") != 1003
            or record.get("bad_json_error") is False
            or record.get("stayed_open") is False
        ):
            soak.violation("garbage-handling", record)


# --- the run ---------------------------------------------------------------------------


async def load(soak: Soak) -> None:
    args = soak.args
    soak.load_start = now()
    rng = random.Random(args.seed)
    clients = [
        Client(soak, i, TEXT_PROTO if rng.random() < 0.25 else JSON_PROTO)
        for i in range(args.clients)
    ]
    clients.append(Client(soak, args.clients, JSON_PROTO, bulk=True))
    ramp = min(5.0, soak.duration * 0.1)
    tasks = [asyncio.create_task(c.run(rng.uniform(0, ramp))) for c in clients]
    tasks += [
        asyncio.create_task(soak.sample_rss()),
        asyncio.create_task(soak.recorder.run()),
        asyncio.create_task(soak.api_load()),
        asyncio.create_task(garbage(soak)),
    ]
    faults = asyncio.create_task(soak.run_faults())
    extras = []
    slow_insts = soak.instances[:2]
    for k, share in enumerate((0.1, 0.35, 0.6)[: args.slow_clients]):
        extras.append(
            asyncio.create_task(
                _at(soak, share, slow_consumer(soak, k, slow_insts[k % len(slow_insts)]))
            )
        )
    for k, share in enumerate((0.25, 0.55)):
        extras.append(asyncio.create_task(_at(soak, share, flooder(soak, k, soak.pick(rng)))))
    await asyncio.sleep(max(0.0, soak.load_start + soak.duration - now()))
    await faults  # the last fault is done and its instance up again
    await asyncio.gather(*extras)
    log("load done; clients close")
    soak.load_end = now()
    soak.stopping.set()
    await asyncio.gather(*tasks)
    soak.counts["clients"] = len(clients)
    await asyncio.sleep(1.0)


async def _at(soak: Soak, share: float, job: Any) -> None:
    await asyncio.sleep(max(0.0, soak.load_start + share * soak.duration - now()))
    await job


class Recorder:
    """Every message the servers kept, read while the run goes on.

    The servers keep the last HISTORY messages of each room (``--history``), as a
    deployment does, so that their memory has a bound the run can reach; the soak
    reads what they keep every second.  The union of those reads is the ground
    truth of what was ever kept: a message pruned later stays in it.  A room whose
    pruning passed what was read (the reads fell behind) is a violation: the check
    would be blind there.
    """

    def __init__(self, soak: Soak):
        self.soak = soak
        self.kept: dict[str, dict[int, str]] = defaultdict(dict)
        self.after: dict[str, int] = {}  # SQLite: "" -> the highest id read (one sequence)
        self.reads = 0
        self.misses = 0  # reads that found Redis (or the database) away
        self.early: set[tuple[str, int]] = set()  # (room, pruned id) reported

    def newest(self, room: str) -> int:
        msgs = self.kept.get(room)
        return max(msgs) if msgs else 0

    def read(self, full: bool = False) -> dict[str, dict[int, str]]:
        """Read what is new (`full`: all that is kept); returns what was read."""
        if self.soak.redis is not None:
            return self._read_redis(full)
        return self._read_sqlite(full)

    def _behind(self, room: str, pruned: int) -> None:
        """Before a read is merged: was a message dropped that no read saw?  (Pruning
        drops the oldest, so one newer than every message read before.)"""
        if pruned > self.newest(room):
            self.soak.violation(
                "recorder-behind",
                {"room": room, "pruned_id": pruned, "last_read": self.newest(room)},
            )

    def _pruned_early(self, room: str, pruned: int) -> None:
        """After a read is merged: pruning drops a message only when HISTORY newer
        ones are kept in its room; fewer of them known means it dropped too many."""
        after = sum(1 for m in self.kept.get(room, ()) if m > pruned)
        if pruned and after < HISTORY and (room, pruned) not in self.early:
            self.early.add((room, pruned))
            self.soak.violation(
                "kept-then-lost",
                {"room": room, "pruned_id": pruned, "kept_after_it": after, "t": round(now(), 2)},
            )

    def _read_sqlite(self, full: bool) -> dict[str, dict[int, str]]:
        db = sqlite3.connect(str(self.soak.instances[0].db), timeout=10, isolation_level=None)
        now_kept: dict[str, dict[int, str]] = defaultdict(dict)
        try:
            db.execute("BEGIN")  # one snapshot: the rows and the marks agree
            after = 0 if full else self.after.get("", 0)
            for mid, room, text in db.execute(
                "SELECT id, room, message FROM messages WHERE id > ?", (after,)
            ):
                now_kept[room][mid] = text
                self.after[""] = max(self.after.get("", 0), mid)
            marks = db.execute("SELECT room, pruned_id FROM rooms").fetchall()
            db.execute("COMMIT")
        finally:
            db.close()
        for room, pruned in marks:
            self._behind(room, pruned)
        for room, msgs in now_kept.items():
            self.kept[room].update(msgs)
        for room, pruned in marks:
            self._pruned_early(room, pruned)
        self.reads += 1
        return now_kept

    def _read_redis(self, full: bool) -> dict[str, dict[int, str]]:
        redis = self.soak.redis
        assert redis is not None
        now_kept: dict[str, dict[int, str]] = defaultdict(dict)
        for room in redis.command("SMEMBERS", "chatservice:rooms") or []:
            pruned = redis.command("HGET", f"chatservice:room:{room}:marks", "pruned")
            start = "-" if full or not self.newest(room) else f"({self.newest(room)}-0"
            while True:
                entries = redis.command(
                    "XRANGE", f"chatservice:room:{room}:log", start, "+", "COUNT", "1000"
                )
                for _entry_id, fields in entries:
                    m = json.loads(dict(zip(fields[::2], fields[1::2], strict=False))["m"])
                    now_kept[room][m["id"]] = m["message"]
                if len(entries) < 1000:
                    break
                start = "(" + entries[-1][0]
            self._behind(room, int(pruned or 0))
            self.kept[room].update(now_kept[room])
            self._pruned_early(room, int(pruned or 0))
        self.reads += 1
        return now_kept

    async def run(self) -> None:
        while not self.soak.stopping.is_set():
            try:
                await asyncio.to_thread(self.read)
            except (OSError, RuntimeError, sqlite3.Error):
                self.misses += 1  # Redis restarting; read again in a moment
            try:
                await asyncio.wait_for(self.soak.stopping.wait(), 1.0)
            except TimeoutError:
                pass

    def final(self) -> dict[str, dict[int, str]]:
        """The last read; a message read before and no longer kept was lost (a
        violation) unless pruning dropped it: it is older than what is kept and
        its room kept HISTORY newer ones after it."""
        now_kept = self.read(full=True)
        for room, msgs in self.kept.items():
            kept_now = now_kept.get(room, {})
            oldest = min(kept_now) if kept_now else None
            ever = sorted(msgs)
            lost = [
                m
                for m in msgs
                if m not in kept_now
                and (
                    oldest is None
                    or m >= oldest
                    or len(ever) - bisect.bisect_right(ever, m) < HISTORY
                )
            ]
            if lost:
                self.soak.violation(
                    "kept-then-lost", {"room": room, "count": len(lost), "ids": sorted(lost)[:10]}
                )
        return self.kept


class Webhooks:
    """What the webhook receiver got (it stays up all run; the faults hit the servers).

    Every kept message must reach it as a ``message.created`` event, at least once,
    with its text; read from the receiver's file as it grows.
    """

    def __init__(self, soak: Soak):
        self.soak = soak
        self.offset = 0
        self.events: list[dict[str, Any]] = []  # {"webhook_id", "at", "event"}, as received
        self.created: dict[tuple[str, int], str] = {}  # (room, id) -> message, first seen
        self.bad: list[dict[str, Any]] = []

    def read(self) -> None:
        """Take in the complete lines the receiver wrote since the last read."""
        try:
            with open(self.soak.receiver.out, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for line in chunk[:end].splitlines():
            record = json.loads(line)
            if "bad" in record:
                self.bad.append(record)
                continue
            self.events.append(record)
            event = record["event"]
            if event["type"] == "message.created":
                data = event["data"]
                self.created.setdefault((data["room"], data["id"]), data["message"])

    def missing(self, history: dict[str, dict[int, str]]) -> dict[str, list[int]]:
        """room -> the kept message ids the receiver has not had."""
        self.read()
        gone = {
            room: sorted(m for m in msgs if (room, m) not in self.created)
            for room, msgs in history.items()
        }
        return {room: ids for room, ids in gone.items() if ids}

    def drain(self, history: dict[str, dict[int, str]]) -> float:
        """Wait (the servers still up) until every kept message reached the receiver, at
        most WEBHOOK_DRAIN seconds; the seconds waited."""
        started = time.monotonic()
        while self.missing(history) and time.monotonic() - started < WEBHOOK_DRAIN:
            time.sleep(0.2)
        return round(time.monotonic() - started, 2)

    def check(self, history: dict[str, dict[int, str]]) -> dict[str, Any]:
        soak = self.soak
        for room, ids in sorted(self.missing(history).items()):
            soak.violation("webhook-missing", {"room": room, "count": len(ids), "ids": ids[:10]})
        for (room, mid), text in self.created.items():
            kept = history.get(room, {}).get(mid)
            if kept is None:
                soak.violation("webhook-not-kept", {"room": room, "id": mid, "text": text[:40]})
            elif kept != text:
                soak.violation(
                    "webhook-wrong-message",
                    {"room": room, "id": mid, "sent": text[:40], "kept": kept[:40]},
                )
        for bad in self.bad[:5]:
            soak.violation("webhook-bad-request", bad)
        # Per room, the first time each message came: in id order (the outbox's).
        last: dict[str, int] = {}
        first_seen: set[tuple[str, int]] = set()
        lag_ms: list[float] = []
        for record in self.events:
            event = record["event"]
            if event["type"] != "message.created":
                continue
            room, mid = event["data"]["room"], event["data"]["id"]
            if (room, mid) in first_seen:
                continue
            first_seen.add((room, mid))
            lag_ms.append((record["at"] - parse_time(event["time"])) * 1000)
            if mid < last.get(room, 0):
                soak.violation(
                    "webhook-out-of-order", {"room": room, "id": mid, "after": last[room]}
                )
            last[room] = max(last.get(room, 0), mid)
        ids = Counter(record["event"]["id"] for record in self.events)
        created = Counter(
            (r["event"]["data"]["room"], r["event"]["data"]["id"])
            for r in self.events
            if r["event"]["type"] == "message.created"
        )
        return {
            "events_received": len(self.events),
            "by_type": dict(sorted(Counter(r["event"]["type"] for r in self.events).items())),
            "duplicate_events": sum(n - 1 for n in ids.values()),
            "duplicate_messages": sum(n - 1 for n in created.values()),
            "requests": len({r["webhook_id"] for r in self.events}),
            "bad_requests": len(self.bad),
            "messages_kept": sum(len(m) for m in history.values()),
            "messages_received": len(self.created),
            "lag_ms": {
                "p50": pct(lag_ms, 50),
                "p99": pct(lag_ms, 99),
                "max": round(max(lag_ms), 1) if lag_ms else None,
            },
        }


def check(soak: Soak, history: dict[str, dict[int, str]]) -> None:
    tokens = {
        text.split(" ", 1)[0]: (room, mid)
        for room, msgs in history.items()
        for mid, text in msgs.items()
    }
    # Ids strictly increasing, no gaps while connected.
    gaps = 0
    for iv in soak.intervals:
        ids = iv["ids"]
        for at, (a, b) in enumerate(itertools.pairwise(ids)):
            if b <= a:
                repeated = b in set(ids[: at + 1])  # seen again: a duplicate, even if late
                soak.violation(
                    "duplicate" if repeated else "out-of-order",
                    {
                        **{k: v for k, v in iv.items() if k not in ("ids", "live", "stamped")},
                        "pair": [a, b],
                        "index": at + 1,
                        "ids_around": ids[max(0, at - 5) : at + 8],
                        "live_times_around": [t for i, t in iv["live"] if at - 5 <= i <= at + 8],
                    },
                )
                break
        if not ids:
            continue
        low = iv["since"] + 1 if iv["since"] is not None and iv["recovered"] else ids[0]
        high = max(ids)
        have = set(ids)
        stored = sorted(history.get(iv["room"], {}))
        missing = [m for m in stored if low <= m <= high and m not in have]
        if missing:
            gaps += 1
            soak.violation(
                "gap",
                {
                    **{k: v for k, v in iv.items() if k not in ("ids", "live", "stamped")},
                    "seen": len(ids),
                    "first": ids[0],
                    "last": high,
                    "missing": len(missing),
                    "missing_ids": missing[:10],
                },
            )
    soak.counts["intervals_checked"] = len(soak.intervals)
    # `recovered: false` only when the room no longer kept what came after `since`:
    # fewer than HISTORY messages after it, up to the history's last, means it did.
    # An instance whose subscription lags (after it came back) ends the history at
    # what it has passed on, while the room already holds later messages: those
    # the client then got live but the server had stamped before the history
    # reached it count too.
    for iv in soak.intervals:
        if iv["since"] is None or iv["recovered"] or not iv["ids"][: iv["history"]]:
            continue
        last = iv["ids"][iv["history"] - 1]
        after = sum(1 for m in history.get(iv["room"], {}) if iv["since"] < m <= last)
        after += sum(1 for m, stamp in iv["stamped"] if m > last and stamp <= iv["at"])
        if after < HISTORY:
            soak.violation(
                "not-recovered",
                {
                    **{k: v for k, v in iv.items() if k not in ("ids", "live", "stamped")},
                    "kept_after_since": after,
                },
            )
    # Everything acknowledged to its sender is kept, and everything seen is kept.
    for who, room, mid, token in soak.acks:
        if mid is not None:
            text = history.get(room, {}).get(mid)
            if text is None or not text.startswith(token + " "):
                soak.violation(
                    "acked-not-kept",
                    {
                        "sender": who,
                        "room": room,
                        "id": mid,
                        "token": token,
                        "kept": text and text[:40],
                    },
                )
        elif token not in tokens:
            soak.violation("acked-not-kept", {"sender": who, "room": room, "token": token})
    for room, seen in soak.seen.items():
        for mid, token in seen.items():
            text = history.get(room, {}).get(mid)
            if text is None or text.split(" ", 1)[0] != token:
                soak.violation(
                    "seen-not-kept",
                    {"room": room, "id": mid, "token": token, "kept": text and text[:40]},
                )
    soak.counts["messages_kept"] = sum(len(m) for m in history.values())


def warm_point(soak: Soak, born: float) -> float:
    """When a process born `born` s into the run has seen every kind of load: 40 %
    into the run (two slow consumers, a flooder, two rounds of every fault), a
    minute into its life, and the end of the first slow consumer and of the first
    flooder of its life.  (RSS keeps the high-water mark of the heap:
    a slow consumer's 40 KB messages and a flooder's burst of frames raise it once;
    the Python objects alive stay flat, as tracemalloc showed, see bench/README.md.)
    """
    warm = max(RSS_WARMUP * soak.duration, born + LIFE_WARMUP)
    for kind in ("slow", "flood"):
        ends = [
            b - soak.load_start
            for a, b, k in soak.abuse
            if k == kind and a - soak.load_start >= born and b != float("inf")
        ]
        if ends:
            warm = max(warm, min(ends))
    return warm


def rss_report(soak: Soak) -> dict[str, Any]:
    """RSS of every server process over time, and the 5 % rule on the long lives.

    A process (one life: its pid) is judged when it lives to the end of a run of at
    least 5 minutes, from its warm point over at least 30 % of the run.  The fault
    schedule keeps such lives: instance A is never killed in the redis topology,
    and the single topology's instance is killed only in the first half.
    """
    end = soak.load_end - soak.load_start
    interval = soak.args.rss_interval
    report: dict[str, Any] = {}
    for key, samples in soak.rss.items():
        warm = warm_point(soak, samples[0][0])
        after = [(t, kib) for t, kib in samples if t >= warm]
        entry: dict[str, Any] = {
            "samples": [[t, kib] for t, kib in samples][:: max(1, len(samples) // 60)],
            "lived_s": [samples[0][0], samples[-1][0]],
        }
        entry["judged"] = (
            soak.args.minutes >= 5
            and not key.startswith("redis")
            and samples[-1][0] >= end - 2 * interval
            and end - warm >= RSS_SPAN * soak.duration
            and bool(after)
        )
        if after:
            entry["warm_at_s"] = after[0][0]
            entry["after_warmup_kib"] = after[0][1]
            entry["end_kib"] = after[-1][1]
            entry["max_kib"] = max(kib for _, kib in after)
            entry["growth_pct"] = round(100 * (after[-1][1] - after[0][1]) / after[0][1], 2)
        if entry["judged"] and entry["growth_pct"] > RSS_GROWTH_PCT:
            soak.violation(
                "rss-growth",
                {
                    "process": key,
                    **{
                        k: entry[k]
                        for k in ("warm_at_s", "after_warmup_kib", "end_kib", "growth_pct")
                    },
                },
            )
        report[key] = entry
    if soak.args.minutes >= 5 and not any(e["judged"] for e in report.values()):
        soak.violation("rss-unjudged", "no server process lived through the run")
    return report


class Spans:
    """Merged time spans, to ask whether a moment falls in one."""

    def __init__(self, spans: list[tuple[float, float]]):
        merged: list[list[float]] = []
        for a, b in sorted(spans):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.starts = [a for a, _ in merged]
        self.ends = [b for _, b in merged]

    def __contains__(self, t: float) -> bool:
        i = bisect.bisect_right(self.starts, t) - 1
        return i >= 0 and t <= self.ends[i]


def latency_report(soak: Soak) -> dict[str, Any]:
    """Delivery latency of the well-behaved clients: in all, away from faults
    ("quiet"), and while slow consumers or flooders were at work (and away from
    faults); the last two are bounded (--latency-bound-ms)."""
    faults = Spans([(f["t"] - 1.0, f.get("t_done", f["t"]) + FAULT_SETTLE) for f in soak.faults])
    abuse = Spans([(a, min(b, now())) for a, b, _ in soak.abuse])
    everything, quiet, abused = [], [], []
    for t, ms in zip(soak.delivery_at, soak.delivery_ms, strict=True):
        everything.append(ms)
        if t not in faults:
            quiet.append(ms)
            if t in abuse:
                abused.append(ms)

    def summary(values: list[float]) -> dict[str, Any]:
        return {
            "p50": pct(values, 50),
            "p99": pct(values, 99),
            "max": round(max(values), 2) if values else None,
            "count": len(values),
        }

    bound = soak.args.latency_bound_ms
    out = {
        "delivery": summary(everything),
        "delivery_quiet": summary(quiet),
        "delivery_quiet_during_abuse": summary(abused),
        "echo": summary(list(soak.echo_ms)),
        "bound_ms": bound,
        "note": "delivery: receive wall time minus the message's server time (ms "
        "resolution), live chat-messages of well-behaved clients, bulk room excluded; "
        f"quiet: away from faults (from 1 s before each to {FAULT_SETTLE:g} s after it "
        "was done); during_abuse: quiet and while a slow consumer or flooder was "
        "connected; echo: send to own chat-message",
    }
    for name in ("delivery_quiet", "delivery_quiet_during_abuse"):
        p99 = out[name]["p99"]
        if p99 is not None and p99 > bound:
            soak.violation("latency", {"which": name, "p99_ms": p99, "bound_ms": bound})
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(tmp)
        soak = Soak(args, workdir)
        try:
            await asyncio.to_thread(soak.start_servers)
            await load(soak)
            history = await asyncio.to_thread(soak.recorder.final)
            drained = None
            if not args.no_webhooks:
                drained = await asyncio.to_thread(soak.webhooks.drain, history)
                log(f"webhooks: the receiver had every kept message {drained} s after the load")
        finally:
            await asyncio.to_thread(soak.stop_servers)
        check(soak, history)
        webhooks: dict[str, Any] = {"off": True}
        if not args.no_webhooks:
            webhooks = {**soak.webhooks.check(history), "drain_s": drained}
        logs = {}
        for inst in soak.instances:
            found = tracebacks(inst.log_path)
            logs[inst.name] = {
                "starts": inst.starts,
                "tracebacks": len(found),
                "lines": len(inst.log_path.read_text("utf-8", "replace").splitlines()),
            }
            for excerpt in found:
                soak.violation("traceback", {"instance": inst.name, "excerpt": excerpt})
        if args.keep_logs:
            keep = Path(args.keep_logs)
            keep.mkdir(parents=True, exist_ok=True)
            for f in workdir.glob("*.log"):
                (keep / f.name).write_bytes(f.read_bytes())
        return report(soak, logs, webhooks)


def report(soak: Soak, logs: dict[str, Any], webhooks: dict[str, Any]) -> dict[str, Any]:
    args = soak.args
    rss = rss_report(soak)
    latency = latency_report(soak)
    counts = dict(sorted(soak.counts.items()))
    counts["faults"] = len(soak.faults)
    counts["faults_by_kind"] = dict(Counter(f["kind"] for f in soak.faults))
    counts["server_closes_explained"] = len(soak.server_closes)
    violations = {
        kind: {"count": len(examples), "examples": examples[:5]}
        for kind, examples in sorted(soak.violations.items())
    }
    return {
        "params": {
            "minutes": args.minutes,
            "seed": args.seed,
            "topology": args.topology,
            "clients": args.clients,
            "slow_clients": args.slow_clients,
            "server_options": [
                *SERVER_LIMITS,
                *(() if args.no_webhooks else ("--webhook", "http://127.0.0.1:PORT/hooks")),
            ],
            "faults": not args.no_faults,
            "rss_interval_s": args.rss_interval,
            "history": HISTORY,
        },
        "counts": counts,
        "chat_errors": dict(soak.errors),
        "faults": soak.faults,
        "slow_consumers": soak.slow,
        "flooders": soak.floods,
        "garbage": dict(soak.garbage),
        "latency_ms": latency,
        "webhooks": webhooks,
        "rss": {
            "processes": rss,
            "rule": f"growth above {RSS_GROWTH_PCT:g}% from the first sample after a "
            f"process's warm point ({RSS_WARMUP:.0%} into the run, {LIFE_WARMUP:g} s "
            "into its life, and after the first slow consumer and the first flooder of "
            "its life) to its last is a violation, for processes living to the end "
            f"of a run of at least 5 minutes, over at least {RSS_SPAN:.0%} of it"
            + ("" if args.minutes >= 5 else " (this run is shorter: reported only)"),
        },
        "logs": logs,
        "violations": violations,
        "verdict": "pass" if not violations else "fail",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--topology", choices=("single", "redis"), default="single")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--slow-clients", type=int, default=3, choices=(0, 1, 2, 3))
    parser.add_argument("--rss-interval", type=float, default=3.0)
    parser.add_argument(
        "--latency-bound-ms",
        type=float,
        default=100.0,
        help="p99 delivery latency of well-behaved clients away from faults (ms)",
    )
    parser.add_argument("--out", metavar="FILE", help="write the JSON document here")
    parser.add_argument("--no-faults", action="store_true", help="load only, no faults")
    parser.add_argument(
        "--no-webhooks", action="store_true", help="no --webhook (to see what webhooks cost)"
    )
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the server logs here")
    args = parser.parse_args()
    if not Path(__file__).resolve().parent.parent.joinpath(".venv/bin/twistd").exists():
        print("soak: .venv/bin/twistd is missing (scripts/setup-venv)", file=sys.stderr)
        return 2
    try:
        document = asyncio.run(main_async(args))
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    text = json.dumps(document, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    counts, latency = document["counts"], document["latency_ms"]
    summary = {
        "verdict": document["verdict"],
        "topology": args.topology,
        "violations": {k: v["count"] for k, v in document["violations"].items()},
        **{
            k: counts.get(k, 0)
            for k in ("messages_sent", "messages_delivered", "faults", "intervals_checked")
        },
        "delivery_quiet_p99_ms": latency["delivery_quiet"]["p99"],
        **{
            f"webhook_{k}": document["webhooks"].get(k)
            for k in ("events_received", "messages_received", "duplicate_events", "drain_s")
        },
    }
    log(f"summary: {json.dumps(summary)}")
    for kind, v in document["violations"].items():
        log(f"violation {kind}: {json.dumps(v['examples'][0])[:600]}")
    return 0 if document["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
