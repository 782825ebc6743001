"""What the workers of one service share: counts in a file mapped into every worker.

With ``--workers N`` the master creates a `Scoreboard` file (in a directory of
its own, removed at exit) and every worker maps it (mmap, MAP_SHARED): one row
of float64 numbers per worker slot, written only by that slot's worker, and
read by all of them.  No locks: a row has one writer, and a reader adding up
rows tolerates a number that is a moment old.  (Apache httpd's scoreboard, and
prometheus_client's multiprocess mode, share counts between processes the same
way.)

A worker's row holds:
- its pid (0: no worker in the slot);
- its open WebSocket connections, and the same counted per client address
  bucket (crc32 of the address; two addresses may share a bucket, which can
  only make the per-address limit stricter for them): the connection limits
  of the whole service, `SharedConnectionLimits`;
- its metric samples, copied from its own prometheus registry every second
  and before it answers ``/metrics`` (`chatservice.web.metrics.SummedCollector`
  adds the rows up).

The header row, written by the master: how many workers are configured and how
many are up.  The last row: what workers that died had counted, so that
counters never go back (``Scoreboard.retire``).  Nothing here imports Twisted.
"""

from __future__ import annotations

import mmap
import os
import zlib
from pathlib import Path

#: Header row fields.
CONFIGURED, UP = 0, 1
#: Worker row fields.
PID, OPEN = 0, 1
#: Per-address buckets of a row, from `BUCKETS_AT`.
BUCKETS_AT, BUCKETS = 8, 16384
#: Metric samples of a row, from `SAMPLES_AT` (the most a row can hold: `SAMPLES`).
SAMPLES_AT, SAMPLES = BUCKETS_AT + BUCKETS, 1024
ROW = SAMPLES_AT + SAMPLES
_DOUBLE = 8


class Scoreboard:
    """The shared rows of one service's workers.

    Rows: 0 is the header, 1..workers the worker slots, workers + 1 the retired
    counts.

    Args:
        path: The file (made by `create`).
        workers: How many worker slots it has.
    """

    def __init__(self, path: str | Path, workers: int) -> None:
        self.path = Path(path)
        self.workers = workers
        with open(self.path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), (workers + 2) * ROW * _DOUBLE)
        self._values = memoryview(self._map).cast("d")

    @classmethod
    def create(cls, path: str | Path, workers: int) -> Scoreboard:
        """Make a new board of zeros at `path` (readable by its owner only) and map it."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, (workers + 2) * ROW * _DOUBLE)  # sparse: zeros cost nothing
        finally:
            os.close(fd)
        board = cls(path, workers)
        board.set_header(CONFIGURED, workers)
        return board

    def close(self) -> None:
        """Unmap the file (it stays, for the others)."""
        self._values.release()
        self._map.close()

    # The header.

    def header(self, field: int) -> int:
        """A field of the header row (`UP`, `CONFIGURED`...)."""
        return int(self._values[field])

    def set_header(self, field: int, value: int) -> None:
        """Set a field of the header row."""
        self._values[field] = value

    # Rows.

    def get(self, slot: int, field: int) -> float:
        """A field of worker `slot`'s row."""
        return self._values[slot * ROW + field]

    def set(self, slot: int, field: int, value: float) -> None:
        """Set a field of worker `slot`'s row."""
        self._values[slot * ROW + field] = value

    def add(self, slot: int, field: int, delta: float) -> None:
        """Add `delta` to a field of worker `slot`'s row."""
        self._values[slot * ROW + field] += delta

    def total(self, field: int) -> float:
        """`field` added up over the worker slots."""
        values = self._values
        return sum(values[slot * ROW + field] for slot in range(1, self.workers + 1))

    def live_slots(self) -> list[int]:
        """The worker slots that have a worker now."""
        return [s for s in range(1, self.workers + 1) if self.get(s, PID)]

    @property
    def retired_slot(self) -> int:
        """The row where the counters of workers that ended are kept."""
        return self.workers + 1

    def clear(self, slot: int) -> None:
        """Zero a slot's row: a new worker starts in it."""
        start = slot * ROW
        self._values[start : start + ROW] = memoryview(bytes(ROW * _DOUBLE)).cast("d")

    def retire(self, slot: int) -> None:
        """A slot's worker died: keep its samples in the retired row, clear its row.

        (Readers take only counters from the retired row, not gauges.)
        """
        values = self._values
        base = slot * ROW + SAMPLES_AT
        retired = self.retired_slot * ROW + SAMPLES_AT
        for i in range(SAMPLES):
            value = values[base + i]
            if value:
                values[retired + i] += value
        self.clear(slot)


def overloaded(board: Scoreboard, slot: int) -> bool:
    """Whether the worker in `slot` holds more open connections than its share
    of the live workers' (by more than one, or 1 %)."""
    live = board.live_slots()
    if len(live) < 2:
        return False
    share = board.total(OPEN) / len(live)
    return board.get(slot, OPEN) > share + max(1.0, share / 100)


def address_bucket(address: str) -> int:
    """The per-address bucket of a client address (the same in every process)."""
    return BUCKETS_AT + zlib.crc32(address.encode("utf-8", "surrogatepass")) % BUCKETS


class SharedConnectionLimits:
    """`chatservice.web.policy.ConnectionLimits` for the whole service, over every worker.

    Counts this worker's connections in its row and checks the limits against
    the sum of all rows.  Two workers accepting at the same instant may each
    let one connection past a limit: at most one per worker.

    Args:
        board: The service's scoreboard.
        slot: This worker's slot.
        total: The most open at once, in the whole service.
        per_address: The most open at once from one client address, in the
            whole service.
    """

    def __init__(self, board: Scoreboard, slot: int, total: int, per_address: int) -> None:
        self.board = board
        self.slot = slot
        self.total = total
        self.per_address = per_address
        self._by_address: dict[str, int] = {}

    @property
    def open(self) -> int:
        """Open connections of the whole service."""
        return int(self.board.total(OPEN))

    def acquire(self, address: str) -> str | None:
        """Count a new connection from `address`.

        Returns:
            None if it may open, else why not (and nothing was counted).
        """
        board = self.board
        if board.total(OPEN) >= self.total:
            return f"server is at its limit of {self.total} connections"
        bucket = address_bucket(address)
        if board.total(bucket) >= self.per_address:
            return f"too many connections from {address} (limit {self.per_address})"
        self._by_address[address] = self._by_address.get(address, 0) + 1
        board.add(self.slot, OPEN, 1)
        board.add(self.slot, bucket, 1)
        return None

    def release(self, address: str) -> None:
        """Count a connection from `address` as closed."""
        count = self._by_address.get(address, 0)
        if count <= 0:
            return
        if count == 1:
            del self._by_address[address]
        else:
            self._by_address[address] = count - 1
        self.board.add(self.slot, OPEN, -1)
        self.board.add(self.slot, address_bucket(address), -1)
