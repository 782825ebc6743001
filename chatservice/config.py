"""The service's settings as one frozen value; no Twisted here.

`tap.py` turns the command line into a `Config`; everything else reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The web client bundled with the package, served at ``/`` by default.
BUNDLED_STATIC = Path(__file__).resolve().parent / "static"

MiB = 1024 * 1024

LOG_LEVELS = ("debug", "info", "warn", "error")

#: The values of ``--auth``.
AUTH_MODES = ("off", "optional", "required")


@dataclass(frozen=True)
class Config:
    """Everything the service needs to know to run.

    Attributes:
        ports: Twisted server endpoint strings; every one serves the same site.
        static_dir: Directory served at ``/``.
        log_level: Lowest level of events written to the log; ``debug``
            adds message contents.
        echo_max_message_size: Largest message ``/echo`` accepts, in bytes,
            after decompression; larger ones close with 1009.
        open_handshake_timeout: Seconds a client has to finish the opening
            handshake.
        auto_ping_interval: Seconds between pings to an idle connection
            (0 disables).
        auto_ping_timeout: Seconds to wait for the pong before closing.
        allowed_origins: ``--allowed-origin`` patterns for ``/chat`` (besides
            same-host origins and clients that send none).
        trusted_proxies: ``--trusted-proxy`` networks: only from these peers is
            ``X-Forwarded-For`` (or ``Forwarded``) believed, for the
            per-address limit and the logs.
        history: Messages kept per room.
        database: SQLite file of the history; ``:memory:`` keeps nothing.
        chat_max_message_size: Largest ``/chat`` frame or message, in bytes,
            after decompression; larger ones close with 1009.
        max_text_length: Longest chat text, in characters.
        rate: Frames per second a chat connection may send, sustained.
        burst: Frames a chat connection may send at once.
        max_connections: Open WebSocket connections, in all.
        max_connections_per_address: Open WebSocket connections per client address.
        max_send_buffer: Bytes waiting to be written to a chat connection
            before it is closed as a slow consumer.
        chat_compression: Whether ``/chat`` accepts permessage-deflate (then
            every room message is compressed once, for every member that
            negotiated it); ``/echo`` always does.
        large_room: Rooms with more members than this are large: no single
            join and leave events, presence changes gathered instead.
        presence_interval: Seconds between two presence events of a large room.
        motd: Message of the day, in the chat welcome.
        redis: A Redis (or Valkey) URL: instances on the same Redis share
            rooms, presence and history; "" is one process with SQLite.
        instance_ttl: Seconds after which an instance (with `redis`) that
            stopped sending heartbeats is taken for dead: its members leave.
        shutdown_timeout: Seconds to wait at shutdown for clients to finish
            their closing handshakes.
        workers: Processes serving connections; more than one needs `redis`
            (a master listens, the workers accept; see chatservice.workers.master).
        admin_token: The HTTP API's bearer token.
        admin_token_generated: Whether `admin_token` was made up at start
            (then it is logged once, so the API is never open by accident).
        auth: ``off`` (no tokens, every room public), ``optional`` (a client
            may prove who it is with a signed token) or ``required``.
        auth_secret: HS256 secret of the tokens ("" for none); also signs
            the tokens of ``POST /api/tokens``.
        auth_public_key: Path of a PEM public key or JWKS file that checks
            RS/ES/EdDSA tokens ("" for none); read by
            `chatservice.chat.identity.AuthPolicy.from_config`.
        auth_audience: The ``aud`` a token must name ("" to check none).
        auth_issuer: The ``iss`` a token must have ("" to check none).
        auth_leeway: Seconds of clock difference allowed for ``exp`` and ``nbf``.
        auth_timeout: With ``required``: seconds a connection may stay
            unauthenticated before it is closed with 1008.
        auth_refresh_url: Told to clients in the welcome: where the web
            client gets a fresh token ("" for nowhere).
        private_rooms: ``--private-room`` glob patterns: rooms only users
            whose token grants them may enter.
        webhook_url: Where the application hears the chat's events
            (docs/hooks.md); "" for nowhere.
        webhook_secret: The Standard Webhooks signing secret (``whsec_...``).
        webhook_events: The event types sent (``--webhook-events``).
        webhook_offline_delay: Seconds from a person's last room to their
            ``user.offline`` (a reconnect within it sends nothing).
        webhook_max_age: Seconds after which an event the receiver has not
            taken is dropped (and counted).
        webhook_timeout: Seconds a webhook request may take.
        connect_proxy: URL the application is asked at who a new ``/chat``
            connection is ("" for none; docs/hooks.md).
        publish_proxy: URL the application is asked at before a message is stored.
        join_proxy: URL the application is asked at before a join.
        join_proxy_rooms: ``--join-proxy-room`` glob patterns: the rooms the
            join proxy decides about (every room if none).
        proxy_headers: ``--proxy-header`` names: the request headers the
            connect proxy is told of.
        proxy_timeout: Seconds a proxy has to answer.
    """

    ports: tuple[str, ...] = ("tcp:8080",)
    static_dir: Path = BUNDLED_STATIC
    log_level: str = "info"
    echo_max_message_size: int = 16 * MiB
    open_handshake_timeout: float = 10.0
    auto_ping_interval: float = 30.0
    auto_ping_timeout: float = 30.0
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    history: int = 100
    database: str = "chatservice.sqlite3"
    chat_max_message_size: int = 64 * 1024
    max_text_length: int = 2000
    rate: float = 10.0
    burst: int = 30
    max_connections: int = 10000
    max_connections_per_address: int = 100
    max_send_buffer: int = 1 * MiB
    chat_compression: bool = True
    large_room: int = 500
    presence_interval: float = 1.0
    motd: str = ""
    redis: str = ""
    instance_ttl: float = 15.0
    workers: int = 1
    shutdown_timeout: float = 5.0
    admin_token: str = ""
    admin_token_generated: bool = False
    auth: str = "off"
    auth_secret: str = ""
    auth_public_key: str = ""
    auth_audience: str = ""
    auth_issuer: str = ""
    auth_leeway: float = 10.0
    auth_timeout: float = 5.0
    auth_refresh_url: str = ""
    private_rooms: tuple[str, ...] = ()
    webhook_url: str = ""
    webhook_secret: str = ""
    webhook_events: frozenset[str] = frozenset()
    webhook_offline_delay: float = 5.0
    webhook_max_age: float = 24 * 3600.0
    webhook_timeout: float = 10.0

    @property
    def hooks(self) -> frozenset[str]:
        """The event types kept for the application: none without a webhook."""
        return self.webhook_events if self.webhook_url else frozenset()

    connect_proxy: str = ""
    publish_proxy: str = ""
    join_proxy: str = ""
    join_proxy_rooms: tuple[str, ...] = ()
    proxy_headers: tuple[str, ...] = ()
    proxy_timeout: float = 1.0

    def __post_init__(self) -> None:
        if not self.ports:
            raise ValueError("at least one port is needed")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(
                f"log level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}"
            )
        for name in (
            "echo_max_message_size",
            "chat_max_message_size",
            "max_text_length",
            "rate",
            "burst",
            "max_connections",
            "max_connections_per_address",
            "max_send_buffer",
            "large_room",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.workers > 1 and not self.redis:
            raise ValueError("more than one worker needs redis")
        if self.instance_ttl < 1:
            raise ValueError("instance-ttl must be at least 1 second")
        if self.presence_interval < 0.01:
            raise ValueError("presence-interval must be at least 0.01 seconds")
        if self.history < 0:
            raise ValueError("history must not be negative")
        if self.auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {self.auth!r}")
        if self.auth != "off" and not (self.auth_secret or self.auth_public_key):
            raise ValueError(f"auth {self.auth} needs an auth-secret or an auth-public-key")
        if self.private_rooms and self.auth == "off":
            raise ValueError("private-room needs auth optional or required")
        if self.auth_leeway < 0:
            raise ValueError("auth-leeway must not be negative")
        if self.auth_timeout <= 0:
            raise ValueError("auth-timeout must be positive")
        if self.webhook_url and not self.webhook_secret:
            raise ValueError("webhook needs a webhook-secret")
        if self.connect_proxy and self.auth == "off":
            raise ValueError("connect-proxy needs auth optional or required")
        if self.join_proxy_rooms and not self.join_proxy:
            raise ValueError("join-proxy-room needs join-proxy")
        if self.proxy_headers and not self.connect_proxy:
            raise ValueError("proxy-header needs connect-proxy")
        if not 0 < self.proxy_timeout < float("inf"):
            raise ValueError("proxy-timeout must be positive")
