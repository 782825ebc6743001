"""Real-socket helpers for end-to-end tests on 127.0.0.1."""

from __future__ import annotations

import http.client
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from memory import upgrade_request
from twisted.internet import reactor
from twisted.internet.task import deferLater

from chatservice.service import ChatService


async def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Let the reactor run until `condition()` holds; fail after `timeout` seconds."""
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError("timed out")
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


def port_of(service: ChatService, index: int = 0) -> int:
    """The port the service's `index`-th endpoint listens on."""
    return int(service.listening[index].getHost().port)


def http_get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A blocking GET of `path` exactly as given (no normalisation of ``..``).

    Run it in a thread (`deferToThread`) while the reactor serves.
    """
    return http_request(port, "GET", path, headers)


def http_request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A blocking HTTP request; the path is sent exactly as given."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def raw_websocket(port: int, path: str, protocols: list[str] | None = None) -> socket.socket:
    """A WebSocket opened by hand with a tiny receive buffer: for clients that never read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(upgrade_request(path, protocols))
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def start_twistd(twistd: Path, *args: str, cwd: Path) -> tuple[subprocess.Popen[str], int]:
    """Start ``twistd -n chatservice ARGS`` on a free loopback port.

    Returns:
        The process (its output still readable) and the port it listens on.
    """
    server = subprocess.Popen(
        [
            str(twistd),
            "-n",
            "--pidfile=",
            "chatservice",
            "--port",
            "tcp:0:interface=127.0.0.1",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
    )
    assert server.stdout is not None
    for line in server.stdout:
        match = re.search(r"chatservice listening on .*port=(\d+)", line)
        if match:
            return server, int(match.group(1))
    server.wait(10)
    raise AssertionError(f"twistd exited with {server.returncode} before listening")
