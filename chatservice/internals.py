"""The Autobahn and Twisted internals chatservice relies on, named in one place.

Where neither library has a public way to do what we need, chatservice reads,
writes or replaces one of its internals (why: at each use).  An upgrade may
move any of them.  Each is named in `INTERNALS` with what it is for, where it is
used and the versions it was checked against, and reached through a constant
or a small function below; tests/test_internals.py checks every one on the
installed versions, in a test named after it
(``test_internal_still_there[WebSocketProtocol._dataReceived]``).
constraints.txt pins the versions those tests passed with.

Importing this module reads nothing that may have moved, so that the test
suite still runs and names what did: the few values read at import time
(`STATE_OPEN`...) are stand-ins when they are gone, which raise `MovedInternal`
wherever they are used: the service fails loudly, never quietly.

Hot paths (every read of a socket, every delivery, every flush) read their
internal as a plain attribute where they use it (``self._dataReceived(data)``,
``transport._tempDataLen``), as a function call here would cost on every one;
their entries say so.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, NamedTuple

import autobahn.websocket.protocol as _autobahn_protocol
from autobahn.websocket.compress import PerMessageDeflate, PerMessageDeflateOfferAccept
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import tcp, unix
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.logfile import LogFile


class MovedInternal(AttributeError):
    """An internal named here is not where it was: see `INTERNALS`."""


class _Moved:
    """Stands in for an internal read at import time that has gone: using it raises."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _fail(self, *args: object, **kwargs: object) -> Any:
        raise MovedInternal(
            f"{self.name} is gone from the installed version: see chatservice/internals.py"
        )

    __eq__ = __ne__ = __hash__ = __bool__ = __call__ = _fail  # type: ignore[assignment]

    def __getattr__(self, attribute: str) -> Any:
        return self._fail()


def _read(owner: object, attribute: str, name: str) -> Any:
    """``owner.attribute``, or a stand-in that fails when used if it has gone."""
    value = getattr(owner, attribute, _read)
    return _Moved(name) if value is _read else value


class Internal(NamedTuple):
    """An internal we rely on: what for and where, and the versions it was checked against."""

    use: str
    checked: str


# Where tests/test_internals.py passed: the versions constraints.txt pins, and
# the oldest that setup.cfg allows.
_AUTOBAHN = "autobahn 26.10.1, 26.11.1"
_TWISTED = "Twisted 26.4.0, 26.10.0"

# -- Autobahn's WebSocket protocol (web/endpoint.py, web/chat.py) ---------------------

#: Autobahn's connection states, compared on every frame and delivery (hot: module
#: constants of endpoint.py and chat.py, plain comparisons with ``self.state``).
STATE_OPEN: int = _read(WebSocketProtocol, "STATE_OPEN", "WebSocketProtocol.STATE_OPEN")
STATE_CLOSING: int = _read(WebSocketProtocol, "STATE_CLOSING", "WebSocketProtocol.STATE_CLOSING")

#: What only the opening handshake needs, kept by Autobahn for the connection's
#: life: `ServerProtocol._slim` drops them once open.
HANDSHAKE_ONLY = (
    "http_headers",
    "http_request_data",
    "http_response_data",
    "http_status_line",
    "http_request_params",
    "http_request_uri",
    "http_request_path",
    "http_request_host",
    "websocket_protocols",
    "websocket_extensions",
    "websocket_origin",
    "_wskey",
)


def protocol_options(protocol: type) -> Sequence[str]:
    """The names of the options Autobahn copies from the factory onto each connection."""
    names: Sequence[str] = protocol.CONFIG_ATTRS  # type: ignore[attr-defined]
    return names


def close_timeout(protocol: object) -> float:
    """Seconds Autobahn waits for the peer's close frame after ours."""
    seconds: float = protocol.closeHandshakeTimeout  # type: ignore[attr-defined]
    return seconds


def close_timer(protocol: object) -> Any:
    """The call that drops the connection if the closing handshake times out (or None)."""
    return protocol.closeHandshakeTimeoutCall  # type: ignore[attr-defined]


def set_close_timer(protocol: object, call: Any) -> None:
    """Make `call` the closing handshake's timeout (Autobahn cancels it when the reply comes)."""
    protocol.closeHandshakeTimeoutCall = call  # type: ignore[attr-defined]


