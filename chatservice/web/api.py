"""The HTTP API on the same Site: announcements, room messages, history, health.

JSON in and out; errors are ``{"error": "..."}`` with the right status.  Every
route but ``/healthz`` needs the admin token (``Authorization: Bearer TOKEN``
or ``?token=TOKEN``), or, with ``--auth``, a user's signed token: an admin's
may do everything, anybody else's only read the rooms it may enter.
Specified in docs/protocol.md ("HTTP API").
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from chatservice import internals, logs
from chatservice.backplane.roles import MessageLog, PresenceRelay
from chatservice.backplane.values import JOIN_HISTORY, StoredMessage, Unavailable
from chatservice.chat.gate import Dismissed, Refused
from chatservice.chat.hub import Hub
from chatservice.chat.identity import DM_PREFIX, AuthError, AuthPolicy, Identity
from chatservice.chat.messages import (
    ProtocolError,
    check_room,
    clean_username,
    iso_time,
    parse_moderation,
)
from chatservice.chat.presence import Roster

_log = logs.logger("chatservice.api")

#: Largest request body the API reads.
MAX_BODY = 64 * 1024
#: Most history messages one request returns.
MAX_HISTORY_LIMIT = 1000
#: Names in one page of ``GET /api/rooms/<room>/users``, by default and at most.
USERS_LIMIT = 500
MAX_USERS_LIMIT = 1000


@dataclass(frozen=True)
class Caller:
    """Who makes an API request.

    Attributes:
        actor: For the moderation log: ``api`` (the admin token), else the
            token's user's name.
        identity: The signed token's claims, if one was used.
    """

    actor: str
    identity: Identity | None = None

    @property
    def admin(self) -> bool:
        """Whether the caller may moderate: the admin token, or an admin's token."""
        return self.identity is None or self.identity.admin


