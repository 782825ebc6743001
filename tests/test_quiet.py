"""Autobahn's per-connection debug formatting happens only when debugging."""

from __future__ import annotations

from collections.abc import Iterator

import autobahn.websocket.protocol as autobahn_protocol
import pytest
import txaio

import chatservice.web.endpoint  # noqa: F401  (installs it)
from chatservice.web.quiet import pformat_when_debugging


@pytest.fixture
def log_level() -> Iterator[None]:
    before = txaio.get_global_log_level()  # type: ignore[attr-defined]
    yield
    txaio.set_global_log_level(before)  # type: ignore[attr-defined]


def test_autobahn_formats_its_options_only_at_debug_level(log_level: None) -> None:
    assert autobahn_protocol.pformat is pformat_when_debugging
    options = [("autoPingInterval", 30, "EndpointFactory")] * 20
    txaio.set_global_log_level("error")  # type: ignore[attr-defined]
    assert "autoPingInterval" not in pformat_when_debugging(options)
    txaio.set_global_log_level("debug")  # type: ignore[attr-defined]
    assert pformat_when_debugging(options).count("autoPingInterval") == 20
