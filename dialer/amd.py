"""Answering-machine detection: the decision rules over what the line heard (pure).

Input: the facts of ``sip.speech.CallAnalyzer`` (voice segments, partial and final
transcripts, tones) as ``sip.events.Speech`` events, with ``audio_s`` = seconds since the
answer. Output: at most one
``machine`` decision, as early as the evidence allows, and for ``dialer amd classify``
a verdict at the end of the audio.

Machine, by the first of:
* ``beep``: a pure tone of 0.18-2.5 s (the voicemail beep);
* ``sit``: the three Special Information Tones of a carrier intercept;
* ``phrase``: a transcript (partial or final) matches a sample phrase of the
  ``answering_machine`` intent;
* ``cadence``: a monologue that starts within ``cadence_window_s`` of the answer and
  runs ``greeting_seconds``, its pauses all shorter than ``monologue_gap_s`` (a recorded
  greeting talks on; a person says "hello?" and waits for an answer).
Human (reported, never acted on: the script goes on, and a machine found later still
wins): the first utterance is short (``human_max_seconds``) and followed by silence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from dialer.intents import DEFAULT_THRESHOLD, IntentMatcher
from sip.events import Speech

MACHINE_INTENT = "answering_machine"

Verdict = Literal["machine", "human", "unknown"]


@dataclass(frozen=True)
class AmdSettings:
    threshold: float = DEFAULT_THRESHOLD  # intent match score, 0-100
    greeting_seconds: float = 5.5
    cadence_window_s: float = 4.0
    monologue_gap_s: float = 1.0
    human_max_seconds: float = 3.5
    beep: bool = True
    sit: bool = True
    cadence: bool = True


@dataclass(frozen=True)
class Decision:
    decision: Verdict
    signal: str  # phrase | beep | sit | cadence | short_answer | none
    reason: str
    seconds: float  # audio seconds after the answer when decided
    score: float | None = None
    transcript: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision, "signal": self.signal, "reason": self.reason,
            "decision_seconds": round(self.seconds, 2), "score": self.score,
        }  # fmt: skip


class AmdDetector:
    def __init__(self, matcher: IntentMatcher, settings: AmdSettings | None = None) -> None:
        self.matcher = matcher
        self.settings = settings or AmdSettings()
        self.machine: Decision | None = None
        self.human: Decision | None = None
        self.voice_since: float | None = None  # the current utterance
        self.monologue_since: float | None = None  # utterances with only short pauses
        self.last_voice_end: float | None = None
        self.utterances = 0
        self.transcripts: list[str] = []
        self.timed = True  # cadence and short-answer rules (times since the answer)

    @property
    def transcript(self) -> str:
        return " ".join(self.transcripts)

    def restart_clock(self) -> None:
        """The caller was with an agent: the line listens again from a new zero. Rules
        timed from the answer (cadence, the short first answer) no longer apply."""
        self.voice_since = self.monologue_since = self.last_voice_end = None
        self.timed = False

    def feed(self, fact: Speech) -> Decision | None:
        """One fact; returns the machine decision the first time there is one."""
        if self.machine is not None:
            if fact.kind == "final":
                self.transcripts.append(fact.text or "")
            return None
        decision = self._judge(fact)
        if decision is not None and decision.decision == "machine":
            self.machine = decision
            return decision
        return None

    def _judge(self, fact: Speech) -> Decision | None:
        s = self.settings
        kind = fact.kind
        at = fact.audio_s
        if kind == "tone":
            tone = fact.tone
            if (tone == "beep" and s.beep) or (tone == "sit" and s.sit):
                label = "voicemail beep" if tone == "beep" else "SIT tones (carrier intercept)"
                reason = f"{label} at {fact.freq} Hz, {fact.duration} s"
                return Decision("machine", str(tone), reason, at, None, self.transcript)
            return self._cadence(at)
        if kind == "voice_start":
            self.voice_since = at
            if self.last_voice_end is None or at - self.last_voice_end >= s.monologue_gap_s:
                self.monologue_since = at
            return None
        if kind in ("partial", "final"):
            text = fact.text or ""
            if kind == "final":
                self.transcripts.append(text)
            match = self.matcher.best(text, only=[MACHINE_INTENT])
            if match is not None:
                reason = f"phrase {match.phrase!r} heard as {text!r}"
                return Decision("machine", "phrase", reason, at, match.score,
                                self.transcript if kind == "final" else text)  # fmt: skip
            return self._cadence(at)
        if kind == "voice_end":
            decision = self._cadence(at)
            start, self.voice_since = self.voice_since, None
            self.last_voice_end = at
            self.utterances += 1
            duration = fact.duration or 0.0
            if (
                decision is None
                and self.timed
                and self.utterances == 1
                and self.human is None
                and start is not None
                and start <= s.cadence_window_s
                and duration <= s.human_max_seconds
            ):
                self.human = Decision(
                    "human", "short_answer",
                    f"a short answer ({duration:.1f} s) then silence", at,
                )  # fmt: skip
            return decision
        return None

    def _cadence(self, at: float) -> Decision | None:
        s = self.settings
        start = self.monologue_since if self.voice_since is not None else None
        if not s.cadence or not self.timed or start is None or start > s.cadence_window_s:
            return None
        if at - start >= s.greeting_seconds:
            reason = f"{at - start:.1f} s of talk without waiting from {start:.1f} s (a greeting)"
            return Decision("machine", "cadence", reason, at, None, self.transcript)
        return None

    def verdict(self, end_s: float) -> Decision:
        """The verdict once the audio is over (``dialer amd classify``)."""
        if self.machine is not None:
            return self.machine
        if self.human is not None:
            return Decision(
                "human", self.human.signal, self.human.reason, self.human.seconds,
                None, self.transcript,
            )  # fmt: skip
        reason = "no speech and no tones" if not self.utterances else "neither kind of evidence"
        return Decision("unknown", "none", reason, end_s, None, self.transcript)
