"""Prometheus metrics, served at ``GET /metrics`` (docs/protocol.md, "HTTP API").

Every service has its own `CollectorRegistry` (tests run several services in
one process).  The per-message counts are plain ints in `Counters`, bumped in
the reactor thread (no lock, no label lookup: ``/echo`` throughput and chat
fan-out must not pay for metrics) and read only when ``/metrics`` is scraped,
by `EndpointCollector`.  Only the history latency is a real `Histogram`: one
observation per stored chat message, never per delivery.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import Request

from chatservice.counters import (
    Counters,
)
from chatservice.hooks.webhooks import WebhookStats
from chatservice.workers.scoreboard import CONFIGURED, SAMPLES, SAMPLES_AT, UP, Scoreboard

#: Buckets of the history append latency, in seconds (a commit is ~0.1-10 ms).
HISTORY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Endpoint(Protocol):
    """What the collector reads of a WebSocket factory."""

    @property
    def stats(self) -> Counters:
        """The endpoint's running totals."""
        ...

    @property
    def open_connections(self) -> Sized:
        """The endpoint's open connections."""
        ...

    @property
    def echoes(self) -> bool:
        """Whether every message received is sent straight back (``/echo``):
        then only the received counts are kept, and the sent ones equal them."""
        ...


class EndpointCollector(Collector):
    """Turns the endpoints' `Counters` into metric families, at scrape time.

    Args:
        endpoints: ``(label, factory)`` pairs, e.g. ``("echo", echo_factory)``.
        chat: The label of the endpoint whose chat-only counters are exported.
    """

    def __init__(self, endpoints: Iterable[tuple[str, Endpoint]], chat: str = "chat") -> None:
        self._endpoints = tuple(endpoints)
        self._chat = chat

    def collect(self) -> Iterator[Metric]:
        """The endpoints' counters, as Prometheus metrics, read now."""
        open_now = GaugeMetricFamily(
            "chatservice_connections", "Open WebSocket connections.", labels=["endpoint"]
        )
        accepted = CounterMetricFamily(
            "chatservice_connections",
            "WebSocket connections accepted (opening handshake completed).",
            labels=["endpoint"],
        )
        rejected = CounterMetricFamily(
            "chatservice_handshakes_rejected",
            "WebSocket opening handshakes refused by chatservice, by reason: origin (403), "
            "subprotocol (400), limit (503 over the connection limits), error (500).",
            labels=["endpoint", "reason"],
        )
        received = CounterMetricFamily(
            "chatservice_messages_received", "WebSocket messages received.", labels=["endpoint"]
        )
        sent = CounterMetricFamily(
            "chatservice_messages_sent",
            "WebSocket messages sent; a chat broadcast counts once per member it reached.",
            labels=["endpoint"],
        )
        bytes_received = CounterMetricFamily(
            "chatservice_bytes_received",
            "Payload bytes of the WebSocket messages received "
            "(after decompression, without framing).",
            labels=["endpoint"],
        )
        bytes_sent = CounterMetricFamily(
            "chatservice_bytes_sent",
            "Payload bytes of the WebSocket messages sent "
            "(before compression, without framing; a broadcast counts once per member).",
            labels=["endpoint"],
        )
        for name, endpoint in self._endpoints:
            stats = endpoint.stats
            open_now.add_metric([name], len(endpoint.open_connections))
            accepted.add_metric([name], stats.accepted)
            for reason, count in stats.rejected.items():
                rejected.add_metric([name, reason], count)
            received.add_metric([name], stats.messages_received)
            bytes_received.add_metric([name], stats.bytes_received)
            if endpoint.echoes:
                sent.add_metric([name], stats.messages_received)
                bytes_sent.add_metric([name], stats.bytes_received)
            else:
                sent.add_metric([name], stats.messages_sent)
                bytes_sent.add_metric([name], stats.bytes_sent)
        yield from (open_now, accepted, rejected, received, sent, bytes_received, bytes_sent)

        chat = dict(self._endpoints).get(self._chat)
        if chat is None:
            return
        stats = chat.stats
        yield CounterMetricFamily(
            "chatservice_slow_consumer_drops",
            "Chat connections closed (1008) for not reading: over --max-send-buffer unsent.",
            value=stats.slow_consumer_drops,
        )
        yield CounterMetricFamily(
            "chatservice_rate_limited",
            "Chat frames dropped over the rate limit (answered with rate-limited).",
            value=stats.rate_limited,
        )
        yield CounterMetricFamily(
            "chatservice_flood_closes",
            "Chat connections closed (1008) for flooding: too many rate-limited frames.",
            value=stats.flood_closes,
        )
        for name, what, label, counts in (
            (
                "chatservice_sign_ins",
                "Chat sign-ins (chat-auth, ?token=) by result: ok, the token error code, or "
                "refused (a valid token not taken: banned, another user's name).",
                "result",
                stats.sign_ins,
            ),
            (
                "chatservice_auth_closes",
                "Chat connections closed (1008) for their identity: no-token (--auth required, "
                "none in time) or token-expired.",
                "reason",
                stats.auth_closes,
            ),
            (
                "chatservice_moderation_actions",
                "Moderators' actions ordered on this service: kick, ban, mute, delete.",
                "action",
                stats.moderation,
            ),
        ):
            family = CounterMetricFamily(name, what, labels=[label])
            for value, count in counts.items():
                family.add_metric([value], count)
            yield family