def local_close(protocol: object) -> tuple[int | None, bytes | None]:
    """The code and (UTF-8) reason of the close frame this side sent, if any."""
    return protocol.localCloseCode, protocol.localCloseReason  # type: ignore[attr-defined]


def shared_deflate_window(protocol: object) -> int:
    """The server window (9-15) of a connection that negotiated permessage-deflate
    without server context takeover; 0 for any other connection."""
    deflate = protocol._perMessageCompress  # type: ignore[attr-defined]
    if isinstance(deflate, PerMessageDeflate) and deflate.server_no_context_takeover:
        return int(deflate.server_max_window_bits)
    return 0


def asked_no_context_takeover(accept: PerMessageDeflateOfferAccept) -> bool:
    """Whether the client's permessage-deflate offer asked for server_no_context_takeover."""
    return bool(accept.offer.request_no_context_takeover)


#: Globals of autobahn.websocket.protocol that Autobahn looks up at each call:
#: the frame parser's masker factory, and the formatter of a debug line that
#: every new connection builds.  Set there, ours is what Autobahn calls.
XOR_MASKER = "create_xor_masker"
PFORMAT = "pformat"


def autobahn_protocol_global(name: str) -> Any:
    """What autobahn.websocket.protocol's global `name` is now (a stand-in if gone)."""
    return _read(_autobahn_protocol, name, f"autobahn.websocket.protocol.{name}")


def replace_autobahn_protocol_global(name: str, value: object) -> None:
    """Make Autobahn call `value` where it calls its protocol module's global `name`."""
    setattr(_autobahn_protocol, name, value)


# -- Autobahn's resource and twisted.web's channel: the handshake (web/site.py) ------


def websocket_protocol_of(transport: Any) -> Any:
    """The protocol `WebSocketResource.render` connected `transport` to, as it does:
    a TLS wrapper's wrapped protocol, else the transport's own."""
    if isinstance(transport, ProtocolWrapper):
        return transport.wrappedProtocol
    if isinstance(transport.protocol, ProtocolWrapper):
        return transport.protocol.wrappedProtocol
    return transport.protocol


def hand_on_raw_data(channel: Any, receive: Any) -> None:
    """Make twisted.web's `channel` pass what it holds past the request being
    rendered, and all it gets after, to `receive`.

    The channel is in raw mode while it renders a request, and its line parser
    hands what follows in the same read to ``channel.rawDataReceived`` once
    render returns.
    """
    channel.rawDataReceived = receive


# -- twisted.web's HTTP channel and request (web/channel.py, web/api.py) -------------


def header_bytes(channel: Any) -> int:
    """Bytes of the request line and header lines the channel has read of this request."""
    return int(channel._receivedHeaderSize)


def header_lines(channel: Any) -> int:
    """Header lines the channel has handled of this request."""
    return int(channel._receivedHeaderCount)


def request_gone(request: Any) -> bool:
    """Whether the client of `request` went away before the answer (writing then fails).

    False for a request that does not say (a test's `DummyRequest`).
    """
    return bool(getattr(request, "_disconnected", False))


# -- Twisted's TCP transport: the chat's send path (web/chat.py) ---------------------


def plain_tcp_socket(transport: Any) -> socket.socket | None:
    """The socket of a plain TCP connection (not TLS, nor a Unix socket), else None."""
    if type(transport) is tcp.Server:
        sock: socket.socket = transport.socket
        return sock
    return None


def buffered(transport: Any) -> int:
    """Bytes waiting in a Twisted TCP transport's write buffer (0 if it does not say).

    `ChatProtocol.flush` reads the same three attributes directly (hot: once
    per connection per flush) to see that nothing is waiting.
    """
    try:
        return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)
    except (AttributeError, TypeError):
        return 0


# -- Listening, shared sockets, twistd (service.py, workers/listening.py) ------------


def raise_listen_errors(service: Any) -> None:
    """Make a `StreamServerEndpointService` raise a listen error from
    ``privilegedStartService``, as ``strports.service`` does, instead of logging it."""
    service._raiseSynchronously = True


def ssl_context_factory(endpoint: Any) -> Any:
    """The context factory of an ``ssl:`` endpoint from ``serverFromString``."""
    return endpoint._sslContextFactory


