"""Call scripts: loading, validation errors (file, block, line), and one call's run."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from dialer.amd import MACHINE_INTENT, AmdSettings
from dialer.prompts import Prompt
from dialer.script import (
    ANSWERING_MACHINE_PHRASES,
    END,
    GREETING,
    Listen,
    Say,
    ScriptError,
    Transfer,
    default_script,
    load_script,
    parse_script,
    read_script,
    script_of,
)
from dialer.script_run import HangUp, Play, ScriptRun, StartTransfer
from sip.events import Speech


def heard(**fact: Any) -> Speech:
    """What the callee's audio holds, as the line reports it."""
    return Speech(call_id="c1", **fact)


GOOD = """\
voice: slt
threshold: 75
amd: {cadence: false, greeting_seconds: 6}
intents:
  answering_machine:
    - "you have reached the mailbox of"
  interested: ["yes", "sure", "tell me more"]
  busy: ["i am busy", "call me later"]
blocks:
  hello:
    say: "Hello! This is Anna from Acme."
    next: ask
  ask:
    listen:
      timeout: 6
      intents: {interested: agent, busy: bye}
      no_match: bye
  agent:
    transfer: {agent: "sip:agent@127.0.0.1", mode: bridge, on_failure: bye}
    next: bye
  bye:
    say: {text: "Goodbye.", voice: kal}
    next: end
"""


def test_a_valid_script_loads_with_its_blocks_and_intents() -> None:
    script = parse_script(GOOD, "spring.yaml")
    assert script.start == "hello" and script.threshold == 75 and script.voice == "slt"
    assert script.amd == AmdSettings(threshold=75, greeting_seconds=6, cadence=False)
    assert script.blocks["hello"].action == Say(text="Hello! This is Anna from Acme.")
    assert script.blocks["ask"].action == Listen(6.0, {"interested": "agent", "busy": "bye"}, "bye")
    assert script.blocks["agent"].action == Transfer("sip:agent@127.0.0.1", "bridge", "bye")
    assert script.blocks["bye"].action == Say(text="Goodbye.", voice="kal")
    # authors add phrases to the built-in answering-machine intent, never replace them
    machine = script.intents[MACHINE_INTENT]
    assert machine[: len(ANSWERING_MACHINE_PHRASES)] == ANSWERING_MACHINE_PHRASES
    assert machine[-1] == "you have reached the mailbox of"
    assert (
        "tell me more" in script.phrases() and "leave a message after the tone" in script.phrases()
    )


def test_wav_names_are_relative_to_the_script_or_the_prompts_folder(
    tmp_path: Path, tone_wav: Path
) -> None:
    (tmp_path / "sounds").mkdir()
    (tmp_path / "sounds" / "chime.wav").write_bytes(tone_wav.read_bytes())
    path = tmp_path / "s.yaml"
    path.write_text("blocks:\n  chime:\n    say: {wav: sounds/chime.wav}\n")
    script = load_script(path)
    assert script.blocks["chime"].action == Say(wav="sounds/chime.wav")  # the name, not a path
    _, _, prompts = read_script(path)
    data = tone_wav.read_bytes()
    assert prompts == {"sounds/chime.wav": Prompt(hashlib.sha256(data).hexdigest(), data)}
    # a prompts folder elsewhere: names are relative to it, not to the script
    elsewhere = tmp_path / "prompts"
    (elsewhere / "sounds").mkdir(parents=True)
    (elsewhere / "sounds" / "chime.wav").write_bytes(data)
    script_dir = tmp_path / "scripts"
    script_dir.mkdir()
    (script_dir / "s.yaml").write_text(path.read_text())
    assert read_script(script_dir / "s.yaml", elsewhere)[2].keys() == {"sounds/chime.wav"}
    with pytest.raises(
        ScriptError, match=re.escape("no file 'sounds/chime.wav' in the prompts folder")
    ):
        read_script(script_dir / "s.yaml")


