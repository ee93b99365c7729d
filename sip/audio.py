"""Small audio helpers for the media taps (no audioop: deprecated, gone in 3.13)."""

from __future__ import annotations

import math
from array import array

VOICED_RMS = 300  # 16-bit PCM: silence and comfort noise stay far below


def rms(pcm: bytes) -> float:
    """Root mean square of 16-bit little-endian mono PCM."""
    samples = array("h")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def is_voiced(pcm: bytes) -> bool:
    return rms(pcm) > VOICED_RMS
