"""The webhook sender (chatservice/hooks/webhooks.py) against a real HTTP receiver.

The events wait in a real outbox (SQLite, `LocalBackplane`); the receiver is
a twisted.web server on 127.0.0.1 that verifies every request with the
``standardwebhooks`` library, as an application would, and answers as each
test tells it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from net import wait_until
from standardwebhooks.webhooks import Webhook
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from chatservice.backplane.history import History, immediate_executor
from chatservice.backplane.local import LocalBackplane
from chatservice.backplane.outbox import EVENT_TYPES
from chatservice.hooks.webhooks import WebhookSender, check_secret, message_id

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
T0 = "2026-12-02T10:00:00.000Z"


class Receiver(Resource):
    """Records verified requests; answers each with the next of `answers` (then 204)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.answers: list[int | None] = []  # None: never answer
        self.bad = 0

    def render_POST(self, request: Request) -> bytes | int:
        body = request.content.read()
        headers = {
            k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
        }
        try:
            Webhook(SECRET).verify(body, headers)
        except Exception:
            self.bad += 1
            request.setResponseCode(400)
            return b"bad signature"
        self.requests.append((headers, json.loads(body)))
        answer = self.answers.pop(0) if self.answers else 204
        if answer is None:
            return NOT_DONE_YET
        request.setResponseCode(answer)
        return b""

    def events(self) -> list[dict[str, Any]]:
        """Every event of every verified request, in the order received."""
        return [e for _, body in self.requests for e in body["events"]]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    resource = Receiver()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    yield resource, f"http://127.0.0.1:{port.getHost().port}/hooks"
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def backplane(tmp_path: Path) -> LocalBackplane:
    history = History(
        str(tmp_path / "h.sqlite3"), 1000, immediate_executor, hooks=frozenset(EVENT_TYPES)
    )
    history.open()
    return LocalBackplane(history, reactor, 0.5)


@pytest.fixture
def sending() -> Iterator[list[WebhookSender]]:
    senders: list[WebhookSender] = []
    yield senders
    for sender in senders:
        pytest_twisted.blockon(sender.stop())


def start(
    senders: list[WebhookSender], outbox: LocalBackplane, url: str, **kw: Any
) -> WebhookSender:
    sender = WebhookSender(outbox, url, SECRET, reactor, **kw)
    sender.start()
    senders.append(sender)
    return sender


@pytest_twisted.ensureDeferred
async def test_events_arrive_signed_batched_and_in_order(
    receiver: tuple[Receiver, str], backplane: LocalBackplane, sending: list[WebhookSender]
) -> None:
    got, url = receiver
    stored = [await backplane.store("r", "alice", f"m{i}", T0) for i in range(250)]
    sender = start(sending, backplane, url)
    await wait_until(lambda: len(got.events()) >= 250)
    assert got.bad == 0
    assert [len(body["events"]) for _, body in got.requests] == [100, 100, 50]
    assert [e["data"]["id"] for e in got.events()] == [m.id for m in stored]
    ids = [e["id"] for e in got.events()]
    assert len(set(ids)) == 250
    headers = got.requests[0][0]
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"].startswith("msg_")
    assert len({h["webhook-id"] for h, _ in got.requests}) == 3
    await wait_until(lambda: sender.stats.sent == 250)
    await wait_until(lambda: backplane.history.backlog() == (0, None))
    assert sender.stats.posts["ok"] == 3


