"""Answering-machine detection: intents, tones, voice activity, the decision rules, and
`dialer amd classify` on generated telephone audio (festival voices, 8 kHz mu-law)."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clitools import Run

from dialer.amd import MACHINE_INTENT, AmdDetector
from dialer.classify import classify
from dialer.intents import IntentMatcher, normalise
from dialer.script import ANSWERING_MACHINE_PHRASES
from sip.events import Speech
from sip.speech import (
    SAMPLE_RATE,
    AudioFileError,
    CallAnalyzer,
    analyze_samples,
    load_wav,
    mulaw_sample,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import amd_corpus

MATCHER = IntentMatcher({MACHINE_INTENT: ANSWERING_MACHINE_PHRASES, "yes": ["yes", "sure"]})


def pcm(seconds_and_signals: list[np.ndarray]) -> np.ndarray:
    audio = np.concatenate(seconds_and_signals)
    noise = np.random.default_rng(3).normal(0, 0.001, len(audio))
    return np.clip((audio + noise) * 32767, -32768, 32767).astype(np.int16)


def heard(**fact: Any) -> Speech:
    """An analyzer's fact as the line sends it about a call (a speech event)."""
    return Speech(call_id="c1", **fact)


def kinds(facts: list[dict[str, object]]) -> list[object]:
    return [f["kind"] if f["kind"] != "tone" else f["tone"] for f in facts]


@pytest.mark.parametrize(
    ("transcript", "intent"),
    [
        ("a number you have dialed it on available now", MACHINE_INTENT),
        ("hi you have reached john i am not available right now", MACHINE_INTENT),
        ("the subscriber cannot be reached", MACHINE_INTENT),
        ("Yes!", "yes"),
        ("hello who is this", None),
        ("not", None),  # a word of a phrase is not the phrase
        ("yep", None),  # whole words: "yep" is not "yes"
        ("", None),
    ],
)
def test_intents_match_fuzzily_on_whole_words(transcript: str, intent: str | None) -> None:
    match = MATCHER.best(transcript)
    assert (match.intent if match else None) == intent
    assert normalise("It\u2019s NOT, here!") == "it's not here"


def test_a_voicemail_beep_and_sit_tones_are_recognised_without_words() -> None:
    rng = random.Random(1)
    beep = analyze_samples(pcm([amd_corpus.silence(0.5), amd_corpus.tone(1000, 0.5),
                                amd_corpus.silence(0.5)]), None)  # fmt: skip
    assert [f for f in beep if f["kind"] == "tone"] == [
        {"kind": "tone", "tone": "beep", "freq": 1000.0, "duration": 0.5, "audio_s": 1.0}
    ]
    sit = analyze_samples(pcm([amd_corpus.silence(0.3), amd_corpus.sit_tones(rng),
                               amd_corpus.silence(0.5)]), None)  # fmt: skip
    assert "sit" in kinds(sit) and "beep" not in kinds(sit)
    assert [heard(**fact).kind for fact in beep + sit] == [f["kind"] for f in beep + sit]
    # a dial tone (350+440 Hz, not one pure tone) and a 100 ms click are neither
    t = np.arange(SAMPLE_RATE * 2) / SAMPLE_RATE
    dial = 0.2 * (np.sin(2 * np.pi * 350 * t) + np.sin(2 * np.pi * 440 * t))
    assert "beep" not in kinds(analyze_samples(pcm([dial]), None))
    click = analyze_samples(pcm([amd_corpus.silence(0.3), amd_corpus.tone(1000, 0.1),
                                 amd_corpus.silence(0.3)]), None)  # fmt: skip
    assert "beep" not in kinds(click)


def test_voice_activity_gates_the_recogniser() -> None:
    class Counting:
        def __init__(self) -> None:
            self.fed = 0
            self.utterances = 0

        def reset(self) -> None:
            pass

        def start(self) -> None:
            self.utterances += 1

        def feed(self, pcm: bytes) -> None:
            self.fed += 1

        def partial(self) -> str:
            return ""

        def end(self) -> str:
            return "words"

    recognizer = Counting()
    rng = np.random.default_rng(0)
    burst = rng.normal(0, 0.2, SAMPLE_RATE)  # 1 s of loud noise stands in for speech
    facts = analyze_samples(pcm([amd_corpus.silence(5), burst, amd_corpus.silence(5)]), recognizer)
    assert kinds(facts) == ["voice_start", "voice_end", "final"]
    assert [heard(**fact).kind for fact in facts] == ["voice_start", "voice_end", "final"]
    start, end = facts[0]["audio_s"], facts[1]["audio_s"]
    assert 4.9 <= float(start) <= 5.1 and 5.9 <= float(end) <= 6.1
    assert recognizer.utterances == 1
    # 11 s of audio, the recogniser heard ~1.7 s: the burst, 200 ms before, 500 ms after
    assert 70 <= recognizer.fed <= 95
    assert CallAnalyzer(None).feed(b"") == []


