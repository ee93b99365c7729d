"""Call scripts and answering-machine detection end to end: real line processes hearing
synthesised voices over real SIP/RTP (`dialer sim` callees), real ledger.

The callee's own trace is the referee: when its greeting started playing (``playing``),
where the key phrase ends in its WAV (from the corpus generator), when our BYE arrived
(``ended``, by remote) and how long it was connected (``talked``).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from workerutil import (
    make_campaign,
    rounded,
    running_worker,
    setup_account,
    simulator,
    wait_for_state,
)

from billing.ledger import ENTRY, Ledger
from billing.storage import Database
from billing.tariff import Counter
from dialer import store
from dialer.campaign_state import Action
from dialer.campaigns import change_state

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import amd_corpus

pytestmark = pytest.mark.sip

T, S = Counter.TELEPHONY, Counter.SPEECH
VOICEMAIL, ANNOUNCEMENT, HUMAN = "+14155553001", "+14155553002", "+14155553003"


async def ledger_seconds(database: Database, call_id: str, counter: Counter) -> int:
    rows = await database.run(
        lambda c: c.execute(
            select(ENTRY.c.seconds).where(ENTRY.c.call_id == call_id, ENTRY.c.counter == counter)
        ).all(),
        write=False,
    )
    return -int(sum(r.seconds for r in rows))


async def test_the_default_script_hangs_up_on_machines_and_lets_humans_talk(
    sqlite_url: str, tmp_path: Path
) -> None:
    rng = random.Random(5)
    voicemail = amd_corpus.make_sample("voicemail", 0, "slt", 1.0, tmp_path, tmp_path, rng,
                                       beep=False)  # fmt: skip
    announcement = amd_corpus.make_sample("announcement", 0, "kal", 1.0, tmp_path, tmp_path, rng,
                                          sit=True)  # fmt: skip
    human = amd_corpus.make_sample("human", 0, "slt", 1.0, tmp_path, tmp_path, rng)
    assert voicemail.key_end_s is not None
    plan = f"""
[numbers."{VOICEMAIL}"]
ring = 0.2
play = "{tmp_path / voicemail.file}"
[numbers."{ANNOUNCEMENT}"]
ring = 0.2
play = "{tmp_path / announcement.file}"
[numbers."{HUMAN}"]
ring = 0.2
talk = 7
play = "{tmp_path / human.file}"
"""
    with simulator(tmp_path, plan) as sim:
        async with Database(sqlite_url) as database:
            ledger = Ledger(database)
            await setup_account(database, ledger, sim, "platform", 10)
            await make_campaign(database, tmp_path, "spring", "main",
                                [f"{VOICEMAIL},", f"{ANNOUNCEMENT},", f"{HUMAN},"],
                                max_concurrent=3, cps=10, max_call_seconds=60,
                                retries=0)  # fmt: skip
            await change_state(database, ledger.tariff, "spring", Action.START)
            async with running_worker(database, ledger):
                status = await wait_for_state(database, "spring", {"completed"})
            calls = {
                c.phone: c
                for c in await database.run(
                    lambda c: store.calls_of(c, store.campaign_by_name(c, "spring").id),
                    write=False,
                )
            }
            billed = {p: await ledger_seconds(database, c.call_id, T) for p, c in calls.items()}
    trace = {
        (e["number"], e["event"]): e
        for e in sim.events
        if "number" in e and e.get("role", "callee") == "callee"
    }
    assert status["calls"]["answering_machine"] == 2 and status["calls"]["answered"] == 1

    # voicemail: BYE within 1.5 s after the key phrase ends in the callee's audio
    call = calls[VOICEMAIL]
    assert call.disposition == "answering_machine" and call.hangup_by == "local"
    assert call.amd_reason.startswith("phrase: ") and "after the answer" in call.amd_reason
    phrase_end = trace[(VOICEMAIL, "playing")]["at"] + voicemail.key_end_s
    bye = trace[(VOICEMAIL, "ended")]
    assert bye["by"] == "remote"
    assert bye["at"] - phrase_end <= 1.5, (bye["at"] - phrase_end, call.amd_reason)
    assert bye["talked"] < voicemail.seconds - 2  # the rest of the greeting was never heard
    # billed up to the BYE only: the callee's clock, rounded up to the increment
    assert call.billed_telephony_seconds == billed[VOICEMAIL] == rounded(bye["talked"])

    # the carrier intercept's SIT tones end it before the announcement's words
    call = calls[ANNOUNCEMENT]
    assert call.disposition == "answering_machine" and call.amd_reason.startswith("sit: ")
    assert call.billed_telephony_seconds == billed[ANNOUNCEMENT] == 15

    # a person: "hello?" then silence; the bot keeps listening until the callee hangs up
    call = calls[HUMAN]
    assert call.disposition == "answered" and call.hangup_by == "remote" and not call.amd_reason
    assert 6.5 <= trace[(HUMAN, "ended")]["talked"] <= 7.5
    assert call.billed_telephony_seconds == billed[HUMAN] == 15


async def test_a_script_transfers_to_an_agent_and_bills_by_segment(
    sqlite_url: str, tmp_path: Path
) -> None:
    rng = random.Random(8)
    human = amd_corpus.make_sample("human", 1, "slt", 1.0, tmp_path, tmp_path, rng)
    plan = f"""
[numbers."{HUMAN}"]
ring = 0.2
play = "{tmp_path / human.file}"
[agents.agent1]
ring = 0.2
hangup_after = 12
"""
    with simulator(tmp_path, plan) as sim:
        script = tmp_path / "spring.yaml"
        script.write_text(f"""\
blocks:
  hello:
    say: "Hello, this is Anna from Acme."
    next: ask
  ask:
    listen: {{timeout: 2, no_match: agent}}
  agent:
    transfer: {{agent: "sip:agent1@127.0.0.1:{sim.port}", mode: bridge, on_failure: end}}
    next: bye
  bye:
    say: "Thank you, goodbye."
""")
        async with Database(sqlite_url) as database:
            ledger = Ledger(database)
            await setup_account(database, ledger, sim, "platform", 10)
            await make_campaign(database, tmp_path, "spring", "main", [f"{HUMAN},"],
                                script=str(script))  # fmt: skip
            await change_state(database, ledger.tariff, "spring", Action.START)
            async with running_worker(database, ledger):
                await wait_for_state(database, "spring", {"completed"})
            [call] = await database.run(lambda c: store.calls_of(c, 1), write=False)
            speech = await ledger_seconds(database, call.call_id, S)
    talked = next(e["talked"] for e in sim.events
                  if e["event"] == "ended" and e.get("number") == HUMAN)  # fmt: skip
    assert [s["kind"] for s in call.segments] == ["bot", "agent", "bot"]
    assert 11.5 <= call.agent_seconds <= 13.0
    # the script said goodbye and hung up itself
    assert call.disposition == "answered" and call.hangup_by == "local"
    bot_seconds = sum(s["end"] - s["start"] for s in call.segments if s["kind"] == "bot")
    assert call.billed_telephony_seconds == rounded(talked)
    assert call.billed_speech_seconds == speech == rounded(bot_seconds)
    # platform trunk: telephony all along (~18 s -> 30), speech only with the bot (~6 s -> 15)
    assert (call.billed_telephony_seconds, call.billed_speech_seconds) == (30, 15)