def test_a_stored_script_reads_no_file() -> None:
    """The worker parses the stored text: names are checked, the host is not looked at."""
    script = script_of("/gone/s.yaml", "blocks:\n  a:\n    say: {wav: gone/never.wav}\n")
    assert script.blocks["a"].action == Say(wav="gone/never.wav")
    with pytest.raises(ScriptError, match=r"s.yaml: block 'a' \(line 3\): say.wav: '/etc/x.wav'"):
        script_of("/gone/s.yaml", "blocks:\n  a:\n    say: {wav: /etc/x.wav}\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("blocks: [\n", "s.yaml: line 2: not valid YAML"),
        ("", "s.yaml: the script is empty"),
        ("intents: {}\n", "s.yaml: line 1: no blocks"),
        ("blocks:\n  a:\n    say: hi\n    listen: {}\n",
         "s.yaml: block 'a' (line 3): a block does exactly one of say, listen, transfer, end "
         "(it has say, listen)"),
        ("blocks:\n  a:\n    next: b\n", "block 'a' (line 3): a block does exactly one of"),
        ("blocks:\n  a:\n    say: hi\n    next: nowhere\n",
         "s.yaml: block 'a' (line 3): goes to 'nowhere', which is not a block (nor 'end')"),
        ("blocks:\n  a:\n    listen:\n      intents: {maybe: a}\n",
         "s.yaml: block 'a' (line 4): listen.intents: unknown intent 'maybe'"),
        ("blocks:\n  a:\n    listen:\n      intents: {answering_machine: a}\n",
         "listen.intents: answering_machine is always active and ends the call"),
        ("blocks:\n  a:\n    listen: {timeout: -3}\n",
         "block 'a' (line 3): listen.timeout must be a number from 0.5 to 3600"),
        ("blocks:\n  a:\n    listen: {timout: 3}\n",
         "block 'a' (line 3): listen: unknown key 'timout' (allowed: intents, no_match, timeout)"),
        ("blocks:\n  a:\n    transfer: {agent: 'tel:123'}\n",
         "block 'a' (line 3): transfer.agent 'tel:123' must be a sip: or sips: URI"),
        ("blocks:\n  a:\n    transfer: {agent: 'sip:'}\n",
         "block 'a' (line 3): transfer.agent 'sip:' has no host"),
        ("blocks:\n  a:\n    transfer: {agent: \"sip:a@b\\x00\"}\n",
         "transfer.agent 'sip:a@b\\x00' holds a space or a control character"),
        ("blocks:\n  a:\n    transfer: {agent: 'sip:x@y', mode: blind}\n",
         "transfer.mode must be bridge or refer, got 'blind'"),
        ("blocks:\n  a:\n    transfer: {mode: bridge}\n", "transfer needs agent"),
        ("blocks:\n  a:\n    say: {wav: missing.wav}\n",
         "block 'a' (line 3): say.wav: no file 'missing.wav' in the prompts folder"),
        ("blocks:\n  a:\n    say: {}\n", "say needs either text or wav"),
        ("blocks:\n  a:\n    say: '   '\n", "say must be non-empty text"),
        ("intents:\n  yes: []\nblocks:\n  a: {end: {}}\n", "line 2: intent 'yes' must be a list"),
        ("intents:\n  yes: ['...']\nblocks:\n  a: {end: {}}\n", "intent 'yes': '...' has no words"),
        ("start: nope\nblocks:\n  a: {end: {}}\n", "line 1: start: no block named 'nope'"),
        ("threshold: 300\nblocks:\n  a: {end: {}}\n", "threshold must be a number from 1 to 100"),
        ("colour: red\nblocks:\n  a: {end: {}}\n", "the script: unknown key 'colour'"),
        ("blocks:\n  a: {end: {}}\n  a: {end: {}}\n", "line 3: blocks: 'a' appears twice"),
        ("blocks:\n  a: {end: 5}\n", "block 'a' (line 2): end takes no settings"),
        ("voice: !foo slt\nblocks:\n  a: {end: {}}\n", "line 1: the tag '!foo' is not allowed"),
        ("threshold: !!int abc\nblocks:\n  a: {end: {}}\n", "s.yaml: not a valid script: "),
        ("intents:\n  x: &a [hello, there]\n  y: *a\nblocks:\n  a: {end: {}}\n",
         "line 2: aliases (*name) are not allowed"),
        ("intents:\n  x: [" + ", ".join(f"p {i}" for i in range(290))
         + "]\nblocks:\n  a: {end: {}}\n",
         "line 2: intents: 312 sample phrases, at most 300"),
        ("intents:\n  x: ['" + "word " * 40 + "']\nblocks:\n  a: {end: {}}\n",
         "a sample phrase is longer than 150 characters"),
        ("blocks: " + "[" * 3000 + "]" * 3000 + "\n", "s.yaml: nested too deeply"),
        ("blocks:\n  a:\n    say: {text: hi, voice: robot}\n",
         "block 'a' (line 3): say.voice: unknown voice 'robot' (known: slt, kal, ked, "
         "espeak:<voice>)"),
        ("amd: {beep: maybe}\nblocks:\n  a: {end: {}}\n", "line 1: amd.beep must be true or false"),
        ("amd: {greeting: 3}\nblocks:\n  a: {end: {}}\n", "amd: unknown key 'greeting'"),
    ],
)  # fmt: skip
def test_script_errors_name_the_block_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ScriptError) as error:
        load_script(path)
    assert message in str(error.value)


def test_block_names_are_text_even_when_they_look_like_numbers() -> None:
    script = parse_script("start: 1\nblocks:\n  2: {end: {}}\n  1: {say: hi, next: 2}\n")
    assert script.start == "1" and script.blocks["1"].next == "2"


