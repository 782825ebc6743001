"""Text frames built once and written to any number of connections.

A chat event goes to every member of a room: it is encoded once per dialect
(`chatservice.chat.messages`) and framed once here, and the same bytes are written
to every member.  Members that negotiated permessage-deflate (RFC 7692) get the
same event compressed, also once: ``/chat`` accepts deflate only with
``server_no_context_takeover``, so every message is compressed on its own and
the compressed frame does not depend on what a connection was sent before.
One compressed form is kept per server window size, as gorilla/websocket's
``PreparedMessage`` keeps one per compression setting.

Events below `DEFLATE_MIN_SIZE` bytes stay uncompressed (RSV1 clear), which RFC
7692 allows for any message; so does an event that deflate would not shrink.
No Twisted and no Autobahn here: the wire format only (RFC 6455, 5.2).
"""

from __future__ import annotations

import struct
import zlib

#: Events shorter than this many bytes are never compressed: deflate saves too
#: little on them to be worth its CPU (see bench/deflate_bench.py).
DEFLATE_MIN_SIZE = 256

#: zlib settings: the default level and memory, raw deflate (no zlib header).
_LEVEL = 6
_MEM_LEVEL = 8
#: Smallest window RFC 7692 allows (and zlib supports for raw deflate).
MIN_WINDOW_BITS = 9
#: zlib's encoder never looks back further than its window less this.
_MIN_LOOKAHEAD = 262

_FIN_TEXT = 0x81
_FIN_RSV1_TEXT = 0xC1
#: What Z_SYNC_FLUSH ends with; RFC 7692 7.2.1 removes it from the message.
_SYNC_TAIL = b"\x00\x00\xff\xff"


def frame(first_byte: int, payload: bytes) -> bytes:
    """One unmasked frame (a server's) carrying `payload` whole."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first_byte, n)
    elif n < 65536:
        header = struct.pack("!BBH", first_byte, 126, n)
    else:
        header = struct.pack("!BBQ", first_byte, 127, n)
    return header + payload


def window_for(size: int, window_bits: int) -> int:
    """The window to compress a message of `size` bytes with, for a receiver's `window_bits`.

    A window larger than the message compresses it no better, only more slowly
    (zlib sets up the whole window for every message); and a message
    compressed with a smaller window than the receiver's decodes the same.
    """
    return max(MIN_WINDOW_BITS, min(window_bits, (size + _MIN_LOOKAHEAD).bit_length()))


def deflate(payload: bytes, bits: int) -> bytes:
    """`payload` compressed as one permessage-deflate message, without context.

    Args:
        payload: The message.
        bits: The window size (9-15), at most the receiver's
            ``server_max_window_bits`` (see `window_for`).

    Returns:
        The compressed message, the flush marker removed (RFC 7692, 7.2.1).
    """
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, -bits, _MEM_LEVEL)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[: -len(_SYNC_TAIL)]


class TextFrame:
    """A text message framed once, plain and (on demand) compressed.

    Attributes:
        payload: The message.
        plain: The whole frame, uncompressed: for every connection without
            permessage-deflate.
        for_window: The frame for a connection with permessage-deflate, by the
            connection's server window bits, as far as `deflated` has made it:
            a connection looks here first (one dict lookup per delivery).
    """

    __slots__ = ("for_window", "payload", "plain")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.plain = frame(_FIN_TEXT, payload)
        self.for_window: dict[int, bytes] = {}

    def deflated(self, window_bits: int) -> bytes:
        """The frame for a connection with permessage-deflate and no server context takeover.

        Compressed at most once per window size, however many connections
        ask; `plain` when the message is short or deflate would not shrink it.

        Args:
            window_bits: The connection's ``server_max_window_bits`` (9-15).
        """
        wire = self.for_window.get(window_bits)
        if wire is None:
            wire = self.for_window[window_bits] = self._compressed(window_bits)
        return wire

    def _compressed(self, window_bits: int) -> bytes:
        size = len(self.payload)
        if size < DEFLATE_MIN_SIZE:
            return self.plain
        # What suits a smaller window suits every larger one: share it.
        bits = window_for(size, window_bits)
        wire = self.for_window.get(bits)
        if wire is None:
            data = deflate(self.payload, bits)
            wire = frame(_FIN_RSV1_TEXT, data) if len(data) < size else self.plain
            self.for_window[bits] = wire
        return wire
