"""Every Autobahn and Twisted internal chatservice relies on is still there.

One test per entry of `chatservice.internals.INTERNALS`, named after it: after
an upgrade, a failure here names the internal that moved, and its entry says
what it was for and where it is used.  Each check uses the internal as
chatservice does, on real objects of the installed versions (a connection made
by Autobahn's own factory, a Twisted transport on a socket pair, a port on a
real socket), and through Autobahn and Twisted only, not chatservice's
protocols: it names what moved even when chatservice itself no longer works.
"""

from __future__ import annotations

import base64
import inspect
import os
import shutil
import signal
import socket
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import autobahn.websocket.protocol as autobahn_protocol
import pytest
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageDeflate,
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, tcp, unix
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.test.iosim import FakeTransport
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from chatservice import internals

SERVER = IPv4Address("TCP", "127.0.0.1", 8080)
CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)


@dataclass
class Env:
    """What a check may use: Autobahn's timers run on `clock`."""

    clock: Clock
    monkeypatch: pytest.MonkeyPatch


Check = Callable[[Env, str], None]
CHECKS: dict[str, Check] = {}


def check(*names: str) -> Callable[[Check], Check]:
    """Register a check of the internals `names` (it gets the name it checks)."""

    def register(function: Check) -> Check:
        for name in names:
            assert name not in CHECKS, name
            CHECKS[name] = function
        return function

    return register


@pytest.mark.parametrize("name", sorted(set(internals.INTERNALS) | set(CHECKS)))
def test_internal_still_there(name: str, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    assert name in internals.INTERNALS, f"{name} is checked but not named in internals.py"
    assert name in CHECKS, f"{name} is named in internals.py but not checked here"
    entry = internals.INTERNALS[name]
    try:
        CHECKS[name](Env(clock, monkeypatch), name)
    except Exception as error:
        raise AssertionError(
            f"{name} no longer works as chatservice uses it ({entry.use}; checked with "
            f"{entry.checked}; see chatservice/internals.py): {error}"
        ) from error


def test_a_moved_internal_read_at_import_fails_where_it_is_used() -> None:
    # What chatservice's modules read at import time is a stand-in when it has
    # gone: they still import (and this module runs), and the stand-in fails loudly.
    gone = internals.autobahn_protocol_global("gone_in_an_upgrade")
    named = r"autobahn\.websocket\.protocol\.gone_in_an_upgrade is gone"
    with pytest.raises(internals.MovedInternal, match=named):
        gone(b"mask", 4)  # as masking calls Autobahn's masker
    with pytest.raises(internals.MovedInternal, match=named):
        assert WebSocketProtocol.STATE_OPEN != gone  # as `ChatProtocol.deliver` compares


def present(owner: object, attribute: str) -> Any:
    """``owner.attribute``, failing with a message that names both."""
    assert hasattr(owner, attribute), f"{owner!r} has no attribute {attribute!r}"
    return getattr(owner, attribute)


# -- A connection made by Autobahn's own factory, on a StringTransport ----------------


class Recorder(WebSocketServerProtocol):
    """Autobahn's server protocol, recording what chatservice's would see."""

    at_open: frozenset[str] = frozenset()
    messages: list[bytes]

    def onOpen(self) -> None:
        self.at_open = frozenset(vars(self))  # where chatservice's `_slim` runs

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append(payload)


def handshake(extensions: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /echo?x=1 HTTP/1.1",
        "Host: 127.0.0.1:8080",
        "Origin: http://127.0.0.1:8080",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: plain-text",
    ]
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final, masked client frame of up to 125 bytes."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


class Transport(StringTransport):
    """A StringTransport that, like a real one, lets a protocol unregister no producer."""

    def unregisterProducer(self) -> None:
        self.producer = None


def server_factory(accept: Callable[[list[Any]], Any] | None = None) -> WebSocketServerFactory:
    factory = WebSocketServerFactory("ws://127.0.0.1:8080")
    factory.protocol = Recorder
    factory.setProtocolOptions(perMessageCompressionAccept=accept or (lambda offers: None))
    return factory


def open_connection(
    accept: Callable[[list[Any]], Any] | None = None, extensions: str = ""
) -> tuple[Recorder, Transport]:
    """An open connection of Autobahn's own protocol, built by its own factory."""
    protocol = server_factory(accept).buildProtocol(CLIENT)
    protocol.messages = []
    transport = Transport(hostAddress=SERVER, peerAddress=CLIENT)
    protocol.makeConnection(transport)
    protocol.dataReceived(handshake(extensions))
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 101 "), response
    transport.clear()
    return protocol, transport


def accept_as_offered(offers: list[Any]) -> Any:
    return PerMessageDeflateOfferAccept(offers[0])


def accept_without_context(offers: list[Any]) -> Any:
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer, no_context_takeover=True)
    return None


