"""What a client can make the server wait for, and whose address it believes.

Real sockets on 127.0.0.1: a client trickling its request is cut off at the
deadline whatever it sends; too many or too large headers get 431 at once; an
``X-Forwarded-For`` counts only from a trusted proxy.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from memory import upgrade_request
from net import port_of
from twisted.internet.threads import deferToThread
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from chatservice.service import ChatService
from chatservice.web.policy import TrustedProxies

Serve = Callable[..., ChatService]


def trickle(port: int, lines: list[bytes], every: float) -> tuple[float, bytes]:
    """Send `lines` one by one, `every` seconds apart, reading what comes back.

    Returns:
        Seconds until the server closed the connection, and what it sent.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(0.05)
    started = time.monotonic()
    got = b""
    try:
        for line in lines:
            try:
                sock.sendall(line)
            except OSError:
                break
            deadline = time.monotonic() + every
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    return time.monotonic() - started, got
                got += chunk
        return time.monotonic() - started, got
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_a_client_trickling_its_handshake_is_cut_off_at_the_deadline(serve: Serve) -> None:
    port = port_of(serve(database=":memory:", open_handshake_timeout=2.0))
    request = upgrade_request("/chat", ["chat.v1.json"]).split(b"\r\n")
    # One header line every 0.5 s: never idle, never done (20 lines, 10 s).
    lines = [request[0] + b"\r\n"] + [f"X-Slow-{i}: a\r\n".encode() for i in range(20)]
    took, got = await deferToThread(trickle, port, lines, 0.5)
    assert 2.0 <= took < 3.5
    assert got.startswith(b"HTTP/1.1 408 ")
    # A plain request that arrives in time is served, and the kept-alive
    # connection's next request has the deadline again.
    lines = [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /healthz HTTP/1.1\r\n"]
    lines += [f"X-Slow-{i}: a\r\n".encode() for i in range(20)]
    took, got = await deferToThread(trickle, port, lines, 0.5)
    assert got.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in got
    assert 2.5 <= took < 4.5


def send_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


@pytest.mark.parametrize(
    "headers",
    [
        [f"X-Many-{i}: a" for i in range(101)],
        ["X-Big: " + "a" * 20000],
        [f"X-Large-{i}: " + "a" * 1000 for i in range(17)],
    ],
    ids=["101 headers", "one 20 KB header", "17 KB of headers"],
)
@pytest_twisted.ensureDeferred
async def test_too_many_or_too_large_headers_get_431(serve: Serve, headers: list[str]) -> None:
    port = port_of(serve(database=":memory:"))
    request = "GET /chat HTTP/1.1\r\nHost: x\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    got = await deferToThread(send_request, port, request.encode())
    assert got.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    # Within the limits: served.
    fine = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    fine += "".join(f"X-Ok-{i}: a\r\n" for i in range(90)) + "\r\n"
    assert (await deferToThread(send_request, port, fine.encode())).startswith(b"HTTP/1.1 200 ")


def open_chat(port: int, forwarded_for: str) -> Any:
    return connect(
        f"ws://127.0.0.1:{port}/chat",
        subprotocols=["chat.v1.json"],
        additional_headers={"X-Forwarded-For": forwarded_for},
        open_timeout=5,
    )


def connections_from(port: int, addresses: list[str]) -> list[str]:
    """Open one connection per forwarded address, in order: "open" or the HTTP status."""
    results = []
    with contextlib.ExitStack() as opened:
        for address in addresses:
            try:
                opened.enter_context(open_chat(port, address))
                results.append("open")
            except InvalidStatus as e:
                results.append(str(e.response.status_code))
    return results


@pytest_twisted.ensureDeferred
async def test_x_forwarded_for_counts_only_from_a_trusted_proxy(
    serve: Serve, log_events: list[dict[str, Any]]
) -> None:
    trusting = port_of(
        serve(database=":memory:", max_connections_per_address=1, trusted_proxies=("127.0.0.1",))
    )
    results = await deferToThread(
        connections_from, trusting, ["203.0.113.7", "198.51.100.9", "203.0.113.7"]
    )
    # Two clients behind the proxy, each with its own limit; the third is the first again.
    assert results == ["open", "open", "503"]
    opened = [e for e in log_events if "open peer" in e.get("log_format", "")]
    assert any(str(e["peer"]).startswith("203.0.113.7 via tcp4:127.0.0.1:") for e in opened)

    untrusting = port_of(serve(database=":memory:", max_connections_per_address=1))
    results = await deferToThread(connections_from, untrusting, ["203.0.113.7", "198.51.100.9"])
    # A forged header from anyone else changes nothing: both are 127.0.0.1.
    assert results == ["open", "503"]


def test_whose_address_is_believed() -> None:
    proxies = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
    assert proxies.client("127.0.0.1", "203.0.113.7", None) == "203.0.113.7"
    # The nearest address that is not a trusted proxy, from the right.
    assert proxies.client("10.0.0.2", "198.51.100.1, 203.0.113.7, 10.1.2.3", None) == "203.0.113.7"
    assert proxies.client("192.0.2.1", "203.0.113.7", None) == "192.0.2.1"  # not trusted
    forwarded = 'for=192.0.2.60;proto=http;by=10.0.0.1, for="[2001:db8::17]:4711"'
    assert proxies.client("127.0.0.1", None, forwarded) == "2001:db8::17"
    assert proxies.client("127.0.0.1", "not an address", None) == "127.0.0.1"
    assert proxies.client("127.0.0.1", None, None) == "127.0.0.1"
    assert not TrustedProxies() and TrustedProxies().client("127.0.0.1", "1.2.3.4", None)
    with pytest.raises(ValueError):
        TrustedProxies(["not a network"])
