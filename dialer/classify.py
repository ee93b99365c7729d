"""`dialer amd classify`: the live answering-machine pipeline, run over a WAV file.

The same analyzer (sip.speech), recogniser (sip.recognizer) and decision rules
(dialer.amd) as a live call; the file's start stands for the answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from dialer.amd import AmdDetector, AmdSettings, Decision
from dialer.errors import DialerError
from dialer.intents import IntentMatcher
from dialer.script import Script, default_script
from sip.events import Speech
from sip.recognizer import Recognizer, pocketsphinx_factory
from sip.speech import SAMPLE_RATE, AudioFileError, analyze_samples, load_wav


@dataclass(frozen=True)
class Classified:
    decision: Decision
    transcript: str
    audio_seconds: float
    cpu_seconds: float
    facts: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision.decision,
            "reason": self.decision.reason,
            "transcript": self.transcript,
            "decision_seconds": round(self.decision.seconds, 2),
            "signal": self.decision.signal,
            "score": self.decision.score,
            "audio_seconds": round(self.audio_seconds, 2),
        }


def classify(
    path: str,
    script: Script | None = None,
    settings: AmdSettings | None = None,
    recognizer: Recognizer | None = None,
) -> Classified:
    script = script or default_script()
    try:
        samples = load_wav(path)
    except AudioFileError as exc:
        raise DialerError(str(exc)) from None
    recognizer = recognizer or pocketsphinx_factory(script.phrases())
    started = time.process_time()
    facts = analyze_samples(samples, recognizer)
    detector = AmdDetector(
        IntentMatcher(script.intents, script.threshold),
        settings or script.amd,
    )
    for fact in facts:  # as the line would send them about a call
        detector.feed(Speech(call_id="file", **fact))
    seconds = len(samples) / SAMPLE_RATE
    verdict = detector.verdict(seconds)
    transcript = " ".join(str(f["text"]) for f in facts if f["kind"] == "final")
    return Classified(verdict, transcript, seconds, time.process_time() - started, facts)
