"""The whole service over real sockets on 127.0.0.1, with independent clients.

HTTP goes through `http.client`, WebSocket through the `websockets` package,
each in a thread while the reactor serves (`deferToThread`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from memory import client_frame, server_frames
from net import http_get, port_of, raw_websocket
from twisted.internet.threads import deferToThread
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from chatservice.config import MiB
from chatservice.service import ChatService

Serve = Callable[..., ChatService]


@pytest_twisted.ensureDeferred
async def test_index_is_served_as_html(serve: Serve) -> None:
    port = port_of(serve())
    status, headers, body = await deferToThread(http_get, port, "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b"app.js" in body  # the chat client
    status, headers, body = await deferToThread(http_get, port, "/echo.html")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"echo.js" in body  # the echo tester


@pytest.mark.parametrize(
    "path",
    [
        "/favicon.ico",
        "/../etc/passwd",
        "/../../../../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/%2e%2e%2fetc%2fpasswd",
        "/static/..%2f..%2fetc%2fpasswd",
        "/%2E%2E/",
        "/%ff%fe",  # not UTF-8
    ],
)
@pytest_twisted.ensureDeferred
async def test_missing_files_and_escapes_are_404(serve: Serve, path: str) -> None:
    port = port_of(serve())
    status, _, body = await deferToThread(http_get, port, path)
    assert status in (400, 404)
    assert b"root:" not in body


@pytest_twisted.ensureDeferred
async def test_static_dir_no_listings_no_symlinks_out(serve: Serve, tmp_path: Path) -> None:
    root = tmp_path / "site"
    (root / "docs").mkdir(parents=True)
    (root / "index.html").write_text("<h1>mine</h1>")
    (root / "docs" / "a.txt").write_text("nested file")
    (root / "empty").mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    (root / "leak.txt").symlink_to(secret)
    (root / "leakdir").symlink_to(tmp_path)
    (root / "inside.txt").symlink_to(root / "docs" / "a.txt")

    port = port_of(serve(static_dir=root))

    async def get(path: str) -> tuple[int, bytes]:
        status, _, body = await deferToThread(http_get, port, path)
        return status, body

    assert await get("/") == (200, b"<h1>mine</h1>")
    assert await get("/docs/a.txt") == (200, b"nested file")
    assert await get("/inside.txt") == (200, b"nested file")
    for path in ("/empty/", "/docs/", "/leak.txt", "/leakdir/secret.txt", "/leakdir/"):
        status, body = await get(path)
        assert status == 404, path
        assert b"do not serve" not in body


@pytest_twisted.ensureDeferred
async def test_plain_http_get_of_echo_gets_a_helpful_426(serve: Serve) -> None:
    port = port_of(serve())
    status, headers, body = await deferToThread(http_get, port, "/echo")
    assert status == 426
    assert headers["upgrade"].lower() == "websocket"
    assert b"WebSocket endpoint" in body


def echo_round_trip(
    url: str, messages: list[str | bytes], **options: Any
) -> tuple[str | None, list[str | bytes], str | None]:
    """Send each message and read its echo with the `websockets` client."""
    with connect(url, max_size=None, open_timeout=10, close_timeout=10, **options) as ws:
        replies = []
        for message in messages:
            ws.send(message)
            replies.append(ws.recv(timeout=30))
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        return ws.subprotocol, replies, extensions


def wss_echo(url: str, messages: list[str], context: ssl.SSLContext) -> tuple[list[str], int]:
    """Send each message over ``wss://`` and read its echo; returns the replies and
    the client's port.

    With the `websockets` asyncio client: the threaded one reads in a thread of its
    own from the moment it connects, while its handshake writes the request from
    another, on one SSL socket, which OpenSSL does not allow; with TLS 1.3 the
    server's session tickets arrive then, and about one connection in a few hundred
    never sent its request (the server saw nothing after the TLS handshake;
    python-websockets/websockets#1387).
    """

    async def run() -> tuple[list[str], int]:
        async with connect_async(url, ssl=context, open_timeout=10, close_timeout=10) as ws:
            replies = []
            for message in messages:
                await ws.send(message)
                replies.append(str(await asyncio.wait_for(ws.recv(), 30)))
            return replies, ws.transport.get_extra_info("sockname")[1]

    return asyncio.run(run())


@pytest_twisted.ensureDeferred
async def test_websockets_client_gets_plain_text_and_hello_back(serve: Serve) -> None:
    url = f"ws://127.0.0.1:{port_of(serve())}/echo"
    subprotocol, replies, extensions = await deferToThread(
        echo_round_trip, url, ["hello"], subprotocols=["plain-text"]
    )
    assert subprotocol == "plain-text"
    assert replies == ["hello"]
    # websockets offers permessage-deflate by default; it is accepted.
    assert extensions is not None and extensions.startswith("permessage-deflate")


@pytest_twisted.ensureDeferred
async def test_large_messages_come_back_byte_exact(serve: Serve) -> None:
    url = f"ws://127.0.0.1:{port_of(serve())}/echo"
    binary = os.urandom(MiB)
    text = "".join(chr(0x20 + i % 0x5F) for i in range(4096)) * (16 * MiB // 4096)
    assert len(text.encode()) == 16 * MiB
    for compression in ("deflate", None):
        _, replies, _ = await deferToThread(
            echo_round_trip, url, [binary, text], compression=compression
        )
        assert isinstance(replies[0], bytes) and replies[0] == binary
        assert isinstance(replies[1], str) and replies[1] == text


def send_and_expect_close(url: str, message: str | bytes, **options: Any) -> int | None:
    with connect(url, max_size=None, **options) as ws:
        ws.send(message)
        try:
            ws.recv(timeout=30)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
    raise AssertionError("the server echoed a message over the limit")


@pytest_twisted.ensureDeferred
async def test_over_16_mib_closes_1009_also_when_compressed(serve: Serve) -> None:
    url = f"ws://127.0.0.1:{port_of(serve())}/echo"
    too_big = b"\0" * (16 * MiB + 1)
    assert await deferToThread(send_and_expect_close, url, too_big, compression=None) == 1009
    # With permessage-deflate this is a frame of a few KiB that inflates past the limit.
    assert await deferToThread(send_and_expect_close, url, too_big, compression="deflate") == 1009


def upload_slowly_after_refusal(port: int, size: int, pieces: int, pause: float) -> bytes:
    """Send a message of `size` bytes in `pieces`, `pause` s apart, then read.

    Returns what the server sent until it closed: a client like `websockets`
    reads it only once it has sent the whole message.
    """
    sock = raw_websocket(port, "/echo")
    frame = client_frame(b"x" * size, opcode=0x2)
    step = -(-len(frame) // pieces)
    for start in range(0, len(frame), step):
        sock.sendall(frame[start : start + step])
        time.sleep(pause)
    received = b""
    while not server_frames(received)[0]:
        received += sock.recv(4096)
    sock.close()
    return received


@pytest_twisted.ensureDeferred
async def test_a_client_still_sending_a_refused_message_gets_1009_not_a_reset(
    serve: Serve,
) -> None:
    # The server refuses the message at its header, but the client answers the
    # close frame only after it has sent the rest: 2 s here, longer than the
    # 1 s closing handshake timeout.  Dropping the connection with its data
    # unread would reset it, and the client would never read the 1009.
    port = port_of(serve(echo_max_message_size=1024))
    received = await deferToThread(upload_slowly_after_refusal, port, 64 * 1024, 5, 0.4)
    frames, rest = server_frames(received)
    assert rest == b""
    assert [(first, payload[:2]) for first, payload in frames] == [
        (0x88, (1009).to_bytes(2, "big"))
    ]


def offer_only(url: str, subprotocols: list[str]) -> int:
    try:
        with connect(url, subprotocols=subprotocols):
            pass
    except InvalidStatus as refused:
        return int(refused.response.status_code)
    raise AssertionError("the handshake succeeded")


@pytest_twisted.ensureDeferred
async def test_offering_only_unknown_subprotocols_gets_400(serve: Serve) -> None:
    url = f"ws://127.0.0.1:{port_of(serve())}/echo"
    assert await deferToThread(offer_only, url, ["foo"]) == 400


@pytest_twisted.ensureDeferred
async def test_every_port_serves_the_same_site(serve: Serve) -> None:
    service = serve(ports=("tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"))
    for index in (0, 1):
        url = f"ws://127.0.0.1:{port_of(service, index)}/echo"
        _, replies, _ = await deferToThread(echo_round_trip, url, [f"port {index}"])
        assert replies == [f"port {index}"]


def test_tcp_ports_queue_a_reconnect_storm_and_a_backlog_given_is_kept(serve: Serve) -> None:
    service = serve(ports=("tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1:backlog=7"))
    backlogs = []
    for index in (0, 1):
        # ss shows a listening socket's backlog as its Send-Q.
        out = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port_of(service, index)}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        backlogs.append(int(out[2]))
    assert backlogs == [1024, 7]


def test_a_burst_of_connections_is_accepted_a_few_dozen_per_reactor_iteration(
    serve: Serve,
) -> None:
    from twisted.internet import reactor

    service = serve()
    port = service.listening[0]
    clients = [socket.create_connection(("127.0.0.1", port_of(service))) for _ in range(100)]
    try:
        time.sleep(0.2)  # the kernel has completed every handshake: 100 wait in the backlog
        before = len(reactor.getReaders())
        port.doRead()  # type: ignore[attr-defined]  # what one reactor iteration does
        first = len(reactor.getReaders()) - before
        port.doRead()  # type: ignore[attr-defined]
        second = len(reactor.getReaders()) - before - first
    finally:
        for client in clients:
            client.close()
    # Twisted alone takes 100 at once and raises its limit to 120: room messages
    # would wait behind all their handshakes.
    assert (first, second) == (32, 32)


@pytest_twisted.ensureDeferred
async def test_unix_socket_endpoint_serves(serve: Serve, tmp_path: Path) -> None:
    from websockets.sync.client import unix_connect

    path = tmp_path / "chat.sock"
    serve(ports=(f"unix:{path}",))

    def over_unix() -> str | bytes:
        with unix_connect(str(path), uri="ws://localhost/echo") as ws:
            ws.send("via unix")
            return ws.recv(timeout=10)

    assert await deferToThread(over_unix) == "via unix"


def events_text(events: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_namespace") == namespace]


@pytest_twisted.ensureDeferred
async def test_log_has_open_and_close_events_without_message_text(
    serve: Serve, log_events: list[dict[str, Any]]
) -> None:
    url = f"ws://127.0.0.1:{port_of(serve())}/echo"
    await deferToThread(echo_round_trip, url, ["secret words"], subprotocols=["plain-text"])
    await deferToThread(offer_only, url, ["foo"])

    ours = events_text(log_events, "chatservice.protocol")
    opened = [e for e in ours if "open" in e["log_format"]]
    closed = [e for e in ours if "closed" in e["log_format"]]
    denied = [e for e in ours if "denied" in e["log_format"]]
    assert len(opened) == 1 and len(closed) == 1 and len(denied) == 1
    assert opened[0]["path"] == "/echo"
    assert opened[0]["subprotocol"] == "plain-text"
    assert opened[0]["extensions"] == ["permessage-deflate"]
    assert opened[0]["peer"].startswith("tcp4:127.0.0.1:")
    assert closed[0]["conn_id"] == opened[0]["conn_id"]
    assert closed[0]["code"] == 1000 and closed[0]["duration"] >= 0
    assert denied[0]["code"] == 400
    assert not any("secret words" in repr(e) for e in log_events)


@pytest_twisted.ensureDeferred
async def test_debug_level_logs_message_contents(
    serve: Serve, log_events: list[dict[str, Any]]
) -> None:
    url = f"ws://127.0.0.1:{port_of(serve(log_level='debug'))}/echo"
    await deferToThread(echo_round_trip, url, ["visible at debug"])
    assert any(
        e.get("payload") == b"visible at debug"
        for e in events_text(log_events, "chatservice.protocol")
    )


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A key and a certificate for 127.0.0.1, valid for a day."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest_twisted.ensureDeferred
async def test_tls_endpoint_serves_wss_next_to_plain_tcp(serve: Serve, tmp_path: Path) -> None:
    key, cert = self_signed_certificate(tmp_path)
    service = serve(
        ports=(
            "tcp:0:interface=127.0.0.1",
            f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        )
    )
    context = ssl.create_default_context(cafile=str(cert))
    url = f"wss://127.0.0.1:{port_of(service, 1)}/echo"
    replies, _ = await deferToThread(wss_echo, url, ["over TLS"], context)
    assert replies == ["over TLS"]
    _, replies, _ = await deferToThread(
        echo_round_trip, f"ws://127.0.0.1:{port_of(service, 0)}/echo", ["plain"]
    )
    assert replies == ["plain"]


def flood_without_reading(port: int, total: int) -> int:
    """Send binary messages to /echo without ever reading; return bytes sent."""
    sock = raw_websocket(port, "/echo")
    frame = client_frame(bytes(65536), opcode=0x2)
    sock.settimeout(3)
    sent = 0
    try:
        while sent < total:
            sock.sendall(frame)
            sent += len(frame)
    except TimeoutError:
        pass
    finally:
        sock.close()
    return sent


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_its_echoes_is_slowed_down_not_buffered(
    serve: Serve,
) -> None:
    port = port_of(serve())
    # Without flow control the server would read all of it and hold the echoes.
    sent = await deferToThread(flood_without_reading, port, 256 * MiB)
    assert sent < 128 * MiB
