"""The persistent chat history (chatservice/backplane/history.py).

Most tests run the SQLite work at once with `immediate_executor`, on database
files under ``tmp_path``: no reactor, no threads.  One test runs the real
writer thread under the reactor, one kills a writing process with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from chatservice.backplane.history import History, StoredMessage, ThreadExecutor, immediate_executor

T = TypeVar("T")

TIME = "2026-11-22T04:02:02.123Z"


def fired(d: Deferred[T]) -> T:
    """The result of a Deferred that has already fired (raised if it failed)."""
    results: list[T | Failure] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    assert not isinstance(result, Failure)
    return result


def failed(d: Deferred[Any]) -> Failure:
    """The failure of a Deferred that has already failed."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    assert isinstance(results[0], Failure), f"expected a failure, got {results[0]!r}"
    return results[0]


def open_history(path: Path | str, keep: int = 100) -> History:
    history = History(str(path), keep, immediate_executor)
    fired(history.open())
    return history


def say(history: History, room: str, text: str, username: str = "alice") -> StoredMessage:
    return fired(history.append(room, username, text, TIME))


def ids(messages: list[StoredMessage]) -> list[int]:
    return [m.id for m in messages]


def texts(messages: list[StoredMessage]) -> list[str]:
    return [m.message for m in messages]


