"""Speech recognisers behind one small interface, and the pocketsphinx one.

A recogniser decodes one utterance at a time from 16 kHz 16-bit mono PCM (the line's
conference bridge clock; 8 kHz G.711 from the trunk arrives upsampled). Another engine
plugs in by implementing ``Recognizer`` and a factory with the ``RecognizerFactory``
signature.

Why a vocabulary: pocketsphinx's general US English language model transcribes 8 kHz
telephone audio poorly and slowly (measured on festival's voice through G.711: "a number
you have dialed it on available now", 0.34 real-time factor). A small bigram model built
from the phrases the call listens for, plus a corpus of everyday telephone answers, gave
the phrases word for word at 0.06 real-time factor. The everyday corpus keeps a human's
"hello, who is this?" from being forced onto a machine phrase.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
import re
import stat
import tempfile
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

# Everyday answers a person gives a call; they compete with the listened-for phrases.
EVERYDAY_PHRASES = (
    "hello", "hello hello", "hello who is this", "yes", "yes who is this", "yes speaking",
    "hi", "hi there", "who is calling", "who is it", "speaking", "this is mary speaking",
    "this is john", "hello this is john", "how can i help you", "what do you want", "no",
    "i am busy", "can you call back later", "call me back", "sorry who", "yeah", "yep",
    "good morning", "good afternoon", "good evening", "what is this about", "not interested",
    "thank you", "thanks", "okay", "sure", "who", "what", "can you hear me",
    "i can not hear you", "go ahead", "this is he", "this is she", "hold on",
    "one moment please", "just a second", "what", "pardon", "excuse me", "how are you",
    "i am fine", "tell me more", "sounds good", "maybe", "i do not know", "wrong number",
    "please stop calling", "take me off your list", "i would like to talk to a person",
    "agent", "operator", "representative", "bye", "goodbye", "see you",
)  # fmt: skip


class Recognizer(Protocol):
    """One utterance at a time: ``start``, ``feed`` 20 ms frames, ``partial`` whenever,
    ``end`` returns the final text. ``reset`` before another call: forget what this one
    taught it (a recogniser is reused across calls; building one takes ~0.15 s)."""

    def reset(self) -> None: ...
    def start(self) -> None: ...
    def feed(self, pcm: bytes) -> None: ...
    def partial(self) -> str: ...
    def end(self) -> str: ...


class RecognizerFactory(Protocol):
    def __call__(self, phrases: Sequence[str]) -> Recognizer: ...


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def bigram_arpa(sentences: Iterable[Sequence[str]], discount: float = 0.5) -> str:
    """A bigram model in ARPA format with absolute discounting and back-off to unigrams
    (mixed with a uniform floor so every word stays reachable)."""
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    for words in sentences:
        seq = ["<s>", *words, "</s>"]
        unigrams.update(seq)
        bigrams.update(itertools.pairwise(seq))
    total = sum(c for w, c in unigrams.items() if w != "<s>")
    followers: dict[str, list[int]] = defaultdict(list)
    for (first, _), count in bigrams.items():
        followers[first].append(count)
    vocabulary = len(unigrams)
    lines = ["\\data\\", f"ngram 1={len(unigrams)}", f"ngram 2={len(bigrams)}", "", "\\1-grams:"]
    for word, count in sorted(unigrams.items()):
        counts = followers.get(word, [])
        backoff = discount * len(counts) / sum(counts) if counts else 1.0
        prob = -99.0 if word == "<s>" else math.log10(0.7 * count / total + 0.3 / vocabulary)
        lines.append(f"{prob:.4f} {word} {math.log10(backoff):.4f}")
    lines += ["", "\\2-grams:"]
    for (first, second), count in sorted(bigrams.items()):
        lines.append(
            f"{math.log10((count - discount) / sum(followers[first])):.4f} {first} {second}"
        )
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


_LOCK = threading.Lock()
_DICTIONARY: dict[str, list[str]] | None = None


def _model_dir() -> Path:
    import pocketsphinx

    return Path(pocketsphinx.get_model_path()) / "en-us"


def pronunciations() -> dict[str, list[str]]:
    """The model's pronunciation dictionary: word -> its dictionary lines."""
    global _DICTIONARY
    with _LOCK:
        if _DICTIONARY is None:
            entries: dict[str, list[str]] = defaultdict(list)
            with open(_model_dir() / "cmudict-en-us.dict", encoding="utf-8") as source:
                for line in source:
                    word = line.split(" ", 1)[0]
                    entries[word.split("(", 1)[0]].append(line.rstrip("\n"))
            _DICTIONARY = dict(entries)
        return _DICTIONARY


def private_temp_dir(name: str) -> Path:
    """A per-user cache folder under the temp dir (mode 0700, ours, not a symlink): files
    read from it steer recognition and playback, so no other local user may plant them."""
    folder = Path(tempfile.gettempdir()) / f"{name}-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.lstat()
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return Path(tempfile.mkdtemp(prefix=f"{name}-"))  # someone else's: a fresh one
    return folder


def vocabulary_files(phrases: Sequence[str], folder: Path | None = None) -> tuple[Path, Path]:
    """The language model and dictionary for these phrases, written once per phrase set
    (content-addressed in a temp folder, shared by every call that listens for them)."""
    known = pronunciations()
    sentences = [[w for w in words_of(p) if w in known] for p in (*phrases, *EVERYDAY_PHRASES)]
    sentences = [s for s in sentences if s]
    key = hashlib.sha256("\n".join(" ".join(s) for s in sentences).encode()).hexdigest()[:16]
    folder = folder or private_temp_dir("dialer-asr")
    lm, dic = folder / f"{key}.arpa", folder / f"{key}.dict"
    if not (lm.exists() and dic.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        words = sorted({w for s in sentences for w in s})
        for path, text in (
            (lm, bigram_arpa(sentences)),
            (dic, "\n".join(line for w in words for line in known[w]) + "\n"),
        ):
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
    return lm, dic


class PocketsphinxRecognizer:
    """pocketsphinx 5 (its US English acoustic model ships in the wheel), streaming."""

    def __init__(self, phrases: Sequence[str], sample_rate: int = 16000) -> None:
        from pocketsphinx import Decoder

        lm, dic = vocabulary_files(phrases)
        self._decoder = Decoder(
            hmm=str(_model_dir() / "en-us"),
            lm=str(lm),
            dict=str(dic),
            samprate=sample_rate,
            loglevel="FATAL",
            fwdflat=False,  # the second passes cost more than they gain on a small model
            bestpath=False,
        )
        self._open = False

    def reset(self) -> None:
        """Drop an unfinished utterance. The channel normalisation (cepstral mean) is
        kept on purpose: it has adapted to telephone audio, and going back to the model's
        initial one before each call cost recall (measured on the corpus: separation
        between machine and human phrase scores fell from 14 to -11 points)."""
        if self._open:
            self._decoder.end_utt()
            self._open = False

    def start(self) -> None:
        if self._open:
            self._decoder.end_utt()
        self._decoder.start_utt()
        self._open = True

    def feed(self, pcm: bytes) -> None:
        self._decoder.process_raw(pcm, False, False)

    def partial(self) -> str:
        hyp = self._decoder.hyp()
        return hyp.hypstr if hyp is not None else ""

    def end(self) -> str:
        if not self._open:
            return ""
        self._decoder.end_utt()
        self._open = False
        return self.partial()


def pocketsphinx_factory(phrases: Sequence[str]) -> Recognizer:
    return PocketsphinxRecognizer(phrases)
