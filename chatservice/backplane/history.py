"""The persistent chat history: the last messages of every room, in SQLite.

What a client sees of it (``chat-history``, message ids, ``since``) is
specified in docs/protocol.md, section ``/chat``.

The store has two halves:

- SQLite, touched only through an injected `Executor`.  In production that is
  a `ThreadExecutor`: one dedicated thread, so the reactor never waits on the
  disk, and calls run one at a time in the order they were made, their
  Deferreds firing in that order too.  Tests and tools use
  `immediate_executor`, which runs the work at once in the calling thread.
- An in-memory cache of what the database keeps (the last ``keep`` messages of
  every room), loaded by `History.open` and updated as appends complete, in
  the thread the Deferreds fire in (the reactor's).  Joins read it
  synchronously and never wait on the disk.

Message ids come from one global ``AUTOINCREMENT`` sequence: SQLite records
the highest id ever handed out in ``sqlite_sequence``, which survives deleting
rows, so an id is never given twice, also across restarts, also once the
rows are pruned or ``keep`` is 0.  Ids of one room are then strictly
increasing because all of them are.
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from chatservice import logs
from chatservice.backplane import outbox
from chatservice.backplane.outbox import Queued
from chatservice.backplane.values import JOIN_HISTORY, StoredMessage

_log = logs.logger("chatservice.history")

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT NOT NULL,
    username TEXT NOT NULL,
    message TEXT NOT NULL,
    time TEXT NOT NULL,
    user TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_room ON messages (room, id);
-- One row per room that ever had a message.  newest_id: the last id given in
-- the room (a `since` above it cannot be genuine).  pruned_id: the highest id
-- dropped from the room (a `since` below it has missed messages).
-- Identified users' names (casefolded): theirs for good.
CREATE TABLE IF NOT EXISTS names (
    folded TEXT PRIMARY KEY,
    user TEXT NOT NULL
) WITHOUT ROWID;
-- Identified users' direct conversations: the room, and who with (a name).
CREATE TABLE IF NOT EXISTS conversations (
    user TEXT NOT NULL,
    room TEXT NOT NULL,
    other TEXT NOT NULL,
    PRIMARY KEY (user, room)
) WITHOUT ROWID;
-- Moderators' orders in force (bans, mutes): their JSON, until when.
CREATE TABLE IF NOT EXISTS orders (
    key TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    until REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rooms (
    room TEXT PRIMARY KEY,
    newest_id INTEGER NOT NULL,
    pruned_id INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
-- With --webhook: the events the application has not acknowledged yet, in
-- order (chatservice.backplane.outbox); at: when kept, seconds since the epoch.
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    body TEXT NOT NULL
);
-- With --webhook: who is in which room now (chatservice.backplane.attendance),
-- so that a process that was killed still tells who left with it.
CREATE TABLE IF NOT EXISTS present (
    conn INTEGER NOT NULL,
    room TEXT NOT NULL,
    name TEXT NOT NULL,
    user TEXT,
    PRIMARY KEY (conn, room)
) WITHOUT ROWID;
-- With --webhook: who is in their grace period (user.offline at `at`,
-- seconds since the epoch, unless they are back), kept as it starts and ends.
CREATE TABLE IF NOT EXISTS going (
    person TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    user TEXT,
    at REAL NOT NULL
) WITHOUT ROWID;
"""

_UPSERT_ROOM = """
INSERT INTO rooms (room, newest_id, pruned_id) VALUES (?, ?, ?)
ON CONFLICT (room) DO UPDATE SET
    newest_id = max(newest_id, excluded.newest_id),
    pruned_id = max(pruned_id, excluded.pruned_id)
"""


class Executor(Protocol):
    """Runs a blocking function somewhere and returns a Deferred of its result.

    Functions handed to one executor must run one at a time, in the order
    they were handed over, and their Deferreds must fire in that order.
    """

    def __call__(self, f: Callable[[], T], /) -> Deferred[T]: ...