def test_unreadable_scripts_are_refused_cleanly(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="cannot read script"):
        load_script(tmp_path / "absent.yaml")
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00blocks")
    with pytest.raises(ScriptError, match="not UTF-8"):
        load_script(binary)


def test_the_default_script_greets_then_listens_until_the_callee_hangs_up() -> None:
    script = default_script()
    run = ScriptRun(script, {"greeting": "/g.wav"})
    assert run.answered(100.0) == [Play("/g.wav")]
    assert run.play_done(101.0) == []
    assert run.block is not None and run.block.name == "listen" and run.deadline is None
    human = heard(kind="final", text="hello who is this", audio_s=2.0)
    assert run.speech(heard(kind="voice_start", audio_s=1.0), 101.0) == []
    assert run.speech(human, 102.0) == []
    assert run.timer(10_000.0) == [] and not run.ended
    assert script.blocks["greeting"].action == Say(wav=GREETING)


def test_the_machine_intent_hangs_up_from_any_block_but_not_with_an_agent() -> None:
    script = parse_script(GOOD, "spring.yaml")
    run = ScriptRun(script, {"hello": "/h.wav", "bye": "/b.wav"})
    run.answered(0.0)  # still saying hello: the intent is active anyway
    [action] = run.speech(heard(kind="partial", text="please leave a message after the",
                           audio_s=2.5), 2.6)  # fmt: skip
    assert isinstance(action, HangUp) and action.machine is not None
    assert action.machine.signal == "phrase" and action.machine.score is not None
    assert run.speech(heard(kind="tone", tone="beep", audio_s=3.0), 3.0) == []  # once

    with_agent = ScriptRun(script, {"hello": "/h.wav", "bye": "/b.wav"})
    with_agent.answered(0.0)
    with_agent.play_done(1.0)
    with_agent.speech(heard(kind="final", text="yes tell me more", audio_s=2.0), 2.0)
    with_agent.agent_answered("bridge")
    assert with_agent.speech(heard(kind="tone", tone="beep", audio_s=9.0), 9.0) == []


def test_listen_routes_intents_times_out_and_transfers() -> None:
    script = parse_script(GOOD, "spring.yaml")
    audio = {"hello": "/h.wav", "bye": "/b.wav"}
    run = ScriptRun(script, audio)
    assert run.answered(0.0) == [Play("/h.wav")]
    assert run.play_done(2.0) == [] and run.deadline == 8.0
    assert run.speech(heard(kind="final", text="yep sure tell me more", audio_s=3), 3.0) == [
        StartTransfer("sip:agent@127.0.0.1", "bridge", 30.0)
    ]
    assert run.heard[-1]["intent"] == "interested"
    run.agent_answered("bridge")
    assert run.agent_ended(20.0) == [Play("/b.wav")]  # back with the bot: its `next`
    assert run.play_done(21.0) == [HangUp("script end")]
    assert run.path == ["hello", "ask", "agent", "bye", END]

    silent = ScriptRun(script, audio)
    silent.answered(0.0)
    silent.play_done(2.0)
    assert silent.timer(7.9) == []
    assert silent.timer(8.0) == [Play("/b.wav")]  # no_match

    failed = ScriptRun(script, audio)
    failed.answered(0.0)
    failed.play_done(2.0)
    failed.speech(heard(kind="final", text="sure", audio_s=3), 3.0)
    assert failed.agent_failed(5.0) == [Play("/b.wav")]  # on_failure


def test_agents_pause_the_script_and_line_errors_move_it_on() -> None:
    script = parse_script(GOOD, "spring.yaml")
    audio = {"hello": "/h.wav", "bye": "/b.wav"}
    run = ScriptRun(script, audio)
    run.answered(0.0)
    run.play_done(2.0)  # listening, timeout at 8.0
    run.agent_answered("bridge")  # a transfer from outside the script (transfer_after)
    assert run.timer(9.0) == []  # no listen timeout while the caller is with the agent
    # after the agent the bot listens afresh; the answer-timed AMD rules are off
    assert run.agent_ended(20.0) == [] and run.deadline == 26.0
    run.speech(heard(kind="voice_start", audio_s=0.5), 20.5)
    assert run.speech(heard(kind="partial", text="so as i was saying", audio_s=9.0), 29) == []
    assert not run.ended

    cut = ScriptRun(script, audio)
    cut.answered(0.0)  # saying hello when the bridge cut the prompt
    cut.agent_answered("bridge")
    assert cut.agent_ended(15.0) == []  # hello's next is the listen block
    assert cut.block is not None and cut.block.name == "ask"

    broken = ScriptRun(script, audio)
    broken.answered(0.0)
    assert broken.line_error(0.1) == []  # hello could not play: on to ask
    broken.speech(heard(kind="final", text="sure", audio_s=1.0), 1.0)
    assert broken.line_error(1.5) == [Play("/b.wav")]  # the transfer failed: on_failure