class Metrics:
    """The metrics of one service, in their own registry.

    Attributes:
        share: With ``--workers``: copies this worker's samples to the
            scoreboard, for the other workers' ``/metrics`` (the service calls
            it every second); None in a single process.

    Args:
        endpoints: ``(label, factory)`` pairs of the WebSocket endpoints.
        registry: Where to register (a new registry if None).
    """

    def __init__(
        self,
        endpoints: Iterable[tuple[str, Endpoint]],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.share: Callable[[], object] | None = None
        self.registry.register(EndpointCollector(endpoints))
        self.history_append = Histogram(
            "chatservice_history_append_seconds",
            "Time from a history append to its commit (the message is durable), in seconds.",
            buckets=HISTORY_BUCKETS,
            registry=self.registry,
        )


class WebhookCollector(Collector):
    """The webhooks' numbers (`chatservice.hooks.webhooks.WebhookStats`), at scrape time.

    The queue is the deployment's (one outbox for every instance): only the
    instance that sends it now reports it, so that a sum over workers is right.
    """

    def __init__(self, stats: WebhookStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        """The webhook metric families."""
        stats = self._stats
        mine = stats.sending
        yield GaugeMetricFamily(
            "chatservice_webhook_events_queued",
            "Events waiting for the webhook receiver (reported by the instance sending them).",
            value=stats.queued if mine else 0,
        )
        yield GaugeMetricFamily(
            "chatservice_webhook_oldest_age_seconds",
            "Seconds the oldest waiting event has waited (by the instance sending them).",
            value=stats.oldest_age(time.time()) if mine else 0.0,
        )
        posts = CounterMetricFamily(
            "chatservice_webhook_posts",
            "Webhook requests, by outcome: ok (2xx), status (another status), "
            "error (refused, reset), timeout.",
            labels=["outcome"],
        )
        for outcome in ("ok", "status", "error", "timeout"):
            posts.add_metric([outcome], stats.posts[outcome])
        yield posts
        yield CounterMetricFamily(
            "chatservice_webhook_events_sent",
            "Events the webhook receiver acknowledged (2xx).",
            value=stats.sent,
        )
        yield CounterMetricFamily(
            "chatservice_webhook_events_dropped",
            "Events dropped for being older than --webhook-max-age.",
            value=stats.dropped,
        )


class MetricsPage(Resource):
    """``GET /metrics``: the registry in Prometheus text format; open, like /healthz."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        """The registry's metrics in Prometheus's text format."""
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return generate_latest(self._registry)


class SummedCollector(Collector):
    """The metrics of the whole service, over every worker (``--workers``).

    Each worker copies the samples of its own registry into its row of the
    `Scoreboard` (`sync`: every second, and before answering ``/metrics``);
    whichever worker is scraped adds up the rows: counters and histograms of
    every worker that ever ran (those of dead workers are kept in the retired
    row), gauges of the workers up now.  Every worker has the same metrics
    (same code, same options), so a sample is at the same place in every row.
    Also ``chatservice_workers``: workers configured and up.

    Args:
        registry: This worker's own metrics.
        board: The service's scoreboard.
        slot: This worker's row.
    """

    def __init__(self, registry: CollectorRegistry, board: Scoreboard, slot: int) -> None:
        self._registry = registry
        self._board = board
        self._slot = slot

    def sync(self) -> list[Metric]:
        """Copy this worker's samples into its row; returns its metrics, as collected."""
        families = list(self._registry.collect())
        board, slot = self._board, self._slot
        index = SAMPLES_AT
        for family in families:
            for sample in family.samples:
                if index >= SAMPLES_AT + SAMPLES:
                    raise RuntimeError("more metric samples than a scoreboard row holds")
                board.set(slot, index, sample.value)
                index += 1
        return families

    def collect(self) -> Iterator[Metric]:
        """Every worker's metrics added up (see `sync`)."""
        families = self.sync()
        board = self._board
        live = board.live_slots()
        retired = board.retired_slot
        index = SAMPLES_AT
        for family in families:
            summed = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    value = sample.value  # a time, not a count: this worker's
                else:
                    value = sum(board.get(s, index) for s in live)
                    if family.type != "gauge":
                        value += board.get(retired, index)
                summed.add_sample(sample.name, sample.labels, value)
                index += 1
            yield summed
        workers = GaugeMetricFamily(
            "chatservice_workers",
            "Worker processes (--workers): configured, and up (listening) now.",
            labels=["state"],
        )
        workers.add_metric(["configured"], board.header(CONFIGURED))
        workers.add_metric(["up"], board.header(UP))
        yield workers
