"""Generate a labelled answering-machine corpus: telephone-like WAVs and a labels file.

    python scripts/amd_corpus.py OUT_DIR [--per-kind N] [--seed S]

Kinds: ``human`` (a short answer, then the silence of someone waiting), ``voicemail``
(a greeting, a beep most of the time), ``announcement`` (a carrier message, often after
the three SIT tones). Each sample: one of several festival voices (and espeak-ng), a
speed change, a little line noise, the 300-3400 Hz telephone band, 8 kHz mu-law. The
label records where the key phrase (the one a bot should hang up on) ends, so the
evaluation can measure the decision delay after it. Nothing large is committed: the
corpus is made again from this file (festival, sox; seconds per sample).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import tempfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dialer.tts import synthesise

RATE = 16000
VOICES = ("slt", "kal", "ked", "espeak:en-us")
SPEEDS = (0.9, 1.0, 1.15)
NAMES = ("John", "Maria", "Alex", "Priya", "the Smith family", "Dr. Lee's office")

# a person's answer: pieces with a pause between them (a second "hello?" when no one speaks)
HUMAN = (
    ("Hello?",), ("Yes?",), ("Hello, who is this?",), ("Hi, this is Mary.",),
    ("Yeah, speaking.",), ("Good morning, how can I help you?",), ("Hello?", "Hello?"),
    ("Yes, who's calling?",), ("Hi there.",), ("Hello, this is John speaking.",),
    ("Who is it?",), ("Speaking.",),
    # a receptionist's long answer: the hard case for greeting cadence
    ("Good afternoon, Acme Dental, this is Maria speaking, how may I help you?",),
)  # fmt: skip
# (sentences, index of the key sentence)
VOICEMAIL = (
    (["Hi, you have reached {name}.", "I am not available right now.",
      "Please leave a message after the tone."], 1),
    (["Hello, this is {name}.", "Please leave your name and number,",
      "and I will call you back as soon as I can."], 1),
    (["You have reached the voicemail of {name}.", "Please leave a message."], 0),
    (["{name} is not available right now.", "At the tone, please record your message."], 0),
    (["Hi, it's {name}.", "Leave a message after the tone."], 1),
    (["Thank you for calling {name}.", "We will get back to you as soon as possible.",
      "Please leave a message."], 1),
    # worded unlike any sample phrase: only partial matches, the beep or the cadence
    (["Sorry I missed your call.", "Leave your name and number and I will get back to you."], 1),
)  # fmt: skip
ANNOUNCEMENT = (
    (["The number you have dialed is not in service.",
      "Please check the number and dial again."], 0),
    (["The number you have dialed is unavailable now.", "Please try again later."], 0),
    (["We are sorry.", "The subscriber cannot be reached.", "Please try again later."], 1),
    (["This number is no longer in service."], 0),
    (["Your call cannot be completed as dialed.", "Please check the number and dial again."], 0),
    (["The mobile phone you are calling is switched off.", "Please try again later."], 0),
    # worded unlike any sample phrase
    (["The customer you are calling is temporarily unreachable.", "Please call again later."], 0),
)  # fmt: skip


@dataclass
class Label:
    file: str
    kind: str  # human | voicemail | announcement
    voice: str
    speed: float
    text: str
    key_end_s: float | None  # where the key phrase ends (machine kinds)
    beep: bool
    sit: bool
    seconds: float


def tone(freq: float, seconds: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    ramp = np.minimum(1.0, np.minimum(t, seconds - t) / 0.005)
    return level * ramp * np.sin(2 * np.pi * freq * t)


def sit_tones(rng: random.Random) -> np.ndarray:
    """The three rising SIT tones (one of the standard low/high combinations)."""
    first = rng.choice((913.8, 985.2))
    second = rng.choice((1370.6, 1428.5))
    short = rng.choice((0.276, 0.380))
    return np.concatenate([tone(first, short), tone(second, short), tone(1776.7, 0.380)])


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(RATE * seconds))


def read_pcm(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return data.astype(np.float64) / 32768


def speak(text: str, voice: str, speed: float, cache: Path) -> np.ndarray:
    wav = synthesise(text, voice, cache)
    if speed == 1.0:
        return read_pcm(wav)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.wav"
        subprocess.run(["sox", str(wav), str(out), "tempo", "-s", str(speed)], check=True)
        return read_pcm(out)


def telephone(audio: np.ndarray, out: Path, noise_db: float, rng: random.Random) -> None:
    """Line noise, the telephone band, 8 kHz mu-law."""
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(
        0, 10 ** (noise_db / 20), len(audio)
    )
    mixed = np.clip(audio + noise, -1, 1)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        with wave.open(str(raw), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes((mixed * 32767).astype("<i2").tobytes())
        subprocess.run(
            ["sox", str(raw), "-r", "8000", "-e", "mu-law", "-b", "8", str(out),
             "sinc", "300-3400"],
            check=True,
        )  # fmt: skip


def make_sample(
    kind: str, index: int, voice: str, speed: float, out_dir: Path, cache: Path,
    rng: random.Random, beep: bool | None = None, sit: bool | None = None,
) -> Label:  # fmt: skip
    name = rng.choice(NAMES)
    parts: list[np.ndarray] = [silence(rng.uniform(0.2, 0.6))]
    key_end: float | None = None
    has_beep = has_sit = False
    if kind == "human":
        pieces = HUMAN[index % len(HUMAN)]
        text = " ".join(pieces)
        for n, piece in enumerate(pieces):
            if n:
                parts.append(silence(rng.uniform(1.5, 2.2)))
            parts.append(speak(piece, voice, speed, cache))
        parts.append(silence(rng.uniform(3.0, 4.0)))  # waiting for the caller to speak
    else:
        sentences, key = (VOICEMAIL if kind == "voicemail" else ANNOUNCEMENT)[
            index % (len(VOICEMAIL) if kind == "voicemail" else len(ANNOUNCEMENT))
        ]
        sentences = [s.format(name=name) for s in sentences]
        text = " ".join(sentences)
        if kind == "announcement":
            has_sit = rng.random() < 0.5 if sit is None else sit
            if has_sit:
                parts += [sit_tones(rng), silence(0.2)]
        for n, sentence in enumerate(sentences):
            parts.append(speak(sentence, voice, speed, cache))
            if n == key:
                key_end = sum(len(p) for p in parts) / RATE
            parts.append(silence(rng.uniform(0.25, 0.5)))
        if kind == "voicemail":
            has_beep = rng.random() < 0.7 if beep is None else beep
            if has_beep:
                parts += [silence(0.3), tone(rng.choice((850.0, 1000.0, 1400.0)), 0.5)]
        parts.append(silence(2.0))
    audio = np.concatenate(parts)
    slug = voice.replace(":", "-")
    out = out_dir / f"{kind}-{index:03d}-{slug}-{speed}.wav"
    telephone(audio, out, rng.uniform(-58, -48), rng)
    return Label(out.name, kind, voice, speed, text,
                 round(key_end, 3) if key_end is not None else None,
                 has_beep, has_sit, round(len(audio) / RATE, 3))  # fmt: skip


def generate(
    out_dir: Path, per_kind: int, seed: int = 7, voices: tuple[str, ...] = VOICES
) -> list[Label]:
    if shutil.which("sox") is None:
        raise SystemExit("sox is not installed (Debian package sox)")
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir / ".tts"
    rng = random.Random(seed)
    labels: list[Label] = []
    for kind in ("human", "voicemail", "announcement"):
        for index in range(per_kind):
            voice = voices[index % len(voices)]
            speed = SPEEDS[(index // len(voices)) % len(SPEEDS)]
            labels.append(make_sample(kind, index, voice, speed, out_dir, cache, rng))
    (out_dir / "labels.json").write_text(json.dumps([asdict(x) for x in labels], indent=1))
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--per-kind", type=int, default=36)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    labels = generate(args.out_dir, args.per_kind, args.seed)
    print(f"{len(labels)} samples in {args.out_dir}")


if __name__ == "__main__":
    main()