# -- Autobahn's protocol ---------------------------------------------------------------


@check("WebSocketProtocol.STATE_OPEN")
def _state_open(env: Env, name: str) -> None:
    value = present(WebSocketProtocol, "STATE_OPEN")
    protocol, _ = open_connection()
    assert protocol.state == value == internals.STATE_OPEN


@check("WebSocketProtocol.STATE_CLOSING")
def _state_closing(env: Env, name: str) -> None:
    value = present(WebSocketProtocol, "STATE_CLOSING")
    protocol, _ = open_connection()
    protocol.sendCloseFrame(code=1000, isReply=False)
    assert protocol.state == value == internals.STATE_CLOSING


@check(*(f"WebSocketServerProtocol.{attribute}" for attribute in internals.HANDSHAKE_ONLY))
def _handshake_only(env: Env, name: str) -> None:
    attribute = name.rsplit(".", 1)[1]
    protocol, _ = open_connection()
    assert attribute in protocol.at_open, (
        f"an open connection no longer keeps {attribute!r}: there is nothing to drop"
    )


@check("WebSocketServerProtocol.CONFIG_ATTRS")
def _config_attrs(env: Env, name: str) -> None:
    present(WebSocketServerProtocol, "CONFIG_ATTRS")
    options = list(internals.protocol_options(WebSocketServerProtocol))
    assert all(isinstance(option, str) for option in options)
    for option in ("autoPingInterval", "closeHandshakeTimeout", "maxMessagePayloadSize"):
        assert option in options
    # What chatservice undoes: each connection gets its own copy of each option.
    protocol, _ = open_connection()
    copied = [o for o in options if not hasattr(WebSocketServerProtocol, o)]
    assert copied
    assert all(option in vars(protocol) for option in copied)


@check("WebSocketProtocol._dataReceived")
def _data_received(env: Env, name: str) -> None:
    present(WebSocketProtocol, "_dataReceived")
    protocol, _ = open_connection()
    frame = client_frame(b"two pieces")
    protocol._dataReceived(frame[:5])
    protocol._dataReceived(frame[5:])
    assert protocol.messages == [b"two pieces"]


@check("WebSocketProtocol.sendCloseFrame")
def _send_close_frame(env: Env, name: str) -> None:
    parameters = inspect.signature(present(WebSocketProtocol, "sendCloseFrame")).parameters
    assert {"code", "reasonUtf8", "isReply"} <= set(parameters)
    protocol, transport = open_connection()
    protocol.sendCloseFrame(code=1008, reasonUtf8=b"why", isReply=False)
    assert transport.value() == b"\x88\x05\x03\xf0why"  # 1008 is allowed here


@check("WebSocketProtocol.closeHandshakeTimeout")
def _close_timeout(env: Env, name: str) -> None:
    protocol, _ = open_connection()
    assert "closeHandshakeTimeout" in vars(protocol)
    assert internals.close_timeout(protocol) == 1


