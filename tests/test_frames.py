"""Frames built once for many connections, plain and deflated (chatservice.web.frames)."""

from __future__ import annotations

import json
import os
import zlib

import pytest
from memory import server_frames

from chatservice.web.frames import DEFLATE_MIN_SIZE, TextFrame

RSV1 = 0x40


def inflate(payload: bytes, window_bits: int = 15) -> bytes:
    """Decode one permessage-deflate message as a client without context does."""
    decompressor = zlib.decompressobj(-window_bits)
    return decompressor.decompress(payload + b"\x00\x00\xff\xff")


def chat_event(text: str) -> bytes:
    return json.dumps(
        {"type": "chat-message", "payload": {"id": 7, "room": "lobby", "message": text}},
        separators=(",", ":"),
    ).encode()


def only_frame(wire: bytes) -> tuple[int, bytes]:
    frames, rest = server_frames(wire)
    assert len(frames) == 1 and rest == b""
    return frames[0]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_plain_frames_carry_the_payload_in_every_length_form(size: int) -> None:
    payload = b"x" * size
    first, body = only_frame(TextFrame(payload).plain)
    assert first == 0x81  # FIN, text, RSV1 clear
    assert body == payload


def test_short_events_are_never_compressed() -> None:
    frame = TextFrame(chat_event("hi"))
    assert len(frame.payload) < DEFLATE_MIN_SIZE
    assert frame.deflated(15) is frame.plain


def test_a_long_event_is_compressed_once_for_every_member() -> None:
    payload = chat_event("the quick brown fox jumps over the lazy dog " * 40)
    frame = TextFrame(payload)
    wire = frame.deflated(15)
    first, body = only_frame(wire)
    assert first == 0x81 | RSV1
    assert inflate(body) == payload
    assert len(wire) < len(frame.plain) / 3
    # Compressed once: every member gets the very same bytes object.
    assert frame.deflated(15) is wire
    # A member whose window is larger than the message needs shares them too.
    assert frame.deflated(14) is wire


def test_a_small_server_window_is_respected() -> None:
    # Repeats 600 bytes apart: a 15-bit window reaches back to them, a 9-bit
    # one (512 bytes, what a client may ask for) must not.  (zlib's decoder
    # does not enforce the window within one message, so the sizes tell.)
    block = os.urandom(300).hex().encode()
    payload = block * 3
    frame = TextFrame(payload)
    _, wide = only_frame(frame.deflated(15))
    _, narrow = only_frame(frame.deflated(9))
    assert len(wide) < len(payload) / 4
    assert len(narrow) > len(payload) / 3
    assert inflate(narrow, 9) == payload
    assert inflate(wide) == payload


def test_incompressible_payloads_go_plain() -> None:
    frame = TextFrame(os.urandom(2000))
    assert frame.deflated(15) is frame.plain


def test_messages_are_independent_so_a_client_keeping_context_decodes_them_too() -> None:
    # A client that ignores server_no_context_takeover keeps one decompressor
    # for the whole connection: every message must still decode.
    decompressor = zlib.decompressobj(-15)
    texts = [f"message {n}: " + "lorem ipsum dolor sit amet " * (10 + n) for n in range(20)]
    for text in texts:
        payload = chat_event(text)
        _, body = only_frame(TextFrame(payload).deflated(15))
        assert decompressor.decompress(body + b"\x00\x00\xff\xff") == payload
