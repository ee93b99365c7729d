"""Intent matching: a transcript against named lists of sample phrases, fuzzily.

Normalised text (lower case, words only) is compared with rapidfuzz. A phrase matches
when it appears, nearly, inside the transcript: the best ``ratio`` of the phrase against
every run of the transcript's words of about the phrase's length. So "hi you have reached
john i am not available right now" matches the sample "is not available right now", a
lone "not" never matches "this number is not in service", and "yep" is not "yes" (whole
words are compared, never parts of them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rapidfuzz import fuzz

DEFAULT_THRESHOLD = 75.0  # corpus: humans scored <= 61, machines mostly >= 74


def normalise(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'")))


@dataclass(frozen=True)
class Match:
    intent: str
    phrase: str
    score: float


class IntentMatcher:
    def __init__(
        self, intents: Mapping[str, Sequence[str]], threshold: float = DEFAULT_THRESHOLD
    ) -> None:
        self.threshold = threshold
        self.phrases = [
            (name, phrase, normalise(phrase)) for name, samples in intents.items()
            for phrase in samples if normalise(phrase)
        ]  # fmt: skip

    def score(self, transcript: str, phrase: str) -> float:
        words, sample = normalise(transcript).split(), normalise(phrase)
        if not words or not sample:
            return 0.0
        size = len(sample.split())
        best = 0.0
        for width in {max(1, size - 1), size, size + 1}:
            for start in range(max(1, len(words) - width + 1)):
                candidate = " ".join(words[start : start + width])
                best = max(best, fuzz.ratio(sample, candidate))
        return best

    def best(self, transcript: str, only: Sequence[str] | None = None) -> Match | None:
        """The best-scoring phrase at or over the threshold (of the ``only`` intents)."""
        best: Match | None = None
        for name, phrase, _ in self.phrases:
            if only is not None and name not in only:
                continue
            score = self.score(transcript, phrase)
            if score >= self.threshold and (best is None or score > best.score):
                best = Match(name, phrase, round(score, 1))
        return best
