"""``/echo``: every message comes back as it came (docs/protocol.md)."""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from chatservice import logs
from chatservice.config import Config
from chatservice.web.endpoint import EndpointFactory, ServerProtocol
from chatservice.web.policy import Limits

# Autobahn's protocol classes own `self.log`; ours is module level.  The
# namespace is the one of every endpoint's events (see `logs.logger`).
_log = logs.logger("chatservice.protocol")


@implementer(IPushProducer)
class EchoProtocol(ServerProtocol):
    """``/echo``: every message comes back as it came, text as text, binary as binary.

    It is also the transport's push producer: while the echoes wait to be
    written (the client is not reading), it stops reading from the client, so
    TCP's flow control slows the client down instead of our memory growing.
    """

    subprotocols = ("plain-text",)

    def opened(self) -> None:
        """Become the transport's producer."""
        self.become_producer()

    def pauseProducing(self) -> None:
        """The echoes wait to be written: stop reading from the client."""
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        """The echoes were written: read from the client again."""
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        """The transport is going away: nothing to do."""
        pass

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Send the message straight back, text as text and binary as binary."""
        # Two int additions: what comes in goes straight back out, so the
        # sent counts are these (`EndpointFactory.echoes`).
        stats = self.factory.stats
        stats.messages_received += 1
        stats.bytes_received += len(payload)
        if self.factory.log_messages:
            _log.debug(
                "conn={conn_id} echo binary={binary} size={size} payload={payload!r}",
                conn_id=self.conn_id,
                binary=isBinary,
                size=len(payload),
                payload=payload[:200],
            )
        self.sendMessage(payload, isBinary)


def echo_factory(config: Config, limits: Limits) -> EndpointFactory:
    """The factory behind ``/echo``."""
    factory = EndpointFactory(config, EchoProtocol, config.echo_max_message_size, limits)
    factory.echoes = True
    return factory
