"""Listening to the callee: voice activity, tones and speech, one 20 ms frame at a time.

``CallAnalyzer`` turns a call's audio (16 kHz 16-bit mono PCM, 320-sample frames) into
small facts, each a dict with ``kind`` and ``audio_s`` (seconds of audio since the first
frame)::

    {"kind": "voice_start", "audio_s"}
    {"kind": "voice_end", "audio_s", "duration"}          audio_s = where the voice stopped
    {"kind": "partial", "audio_s", "text"}                 while the callee still speaks
    {"kind": "final", "audio_s", "text", "start_s"}        the utterance's transcript
    {"kind": "tone", "audio_s", "tone": "beep"|"sit", "freq", "duration"}

The decisions (is it a machine?) are not made here: they are business rules
(dialer.amd). The same analyzer runs in the line process on live calls and in
``dialer amd classify`` on files, so what is measured offline is what runs live.

The recogniser only runs while there is voice (plus 200 ms before it): a silent call
costs a frame's energy and one small DFT, nothing more.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sip.errors import SipError
from sip.recognizer import Recognizer

SAMPLE_RATE = 16000
FRAME = 320  # 20 ms
FRAME_S = FRAME / SAMPLE_RATE

# Special Information Tones (ITU-T E.180 / Telcordia): three tones, ~274 or ~380 ms each.
SIT_BANDS = ((913.8, 985.2), (1370.6, 1428.5), (1776.7, 1776.7))
TONE_FREQS = np.arange(300.0, 2600.0, 12.5)

Fact = dict[str, Any]


def tone_bank(freqs: np.ndarray, n: int = FRAME, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Single-bin DFT coefficients (what a Goertzel filter computes) for each frequency."""
    t = np.arange(n) / rate
    return np.exp(-2j * np.pi * np.outer(freqs, t))


_BANK = tone_bank(TONE_FREQS)


@dataclass
class Tuning:
    voice_db: float = -42.0  # dBFS: a frame is voice when louder than this...
    over_noise_db: float = 9.0  # ...and this much over the tracked noise floor
    start_frames: int = 3  # 60 ms of voice opens a segment
    hangover_frames: int = 25  # 500 ms of silence closes it
    preroll_frames: int = 10  # fed to the recogniser before the start
    partial_every: int = 10  # a partial transcript every 200 ms of voice
    max_utterance_s: float = 12.0
    tonal_ratio: float = 0.6  # share of a frame's energy in one frequency bin
    beep_min_s: float = 0.18
    beep_max_s: float = 2.5
    sit_min_s: float = 0.2
    sit_max_s: float = 0.45


class ToneTracker:
    """Follows pure tones: a run of frames whose energy sits in one stable frequency."""

    def __init__(self, tuning: Tuning) -> None:
        self.tuning = tuning
        self.freq: float | None = None
        self.frames = 0
        self.started_at = 0.0
        self.runs: deque[tuple[float, float, float]] = deque(maxlen=3)  # freq, start, s
        self.pending: list[Fact] = []  # a beep held back: it may be the first SIT tone
        self.pending_until = 0.0

    @staticmethod
    def dominant(samples: np.ndarray) -> tuple[float, float]:
        """(frequency, share of the frame's energy) of the strongest tone bin."""
        energy = float(np.dot(samples, samples))
        if energy <= 0:
            return 0.0, 0.0
        power = np.abs(_BANK @ samples) ** 2
        best = int(np.argmax(power))
        return float(TONE_FREQS[best]), float(2 * power[best] / (len(samples) * energy))

    def frame(self, samples: np.ndarray, loud: bool, at: float) -> list[Fact]:
        freq, ratio = self.dominant(samples) if loud else (0.0, 0.0)
        tonal = ratio >= self.tuning.tonal_ratio
        if tonal and self.freq is not None and abs(freq - self.freq) <= 40:
            self.frames += 1
            return []
        facts = self._close(at)
        if tonal:
            self.freq, self.frames, self.started_at = freq, 1, at
        elif self.pending and at > self.pending_until:
            facts += self.pending  # no SIT followed: it was a beep after all
            self.pending = []
            self.runs.clear()
        return facts

    def _close(self, at: float) -> list[Fact]:
        if self.freq is None:
            return []
        freq, seconds, start = self.freq, self.frames * FRAME_S, self.started_at
        self.freq, self.frames = None, 0
        t = self.tuning
        beep: list[Fact] = []
        if t.beep_min_s <= seconds <= t.beep_max_s and 400 <= freq <= 2500:
            beep = [{"kind": "tone", "tone": "beep", "freq": round(freq, 1),
                     "duration": round(seconds, 3), "audio_s": round(at, 3)}]  # fmt: skip
        if t.sit_min_s <= seconds <= t.sit_max_s and self._sit_like(freq, len(self.runs)):
            # maybe the start of the three SIT tones: the beep waits for the next tone
            self.runs.append((freq, start, seconds))
            if self._is_sit():
                self.runs.clear()
                self.pending = []
                return [{"kind": "tone", "tone": "sit", "freq": round(freq, 1),
                         "duration": round(seconds, 3), "audio_s": round(at, 3)}]  # fmt: skip
            self.pending = self.pending or beep
            self.pending_until = at + 0.15
            return []
        facts, self.pending = self.pending, []
        self.runs.clear()
        return facts + beep

    @staticmethod
    def _sit_like(freq: float, position: int) -> bool:
        if position >= len(SIT_BANDS):
            return False
        low, high = SIT_BANDS[position]
        return low - 30 <= freq <= high + 30

    def _is_sit(self) -> bool:
        if len(self.runs) < 3:
            return False
        for (freq, start, seconds), (low, high), nxt in zip(
            self.runs, SIT_BANDS, [*list(self.runs)[1:], None], strict=True
        ):
            if not (low - 30 <= freq <= high + 30):
                return False
            if nxt is not None and nxt[1] - (start + seconds) > 0.1:
                return False  # the three tones follow each other
        return True