class ApiError(Exception):
    """An HTTP error answer: status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(request: Request, status: int, body: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n"


def _args(request: Request) -> dict[bytes, list[bytes]]:
    return request.args or {}


def _arg(request: Request, name: str) -> str | None:
    values = _args(request).get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def _int_arg(request: Request, name: str, default: int, maximum: int) -> int:
    value = _arg(request, name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number") from None
    if not 0 <= number <= maximum:
        raise ApiError(400, f"{name} must be between 0 and {maximum}")
    return number


def _users_page(room: str, names: list[str], after: str | None, limit: int) -> dict[str, Any]:
    roster = Roster()
    for name in names:
        roster.add(name)
    page, cursor = roster.page(after, limit)
    payload: dict[str, Any] = {"room": room, "users": page, "count": len(roster)}
    if cursor is not None:
        payload["next"] = cursor
    if after is not None:
        payload["after"] = after
    return payload


class Api(Resource):
    """``/broadcast/<message>`` and ``/api/...``: one leaf resource per prefix.

    Args:
        hub: The chat: what the API does goes through it.
        log: Where the rooms' messages are kept (history, the rooms' list).
        presence: Who is in a room on other instances.
        auth: Checks users' tokens, and says which rooms are private.
        token: The admin token.
        prefix: ``broadcast`` or ``api``: which routes this resource serves.
    """

    isLeaf = True

    def __init__(
        self,
        hub: Hub,
        log: MessageLog,
        presence: PresenceRelay,
        auth: AuthPolicy,
        token: str,
        prefix: str,
    ) -> None:
        super().__init__()
        self.hub = hub
        self.log = log
        self.presence = presence
        self.auth = auth
        self._token = token.encode("utf-8")
        self.prefix = prefix

    def render(self, request: Request) -> bytes | int:
        """Route the request; JSON answers, errors with their status (docs/protocol.md)."""
        try:
            caller = self._authorize(request)
            result = self._route(request, caller)
        except ApiError as e:
            return _json(request, e.status, {"error": e.message})
        except ProtocolError as e:
            return _json(request, 400, {"error": e.reason})
        except Exception:
            _log.failure("API request {path} failed", path=request.path)
            return _json(request, 500, {"error": "internal server error"})
        if isinstance(result, Deferred):
            # (status, body), once the backplane has answered.
            result.addCallbacks(
                lambda answer: self._finish(request, *answer),
                lambda failure: self._failed(request, failure),
            )
            return NOT_DONE_YET
        if isinstance(result, tuple):  # (status, body)
            return _json(request, *result)
        return _json(request, 200, result)

    def _finish(self, request: Request, status: int, body: object) -> None:
        if not request.finished and not internals.request_gone(request):
            request.write(_json(request, status, body))
            request.finish()

    def _failed(self, request: Request, failure: Failure) -> None:
        # The application's refusal (a publish proxy's error or disconnect): 403.
        if failure.check(Refused, Dismissed):
            self._finish(request, 403, {"error": failure.value.reason, "code": failure.value.code})
            return
        if failure.check(ProtocolError) and failure.value.code == "unavailable":
            self._finish(request, 503, {"error": f"unavailable: {failure.value.reason}"})
            return
        if failure.check(ProtocolError):
            error = failure.value
            status = 404 if error.code.startswith("no-such") else 400
            self._finish(request, status, {"error": error.reason})
            return
        if failure.check(Unavailable):
            error = f"unavailable: {failure.getErrorMessage()}; try again soon"
        else:
            _log.failure("API request {path} failed", failure, path=request.path)
            error = "the request could not be carried out; try again"
        self._finish(request, 503, {"error": error})

    def _authorize(self, request: Request) -> Caller:
        header = request.getHeader(b"authorization") or b""
        given = header[7:].strip() if header[:7].lower() == b"bearer " else None
        if given is None:
            query = _args(request).get(b"token")
            given = query[0] if query else b""
        if hmac.compare_digest(given, self._token):
            return Caller("api")
        verifier = self.auth.verifier
        if verifier is not None and given.count(b".") == 2:
            try:
                identity = verifier.verify(given.decode("ascii", "replace"))
            except AuthError as e:
                request.setHeader(
                    b"WWW-Authenticate", b'Bearer realm="chatservice", error="invalid_token"'
                )
                raise ApiError(401, f"{e.code}: {e.reason}") from None
            return Caller(identity.name, identity)
        request.setHeader(b"WWW-Authenticate", b'Bearer realm="chatservice"')
        raise ApiError(401, "missing or wrong token")

    @staticmethod
    def _admin(caller: Caller) -> None:
        if not caller.admin:
            raise ApiError(403, "forbidden: only moderators (an admin token) may do that")

    def _readable(self, caller: Caller, room: str) -> None:
        """Whether `caller` may read `room` (its history, its members).

        Raises:
            ApiError: 403.
        """
        identity = caller.identity
        if identity is None or (identity.admin and not room.startswith(DM_PREFIX)):
            return
        if self.auth.is_private(room) and not identity.may_enter(room):
            raise ApiError(403, f"forbidden: #{room} is a private room")

    def _route(self, request: Request, caller: Caller) -> object:
        method = request.method
        parts = [p.decode("utf-8", "replace") for p in request.postpath or []]
        if parts and parts[-1] == "":
            parts.pop()
        if self.prefix == "broadcast":
            self._admin(caller)
            if method not in (b"GET", b"POST") or len(parts) != 1 or not parts[0].strip():
                raise ApiError(404, "use GET or POST /broadcast/<message>")
            message = parts[0].strip()
            return {"message": message, "delivered": self.hub.notice(message)}

        if parts == ["tokens"]:
            self._method(request, b"POST")
            self._admin(caller)
            return self._mint(request)
        if parts[:1] == ["users"] and len(parts) == 3 and parts[2] in ("kick", "ban", "mute"):
            self._method(request, b"POST")
            self._admin(caller)
            body = self._body(request, '{"reason": ..., "room": ..., "duration": ...}', True)
            command = parse_moderation(f"chat-{parts[2]}", {**body, "username": parts[1]})
            return self.hub.moderate(caller.actor, command).addCallback(lambda done: (200, done))
        if parts[:1] != ["rooms"]:
            raise ApiError(404, "no such API route")
        if len(parts) == 1:
            self._method(request, b"GET")
            return self.log.rooms().addCallback(
                lambda kept: (200, {"rooms": self._rooms(kept, caller)})
            )
        room = check_room(parts[1])
        what = parts[2:]
        if what == ["messages"]:
            self._method(request, b"POST")
            self._admin(caller)
            return self._publish(request, room)
        if len(what) == 2 and what[0] == "messages":
            self._method(request, b"DELETE")
            self._admin(caller)
            if not (what[1].isascii() and what[1].isdigit()) or not 0 < int(what[1]) < 2**63:
                raise ApiError(404, "no such message")
            return self.hub.delete_message(caller.actor, room, int(what[1])).addCallback(
                lambda done: (200, done)
            )
        self._readable(caller, room)
        if what == ["history"]:
            self._method(request, b"GET")
            limit = _int_arg(request, "limit", JOIN_HISTORY, MAX_HISTORY_LIMIT)
            since = _arg(request, "since")
            found: Deferred[tuple[list[StoredMessage], bool]]
            if since:
                since_id = _int_arg(request, "since", 0, 2**63 - 1)
                found = self.log.since(room, since_id, limit)
            else:
                found = self.log.recent(room, limit).addCallback(lambda m: (m, False))

            def answer(found: tuple[list[StoredMessage], bool]) -> tuple[int, object]:
                messages, recovered = found
                messages = messages[-limit:] if limit else []
                return 200, {
                    "room": room,
                    "messages": [m.payload() for m in messages],
                    "recovered": recovered,
                }

            return found.addCallback(answer)
        if what == ["users"]:
            self._method(request, b"GET")
            limit = _int_arg(request, "limit", USERS_LIMIT, MAX_USERS_LIMIT)
            after = _arg(request, "after") or None
            page = self.hub.users_page(room, after, limit)
            if page is not None:
                return page
            # Nobody here: members of other instances, if any.
            return self.presence.members(room).addCallback(
                lambda names: (200, _users_page(room, names, after, limit))
            )
        raise ApiError(404, "no such API route")

    @staticmethod
    def _method(request: Request, allowed: bytes) -> None:
        if request.method != allowed:
            request.setHeader(b"Allow", allowed)
            raise ApiError(405, f"use {allowed.decode()}")

    def _rooms(self, kept: list[str], caller: Caller) -> list[dict[str, Any]]:
        names = set(kept) | set(self.hub.live_rooms())
        auth = self.auth
        rooms = []
        for name in sorted(names):
            private = auth.is_private(name)
            if not private:
                entry: dict[str, Any] = {"room": name}
            elif caller.identity is None or (
                caller.identity.may_enter(name) and not name.startswith(DM_PREFIX)
            ):
                entry = {"room": name, "private": True}
            elif name.startswith(DM_PREFIX):
                continue  # somebody's direct messages: not even their name
            else:
                rooms.append({"room": name, "private": True})  # the name, nothing else
                continue
            entry["members"] = self.hub.member_count(name)
            rooms.append(entry)
        return rooms

    def _body(
        self, request: Request, shape: str = "{...}", allow_empty: bool = False
    ) -> dict[str, Any]:
        """The request's JSON object.

        Raises:
            ApiError: 413 over `MAX_BODY`; 400 not a JSON object.
        """
        length = int(request.getHeader(b"content-length") or 0)
        body = request.content.read(MAX_BODY + 1) if request.content else b""
        if length > MAX_BODY or len(body) > MAX_BODY:
            raise ApiError(413, f"the body is over {MAX_BODY} bytes")
        if allow_empty and not body.strip():
            return {}
        try:
            data = json.loads(body)
        except ValueError:
            raise ApiError(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"the body must be an object {shape}")
        return data

    def _mint(self, request: Request) -> tuple[int, object]:
        """``POST /api/tokens``: a signed token for a user, for operators without JWT code."""
        verifier = self.auth.verifier
        if verifier is None:
            raise ApiError(
                409, "tokens are off: start the service with --auth optional or required"
            )
        if not verifier.can_mint:
            raise ApiError(501, "this service cannot sign tokens: it has no --auth-secret")
        data = self._body(request)
        user, name, rooms = data.get("user"), data.get("name"), data.get("rooms", [])
        admin, ttl = data.get("admin", False), data.get("ttl", 3600)
        if not isinstance(user, str) or not user.strip():
            raise ApiError(400, "user must be a non-empty string (the token's sub)")
        if name is not None and not isinstance(name, str):
            raise ApiError(400, "name must be a string")
        if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
            raise ApiError(400, "rooms must be a list of room name patterns")
        if not isinstance(admin, bool):
            raise ApiError(400, "admin must be true or false")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise ApiError(400, "ttl must be a number of seconds")
        try:
            token, expires = verifier.mint(user, name, rooms, admin, float(ttl))
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        _log.info("API minted a token for user={user} admin={admin}", user=user, admin=admin)
        return 201, {"token": token, "user": user, "expires": iso_time(expires)}

    def _publish(self, request: Request, room: str) -> Deferred[tuple[int, object]]:
        data = self._body(request, '{"message": ..., "username": ...}')
        message, username = data.get("message"), data.get("username", "api")
        if not isinstance(message, str):
            raise ApiError(400, "message must be a string")
        name = clean_username(username)
        return self.hub.publish(room, name, message).addCallback(
            lambda stored: (201, stored.payload())
        )


class Health(Resource):
    """``/healthz``: open, for load balancers and monitors."""

    isLeaf = True

    def __init__(
        self,
        connections: Callable[[], int],
        uptime: Callable[[], float],
        problem: Callable[[], str | None] = lambda: None,
        workers: Callable[[], dict[str, object]] | None = None,
        webhooks: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        super().__init__()
        self._workers = workers
        self._webhooks = webhooks
        self._connections = connections
        self._uptime = uptime
        self._problem = problem
        #: Set when the service starts shutting down: then 503.
        self.shutting_down = False

    def render_GET(self, request: Request) -> bytes:
        """200 with the service's state, or 503 (shutting down, or a backplane problem)."""
        problem = self._problem()
        body: dict[str, object] = {"status": "ok"}
        code = 200
        if self.shutting_down:
            body["status"], code = "shutting-down", 503
        elif problem is not None:
            body.update(status="unavailable", reason=problem)
            code = 503
        body.update(connections=self._connections(), uptime=round(self._uptime(), 3))
        if self._workers is not None:
            body["workers"] = self._workers()
        if self._webhooks is not None:
            # Reported, never a reason for 503: a receiver that is down is
            # no reason to take this instance out of a load balancer.
            body["webhooks"] = self._webhooks()
        return _json(request, code, body)
