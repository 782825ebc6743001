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
    """

    ports: tuple[str, ...] = ("tcp:8080",)
    static_dir: Path = BUNDLED_STATIC
    log_level: str = "info"
    echo_max_message_size: int = 16 * MiB
    open_handshake_timeout: float = 10.0
    auto_ping_interval: float = 30.0
    auto_ping_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.ports:
            raise ValueError("at least one port is needed")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(
                f"log level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}"
            )
        if self.echo_max_message_size <= 0:
            raise ValueError("the echo message size limit must be positive")
