"""Webhooks: the outbox's events POSTed to the application, signed, batched, retried, in order.

The events wait in the backplane's outbox (`chatservice.backplane.outbox`),
kept there in the same write as what they tell.  `WebhookSender` takes the
oldest (up to `BATCH`, waiting up to `LINGER` for more), POSTs them as one
``{"events": [...]}`` signed as the Standard Webhooks specification says
(headers ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``,
made by the ``standardwebhooks`` library), and only once the receiver
answered a 2xx forgets them.  A failure (refused, timed out, any other
status) is retried with the same batch and the same ``webhook-id``, 1 s
later, doubling to `MAX_DELAY`; nothing newer goes before it.  An event
older than ``--webhook-max-age`` is dropped, counted and logged.
Specified in docs/hooks.md.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import treq
from standardwebhooks.webhooks import Webhook
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.defer import TimeoutError as TookTooLong
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseNeverReceived

from chatservice import __version__, logs
from chatservice.backplane.outbox import Queued, batch
from chatservice.backplane.values import Unavailable
from chatservice.hooks.proxy import redacted

_log = logs.logger("chatservice.webhooks")

#: Events in one request at most.
BATCH = 100
#: Seconds to wait for more events once one is there.
LINGER = 0.1
#: Seconds between two looks at an empty outbox.
POLL = 0.1
#: Seconds before the first retry; doubled at each failure up to `MAX_DELAY`.
FIRST_DELAY = 1.0
MAX_DELAY = 300.0
#: Seconds between two log lines about failing posts.
LOG_EVERY = 10.0
#: Bytes of a receiver's answer read at most (the answer is not used).
MAX_ANSWER = 64 * 1024


class Outbox(Protocol):
    """What the sender needs of the backplane (`chatservice.backplane.roles.Outbox`)."""

    def take(self, limit: int) -> Deferred[list[Queued]]: ...

    def done(self, ids: Sequence[str]) -> Deferred[None]: ...

    def backlog(self) -> Deferred[tuple[int, float | None]]: ...


@dataclass
class WebhookStats:
    """What ``/metrics`` and ``/healthz`` say of the webhooks.

    Attributes:
        queued: Events waiting in the outbox (as last read).
        oldest_at: When the oldest of them was kept (seconds since the epoch).
        posts: Requests by outcome: ``ok``, ``status`` (not 2xx), ``error``
            (refused, reset, bad address), ``timeout``.
        sent: Events the receiver acknowledged.
        dropped: Events dropped for being older than the maximum age.
    """

    queued: int = 0
    oldest_at: float | None = None
    posts: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    dropped: int = 0
    #: Whether this instance sends the events now (with several, one does).
    sending: bool = True

    def oldest_age(self, now: float) -> float:
        """Seconds the oldest waiting event has waited (0 if none)."""
        return max(0.0, now - self.oldest_at) if self.oldest_at is not None else 0.0

    def health(self, now: float) -> dict[str, object]:
        """The ``webhooks`` of ``/healthz``."""
        return {"queued": self.queued, "oldest_age": round(self.oldest_age(now), 3)}


def check_secret(secret: str) -> None:
    """Raise ValueError unless `secret` is a Standard Webhooks secret (``whsec_`` + base64)."""
    if not secret.startswith("whsec_"):
        raise ValueError("a webhook secret starts with whsec_ (then base64)")
    try:
        Webhook(secret)
    except Exception:  # the library says only that it is not base64
        raise ValueError("a webhook secret is whsec_ followed by base64") from None
    if len(secret) < len("whsec_") + 24:
        raise ValueError("a webhook secret needs at least 24 characters of base64 (18 bytes)")


def message_id(events: Sequence[Queued]) -> str:
    """The ``webhook-id`` of a request: the same for the same events, at every attempt."""
    digest = hashlib.sha256(",".join(e.id for e in events).encode()).hexdigest()
    return f"msg_{digest[:32]}"


class WebhookSender:
    """Sends the outbox's events to one URL, one request at a time, until stopped.

    Args:
        outbox: Where the events wait.
        url: The receiver (``--webhook``).
        secret: The signing secret (``whsec_...``).
        reactor: The reactor (HTTP connections, timers).
        timeout: Seconds a request may take before it counts as failed.
        max_age: Seconds after which a waiting event is dropped.
        stats: Where the counts go (a new one if None).
        pool: The HTTP connection pool (a persistent one of its own if None).
    """

    def __init__(
        self,
        outbox: Outbox,
        url: str,
        secret: str,
        reactor: Any,
        timeout: float = 10.0,
        max_age: float = 86400.0,
        stats: WebhookStats | None = None,
        pool: HTTPConnectionPool | None = None,
    ) -> None:
        self.outbox = outbox
        self.url = url
        self._webhook = Webhook(secret)
        self.reactor = reactor
        self.timeout = timeout
        self.max_age = max_age
        self.stats = stats or WebhookStats()
        self._pool = pool or HTTPConnectionPool(reactor, persistent=True)
        self._running: Deferred[None] | None = None
        self._nap: Deferred[None] | None = None
        self._posting: Deferred[int] | None = None
        self._stopping = False
        self._logged_at = -LOG_EVERY
        self._outbox_logged_at = -LOG_EVERY
        self._failures_unlogged = 0
        self._backlog_at = 0.0

    def start(self) -> None:
        """Start sending."""
        self._stopping = False
        self._running = ensureDeferred(self._run())

    def stop(self) -> Deferred[None]:
        """Stop: what was not acknowledged is sent again at the next start."""
        self._stopping = True
        if self._nap is not None:
            self._nap.cancel()
        if self._posting is not None:
            self._posting.cancel()  # the events stay, for the next start
        running, self._running = self._running, None
        d: Deferred[None] = running if running is not None else defer.succeed(None)
        d.addBoth(lambda _: self._pool.closeCachedConnections())
        return d.addBoth(lambda _: None)

    async def _sleep(self, seconds: float) -> None:
        self._nap = deferLater(self.reactor, seconds, lambda: None)
        try:
            await self._nap
        except CancelledError:
            pass
        finally:
            self._nap = None

    async def _run(self) -> None:
        delay = 0.0
        events: list[Queued] = []
        while not self._stopping:
            try:
                await self._note_backlog()
                if not events:
                    events = await self._gather()
                    # Taking nothing while events wait: another instance sends them.
                    self.stats.sending = bool(events) or not self.stats.queued
                    if not events:
                        await self._sleep(POLL)
                        continue
                events = await self._drop_old(events)
                if not events:
                    continue
                if await self._post(events):
                    await self.outbox.done([e.id for e in events])
                    self.stats.sent += len(events)
                    events, delay = [], 0.0
                    continue
                delay = FIRST_DELAY if not delay else min(delay * 2, MAX_DELAY)
                await self._wait(delay)
                events = await self._still_ours(events)
            except Unavailable as e:
                # Redis is away: what was not acknowledged stays; try again soon.
                self._outbox_failed(str(e))
                events = []
                await self._sleep(FIRST_DELAY)
            except Exception:
                # A failure of the outbox's store (disk full) or a bug: the
                # same, with the traceback in the log (never to anybody
                # else), once per LOG_EVERY.
                now = self.reactor.seconds()
                if now - self._outbox_logged_at >= LOG_EVERY:
                    _log.failure("webhooks: the outbox failed; trying again every second")
                    self._outbox_logged_at = now
                events = []
                await self._sleep(FIRST_DELAY)

    async def _still_ours(self, events: list[Queued]) -> list[Queued]:
        """`events` again if the outbox still gives them to this sender first, else [].

        With several instances another one may have taken over meanwhile (this
        one lost Redis for longer than the lease): then it sends them, and this
        one must not send them again after its newer ones.
        """
        again = await self.outbox.take(len(events))
        if [e.id for e in again] == [e.id for e in events]:
            return events
        return []

    async def _wait(self, delay: float) -> None:
        """Wait `delay` before a retry, reading the backlog every second meanwhile.

        The backlog grows while the receiver is down: that is when someone
        watches ``/healthz`` and ``/metrics``.
        """
        end = self.reactor.seconds() + delay
        while not self._stopping:
            left = end - self.reactor.seconds()
            if left <= 0:
                return
            await self._sleep(min(1.0, left))
            await self._note_backlog()

    async def _gather(self) -> list[Queued]:
        """The next batch: what waits, after up to `LINGER` for more to come."""
        events = await self.outbox.take(BATCH)
        if events and len(events) < BATCH:
            waited = time.time() - events[0].at
            if waited < LINGER:
                # (Clamped: with Redis, `at` is by Redis's clock.)
                await self._sleep(min(LINGER, LINGER - waited))
                events = await self.outbox.take(BATCH)
        return events

    async def _drop_old(self, events: list[Queued]) -> list[Queued]:
        cutoff = time.time() - self.max_age
        old = [e for e in events if e.at < cutoff]
        if not old:
            return events
        await self.outbox.done([e.id for e in old])
        self.stats.dropped += len(old)
        _log.warn(
            "webhooks: dropped {count} events older than {max_age} s (first {first})",
            count=len(old),
            max_age=self.max_age,
            first=old[0].id,
        )
        return [e for e in events if e.at >= cutoff]

    async def _note_backlog(self) -> None:
        now = time.time()
        if now - self._backlog_at < 1.0:
            return
        self._backlog_at = now
        self.stats.queued, self.stats.oldest_at = await self.outbox.backlog()

    async def _post(self, events: list[Queued]) -> bool:
        """POST `events` once; True if the receiver took them."""
        body = batch(e.sent() for e in events)
        msg_id = message_id(events)
        now = datetime.datetime.now(datetime.UTC)
        headers: dict[bytes | str, bytes | str] = {
            "content-type": "application/json",
            "user-agent": f"chatservice/{__version__}",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._webhook.sign(msg_id, now, body.decode()),
        }
        outcome, detail = "ok", ""
        # The timeout covers the whole exchange, the answer's body too: a
        # receiver that sends its headers and then stalls is a timeout.
        posting = ensureDeferred(self._exchange(body, headers))
        self._posting = posting.addTimeout(self.timeout, self.reactor)
        try:
            code = await self._posting
            if not 200 <= code < 300:
                outcome, detail = "status", f"status {code}"
        except Exception as e:
            if _timed_out(e):
                outcome, detail = "timeout", f"no answer within {self.timeout:g} s"
            else:
                outcome, detail = "error", _reason(e)
        finally:
            self._posting = None
        if self._stopping and outcome != "ok":
            return False  # cancelled by stop(): not the receiver's failure
        self.stats.posts[outcome] += 1
        if outcome != "ok":
            self._failed(detail, len(events))
        return outcome == "ok"

    async def _exchange(self, body: bytes, headers: dict[bytes | str, bytes | str]) -> int:
        """POST once and read the answer (thrown away, at most `MAX_ANSWER` bytes)."""
        response = await treq.post(
            self.url,
            data=body,
            headers=headers,
            pool=self._pool,
            reactor=self.reactor,
            # A redirect is no acknowledgement: a 303 would be followed with
            # a GET whose 2xx says nothing of the events.
            allow_redirects=False,
        )
        read = 0

        def discard(chunk: bytes) -> None:
            nonlocal read
            read += len(chunk)
            if read > MAX_ANSWER:
                raise ValueError(f"an answer of more than {MAX_ANSWER} bytes")

        # Read to the end, so that the connection is reused; keep nothing.
        await treq.collect(response, discard)
        return int(response.code)

    def _outbox_failed(self, reason: str) -> None:
        now = self.reactor.seconds()
        if now - self._outbox_logged_at >= LOG_EVERY:
            _log.warn("webhooks: cannot read the outbox ({reason}); retrying", reason=reason)
            self._outbox_logged_at = now

    def _failed(self, detail: str, count: int) -> None:
        """Log a failed post, at most once per `LOG_EVERY` seconds."""
        self._failures_unlogged += 1
        now = self.reactor.seconds()
        if now - self._logged_at < LOG_EVERY:
            return
        _log.warn(
            "webhooks: {url} did not take {count} events ({detail}); "
            "{failures} failed posts since the last line; retrying",
            url=redacted(self.url),
            count=count,
            detail=detail,
            failures=self._failures_unlogged,
        )
        self._logged_at = now
        self._failures_unlogged = 0


def _timed_out(error: BaseException) -> bool:
    """Whether a request failed for taking longer than its timeout (treq cancels it)."""
    if isinstance(error, CancelledError | ConnectTimeout | TookTooLong):
        return True
    if isinstance(error, ResponseNeverReceived):
        return any(
            isinstance(r, Failure) and r.check(CancelledError, ConnectTimeout)
            for r in error.reasons
        )
    return False


def _reason(error: BaseException) -> str:
    """A short reason for a failed request, without a traceback."""
    if isinstance(error, ResponseNeverReceived) and error.reasons:
        inner = error.reasons[0]
        if isinstance(inner, Failure):
            return inner.getErrorMessage()
    return str(error) or type(error).__name__
