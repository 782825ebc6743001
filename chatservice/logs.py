"""chatservice's logging: the level filter of ``--log-level``, and log observers.

chatservice's own events go through `filtered`, which drops those below the
level `set_level` chose (``--log-level``, reloaded on SIGHUP); every module logs
with a `logger` of its namespace.  A dropped event costs a dictionary,
not its formatting and write: at ``--log-level warn`` a storm of connections is
not slowed by four info lines for each.

``twistd --logger chatservice.logs.json_lines -n chatservice ...`` writes one JSON
object per line to standard output (the journal, or a log collector), with every
event's structured fields (``conn_id``, ``peer``, ``code``...) as keys.
"""

from __future__ import annotations

import sys

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    jsonFileLogObserver,
)

_levels = LogLevelFilterPredicate(LogLevel.info)

#: Where chatservice's Loggers send their events: the global publisher, past the level.
filtered = FilteringLogObserver(globalLogPublisher, [_levels])


def logger(namespace: str) -> Logger:
    """A Logger whose events go through `filtered`, under `namespace`.

    Namespaces are part of the log format (``[chatservice.protocol#info]``, the
    ``log_namespace`` of JSON lines) that operators filter and alert on: they
    name the concern (``chatservice.hub``, ``chatservice.protocol``...), and
    stay the same when the code behind them moves between modules.
    """
    return Logger(namespace=namespace, observer=filtered)


def set_level(name: str) -> None:
    """Write chatservice's events of level `name` (``debug``, ``info``, ``warn``,
    ``error``) and above."""
    _levels.setLogLevelForNamespace("", LogLevel.levelWithName(name))


def enabled(level: LogLevel) -> bool:
    """Whether events of `level` are written."""
    return bool(level >= _levels.logLevelForNamespace(""))


def json_lines() -> ILogObserver:
    """An observer writing each event as one JSON line to stdout."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
