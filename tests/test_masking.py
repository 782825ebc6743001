"""Unmasking client frames (chatservice.web.masking), against Autobahn's own masker."""

from __future__ import annotations

import itertools
import os

import autobahn.websocket.protocol as autobahn_protocol
import pytest
from autobahn.nvx._xormasker import create_xor_masker as autobahn_masker

import chatservice.web.endpoint  # noqa: F401  (installs the masker)
from chatservice.web.masking import SMALL_FRAME, SmallFrameMasker, create_xor_masker


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 1023, 1024])
@pytest.mark.parametrize("pieces", [1, 2, 7])
def test_small_frames_unmask_as_autobahn_does_whole_or_in_pieces(size: int, pieces: int) -> None:
    mask = os.urandom(4)
    payload = os.urandom(size)
    expected = autobahn_masker(mask, size).process(payload)
    ours = SmallFrameMasker(mask)
    cuts = sorted({0, size, *(size * k // pieces for k in range(1, pieces))})
    unmasked = b"".join(ours.process(payload[a:b]) for a, b in itertools.pairwise(cuts))
    assert unmasked == expected
    assert ours.pointer() == size
    ours.reset()
    assert ours.pointer() == 0


def test_large_frames_keep_autobahns_masker_and_the_parser_uses_ours() -> None:
    assert isinstance(create_xor_masker(b"abcd", SMALL_FRAME), SmallFrameMasker)
    assert not isinstance(create_xor_masker(b"abcd", SMALL_FRAME + 1), SmallFrameMasker)
    assert autobahn_protocol.create_xor_masker is create_xor_masker