@check("WebSocketProtocol.closeHandshakeTimeoutCall")
def _close_timer(env: Env, name: str) -> None:
    protocol, _ = open_connection()
    assert internals.close_timer(protocol) is None
    protocol.sendCloseFrame(code=1000, isReply=False)
    autobahns = internals.close_timer(protocol)
    assert autobahns is not None and callable(autobahns.cancel)
    autobahns.cancel()
    # Ours replaces it, and Autobahn cancels ours when the peer's close frame comes.
    ours = env.clock.callLater(1, lambda: None)
    internals.set_close_timer(protocol, ours)
    protocol.dataReceived(client_frame(b"\x03\xe8", opcode=0x8))
    assert not ours.active()
    assert internals.close_timer(protocol) is None


@check("WebSocketProtocol.onCloseHandshakeTimeout")
def _on_close_timeout(env: Env, name: str) -> None:
    present(WebSocketProtocol, "onCloseHandshakeTimeout")
    protocol, transport = open_connection()
    protocol.sendCloseFrame(code=1000, isReply=False)
    protocol.onCloseHandshakeTimeout()
    assert transport.disconnecting
    assert protocol.wasClean is False


@check("WebSocketProtocol.localCloseCode", "WebSocketProtocol.localCloseReason")
def _local_close(env: Env, name: str) -> None:
    protocol, _ = open_connection()
    protocol.sendCloseFrame(code=1008, reasonUtf8=b"why", isReply=False)
    present(protocol, name.rsplit(".", 1)[1])
    assert internals.local_close(protocol) == (1008, b"why")


@check("WebSocketProtocol._perMessageCompress")
def _per_message_compress(env: Env, name: str) -> None:
    plain, _ = open_connection(accept_without_context)
    assert present(plain, "_perMessageCompress") is None
    assert internals.shared_deflate_window(plain) == 0
    deflate, _ = open_connection(accept_without_context, "permessage-deflate")
    assert isinstance(present(deflate, "_perMessageCompress"), PerMessageDeflate)
    assert internals.shared_deflate_window(deflate) == 15


@check("PerMessageDeflate.server_no_context_takeover")
def _no_context_takeover(env: Env, name: str) -> None:
    shared, _ = open_connection(accept_without_context, "permessage-deflate")
    assert present(shared._perMessageCompress, "server_no_context_takeover") is True
    own, _ = open_connection(accept_as_offered, "permessage-deflate")
    assert present(own._perMessageCompress, "server_no_context_takeover") is False
    assert internals.shared_deflate_window(own) == 0


@check("PerMessageDeflate.server_max_window_bits")
def _server_window(env: Env, name: str) -> None:
    protocol, _ = open_connection(
        accept_without_context, "permessage-deflate; server_max_window_bits=10"
    )
    assert present(protocol._perMessageCompress, "server_max_window_bits") == 10
    assert internals.shared_deflate_window(protocol) == 10


@check("PerMessageDeflateOfferAccept.offer.request_no_context_takeover")
def _asked_no_context_takeover(env: Env, name: str) -> None:
    asked: list[bool] = []

    def accept(offers: list[Any]) -> Any:
        acceptance = accept_without_context(offers)
        present(present(acceptance, "offer"), "request_no_context_takeover")
        asked.append(internals.asked_no_context_takeover(acceptance))
        return acceptance

    open_connection(accept, "permessage-deflate")
    open_connection(accept, "permessage-deflate; server_no_context_takeover")
    assert asked == [False, True]


@check("PerMessageDeflateOfferAccept.get_extension_string")
def _extension_string(env: Env, name: str) -> None:
    class Saying(PerMessageDeflateOfferAccept):
        def get_extension_string(self) -> str:
            return str(super().get_extension_string()) + "; server_no_context_takeover"

    def accept(offers: list[Any]) -> Any:
        return Saying(offers[0], no_context_takeover=True)

    protocol = server_factory(accept).buildProtocol(CLIENT)
    transport = Transport(hostAddress=SERVER, peerAddress=CLIENT)
    protocol.makeConnection(transport)
    protocol.dataReceived(handshake("permessage-deflate"))
    headers = transport.value().split(b"\r\n\r\n")[0].lower().split(b"\r\n")
    assert b"sec-websocket-extensions: permessage-deflate; server_no_context_takeover" in headers