class CallAnalyzer:
    """One call's (or file's) audio -> facts. Not thread-safe: one thread feeds it."""

    def __init__(
        self,
        recognizer: Recognizer | None,
        tuning: Tuning | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.recognizer = recognizer
        self.tuning = tuning or Tuning()
        self.tones = ToneTracker(self.tuning)
        self.frames = 0
        self.noise_db = -60.0
        self.voiced_run = 0
        self.silent_run = 0
        self.in_voice = False
        self.voice_start = 0.0
        self.voice_frames = 0
        self.last_partial = ""
        self.preroll: deque[bytes] = deque(maxlen=self.tuning.preroll_frames)
        self.decoding_s = 0.0  # audio seconds given to the recogniser

    @property
    def audio_s(self) -> float:
        return self.frames * FRAME_S

    def feed(self, pcm: bytes) -> list[Fact]:
        """One 20 ms frame (shorter frames are fine, longer ones are split by the caller)."""
        samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float64)
        at = self.audio_s
        self.frames += 1
        if samples.size == 0:
            return []
        level = float(np.sqrt(np.mean(samples * samples)))
        db = 20 * np.log10(max(level, 1.0) / 32768)
        t = self.tuning
        loud = db > t.voice_db
        voiced = loud and db > self.noise_db + t.over_noise_db
        # the noise floor drops at once and creeps up slowly (speech does not raise it)
        self.noise_db = db if db < self.noise_db else self.noise_db + 0.02 * (db - self.noise_db)
        facts = self.tones.frame(samples, loud, at)
        facts += self._voice(pcm, voiced, at)
        return facts

    def skip(self) -> None:
        """A frame that was not analysed (the line fell behind): time still passes."""
        self.frames += 1

    def _voice(self, pcm: bytes, voiced: bool, at: float) -> list[Fact]:
        t = self.tuning
        facts: list[Fact] = []
        if not self.in_voice:
            self.preroll.append(pcm)
            self.voiced_run = self.voiced_run + 1 if voiced else 0
            if self.voiced_run >= t.start_frames:
                self.in_voice = True
                self.silent_run = 0
                self.voice_start = at - (t.start_frames - 1) * FRAME_S
                self.voice_frames = 0
                self.last_partial = ""
                facts.append({"kind": "voice_start", "audio_s": round(self.voice_start, 3)})
                if self.recognizer is not None:
                    self.recognizer.start()
                    for frame in self.preroll:
                        self._decode(frame)
                self.preroll.clear()
            return facts
        self._decode(pcm)
        self.voice_frames += 1
        self.silent_run = 0 if voiced else self.silent_run + 1
        too_long = at - self.voice_start >= t.max_utterance_s
        if self.silent_run >= t.hangover_frames or too_long:
            return self._close(at + FRAME_S - self.silent_run * FRAME_S)
        if self.recognizer is not None and self.voice_frames % t.partial_every == 0:
            text = self.recognizer.partial()
            if text and text != self.last_partial:
                self.last_partial = text
                facts.append({"kind": "partial", "text": text, "audio_s": round(at, 3)})
        return facts

    def _decode(self, pcm: bytes) -> None:
        if self.recognizer is not None:
            self.recognizer.feed(pcm)
            self.decoding_s += len(pcm) / 2 / SAMPLE_RATE

    def _close(self, end: float) -> list[Fact]:
        self.in_voice = False
        self.voiced_run = 0
        facts: list[Fact] = [
            {"kind": "voice_end", "audio_s": round(end, 3),
             "duration": round(end - self.voice_start, 3)}
        ]  # fmt: skip
        if self.recognizer is not None:
            text = self.recognizer.end()
            if text:
                facts.append({"kind": "final", "text": text, "audio_s": round(end, 3),
                              "start_s": round(self.voice_start, 3)})  # fmt: skip
        return facts

    def finish(self) -> list[Fact]:
        """The audio ended: close what is open."""
        facts = self.tones._close(self.audio_s) + self.tones.pending
        self.tones.pending = []
        if self.in_voice:
            facts += self._close(self.audio_s)
        return facts


