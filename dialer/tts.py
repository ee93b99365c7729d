"""Speech synthesis for `say` text: a local engine from Debian, cached as WAV.

Voices: ``slt`` (festival's HTS voice, the default: natural enough for callers and for
the recogniser), ``kal`` and ``ked`` (festival diphone voices), ``espeak:<voice>``
(espeak-ng, e.g. ``espeak:en-us``). The WAV (16 kHz, 16-bit mono) is cached per engine,
voice and text under the assets folder, written to a temporary name then renamed, so a
half-written file is never played (folder 0700, files 0600: what the line plays is ours).
Pre-recorded WAVs in a script are stored with the campaign and play as they are
(dialer.prompts).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

from dialer.errors import DialerError
from sip.speech import load_wav

DEFAULT_VOICE = "slt"
FESTIVAL_VOICES = {
    "slt": "voice_cmu_us_slt_arctic_hts",
    "kal": "voice_kal_diphone",
    "ked": "voice_ked_diphone",
}
RATE = 16000
TIMEOUT_SECONDS = 60


class SynthesisError(DialerError):
    """Text that could not be turned into speech (engine missing or failing)."""


def _command(voice: str, out: Path, text_file: Path) -> list[str]:
    if voice.startswith("espeak:"):
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise SynthesisError("espeak-ng is not installed (Debian package espeak-ng)")
        return [exe, "-v", voice.split(":", 1)[1] or "en-us", "-w", str(out), "-f", str(text_file)]
    if voice not in FESTIVAL_VOICES:
        known = ", ".join([*FESTIVAL_VOICES, "espeak:<voice>"])
        raise SynthesisError(f"unknown voice {voice!r} (known: {known})")
    exe = shutil.which("text2wave")
    if exe is None:
        raise SynthesisError("festival is not installed (Debian packages festival, festvox-*)")
    return [exe, "-F", str(RATE), "-eval", f"({FESTIVAL_VOICES[voice]})", "-o", str(out),
            str(text_file)]  # fmt: skip


def synthesise(text: str, voice: str | None, folder: Path) -> Path:
    """The WAV for ``text`` in ``voice``, made once and cached."""
    voice = voice or DEFAULT_VOICE
    if not text.strip():
        raise SynthesisError("nothing to say: the text is empty")
    key = hashlib.sha256(f"{voice}\0{text}".encode()).hexdigest()[:24]
    path = folder / "tts" / f"{key}.wav"
    if path.exists():
        return path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        text_file = Path(tmp) / "text.txt"
        text_file.write_text(text + "\n", encoding="utf-8")
        raw = Path(tmp) / "raw.wav"
        command = _command(voice, raw, text_file)
        try:
            done = subprocess.run(
                command, capture_output=True, timeout=TIMEOUT_SECONDS, check=False
            )
        except subprocess.TimeoutExpired:
            raise SynthesisError(f"{command[0]} took over {TIMEOUT_SECONDS} s") from None
        if done.returncode != 0 or not raw.exists() or raw.stat().st_size < 100:
            detail = done.stderr.decode(errors="replace").strip().splitlines()
            raise SynthesisError(
                f"{Path(command[0]).name} failed for voice {voice!r}: "
                + (detail[-1] if detail else f"exit {done.returncode}")
            )
        final = Path(tmp) / "final.wav"
        _to_pcm16(raw, final)
        os.chmod(final, 0o600)
        os.replace(final, path)
    return path


def _to_pcm16(source: Path, target: Path) -> None:
    """Mono 16-bit PCM at 16 kHz (what the line's player and the bridge clock expect)."""
    samples = load_wav(str(source))
    with wave.open(str(target), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(samples.astype("<i2").tobytes())
