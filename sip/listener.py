"""The line process's ears: a FrameConsumer that analyses the callee's audio.

Frames arrive on pjmedia's clock thread every 20 ms per call; that thread only queues
them. One analysis thread per line (a line carries 4 calls) runs each listening call's
``CallAnalyzer`` and writes ``speech`` events straight to the pipe. Recognisers are
built per phrase set (the language model is made once and cached on disk) and reused
by the next call that listens for the same phrases: building one takes ~0.15 s.

No pjsua2 object is touched here (object-lifetime rules in sip.engine).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from sip.protocol import event
from sip.recognizer import Recognizer, RecognizerFactory, pocketsphinx_factory
from sip.speech import SAMPLE_RATE, CallAnalyzer, Tuning

log = structlog.get_logger("sip.listener")

#: Frames older than this when the analysis thread gets to them are skipped (counted in
#: ``skipped_frames``): a decision made on stale audio would come too late to save
#: minutes, and catching up would delay every later frame of every call on the line.
MAX_LAG_SECONDS = 1.0
MAX_SPARE_RECOGNIZERS = 8  # ~7 MiB each: kept for reuse, the oldest phrase sets go first

Emit = Callable[[list[dict[str, Any]]], None]
_STOP = object()


class Listener:
    def __init__(
        self,
        emit: Emit,
        factory: RecognizerFactory = pocketsphinx_factory,
        tuning: Tuning | None = None,
    ) -> None:
        self._emit = emit
        self._factory = factory
        self._tuning = tuning
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="listener", daemon=True)
        self._calls: dict[str, tuple[CallAnalyzer, tuple[str, ...]]] = {}
        # spare recognisers per phrase set, least recently used first
        self._spare: dict[tuple[str, ...], list[Recognizer]] = {}
        self.cpu_seconds = 0.0  # analysis thread CPU (QA and benchmarks)
        self.audio_seconds = 0.0
        self.skipped_frames = 0
        self._thread.start()

    # -- FrameConsumer (clock thread / SIP thread): queue only -------------------------------

    def call_started(self, call_id: str, clock_rate: int, phrases: Sequence[str]) -> None:
        self._inbox.put(("start", call_id, clock_rate, tuple(phrases)))

    def frame(self, call_id: str, pcm: bytes) -> None:
        self._inbox.put(("frame", call_id, pcm, time.monotonic()))

    def call_ended(self, call_id: str) -> None:
        self._inbox.put(("end", call_id))

    def close(self, timeout: float = 5.0) -> None:
        self._inbox.put(_STOP)
        self._thread.join(timeout)

    # -- the analysis thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            if item is _STOP:
                return
            started = time.thread_time()
            try:
                self._handle(item)
            except Exception:  # one call's trouble must not deafen the others
                log.exception("speech analysis failed", call_id=item[1])
                self._calls.pop(item[1], None)
            self.cpu_seconds += time.thread_time() - started

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind, call_id = item[0], item[1]
        if kind == "frame":
            entry = self._calls.get(call_id)
            if entry is None:
                return
            if time.monotonic() - item[3] > MAX_LAG_SECONDS:
                if self.skipped_frames % 500 == 0:
                    log.warning("speech analysis behind: skipping audio", call_id=call_id)
                self.skipped_frames += 1
                entry[0].skip()
                return
            self.audio_seconds += len(item[2]) / 2 / 16000
            self._send(call_id, entry[0].feed(item[2]))
        elif kind == "start":
            if item[2] != SAMPLE_RATE:
                log.error("cannot listen: unexpected clock rate", call_id=call_id, rate=item[2])
                return
            phrases = item[3]
            spare = self._spare.get(phrases)
            if spare:
                recognizer = spare.pop()
                recognizer.reset()
                if not spare:
                    del self._spare[phrases]
            else:
                recognizer = self._factory(phrases)
            self._calls[call_id] = (CallAnalyzer(recognizer, self._tuning), phrases)
        elif kind == "end":
            entry = self._calls.pop(call_id, None)
            if entry is not None:
                analyzer, phrases = entry
                self._send(call_id, analyzer.finish())
                if analyzer.recognizer is not None:
                    spares = self._spare.pop(phrases, [])  # back in: most recently used
                    self._spare[phrases] = [*spares, analyzer.recognizer]
                    self._trim_spares()

    def _trim_spares(self) -> None:
        while sum(len(v) for v in self._spare.values()) > MAX_SPARE_RECOGNIZERS:
            oldest = next(iter(self._spare))
            self._spare[oldest].pop(0)
            if not self._spare[oldest]:
                del self._spare[oldest]

    def _send(self, call_id: str, facts: list[dict[str, Any]]) -> None:
        if facts:
            now = time.time()
            with contextlib.suppress(Exception):
                self._emit([event("speech", call_id=call_id, at=now, **f) for f in facts])
