"""Telling systemd how the service is doing (``Type=notify``), without libsystemd.

sd_notify(3): datagrams like ``READY=1`` to the Unix socket in ``$NOTIFY_SOCKET``
(``@`` at the start means the abstract namespace).  Without that variable (not
run by systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from chatservice import logs

_log = logs.logger("chatservice.systemd")


class Notifier:
    """Sends sd_notify messages, if systemd asked for them.

    Args:
        environ: Where ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
            ``WATCHDOG_PID`` are read (the process environment by default).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        watchdog_pid = env.get("WATCHDOG_PID")
        usec = env.get("WATCHDOG_USEC", "")
        for_us = watchdog_pid is None or watchdog_pid == str(os.getpid())
        #: Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None.
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and for_us else None

    def notify(self, state: str) -> bool:
        """Send one state (``READY=1``, ``STOPPING=1``, ``WATCHDOG=1``); True if sent."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(state.encode("utf-8"), self.address)
        except OSError as e:
            _log.warn("could not notify systemd of {state}: {error}", state=state, error=e)
            return False
        return True