def rows_in_file(path: Path) -> list[tuple[int, str, str]]:
    """What the database file holds, read independently of `History`."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT id, room, message FROM messages ORDER BY id").fetchall()
    finally:
        db.close()


def test_ids_increase_strictly_within_and_across_rooms(tmp_path: Path) -> None:
    history = open_history(tmp_path / "h.sqlite3")
    sent = [say(history, ("lobby", "dev", "ops")[i % 3], f"text {i}") for i in range(30)]
    all_ids = ids(sent)
    assert all_ids == sorted(set(all_ids))
    for room in ("lobby", "dev", "ops"):
        room_ids = [m.id for m in sent if m.room == room]
        assert len(room_ids) == 10
        assert room_ids == sorted(set(room_ids))
        assert ids(history.recent(room)) == room_ids
    assert sent[4] == StoredMessage(sent[4].id, "dev", "alice", "text 4", TIME)
    assert sent[4].payload() == {
        "id": sent[4].id,
        "room": "dev",
        "username": "alice",
        "message": "text 4",
        "time": TIME,
    }


def test_recent_is_oldest_first_and_limited(tmp_path: Path) -> None:
    history = open_history(tmp_path / "h.sqlite3")
    for i in range(60):
        say(history, "lobby", f"text {i}")
    say(history, "other", "elsewhere")
    assert texts(history.recent("lobby")) == [f"text {i}" for i in range(10, 60)]
    assert texts(history.recent("lobby", 5)) == [f"text {i}" for i in range(55, 60)]
    assert texts(history.recent("lobby", 100)) == [f"text {i}" for i in range(60)]
    assert history.recent("lobby", 0) == []
    assert texts(history.recent("other")) == ["elsewhere"]
    assert history.recent("nobody-here") == []


def test_rooms_are_pruned_to_keep(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    history = open_history(path, keep=3)
    for i in range(7):
        say(history, "lobby", f"lobby {i}")
    say(history, "dev", "dev 0")
    assert texts(history.recent("lobby", 50)) == ["lobby 4", "lobby 5", "lobby 6"]
    assert [text for _, room, text in rows_in_file(path) if room == "lobby"] == [
        "lobby 4",
        "lobby 5",
        "lobby 6",
    ]
    assert [text for _, room, text in rows_in_file(path) if room == "dev"] == ["dev 0"]
    assert history.rooms() == ["dev", "lobby"]


def test_since_recovers_every_later_message_beyond_50(tmp_path: Path) -> None:
    history = open_history(tmp_path / "h.sqlite3", keep=200)
    sent = [say(history, "lobby", f"text {i}") for i in range(120)]
    say(history, "dev", "not in the lobby")
    messages, recovered = history.since("lobby", sent[0].id)
    assert recovered is True
    assert messages == sent[1:]
    assert history.since("lobby", sent[100].id) == (sent[101:], True)
    assert history.since("lobby", sent[-1].id) == ([], True)


def test_since_after_pruning_is_not_recovered(tmp_path: Path) -> None:
    history = open_history(tmp_path / "h.sqlite3", keep=10)
    sent = [say(history, "lobby", f"text {i}") for i in range(30)]
    # sent[:20] were dropped.  A client that saw sent[19] missed nothing.
    assert history.since("lobby", sent[19].id) == (sent[20:], True)
    # One that saw sent[18] missed sent[19], which is gone.
    assert history.since("lobby", sent[18].id) == (sent[20:], False)
    assert history.since("lobby", sent[4].id) == (sent[20:], False)
    assert history.since("lobby", 0) == (sent[20:], False)


def test_since_not_recovered_is_capped_at_50(tmp_path: Path) -> None:
    history = open_history(tmp_path / "h.sqlite3", keep=80)
    sent = [say(history, "lobby", f"text {i}") for i in range(100)]
    messages, recovered = history.since("lobby", sent[5].id)
    assert recovered is False
    assert messages == sent[50:]


def test_since_beyond_the_rooms_newest_is_unknown(tmp_path: Path) -> None:
    history = open_history(tmp_path / "h.sqlite3")
    lobby = [say(history, "lobby", f"lobby {i}") for i in range(60)]
    dev = [say(history, "dev", f"dev {i}") for i in range(3)]
    # An id from later in another room is above the lobby's newest.
    assert history.since("lobby", dev[0].id) == (lobby[10:], False)
    assert history.since("lobby", lobby[-1].id + 1000) == (lobby[10:], False)
    assert history.since("lobby", -1) == (lobby[10:], False)
    assert history.since("new-room", 5) == ([], False)
    assert history.since("new-room", 0) == ([], True)


@pytest.mark.parametrize("keep", [100, 2, 0])
def test_ids_are_never_reused_after_reopening(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "h.sqlite3"
    history = open_history(path, keep=keep)
    first = [say(history, "lobby", f"first {i}") for i in range(5)]
    fired(history.close())

    history = open_history(path, keep=keep)
    second = [say(history, "lobby", f"second {i}") for i in range(5)]
    assert ids(first + second) == sorted(set(ids(first + second)))
    # The room's newest id survived too, also when no message of it is kept.
    assert history.since("lobby", second[-1].id) == ([], True)
    assert history.since("lobby", second[-1].id + 1)[1] is False
    fired(history.close())

    history = open_history(path, keep=keep)
    third = say(history, "dev", "third")
    assert third.id > second[-1].id
    fired(history.close())


def test_memory_database_keeps_nothing_across_reopen() -> None:
    history = open_history(":memory:")
    say(history, "lobby", "gone soon")
    assert history.rooms() == ["lobby"]
    fired(history.close())

    history = open_history(":memory:")
    assert history.rooms() == []
    assert history.recent("lobby") == []
    fired(history.close())


def test_the_cache_after_reopening_is_what_was_kept(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    history = open_history(path, keep=5)
    sent: dict[str, list[StoredMessage]] = {"lobby": [], "dev": [], "ops": []}
    for i in range(40):
        room = ("lobby", "lobby", "dev", "ops")[i % 4]
        sent[room].append(say(history, room, f"{room} {i}", username=f"user{i % 3}"))
    before = {room: history.recent(room, 100) for room in sent}
    fired(history.close())

    history = open_history(path, keep=5)
    assert history.rooms() == ["dev", "lobby", "ops"]
    for room, messages in sent.items():
        assert history.recent(room, 100) == before[room] == messages[-5:]
        # What was dropped before the restart is still known to be dropped.
        assert history.since(room, messages[-6].id) == (messages[-5:], True)
        assert history.since(room, messages[-7].id) == (messages[-5:], False)


@pytest.mark.parametrize("count", [0, 1, 5, 6, 9, 10, 11, 25])
def test_reopening_loses_nothing_of_a_room_that_was_not_full(tmp_path: Path, count: int) -> None:
    """Found by bench/soak.py: a room holding more than half of `keep` but fewer
    than `keep` messages lost its oldest ones at every restart (a negative slice),
    and a client reconnecting with `since` got `recovered: false`."""
    path = tmp_path / "h.sqlite3"
    history = open_history(path, keep=10)
    sent = [say(history, "lobby", f"text {i}") for i in range(count)]
    fired(history.close())

    history = open_history(path, keep=10)
    assert history.recent("lobby", 100) == sent[-10:]
    if sent:
        assert history.since("lobby", sent[0].id) == (sent[1:][-10:], count <= 11)
    fired(history.close())
    assert [row[0] for row in rows_in_file(path)] == ids(sent[-10:])


def test_lowering_keep_prunes_at_open(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    history = open_history(path, keep=10)
    sent = [say(history, "lobby", f"text {i}") for i in range(10)]
    fired(history.close())

    history = open_history(path, keep=3)
    assert history.recent("lobby") == sent[-3:]
    assert history.since("lobby", sent[6].id) == (sent[-3:], True)
    assert history.since("lobby", sent[5].id) == (sent[-3:], False)
    fired(history.close())
    assert [row[0] for row in rows_in_file(path)] == ids(sent[-3:])

    history = open_history(path, keep=10)
    assert history.recent("lobby") == sent[-3:]
    assert history.since("lobby", sent[5].id) == (sent[-3:], False)


def test_unicode_text_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    strange = [
        "héllo wörld",
        "雪 ☃ 🎉👩‍👩‍👧",
        "שלום עולם",
        "e\u0301 combining",
        "line one\nline two\ttab",
        "'); DROP TABLE messages; --",
        "\U0010fffd",
    ]
    history = open_history(path)
    for text in strange:
        say(history, "ünïcödé.room", text, username="Zoë 🐈")
    fired(history.close())

    history = open_history(path)
    kept = history.recent("ünïcödé.room")
    assert texts(kept) == strange
    assert {m.username for m in kept} == {"Zoë 🐈"}
    assert history.rooms() == ["ünïcödé.room"]


def test_a_failed_append_errbacks_and_changes_nothing(
    tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    path = tmp_path / "h.sqlite3"
    history = open_history(path, keep=2)
    sent = [say(history, "lobby", f"text {i}") for i in range(2)]
    # Make the append fail half-way, after its insert, when it prunes.
    other = sqlite3.connect(path)
    other.execute(
        "CREATE TRIGGER no_delete BEFORE DELETE ON messages "
        "BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END"
    )
    other.commit()

    failure = failed(history.append("lobby", "alice", "lost", TIME))
    assert failure.check(sqlite3.Error)
    assert "simulated disk failure" in str(failure.value)
    assert any(e.get("log_failure") is not None and e.get("room") == "lobby" for e in log_events)
    assert history.recent("lobby") == sent
    assert history.since("lobby", sent[-1].id) == ([], True)
    assert "lost" not in [text for _, _, text in rows_in_file(path)]

    other.execute("DROP TRIGGER no_delete")
    other.commit()
    other.close()
    after = say(history, "lobby", "after")
    assert after.id > sent[-1].id
    assert history.recent("lobby") == [sent[-1], after]
    fired(history.close())
    assert open_history(path, keep=2).recent("lobby") == [sent[-1], after]


def test_open_can_run_in_another_executor(tmp_path: Path) -> None:
    used: list[str] = []

    def executor(f: Callable[[], T]) -> Deferred[T]:
        used.append(getattr(f, "__name__", "?"))
        return immediate_executor(f)

    path = tmp_path / "h.sqlite3"
    say(open_history(path), "lobby", "before")
    history = History(str(path), 100, executor)
    fired(history.open(immediate_executor))
    assert used == []
    assert texts(history.recent("lobby")) == ["before"]
    say(history, "lobby", "after")
    fired(history.close())
    assert len(used) == 2


def test_a_missing_directory_fails_open(tmp_path: Path) -> None:
    history = History(str(tmp_path / "missing" / "h.sqlite3"), 100, immediate_executor)
    assert failed(history.open()).check(sqlite3.Error)


def test_negative_keep_is_refused() -> None:
    with pytest.raises(ValueError):
        History(":memory:", -1, immediate_executor)


@pytest_twisted.ensureDeferred
async def test_the_writer_thread_fires_appends_in_order(tmp_path: Path) -> None:
    from twisted.internet import reactor

    executor = ThreadExecutor(reactor)
    try:
        history = History(str(tmp_path / "h.sqlite3"), 1000, executor)
        await history.open()
        assert await executor(threading.get_ident) != threading.get_ident()

        order: list[int] = []
        in_cache: list[bool] = []

        def fired_in_order(message: StoredMessage, i: int) -> StoredMessage:
            order.append(i)
            in_cache.append(history.recent(message.room, 1)[-1] == message)
            return message

        pending = [
            history.append(f"room-{i % 3}", "alice", f"text {i}", TIME).addCallback(
                fired_in_order, i
            )
            for i in range(200)
        ]
        assert order == []  # nothing ran in the reactor thread
        messages = await defer.gatherResults(pending)

        assert order == list(range(200))
        assert all(in_cache)
        assert texts(messages) == [f"text {i}" for i in range(200)]
        assert ids(messages) == sorted(set(ids(messages)))
        assert texts(history.recent("room-1", 1000)) == [f"text {i}" for i in range(1, 200, 3)]
        await history.close()
    finally:
        executor.stop()
    executor.stop()  # stopping twice is harmless
    assert not [t for t in threading.enumerate() if "chatservice-history" in t.name]
    with pytest.raises(RuntimeError):
        await executor(lambda: None)


# Appends as fast as it can and prints every acknowledged message, until killed.
_WRITER = """
import json, sys
from twisted.python.failure import Failure
from chatservice.backplane.history import History, immediate_executor

