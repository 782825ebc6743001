"""The one `twisted.web` Site: static files at ``/`` and the WebSocket endpoints."""

from __future__ import annotations

import html
import os
import time
from pathlib import Path
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from prometheus_client import CollectorRegistry
from twisted.logger import LogLevel
from twisted.web import static
from twisted.web.pages import notFound
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from chatservice import internals, logs
from chatservice.backplane.roles import Backplane
from chatservice.chat.hub import Hub
from chatservice.chat.identity import AuthPolicy
from chatservice.config import Config
from chatservice.counters import Counters
from chatservice.hooks.webhooks import WebhookStats
from chatservice.web.api import Api, Health
from chatservice.web.channel import ChatChannel, access_log_formatter, without_token
from chatservice.web.chat import ChatFactory
from chatservice.web.echo import echo_factory
from chatservice.web.endpoint import EndpointFactory
from chatservice.web.metrics import Metrics, MetricsPage, SummedCollector, WebhookCollector
from chatservice.web.policy import ConnectionLimits, Limits, TrustedProxies
from chatservice.workers.scoreboard import CONFIGURED, OPEN, UP, Scoreboard, SharedConnectionLimits

_NOT_FOUND = notFound()


class StaticFiles(static.File):
    """`static.File` that never leaves its root and never lists a directory.

    ``..`` and encoded dots are already refused by `FilePath.child`; this also
    refuses symlinks that resolve outside the root, path segments that are not
    UTF-8, and directory listings (a directory without ``index.html`` is 404).
    """

    childNotFound = _NOT_FOUND  # type: ignore[assignment]

    def __init__(self, path: str | Path, *args: Any, root: str | None = None, **kw: Any) -> None:
        super().__init__(str(path), *args, **kw)
        self.root = root if root is not None else os.path.realpath(path)

    def getChild(self, path: bytes, request: Request) -> IResource:
        """A file under the root, or 404 (never outside it, never a listing)."""
        try:
            path.decode("utf-8")
        except UnicodeDecodeError:
            return _NOT_FOUND
        child = super().getChild(path, request)
        if isinstance(child, static.File) and not self._inside_root(child.path):
            return _NOT_FOUND
        return child

    def _inside_root(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self.root or real.startswith(self.root + os.sep)

    def directoryListing(self) -> IResource:
        """No listings: 404."""
        return _NOT_FOUND

    def createSimilarFile(self, path: str) -> StaticFiles:
        """A file of the same root."""
        f = super().createSimilarFile(path)
        f.root = self.root
        return f

    def render(self, request: Request) -> bytes | int:
        """The file, if it is really inside the root; else 404."""
        # A file that is really outside the root (the root itself a symlink's
        # target is fine: `root` is resolved) is refused before it is opened.
        if not self._inside_root(self.path):
            return _NOT_FOUND.render(request)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        return super().render(request)


_UPGRADE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>426 Upgrade Required</title></head>
<body><h1>426 Upgrade Required</h1>
<p>{path} is a WebSocket endpoint. Connect to it with a WebSocket client, for example
<code>new WebSocket("ws://HOST{path}")</code> in a browser,
or open <a href="/">the web client</a>.</p>
</body></html>
"""


class WebSocketEndpoint(WebSocketResource):
    """Autobahn's resource, plus a helpful 426 page for plain HTTP requests."""

    def __init__(self, factory: WebSocketServerFactory, path: str) -> None:
        super().__init__(factory)
        self.endpoint_factory = factory
        self._path = path

    def render(self, request: Request) -> bytes | int:
        """426 for plain HTTP; the upgrade, with a URL's token taken off first."""
        if request.postpath and request.postpath != [b""]:
            return _NOT_FOUND.render(request)
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade != b"websocket":
            request.setResponseCode(426, b"Upgrade Required")
            request.setHeader(b"Upgrade", b"websocket")
            request.setHeader(b"Connection", b"Upgrade")
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            return _UPGRADE_PAGE.format(path=html.escape(self._path)).encode("utf-8")
        channel = request.channel
        transport = channel.transport
        # A token in the URL (``/chat?token=...``) is taken off before
        # Autobahn sees the request (its debug log shows it whole) and before
        # the access log is written; the endpoint's factory hands it to the
        # connection being opened, all within this call.
        args: dict[bytes, list[bytes]] = request.args or {}
        tokens = args.pop(b"token", None)
        if tokens is not None:
            request.uri = without_token(request.uri)
        factory: Any = self.endpoint_factory
        factory.handshake_token = tokens[0].decode("utf-8", "replace") if tokens else None
        try:
            result: bytes | int = super().render(request)
        finally:
            factory.handshake_token = None
        if transport is not None and channel.transport is None:
            # Autobahn took the connection over.  Bytes the client sent right
            # behind its handshake (a first frame, say) are still in
            # twisted.web's hands: its LineReceiver hands them to
            # rawDataReceived once render returns.  Pass them on, in order.
            protocol = internals.websocket_protocol_of(transport)
            internals.hand_on_raw_data(channel, protocol.dataReceived)
        return result


def make_site(
    config: Config,
    hub: Hub,
    backplane: Backplane,
    auth: AuthPolicy,
    stats: Counters,
    reactor: Any = None,
    metrics_registry: CollectorRegistry | None = None,
    board: Scoreboard | None = None,
    slot: int = 0,
    webhooks: WebhookStats | None = None,
) -> ChatSite:
    """Build the site every port serves.

    Args:
        config: The service's settings.
        hub: The chat's rooms and connections.
        backplane: Where the rooms' messages are kept (the API reads it) and
            whether it works (``/healthz``).
        auth: How users' tokens are checked (the API takes them too).
        stats: Where ``/chat`` counts, with the hub (``/metrics`` reads it).
        reactor: What HTTP timeouts and the chat's writes are scheduled on (the
            global reactor if None).
        metrics_registry: Where /metrics registers this site's metrics (a new
            registry of its own if None; never the process-wide default, so
            several services can live in one process).
        board: With ``--workers``: the scoreboard the workers share; then
            the connection limits, ``/healthz`` and ``/metrics`` are the whole
            service's, not this process's.
        slot: This worker's row of `board`.
        webhooks: With ``--webhook``: what ``/healthz`` and ``/metrics`` say of it.
    """
    limits: Limits
    if board is None:
        limits = ConnectionLimits(config.max_connections, config.max_connections_per_address)
    else:
        limits = SharedConnectionLimits(
            board, slot, config.max_connections, config.max_connections_per_address
        )
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    echo = echo_factory(config, limits)
    chat = ChatFactory(config, hub, limits, stats, reactor)
    root = StaticFiles(config.static_dir)
    root.putChild(b"echo", WebSocketEndpoint(echo, "/echo"))
    root.putChild(b"chat", WebSocketEndpoint(chat, "/chat"))
    token = config.admin_token
    for prefix in ("broadcast", "api"):
        root.putChild(prefix.encode(), Api(hub, backplane, backplane, auth, token, prefix))
    seconds = reactor.seconds
    started = seconds()
    health = Health(
        lambda: limits.open,
        lambda: seconds() - started,
        lambda: backplane.problem,
        None if board is None else lambda: workers_health(board, slot),
        None if webhooks is None else lambda: webhooks.health(time.time()),
    )
    root.putChild(b"healthz", health)
    metrics = Metrics((("echo", echo), ("chat", chat)), metrics_registry)
    if webhooks is not None:
        metrics.registry.register(WebhookCollector(webhooks))
    if board is not None:
        summed = SummedCollector(metrics.registry, board, slot)
        exposed = CollectorRegistry(auto_describe=False)
        exposed.register(summed)
        root.putChild(b"metrics", MetricsPage(exposed))
        metrics.share = summed.sync
    else:
        root.putChild(b"metrics", MetricsPage(metrics.registry))
    # Autobahn's open handshake timeout only starts once twisted.web has read
    # the request headers; until then the HTTP idle timeout stops a client
    # that connects and sends nothing, and ChatChannel's deadline one that
    # sends its request a little at a time.
    site = ChatSite(
        root,
        logFormatter=access_log_formatter(TrustedProxies(config.trusted_proxies)),
        timeout=config.open_handshake_timeout or None,
        reactor=reactor,
    )
    site.request_deadline = config.open_handshake_timeout or ChatSite.request_deadline
    site.displayTracebacks = False
    site.websocket_factories = (echo, chat)
    site.health = health
    site.metrics = metrics
    return site


def workers_health(board: Scoreboard, slot: int) -> dict[str, object]:
    """What ``/healthz`` says of the workers: how many are up, which one answered,
    and the open connections of each (how evenly they are spread)."""
    return {
        "up": board.header(UP),
        "configured": board.header(CONFIGURED),
        "this": slot,
        "pid": os.getpid(),
        "connections": [int(board.get(s, OPEN)) for s in range(1, board.workers + 1)],
    }


class ChatSite(Site):
    """The Site, with what the service needs at shutdown."""

    protocol = ChatChannel  # type: ignore[assignment]  # (not HTTP/2's generic one)
    websocket_factories: tuple[EndpointFactory, ...] = ()
    health: Health
    metrics: Metrics
    #: Seconds a client has for a whole request (see `ChatChannel`).
    request_deadline = 10.0

    def log(self, request: Any) -> None:
        """The access log line of `request`: an info event, so not below ``--log-level``."""
        if logs.enabled(LogLevel.info):
            super().log(request)
