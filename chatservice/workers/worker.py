"""A worker's side of ``--workers``: what its master told it, and the pipe back.

The master (`chatservice.workers.master`) starts each worker as ``twistd chatservice``
with the same options and, in the environment variable `WORKER_ENV`, a
`WorkerLink`: its slot, the scoreboard file and the file descriptors of the
listening sockets, in the order of ``--port``.  Besides them a worker has:

- fd 0, a pipe from the master: it never carries anything; its end of file
  means the master is gone (even if killed with SIGKILL), and the worker stops;
- fd 1, its log, one JSON event per line (``--logger
  chatservice.logs.json_lines``), which the master writes to its own log;
- fd 3, a pipe to the master: ``ready`` once it listens, then ``alive``
  every second (`HEARTBEAT`), for supervision and systemd's watchdog.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import stdio
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

#: Where a worker finds its `WorkerLink` (JSON).
WORKER_ENV = "CHATSERVICE_WORKER"
#: The status pipe, worker to master.
STATUS_FD = 3
#: Seconds between two ``alive`` lines.
HEARTBEAT = 1.0


@dataclass(frozen=True)
class WorkerLink:
    """What a worker is told by its master.

    Attributes:
        slot: Its row of the scoreboard, 1 to `workers`.
        workers: How many workers the service has.
        fds: The listening sockets, one per ``--port``, in order.
        board: The scoreboard file.
    """

    slot: int
    workers: int
    fds: tuple[int, ...]
    board: str

    def to_environ(self) -> str:
        """This link as the value of the environment variable the worker reads."""
        return json.dumps(
            {"slot": self.slot, "workers": self.workers, "fds": self.fds, "board": self.board}
        )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> WorkerLink | None:
        """The link in the environment; None when this process is not a worker."""
        value = (os.environ if environ is None else environ).get(WORKER_ENV)
        if not value:
            return None
        data = json.loads(value)
        return cls(int(data["slot"]), int(data["workers"]), tuple(data["fds"]), str(data["board"]))


class MasterPipe(Protocol):
    """fd 0 (from the master) and fd 3 (to it).

    Args:
        gone: Called once when the master's end closes while we still run.
    """

    def __init__(self, gone: Callable[[], Any]) -> None:
        self._gone = gone
        self._closing = False

    def send(self, line: str) -> None:
        """Tell the master `line` (``ready``, ``alive``)."""
        if self.transport is not None and not self._closing:
            self.transport.write(line.encode("ascii") + b"\n")

    def close(self) -> None:
        """Close the pipe (at shutdown: the master knows why)."""
        self._closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        """The master is gone (unless we closed the pipe)."""
        if not self._closing:
            self._closing = True
            self._gone()


def connect_master(reactor: Any, gone: Callable[[], Any]) -> MasterPipe:
    """The worker's pipes to its master."""
    pipe = MasterPipe(gone)
    stdio.StandardIO(pipe, stdin=0, stdout=STATUS_FD, reactor=reactor)  # type: ignore[call-arg]
    return pipe
