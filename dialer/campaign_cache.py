"""The running campaigns as the dialling loop sees them, refreshed from the database.

Each refresh (every ``REFRESH_SECONDS``) reads the trunks in use (a change reaches the
line pool: ``LinePool.reconfigure`` replaces lines as their calls end) and the running
campaigns; a campaign is dialled once its script's prompts are ready (synthesised or
copied beside the dialling, seconds per prompt, other campaigns go on). A running
campaign that cannot dial says why: ``blocked_reason`` in its row (``campaign status``:
``blocked``) and a ``campaign.blocked`` event, cleared at its next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import struct
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from billing.storage import Database, first_line
from billing.tariff import TrunkKind
from dialer import store
from dialer.errors import DialerError
from dialer.events import Events
from dialer.pacing import TokenBucket
from dialer.prompts import materialise
from dialer.retry import RetryPolicy
from dialer.script import GREETING, Say, Script, script_of
from dialer.text import shorten
from dialer.tts import synthesise
from dialer.windows import CallingWindow
from sip.pool import LinePool
from sip.protocol import TrunkConfig

log = structlog.get_logger("dialer.worker")

REFRESH_SECONDS = 0.5
SCRIPT_RETRY_SECONDS = 60.0

_UNUSABLE_TRUNKS: set[tuple[str, str]] = set()  # (name, problem) already logged


def trunk_configs(rows: list[Any]) -> tuple[TrunkConfig, ...]:
    """The lines' view of the trunks in use. A row that no longer passes the checks (saved
    by an older version: a bare `sip:`, a CR/LF in a field) is left out and logged once,
    never allowed to stop the worker; its campaigns show the trunk as not carried."""
    found: list[TrunkConfig] = []
    for r in rows:
        try:
            found.append(
                TrunkConfig(
                    name=r.name,
                    kind=r.kind,
                    uri=r.uri,
                    outbound_proxy=r.outbound_proxy,
                    username=r.username,
                    password=r.password,
                    registers=r.registers,
                )
            )
        except ValidationError as exc:
            problem = shorten(exc.errors()[0].get("msg", "invalid"), 120)
            if (r.name, problem) not in _UNUSABLE_TRUNKS:
                _UNUSABLE_TRUNKS.add((r.name, problem))
                log.error("trunk unusable: fix it with `dialer trunk`", trunk=r.name,
                          problem=problem)  # fmt: skip
    return tuple(found)


def greeting_wav(folder: Path) -> Path:
    """The default script's short greeting: a two-tone chime (no speech engine needed)."""
    path = folder / "greeting.wav"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rate = 16000
    frames = bytearray()
    for freq, seconds in ((660.0, 0.35), (880.0, 0.5)):
        for n in range(int(rate * seconds)):
            fade = min(1.0, n / 400, (rate * seconds - n) / 400)
            frames += struct.pack("<h", int(9000 * fade * math.sin(2 * math.pi * freq * n / rate)))
    tmp = path.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(frames))
    tmp.replace(path)
    return path


@dataclass
class CampaignView:
    """What the dialing loop needs of a running campaign."""

    row: Any
    trunk_kind: TrunkKind
    trunk_name: str
    window: CallingWindow
    retry: RetryPolicy
    bucket: TokenBucket
    script: Script
    audio: dict[str, str]  # block -> WAV of its `say`


