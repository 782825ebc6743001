"""``twistd chatservice``: the command line, turned into a `Config`."""

from __future__ import annotations

import base64
import os
import re
import secrets
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.application.service import IService
from twisted.python import usage

from chatservice.backplane.outbox import event_types
from chatservice.backplane.redis import parse_redis_url
from chatservice.chat.identity import Verifier
from chatservice.config import AUTH_MODES, BUNDLED_STATIC, LOG_LEVELS, Config
from chatservice.hooks.proxy import check_url
from chatservice.hooks.webhooks import check_secret
from chatservice.service import ChatService
from chatservice.web.policy import TrustedProxies, parse_origin_pattern
from chatservice.workers.listening import StartupError
from chatservice.workers.master import Master
from chatservice.workers.worker import WORKER_ENV, WorkerLink

DEFAULT_PORT = "8080"
_DEFAULTS = Config()
#: On/off options: a TOML boolean is taken for them too.
_SWITCHES = {"chat-compression"}


def endpoint_description(value: str) -> str:
    """Turn a ``--port`` value into a server endpoint string and check it.

    A bare number means TCP on all interfaces, like ``twistd web``.  Anything
    else must be a Twisted server endpoint string; it is parsed now (this
    reads TLS keys and inherited systemd sockets, but listens on nothing) so
    that a mistake is reported before the service starts.

    Raises:
        usage.UsageError: The value is not a usable endpoint.
    """
    value = value.strip()
    description = f"tcp:{value}" if value.isdigit() else value
    if WORKER_ENV in os.environ:
        # A worker of --workers: its master checked it, and listens on it.
        return description
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as e:  # any parse failure means the option is bad
        reason = str(e) or type(e).__name__
        if isinstance(e, IndexError) and description.startswith("systemd:"):
            reason = "no such socket was passed in by systemd (LISTEN_FDS)"
        raise usage.UsageError(f"--port {value!r}: {reason}") from None
    return description


def existing_directory(value: str) -> Path:
    """Check a ``--static`` value.

    Raises:
        usage.UsageError: It is not a readable directory.
    """
    path = Path(value).expanduser()
    if not path.is_dir():
        what = "no such directory" if not path.exists() else "not a directory"
        raise usage.UsageError(f"--static {value!r}: {what}")
    return path.resolve()


def log_level(value: str) -> str:
    """A ``--log-level`` value: one of `LOG_LEVELS`."""
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise usage.UsageError(f"--log-level {value!r}: must be one of {', '.join(LOG_LEVELS)}")
    return level


def number(option: str, value: str, kind: type[int] | type[float] = int, minimum: float = 1) -> Any:
    """Convert a numeric option, with a message naming the option.

    Raises:
        usage.UsageError: Not a number of that kind, or below `minimum`.
    """
    try:
        result = kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise usage.UsageError(f"--{option} {value!r}: must be {what}") from None
    if result < minimum:
        raise usage.UsageError(f"--{option} {value!r}: must be at least {minimum:g}")
    return result


def database_path(value: str) -> str:
    """Check a ``--database`` value: ``:memory:`` or a file in an existing directory.

    Raises:
        usage.UsageError: Its directory does not exist.
    """
    if value == ":memory:":
        return value
    path = Path(value).expanduser()
    if path.is_dir():
        raise usage.UsageError(f"--database {value!r}: is a directory")
    if not path.parent.is_dir():
        raise usage.UsageError(
            f"--database {value!r}: directory {str(path.parent)!r} does not exist"
        )
    return str(path)


#: The values of an on/off option (``--chat-compression``).
_SWITCH = {"on": True, "off": False}


def switch(option: str, value: str) -> bool:
    """Convert an ``on``/``off`` option.

    Raises:
        usage.UsageError: Neither.
    """
    try:
        return _SWITCH[value.strip().lower()]
    except KeyError:
        raise usage.UsageError(f"--{option} {value!r}: must be on or off") from None


