"""A script's pre-recorded prompts (``say: {wav: NAME}``): read once, at campaign create,
from the prompts folder; kept with the campaign; played from the worker's own copy.

Why: a script could name any WAV on the host (``/home/x/secret.wav``, ``../../x.wav``),
and the worker re-read that path at every start, so whoever could change the file changed
what every call heard. Now:

* NAME is relative to the prompts folder (``[scripts] prompts_dir``, default: the script's
  own folder): no absolute path, no ``..``, no symlink leading out of the folder;
* the file must be what the line's player (pjmedia's WAV port) plays as it is: RIFF/WAVE,
  the ``fmt`` chunk first, PCM 16-bit mono at 8 or 16 kHz, a ``data`` chunk, at most
  ``MAX_PROMPT_BYTES`` (``MAX_PROMPTS_BYTES`` for one script's prompts together);
* its bytes and their SHA-256 go into ``dialer_campaign_prompt`` with the campaign;
* the worker writes each into its private assets folder (``prompts/SHA256.wav``, folder
  0700, file 0600) after checking the hash and the format again, and plays that copy. A
  prompt missing from the database or not matching its hash blocks the campaign (its
  ``blocked`` reason says which).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dialer.errors import DialerError
from dialer.text import has_controls, shorten

MAX_PROMPT_BYTES = 5 * 1024 * 1024  # 160 s at 16 kHz
MAX_PROMPTS_BYTES = 20 * 1024 * 1024  # one script's prompts together (rows of one campaign)
MAX_PROMPT_NAME = 255  # dialer_campaign_prompt.name
PROMPT_RATES = (8000, 16000)
BUILTIN = "builtin:"  # names the worker's own sounds (dialer.script.GREETING)
CONVERT = "sox IN.wav -r 16000 -c 1 -b 16 -e signed-integer OUT.wav"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class PromptError(DialerError):
    """A prompt that cannot be stored or played; the message says which and why."""


@dataclass(frozen=True)
class Prompt:
    sha256: str
    content: bytes


def check_name(name: str) -> str:
    """A prompt's name as a script writes it: a relative path inside the prompts folder.
    Checked without touching the disk (the worker parses stored scripts with it too)."""
    if len(name) > MAX_PROMPT_NAME or has_controls(name):
        raise ValueError(f"at most {MAX_PROMPT_NAME} characters, no control characters")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise ValueError(
            f"'{shorten(name)}': absolute paths are not allowed (name a file in the prompts folder)"
        )
    if ".." in path.parts:
        raise ValueError(f"'{shorten(name)}': '..' is not allowed (stay in the prompts folder)")
    if name.startswith(BUILTIN):
        raise ValueError(f"'{shorten(name)}': names starting with {BUILTIN!r} are reserved")
    return name


def check_wav(data: bytes) -> None:
    """What pjmedia's WAV player reads (wav_player.c): RIFF/WAVE with the ``fmt`` chunk
    first, then any chunks up to ``data``. Only PCM 16-bit mono at 8/16 kHz is taken: the
    format the line's conference bridge runs at (16 kHz) or the trunk's (8 kHz)."""
    if len(data) > MAX_PROMPT_BYTES:
        raise ValueError(f"larger than {MAX_PROMPT_BYTES // (1024 * 1024)} MiB")
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file (no RIFF/WAVE header)")
    if data[12:16] != b"fmt " or len(data) < 36:
        raise ValueError("not a playable WAV file (the fmt chunk must come first)")
    fmt_size = int.from_bytes(data[16:20], "little")
    code, channels = int.from_bytes(data[20:22], "little"), int.from_bytes(data[22:24], "little")
    rate, byte_rate = int.from_bytes(data[24:28], "little"), int.from_bytes(data[28:32], "little")
    align, bits = int.from_bytes(data[32:34], "little"), int.from_bytes(data[34:36], "little")
    if (code, channels, bits, align) != (1, 1, 16, 2) or rate not in PROMPT_RATES:
        raise ValueError(
            f"format {code}, {bits}-bit, {channels} channel(s) at {rate} Hz; prompts are PCM "
            f"16-bit mono at 8000 or 16000 Hz (convert: {CONVERT})"
        )
    if byte_rate != rate * 2 or fmt_size < 16 or 20 + fmt_size > len(data):
        raise ValueError("not a playable WAV file (inconsistent fmt chunk)")
    pos = 20 + fmt_size + (fmt_size & 1)
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk == b"data":
            if size < 2 or pos + 8 + size > len(data):
                raise ValueError("not a playable WAV file (empty or cut data chunk)")
            return
        pos += 8 + size + (size & 1)
    raise ValueError("not a playable WAV file (no data chunk)")


def prompt_of(data: bytes) -> Prompt:
    check_wav(data)
    return Prompt(hashlib.sha256(data).hexdigest(), data)


class PromptFolder:
    """The folder a script's prompts are read from (at create), and what was read."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.read: dict[str, Prompt] = {}
        self._root: Path | None = None

    def root(self) -> Path:
        if self._root is None:
            try:
                root = self.folder.resolve(strict=True)
            except (OSError, RuntimeError):
                raise ValueError(f"the prompts folder {self.folder} does not exist") from None
            if not root.is_dir():
                raise ValueError(f"the prompts folder {self.folder} is not a folder")
            self._root = root
        return self._root

    def load(self, name: str) -> Prompt:
        """The prompt NAME (already checked by `check_name`), read once. ValueError: why not."""
        if name in self.read:
            return self.read[name]
        prompt = prompt_of(_read_inside(self.root(), name))
        total = sum(len(p.content) for p in self.read.values()) + len(prompt.content)
        if total > MAX_PROMPTS_BYTES:
            raise ValueError(
                f"the script's prompts come to more than {MAX_PROMPTS_BYTES // (1024 * 1024)} MiB"
            )
        self.read[name] = prompt
        return prompt


