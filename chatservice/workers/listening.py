"""Listening: endpoint strings made into ports, shared by the workers of ``--workers``.

A single process listens on every ``--port`` through `AnnouncingEndpoint`.  With
``--workers N`` the master listens (the same endpoints: ``tcp:``, ``ssl:``,
``unix:``, ``systemd:``) but accepts nothing (`AnnouncingEndpoint` with
``accept=False``); every worker inherits the listening sockets and accepts on
them with `SharedPortEndpoint` (Twisted's ``adoptStreamPort``, as Autobahn's
multicore example does).  The kernel hands each new connection to one of the
workers waiting on the socket.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, endpoints, tcp, unix
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from chatservice import internals

#: For the few lines written at any --log-level.
_always = Logger(namespace="chatservice.listening")


@implementer(IStreamServerEndpoint)
class AnnouncingEndpoint:
    """Wraps an endpoint to log the address it listens on and keep the port.

    With ``tcp:0`` the port number is only known once listening; scripts and
    tests read it from the log event or from `ChatService.listening`.

    Args:
        endpoint: The endpoint to listen on.
        description: Its ``--port`` string, for the log.
        ports: Where the listening port is appended.
        accept: False for the master of ``--workers``: the port listens (the
            kernel queues connections) but this process accepts none; the
            workers accept on it.
        announce: False for the workers: their master said where it listens.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        description: str,
        ports: list[IListeningPort],
        accept: bool = True,
        announce: bool = True,
    ):
        self._endpoint = endpoint
        self._description = description
        self._ports = ports
        self._accept = accept
        self._announce = announce

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen, and note the port (and say where, for the log)."""

        def announce(port: IListeningPort) -> IListeningPort:
            self._ports.append(port)
            if self._accept:
                pace_accepts(port)
            else:
                port.stopReading()  # type: ignore[attr-defined]
            if not self._announce:
                return port
            address = port.getHost()
            # At any --log-level: scripts (and people) read the port from it.
            _always.info(
                "chatservice listening on {address} (from {description!r})",
                address=str(address),
                host=getattr(address, "host", None),
                port=getattr(address, "port", None),
                description=self._description,
            )
            return port

        d: Deferred[IListeningPort] = self._endpoint.listen(factory)
        return d.addCallback(announce)


#: New connections a port accepts in one reactor iteration, at most.
ACCEPTS_PER_ITERATION = 32


def pace_accepts(port: IListeningPort) -> None:
    """Accept at most `ACCEPTS_PER_ITERATION` connections per reactor iteration.

    Twisted's port accepts ``numberAccepts`` connections per iteration and adds 20
    whenever it took them all, so during a reconnect storm one iteration takes in
    hundreds, handles all their handshakes and joins (about 1 ms each) before
    anything else, and room messages wait for seconds.  Capped, the handshakes
    are spread over many short iterations, with room messages delivered between
    them; the rate of joins stays what the CPU allows.

    (``numberAccepts`` and the port's ``doRead`` are Twisted internals, see
    `chatservice.internals`.)
    """
    if not hasattr(port, "numberAccepts"):
        return  # not a Twisted stream port (e.g. a test double)
    accept = port.doRead  # type: ignore[attr-defined]

    def doRead() -> Any:
        port.numberAccepts = min(port.numberAccepts, ACCEPTS_PER_ITERATION)  # type: ignore[attr-defined]
        return accept()

    port.doRead = doRead  # type: ignore[attr-defined]


#: Seconds a worker with more than its share of the connections leaves a new
#: connection to the others before it accepts it itself.
YIELD_SECONDS = 0.005


def balance_accepts(port: IListeningPort, overloaded: Callable[[], bool], clock: Any) -> None:
    """Let the workers sharing `port` hold about equal numbers of connections.

    On a shared listening socket every waiting worker is woken for a new
    connection and the first to run takes it, so which worker gets it follows
    CPU scheduling: measured (bench/accept_bench.py), 1000 connections split up
    to 70/30.  A worker that holds more than its share (`overloaded`) steps
    back for `YIELD_SECONDS`: it stops watching the socket, and another worker
    takes the connection.  Then it accepts whatever is still waiting, so a
    connection is never left waiting on a worker that is busy or hung.  (nginx's
    ``accept_disabled`` does the same.)  The port's ``doRead`` is wrapped: see
    `chatservice.internals`.
    """
    accept = port.doRead  # type: ignore[attr-defined]
    yielded = False

    def resume() -> None:
        nonlocal yielded
        yielded = True
        port.startReading()  # type: ignore[attr-defined]

    def doRead() -> Any:
        nonlocal yielded
        if not yielded and overloaded():
            port.stopReading()  # type: ignore[attr-defined]
            clock.callLater(YIELD_SECONDS, resume)
            return None
        yielded = False
        return accept()

    port.doRead = doRead  # type: ignore[attr-defined]


#: Connections the kernel queues for a TCP port until they are accepted (Twisted's
#: default is 50): a reconnect storm of thousands must not see refused SYNs.
LISTEN_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """A TCP or TLS endpoint string with a listen backlog of `LISTEN_BACKLOG`,
    unless it sets one."""
    kind = description.split(":", 1)[0].lower()
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


@implementer(IStreamServerEndpoint)
class SharedPortEndpoint:
    """A worker's end of a listening socket its master made (``--workers``).

    Args:
        reactor: An `IReactorSocket`.
        fd: The inherited listening socket (non-blocking, as Twisted made it).
        description: The ``--port`` string the master listened on: ``ssl:``
            ports are served through TLS with the key and certificate it names.
        overloaded: Whether this worker holds more than its share of the
            connections (see `balance_accepts`); None: accept everything.
    """

    def __init__(
        self,
        reactor: Any,
        fd: int,
        description: str,
        overloaded: Callable[[], bool] | None = None,
    ) -> None:
        self._reactor = reactor
        self._fd = fd
        self._description = description
        self._overloaded = overloaded

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Accept on the socket the master listens on."""
        return defer.execute(self._adopt, factory)

    def _adopt(self, factory: IProtocolFactory) -> IListeningPort:
        kind = self._description.split(":", 1)[0].lower()
        if kind == "ssl":
            endpoint = endpoints.serverFromString(self._reactor, self._description)
            context = internals.ssl_context_factory(endpoint)
            factory = TLSMemoryBIOFactory(context, False, factory)
        probe = socket.socket(fileno=os.dup(self._fd))
        family = probe.family
        probe.close()
        port: IListeningPort
        if family == socket.AF_UNIX:
            port = internals.unix_port_from_fd(_SharedUnixPort, self._reactor, self._fd, factory)
            path = internals.unix_socket_file(port)
            if path is not None:
                # (startListening sets the mode again: keep the master's.)
                port.mode = stat.S_IMODE(os.stat(path).st_mode)  # type: ignore[attr-defined]
            port.startListening()
        else:
            port = self._reactor.adoptStreamPort(self._fd, family, factory)
        os.close(self._fd)  # the port has its own copy
        pace_accepts(port)
        if self._overloaded is not None:
            balance_accepts(port, self._overloaded, self._reactor)
        return port


class _SharedUnixPort(unix.Port):
    """A Unix socket port that leaves the socket alone when it stops: no
    shutdown (which would stop it listening in every process; Twisted skips it
    for adopted TCP sockets but not for Unix ones) and no removal of its file
    (the master made it and removes it); other workers still accept on it.

    ``_shouldShutdown`` and ``lockFile`` are Twisted internals, see
    `chatservice.internals`.
    """

    _shouldShutdown = False

    def connectionLost(self, reason: Any) -> None:
        if self.lockFile is not None:
            self.lockFile.unlock()
        tcp.Port.connectionLost(self, reason)


class StartupError(Exception):
    """The service cannot start; the message says why, in one line.

    twistd removes its pid file for any Exception and re-raises it; `tap`
    installs an excepthook that prints this one as its message alone.
    """

    def __str__(self) -> str:
        return f"chatservice: {self.args[0]}"


def describe(error: CannotListenError) -> str:
    """One line on why a port could not be bound."""
    interface = error.interface or "all interfaces"
    reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
    return f"port {error.port} on {interface}: {reason}"
