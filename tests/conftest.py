from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import txaio
from members import Prepare
from redis_server import RedisServer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from chatservice.backplane.history import History, immediate_executor
from chatservice.config import Config
from chatservice.service import ChatService

LOOPBACK_ANY_PORT = "tcp:0:interface=127.0.0.1"


@pytest.fixture
def clock() -> Iterator[Clock]:
    """A Clock that Autobahn's timers run on, for in-memory tests."""
    previous = txaio.config.loop
    txaio.config.loop = Clock()
    try:
        yield txaio.config.loop
    finally:
        txaio.config.loop = previous


@pytest.fixture
def history(tmp_path: Path) -> History:
    """A message store keeping 100 per room, written synchronously (no thread)."""
    store = History(str(tmp_path / "h.sqlite3"), 100, immediate_executor)
    store.open()
    return store


@pytest.fixture
def prepare() -> Prepare:
    """The hub's framing step, counting its calls (the frame is the encoded bytes)."""
    return Prepare()


@pytest.fixture
def log_events() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted while the test runs."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


@pytest.fixture
def serve() -> Iterator[Callable[..., ChatService]]:
    """Start the whole service in this process on loopback port(s) 0.

    Call it with `Config` fields to override; ``service.listening`` holds the
    ports.  Everything started is stopped after the test.
    """
    started: list[ChatService] = []

    def start(**overrides: Any) -> ChatService:
        overrides.setdefault("ports", (LOOPBACK_ANY_PORT,))
        service = ChatService(Config(**overrides))
        service.startService()
        started.append(service)
        return service

    yield start
    for service in started:
        pytest_twisted.blockon(service.stopService())


@pytest.fixture
def twistd() -> Path:
    """The twistd of this environment, where the installed plugin is found."""
    return Path(sys.executable).with_name("twistd")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, killed after the test."""
    server = RedisServer(tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    yield server
    server.kill()