def redis_url(value: str) -> str:
    """Check a ``--redis`` URL.

    Raises:
        usage.UsageError: It is malformed.
    """
    try:
        parse_redis_url(value.strip())
    except ValueError as e:
        raise usage.UsageError(f"--redis: {e}") from None
    return value.strip()


def workers(value: str) -> int:
    """Convert a ``--workers`` value: a number, or ``auto`` (the usable CPUs).

    Raises:
        usage.UsageError: Neither.
    """
    if value.strip().lower() == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    return int(number("workers", value.strip(), int, 1))


def proxy_network(value: str) -> str:
    """Check a ``--trusted-proxy`` network.

    Raises:
        usage.UsageError: It is not an address or a CIDR.
    """
    try:
        TrustedProxies([value])
    except ValueError:
        raise usage.UsageError(
            f"--trusted-proxy {value!r}: not an address or network (10.0.0.0/8, ::1)"
        ) from None
    return value.strip()


def origin_pattern(value: str) -> str:
    """Check an ``--allowed-origin`` pattern.

    Raises:
        usage.UsageError: It is malformed.
    """
    try:
        parse_origin_pattern(value)
    except ValueError as e:
        raise usage.UsageError(f"--allowed-origin {value!r}: {e}") from None
    return value.strip()


def auth_mode(value: str) -> str:
    """Check an ``--auth`` value.

    Raises:
        usage.UsageError: It is not off, optional or required.
    """
    mode = value.strip().lower()
    if mode not in AUTH_MODES:
        raise usage.UsageError(f"--auth {value!r}: must be one of {', '.join(AUTH_MODES)}")
    return mode


