"""The proxies' decisions, as the hub asks for them: `ProxyGate` (a `chatservice.chat.gate.Gate`).

It builds each proxy's request from what the hub knows, calls it
(`chatservice.hooks.proxy.ProxyClient`) and turns its answer into what the
chat does: an `Identity` for a connection, the text to store, a join let
through; a refusal as `Refused`, a ``disconnect`` as `Dismissed`.  A proxy
that gives no usable answer refuses the action as ``unavailable`` (a new
connection is closed with 1013 "try again later": it never silently becomes
a guest), and the reason is logged, once per proxy per `LOG_INTERVAL`.
Specified in docs/hooks.md ("Decisions in: proxies").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred

from chatservice import logs
from chatservice.chat.gate import Dismissed, Handshake, Refused
from chatservice.chat.identity import Identity
from chatservice.chat.messages import ProtocolError, clean_username
from chatservice.config import Config
from chatservice.hooks.proxy import (
    Answer,
    BadAnswer,
    Disconnect,
    ProxyClient,
    Refusal,
    Result,
    redacted,
)

#: 9999-12-31T23:59:59Z: the latest ``expire_at`` taken.
LAST_SECOND = 253402300799

_log = logs.logger("chatservice.hooks")

#: Seconds between two log events about the same proxy's failures.
LOG_INTERVAL = 10.0
#: Close code and reason of a new connection the connect proxy could not be asked about
#: (RFC 6455 7.4.1 "Try Again Later").
CLOSE_TRY_AGAIN_LATER = 1013
TRY_AGAIN_LATER = "try again later"
#: The reason of the ``unavailable`` chat-error of a message or join no proxy answered for.
UNAVAILABLE = "the application cannot be asked; try again soon"


@dataclass(frozen=True)
class ProxySettings:
    """Which proxies to ask (docs/hooks.md).

    Attributes:
        connect: ``--connect-proxy`` URL ("" for none).
        publish: ``--publish-proxy`` URL ("" for none).
        join: ``--join-proxy`` URL ("" for none).
        join_rooms: ``--join-proxy-room`` glob patterns; every room if empty.
        headers: ``--proxy-header`` names (lower case) passed to the connect proxy.
        timeout: ``--proxy-timeout`` seconds.
    """

    connect: str = ""
    publish: str = ""
    join: str = ""
    join_rooms: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    timeout: float = 1.0

    def __bool__(self) -> bool:
        return bool(self.connect or self.publish or self.join)

    @classmethod
    def from_config(cls, config: Config) -> ProxySettings:
        """The proxies a `Config` names."""
        return cls(
            config.connect_proxy,
            config.publish_proxy,
            config.join_proxy,
            config.join_proxy_rooms,
            config.proxy_headers,
            config.proxy_timeout,
        )


class ProxyGate:
    """Asks the configured proxies; the hub's `Gate`.

    Args:
        settings: Which proxies, which rooms, which headers.
        call: Makes one call (`ProxyClient.call`; a fake in tests).
        seconds: The time, for logging failures at most once per `LOG_INTERVAL`.
    """

    def __init__(
        self,
        settings: ProxySettings,
        call: Callable[[str, dict[str, Any]], Deferred[Answer]],
        seconds: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.identifies = bool(settings.connect)
        self.publishes = bool(settings.publish)
        self.headers = tuple(name.lower() for name in settings.headers)
        self._call = call
        self._seconds = seconds
        #: By proxy: when its failure was last logged, and how many were not since.
        self._logged: dict[str, tuple[float, int]] = {}

    @classmethod
    def start(cls, settings: ProxySettings, reactor: Any) -> tuple[ProxyGate, ProxyClient]:
        """A gate calling through a new `ProxyClient` (close it at shutdown)."""
        client = ProxyClient(reactor, settings.timeout)
        return cls(settings, client.call, reactor.seconds), client

    def joins(self, room: str) -> bool:
        """Whether the join proxy decides about `room`."""
        rooms = self.settings.join_rooms
        return bool(self.settings.join) and (
            not rooms or any(fnmatchcase(room, pattern) for pattern in rooms)
        )

    def connect(self, handshake: Handshake) -> Deferred[Identity | None]:
        """Ask the connect proxy who a new connection is."""
        request = {
            "headers": dict(handshake.headers),
            "address": handshake.address,
            "origin": handshake.origin,
            "subprotocol": handshake.subprotocol,
        }
        return ensureDeferred(self._connect(request))

    async def _connect(self, request: dict[str, Any]) -> Identity | None:
        try:
            result = await self._ask("connect", self.settings.connect, request, "chat-auth")
            return identity_of(result)
        except BadAnswer as e:
            self._failed("connect", e.reason)
            raise Dismissed(CLOSE_TRY_AGAIN_LATER, TRY_AGAIN_LATER) from None

    def publish(self, room: str, user: str | None, name: str, text: str) -> Deferred[str | None]:
        """Ask the publish proxy about a message; None keeps its text, else the text instead."""
        request = {"room": room, "user": user, "name": name, "text": text}
        return ensureDeferred(self._publish(request))

    async def _publish(self, request: dict[str, Any]) -> str | None:
        try:
            result = await self._ask("publish", self.settings.publish, request, "chat-message")
            if "text" not in result:
                return None
            text = result["text"]
            if not isinstance(text, str):
                raise BadAnswer("result.text must be a string")
            return text
        except BadAnswer as e:
            self._failed("publish", e.reason)
            raise ProtocolError("unavailable", UNAVAILABLE, "chat-message") from None

    def join(self, room: str, user: str | None, name: str) -> Deferred[None]:
        """Ask the join proxy whether `name` may join `room`."""
        request = {"room": room, "user": user, "name": name}
        return ensureDeferred(self._join(request))

    async def _join(self, request: dict[str, Any]) -> None:
        room = request["room"]
        try:
            await self._ask("join", self.settings.join, request, "chat-join", {"room": room})
        except BadAnswer as e:
            self._failed("join", e.reason)
            raise ProtocolError("unavailable", UNAVAILABLE, "chat-join", {"room": room}) from None

    async def _ask(
        self,
        proxy: str,
        url: str,
        request: dict[str, Any],
        type: str,
        about: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The ``result`` of a call.

        Raises:
            Refused: Its ``error``.
            Dismissed: Its ``disconnect``.
            BadAnswer: No usable answer.
        """
        answer = await self._call(url, request)
        if isinstance(answer, Result):
            return answer.fields
        if isinstance(answer, Refusal):
            raise Refused(answer.code, answer.message or answer.code, type, about)
        if isinstance(answer, Disconnect):
            raise Dismissed(answer.code, answer.reason)
        raise BadAnswer(f"not an answer: {answer!r}")  # (a fake's mistake)

    def _failed(self, proxy: str, reason: str) -> None:
        """Log why `proxy` gave no answer, at most once per `LOG_INTERVAL`."""
        now = self._seconds()
        last, unlogged = self._logged.get(proxy, (-math.inf, 0))
        if now - last < LOG_INTERVAL:
            self._logged[proxy] = (last, unlogged + 1)
            return
        self._logged[proxy] = (now, 0)
        _log.warn(
            "{proxy} proxy unavailable: {reason} (refused as unavailable; "
            "{unlogged} more since the last such event)",
            proxy=proxy,
            url=redacted(getattr(self.settings, proxy)),
            reason=reason,
            unlogged=unlogged,
        )