def mulaw_sample(u: int) -> int:
    u = ~u & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 7)
    return -(magnitude - 0x84) if u & 0x80 else magnitude - 0x84


MULAW_TABLE = np.array([mulaw_sample(b) for b in range(256)], dtype=np.int16)


def alaw_sample(a: int) -> int:
    a ^= 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = t + 8 if seg == 0 else (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


ALAW_TABLE = np.array([alaw_sample(b) for b in range(256)], dtype=np.int16)


def to_pcm16_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mono int16 at ``rate`` -> int16 at 16 kHz (linear interpolation: what matters to
    the analysis is below 4 kHz)."""
    if rate == SAMPLE_RATE:
        return samples.astype(np.int16)
    n_out = round(len(samples) * SAMPLE_RATE / rate)
    x_out = np.arange(n_out) * (rate / SAMPLE_RATE)
    resampled = np.interp(x_out, np.arange(len(samples)), samples.astype(np.float64))
    out: np.ndarray = np.clip(np.round(resampled), -32768, 32767).astype(np.int16)
    return out


class AudioFileError(SipError):
    """A file that is not a WAV this pipeline reads."""


def load_wav(path: str) -> np.ndarray:
    """A WAV file (PCM 16-bit, G.711 mu-law or A-law; mono, or the first channel) as
    16 kHz int16 samples. The stdlib ``wave`` reads PCM only; telephone captures are
    usually G.711, hence this small RIFF reader."""
    try:
        with open(path, "rb") as source:
            data = source.read()
    except OSError as exc:
        raise AudioFileError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioFileError(f"{path} is not a WAV file (no RIFF/WAVE header)")
    fmt: tuple[int, int, int, int] | None = None
    payload: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = data[pos + 8 : pos + 8 + size]
        if chunk == b"fmt " and len(body) >= 16:
            code = int.from_bytes(body[0:2], "little")
            if code == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format
                code = int.from_bytes(body[24:26], "little")
            channels = int.from_bytes(body[2:4], "little")
            rate = int.from_bytes(body[4:8], "little")
            bits = int.from_bytes(body[14:16], "little")
            fmt = (code, channels, rate, bits)
        elif chunk == b"data":
            payload = body
        pos += 8 + size + (size & 1)
    if fmt is None or payload is None:
        raise AudioFileError(f"{path}: WAV without a fmt or data chunk")
    code, channels, rate, bits = fmt
    if channels < 1 or not 4000 <= rate <= 48000:
        raise AudioFileError(f"{path}: unsupported WAV: {channels} channels at {rate} Hz")
    if code == 1 and bits == 16:
        samples = np.frombuffer(payload[: len(payload) - len(payload) % 2], dtype="<i2")
    elif code == 7 and bits == 8:
        samples = MULAW_TABLE[np.frombuffer(payload, dtype=np.uint8)]
    elif code == 6 and bits == 8:
        samples = ALAW_TABLE[np.frombuffer(payload, dtype=np.uint8)]
    else:
        raise AudioFileError(
            f"{path}: unsupported WAV encoding (format {code}, {bits} bits): "
            "use 16-bit PCM, mu-law or A-law"
        )
    return to_pcm16_16k(samples[::channels], rate)


def analyze_samples(
    samples: np.ndarray, recognizer: Recognizer | None, tuning: Tuning | None = None
) -> list[Fact]:
    """Run the live pipeline over 16 kHz samples, frame by frame, as a call would."""
    analyzer = CallAnalyzer(recognizer, tuning)
    facts: list[Fact] = []
    raw = samples.astype("<i2").tobytes()
    for offset in range(0, len(raw), FRAME * 2):
        facts += analyzer.feed(raw[offset : offset + FRAME * 2])
    return facts + analyzer.finish()
