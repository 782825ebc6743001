"""Calling a proxy: one JSON POST, one JSON answer (docs/hooks.md, "Decisions in: proxies").

A proxy is an HTTP endpoint of the operator's application that decides for
the chat.  Every call is a POST of one JSON object; every answer is one JSON
object with exactly one of ``result`` (go ahead, with what the result says),
``error`` (``{"code", "message"}``: refused) or ``disconnect`` (``{"code":
4000-4999, "reason"}``: close the connection).  `parse_answer` turns the body
into one of `Result`, `Refusal`, `Disconnect`; `ProxyClient` makes the call.
Anything else (no answer in time, an error status, a body that is not the
documented JSON) raises `BadAnswer`: the caller refuses the action as
unavailable, never takes it silently.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import treq
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    ensureDeferred,
    succeed,
)
from twisted.internet.interfaces import IConsumer
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from chatservice import __version__

#: Largest answer body read; a longer one is a bad answer.
MAX_ANSWER = 64 * 1024
#: Longest ``error.code`` and ``error.message`` taken.
MAX_CODE = 64
MAX_MESSAGE = 1000
#: Longest ``disconnect.reason`` kept, in UTF-8 bytes (what a close frame holds).
MAX_REASON = 123
#: Connections kept open to each proxy host (more are opened under load, and closed after).
PERSISTENT_PER_HOST = 256
_CODE = re.compile(r"[A-Za-z0-9_.\-]+")
_HEADERS = Headers(
    {b"Accept": [b"application/json"], b"User-Agent": [f"chatservice/{__version__}".encode()]}
)


@dataclass(frozen=True, slots=True)
class Result:
    """``{"result": {...}}``: go ahead; `fields` say with what (each proxy's own)."""

    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Refusal:
    """``{"error": {"code", "message"}}``: the action is refused; the client is told so."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    """``{"disconnect": {"code", "reason"}}``: close the connection with `code` (4000-4999)."""

    code: int
    reason: str


Answer = Result | Refusal | Disconnect


class BadAnswer(Exception):
    """The proxy gave no usable answer (timeout, status, body); `reason` says which, for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def redacted(url: str) -> str:
    """`url` without what may be a secret (a password, the query): for the logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def check_url(url: str) -> str:
    """A proxy URL: ``http://`` or ``https://`` with a host.

    Raises:
        ValueError: Anything else.
    """
    value = url.strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(c.isspace() or ord(c) < 32 for c in value)
    ):
        raise ValueError("must be an http:// or https:// URL")
    return value


def parse_answer(body: bytes) -> Answer:
    """What a proxy's answer body says.

    Raises:
        BadAnswer: It is not a JSON object with exactly one of ``result``,
            ``error`` or ``disconnect``, each of its documented shape.
    """
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):  # (UnicodeDecodeError, JSONDecodeError; too deep)
        raise BadAnswer("the answer is not JSON") from None
    if b"\\u" in body or b"\xed" in body:
        # A lone surrogate (``"\\ud800"``) is no text: it could be neither
        # sent to a client nor stored.
        try:
            json.dumps(answer, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, RecursionError):
            raise BadAnswer("the answer has a string that is not valid Unicode") from None
    if not isinstance(answer, dict):
        raise BadAnswer("the answer is not a JSON object")
    given = [key for key in ("result", "error", "disconnect") if key in answer]
    if len(given) != 1:
        raise BadAnswer(
            "the answer must have exactly one of result, error, disconnect; it has "
            + (", ".join(given) or "none")
        )
    value = answer[given[0]]
    if not isinstance(value, dict):
        raise BadAnswer(f"{given[0]} must be an object")
    if given[0] == "result":
        return Result(value)
    if given[0] == "error":
        code, message = value.get("code"), value.get("message", "")
        if not isinstance(code, str) or len(code) > MAX_CODE or not _CODE.fullmatch(code):
            raise BadAnswer(f"error.code must be a short code (letters, digits, -_.), not {code!r}")
        if not isinstance(message, str) or len(message) > MAX_MESSAGE:
            raise BadAnswer(f"error.message must be a string of at most {MAX_MESSAGE} characters")
        return Refusal(code, message)
    code, reason = value.get("code"), value.get("reason", "")
    if isinstance(code, bool) or not isinstance(code, int) or not 4000 <= code <= 4999:
        raise BadAnswer(f"disconnect.code must be a whole number 4000-4999, not {code!r}")
    if not isinstance(reason, str):
        raise BadAnswer("disconnect.reason must be a string")
    # A close frame's reason is at most 123 bytes (RFC 6455 5.5): cut between characters.
    return Disconnect(code, reason.encode("utf-8")[:MAX_REASON].decode("utf-8", "ignore"))


@implementer(IBodyProducer)
class WholeBody:
    """A request body written at once, in the same write as the request's headers.

    (treq's default producer writes it a reactor turn later: a second small
    TCP segment, which Nagle's algorithm holds until the proxy's delayed ACK,
    up to 40 ms on Linux, for every call.)
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class ProxyClient:
    """POSTs to proxies with treq, over persistent connections, within a time limit.

    Args:
        reactor: Connects, and times the calls out.
        timeout: Seconds a call may take, from connecting to the answer's last byte.
    """

    def __init__(self, reactor: Any, timeout: float) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError("the timeout must be positive")
        self._reactor = reactor
        self.timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = PERSISTENT_PER_HOST
        agent = Agent(
            reactor,
            contextFactory=BrowserLikePolicyForHTTPS(),  # (Agent's default, said: verified)
            connectTimeout=timeout,
            pool=self._pool,
        )
        # A proxy's cookies are never kept, and so never sent back with another call.
        jar = IndexableCookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        self._http = HTTPClient(agent, cookiejar=jar, data_to_body_producer=WholeBody)

    def call(self, url: str, request: dict[str, Any]) -> Deferred[Answer]:
        """POST `request` as JSON to `url`; fires with the answer.

        Fails with `BadAnswer` when there is no usable answer within the timeout.
        """
        calling = ensureDeferred(self._call(url, request))
        calling.addTimeout(self.timeout, self._reactor)
        calling.addErrback(self._timed_out)
        return calling

    async def _call(self, url: str, request: dict[str, Any]) -> Answer:
        try:
            response: IResponse = await self._http.post(
                url,
                json=request,
                headers=_HEADERS,
                allow_redirects=False,
                reactor=self._reactor,
            )
        except (CancelledError, TimeoutError):
            raise
        except Exception as e:
            raise BadAnswer(f"cannot reach it: {type(e).__name__}: {e}") from None
        body = await self._read(response)
        if not 200 <= response.code < 300:
            raise BadAnswer(f"it answered HTTP {response.code}")
        return parse_answer(body)

    async def _read(self, response: IResponse) -> bytes:
        """The body (read even after an error status: the connection is then reused)."""
        pieces: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > MAX_ANSWER:
                raise BadAnswer(f"the answer is over {MAX_ANSWER} bytes")
            pieces.append(data)

        try:
            await treq.collect(response, collect)
        except BadAnswer:
            raise
        except (CancelledError, TimeoutError):
            raise
        except Exception as e:
            raise BadAnswer(f"the answer broke off: {type(e).__name__}") from None
        return b"".join(pieces)

    def _timed_out(self, failure: Any) -> Any:
        if failure.check(TimeoutError, CancelledError):
            raise BadAnswer(f"no answer within {self.timeout:g}s")
        return failure

    def close(self) -> Deferred[None]:
        """Close the connections kept open (at shutdown)."""
        return self._pool.closeCachedConnections()
