"""A script's `say.wav`: only files inside the prompts folder, only
WAVs the line plays as they are; the worker's copy is made from the stored bytes."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import wave
from pathlib import Path

import pytest

from dialer.prompts import MAX_PROMPT_BYTES, PromptError, materialise
from dialer.script import ScriptError, load_script

SCRIPT = "blocks:\n  hi:\n    next: bye\n    say: {wav: WAV}\n  bye: {end: {}}\n"


def sox(path: Path, *args: str) -> Path:
    """A 1 s tone written by sox with these output options (rate, channels, encoding)."""
    subprocess.run(["sox", "-n", *args, str(path), "synth", "1", "sine", "440", "vol", "0.5"],
                   check=True)  # fmt: skip
    return path


@pytest.fixture
def folder(tmp_path: Path, tone_wav: Path) -> Path:
    """tmp/prompts with a good chime.wav, a WAV just outside it, and the script's folder."""
    (tmp_path / "prompts" / "sub").mkdir(parents=True)
    (tmp_path / "prompts" / "chime.wav").write_bytes(tone_wav.read_bytes())
    (tmp_path / "outside.wav").write_bytes(tone_wav.read_bytes())
    return tmp_path / "prompts"


def refusal(folder: Path, name: str) -> str:
    script = folder / "s.yaml"
    script.write_text(SCRIPT.replace("WAV", f'"{name}"'))
    with pytest.raises(ScriptError) as error:
        load_script(script)
    return str(error.value)


def test_a_wav_inside_the_folder_and_a_symlink_that_stays_inside_are_taken(folder: Path) -> None:
    (folder / "sub" / "alias.wav").symlink_to("../chime.wav")
    script = folder / "s.yaml"
    script.write_text(SCRIPT.replace("WAV", "sub/alias.wav"))
    assert load_script(script).blocks["hi"].action.wav == "sub/alias.wav"  # type: ignore[union-attr]


def test_paths_leading_out_of_the_prompts_folder_are_refused(folder: Path) -> None:
    prefix = "s.yaml: block 'hi' (line 4): say.wav: "
    outside = str(folder.parent / "outside.wav")
    assert refusal(folder, outside).startswith(prefix + "'/tmp/")
    assert "absolute paths are not allowed" in refusal(folder, outside)
    assert refusal(folder, "../outside.wav") == (
        prefix + "'../outside.wav': '..' is not allowed (stay in the prompts folder)"
    )
    assert "'..' is not allowed" in refusal(folder, "sub/../../outside.wav")
    (folder / "evil.wav").symlink_to(folder.parent / "outside.wav")
    assert refusal(folder, "evil.wav") == (
        prefix + f"'evil.wav' leads outside the prompts folder {folder} (a symlink?)"
    )
    (folder / "up").symlink_to(folder.parent)  # a folder symlink on the way
    assert "'up/outside.wav' leads outside the prompts folder" in refusal(folder, "up/outside.wav")
    (folder / "loop.wav").symlink_to("loop.wav")
    assert "cannot open 'loop.wav' in the prompts folder" in refusal(folder, "loop.wav")
    assert "names starting with 'builtin:' are reserved" in refusal(folder, "builtin:greeting")
    assert "no control characters" in refusal(folder, "a\\x1b[2Jb.wav")


def test_only_wavs_the_line_plays_as_they_are_are_taken(folder: Path, tmp_path: Path) -> None:
    prefix = "s.yaml: block 'hi' (line 4): say.wav: "
    (folder / "text.wav").write_text("hello")
    assert refusal(folder, "text.wav") == prefix + "not a WAV file (no RIFF/WAVE header)"
    # a RIFF/WAVE header was all the old check looked at
    (folder / "header.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE" + b"\x00" * 64)
    assert refusal(folder, "header.wav") == (
        prefix + "not a playable WAV file (the fmt chunk must come first)"
    )
    sox(folder / "stereo.wav", "-r", "16000", "-c", "2", "-b", "16")
    assert refusal(folder, "stereo.wav") == (
        prefix + "format 1, 16-bit, 2 channel(s) at 16000 Hz; prompts are PCM 16-bit mono at "
        "8000 or 16000 Hz (convert: sox IN.wav -r 16000 -c 1 -b 16 -e signed-integer OUT.wav)"
    )
    sox(folder / "cd.wav", "-r", "44100", "-c", "1", "-b", "16")
    assert "format 1, 16-bit, 1 channel(s) at 44100 Hz" in refusal(folder, "cd.wav")
    sox(folder / "ulaw.wav", "-r", "8000", "-c", "1", "-e", "u-law")
    assert "format 7, 8-bit, 1 channel(s) at 8000 Hz" in refusal(folder, "ulaw.wav")
    cut = (folder / "chime.wav").read_bytes()[:60]
    (folder / "cut.wav").write_bytes(cut)
    assert (
        refusal(folder, "cut.wav") == prefix + "not a playable WAV file (empty or cut data chunk)"
    )
    with wave.open(str(folder / "long.wav"), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\x00\x01" * (MAX_PROMPT_BYTES // 2))
    assert refusal(folder, "long.wav") == prefix + "'long.wav' is larger than 5 MiB"
    os.mkfifo(folder / "fifo.wav")  # would block a reader forever
    assert refusal(folder, "fifo.wav") == prefix + "'fifo.wav' is not a regular file"
    sox(folder / "narrow.wav", "-r", "8000", "-c", "1", "-b", "16")
    script = folder / "s.yaml"
    script.write_text(SCRIPT.replace("WAV", "narrow.wav"))
    load_script(script)  # 8 kHz PCM: the trunk's rate, taken


def test_the_workers_copy_is_the_stored_bytes_checked_by_hash(tmp_path: Path,
                                                             tone_wav: Path) -> None:  # fmt: skip
    data = tone_wav.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    assets = tmp_path / "assets"
    path = materialise(assets, "chime.wav", {"chime.wav": (sha, data)})
    assert path == assets / "prompts" / f"{sha}.wav" and path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.write_bytes(b"tampered")  # a copy that is not what was stored is written again
    assert materialise(assets, "chime.wav", {"chime.wav": (sha, data)}).read_bytes() == data
    with pytest.raises(
        PromptError, match=re.escape("prompt 'x.wav' is not stored with the campaign")
    ):
        materialise(assets, "x.wav", {"chime.wav": (sha, data)})
    with pytest.raises(
        PromptError, match=re.escape("prompt 'chime.wav' is corrupt: its content does not")
    ):
        materialise(assets, "chime.wav", {"chime.wav": (sha, data[:-2])})
    junk = b"RIFF\x00\x00\x00\x00WAVE"
    with pytest.raises(PromptError, match=re.escape("prompt 'j.wav': not a playable WAV file")):
        materialise(assets, "j.wav", {"j.wav": (hashlib.sha256(junk).hexdigest(), junk)})
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{sha}.wav"]  # no leftovers