@pytest_twisted.ensureDeferred
async def test_a_failing_receiver_gets_the_same_request_again_until_it_takes_it(
    receiver: tuple[Receiver, str], backplane: LocalBackplane, sending: list[WebhookSender]
) -> None:
    got, url = receiver
    got.answers = [500, 503]
    await backplane.store("r", "alice", "one", T0)
    sender = start(sending, backplane, url)
    await wait_until(lambda: len(got.requests) >= 1)
    await backplane.store("r", "alice", "two", T0)  # waits behind the first
    await wait_until(lambda: len(got.requests) >= 4, timeout=10)
    first, second, third, fourth = got.requests[:4]
    # The same events with the same webhook-id (1 s, then 2 s later) ...
    assert first[0]["webhook-id"] == second[0]["webhook-id"] == third[0]["webhook-id"]
    assert first[1]["events"] == second[1]["events"] == third[1]["events"]
    assert [e["data"]["message"] for e in first[1]["events"]] == ["one"]
    # ... and only then what came after.
    assert [e["data"]["message"] for e in fourth[1]["events"]] == ["two"]
    await wait_until(lambda: sender.stats.posts["ok"] == 2)
    assert sender.stats.posts["status"] == 2


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_never_answers_times_out_and_is_tried_again(
    receiver: tuple[Receiver, str], backplane: LocalBackplane, sending: list[WebhookSender]
) -> None:
    got, url = receiver
    got.answers = [None]
    await backplane.store("r", "alice", "slow", T0)
    sender = start(sending, backplane, url, timeout=0.3)
    await wait_until(lambda: sender.stats.posts["ok"] == 1, timeout=10)
    assert sender.stats.posts["timeout"] == 1
    assert got.requests[0][0]["webhook-id"] == got.requests[1][0]["webhook-id"]


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_is_down_gets_everything_once_it_is_up(
    backplane: LocalBackplane, sending: list[WebhookSender]
) -> None:
    resource = Receiver()
    site = Site(resource)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    sender = start(sending, backplane, f"http://127.0.0.1:{number}/")
    stored = [await backplane.store("r", "bob", f"m{i}", T0) for i in range(5)]
    await wait_until(lambda: sender.stats.posts["error"] >= 1)
    assert sender.stats.queued == 5 or backplane.history.backlog()[0] == 5
    port = reactor.listenTCP(number, site, interface="127.0.0.1")
    try:
        await wait_until(lambda: len(resource.events()) >= 5, timeout=10)
    finally:
        await port.stopListening()
    assert [e["data"]["id"] for e in resource.events()] == [m.id for m in stored]


@pytest_twisted.ensureDeferred
async def test_events_older_than_the_maximum_age_are_dropped_and_counted(
    receiver: tuple[Receiver, str], backplane: LocalBackplane, sending: list[WebhookSender]
) -> None:
    got, url = receiver
    got.answers = [500]
    await backplane.store("r", "alice", "stale", T0)
    sender = start(sending, backplane, url, max_age=0.5)
    await wait_until(lambda: sender.stats.dropped == 1, timeout=10)
    await backplane.store("r", "alice", "fresh", T0)
    await wait_until(lambda: sender.stats.sent == 1, timeout=10)
    assert [e["data"]["message"] for e in got.events()] == ["stale", "fresh"]
    assert [e["data"]["message"] for e in got.requests[-1][1]["events"]] == ["fresh"]
    await deferLater(reactor, 0.2, lambda: None)
    assert backplane.history.backlog() == (0, None)


def test_the_webhook_id_is_the_same_for_the_same_events() -> None:
    from chatservice.backplane.outbox import Queued

    a = [Queued("evt_1", 0, "{}"), Queued("evt_2", 0, "{}")]
    assert message_id(a) == message_id(list(a))
    assert message_id(a) != message_id(a[:1])


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with whsec_"),
        ("whsec_!!!not-base64!!!", "base64"),
        ("whsec_c2hvcnQ=", "at least 24"),
    ],
)
def test_a_bad_secret_is_refused_with_a_reason(secret: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_secret(secret)
    check_secret(SECRET)


class Stalling(Resource):
    """Answers 200 with a body it never finishes; or redirects."""

    isLeaf = True

    def __init__(self, redirect: bool = False) -> None:
        super().__init__()
        self.redirect = redirect
        self.posts = 0
        self.gets = 0

    def render_GET(self, request: Request) -> bytes:
        self.gets += 1
        return b"fine"

    def render_POST(self, request: Request) -> bytes | int:
        self.posts += 1
        if self.redirect:
            request.setResponseCode(303)
            request.setHeader(b"location", b"/elsewhere")
            return b""
        request.setHeader(b"content-length", b"100")
        request.write(b"abc")  # and nothing more
        return NOT_DONE_YET


@pytest.mark.parametrize("redirect", [False, True])
@pytest_twisted.ensureDeferred
async def test_a_stalled_answer_or_a_redirect_is_no_acknowledgement(
    backplane: LocalBackplane, sending: list[WebhookSender], redirect: bool
) -> None:
    resource = Stalling(redirect)
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    try:
        await backplane.store("r", "alice", "hello", T0)
        url = f"http://127.0.0.1:{port.getHost().port}/"
        sender = start(sending, backplane, url, timeout=0.3)
        outcome = "status" if redirect else "timeout"
        await wait_until(lambda: sender.stats.posts[outcome] >= 2, timeout=10)
        assert sender.stats.sent == 0
        assert resource.gets == 0
        assert backplane.history.backlog()[0] == 1
        # Stopping does not wait for an answer that never ends.
        await sender.stop()
    finally:
        await port.stopListening()