def immediate_executor(f: Callable[[], T]) -> Deferred[T]:
    """Run ``f`` now, in the calling thread (for tests and tools).

    Args:
        f: The function to run.

    Returns:
        A Deferred that has already fired with ``f``'s result, or failed with
        its exception.
    """
    try:
        result = f()
    except BaseException:
        return defer.fail()
    return defer.succeed(result)


class ThreadExecutor:
    """An `Executor` running every function in one dedicated thread.

    The thread is started at once.  Call `stop` at shutdown, after the last
    function was handed over (`History.close` is one); a reactor shutdown
    trigger stops it too, as a safety net.

    Args:
        reactor: The reactor whose thread the Deferreds fire in (the global
            one if None).
        name: The thread pool's name, shown in thread listings.
    """

    def __init__(self, reactor: Any = None, name: str = "chatservice-history") -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        # One thread: calls are serialized FIFO, and deferToThreadPool hands
        # the results back to the reactor thread in the same order.
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=name)
        self._pool.start()
        self._trigger: Any = reactor.addSystemEventTrigger("during", "shutdown", self._at_shutdown)

    def __call__(self, f: Callable[[], T], /) -> Deferred[T]:
        """Run ``f`` in the thread; the Deferred fires in the reactor thread.

        Returns:
            A Deferred of ``f``'s result; it fails with `RuntimeError` if the
            executor was stopped.
        """
        if not self._pool.started:
            return defer.fail(RuntimeError("the history thread is stopped"))
        return deferToThreadPool(self._reactor, self._pool, f)

    def _at_shutdown(self) -> None:
        self._trigger = None  # firing now: nothing to remove
        self.stop()

    def stop(self) -> None:
        """Finish the work handed over so far, then end the thread.

        Blocks until the thread has ended; safe to call more than once.
        """
        if self._trigger is not None:
            self._reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None
        if self._pool.started:
            self._pool.stop()


@dataclass(slots=True)
class _Room:
    """The cache of one room: what the database keeps of it, and its marks."""

    messages: deque[StoredMessage]
    newest_id: int = 0
    pruned_id: int = 0