def fired(d):
    results = []
    d.addBoth(results.append)
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]

history = History(sys.argv[1], 1000000, immediate_executor)
fired(history.open())
for i in range(1000000):
    message = fired(history.append("lobby", "writer", "message %d \\u00e9\\u2603" % i, "T"))
    print(json.dumps([message.id, message.message]), flush=True)
"""


def test_a_killed_writer_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    with (tmp_path / "stderr").open("w+") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=tmp_path,
        )
        assert child.stdout is not None
        acknowledged: list[tuple[int, str]] = []
        try:
            for line in child.stdout:
                acknowledged.append(tuple(json.loads(line)))
                if len(acknowledged) == 300:
                    break
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
        # Whatever it printed before it died was acknowledged too.
        acknowledged += [tuple(json.loads(line)) for line in child.stdout if line.endswith("\n")]
        child.stdout.close()
        stderr.seek(0)
        assert len(acknowledged) >= 300, stderr.read()
    assert child.returncode == -signal.SIGKILL  # it was still writing

    history = open_history(path, keep=1000000)
    kept = {m.id: m.message for m in history.recent("lobby", 1000000)}
    for message_id, text in acknowledged:
        assert kept.get(message_id) == text


def test_a_database_of_an_earlier_version_gets_the_user_column(tmp_path: Path) -> None:
    path = str(tmp_path / "old.sqlite3")
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, room TEXT NOT NULL,"
        " username TEXT NOT NULL, message TEXT NOT NULL, time TEXT NOT NULL);"
        "INSERT INTO messages (room, username, message, time)"
        " VALUES ('lobby', 'alice', 'from before', '2026-01-01T00:00:00.000Z');"
    )
    db.commit()
    db.close()
    history = History(path, 10, immediate_executor)
    history.open()
    [old] = history.recent("lobby")
    assert (old.message, old.user) == ("from before", None)
    history.append("lobby", "bob", "signed", "2026-01-01T00:00:01.000Z", "u2")
    history.close()
    again = History(path, 10, immediate_executor)
    again.open()
    assert [m.user for m in again.recent("lobby")] == [None, "u2"]