def test_decision_rules() -> None:
    machine = AmdDetector(MATCHER)
    assert machine.feed(heard(kind="voice_start", audio_s=0.3)) is None
    decision = machine.feed(heard(kind="partial", text="hi please leave a message after the tone",
                             audio_s=3.2))  # fmt: skip
    assert decision is not None and decision.signal == "phrase" and decision.seconds == 3.2
    assert machine.feed(heard(kind="tone", tone="beep", audio_s=4.0)) is None  # decided

    cadence = AmdDetector(MATCHER)  # talks on: short pauses do not break the monologue
    cadence.feed(heard(kind="voice_start", audio_s=0.5))
    assert cadence.feed(heard(kind="voice_end", audio_s=2.5, duration=2.0)) is None
    cadence.feed(heard(kind="voice_start", audio_s=3.2))
    assert cadence.feed(heard(kind="partial", text="hi there", audio_s=5.8)) is None
    decision = cadence.feed(heard(kind="partial", text="hi there friend", audio_s=6.0))
    assert decision is not None and decision.signal == "cadence"

    waits = AmdDetector(MATCHER)  # "hello?" ... (waits) ... "hello?": a person
    waits.feed(heard(kind="voice_start", audio_s=0.5))
    waits.feed(heard(kind="voice_end", audio_s=3.0, duration=2.5))
    waits.feed(heard(kind="voice_start", audio_s=4.5))
    assert waits.feed(heard(kind="voice_end", audio_s=7.0, duration=2.5)) is None
    assert waits.verdict(8.0).decision == "human"

    late = AmdDetector(MATCHER)  # long speech that starts late is a conversation
    late.feed(heard(kind="voice_start", audio_s=8.0))
    assert late.feed(heard(kind="voice_end", audio_s=20.0, duration=12.0)) is None

    human = AmdDetector(MATCHER)
    human.feed(heard(kind="voice_start", audio_s=0.4))
    assert human.feed(heard(kind="voice_end", audio_s=0.9, duration=0.5)) is None
    assert human.verdict(4.0).decision == "human" and human.verdict(4.0).seconds == 0.9
    assert AmdDetector(MATCHER).verdict(3.0).decision == "unknown"


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, amd_corpus.Label]]:
    folder = tmp_path_factory.mktemp("amd")
    rng = random.Random(11)
    made = {
        "announcement": amd_corpus.make_sample("announcement", 1, "slt", 1.0, folder, folder,
                                               rng, sit=False),
        "sit": amd_corpus.make_sample("announcement", 0, "kal", 1.0, folder, folder, rng,
                                      sit=True),
        "voicemail_beep": amd_corpus.make_sample("voicemail", 4, "ked", 1.0, folder, folder,
                                                 rng, beep=True),
        "human": amd_corpus.make_sample("human", 0, "slt", 1.0, folder, folder, rng),
        "human_long": amd_corpus.make_sample("human", 5, "kal", 1.0, folder, folder, rng),
    }  # fmt: skip
    return {k: (folder / label.file, label) for k, label in made.items()}


@pytest.mark.parametrize(
    ("sample", "decision", "signals"),
    [
        ("announcement", "machine", {"phrase"}),
        ("sit", "machine", {"sit"}),
        ("voicemail_beep", "machine", {"phrase", "beep"}),
        ("human", "human", {"short_answer"}),
        ("human_long", "human", {"short_answer"}),
    ],
)
def test_classify_generated_telephone_audio(
    samples: dict[str, tuple[Path, amd_corpus.Label]], sample: str, decision: str,
    signals: set[str],
) -> None:  # fmt: skip
    path, label = samples[sample]
    assert path.read_bytes()[20:22] == b"\x07\x00"  # WAVE_FORMAT_MULAW: telephone audio
    result = classify(str(path))
    assert result.decision.decision == decision, result.as_dict()
    assert result.decision.signal in signals
    if label.key_end_s is not None and result.decision.signal == "phrase":
        assert result.decision.seconds - label.key_end_s <= 1.5


def test_amd_classify_cli(run: Run, samples: dict[str, tuple[Path, amd_corpus.Label]],
                          tmp_path: Path) -> None:  # fmt: skip
    path, label = samples["announcement"]
    document = run.json("amd", "classify", str(path))
    assert isinstance(document, dict)
    assert document["decision"] == "machine"
    assert set(document) >= {"decision", "reason", "transcript", "decision_seconds"}
    assert "try again later" in document["transcript"]
    assert 0 < document["decision_seconds"] <= label.seconds
    _, out, _ = run("amd", "classify", str(samples["human"][0]))
    assert out.startswith("human after")
    assert "not a WAV file" in run.fails("amd", "classify", str(Path(__file__)))
    assert "cannot read" in run.fails("amd", "classify", str(tmp_path / "none.wav"))
    odd = tmp_path / "odd.wav"
    odd.write_bytes(
        b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x03\x00\x01\x00"
        b"\x40\x1f\x00\x00\x00\x7d\x00\x00\x04\x00\x20\x00data\x00\x00\x00\x00"
    )
    assert "unsupported WAV encoding (format 3, 32 bits)" in run.fails("amd", "classify", str(odd))
    with pytest.raises(AudioFileError):
        load_wav(str(odd))


def test_g711_decoding_matches_the_standard() -> None:
    assert mulaw_sample(0xFF) == 0 and mulaw_sample(0x00) == -32124 and mulaw_sample(0x80) == 32124