class History:
    """The last ``keep`` messages of every room, kept in SQLite.

    Call `open` and wait for it before anything else, and `close` at the end.
    `append` writes through the executor; `recent`, `since` and `rooms`
    answer from the cache at once.

    Args:
        path: The SQLite database file; ``:memory:`` keeps nothing across
            restarts.
        keep: How many messages of each room are kept (0 keeps none, but ids
            are still never reused).
        executor: Where the SQLite work runs; see the module docstring.
        hooks: The webhook event types kept in the outbox (``--webhook-events``);
            none without ``--webhook``.

    Raises:
        ValueError: If ``keep`` is negative.
    """

    def __init__(
        self, path: str, keep: int, executor: Executor, hooks: frozenset[str] = frozenset()
    ) -> None:
        if keep < 0:
            raise ValueError("the history length must not be negative")
        self.path = path
        self.keep = keep
        self._execute = executor
        self.hooks = hooks
        #: Events in the outbox (as far as this thread knows), and the oldest's time.
        self._queued = 0
        self._oldest: float | None = None
        #: Who was in which room when the process last ended: (conn, room, name, user).
        self.left_behind: list[tuple[int, str, str, str | None]] = []
        #: Who was in their grace period then: (name, user, when they go offline).
        self.going_behind: list[tuple[str, str | None, float]] = []
        # Only ever used in the executor.
        self._db: sqlite3.Connection | None = None
        # Only ever used in the thread the Deferreds fire in.
        self._rooms: dict[str, _Room] = {}
        #: Moderators' orders in force, by key: their JSON (see `keep_order`).
        self._orders: dict[str, str] = {}
        #: Identified users' names, casefolded, and their user ids (see `reserve`).
        self._names: dict[str, str] = {}
        #: Identified users' direct conversations: room -> the other's name.
        self._conversations: dict[str, dict[str, str]] = {}
        #: Called with the seconds from each `append` call to its commit
        #: (only for appends that were stored); e.g. a Histogram's ``observe``.
        self.observe_append: Callable[[float], object] | None = None

    # -- the cache: synchronous reads --------------------------------------

    def recent(self, room: str, limit: int = JOIN_HISTORY) -> list[StoredMessage]:
        """The last ``limit`` kept messages of ``room``, oldest first.

        Args:
            room: The room's name; an unknown room has no messages.
            limit: How many messages at most.

        Returns:
            The messages, oldest first.
        """
        cached = self._rooms.get(room)
        if cached is None or limit <= 0:
            return []
        messages = list(cached.messages)
        return messages[-limit:]

    def since(
        self, room: str, since_id: int, limit: int = JOIN_HISTORY
    ) -> tuple[list[StoredMessage], bool]:
        """What a client that last saw ``since_id`` in ``room`` missed.

        Args:
            room: The room's name.
            since_id: The id of the last message the client saw in the room.
            limit: How many messages at most when the client cannot recover.

        Returns:
            ``(messages, True)`` with every kept message after ``since_id``
            (however many) when none after it was dropped; otherwise
            ``(recent(room, limit), False)``, also when ``since_id`` is above
            the room's newest id or negative (it cannot be genuine).
        """
        cached = self._rooms.get(room)
        newest_id = cached.newest_id if cached is not None else 0
        pruned_id = cached.pruned_id if cached is not None else 0
        if since_id < 0 or since_id > newest_id or since_id < pruned_id:
            return self.recent(room, limit), False
        if cached is None:
            return [], True
        return [m for m in cached.messages if m.id > since_id], True

    def newest(self, room: str) -> int:
        """The id of the last message said in ``room`` (kept or not); 0 if none."""
        cached = self._rooms.get(room)
        return cached.newest_id if cached is not None else 0

    def rooms(self) -> list[str]:
        """The names of the rooms that have kept messages, sorted."""
        return sorted(name for name, cached in self._rooms.items() if cached.messages)

    # -- the database: through the executor --------------------------------

    def open(self, executor: Executor | None = None) -> Deferred[None]:
        """Open (or create) the database and load the cache.

        A room holding more than ``keep`` messages (``keep`` was lowered since
        the last run) is pruned to ``keep`` first.

        Args:
            executor: Where to do this one piece of work instead of the
                history's executor; e.g. `immediate_executor` at start-up, so
                a bad database fails the start before any port listens.

        Returns:
            A Deferred that fires once the history is ready, or fails with the
            `sqlite3.Error` (or `OSError`) that prevented it.
        """

        def loaded(found: tuple[Any, ...]) -> None:
            rooms, self._orders, self._names, self._conversations, hooks = found
            self._queued, self._oldest, self.left_behind, self.going_behind = hooks
            self._rooms = rooms
            _log.info(
                "history open path={path} keep={keep} rooms={rooms} messages={messages}",
                path=self.path,
                keep=self.keep,
                rooms=len(rooms),
                messages=sum(len(r.messages) for r in rooms.values()),
            )

        return (executor or self._execute)(self._open_db).addCallback(loaded)

    def append(
        self, room: str, username: str, message: str, time: str, user: str | None = None
    ) -> Deferred[StoredMessage]:
        """Store a message, pruning its room to the last ``keep``.

        When the Deferred fires, the message is committed: it survives the
        process being killed.  The cache is updated before any callback added
        by the caller runs, so a join right after sees the message.

        Args:
            room: The room's name.
            username: Who said it.
            message: The text.
            time: When it was received, ISO 8601 UTC with milliseconds.
            user: The identified sender's user id, if any.

        Returns:
            A Deferred firing with the stored message and its new id, or
            failing with the `sqlite3.Error` that prevented storing it (the
            database and the cache are then unchanged).
        """

        started = perf_counter()

        def stored(result: tuple[StoredMessage, int]) -> StoredMessage:
            if self.observe_append is not None:
                self.observe_append(perf_counter() - started)
            msg, pruned_id = result
            if outbox.MESSAGE_CREATED in self.hooks:
                self._queued_one(stamp)
            cached = self._rooms.get(room)
            if cached is None:
                cached = self._rooms[room] = _Room(deque(maxlen=self.keep))
            cached.messages.append(msg)
            cached.newest_id = max(cached.newest_id, msg.id)
            cached.pruned_id = max(cached.pruned_id, pruned_id)
            return msg

        def failed(failure: Failure) -> Failure:
            _log.failure("history could not store a message in room={room}", failure, room=room)
            return failure

        stamp = _now()
        d = self._execute(lambda: self._append_db(room, username, message, time, user, stamp))
        return d.addCallbacks(stored, failed)

    def delete(self, room: str, message_id: int, by: str = "") -> Deferred[bool]:
        """Remove one kept message (moderation, by `by`); True if it was kept.

        The room's marks stay: the id is never given again, and a ``since``
        recovery simply no longer contains it.
        """
        stamp = _now()

        def deleted(found: bool) -> bool:
            if found and outbox.MESSAGE_DELETED in self.hooks:
                self._queued_one(stamp)
            cached = self._rooms.get(room)
            if cached is not None:
                kept = [m for m in cached.messages if m.id != message_id]
                if len(kept) != len(cached.messages):
                    cached.messages = deque(kept, maxlen=self.keep)
                    found = True
            return found

        d = self._execute(lambda: self._delete_db(room, message_id, by, stamp))
        return d.addCallback(deleted)

    # -- the webhook outbox (chatservice.backplane.outbox) --------------------

    def _queued_one(self, at: float, n: int = 1) -> None:
        self._queued += n
        if self._oldest is None:
            self._oldest = at

    def record(
        self,
        bodies: Sequence[str],
        arrived: Sequence[tuple[int, str, str, str | None]] = (),
        departed: Sequence[tuple[int, str]] = (),
        going: Sequence[tuple[str, str, str | None, float]] = (),
        back: Sequence[str] = (),
    ) -> Deferred[None]:
        """Keep events in the outbox, with who arrived in and departed from rooms, at once.

        Args:
            bodies: The events, as `chatservice.backplane.outbox.body` makes them.
            arrived: (connection, room, name, user) now present.
            departed: (connection, room) no longer present.
            going: (person, name, user, when) whose grace period starts.
            back: Persons whose grace period is over (back, or told offline).
        """
        stamp = _now()

        def run() -> None:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO outbox (at, body) VALUES (?, ?)", [(stamp, b) for b in bodies]
                )
                db.executemany("INSERT OR REPLACE INTO present VALUES (?, ?, ?, ?)", arrived)
                db.executemany("DELETE FROM present WHERE conn = ? AND room = ?", departed)
                db.executemany("INSERT OR REPLACE INTO going VALUES (?, ?, ?, ?)", going)
                db.executemany("DELETE FROM going WHERE person = ?", [(p,) for p in back])
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise

        def kept(_: None) -> None:
            if bodies:
                self._queued_one(stamp, len(bodies))

        return self._execute(run).addCallback(kept)

    def take(self, limit: int) -> Deferred[list[Queued]]:
        """The oldest `limit` events not acknowledged yet (none without asking SQLite if none)."""
        if self._queued <= 0:
            return defer.succeed([])

        def run() -> list[Queued]:
            rows = self._connection().execute(
                "SELECT id, at, body FROM outbox ORDER BY id LIMIT ?", (limit,)
            )
            return [Queued(f"evt_{id}", at, body) for id, at, body in rows]

        def taken(events: list[Queued]) -> list[Queued]:
            if not events:
                self._queued, self._oldest = 0, None
            else:
                self._oldest = events[0].at
            return events

        return self._execute(run).addCallback(taken)

    def done(self, ids: Sequence[str]) -> Deferred[None]:
        """Forget acknowledged (or dropped) events."""
        rows = [(int(i.removeprefix("evt_")),) for i in ids]

        def run() -> tuple[int, float | None]:
            db = self._connection()
            deleted = db.executemany("DELETE FROM outbox WHERE id = ?", rows).rowcount
            # The first row by id, not min(at) nor count(*): both would scan
            # the whole table, after every batch of a long backlog.
            first = db.execute("SELECT at FROM outbox ORDER BY id LIMIT 1").fetchone()
            return deleted, first[0] if first else None

        def forgotten(state: tuple[int, float | None]) -> None:
            deleted, self._oldest = state
            self._queued = max(0, self._queued - deleted) if self._oldest is not None else 0

        return self._execute(run).addCallback(forgotten)

    def backlog(self) -> tuple[int, float | None]:
        """How many events wait in the outbox, and when the oldest was kept."""
        return self._queued, self._oldest

    def orders(self) -> list[str]:
        """The JSON of the orders kept (`keep_order`) and not over at the last start."""
        return list(self._orders.values())

    def user_of(self, name: str) -> str | None:
        """The user id whose name `name` is (any case), if an identified user took it."""
        return self._names.get(name.casefold())

    def reserve(self, name: str, user: str) -> Deferred[None]:
        """Make `name` (any case) user `user`'s, for good."""
        folded = name.casefold()
        self._names[folded] = user

        def run() -> None:
            self._connection().execute("INSERT OR REPLACE INTO names VALUES (?, ?)", (folded, user))

        return self._execute(run)

    def conversations(self, user: str) -> dict[str, str]:
        """User `user`'s direct conversations: their rooms, and who with."""
        return dict(self._conversations.get(user, {}))

    def converse(self, user: str, room: str, other: str) -> Deferred[None]:
        """Remember that `user` has the direct conversation `room` with `other`."""
        if self._conversations.get(user, {}).get(room) == other:
            return defer.succeed(None)
        self._conversations.setdefault(user, {})[room] = other

        def run() -> None:
            self._connection().execute(
                "INSERT OR REPLACE INTO conversations VALUES (?, ?, ?)", (user, room, other)
            )

        return self._execute(run)

    def keep_order(self, key: str, body: str, until: float) -> Deferred[None]:
        """Keep an order's JSON until `until` (seconds since the epoch), replacing `key`'s.

        An `until` in the past forgets `key`.
        """
        sql = "INSERT OR REPLACE INTO orders VALUES (?, ?, ?)"
        args: tuple[object, ...] = (key, body, until)
        if until > time.time():
            self._orders[key] = body
        else:
            self._orders.pop(key, None)
            sql, args = "DELETE FROM orders WHERE key = ?", (key,)

        def run() -> None:
            self._connection().execute(sql, args)

        return self._execute(run)

    def close(self) -> Deferred[None]:
        """Close the database, after everything handed over before.

        Returns:
            A Deferred that fires once the database is closed.
        """
        return self._execute(self._close_db)

    # -- run in the executor -------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the history is not open")
        return self._db

    def _open_db(self) -> tuple[Any, ...]:
        if self._db is not None:
            raise RuntimeError("the history is already open")
        # Autocommit mode (isolation_level=None): transactions are explicit.
        # check_same_thread=False: the executor decides the thread, and runs
        # one call at a time.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            # WAL with synchronous=NORMAL: a commit has written the WAL to the
            # operating system before it returns, so a committed message
            # survives the process being killed (SIGKILL, crash).  It could
            # only be lost with the operating system or the power (no fsync
            # per commit), which this service accepts for speed.
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal" and self.path != ":memory:":
                _log.warn(
                    "history path={path}: journal mode {mode}, not wal",
                    path=self.path,
                    mode=mode,
                )
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
            if "user" not in columns:  # a database of an earlier version
                db.execute("ALTER TABLE messages ADD COLUMN user TEXT")
            loaded = self._load_and_prune(db)
            db.execute("DELETE FROM orders WHERE until <= ?", (time.time(),))
            orders = dict(db.execute("SELECT key, body FROM orders"))
            names = dict(db.execute("SELECT folded, user FROM names"))
            conversations: dict[str, dict[str, str]] = {}
            for user, room, other in db.execute("SELECT user, room, other FROM conversations"):
                conversations.setdefault(user, {})[room] = other
            queued, oldest = db.execute("SELECT count(*), min(at) FROM outbox").fetchone()
            present = list(db.execute("SELECT conn, room, name, user FROM present"))
            going = list(db.execute("SELECT name, user, at FROM going"))
        except BaseException:
            db.close()
            raise
        self._db = db
        return loaded, orders, names, conversations, (queued, oldest, present, going)

    def _load_and_prune(self, db: sqlite3.Connection) -> dict[str, _Room]:
        rooms: dict[str, _Room] = {}
        db.execute("BEGIN IMMEDIATE")
        try:
            for room, newest_id, pruned_id in db.execute(
                "SELECT room, newest_id, pruned_id FROM rooms"
            ):
                rooms[room] = _Room(deque(maxlen=self.keep), newest_id, pruned_id)
            by_room: dict[str, list[StoredMessage]] = {}
            for row in db.execute(
                "SELECT id, room, username, message, time, user FROM messages ORDER BY id"
            ):
                msg = StoredMessage(*row)
                by_room.setdefault(msg.room, []).append(msg)
            for room, messages in by_room.items():
                cached = rooms.get(room)
                if cached is None:
                    cached = rooms[room] = _Room(deque(maxlen=self.keep))
                cached.newest_id = max(cached.newest_id, messages[-1].id)
                dropped = messages[: max(0, len(messages) - self.keep)]
                if dropped:
                    cached.pruned_id = max(cached.pruned_id, dropped[-1].id)
                    db.execute(
                        "DELETE FROM messages WHERE room = ? AND id <= ?",
                        (room, cached.pruned_id),
                    )
                cached.messages.extend(messages[len(dropped) :])
                db.execute(_UPSERT_ROOM, (room, cached.newest_id, cached.pruned_id))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        return rooms

    def _delete_db(self, room: str, message_id: int, by: str, stamp: float) -> bool:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            cursor = db.execute(
                "DELETE FROM messages WHERE room = ? AND id = ?", (room, message_id)
            )
            found = cursor.rowcount > 0
            if found and outbox.MESSAGE_DELETED in self.hooks:
                data = {"room": room, "id": message_id, "by": by}
                event = outbox.body(outbox.MESSAGE_DELETED, outbox.iso(stamp), data)
                db.execute("INSERT INTO outbox (at, body) VALUES (?, ?)", (stamp, event))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        return found

    def _append_db(
        self, room: str, username: str, message: str, time: str, user: str | None, stamp: float
    ) -> tuple[StoredMessage, int]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            cursor = db.execute(
                "INSERT INTO messages (room, username, message, time, user) VALUES (?, ?, ?, ?, ?)",
                (room, username, message, time, user),
            )
            new_id = cursor.lastrowid
            assert new_id is not None
            # The newest id that no longer fits into the last `keep`.
            row = db.execute(
                "SELECT id FROM messages WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
                (room, self.keep),
            ).fetchone()
            pruned_id = 0
            if row is not None:
                pruned_id = row[0]
                db.execute("DELETE FROM messages WHERE room = ? AND id <= ?", (room, pruned_id))
            db.execute(_UPSERT_ROOM, (room, new_id, pruned_id))
            stored = StoredMessage(new_id, room, username, message, time, user)
            if outbox.MESSAGE_CREATED in self.hooks:
                # In the message's own transaction: told to the application
                # if and only if it was kept.
                event = outbox.body(outbox.MESSAGE_CREATED, time, stored.payload())
                db.execute("INSERT INTO outbox (at, body) VALUES (?, ?)", (stamp, event))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        return stored, pruned_id

    def _close_db(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


def _now() -> float:
    return time.time()


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back what is left of a failed transaction (SQLite may have already).

    The error that made the transaction fail is what matters; one from the
    rollback itself is only logged.
    """
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error:
        _log.failure("history rollback failed")
