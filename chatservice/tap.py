"""``twistd chatservice``: the command line, turned into a `Config`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from chatservice.config import BUNDLED_STATIC, LOG_LEVELS, Config
from chatservice.service import ChatService, StartupError

DEFAULT_PORT = "8080"


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
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise usage.UsageError(f"--log-level {value!r}: must be one of {', '.join(LOG_LEVELS)}")
    return level


class Options(usage.Options):
    """Options of ``twistd chatservice``."""

    synopsis = "[options]"
    longdesc = (
        "A WebSocket echo and chat service. Serves the web client at /, "
        "a WebSocket echo at /echo, on every --port."
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
    ]

    def __init__(self) -> None:
        super().__init__()
        self["port"] = []

    def opt_port(self, value: str) -> None:
        """Where to listen: a port number or a Twisted endpoint string (tcp:8080:interface=127.0.0.1, ssl:8443:privateKey=key.pem:certKey=cert.pem, systemd:domain=INET:index=0, unix:/run/chat.sock). Repeatable; every port serves the same site. [default: 8080]"""  # noqa: E501
        # (One line on purpose: usage.Options shows the docstring as the help.)
        self["port"].append(endpoint_description(value))

    opt_p = opt_port

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            # twistd would print the whole help text and the error; one line
            # saying what is wrong is what a user (or systemd's journal) needs.
            sys.stderr.write(f"twistd chatservice: error: {e} (see twistd chatservice --help)\n")
            raise SystemExit(2) from None

    def postOptions(self) -> None:
        ports = self["port"] or [endpoint_description(DEFAULT_PORT)]
        static = existing_directory(self["static"]) if self["static"] else BUNDLED_STATIC
        self.config = Config(
            ports=tuple(ports),
            static_dir=static,
            log_level=log_level(self["log-level"]),
        )


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
    return ChatService(options.config)
