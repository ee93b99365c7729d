"""`dialer sim`: simulated callees and agents on pjsua2, driven by real line processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from siputil import FINAL, SimProcess, events_until, kinds, pool_of, trunk, typed

from sip.events import (
    Accepted,
    AgentAnswered,
    AgentEnded,
    AgentFailed,
    AgentRinging,
    Answered,
    Failed,
    Hangup,
    PlayDone,
    Ringing,
)

pytestmark = pytest.mark.sip


PLAN = """
[numbers."+15550001"]   # a human: rings, says something, hangs up
ring = 0.3
play = "voice.wav"
talk = 1.5

[numbers."+15550002"]
reject = 486
[numbers."+15550003"]
reject = 603
[numbers."+15550004"]
reject = 480
[numbers."+15550005"]
reject = 404
[numbers."+15550006"]
reject = 503

[numbers."+15550007"]   # rings until we give up
answer = false

[numbers."+15550008"]   # answers and stays silent until we hang up
silent = true

[numbers."+15550010"]   # a caller who keeps talking
play = "voice.wav"

[agents.agent1]
ring = 0.2
hangup_after = 1.5
"""


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimProcess]:
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(tmp_path / "voice.wav"),
         "synth", "6", "sine", "300", "vol", "0.5"],
        check=True,
    )  # fmt: skip
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    farm = SimProcess(plan)
    try:
        yield farm
    finally:
        farm.stop()


async def test_each_number_behaves_as_its_plan_says(sim: SimProcess) -> None:
    uri = f"sip:127.0.0.1:{sim.port}"
    async with pool_of(trunk("sim", uri), lines=1, measure_audio=True) as pool:
        await pool.dial("human", "+15550001", "sim")
        human = await events_until(pool, "human", FINAL)
        refusals = {}
        rejecting = {"+15550002": 486, "+15550003": 603, "+15550004": 480, "+15550005": 404}
        rejecting |= {"+15550006": 503, "+19999999": 404}  # the last is not in the plan
        for number, status in rejecting.items():
            await pool.dial(number, number, "sim")
            refusals[status, number] = (await events_until(pool, number, FINAL))[-1]
        await pool.dial("ringing", "+15550007", "sim", ring_timeout=1)
        unanswered = await events_until(pool, "ringing", FINAL)
        await pool.dial("silent", "+15550008", "sim")
        await events_until(pool, "silent", Answered)
        await pool.hangup("silent")
        silent = await events_until(pool, "silent", FINAL)

    assert kinds(human) == [Accepted, Ringing, Answered, Hangup]
    talked = typed(human[-1], Hangup)
    assert talked.by == "remote"
    assert talked.rx_voiced is not None and talked.rx_voiced > 20  # the tap heard the callee
    assert talked.at is not None and human[2].at is not None
    assert 1.4 < talked.at - human[2].at < 2.5
    for (status, _), event in refusals.items():
        assert typed(event, Failed).status == status
    gave_up = typed(unanswered[-1], Failed)
    assert gave_up.timeout is True and gave_up.status == 487
    assert typed(silent[-1], Hangup).rx_voiced == 0
    ended = sim.wait_for(lambda e: e["event"] == "ended" and e["number"] == "+15550008")
    assert ended["by"] == "remote"


async def test_bridge_to_a_simulated_agent_carries_the_callers_voice(sim: SimProcess) -> None:
    async with pool_of(trunk("sim", f"sip:127.0.0.1:{sim.port}")) as pool:
        await pool.dial("c1", "+15550010", "sim")
        await events_until(pool, "c1", Answered)
        await pool.transfer("c1", f"sip:agent1@127.0.0.1:{sim.port}", "bridge")
        bridged = await events_until(pool, "c1", (AgentEnded, AgentFailed, Hangup))
        await pool.hangup("c1")
        await events_until(pool, "c1", FINAL)
    assert kinds(bridged) == [AgentRinging, AgentAnswered, AgentEnded]
    agent = sim.wait_for(lambda e: e["event"] == "ended" and e["number"] == "agent1")
    assert agent["by"] == "local"  # the agent hung up after hangup_after
    assert agent["voiced_frames"] > 20  # and heard the caller through the bridge


async def test_refer_to_a_simulated_agent(sim: SimProcess) -> None:
    async with pool_of(trunk("sim", f"sip:127.0.0.1:{sim.port}")) as pool:
        await pool.dial("c1", "+15550008", "sim")
        await events_until(pool, "c1", Answered)
        await pool.transfer("c1", f"sip:agent1@127.0.0.1:{sim.port}", "refer")
        events = await events_until(pool, "c1", FINAL)
    assert kinds(events)[-2:] == [AgentAnswered, Hangup]
    assert typed(events[-1], Hangup).by == "transfer"
    sim.wait_for(lambda e: e["event"] == "transferred" and e["number"] == "+15550008")
    sim.wait_for(lambda e: e["event"] == "answered" and e["number"] == "agent1")


async def test_the_bots_audio_reaches_the_callee(sim: SimProcess, tone_wav: Path) -> None:
    async with pool_of(trunk("sim", f"sip:127.0.0.1:{sim.port}")) as pool:
        await pool.dial("c1", "+15550008", "sim")
        await events_until(pool, "c1", Answered)
        await pool.play("c1", str(tone_wav))
        await events_until(pool, "c1", PlayDone)
        await pool.hangup("c1")
        await events_until(pool, "c1", FINAL)
    ended = sim.wait_for(lambda e: e["event"] == "ended" and e["number"] == "+15550008")
    assert ended["voiced_frames"] > 20


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ('[numbers."+1"]\nring = -1\n', "numbers.+1.ring"),
        ('[numbers."+1"]\nplay = "none.wav"\n', "no file"),
        ('[numbers."+1"]\nreject = 200\n', "numbers.+1.reject"),
        ('[numbers."+1"]\nreject = 486\nanswer = false\n', "exclude each other"),
        ("[numbers\n", "not valid TOML"),
        ('[callers."+1"]\n', "callers"),
    ],
)
def test_bad_plans_are_refused_in_one_line(tmp_path: Path, plan: str, message: str) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(plan)
    exe = Path(sys.executable).with_name("dialer")
    done = subprocess.run([str(exe), "sim", "--plan", str(path)], capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert done.returncode == 1
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and message in error[0], done.stderr
