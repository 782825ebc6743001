"""A minimal Autobahn echo server: the reference the echo benchmark compares with.

No Site, no logging, no options beyond the protocol options chatservice's
``/echo`` sets that matter on the wire (see `chatservice.web.endpoint`): what
Autobahn itself costs.  It listens on 127.0.0.1 on a free port, prints
``port=N`` on stdout once listening, and runs until it is terminated.

Usage: python bench/reference_echo.py
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from twisted.internet import reactor
from twisted.internet.address import IPv4Address

MiB = 1024 * 1024


class EchoProtocol(WebSocketServerProtocol):
    """Every message comes back as it came."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def accept_permessage_deflate(offers: Sequence[Any]) -> PerMessageDeflateOfferAccept | None:
    """Accept the first permessage-deflate offer, as chatservice does."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def main() -> None:
    """Listen, announce the port, and serve until terminated."""
    factory = WebSocketServerFactory()
    factory.protocol = EchoProtocol
    factory.setProtocolOptions(
        failByDrop=False,
        maxMessagePayloadSize=16 * MiB,
        maxFramePayloadSize=16 * MiB,
        perMessageCompressionAccept=accept_permessage_deflate,
    )
    address = reactor.listenTCP(0, factory, interface="127.0.0.1").getHost()
    assert isinstance(address, IPv4Address)
    print(f"port={address.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
