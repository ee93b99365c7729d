"""The line's listener: frames queued by the clock thread, analysed on its own thread,
speech events out; stale audio skipped when the analysis falls behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from sip import listener as listener_module
from sip.listener import Listener
from sip.recognizer import Recognizer


class Slow:
    """A recogniser that takes `delay` seconds per frame and hears `text`."""

    def __init__(self, delay: float, text: str) -> None:
        self.delay = delay
        self.text = text
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def start(self) -> None:
        pass

    def feed(self, pcm: bytes) -> None:
        time.sleep(self.delay)

    def partial(self) -> str:
        return ""

    def end(self) -> str:
        return self.text


def run_call(listener: Listener, call_id: str, seconds_of_voice: float) -> None:
    loud = (np.random.default_rng(0).normal(0, 6000, 320)).astype("<i2").tobytes()
    quiet = bytes(640)
    listener.call_started(call_id, 16000, ["leave a message"])
    for _ in range(10):
        listener.frame(call_id, quiet)
    for _ in range(int(seconds_of_voice * 50)):
        listener.frame(call_id, loud)
    for _ in range(40):
        listener.frame(call_id, quiet)
    listener.call_ended(call_id)


def collect(events: list[dict[str, Any]], done: threading.Event, until: str) -> Any:
    def emit(batch: list[dict[str, Any]]) -> None:
        events.extend(batch)
        if any(e.get("kind") == until for e in batch):
            done.set()

    return emit


def test_speech_events_come_out_per_call_and_recognisers_are_reused() -> None:
    events: list[dict[str, Any]] = []
    done = threading.Event()
    made: list[Slow] = []

    def factory(phrases: Sequence[str]) -> Recognizer:
        made.append(Slow(0.0, "please leave a message"))
        return made[-1]

    listener = Listener(collect(events, done, "final"), factory)
    try:
        run_call(listener, "c1", 1.0)
        assert done.wait(10)
        done.clear()
        run_call(listener, "c2", 1.0)
        assert done.wait(10)
    finally:
        listener.close()
    finals = [e for e in events if e.get("kind") == "final"]
    assert [(e["event"], e["call_id"], e["text"]) for e in finals] == [
        ("speech", "c1", "please leave a message"), ("speech", "c2", "please leave a message")
    ]  # fmt: skip
    assert all(e["v"] == 1 and "at" in e for e in events)
    assert len(made) == 1 and made[0].resets == 1  # the second call reused the first's
    assert listener.skipped_frames == 0


def test_a_line_that_falls_behind_skips_stale_audio(monkeypatch: Any) -> None:
    monkeypatch.setattr(listener_module, "MAX_LAG_SECONDS", 0.2)
    events: list[dict[str, Any]] = []
    done = threading.Event()
    listener = Listener(collect(events, done, "voice_end"), lambda p: Slow(0.02, "x"))
    try:
        run_call(listener, "c1", 3.0)  # queued at once: 150 frames x 20 ms of work each
        assert done.wait(15)
    finally:
        listener.close()
    assert listener.skipped_frames > 50
    # the call's clock kept running through the skipped frames (4 s of audio in all)
    [end] = [e for e in events if e.get("kind") == "voice_end"]
    assert 3.0 <= end["audio_s"] <= 4.0


def test_spare_recognisers_are_capped_oldest_phrase_set_first() -> None:
    events: list[dict[str, Any]] = []
    done = threading.Event()
    made: list[tuple[str, ...]] = []

    def factory(phrases: Sequence[str]) -> Recognizer:
        made.append(tuple(phrases))
        return Slow(0.0, "")

    listener = Listener(collect(events, done, "never"), factory)
    try:
        for n in range(12):  # 12 phrase sets, each call ends before the next starts
            listener.call_started(f"c{n}", 16000, [f"phrase {n}"])
            listener.call_ended(f"c{n}")
        listener.call_started("again", 16000, ["phrase 11"])  # recent: reused
        listener.call_started("old", 16000, ["phrase 0"])  # dropped: built again
        listener.call_started("odd", 8000, ["phrase 5"])  # not the tap's rate: refused
    finally:
        listener.close()
    assert len(made) == 13 and made[-1] == ("phrase 0",)
    assert sum(len(v) for v in listener._spare.values()) <= listener_module.MAX_SPARE_RECOGNIZERS
    assert "odd" not in listener._calls
