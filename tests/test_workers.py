"""``--workers N``: a real twistd master, its worker processes, a real redis-server.

What a user of a multi-core machine sees: clients spread over the workers chat
in one room; a worker killed with SIGKILL is started again and the others'
clients never notice; SIGTERM closes every client with 1001 and exits 0;
``/metrics`` and ``/healthz`` speak for the whole service; every kind of
endpoint is shared; SIGHUP reloads every worker; systemd hears READY once all
workers listen.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from net import http_request
from redis_server import RedisServer
from test_chat_e2e import chat, join, send, until
from test_scale_out import eventually
from test_site_e2e import self_signed_certificate, wss_echo
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect, unix_connect

TOKEN = "workers-token"
LISTENING = re.compile(r"chatservice listening on .*port=(\d+)")
READY = re.compile(r"chatservice: (\d+) workers ready \(pids ([\d, ]+)\)")
OPENED = re.compile(r"\[worker (\d+)\] conn=\d+ open peer=tcp4:127\.0\.0\.1:(\d+)")
NEEDS_REDIS = "needs --redis (the workers share rooms through it)"
UNIX_OPENED = re.compile(r"\[worker (\d+)\] conn=\d+ open peer=unix")


class Workers:
    """``twistd chatservice --workers N --redis ...``: the master, its output kept."""

    def __init__(
        self, twistd: Path, cwd: Path, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.process = subprocess.Popen(
            [str(twistd), "-n", "--pidfile=", "chatservice", "--admin-token", TOKEN, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env=env,
        )
        self.lines: list[str] = []
        self.ports: list[int] = []
        self.pids: list[int] = []
        self._ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(30):
            self.process.kill()
            raise AssertionError("the workers did not start:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if match := LISTENING.search(line):
                self.ports.append(int(match.group(1)))
            if match := READY.search(line):
                self.pids = [int(p) for p in match.group(2).split(", ")]
                self._ready.set()
        self._ready.set()

    @property
    def port(self) -> int:
        return self.ports[0]

    def health(self) -> dict[str, Any]:
        status, _, body = http_request(self.port, "GET", "/healthz")
        answer: dict[str, Any] = json.loads(body)
        answer["http_status"] = status
        return answer

    def metrics(self) -> str:
        return http_request(self.port, "GET", "/metrics")[2].decode()

    def worker_of(self, ws: ClientConnection) -> int:
        """Which worker (slot) serves this client, from the master's log."""
        return self.worker_of_port(ws.socket.getsockname()[1])

    def worker_of_port(self, port: int) -> int:
        """Which worker (slot) serves the client on local port `port`."""
        for _ in range(200):
            for line in list(self.lines):
                match = OPENED.search(line)
                if match and int(match.group(2)) == port:
                    return int(match.group(1))
            time.sleep(0.02)
        raise AssertionError(f"no worker logged the connection from port {port}")

    def worker_pids(self) -> list[int]:
        """The master's live child processes."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(p) for p in children.read_text().split()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture
def workers(
    twistd: Path, tmp_path: Path, redis_server: RedisServer
) -> Iterator[Callable[..., Workers]]:
    started: list[Workers] = []

    def start(*args: str, env: dict[str, str] | None = None, count: int = 2) -> Workers:
        service = Workers(
            twistd,
            tmp_path,
            *("--workers", str(count), "--redis", redis_server.url),
            *("--database", ":memory:", "--instance-ttl", "2"),
            *args,
            env=env,
        )
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def one_on_each(service: Workers, count: int = 2) -> list[ClientConnection]:
    """Chat clients, one served by each worker (connecting until each has one)."""
    mine: dict[int, ClientConnection] = {}
    for _ in range(60):
        ws = chat(service.port)
        slot = service.worker_of(ws)
        if slot in mine:
            with ws:  # closed at once: another try
                pass
            eventually(lambda: service.health()["connections"] == len(mine))
        else:
            mine[slot] = ws
        if len(mine) == count:
            break
    assert sorted(mine) == list(range(1, count + 1)), "the connections did not spread"
    return [mine[slot] for slot in sorted(mine)]


def test_clients_on_different_workers_chat_in_one_room(workers: Callable[..., Workers]) -> None:
    service = workers("--port", "tcp:0:interface=127.0.0.1")
    assert len(set(service.pids)) == 2 and service.process.pid not in service.pids
    alice, bob = one_on_each(service)
    with alice, bob:
        join(alice, "alice", room="r")
        send(bob, "chat-join", username="bob", room="r")
        assert until(bob, "chat-users")["users"] == ["alice", "bob"]
        assert until(alice, "chat-join")["username"] == "bob"
        send(alice, "chat-message", message="from worker 1", room="r")
        first = until(bob, "chat-message")
        assert first["message"] == "from worker 1" and until(alice, "chat-message") == first
        send(bob, "chat-message", message="from worker 2", room="r")
        assert until(alice, "chat-message")["message"] == "from worker 2"
        # Names are the whole service's.
        with chat(service.port) as other:
            send(other, "chat-join", username="Alice", room="r")
            assert until(other, "chat-error")["code"] == "username-taken"
        # /healthz and /metrics speak for both workers, whichever answers.
        answered = set()
        for _ in range(40):
            health = service.health()
            assert health["http_status"] == 200 and health["status"] == "ok"
            assert health["workers"]["up"] == health["workers"]["configured"] == 2
            assert health["workers"]["pid"] in service.pids
            answered.add(health["workers"]["pid"])
            if len(answered) == 2:
                break
        assert health["connections"] == 2
        assert health["workers"]["connections"] == [1, 1]

        def counted() -> bool:
            text = service.metrics()
            return (
                'chatservice_connections{endpoint="chat"} 2.0' in text
                and 'chatservice_workers{state="up"} 2.0' in text
                # two joins and two messages, and the refused join of "Alice"
                and 'chatservice_messages_received_total{endpoint="chat"} 5.0' in text
            )

        eventually(counted, timeout=10)  # each worker copies its counts every second


def test_a_killed_worker_is_restarted_and_the_others_never_notice(
    workers: Callable[..., Workers],
) -> None:
    service = workers("--port", "tcp:0:interface=127.0.0.1")
    alice, bob = one_on_each(service)
    with alice, bob:
        join(alice, "alice", room="r")
        join(bob, "bob", room="r")
        until(alice, "chat-join")
        send(alice, "chat-message", message="before", room="r")
        until(bob, "chat-message")
        eventually(lambda: received(service) == 3)  # two joins, one message
        victim = service.pids[0]  # worker 1: alice's
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(ConnectionClosed):
            while True:
                alice.recv(timeout=10)
        # bob stays connected; alice leaves for him once the instance ttl passes.
        assert until(bob, "chat-leave", timeout=10)["username"] == "alice"
        send(bob, "chat-message", message="still here", room="r")
        assert until(bob, "chat-message")["message"] == "still here"
        eventually(
            lambda: any("worker 1 (pid" in line and "SIGKILL" in line for line in service.lines)
        )
        eventually(lambda: service.health()["workers"]["up"] == 2, timeout=20)
        pids = service.worker_pids()
        assert victim not in pids and len(pids) == 2
        # alice comes back (on whichever worker) and talks to bob again.
        with chat(service.port) as again:
            join(again, "alice", room="r")
            assert until(bob, "chat-join")["username"] == "alice"
            send(again, "chat-message", message="back", room="r")
            assert until(bob, "chat-message")["message"] == "back"
        # The dead worker's counts are kept: nothing goes back.
        eventually(lambda: received(service) == 6)
    assert not [line for line in service.lines if "Traceback" in line], "".join(service.lines)


def received(service: Workers) -> float:
    """chatservice_messages_received_total of /chat, from whichever worker answers."""
    text = service.metrics()
    match = re.search(r'chatservice_messages_received_total\{endpoint="chat"\} (\S+)', text)
    assert match is not None
    return float(match.group(1))


def test_sigterm_closes_every_client_with_1001_and_exits_0(
    workers: Callable[..., Workers],
) -> None:
    service = workers("--port", "tcp:0:interface=127.0.0.1")
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(ws) for ws in one_on_each(service)]
        service.process.send_signal(signal.SIGTERM)
        for ws in clients:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert service.process.wait(20) == 0
    for pid in service.pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_workers_stop_when_the_master_is_killed(workers: Callable[..., Workers]) -> None:
    service = workers("--port", "tcp:0:interface=127.0.0.1")
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(ws) for ws in one_on_each(service)]
        service.process.send_signal(signal.SIGKILL)
        service.process.wait(10)
        for ws in clients:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() and not _is_zombie(pid) for pid in service.pids):
        assert time.monotonic() < deadline, "workers outlived their master"
        time.sleep(0.05)


def test_connection_limits_are_the_whole_services(workers: Callable[..., Workers]) -> None:
    service = workers(
        "--port", "tcp:0:interface=127.0.0.1", "--max-connections", "3",
        "--max-connections-per-address", "100",
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        for ws in one_on_each(service):
            stack.enter_context(ws)
        stack.enter_context(chat(service.port))
        eventually(lambda: service.health()["connections"] == 3)
        with pytest.raises(InvalidStatus, match="503"):
            chat(service.port)
    # Per address, likewise.
    limited = workers("--port", "tcp:0:interface=127.0.0.1", "--max-connections-per-address", "2")
    with contextlib.ExitStack() as stack:
        for ws in one_on_each(limited):
            stack.enter_context(ws)
        with pytest.raises(InvalidStatus, match="503"):
            chat(limited.port)


def test_every_kind_of_endpoint_is_shared(workers: Callable[..., Workers], tmp_path: Path) -> None:
    key, cert = self_signed_certificate(tmp_path)
    path = tmp_path / "chat.sock"
    service = workers(
        "--port", "tcp:0:interface=127.0.0.1",
        "--port", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        "--port", f"unix:{path}:mode=660",
    )  # fmt: skip
    tls = ssl.create_default_context(cafile=str(cert))
    tls_workers: set[int] = set()
    unix_workers: set[int] = set()
    wss = f"wss://127.0.0.1:{service.ports[1]}/echo"
    for _ in range(40):
        replies, client_port = wss_echo(wss, ["over TLS"], tls)
        assert replies == ["over TLS"]
        tls_workers.add(service.worker_of_port(client_port))
        opened = len(UNIX_OPENED.findall("".join(service.lines)))
        with unix_connect(str(path), "ws://localhost/echo", open_timeout=10) as ws:
            ws.send("over a Unix socket")
            assert ws.recv(timeout=10) == "over a Unix socket"
        eventually(lambda: len(UNIX_OPENED.findall("".join(service.lines))) > opened)  # noqa: B023
        unix_workers = {int(slot) for slot in UNIX_OPENED.findall("".join(service.lines))}
        if len(tls_workers) == len(unix_workers) == 2:
            break
    assert tls_workers == unix_workers == {1, 2}
    assert oct(path.stat().st_mode & 0o777) == "0o660"
    # A worker restarting does not take the socket file away.
    os.kill(service.pids[1], signal.SIGTERM)
    eventually(lambda: service.health()["workers"]["up"] == 2, timeout=20)
    for _ in range(5):
        with unix_connect(str(path), "ws://localhost/echo", open_timeout=10) as ws:
            ws.send("still there")
            assert ws.recv(timeout=10) == "still there"
    service.stop()
    assert not path.exists()


def test_sighup_reloads_every_worker(workers: Callable[..., Workers], tmp_path: Path) -> None:
    config = tmp_path / "chatservice.toml"
    config.write_text('motd = "before"\n')
    service = workers("--port", "tcp:0:interface=127.0.0.1", "--config", str(config))
    for ws in one_on_each(service):
        with ws:
            assert until(ws, "chat-welcome")["motd"] == "before"
    config.write_text('motd = "after"\n')
    service.process.send_signal(signal.SIGHUP)
    eventually(lambda: sum("SIGHUP: reloaded motd" in line for line in service.lines) == 2)
    for ws in one_on_each(service):
        with ws:
            assert until(ws, "chat-welcome")["motd"] == "after"


def test_systemd_hears_ready_once_every_worker_listens(
    workers: Callable[..., Workers], tmp_path: Path
) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(30)
        env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
        service = workers("--port", "tcp:0:interface=127.0.0.1", env=env)
        ready = sock.recv(1024).decode()
        assert ready.startswith("READY=1") and "2 workers" in ready
        # By then both workers said they listen (the log line comes first).
        assert any(READY.search(line) for line in service.lines)
        assert sock.recv(1024) == b"WATCHDOG=1"  # every 0.5 s while both are alive
        # A worker that stops answering (SIGSTOP) stops the watchdog pings.
        os.kill(service.pids[0], signal.SIGSTOP)
        try:
            time.sleep(3)
            sock.settimeout(0.1)
            try:
                while True:
                    sock.recv(1024)  # what was sent before it was noticed
            except TimeoutError:
                pass
            sock.settimeout(2.5)
            with pytest.raises(TimeoutError):
                sock.recv(1024)
        finally:
            os.kill(service.pids[0], signal.SIGCONT)
        sock.settimeout(5)
        assert sock.recv(1024) == b"WATCHDOG=1"
        service.process.send_signal(signal.SIGTERM)
        states = []
        while b"STOPPING=1" not in states:
            states.append(sock.recv(1024))
        assert service.process.wait(20) == 0


def test_socket_activation_with_workers(
    redis_server: RedisServer, tmp_path: Path, twistd: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    activator = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=chatservice",
         str(twistd), "-n", "--pidfile=", "chatservice", "--database", ":memory:",
         "--workers", "2", "--redis", redis_server.url, "--port", "systemd:domain=INET:index=0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []

    def drain() -> None:
        assert activator.stdout is not None
        for line in activator.stdout:
            lines.append(line)

    threading.Thread(target=drain, daemon=True).start()
    try:
        eventually(lambda: any(f":{port}" in line for line in lines))  # "Listening on ..."
        # The first connection starts chatservice, which hands the socket to its workers.
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=30) as ws:
            ws.send("activated")
            assert ws.recv(timeout=10) == "activated"
        eventually(lambda: any(READY.search(line) for line in lines), timeout=30)
        served = set()
        # Both workers accept on the one socket: which one takes a connection is
        # the kernel's choice, so ask for up to 4 s (on a busy machine one worker
        # may win every race for a while).
        for _ in range(200):
            _, _, body = http_request(port, "GET", "/healthz")
            served.add(json.loads(body)["workers"]["this"])
            if served == {1, 2}:
                break
            time.sleep(0.02)
        assert served == {1, 2}
    finally:
        activator.send_signal(signal.SIGTERM)
        try:
            activator.wait(20)
        except subprocess.TimeoutExpired:
            activator.kill()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "2"], "--workers 2: needs --redis (the workers share rooms through it)"),
        (
            ["--workers", "auto"],
            "--workers auto: needs --redis (the workers share rooms through it)",
        ),
        (["--workers", "0"], "--workers '0': must be at least 1"),
        (["--workers", "many"], "--workers 'many': must be a whole number"),
    ],
)
def test_bad_workers_options_are_one_line(
    twistd: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = subprocess.run(
        [str(twistd), "-n", "--pidfile=", "chatservice", *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"twistd chatservice: error: {message} (see twistd chatservice --help)"
    ]
