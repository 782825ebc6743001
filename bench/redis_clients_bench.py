"""Which Redis client for the backplane: measured from inside a Twisted process.

The Redis backplane needs three things from a Redis client, and the
reactor must never block on any of them:

- a round trip: one room message is one script call (store, number, publish)
  that the sender waits for;
- throughput of such calls while many are in flight;
- receiving published messages: every room message reaches every instance
  through its subscriber connection, so this is the hot path.

Candidates, each in its own process (the reactor is per process):

- ``txredisapi``: Twisted-native, its hiredis parser when hiredis is installed;
- ``redis-py-thread``: redis-py (hiredis) in a thread of its own; queued calls
  go out as one pipeline per round, results come back with callFromThread, and
  a second thread reads the subscription;
- ``redis-py-asyncio``: redis-py's asyncio client under Twisted's asyncio
  reactor (which the whole service would then have to run on).

Each reports the round trip (p50/p99), calls per second with 100 in flight and
its own CPU per call, and messages received per second with its CPU per
message, while this script publishes.  It starts its own redis-server on a free
loopback port and prints one JSON document::

    python bench/redis_clients_bench.py [--calls 20000] [--messages 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

CANDIDATES = ("txredisapi", "redis-py-thread", "redis-py-asyncio")
CHANNEL = "bench:rx"
#: What a room message will cost Redis: number it, keep it in a capped stream,
#: publish it.  The reply is its id.
SCRIPT = """
local id = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 1000, id .. '-1', 'm', ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[1])
return id
"""
KEYS = ["bench:{room}:id", "bench:{room}:stream", "bench:{room}:channel"]
PAYLOAD = b'{"username":"alice","message":"' + b"x" * 60 + b'"}'
WINDOW = 100


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


# The candidates.  Each gives `call(args) -> Deferred` for one EVALSHA, and
# `subscribe(on_message) -> Deferred` that fires once subscribed.


def txredisapi_client(port: int) -> Any:
    import txredisapi
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    class Subscriber(txredisapi.SubscriberProtocol):
        on_message: Callable[[bytes], None]

        def messageReceived(self, pattern: Any, channel: Any, message: bytes) -> None:
            self.on_message(message)

    class Client:
        async def start(self) -> None:
            self.redis = await txredisapi.Connection(
                "127.0.0.1", port, reconnect=False, charset=None
            )
            self.sha = await self.redis.script_load(SCRIPT)

        def call(self) -> Any:
            return self.redis.evalsha(self.sha, KEYS, [PAYLOAD])

        async def subscribe(self, on_message: Callable[[bytes], None]) -> None:
            factory = txredisapi.SubscriberFactory()
            factory.protocol = Subscriber
            factory.charset = None
            factory.reconnect = False
            factory.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
            await factory.deferred
            protocol = factory.pool[0]
            protocol.on_message = on_message
            await protocol.subscribe(CHANNEL)

    return Client()


def redis_py_thread_client(port: int) -> Any:
    import redis
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    class Client:
        async def start(self) -> None:
            self.redis = redis.Redis(port=port)
            self.sha = self.redis.script_load(SCRIPT)
            self.calls: queue.SimpleQueue[Deferred[Any]] = queue.SimpleQueue()
            threading.Thread(target=self._run, daemon=True).start()

        def _run(self) -> None:
            while True:
                batch = [self.calls.get()]
                while True:
                    try:
                        batch.append(self.calls.get_nowait())
                    except queue.Empty:
                        break
                pipe = self.redis.pipeline(transaction=False)
                for _ in batch:
                    pipe.evalsha(self.sha, len(KEYS), *KEYS, PAYLOAD)
                results = pipe.execute()
                reactor.callFromThread(_fire_all, batch, results)

        def call(self) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.calls.put(d)
            return d

        async def subscribe(self, on_message: Callable[[bytes], None]) -> None:
            pubsub = redis.Redis(port=port).pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(CHANNEL)
            pubsub.get_message(timeout=1)  # the subscription's confirmation

            def read() -> None:
                while True:
                    first = pubsub.get_message(timeout=1)
                    if first is None:
                        continue
                    batch = [first["data"]]
                    while (more := pubsub.get_message(timeout=0)) is not None:
                        batch.append(more["data"])
                    reactor.callFromThread(_each, on_message, batch)

            threading.Thread(target=read, daemon=True).start()

    return Client()


def _fire_all(deferreds: list[Any], results: list[Any]) -> None:
    for d, result in zip(deferreds, results, strict=True):
        d.callback(result)


def _each(handler: Callable[[bytes], None], items: list[bytes]) -> None:
    for item in items:
        handler(item)


def redis_py_asyncio_client(port: int) -> Any:
    import asyncio

    import redis.asyncio
    from twisted.internet.defer import Deferred

    class Client:
        async def start(self) -> None:
            self.redis = redis.asyncio.Redis(port=port, max_connections=WINDOW)
            self.sha = await Deferred.fromFuture(
                asyncio.ensure_future(self.redis.script_load(SCRIPT))
            )

        def call(self) -> Deferred[Any]:
            return Deferred.fromFuture(
                asyncio.ensure_future(self.redis.evalsha(self.sha, len(KEYS), *KEYS, PAYLOAD))
            )

        async def subscribe(self, on_message: Callable[[bytes], None]) -> None:
            pubsub = redis.asyncio.Redis(port=port).pubsub(ignore_subscribe_messages=True)

            async def read() -> None:
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    on_message(message["data"])

            ready = asyncio.ensure_future(read())
            await Deferred.fromFuture(asyncio.ensure_future(asyncio.sleep(0.2)))
            assert not ready.done()

    return Client()


async def measure(client: Any, calls: int, messages: int) -> dict[str, Any]:
    from twisted.internet.defer import Deferred

    await client.start()
    # Round trips, one at a time.
    rtts = []
    for _ in range(2000):
        started = time.perf_counter()
        await client.call()
        rtts.append((time.perf_counter() - started) * 1e6)
    # Throughput, WINDOW in flight.
    done: Deferred[None] = Deferred()
    state = {"sent": 0, "answered": 0}

    def send_one() -> None:
        state["sent"] += 1
        client.call().addCallback(answered)

    def answered(_: Any) -> None:
        state["answered"] += 1
        if state["sent"] < calls:
            send_one()
        elif state["answered"] == calls:
            done.callback(None)

    started, cpu0 = time.perf_counter(), cpu()
    for _ in range(WINDOW):
        send_one()
    await done
    call_seconds, call_cpu = time.perf_counter() - started, cpu() - cpu0
    # Receiving what another process publishes.
    received: Deferred[None] = Deferred()
    mark: dict[str, float] = {}

    def on_message(message: bytes) -> None:
        mark["n"] += 1
        if mark["n"] == messages:
            mark.update(seconds=time.perf_counter() - mark["at"], used=cpu() - mark["cpu"])
            received.callback(None)

    await client.subscribe(on_message)
    # From here on: what the client spends is spent on receiving.  The rate is
    # bounded by this script's publishing too; the CPU per message is not.
    mark.update(at=time.perf_counter(), cpu=cpu(), n=0)
    print("subscribed", flush=True)
    await received
    return {
        "rtt_us": {"p50": round(percentile(rtts, 0.5), 1), "p99": round(percentile(rtts, 0.99), 1)},
        "calls": {
            "per_second": round(calls / call_seconds),
            "client_cpu_us_each": round(call_cpu / calls * 1e6, 2),
        },
        "receive": {
            "per_second": round(messages / mark["seconds"]),
            "client_cpu_us_each": round(mark["used"] / messages * 1e6, 2),
        },
    }


def child(candidate: str, port: int, calls: int, messages: int) -> None:
    if candidate == "redis-py-asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    make = {
        "txredisapi": txredisapi_client,
        "redis-py-thread": redis_py_thread_client,
        "redis-py-asyncio": redis_py_asyncio_client,
    }[candidate]
    outcome: dict[str, Any] = {}

    def finish(result: Any) -> None:
        outcome["result"] = result
        reactor.stop()

    def failed(failure: Any) -> None:
        outcome["error"] = failure.getErrorMessage()
        reactor.stop()

    reactor.callWhenRunning(
        lambda: ensureDeferred(measure(make(port), calls, messages)).addCallbacks(finish, failed)
    )
    reactor.run()
    print(json.dumps(outcome), flush=True)
    os._exit(0)  # the reader threads block in a read


def publish(port: int, messages: int) -> None:
    import redis

    r = redis.Redis(port=port)
    for start in range(0, messages, 1000):
        pipe = r.pipeline(transaction=False)
        for _ in range(min(1000, messages - start)):
            pipe.publish(CHANNEL, PAYLOAD)
        pipe.execute()


def run_candidate(candidate: str, port: int, calls: int, messages: int) -> dict[str, Any]:
    process = subprocess.Popen(
        [
            *(sys.executable, __file__, "--child", candidate, "--port", str(port)),
            *("--calls", str(calls), "--messages", str(messages)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() == "subscribed":
        publish(port, messages)
        line = process.stdout.readline()
    process.wait(timeout=120)
    outcome = json.loads(line)
    return outcome.get("result") or {"error": outcome.get("error")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--messages", type=int, default=200000)
    parser.add_argument("--child", choices=CANDIDATES)
    parser.add_argument("--port", type=int)
    options = parser.parse_args()
    if options.child:
        child(options.child, options.port, options.calls, options.messages)
        return
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("redis_clients_bench: no redis-server (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        redis = subprocess.Popen(
            [
                *(server, "--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)
            results = {
                c: run_candidate(c, port, options.calls, options.messages) for c in CANDIDATES
            }
        finally:
            redis.terminate()
            redis.wait()
    print(json.dumps({"calls": options.calls, "messages": options.messages, **results}, indent=2))


if __name__ == "__main__":
    main()
