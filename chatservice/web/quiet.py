"""Autobahn's per-connection debug formatting, done only when debugging.

Autobahn's ``_connectionMade`` pretty-prints every protocol option for a debug
log line on every new connection, whatever the log level: ``pformat`` of ~35
settings, about 0.3 ms of a connection's ~1 ms of server CPU (profiled during a
storm of 5,000 connections).  `install` gives Autobahn a ``pformat`` that
formats only while txaio logs at debug (or trace) level: the line then reads
as before, and otherwise is never written anyway.
"""

from __future__ import annotations

import pprint

import txaio

from chatservice import internals

_DEBUGGING = ("debug", "trace")


def pformat_when_debugging(value: object) -> str:
    """`pprint.pformat` of `value` while txaio logs debug lines, else a placeholder."""
    if txaio.get_global_log_level() in _DEBUGGING:  # type: ignore[attr-defined]
        return pprint.pformat(value)
    return "(not formatted: debug logging is off)"


def install() -> None:
    """Make Autobahn's protocol module use `pformat_when_debugging`."""
    internals.replace_autobahn_protocol_global(internals.PFORMAT, pformat_when_debugging)
