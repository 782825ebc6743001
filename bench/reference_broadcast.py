"""A minimal Autobahn broadcast server: the reference the broadcast benchmark compares with.

It does the essential work a chat server does per message, and nothing else:
no validation, rate limits, history, logging or Site.  On a text frame it
parses the JSON, and

- for ``chat-join`` adds the connection to the room and answers the joiner
  alone with a ``chat-join`` event (the load generator waits for its own;
  chatservice also tells every member, which costs joins, not messages);
- for ``chat-message`` builds the ``chat-message`` event (``id``, ``room``,
  ``username``, ``message``, ``time``), serializes it once, prepares the frame
  once (`WebSocketServerFactory.prepareMessage`) and sends the prepared frame to
  every member of the room.

The protocol options are those chatservice's ``/chat`` sets that matter here:
``failByDrop=False``, 64 KiB message and frame limits, permessage-deflate
accepted when offered (the load generator offers none), and the open handshake
timeout and pings, which cost memory per connection.  It listens on 127.0.0.1
on a free port, prints ``port=N`` on stdout once listening, and runs until it
is terminated.

Usage: python bench/reference_broadcast.py
"""

from __future__ import annotations

import json
import time
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from reference_echo import accept_permessage_deflate
from twisted.internet import reactor
from twisted.internet.address import IPv4Address

KiB = 1024
SUBPROTOCOL = "chat.v1.json"


def now_iso() -> str:
    """The current time as ISO 8601 UTC with milliseconds, as chatservice sends it."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def encode(event: dict[str, Any]) -> bytes:
    """`event` as a JSON text frame's payload, encoded as chatservice encodes it."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


class BroadcastFactory(WebSocketServerFactory):
    """The rooms: each a set of its members' connections, and its last message id."""

    def __init__(self) -> None:
        super().__init__()
        self.rooms: dict[str, set[BroadcastProtocol]] = {}
        self.last_ids: dict[str, int] = {}


class BroadcastProtocol(WebSocketServerProtocol):
    """One connection: joins rooms, says things to the room it joined last."""

    factory: BroadcastFactory
    username = ""
    #: The room joined last, where messages go.
    room: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.joined: set[str] = set()

    def onConnect(self, request: Any) -> str | None:
        return SUBPROTOCOL if SUBPROTOCOL in request.protocols else None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = json.loads(payload)
        body = frame["payload"]
        if frame["type"] == "chat-join":
            self.join(body["room"], body["username"])
        elif frame["type"] == "chat-message" and self.room is not None:
            self.say(body["message"])

    def join(self, room: str, username: str) -> None:
        """Become a member of `room`, and tell the joiner."""
        self.username = self.username or username
        self.room = room
        self.joined.add(room)
        self.factory.rooms.setdefault(room, set()).add(self)
        event = {
            "type": "chat-join",
            "payload": {"username": self.username, "room": room, "time": now_iso()},
        }
        self.sendMessage(encode(event))

    def say(self, message: str) -> None:
        """Send `message` to every member of the room joined last, this one included."""
        assert self.room is not None
        factory = self.factory
        message_id = factory.last_ids.get(self.room, 0) + 1
        factory.last_ids[self.room] = message_id
        event = {
            "type": "chat-message",
            "payload": {
                "id": message_id,
                "room": self.room,
                "username": self.username,
                "message": message,
                "time": now_iso(),
            },
        }
        prepared = factory.prepareMessage(encode(event))
        for member in factory.rooms[self.room]:
            member.sendPreparedMessage(prepared)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        for room in self.joined:
            self.factory.rooms[room].discard(self)


def main() -> None:
    """Listen, announce the port, and serve until terminated."""
    factory = BroadcastFactory()
    factory.protocol = BroadcastProtocol
    factory.setProtocolOptions(
        failByDrop=False,
        maxMessagePayloadSize=64 * KiB,
        maxFramePayloadSize=64 * KiB,
        perMessageCompressionAccept=accept_permessage_deflate,
        openHandshakeTimeout=10,
        autoPingInterval=30,
        autoPingTimeout=30,
    )
    address = reactor.listenTCP(0, factory, interface="127.0.0.1").getHost()
    assert isinstance(address, IPv4Address)
    print(f"port={address.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