class CampaignCache:
    def __init__(
        self, db: Database, pool: LinePool, assets: Path, events: Events | None = None
    ) -> None:
        self.db = db
        self.pool = pool
        self.events = events
        self.assets = assets
        self.greeting = str(greeting_wav(assets))
        self.campaigns: dict[int, CampaignView] = {}
        self.refreshed = 0.0
        pool_config = getattr(pool, "config", None)
        #: the trunks the pool's lines are configured with (or being replaced to carry)
        self.trunks: tuple[TrunkConfig, ...] = tuple(getattr(pool_config, "trunks", ()))
        self.trunk_problem: str | None = None  # why the trunks in use cannot be carried
        self._scripts: dict[tuple[int, str | None], tuple[Script, dict[str, str]]] = {}
        self._preparing: dict[tuple[int, str | None], asyncio.Task[None]] = {}
        self._retry_at: dict[tuple[int, str | None], float] = {}
        self._blocked: dict[int, str | None] = {}  # campaign id: the reason written
        self._troubles: dict[str, str] = {}  # campaign: the problem last logged

    def due(self) -> bool:
        return time.monotonic() - self.refreshed >= REFRESH_SECONDS

    def close(self) -> None:
        for task in list(self._preparing.values()):
            task.cancel()

    def forget_account(self, account: str) -> None:
        """Its campaigns were paused: not dialled until a refresh finds them running."""
        self.campaigns = {k: v for k, v in self.campaigns.items() if v.row.account != account}

    async def refresh(self) -> None:
        await self._refresh_trunks()
        rows = await self.db.run(store.running_campaigns, write=False)
        fresh: dict[int, CampaignView] = {}
        for row in rows:
            old = self.campaigns.get(row.id)
            compiled = self._script(row)
            if compiled is None:
                continue
            try:
                fresh[row.id] = CampaignView(
                    row=row,
                    trunk_kind=TrunkKind(row.trunk_kind),
                    trunk_name=row.trunk_name,
                    window=CallingWindow.parse(row.window, row.days),
                    retry=RetryPolicy.from_json(row.retry),
                    bucket=old.bucket if old and old.row.cps == row.cps else TokenBucket(row.cps),
                    script=compiled[0],
                    audio=compiled[1],
                )
            except Exception as exc:  # one unusable campaign must not stop the others
                await self.unusable(row, exc)
        self.campaigns = fresh
        self.refreshed = time.monotonic()

    async def _refresh_trunks(self) -> None:
        try:
            rows = await self.db.run(store.trunks_in_use, write=False)
        except DialerError as exc:  # more trunks than a line carries: keep the current set
            self.trunk_problem = first_line(exc)
            return
        self.trunk_problem = None
        wanted = trunk_configs(list(rows))
        if wanted != self.trunks:
            log.info("trunks changed: lines take them as their calls end",
                     trunks=[t.name for t in wanted])  # fmt: skip
            self.pool.reconfigure(wanted)
            self.trunks = wanted

    def carried(self, view: CampaignView) -> str | None:
        """None if the lines carry the campaign's trunk; else why not."""
        if view.trunk_name in {t.name for t in self.trunks}:
            return None
        return f"trunk {view.trunk_name!r} not carried: {self.trunk_problem or 'not loaded'}"

    async def block(self, row: Any, reason: str | None) -> None:
        """Say (once per reason) why a running campaign cannot dial; None: it can again."""
        if self._blocked.get(row.id, row.blocked_reason) == reason:
            return
        self._blocked[row.id] = reason
        await self.db.run(functools.partial(store.set_blocked, campaign_id=row.id, reason=reason))
        if reason is not None:
            log.error("campaign blocked", campaign=row.name, reason=reason)
        if self.events is not None:
            self.events.emit("campaign.blocked", account=row.account, campaign=row.name,
                             reason=reason)  # fmt: skip

    async def unusable(self, row: Any, exc: Exception) -> None:
        """A campaign that cannot be dialled now: logged once per kind of trouble, and
        blocked with the reason."""
        problem = f"{type(exc).__name__}: {first_line(exc)}"
        if self._troubles.get(row.name) != problem:
            self._troubles[row.name] = problem
            log.error("campaign not dialled", campaign=row.name, problem=problem)
        await self.block(row, f"unusable: {first_line(exc)}")

    # -- scripts and prompts ------------------------------------------------------------------

    def _script(self, row: Any) -> tuple[Script, dict[str, str]] | None:
        """The campaign's script with its prompts ready, once per script text; None until
        then (the preparation runs beside the dialling; a failure is retried later)."""
        key = (row.id, row.script_text)
        ready = self._scripts.get(key)
        if ready is not None:
            return ready
        if key not in self._preparing and time.monotonic() >= self._retry_at.get(key, 0.0):
            self._preparing[key] = asyncio.create_task(self._prepare(key, row))
        return None

    async def _prepare(self, key: tuple[int, str | None], row: Any) -> None:
        try:
            script = script_of(row.script, row.script_text)
            # pre-recorded prompts play from the copies stored at create (checked by hash),
            # never from the host path the script named
            stored = await self.db.run(
                functools.partial(store.campaign_prompts, campaign_id=row.id), write=False
            )
            audio: dict[str, str] = {}
            for block in script.blocks.values():
                action = block.action
                if isinstance(action, Say):
                    if action.wav == GREETING:
                        audio[block.name] = self.greeting
                    elif action.wav is not None:
                        wav = await asyncio.to_thread(materialise, self.assets, action.wav, stored)
                        audio[block.name] = str(wav)
                    elif action.text is not None:
                        wav = await asyncio.to_thread(
                            synthesise, action.text, action.voice or script.voice, self.assets
                        )
                        audio[block.name] = str(wav)
            self._scripts[key] = (script, audio)
        except Exception as exc:  # a script or prompt that cannot be used now: say so, retry
            log.error("campaign script unusable: not dialling it yet", campaign=row.name,
                      error=first_line(exc), retry_in=SCRIPT_RETRY_SECONDS)  # fmt: skip
            self._retry_at[key] = time.monotonic() + SCRIPT_RETRY_SECONDS
            with contextlib.suppress(Exception):
                await self.block(row, f"script unusable: {first_line(exc)}")
        finally:
            self._preparing.pop(key, None)

    def forget_prompt(self, wav: str) -> None:
        """A prompt the line could not play (a temp cleaner took the cache?): the scripts
        using it are prepared again before their next calls."""
        for key, (_, audio) in list(self._scripts.items()):
            if wav in audio.values() and wav != self.greeting:
                del self._scripts[key]
        if wav == self.greeting:
            greeting_wav(self.assets)
