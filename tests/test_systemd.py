"""systemd: the units, Type=notify, and socket activation, with the real tools."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.sync.client import connect

from chatservice.systemd import Notifier

UNITS = Path(__file__).resolve().parent.parent / "etc" / "systemd"
TWISTD = Path(sys.executable).with_name("twistd")


@pytest.fixture
def notify_socket(tmp_path: Path):  # type: ignore[no-untyped-def]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(20)
    yield sock, str(path)
    sock.close()


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    service = (UNITS / "chatservice.service").read_text()
    assert "/opt/chatservice/bin/twistd" in service
    # verify checks that ExecStart exists: point it at this environment's twistd.
    (tmp_path / "chatservice.service").write_text(
        service.replace("/opt/chatservice/bin/twistd", str(TWISTD))
    )
    shutil.copy(UNITS / "chatservice.socket", tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "./chatservice.socket", "./chatservice.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""  # unknown keys are only warned about
    for hardening in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes"):
        assert hardening in service
    assert "Type=notify" in service and "StateDirectory=chatservice" in service


def test_notifier_does_nothing_without_systemd() -> None:
    assert Notifier({}).notify("READY=1") is False
    assert Notifier({}).watchdog_interval is None


def test_ready_watchdog_and_stopping_reach_the_notify_socket(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    server = subprocess.Popen(
        [str(TWISTD), "-n", "--pidfile=", "chatservice", "--database", ":memory:",
         "--port", "tcp:0:interface=127.0.0.1"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        ready = sock.recv(1024).decode()
        assert ready.startswith("READY=1")
        assert sock.recv(1024) == b"WATCHDOG=1"  # every 0.2 s (half of WATCHDOG_USEC)
        server.send_signal(signal.SIGTERM)
        states = []
        while b"STOPPING=1" not in states:
            states.append(sock.recv(1024))
        assert server.wait(15) == 0
    finally:
        if server.poll() is None:
            server.kill()


def test_socket_activation_serves_a_websocket_client(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    activator = subprocess.Popen(
        # --fdname: systemd always names its sockets (LISTEN_FDNAMES); Twisted
        # takes none without a name, and systemd-socket-activate names none itself.
        ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=chatservice",
         str(TWISTD), "-n", "--pidfile=", "chatservice", "--database", ":memory:",
         "--port", "systemd:domain=INET:index=0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert activator.stdout is not None
        line = activator.stdout.readline()
        assert re.search(rf"Listening on .*:{port}", line), line
        # The first connection starts chatservice, which takes the socket over.
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=30) as ws:
            ws.send("activated")
            assert ws.recv(timeout=10) == "activated"
    finally:
        activator.send_signal(signal.SIGTERM)
        try:
            activator.wait(15)
        except subprocess.TimeoutExpired:
            activator.kill()