@check("autobahn.websocket.protocol.create_xor_masker")
def _xor_masker(env: Env, name: str) -> None:
    original = present(autobahn_protocol, internals.XOR_MASKER)
    calls: list[tuple[bytes, int | None]] = []

    def recording(mask: bytes, length: int | None = None) -> Any:
        calls.append((mask, length))
        return original(mask, length)

    protocol, _ = open_connection()
    env.monkeypatch.setattr(autobahn_protocol, internals.XOR_MASKER, recording)
    protocol.dataReceived(client_frame(b"hello"))
    assert protocol.messages == [b"hello"]
    assert calls == [(b"\x01\x02\x03\x04", 5)], "Autobahn no longer unmasks with it"


@check("autobahn.websocket.protocol.pformat")
def _pformat(env: Env, name: str) -> None:
    present(autobahn_protocol, internals.PFORMAT)
    calls: list[object] = []
    env.monkeypatch.setattr(autobahn_protocol, internals.PFORMAT, calls.append)
    open_connection()
    assert calls, "a new connection no longer formats its options with it"


# -- The handshake's handoff from twisted.web ------------------------------------------


def http_channel(resource: Resource) -> tuple[HTTPChannel, FakeTransport]:
    site = Site(resource)
    site.protocol = HTTPChannel  # type: ignore[assignment]  # as ChatSite's (not HTTP/2's)
    channel = site.buildProtocol(CLIENT)
    transport = FakeTransport(channel, isServer=True, hostAddress=SERVER, peerAddress=CLIENT)
    channel.makeConnection(transport)
    return channel, transport


@check("WebSocketResource.render")
def _takeover(env: Env, name: str) -> None:
    root = Resource()
    root.putChild(b"echo", WebSocketResource(server_factory()))
    channel, transport = http_channel(root)
    channel.dataReceived(handshake())
    assert channel.transport is None, "Autobahn no longer takes the transport over"
    protocol = internals.websocket_protocol_of(transport)
    assert isinstance(protocol, Recorder)
    assert protocol.state == WebSocketProtocol.STATE_OPEN


@check("ProtocolWrapper.wrappedProtocol")
def _wrapped_protocol(env: Env, name: str) -> None:
    inner = Protocol()
    wrapper = ProtocolWrapper(WrappingFactory(Factory()), inner)
    assert present(wrapper, "wrappedProtocol") is inner
    assert internals.websocket_protocol_of(wrapper) is inner


@check("HTTPChannel.rawDataReceived")
def _raw_data(env: Env, name: str) -> None:
    received: list[bytes] = []

    class Taking(Resource):
        isLeaf = True

        def render_GET(self, request: Request) -> int:
            internals.hand_on_raw_data(request.channel, received.append)
            return NOT_DONE_YET

    channel, _ = http_channel(Taking())
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nthe first frame")
    assert received == [b"the first frame"]


# -- twisted.web's channel and request ---------------------------------------------------


