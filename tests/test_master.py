"""The master's supervision of its workers, without processes: a Clock for time,
a reactor that records the processes it is asked to start.

(tests/test_workers.py runs the real thing; the timings here would take
minutes with real processes.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from chatservice.config import Config
from chatservice.workers.master import HUNG_AFTER, MAX_BACKOFF, STABLE_AFTER, Master, WorkerProtocol
from chatservice.workers.scoreboard import UP, Scoreboard
from chatservice.workers.worker import STATUS_FD, WORKER_ENV, WorkerLink


class FakeProcess:
    def __init__(self, pid: int, protocol: WorkerProtocol, env: dict[str, str]) -> None:
        self.pid = pid
        self.protocol = protocol
        self.env = env
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def say(self, line: str) -> None:
        self.protocol.childDataReceived(STATUS_FD, line.encode() + b"\n")

    def end(self, reason: Exception) -> None:
        self.protocol.processEnded(Failure(reason))


class Reactor(Clock):
    """A Clock that records spawnProcess."""

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], **kw: Any) -> Any:
        process = FakeProcess(1000 + len(self.processes), protocol, kw["env"])
        self.processes.append(process)
        return process


class Notifier:
    watchdog_interval: float | None = 5.0

    def __init__(self) -> None:
        self.sent: list[str] = []

    def notify(self, state: str) -> bool:
        self.sent.append(state)
        return True


@pytest.fixture
def master(tmp_path: Path) -> Master:
    config = Config(workers=2, redis="redis://127.0.0.1:1", admin_token="t")
    master = Master(config, ["--workers", "2"], reactor=Reactor())
    master.notifier = Notifier()  # type: ignore[assignment]
    master._dir = str(tmp_path)
    master.board = Scoreboard.create(tmp_path / "board", 2)
    for worker in master.workers:
        worker.start()
    return master


def processes(master: Master) -> list[FakeProcess]:
    return master.reactor.processes  # type: ignore[no-any-return]


def test_workers_are_told_their_slot_and_ready_is_sent_once_all_listen(master: Master) -> None:
    one, two = processes(master)
    links = [WorkerLink.from_environ(p.env) for p in (one, two)]
    assert [link.slot for link in links if link] == [1, 2]
    assert "NOTIFY_SOCKET" not in one.env and one.env["CHATSERVICE_ADMIN_TOKEN"] == "t"
    assert WORKER_ENV in two.env
    one.say("ready")
    assert master.notifier.sent == []  # type: ignore[attr-defined]
    assert master.board is not None and master.board.header(UP) == 1
    two.say("ready")
    assert master.notifier.sent[0].startswith("READY=1")  # type: ignore[attr-defined]
    assert master.board.header(UP) == 2


def test_a_dead_worker_is_started_again_at_once_then_with_growing_backoff(
    master: Master,
) -> None:
    clock: Reactor = master.reactor
    clock.advance(STABLE_AFTER)  # it ran long enough: at once
    processes(master)[0].end(ProcessTerminated(signal=9))
    clock.advance(0)
    assert len(processes(master)) == 3
    delays = []
    for _ in range(8):
        before = len(processes(master))
        processes(master)[-1].end(ProcessTerminated(exitCode=1))  # dies young, again and again
        waited = 0.0
        clock.advance(0)
        while len(processes(master)) == before:
            clock.advance(0.5)
            waited += 0.5
        delays.append(waited)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]
    # Once it runs long enough, the next death restarts it at once again.
    clock.advance(STABLE_AFTER)
    before = len(processes(master))
    processes(master)[-1].end(ProcessDone(0))
    clock.advance(0)
    assert len(processes(master)) == before + 1


def test_a_silent_worker_is_killed_and_the_watchdog_waits_for_every_worker(
    master: Master,
) -> None:
    clock: Reactor = master.reactor
    master._checks = None
    one, two = processes(master)
    one.say("ready")
    two.say("ready")
    from twisted.internet.task import LoopingCall

    checks = LoopingCall(master._check)
    checks.clock = clock
    checks.start(1.0, now=False)
    notifier: Notifier = master.notifier  # type: ignore[assignment]
    for _ in range(10):  # both send heartbeats: pings at once, then every 5 s
        clock.advance(1)
        one.say("alive")
        two.say("alive")
    assert notifier.sent.count("WATCHDOG=1") == 3
    for _ in range(5):  # two goes silent; its last heartbeat is within 5 s at the next ping
        clock.advance(1)
        one.say("alive")
    pinged = notifier.sent.count("WATCHDOG=1")
    for _ in range(15):  # then no more pings
        clock.advance(1)
        one.say("alive")
    assert notifier.sent.count("WATCHDOG=1") == pinged
    for _ in range(int(HUNG_AFTER)):
        clock.advance(1)
        one.say("alive")
    assert two.signals == ["KILL"] and one.signals == []
    checks.stop()


def test_stopping_asks_every_worker_and_kills_the_late(master: Master) -> None:
    clock: Reactor = master.reactor
    one, two = processes(master)
    for port in list(master):  # never started here
        port.disownServiceParent()
    stopped = master.stopService()
    assert one.signals == two.signals == ["TERM"]
    one.end(ProcessDone(0))
    assert not stopped.called
    clock.advance(master.config.shutdown_timeout + 5)
    assert two.signals == ["TERM", "KILL"]
    two.end(ProcessTerminated(signal=9))
    assert stopped.called
    assert len(processes(master)) == 2  # nothing started again while stopping
