"""How much a chat connection may send: rate limits, plain classes without I/O.

Time comes from an injected ``seconds()`` so tests drive it with a Clock.
Who may connect at all (origins, proxies, connection limits) is the web
layer's: `chatservice.web.policy`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one token per frame.

    Args:
        rate: Tokens added per second.
        burst: The bucket's size (and how full it starts).
        seconds: The clock.
    """

    __slots__ = ("_burst", "_last", "_rate", "_seconds", "_tokens")

    def __init__(self, rate: float, burst: float, seconds: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._seconds = seconds
        self._last = seconds()

    def take(self) -> bool:
        """Take a token if there is one."""
        now = self._seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class FloodGuard:
    """Counts dropped frames; says when there were too many within a window.

    Args:
        limit: More drops than this within `window` seconds is flooding.
        window: Seconds.
        seconds: The clock.
    """

    __slots__ = ("_drops", "_limit", "_seconds", "_window")

    def __init__(self, limit: int, window: float, seconds: Callable[[], float]) -> None:
        self._limit = limit
        self._window = window
        self._seconds = seconds
        # Made on the first drop: most connections never have one.
        self._drops: deque[float] | None = None

    def dropped(self) -> bool:
        """Count a drop; True when the count within the window is over the limit."""
        now = self._seconds()
        if self._drops is None:
            self._drops = deque(maxlen=self._limit + 1)
        self._drops.append(now)
        while self._drops and self._drops[0] <= now - self._window:
            self._drops.popleft()
        return len(self._drops) > self._limit
