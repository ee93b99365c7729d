"""One call's run through its script (pure: events and times in, actions out).

The worker feeds it what the line reports (answered, play_done, speech facts, agent
events) and the timer it asked for; it answers with actions for the line. Answering-
machine detection runs beside the blocks from the answer on: a machine decision ends
the call whatever block runs (not while the caller is with an agent).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dialer.amd import AmdDetector, AmdSettings, Decision
from dialer.intents import IntentMatcher
from dialer.script import END, Block, End, Listen, Say, Script, Transfer
from sip.events import Speech


@dataclass(frozen=True)
class Play:
    wav: str


@dataclass(frozen=True)
class StopPlay:
    pass


@dataclass(frozen=True)
class StartTransfer:
    agent: str
    mode: str
    ring_timeout: float


@dataclass(frozen=True)
class HangUp:
    reason: str
    machine: Decision | None = None


LineAction = Play | StopPlay | StartTransfer | HangUp


class ScriptRun:
    def __init__(
        self,
        script: Script,
        audio: Mapping[str, str],
        amd: AmdSettings | None = None,
    ) -> None:
        """``audio``: block name -> the WAV its ``say`` plays (synthesised beforehand)."""
        self.script = script
        self.audio = audio
        self.matcher = IntentMatcher(script.intents, script.threshold)
        settings = amd or script.amd
        self.amd = AmdDetector(self.matcher, settings)
        self.block: Block | None = None
        self.deadline: float | None = None  # absolute time of the listen timeout
        self.answered_at: float | None = None
        self.with_agent = False
        self.ended = False
        self.path: list[str] = []  # the blocks run, in order (for the CDR and events)
        self.heard: list[dict[str, Any]] = []  # intents matched by listen blocks

    # -- events ---------------------------------------------------------------------------

    def answered(self, now: float) -> list[LineAction]:
        self.answered_at = now
        return self._enter(self.script.start, now)

    def play_done(self, now: float) -> list[LineAction]:
        if self.block is not None and isinstance(self.block.action, Say):
            return self._enter(self.block.next, now)
        return []

    def speech(self, fact: Speech, now: float) -> list[LineAction]:
        if self.ended or self.with_agent or self.answered_at is None:
            return []
        decision = self.amd.feed(fact)
        if decision is not None:
            self.ended = True
            self.deadline = None
            return [HangUp("answering machine", decision)]
        block = self.block
        if fact.kind == "final" and block is not None and isinstance(block.action, Listen):
            routes = block.action.intents
            match = self.matcher.best(fact.text or "", only=list(routes)) if routes else None
            if match is not None:
                self.heard.append(
                    {"block": block.name, "intent": match.intent, "score": match.score,
                     "text": fact.text}
                )  # fmt: skip
                return self._enter(routes[match.intent], now)
        return []

    def timer(self, now: float) -> list[LineAction]:
        if self.deadline is None or now < self.deadline or self.ended or self.with_agent:
            return []
        self.deadline = None
        block = self.block
        if block is not None and isinstance(block.action, Listen):
            return self._enter(block.action.no_match, now)
        return []

    def agent_answered(self, mode: str) -> None:
        self.with_agent = mode == "bridge"
        if self.with_agent:
            self.amd.restart_clock()  # the line listens again from zero after the agent

    def agent_failed(self, now: float) -> list[LineAction]:
        block = self.block
        if block is not None and isinstance(block.action, Transfer) and not self.ended:
            return self._enter(block.action.on_failure, now)
        return []

    def agent_ended(self, now: float) -> list[LineAction]:
        """The agent left a bridged call: the caller is back with the bot, where the
        script was (a transfer from outside the script, `transfer_after`, may have cut a
        prompt: the bridge stopped it, so the script moves on)."""
        self.with_agent = False
        block = self.block
        if block is None or self.ended:
            return []
        if isinstance(block.action, Transfer | Say):
            return self._enter(block.next, now)
        if isinstance(block.action, Listen):
            return self._enter(block.name, now)  # listen afresh, with a fresh timeout
        return []

    def line_error(self, now: float) -> list[LineAction]:
        """The line could not do what the block asked (a prompt that cannot play, a
        transfer that cannot start): go on as if it had finished or failed."""
        block = self.block
        if block is None or self.ended or self.with_agent:
            return []
        if isinstance(block.action, Say):
            return self._enter(block.next, now)
        if isinstance(block.action, Transfer):
            return self._enter(block.action.on_failure, now)
        return []

    # -- blocks ---------------------------------------------------------------------------

    def _enter(self, name: str, now: float) -> list[LineAction]:
        if self.ended:
            return []
        for _ in range(len(self.script.blocks) + 1):  # say -> say -> ... without a wait
            block = self.script.block(name) if name != END else Block(END, End())
            self.block = block
            self.path.append(block.name)
            self.deadline = None
            action = block.action
            if isinstance(action, End):
                self.ended = True
                return [HangUp("script end")]
            if isinstance(action, Say):
                wav = self.audio.get(block.name)
                if wav is None:
                    name = block.next  # nothing to play (speech synthesis failed): go on
                    continue
                return [Play(wav)]
            if isinstance(action, Listen):
                if action.timeout is not None:
                    self.deadline = now + action.timeout
                return []
            return [StartTransfer(action.agent, action.mode, action.ring_timeout)]
        self.ended = True
        return [HangUp("script loops without waiting")]
