"""Log observers for twistd's ``--logger`` option.

``twistd --logger chatservice.logs.json_lines -n chatservice ...`` writes one JSON
object per line to standard output (the journal, or a log collector), with every
event's structured fields (``conn_id``, ``peer``, ``code``...) as keys.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_lines() -> ILogObserver:
    """An observer writing each event as one JSON line to stdout."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
