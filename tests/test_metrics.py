"""``GET /metrics`` end to end: real sockets on 127.0.0.1, scraped as Prometheus would.

Each scenario runs blocking clients in a thread while the reactor serves.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest_twisted
from net import http_get, port_of
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from test_chat_e2e import chat, join, send, until
from twisted.internet.threads import deferToThread
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from chatservice.service import ChatService

Serve = Callable[..., ChatService]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """GET /metrics (no token) and return every sample by name and labels."""
    status, _headers, body = http_get(port, "/metrics")
    assert status == 200, body
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest_twisted.ensureDeferred
async def test_metrics_is_open_prometheus_text(serve: Serve) -> None:
    port = port_of(serve(database=":memory:", admin_token="secret"))
    status, headers, body = await deferToThread(http_get, port, "/metrics")
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE_LATEST
    text = body.decode("utf-8")
    for name in (
        'chatservice_connections{endpoint="echo"}',
        'chatservice_connections_total{endpoint="chat"}',
        'chatservice_handshakes_rejected_total{endpoint="chat",reason="origin"}',
        'chatservice_messages_received_total{endpoint="echo"}',
        'chatservice_messages_sent_total{endpoint="chat"}',
        'chatservice_bytes_received_total{endpoint="chat"}',
        'chatservice_bytes_sent_total{endpoint="echo"}',
        "chatservice_slow_consumer_drops_total ",
        "chatservice_rate_limited_total ",
        "chatservice_flood_closes_total ",
        "chatservice_history_append_seconds_count ",
    ):
        assert name in text, name


@pytest_twisted.ensureDeferred
async def test_echo_round_trip_is_counted(serve: Serve) -> None:
    port = port_of(serve(database=":memory:"))

    def scenario() -> tuple[Samples, Samples, Samples]:
        before = scrape(port)
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10) as ws:
            ws.send("hello")
            assert ws.recv(timeout=10) == "hello"
            ws.send(b"\0" * 10)
            assert ws.recv(timeout=10) == b"\0" * 10
            during = scrape(port)
        return before, during, scrape(port)

    before, during, after = await deferToThread(scenario)
    assert value(during, "chatservice_connections", endpoint="echo") == 1
    assert value(during, "chatservice_connections", endpoint="chat") == 0
    assert delta(before, after, "chatservice_connections_total", endpoint="echo") == 1
    for direction in ("received", "sent"):
        assert delta(before, after, f"chatservice_messages_{direction}_total", endpoint="echo") == 2
        assert delta(before, after, f"chatservice_bytes_{direction}_total", endpoint="echo") == 15
    assert delta(before, after, "chatservice_messages_received_total", endpoint="chat") == 0


@pytest_twisted.ensureDeferred
async def test_chat_messages_count_every_delivery_and_the_history_latency(serve: Serve) -> None:
    port = port_of(serve(database=":memory:"))

    def scenario() -> tuple[Samples, Samples, list[str], list[str]]:
        with chat(port) as alice, chat(port) as bob:
            join(alice, "alice")
            join(bob, "bob")
            until(alice, "chat-join")  # bob's
            before = scrape(port)
            sent, seen = [], []
            for text in ("one", "two", "three"):
                frame = json.dumps({"type": "chat-message", "payload": {"message": text}})
                alice.send(frame)
                sent.append(frame)
                until(alice, "chat-message")
                seen.append(bob.recv(timeout=10))
            after = scrape(port)
        return before, after, sent, [str(s) for s in seen]

    before, after, sent, seen = await deferToThread(scenario)
    assert [json.loads(s)["type"] for s in seen] == ["chat-message"] * 3
    chat_ = {"endpoint": "chat"}
    assert delta(before, after, "chatservice_messages_received_total", **chat_) == 3
    assert delta(before, after, "chatservice_bytes_received_total", **chat_) == sum(
        len(frame.encode()) for frame in sent
    )
    # Two members: every message delivered twice, the same frame to both.
    assert delta(before, after, "chatservice_messages_sent_total", **chat_) == 6
    assert delta(before, after, "chatservice_bytes_sent_total", **chat_) == 2 * sum(
        len(frame.encode()) for frame in seen
    )
    assert value(after, "chatservice_connections", **chat_) == 2
    assert value(after, "chatservice_connections_total", **chat_) == 2
    # Nothing else was stored in this service: one observation per stored message.
    assert value(after, "chatservice_history_append_seconds_count") == 3
    assert value(before, "chatservice_history_append_seconds_count") == 0
    assert 0 < value(after, "chatservice_history_append_seconds_sum") < 30


def refused_status(url: str, **options: object) -> int:
    try:
        with connect(url, open_timeout=10, **options):  # type: ignore[arg-type]
            pass
    except InvalidStatus as refused:
        return int(refused.response.status_code)
    raise AssertionError("the handshake succeeded")


@pytest_twisted.ensureDeferred
async def test_rejected_handshakes_are_counted_by_reason(serve: Serve) -> None:
    port = port_of(serve(database=":memory:"))

    def scenario() -> tuple[Samples, list[int], Samples]:
        before = scrape(port)
        statuses = [
            refused_status(f"ws://127.0.0.1:{port}/chat", origin="http://evil.example"),
            refused_status(f"ws://127.0.0.1:{port}/echo", subprotocols=["nope"]),
            refused_status(f"ws://127.0.0.1:{port}/echo", subprotocols=["nope"]),
        ]
        return before, statuses, scrape(port)

    before, statuses, after = await deferToThread(scenario)
    assert statuses == [403, 400, 400]
    counts = {
        (endpoint, reason): delta(
            before,
            after,
            "chatservice_handshakes_rejected_total",
            endpoint=endpoint,
            reason=reason,
        )
        for endpoint in ("echo", "chat")
        for reason in ("origin", "subprotocol", "limit", "error")
    }
    assert {key: n for key, n in counts.items() if n} == {
        ("chat", "origin"): 1,
        ("echo", "subprotocol"): 2,
    }
    assert value(after, "chatservice_connections_total", endpoint="chat") == 0
    assert value(after, "chatservice_connections_total", endpoint="echo") == 0


@pytest_twisted.ensureDeferred
async def test_rate_limited_frames_are_counted(serve: Serve) -> None:
    # A burst of 2 and next to no refill: the join and one message pass.
    port = port_of(serve(database=":memory:", rate=0.001, burst=2))

    def scenario() -> tuple[Samples, Samples]:
        with chat(port) as alice:
            join(alice, "alice")
            before = scrape(port)
            for text in ("passes", "dropped", "dropped too"):
                send(alice, "chat-message", message=text)
            # The errors come at once, the message once stored: any order.
            seen: list[str] = []
            while len(seen) < 3:
                event = json.loads(alice.recv(timeout=10))
                if event["type"] == "chat-error":
                    seen.append(event["payload"]["code"])
                elif event["type"] == "chat-message":
                    seen.append(event["payload"]["message"])
            assert sorted(seen) == ["passes", "rate-limited", "rate-limited"]
            return before, scrape(port)

    before, after = await deferToThread(scenario)
    assert delta(before, after, "chatservice_rate_limited_total") == 2
    assert value(after, "chatservice_flood_closes_total") == 0
    assert value(after, "chatservice_slow_consumer_drops_total") == 0
    assert delta(before, after, "chatservice_messages_received_total", endpoint="chat") == 3