def public_key_file(value: str) -> str:
    """Check an ``--auth-public-key`` file: a PEM public key or a JWKS.

    Returns:
        Its absolute path (`chatservice.chat.identity.AuthPolicy` reads it again).

    Raises:
        usage.UsageError: It cannot be read or holds no usable public key.
    """
    path = Path(value).expanduser()
    try:
        text = path.read_text()
    except OSError as e:
        raise usage.UsageError(f"--auth-public-key {value!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        text = ""
    try:
        Verifier(public_key=text)
    except ValueError as e:
        reason = str(e) if text else "not a PEM public key or a JWKS file"
        raise usage.UsageError(f"--auth-public-key {value!r}: {reason}") from None
    return str(path.resolve())


#: Room names (chatservice.chat.messages.check_room) with glob characters.
_ROOM_PATTERN = re.compile(r"[A-Za-z0-9_.\-*?\[\]!]{1,64}")


def room_pattern(value: str, option: str = "private-room") -> str:
    """Check a ``--private-room`` (or ``--join-proxy-room``) pattern.

    Raises:
        usage.UsageError: It has characters no room name has, besides ``*?[]!``.
    """
    pattern = value.strip()
    if not _ROOM_PATTERN.fullmatch(pattern):
        raise usage.UsageError(
            f"--{option} {value!r}: not a room name pattern "
            "(letters, digits, '-_.' and the wildcards * ? [...])"
        )
    return pattern


def refresh_url(value: str) -> str:
    """Check an ``--auth-refresh-url``: an http(s) URL or a path on this site.

    Raises:
        usage.UsageError: Neither.
    """
    url = value.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if (
        parts is None
        or any(c.isspace() for c in url)
        or not (
            (parts.scheme in ("http", "https") and parts.netloc)
            or (not parts.scheme and not parts.netloc and url.startswith("/"))
        )
    ):
        raise usage.UsageError(
            f"--auth-refresh-url {value!r}: must be an http(s) URL or a path starting with /"
        )
    return url


def webhook_url(option: str, value: str) -> str:
    """Check a URL the service calls out to: http(s), with a host.

    Raises:
        usage.UsageError: It is not.
    """
    url = value.strip()
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        ok = False
    if not ok or any(c.isspace() for c in url):
        raise usage.UsageError(f"--{option} {value!r}: must be an http:// or https:// URL")
    return url


#: Units of a duration (``--webhook-max-age 24h``).
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(option: str, value: str, minimum: float = 0) -> float:
    """Convert a duration: seconds, or a number with s, m, h or d.

    Raises:
        usage.UsageError: Not a duration, or under `minimum` seconds.
    """
    text = str(value).strip().lower()
    unit = _UNITS.get(text[-1:], 0)
    try:
        seconds = float(text[:-1] if unit else text) * (unit or 1)
    except ValueError:
        raise usage.UsageError(
            f"--{option} {value!r}: must be a duration (seconds, or 30s, 15m, 24h, 7d)"
        ) from None
    if not seconds >= minimum or seconds == float("inf"):
        raise usage.UsageError(f"--{option} {value!r}: must be at least {minimum:g} seconds")
    return seconds


def proxy_url(option: str, value: str) -> str:
    """Check a ``--connect-proxy``, ``--publish-proxy`` or ``--join-proxy`` URL.

    Raises:
        usage.UsageError: It is not an http(s) URL.
    """
    try:
        return check_url(value)
    except ValueError as e:
        raise usage.UsageError(f"--{option} {value!r}: {e}") from None


#: An HTTP header name (RFC 9110 5.1: a token).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def header_name(value: str) -> str:
    """Check a ``--proxy-header`` name; lower case (as it is looked up and sent).

    Raises:
        usage.UsageError: It is not a header name.
    """
    name = value.strip()
    if not _HEADER_NAME.fullmatch(name):
        raise usage.UsageError(
            f"--proxy-header {value!r}: not a header name (Cookie, Authorization)"
        )
    return name.lower()


def proxy_timeout(value: str) -> float:
    """Check a ``--proxy-timeout``: seconds, positive.

    Raises:
        usage.UsageError: Not a positive number.
    """
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise usage.UsageError(f"--proxy-timeout {value!r}: must be a positive number of seconds")
    return seconds


#: Options that mean nothing with ``--auth off``.
_AUTH_ONLY = ("auth-secret", "auth-public-key", "auth-audience", "auth-issuer", "auth-refresh-url")

#: Numeric options: name, Config field, type, minimum, help.
_NUMBERS: list[tuple[str, str, type[int] | type[float], float, str]] = [
    ("history", "history", int, 0, "Messages kept per room (SQLite)."),
    ("max-message-size", "chat_max_message_size", int, 1,
     "Largest /chat frame or message in bytes, after decompression; larger: close 1009."),
    ("max-text-length", "max_text_length", int, 1, "Longest chat text, in characters."),
    ("rate", "rate", float, 0.001, "Frames per second a chat connection may send, sustained."),
    ("burst", "burst", int, 1, "Frames a chat connection may send at once."),
    ("max-connections", "max_connections", int, 1, "Open WebSocket connections, in all."),
    ("max-connections-per-address", "max_connections_per_address", int, 1,
     "Open WebSocket connections per client address."),
    ("max-send-buffer", "max_send_buffer", int, 1,
     "Bytes waiting to be sent to a chat client before it is closed as a slow consumer."),
    ("large-room", "large_room", int, 1,
     "Rooms with more members are large: joins and leaves are sent as counts and gathered "
     "changes, not one event each."),
    ("presence-interval", "presence_interval", float, 0.01,
     "Seconds between two presence events (chat-presence) of a large room, at least."),
    ("instance-ttl", "instance_ttl", float, 1,
     "With --redis: seconds after which an instance that stopped sending heartbeats "
     "(killed, lost) is taken for dead and its members leave."),
    ("shutdown-timeout", "shutdown_timeout", float, 0,
     "Seconds to wait at shutdown (SIGTERM, SIGINT) for clients to finish closing."),
    ("auth-leeway", "auth_leeway", float, 0,
     "Seconds of clock difference allowed for a token's exp and nbf."),
    ("auth-timeout", "auth_timeout", float, 0.1,
     "With --auth required: seconds a connection may stay unauthenticated before "
     "it is closed (1008)."),
]  # fmt: skip


class Options(usage.Options):
    """Options of ``twistd chatservice``."""

    synopsis = "[options]"
    longdesc = (
        "A WebSocket echo and chat service. Serves the web client at /, "
        "a WebSocket echo at /echo and a multi-room chat at /chat, on every --port."
    )

    optParameters: list[list[Any]] = [
        [
            "static",
            None,
            None,
            "Directory served at / (default: the web client bundled with chatservice).",
        ],
        [
            "log-level",
            None,
            "info",
            f"Lowest level logged: {', '.join(LOG_LEVELS)}. 'debug' logs message contents.",
        ],
        [
            "database",
            None,
            _DEFAULTS.database,
            "SQLite file holding the chat history; ':memory:' keeps nothing.",
        ],
        ["motd", None, "", "Message of the day, sent to every chat client on connect."],
        [
            "redis",
            None,
            None,
            "Share rooms, presence and history with every instance on this Redis or "
            "Valkey: redis://[:password@]host[:port][/db], rediss:// (TLS), "
            "unix:///path. Without it: one process, history in SQLite.",
        ],
        [
            "workers",
            None,
            "1",
            "Processes serving connections: a number, or auto (one per usable CPU). "
            "More than one needs --redis, through which the workers share rooms.",
        ],
        [
            "chat-compression",
            None,
            "on",
            "on or off: whether /chat accepts permessage-deflate (each message is "
            "compressed once for all members; off saves that CPU and sends more bytes).",
        ],
        [
            "config",
            "c",
            None,
            "A TOML file with any of these options, keyed by their long names "
            '(history = 200, port = ["8080"]); the command line wins.',
        ],
        [
            "admin-token",
            None,
            None,
            "Bearer token of the HTTP API (default: $CHATSERVICE_ADMIN_TOKEN, "
            "else a random one, logged at start).",
        ],
        [
            "auth",
            None,
            "off",
            "Signed tokens (JWT) saying who a client is: off, optional, or required "
            "(every /chat connection must send one). optional and required need "
            "--auth-secret or --auth-public-key.",
        ],
        [
            "auth-secret",
            None,
            None,
            "HS256 secret of the tokens, which also lets POST /api/tokens sign them "
            "(default: $CHATSERVICE_AUTH_SECRET).",
        ],
        [
            "auth-public-key",
            None,
            None,
            "A PEM public key (RSA: RS256/384/512, EC: ES256/384/512, Ed25519: EdDSA) or "
            "a JWKS file whose keys a token's kid picks; checks tokens signed elsewhere.",
        ],
        [
            "webhook",
            None,
            None,
            "Tell the application every chat event: POST them, signed (Standard Webhooks), "
            "to this http(s) URL (docs/hooks.md). Needs --webhook-secret.",
        ],
        [
            "webhook-secret",
            None,
            None,
            "The webhooks' signing secret, whsec_ and base64, as the receiver's "
            "standardwebhooks library takes it (default: $CHATSERVICE_WEBHOOK_SECRET).",
        ],
        [
            "webhook-events",
            None,
            "all",
            "The events sent, comma-separated: message.created, message.deleted, "
            "room.entered, room.left, user.online, user.offline, moderation, or the "
            "families message, room, user, all.",
        ],
        [
            "webhook-offline-delay",
            None,
            "5",
            "Seconds from a user's last room to user.offline: a reconnect within it sends nothing.",
        ],
        [
            "webhook-max-age",
            None,
            "24h",
            "An event the receiver has not taken after this long is dropped and counted "
            "(seconds, or 30m, 24h, 7d).",
        ],
        ["webhook-timeout", None, "10", "Seconds a webhook request may take."],
        ["auth-audience", None, None, "The aud a token must name."],
        ["auth-issuer", None, None, "The iss a token must have."],
        [
            "auth-refresh-url",
            None,
            None,
            "Told to clients: where the web client gets a fresh token before its "
            'token expires (GET with credentials, answering {"token": ...}).',
        ],
        [
            "connect-proxy",
            None,
            None,
            "URL the application is asked at (a JSON POST) who a new /chat connection is, "
            "from its headers (see --proxy-header); needs --auth optional or required. "
            "See docs/hooks.md.",
        ],
        [
            "publish-proxy",
            None,
            None,
            "URL the application is asked at before a chat message is stored: keep, "
            "rewrite or refuse it.",
        ],
        [
            "join-proxy",
            None,
            None,
            "URL the application is asked at before a connection joins a room "
            "(see --join-proxy-room).",
        ],
        ["proxy-timeout", None, "1.0", "Seconds a proxy has to answer; then: unavailable."],
    ] + [[name, None, str(getattr(_DEFAULTS, field)), help] for name, field, _, _, help in _NUMBERS]

    _given: set[str] = set()

    def __init__(self) -> None:
        super().__init__()
        self["port"] = []
        self["allowed-origin"] = []
        self["trusted-proxy"] = []
        self["private-room"] = []
        self["join-proxy-room"] = []
        self["proxy-header"] = []

    def opt_join_proxy_room(self, value: str) -> None:
        """A room the join proxy decides about: a name or a glob pattern (team-*); repeatable (default: every room)."""  # noqa: E501
        self["join-proxy-room"].append(room_pattern(value, "join-proxy-room"))

    def opt_proxy_header(self, value: str) -> None:
        """A request header the connect proxy is told of (Cookie, Authorization); repeatable. No other is passed on."""  # noqa: E501
        self["proxy-header"].append(header_name(value))

    def opt_private_room(self, value: str) -> None:
        """A room only users whose token grants it may enter: a name or a glob pattern (team-*); repeatable. Needs --auth optional or required."""  # noqa: E501
        self["private-room"].append(room_pattern(value))

    def opt_trusted_proxy(self, value: str) -> None:
        """A reverse proxy whose X-Forwarded-For (or Forwarded) header is believed: an address or network (127.0.0.1, 10.0.0.0/8); repeatable. From any other peer the header is ignored."""  # noqa: E501
        self["trusted-proxy"].append(proxy_network(value))

    def opt_allowed_origin(self, value: str) -> None:
        """A browser origin allowed on /chat besides the server's own (repeatable): https://chat.example.com, https://*.example.com (subdomains), http://localhost:* (any port), or * (any)."""  # noqa: E501
        self["allowed-origin"].append(origin_pattern(value))

    def opt_port(self, value: str) -> None:
        """Where to listen: a port number or a Twisted endpoint string (tcp:8080:interface=127.0.0.1, ssl:8443:privateKey=key.pem:certKey=cert.pem, systemd:domain=INET:index=0, unix:/run/chat.sock). Repeatable; every port serves the same site. [default: 8080]"""  # noqa: E501
        # (One line on purpose: usage.Options shows the docstring as the help.)
        self["port"].append(endpoint_description(value))

    opt_p = opt_port

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse the command line, over the ``--config`` file's values."""
        if options is None:
            options = sys.argv[1:]
        self.arguments = list(options)
        self._given = self._names_given(options)
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            # twistd would print the whole help text and the error; one line
            # saying what is wrong is what a user (or systemd's journal) needs.
            sys.stderr.write(f"twistd chatservice: error: {e} (see twistd chatservice --help)\n")
            raise SystemExit(2) from None

    def _names_given(self, arguments: list[str]) -> set[str]:
        """The long names of the options on the command line."""
        names = set()
        for argument in arguments:
            if argument == "--":
                break
            if argument.startswith("--"):
                name = argument[2:].split("=", 1)[0]
            elif argument.startswith("-") and len(argument) > 1:
                name = argument[1]
            else:
                continue
            names.add(self.synonyms.get(name, name))
        return names

    def _apply_config_file(self, path: str) -> None:
        """Take every setting of the TOML file the command line did not give.

        Raises:
            usage.UsageError: The file cannot be read, is not TOML, or has a key
                that is not an option or a value of the wrong kind.
        """
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f)
        except OSError as e:
            raise usage.UsageError(f"--config {path!r}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise usage.UsageError(f"--config {path!r}: not valid TOML: {e}") from None
        lists = {
            "port": endpoint_description,
            "allowed-origin": origin_pattern,
            "trusted-proxy": proxy_network,
            "private-room": room_pattern,
            "join-proxy-room": lambda value: room_pattern(value, "join-proxy-room"),
            "proxy-header": header_name,
        }
        scalars = {name for name, *_ in self.optParameters} - {"config"}
        for key, value in table.items():
            if key not in lists and key not in scalars:
                raise usage.UsageError(f"--config {path!r}: unknown key {key!r}")
            if key in self._given:
                continue
            if key in lists:
                values = [value] if isinstance(value, str | int) else value
                if not isinstance(values, list) or not all(
                    isinstance(v, str | int) and not isinstance(v, bool) for v in values
                ):
                    raise usage.UsageError(f"--config {path!r}: {key} must be a list of strings")
                self[key] = [lists[key](str(v)) for v in values]
            elif key in _SWITCHES and isinstance(value, bool):
                self[key] = "on" if value else "off"
            elif isinstance(value, str | int | float) and not isinstance(value, bool):
                self[key] = str(value)
            else:
                raise usage.UsageError(f"--config {path!r}: {key} must be a string or a number")

    def postOptions(self) -> None:
        """Check every value and build the frozen `Config` (a bad one: a one-line usage error)."""
        if self["config"]:
            self._apply_config_file(self["config"])
        ports = self["port"] or [endpoint_description(DEFAULT_PORT)]
        static = existing_directory(self["static"]) if self["static"] else BUNDLED_STATIC
        numbers = {
            field: number(name, self[name], kind, minimum)
            for name, field, kind, minimum, _ in _NUMBERS
        }
        worker_count = workers(str(self["workers"]))
        if (worker_count > 1 or str(self["workers"]).strip().lower() == "auto") and not self[
            "redis"
        ]:
            raise usage.UsageError(
                f"--workers {self['workers']}: needs --redis (the workers share rooms through it)"
            )
        auth = self._auth_settings()
        token = self["admin-token"] or os.environ.get("CHATSERVICE_ADMIN_TOKEN", "")
        generated = not token
        if generated:
            token = secrets.token_urlsafe(24)
        self.config = Config(
            admin_token=token,
            admin_token_generated=generated,
            ports=tuple(ports),
            static_dir=static,
            log_level=log_level(self["log-level"]),
            allowed_origins=tuple(self["allowed-origin"]),
            trusted_proxies=tuple(self["trusted-proxy"]),
            database=database_path(self["database"]),
            motd=self["motd"],
            redis=redis_url(self["redis"]) if self["redis"] else "",
            chat_compression=switch("chat-compression", self["chat-compression"]),
            workers=worker_count,
            **auth,
            **self._webhook_settings(),
            **self._proxy_settings(auth["auth"]),
            **numbers,
        )

    def _webhook_settings(self) -> dict[str, Any]:
        """The ``--webhook*`` options, as Config fields.

        Raises:
            usage.UsageError: A bad value, or options that need --webhook without it.
        """
        secret = self["webhook-secret"] or os.environ.get("CHATSERVICE_WEBHOOK_SECRET", "")
        url = webhook_url("webhook", self["webhook"]) if self["webhook"] else ""
        if not url:
            for name in ("webhook-secret", "webhook-events", "webhook-offline-delay",
                         "webhook-max-age", "webhook-timeout"):  # fmt: skip
                if name in self._given:
                    raise usage.UsageError(f"--{name}: needs --webhook")
            return {}
        if not secret:
            raise usage.UsageError(
                "--webhook: needs --webhook-secret (or $CHATSERVICE_WEBHOOK_SECRET): "
                "whsec_ and base64, e.g. whsec_" + base64.b64encode(os.urandom(24)).decode()
            )
        try:
            check_secret(secret)
            events = event_types(str(self["webhook-events"]))
        except ValueError as e:
            name = "webhook-secret" if "secret" in str(e) else "webhook-events"
            raise usage.UsageError(f"--{name}: {e}") from None
        return {
            "webhook_url": url,
            "webhook_secret": secret,
            "webhook_events": events,
            "webhook_offline_delay": duration(
                "webhook-offline-delay", self["webhook-offline-delay"]
            ),
            "webhook_max_age": duration("webhook-max-age", self["webhook-max-age"], 1),
            "webhook_timeout": duration("webhook-timeout", self["webhook-timeout"], 0.001),
        }

    def _proxy_settings(self, auth: str) -> dict[str, Any]:
        """The ``--*-proxy*`` and ``--proxy-*`` options, as Config fields (docs/hooks.md).

        Raises:
            usage.UsageError: A bad value, or options that do not go together.
        """
        urls = {
            name: proxy_url(name, self[name]) if self[name] else ""
            for name in ("connect-proxy", "publish-proxy", "join-proxy")
        }
        if urls["connect-proxy"] and auth == "off":
            raise usage.UsageError("--connect-proxy: needs --auth optional or required")
        if self["proxy-header"] and not urls["connect-proxy"]:
            raise usage.UsageError("--proxy-header: needs --connect-proxy")
        if self["join-proxy-room"] and not urls["join-proxy"]:
            raise usage.UsageError("--join-proxy-room: needs --join-proxy")
        return {
            "connect_proxy": urls["connect-proxy"],
            "publish_proxy": urls["publish-proxy"],
            "join_proxy": urls["join-proxy"],
            "join_proxy_rooms": tuple(self["join-proxy-room"]),
            "proxy_headers": tuple(dict.fromkeys(self["proxy-header"])),
            "proxy_timeout": proxy_timeout(str(self["proxy-timeout"])),
        }

    def _auth_settings(self) -> dict[str, Any]:
        """The ``--auth*`` and ``--private-room`` options, as Config fields.

        Raises:
            usage.UsageError: A bad value, or options that do not go together.
        """
        mode = auth_mode(self["auth"])
        if mode == "off":
            for name in _AUTH_ONLY:
                if self[name]:
                    raise usage.UsageError(f"--{name}: needs --auth optional or required")
            if self["private-room"]:
                raise usage.UsageError("--private-room: needs --auth optional or required")
        secret = self["auth-secret"] or os.environ.get("CHATSERVICE_AUTH_SECRET", "")
        public_key = public_key_file(self["auth-public-key"]) if self["auth-public-key"] else ""
        if mode != "off" and not (secret or public_key):
            raise usage.UsageError(
                f"--auth {mode}: needs --auth-secret (or $CHATSERVICE_AUTH_SECRET) "
                "or --auth-public-key"
            )
        return {
            "auth": mode,
            "auth_secret": secret,
            "auth_public_key": public_key,
            "auth_audience": self["auth-audience"] or "",
            "auth_issuer": self["auth-issuer"] or "",
            "auth_refresh_url": refresh_url(self["auth-refresh-url"])
            if self["auth-refresh-url"]
            else "",
            "private_rooms": tuple(self["private-room"]),
        }


def _one_line_startup_errors() -> None:
    """Print a `StartupError` that ends twistd as one line, not a traceback."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, tb: Any) -> None:
        if isinstance(error, StartupError):
            sys.stderr.write(f"{error}\n")
        else:
            previous(kind, error, tb)

    sys.excepthook = hook


def makeService(options: Options) -> IService:
    """Build the service twistd runs."""
    import txaio

    _one_line_startup_errors()

    # Autobahn logs through txaio, and says at info and warn level what our
    # own events already say (denied handshakes, closes with their reason):
    # let it speak below error only when debugging.
    level = options.config.log_level
    txaio.set_global_log_level(level if level in ("debug", "error") else "error")  # type: ignore[attr-defined]
    config = options.config
    arguments = list(options.arguments)
    service: ChatService | Master
    link = WorkerLink.from_environ()
    if link is not None:
        service = ChatService(config, worker=link)
    elif config.workers > 1:
        service = Master(config, arguments)
    else:
        service = ChatService(config)

    def reload_config() -> Config | None:
        again = Options()
        try:
            again.parseOptions(arguments)
        except SystemExit:  # the one-line error is already on stderr
            return None
        return again.config

    service.reload_config = reload_config
    from twisted.internet import reactor

    reactor.callWhenRunning(service.install_signal_handlers)
    return service