def identity_of(result: dict[str, Any]) -> Identity | None:
    """The identity a connect proxy's ``result`` gives: None for ``{}`` (a guest).

    ``{"user", "name"?, "rooms"?, "admin"?, "expire_at"?}``, read as a token's
    ``sub``, ``name``, ``rooms``, ``admin``, ``exp`` (docs/protocol.md, "Identity").

    Raises:
        BadAnswer: It is not of that shape.
    """
    if "user" not in result:
        if result:
            raise BadAnswer("result must be {} (a guest) or have a user")
        return None
    user = result["user"]
    if not isinstance(user, str) or not user:
        raise BadAnswer("result.user must be a non-empty string")
    name = result.get("name", user)
    try:
        name = clean_username(name) if isinstance(name, str) else None
    except ProtocolError:
        name = None
    if name is None:
        raise BadAnswer("result.name (or user, without a name) must be a valid username")
    rooms = result.get("rooms", [])
    if not isinstance(rooms, list) or not all(isinstance(room, str) for room in rooms):
        raise BadAnswer("result.rooms must be a list of strings")
    admin = result.get("admin", False)
    if not isinstance(admin, bool):
        raise BadAnswer("result.admin must be true or false")
    expire_at = result.get("expire_at")
    expires = None
    if expire_at is not None:
        try:
            if isinstance(expire_at, bool) or not isinstance(expire_at, int | float):
                raise ValueError
            expires = float(expire_at)  # (OverflowError for a huge int)
            # Up to the year 9999: a time in milliseconds (Date.now()) is
            # a mistake, not a deadline thousands of years away.
            if not math.isfinite(expires) or not 0 <= expires <= LAST_SECOND:
                raise ValueError
        except (ValueError, OverflowError):
            raise BadAnswer("result.expire_at must be a number (seconds since the epoch)") from None
    return Identity(user, name, tuple(rooms), admin, expires)
