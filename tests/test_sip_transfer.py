"""Agent transfers on real pjsua2 lines against real sipp: bridge and blind REFER."""

from __future__ import annotations

from pathlib import Path

import pytest
from siputil import FINAL, Sipp, events_until, kinds, pool_of, sipps, trunk, typed

from sip.events import AgentAnswered, AgentEnded, AgentFailed, AgentRinging, Answered, Error, Hangup

AGENT_DONE = (AgentFailed, AgentEnded, Hangup)

pytestmark = pytest.mark.sip


async def test_bridge_transfer_busy_then_answered_then_agent_leaves(tmp_path: Path) -> None:
    with sipps(
        Sipp("uas_answer", tmp_path, sets={"ring_ms": 0, "talk_ms": 0}),
        Sipp("uas_reject_486", tmp_path),
        Sipp("uas_answer", tmp_path, sets={"ring_ms": 300, "talk_ms": 1000}),
    ) as (caller, busy_agent, agent):
        async with pool_of(trunk("main", caller.uri)) as pool:
            await pool.dial("c1", "+15550001", "main")
            await events_until(pool, "c1", Answered)

            await pool.transfer("c1", f"sip:agent@127.0.0.1:{busy_agent.port}", "bridge")
            busy = await events_until(pool, "c1", AGENT_DONE)

            await pool.transfer("c1", f"sip:agent@127.0.0.1:{agent.port}", "bridge")
            bridged = await events_until(pool, "c1", AGENT_DONE)

            # the caller is back with the bot: the line still carries the call
            await pool.hangup("c1")
            end = await events_until(pool, "c1", FINAL)
        for run in (caller, busy_agent, agent):
            assert run.wait(10) == 0, run.error_text()
    assert kinds(busy) == [AgentFailed] and typed(busy[0], AgentFailed).status == 486
    assert kinds(bridged) == [AgentRinging, AgentAnswered, AgentEnded]
    assert typed(bridged[1], AgentAnswered).mode == "bridge"
    assert typed(end[-1], Hangup).by == "local"
    assert agent.sent("BYE")  # the agent hung up; the caller leg stayed up until our BYE
    assert caller.received("BYE")


async def test_caller_hanging_up_during_a_bridge_ends_the_agent_leg(tmp_path: Path) -> None:
    with sipps(
        Sipp("uas_answer", tmp_path, sets={"ring_ms": 0, "talk_ms": 1500}),
        Sipp("uas_answer", tmp_path, sets={"ring_ms": 0, "talk_ms": 0}),
    ) as (caller, agent):
        async with pool_of(trunk("main", caller.uri)) as pool:
            await pool.dial("c1", "+15550001", "main")
            await events_until(pool, "c1", Answered)
            await pool.transfer("c1", f"sip:agent@127.0.0.1:{agent.port}")
            events = await events_until(pool, "c1", FINAL)
        assert caller.wait(10) == 0, caller.error_text()
        assert agent.wait(10) == 0, agent.error_text()  # it got our BYE
    assert kinds(events) in ([AgentAnswered, Hangup], [AgentRinging, AgentAnswered, Hangup])
    assert typed(events[-1], Hangup).by == "remote"


async def test_refer_success_ends_the_bot_leg(tmp_path: Path) -> None:
    with sipps(Sipp("uas_refer_ok", tmp_path)) as (callee,):
        async with pool_of(trunk("main", callee.uri)) as pool:
            await pool.dial("c1", "+15550001", "main")
            await events_until(pool, "c1", Answered)
            await pool.transfer("c1", "sip:agent@127.0.0.1:5999", "refer")
            events = await events_until(pool, "c1", FINAL)
        assert callee.wait(10) == 0, callee.error_text()
    assert kinds(events) == [AgentRinging, AgentAnswered, Hangup]
    assert typed(events[1], AgentAnswered).mode == "refer"
    assert typed(events[-1], Hangup).by == "transfer"
    refer = callee.received("REFER")[0]
    assert refer.header("Refer-To") in ("sip:agent@127.0.0.1:5999", "<sip:agent@127.0.0.1:5999>")


async def test_refer_failure_keeps_the_caller_with_the_bot(tmp_path: Path) -> None:
    with sipps(Sipp("uas_refer_fail", tmp_path)) as (callee,):
        async with pool_of(trunk("main", callee.uri)) as pool:
            await pool.dial("c1", "+15550001", "main")
            await events_until(pool, "c1", Answered)
            await pool.transfer("c1", "sip:agent@127.0.0.1:5999", "refer")
            failed = await events_until(pool, "c1", AGENT_DONE)
            await pool.hangup("c1")
            end = await events_until(pool, "c1", FINAL)
        assert callee.wait(10) == 0, callee.error_text()
    assert kinds(failed) == [AgentFailed] and typed(failed[0], AgentFailed).status == 486
    assert typed(end[-1], Hangup).by == "local"


async def test_a_refer_from_the_callee_is_declined(tmp_path: Path) -> None:
    """Toll fraud guard: the far end cannot make the line dial anything."""
    with sipps(Sipp("uas_refer_us", tmp_path)) as (callee,):
        async with pool_of(trunk("main", callee.uri)) as pool:
            await pool.dial("c1", "+15550001", "main")
            await events_until(pool, "c1", Answered)
            declined = await events_until(pool, "c1", Error)
            await pool.hangup("c1")
            await events_until(pool, "c1", FINAL)
        assert callee.wait(10) == 0, callee.error_text()  # it got 603, then our BYE
    assert "declined a REFER" in typed(declined[-1], Error).message
    assert len(callee.received("INVITE")) == 1  # no call to the REFER target


async def test_agent_ring_timeout_and_one_transfer_at_a_time(tmp_path: Path) -> None:
    with sipps(
        Sipp("uas_answer", tmp_path, sets={"ring_ms": 0, "talk_ms": 0}),
        Sipp("uas_noanswer", tmp_path),
    ) as (caller, silent_agent):
        async with pool_of(trunk("main", caller.uri)) as pool:
            await pool.dial("c1", "+15550001", "main")
            await events_until(pool, "c1", Answered)
            agent = f"sip:agent@127.0.0.1:{silent_agent.port}"
            await pool.transfer("c1", agent, "bridge", ring_timeout=1.5)
            await pool.transfer("c1", agent, "bridge")
            second = await events_until(pool, "c1", Error)
            gave_up = await events_until(pool, "c1", AgentFailed)
            await pool.hangup("c1")
            await events_until(pool, "c1", FINAL)
        assert silent_agent.wait(10) == 0, silent_agent.error_text()  # it got our CANCEL
        assert caller.wait(10) == 0
    assert "a transfer is under way" in typed(second[-1], Error).message
    assert typed(gave_up[-1], AgentFailed).status == 408