class Empty(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b""


def bare_channel(cls: type[HTTPChannel] = HTTPChannel) -> tuple[HTTPChannel, StringTransport]:
    channel = cls()
    channel.site = Site(Empty())  # type: ignore[attr-defined]
    channel.requestFactory = Request
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


@check("HTTPChannel._receivedHeaderSize")
def _header_size(env: Env, name: str) -> None:
    present(HTTPChannel, "_receivedHeaderSize")
    channel, _ = bare_channel()
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n")
    assert internals.header_bytes(channel) == len(b"GET / HTTP/1.1") + len(b"Host: x") + 4


@check("HTTPChannel._receivedHeaderCount")
def _header_count(env: Env, name: str) -> None:
    present(HTTPChannel, "_receivedHeaderCount")
    channel, _ = bare_channel()
    # Each header line is handled when the next one comes (it may continue).
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\nC: d\r\n")
    assert internals.header_lines(channel) == 2


@check("HTTPChannel.maxHeaders")
def _max_headers(env: Env, name: str) -> None:
    assert isinstance(present(HTTPChannel, "maxHeaders"), int)
    channel, transport = bare_channel(type("Two", (HTTPChannel,), {"maxHeaders": 2}))
    channel.dataReceived(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 ")


@check("HTTPChannel.totalHeadersSize")
def _total_headers_size(env: Env, name: str) -> None:
    assert isinstance(present(HTTPChannel, "totalHeadersSize"), int)
    channel, transport = bare_channel(type("Small", (HTTPChannel,), {"totalHeadersSize": 40}))
    channel.dataReceived(b"GET / HTTP/1.1\r\nA: " + b"x" * 40 + b"\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 ")


@check("HTTPChannel.headerReceived")
def _header_received(env: Env, name: str) -> None:
    channel, _ = bare_channel()
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    assert present(channel, "headerReceived")(b"Host: x") is True
    assert channel.headerReceived(b"no colon") is False


@check("HTTPChannel.allContentReceived")
def _all_content(env: Env, name: str) -> None:
    calls: list[bool] = []
    original = present(HTTPChannel, "allContentReceived")

    class Counting(HTTPChannel):
        def allContentReceived(self) -> None:
            calls.append(True)
            original(self)

    channel, _ = bare_channel(Counting)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert calls == [True]


@check("Request._disconnected")
def _request_disconnected(env: Env, name: str) -> None:
    present(Request, "_disconnected")
    channel, _ = bare_channel()
    request = Request(channel)
    assert internals.request_gone(request) is False
    request.connectionLost(Failure(ConnectionDone()))
    assert internals.request_gone(request) is True


# -- Twisted's TCP transport: the chat's send path ---------------------------------------


def tcp_server(sock: socket.socket, protocol: Protocol) -> tcp.Server:
    sock.setblocking(False)
    return tcp.Server(sock, protocol, ("127.0.0.1", 40000), None, 1, MemoryReactorClock())


@check("tcp.Server.socket", "tcp.Server.protocol")
def _tcp_server(env: Env, name: str) -> None:
    ours, peer = socket.socketpair()
    try:
        protocol = Protocol()
        server = tcp_server(ours, protocol)
        present(server, name.rsplit(".", 1)[1])
        assert internals.plain_tcp_socket(server) is ours
        assert internals.websocket_protocol_of(server) is protocol
        assert internals.plain_tcp_socket(StringTransport()) is None
    finally:
        ours.close()
        peer.close()


@check("tcp.Server.dataBuffer", "tcp.Server.offset", "tcp.Server._tempDataLen")
def _write_buffer(env: Env, name: str) -> None:
    ours, peer = socket.socketpair()
    try:
        server = tcp_server(ours, Protocol())
        present(server, name.rsplit(".", 1)[1])

        def idle() -> bool:  # as ChatProtocol.flush reads it
            return not server._tempDataLen and server.offset == len(server.dataBuffer)

        assert idle() and internals.buffered(server) == 0
        size = 4 << 20  # more than the socket pair holds
        server.write(b"x" * size)
        assert not idle() and internals.buffered(server) == size
        server.doWrite()
        sent = 0
        peer.setblocking(False)
        while chunk := _read(peer):
            sent += len(chunk)
        assert 0 < sent < size
        assert not idle() and internals.buffered(server) == size - sent
    finally:
        ours.close()
        peer.close()


def _read(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 20)
    except BlockingIOError:
        return b""


# -- Listening, shared sockets, twistd ---------------------------------------------------


@check("StreamServerEndpointService._raiseSynchronously")
def _raise_synchronously(env: Env, name: str) -> None:
    present(StreamServerEndpointService, "_raiseSynchronously")

    class Failing:
        def listen(self, factory: Any) -> Any:
            return defer.fail(CannotListenError("127.0.0.1", 1, OSError("in use")))

    service = StreamServerEndpointService(Failing(), Factory())
    internals.raise_listen_errors(service)
    with pytest.raises(CannotListenError):
        service.privilegedStartService()


@check("tcp.Port.numberAccepts", "tcp.Port.doRead")
def _accepts(env: Env, name: str) -> None:
    built: list[Protocol] = []

    class Accepting(Factory):
        def buildProtocol(self, addr: Any) -> Protocol:
            built.append(Protocol())
            return built[-1]

    factory = Accepting()
    port = tcp.Port(0, factory, interface="127.0.0.1", reactor=MemoryReactorClock())
    port.startListening()
    clients = [socket.create_connection(("127.0.0.1", port.getHost().port)) for _ in range(3)]
    try:
        present(port, name.rsplit(".", 1)[1])
        # pace_accepts sets numberAccepts before each doRead.
        port.numberAccepts = 1
        port.doRead()
        assert len(built) == 1
        port.numberAccepts = 5
        port.doRead()
        assert len(built) == 3
    finally:
        for client in clients:
            client.close()
        for protocol in built:
            protocol.transport.socket.close()  # type: ignore[union-attr]
        port.socket.close()


@check("SSL4ServerEndpoint._sslContextFactory")
def _ssl_context_factory(env: Env, name: str) -> None:
    context = object()
    endpoint = SSL4ServerEndpoint(MemoryReactorClock(), 0, context)
    assert internals.ssl_context_factory(endpoint) is context


@check(
    "unix.Port._fromListeningDescriptor",
    "unix.Port._bindPath",
    "unix.Port.mode",
    "unix.Port.lockFile",
)
def _unix_port(env: Env, name: str) -> None:
    directory = tempfile.mkdtemp(prefix="ci-", dir="/tmp")  # a socket's path is short
    path = os.path.join(directory, "s")
    listening = socket.socket(socket.AF_UNIX)
    try:
        listening.bind(path)
        listening.listen()
        listening.setblocking(False)
        present(unix.Port, "_fromListeningDescriptor")
        reactor = MemoryReactorClock()
        port = internals.unix_port_from_fd(unix.Port, reactor, listening.fileno(), Factory())
        assert isinstance(port, unix.Port)
        if name != "unix.Port._bindPath":  # (``port`` before Twisted 26.10)
            present(port, name.split(".")[2])
        assert os.fsdecode(internals.unix_socket_file(port)) == path
        # _SharedUnixPort.connectionLost unlocks it and goes on as tcp.Port's.
        assert port.lockFile is None and tcp.Port in unix.Port.__mro__
        os.chmod(path, 0o600)
        port.mode = 0o640
        port.startListening()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        port.socket.close()
    finally:
        listening.close()
        shutil.rmtree(directory, ignore_errors=True)


@check("unix._inFilesystemNamespace")
def _filesystem_namespace(env: Env, name: str) -> None:
    in_filesystem = present(unix, "_inFilesystemNamespace")
    assert in_filesystem("/run/chatservice.sock") is True
    assert in_filesystem("\0chatservice") is False


@check("tcp._SocketCloser._shouldShutdown")
def _should_shutdown(env: Env, name: str) -> None:
    assert present(tcp._SocketCloser, "_shouldShutdown") is True
    assert issubclass(unix.Port, tcp._SocketCloser)
    assert "_shouldShutdown" in tcp._SocketCloser._closeSocket.__code__.co_names


@check("UnixAppLogger._getLogObserver.rotateLog")
def _twistd_log_file(env: Env, name: str) -> None:
    from twisted.scripts._twistd_unix import UnixAppLogger

    directory = tempfile.mkdtemp(prefix="ci-")
    before = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        options = {"logfile": os.path.join(directory, "twistd.log"), "nodaemon": False}
        UnixAppLogger(options)._getLogObserver()
        log_file = internals.twistd_log_file(signal.getsignal(signal.SIGUSR1))
        assert isinstance(log_file, LogFile)
        log_file.close()
    finally:
        signal.signal(signal.SIGUSR1, before)
        shutil.rmtree(directory, ignore_errors=True)
