"""The running service: one Site listening on every configured endpoint."""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.web.server import Site
from zope.interface import implementer

from chatservice.config import Config
from chatservice.web import make_site

_log = Logger()


@implementer(IStreamServerEndpoint)
class _AnnouncingEndpoint:
    """Wraps an endpoint to log the address it listens on and keep the port.

    With ``tcp:0`` the port number is only known once listening; scripts and
    tests read it from the log event or from `ChatService.listening`.
    """

    def __init__(
        self, endpoint: IStreamServerEndpoint, description: str, ports: list[IListeningPort]
    ):
        self._endpoint = endpoint
        self._description = description
        self._ports = ports

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        def announce(port: IListeningPort) -> IListeningPort:
            self._ports.append(port)
            _log.info(
                "chatservice listening on {address} (from {description!r})",
                address=port.getHost(),
                description=self._description,
            )
            return port

        d: Deferred[IListeningPort] = self._endpoint.listen(factory)
        return d.addCallback(announce)


class ChatService(MultiService):
    """The whole service, as twistd runs it.

    Args:
        config: The service's settings.
        reactor: The reactor to listen with (the global one if None).

    Attributes:
        site: The one Site every port serves.
        listening: The listening ports, once started.
    """

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        self.config = config
        self.site: Site = make_site(config, reactor)
        self.listening: list[IListeningPort] = []
        for description in config.ports:
            # strports.service raises listen errors from privilegedStartService.
            svc = strports.service(description, self.site, reactor=reactor)
            svc.endpoint = _AnnouncingEndpoint(svc.endpoint, description, self.listening)
            svc.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise StartupError(f"cannot listen: {_describe(e)}") from None


class StartupError(Exception):
    """The service cannot start; the message says why, in one line.

    twistd removes its pid file for any Exception and re-raises it; `tap`
    installs an excepthook that prints this one as its message alone.
    """

    def __str__(self) -> str:
        return f"chatservice: {self.args[0]}"


def _describe(error: CannotListenError) -> str:
    interface = error.interface or "all interfaces"
    reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
    return f"port {error.port} on {interface}: {reason}"
