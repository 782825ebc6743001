"""The service's running totals: plain ints, bumped where things happen.

The WebSocket endpoints and the chat's hub count here (no lock, no label
lookup: ``/echo`` throughput and chat fan-out must not pay for metrics);
``/metrics`` reads them only when scraped (`chatservice.web.metrics`).  The
label values are small fixed sets.
"""

from __future__ import annotations

#: Why a WebSocket handshake was refused: a small fixed set (label values).
REJECT_ORIGIN = "origin"
REJECT_SUBPROTOCOL = "subprotocol"
REJECT_LIMIT = "limit"
REJECT_ERROR = "error"
REJECT_REASONS = (REJECT_ORIGIN, REJECT_SUBPROTOCOL, REJECT_LIMIT, REJECT_ERROR)

#: How a sign-in (chat-auth, ?token=) ended: ok, a token error code, or refused
#: (a valid token not taken: banned, its name another user's, ...).
SIGN_IN_RESULTS = (
    "ok",
    "token-expired",
    "token-not-yet-valid",
    "token-wrong-audience",
    "token-wrong-issuer",
    "token-invalid",
    "token-claims",
    "refused",
)
#: Why a connection was closed for its identity: no token in time, or it expired.
AUTH_CLOSES = ("no-token", "token-expired")
#: What moderators did (label values).
MODERATION_ACTIONS = ("kick", "ban", "mute", "delete")


class Counters:
    """One endpoint's running totals: plain ints, only touched in the reactor thread.

    Bytes are message payloads as the application sees them (after
    decompression, without WebSocket framing).
    """

    __slots__ = (
        "accepted",
        "auth_closes",
        "bytes_received",
        "bytes_sent",
        "flood_closes",
        "messages_received",
        "messages_sent",
        "moderation",
        "rate_limited",
        "rejected",
        "sign_ins",
        "slow_consumer_drops",
    )

    def __init__(self) -> None:
        self.accepted = 0
        self.messages_received = 0
        self.messages_sent = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        #: Refused handshakes by reason (one of `REJECT_REASONS`).
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        # Chat only.
        self.rate_limited = 0
        self.flood_closes = 0
        self.slow_consumer_drops = 0
        #: Sign-ins by result (one of `SIGN_IN_RESULTS`).
        self.sign_ins = dict.fromkeys(SIGN_IN_RESULTS, 0)
        #: Connections closed for their identity (one of `AUTH_CLOSES`).
        self.auth_closes = dict.fromkeys(AUTH_CLOSES, 0)
        #: Moderators' actions ordered here (one of `MODERATION_ACTIONS`).
        self.moderation = dict.fromkeys(MODERATION_ACTIONS, 0)