def _read_inside(root: Path, name: str) -> bytes:
    """NAME's bytes, only if the file really is inside ROOT. The path is resolved (symlinks
    followed) and checked; the open file is checked again through /proc, so a component
    swapped for a symlink between the two is caught."""
    shown = f"'{shorten(name)}'"
    try:
        real = (root / name).resolve(strict=True)
    except FileNotFoundError:
        raise ValueError(f"no file {shown} in the prompts folder {root}") from None
    except (OSError, RuntimeError):  # a symlink loop, a component that is not a folder
        raise ValueError(f"cannot open {shown} in the prompts folder {root}") from None
    if not real.is_relative_to(root):
        raise ValueError(f"{shown} leads outside the prompts folder {root} (a symlink?)")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"cannot open {shown}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{shown} is not a regular file")
        with contextlib.suppress(OSError):  # no /proc: the resolved path was checked
            opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
            if not opened.is_relative_to(root):
                raise ValueError(f"{shown} leads outside the prompts folder {root} (a symlink?)")
        if info.st_size > MAX_PROMPT_BYTES:
            raise ValueError(f"{shown} is larger than {MAX_PROMPT_BYTES // (1024 * 1024)} MiB")
        return source.read(MAX_PROMPT_BYTES + 1)


def materialise(folder: Path, name: str, stored: dict[str, tuple[str, bytes]]) -> Path:
    """The worker's copy of the stored prompt NAME: ``FOLDER/prompts/SHA256.wav``, written
    after its hash and format are checked (0600 in a 0700 folder, renamed into place so a
    half-written file is never played). The host file it came from is never read."""
    shown = f"'{shorten(name)}'"
    if name not in stored:
        raise PromptError(f"prompt {shown} is not stored with the campaign (create it again)")
    sha, content = stored[name]
    if not _SHA256.fullmatch(sha) or hashlib.sha256(content).hexdigest() != sha:
        raise PromptError(f"prompt {shown} is corrupt: its content does not match its sha256")
    try:
        check_wav(content)
    except ValueError as exc:
        raise PromptError(f"prompt {shown}: {exc}") from None
    target = folder / "prompts"
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    path = target / f"{sha}.wav"
    with contextlib.suppress(OSError):
        if hashlib.sha256(path.read_bytes()).hexdigest() == sha:
            return path
    fd, tmp = tempfile.mkstemp(dir=target, suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