def unix_port_from_fd(port_class: type[unix.Port], reactor: Any, fd: int, factory: Any) -> Any:
    """A Unix socket port of `port_class` on a listening socket it inherited."""
    return port_class._fromListeningDescriptor(reactor, fd, factory)  # type: ignore[attr-defined]


def unix_socket_file(port: Any) -> Any:
    """The file of a Unix socket port, or None for an abstract socket."""
    # Twisted 26.10 moved it from ``port`` (now 0) to ``_bindPath``.
    path = port._bindPath if hasattr(port, "_bindPath") else port.port
    return path if unix._inFilesystemNamespace(path) else None  # type: ignore[attr-defined]


def twistd_log_file(usr1_handler: Any) -> LogFile | None:
    """The `LogFile` of twistd's ``--logfile``, if there is one.

    twistd keeps it only in the closure of the SIGUSR1 handler it installs
    to rotate it; that handler is where we find it, to reopen it on SIGHUP.
    """
    for cell in getattr(usr1_handler, "__closure__", None) or ():
        contents = cell.cell_contents
        if isinstance(contents, LogFile):
            return contents
    return None


#: Every internal, by the id of its test in tests/test_internals.py.
INTERNALS: dict[str, Internal] = {
    # Autobahn's protocol (web/endpoint.py, web/chat.py)
    "WebSocketProtocol.STATE_OPEN": Internal(
        "the open state: `STATE_OPEN`; hot, a module constant", _AUTOBAHN
    ),
    "WebSocketProtocol.STATE_CLOSING": Internal(
        "the state after our close frame: `STATE_CLOSING`; hot, a module constant", _AUTOBAHN
    ),
    **{
        f"WebSocketServerProtocol.{name}": Internal(
            "kept from the handshake, dropped once open: `HANDSHAKE_ONLY`", _AUTOBAHN
        )
        for name in HANDSHAKE_ONLY
    },
    "WebSocketServerProtocol.CONFIG_ATTRS": Internal(
        "options copied onto each connection, class attributes instead: `protocol_options`",
        _AUTOBAHN,
    ),
    "WebSocketProtocol._dataReceived": Internal(
        "the frame parser, fed in pieces by `ServerProtocol.dataReceived`; hot, called there",
        _AUTOBAHN,
    ),
    "WebSocketProtocol.sendCloseFrame": Internal(
        "sends a close frame with any code (`close_with`), overridden to restart its timer",
        _AUTOBAHN,
    ),
    "WebSocketProtocol.closeHandshakeTimeout": Internal(
        "the closing handshake's timeout, restarted in full: `close_timeout`", _AUTOBAHN
    ),
    "WebSocketProtocol.closeHandshakeTimeoutCall": Internal(
        "the closing handshake's timer, replaced by ours: `close_timer`, `set_close_timer`",
        _AUTOBAHN,
    ),
    "WebSocketProtocol.onCloseHandshakeTimeout": Internal(
        "called by that timer; overridden to wait for a peer still sending", _AUTOBAHN
    ),
    "WebSocketProtocol.localCloseCode": Internal(
        "the close code we sent, logged when the peer sent none: `local_close`", _AUTOBAHN
    ),
    "WebSocketProtocol.localCloseReason": Internal(
        "the close reason we sent, logged when the peer sent none: `local_close`", _AUTOBAHN
    ),
    "WebSocketProtocol._perMessageCompress": Internal(
        "a connection's permessage-deflate: `shared_deflate_window`", _AUTOBAHN
    ),
    "PerMessageDeflate.server_no_context_takeover": Internal(
        "whether one compressed frame suits the connection: `shared_deflate_window`", _AUTOBAHN
    ),
    "PerMessageDeflate.server_max_window_bits": Internal(
        "which compressed frame suits the connection: `shared_deflate_window`", _AUTOBAHN
    ),
    "PerMessageDeflateOfferAccept.offer.request_no_context_takeover": Internal(
        "whether the client asked for it: `asked_no_context_takeover`", _AUTOBAHN
    ),
    "PerMessageDeflateOfferAccept.get_extension_string": Internal(
        "the response's extension header, overridden to say server_no_context_takeover",
        _AUTOBAHN,
    ),
    "autobahn.websocket.protocol.create_xor_masker": Internal(
        "replaced by web/masking.py for small frames: `XOR_MASKER`", _AUTOBAHN
    ),
    "autobahn.websocket.protocol.pformat": Internal(
        "replaced by web/quiet.py, formatting only when debugging: `PFORMAT`", _AUTOBAHN
    ),
    # The handshake's handoff (web/site.py)
    "WebSocketResource.render": Internal(
        "takes the transport over from twisted.web: `websocket_protocol_of`", _AUTOBAHN
    ),
    "ProtocolWrapper.wrappedProtocol": Internal(
        "where a TLS transport's protocol is: `websocket_protocol_of`", _TWISTED
    ),
    "tcp.Server.protocol": Internal(
        "where a TCP transport's protocol is: `websocket_protocol_of`", _TWISTED
    ),
    "HTTPChannel.rawDataReceived": Internal(
        "gets bytes sent right after the handshake: `hand_on_raw_data`", _TWISTED
    ),
    # twisted.web's channel and request (web/channel.py, web/api.py)
    "HTTPChannel._receivedHeaderSize": Internal(
        "the header bytes read, for our 431: `header_bytes`", _TWISTED
    ),
    "HTTPChannel._receivedHeaderCount": Internal(
        "the header lines read, for our 431: `header_lines`", _TWISTED
    ),
    "HTTPChannel.maxHeaders": Internal("set by `ChatChannel`: most header lines", _TWISTED),
    "HTTPChannel.totalHeadersSize": Internal(
        "set by `ChatChannel`: most bytes of request line and headers", _TWISTED
    ),
    "HTTPChannel.headerReceived": Internal(
        "overridden by `ChatChannel` (False: refused), for our 431", _TWISTED
    ),
    "HTTPChannel.allContentReceived": Internal(
        "overridden by `ChatChannel`: a whole request came, its deadline stops", _TWISTED
    ),
    "Request._disconnected": Internal(
        "the API answers no request whose client went: `request_gone`", _TWISTED
    ),
    # The chat's send path (web/chat.py)
    "tcp.Server.socket": Internal("written to directly by a flush: `plain_tcp_socket`", _TWISTED),
    "tcp.Server.dataBuffer": Internal(
        "the write buffer, which a flush must find empty: `buffered`; hot in flush", _TWISTED
    ),
    "tcp.Server.offset": Internal(
        "what of dataBuffer is written: `buffered`; hot in flush", _TWISTED
    ),
    "tcp.Server._tempDataLen": Internal(
        "bytes written since the last send: `buffered`; hot in flush", _TWISTED
    ),
    # Listening (service.py, workers/listening.py) and twistd (service.py, workers/master.py)
    "StreamServerEndpointService._raiseSynchronously": Internal(
        "a worker's listen errors stop it at once: `raise_listen_errors`", _TWISTED
    ),
    "tcp.Port.numberAccepts": Internal(
        "connections accepted per reactor turn, capped by `pace_accepts`", _TWISTED
    ),
    "tcp.Port.doRead": Internal(
        "wrapped on a port by `pace_accepts` and `balance_accepts`", _TWISTED
    ),
    "SSL4ServerEndpoint._sslContextFactory": Internal(
        "a worker's TLS on an inherited socket: `ssl_context_factory`", _TWISTED
    ),
    "unix.Port._fromListeningDescriptor": Internal(
        "a worker's Unix socket port on an inherited socket: `unix_port_from_fd`", _TWISTED
    ),
    "unix.Port._bindPath": Internal(
        "the file of a Unix socket port (``port`` before 26.10): `unix_socket_file`", _TWISTED
    ),
    "unix._inFilesystemNamespace": Internal(
        "whether that is a file (not abstract): `unix_socket_file`", _TWISTED
    ),
    "unix.Port.mode": Internal(
        "set by a worker to the mode its master gave the socket file", _TWISTED
    ),
    "unix.Port.lockFile": Internal(
        "unlocked by `_SharedUnixPort.connectionLost`, which keeps the file", _TWISTED
    ),
    "tcp._SocketCloser._shouldShutdown": Internal(
        "False on `_SharedUnixPort`: a worker leaves the shared socket listening", _TWISTED
    ),
    "UnixAppLogger._getLogObserver.rotateLog": Internal(
        "twistd's SIGUSR1 handler: its --logfile, reopened on SIGHUP: `twistd_log_file`",
        _TWISTED,
    ),
}
