"""Call scripts: the bot's blocks and intents, loaded from YAML and validated.

Format (every key but ``blocks`` is optional)::

    voice: slt                 # speech synthesis voice for `say` text (dialer.tts)
    threshold: 75              # intent match score 0-100 (dialer.intents)
    amd:                       # answering-machine signals (dialer.amd), all on by default
      beep: true
      sit: true
      cadence: true
      greeting_seconds: 5.5    # talk without waiting for a reply that means a greeting
    intents:                   # name -> sample phrases
      answering_machine:       # built in (phrases below); yours are added to them
        - "you have reached the voicemail of"
      interested: ["yes", "sure", "tell me more"]
    start: hello               # the first block (default: the first one written)
    blocks:
      hello:
        say: "Hello! This is Anna from Acme."    # text, synthesised and cached
        next: ask                                # default: end
      chime:
        say: {wav: sounds/chime.wav}             # a WAV file in the prompts folder
      ask:
        listen:
          timeout: 6                             # seconds; none: until the callee hangs up
          intents: {interested: agent}           # intent -> block
          no_match: bye                          # default: end
      agent:
        transfer: {agent: "sip:agent@pbx.example", mode: bridge, on_failure: bye}
        next: bye                                # after the agent leaves (bridge)
      bye:
        end: {}

The target ``end`` always exists: it hangs up. The ``answering_machine`` intent is
active from the answer whatever block runs, and ends the call (disposition
``answering_machine``); it is not routed by ``listen``.

A ``wav`` names a file inside the prompts folder (``[scripts] prompts_dir``, default: the
script's own folder): no absolute path, no ``..``, no symlink out of it; PCM 16-bit mono
at 8 or 16 kHz, at most 5 MiB. At ``campaign create`` its bytes are stored with the
campaign (dialer.prompts); the host file is never read again.

Limits: 256 KiB, at most 300 sample phrases (built-in ones included) of at most 150
characters (every call carries them to its line), plain YAML (no aliases, no tags).
Errors name the file, the block and the line: ``spring.yaml: block 'ask' (line 12):
listen.intents: unknown intent 'maybe'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from billing.storage import first_line
from dialer.amd import MACHINE_INTENT, AmdSettings
from dialer.errors import DialerError
from dialer.intents import DEFAULT_THRESHOLD, normalise
from dialer.prompts import Prompt, PromptFolder, check_name
from dialer.tts import FESTIVAL_VOICES
from sip.uri import check_sip_uri

END = "end"
GREETING = "builtin:greeting"  # the default script's chime (dialer.worker.greeting_wav)
MAX_SCRIPT_BYTES = 256 * 1024
MAX_PHRASES = 300  # with the built-in ones; 300 x 150 characters fit a dial message
MAX_PHRASE_CHARS = 150

#: Carrier announcements and voicemail greetings, active on every call.
ANSWERING_MACHINE_PHRASES = (
    "the number you have dialed is unavailable now",
    "the number you have dialed is not in service",
    "the number you have dialed is not available",
    "the subscriber cannot be reached",
    "the subscriber you have dialed cannot be reached",
    "this number is not in service",
    "this number is no longer in service",
    "your call cannot be completed as dialed",
    "please check the number and dial again",
    "the person you are calling is not available",
    "the mobile phone you are calling is switched off",
    "please try again later",
    "leave a message after the tone",
    "leave your message after the tone",
    "please leave a message",
    "please leave your name and number",
    "at the tone please record your message",
    "is not available right now",
    "i am not available right now",
    "you have reached the voicemail of",
    "we will get back to you as soon as possible",
    "i will call you back as soon as i can",
)


class ScriptError(DialerError):
    """A call script that cannot be used; the message names the file, block and line."""


@dataclass(frozen=True)
class Say:
    text: str | None = None
    wav: str | None = None  # a prompt's name as written (dialer.prompts), or GREETING
    voice: str | None = None


@dataclass(frozen=True)
class Listen:
    timeout: float | None = None
    intents: dict[str, str] = field(default_factory=dict)
    no_match: str = END


@dataclass(frozen=True)
class Transfer:
    agent: str
    mode: Literal["bridge", "refer"] = "bridge"
    on_failure: str = END
    ring_timeout: float = 30.0


@dataclass(frozen=True)
class End:
    pass


Action = Say | Listen | Transfer | End


@dataclass(frozen=True)
class Block:
    name: str
    action: Action
    next: str = END
    line: int = 0


@dataclass(frozen=True)
class Script:
    name: str
    blocks: dict[str, Block]
    start: str
    intents: dict[str, tuple[str, ...]]
    threshold: float = DEFAULT_THRESHOLD
    voice: str | None = None
    amd: AmdSettings = field(default_factory=AmdSettings)

    def phrases(self) -> list[str]:
        """Every sample phrase: the recogniser's vocabulary for this script."""
        return [p for samples in self.intents.values() for p in samples]

    def block(self, name: str) -> Block:
        return self.blocks.get(name) or Block(END, End())


def default_script() -> Script:
    """INTERFACE.md: a short greeting, then listen until the callee hangs up; it hangs up
    early only on the answering-machine intent or signal."""
    return Script(
        name="default",
        blocks={
            "greeting": Block("greeting", Say(wav=GREETING), next="listen"),
            "listen": Block("listen", Listen(timeout=None)),
        },
        start="greeting",
        intents={MACHINE_INTENT: ANSWERING_MACHINE_PHRASES},
    )


# -- loading ------------------------------------------------------------------------------


class _Where:
    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, node: yaml.Node | None, message: str, block: str | None = None) -> ScriptError:
        line = f"line {node.start_mark.line + 1}" if node is not None else None
        where = (
            f"block {block!r} ({line})"
            if block and line
            else (block and f"block {block!r}") or line
        )
        return ScriptError(
            f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}"
        )


def _mapping(
    node: yaml.Node, where: _Where, what: str, block: str | None = None
) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        raise where.error(node, f"{what} must be a mapping", block)
    out: dict[str, yaml.Node] = {}
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            raise where.error(key, f"{what}: keys must be plain names", block)
        if key.value in out:
            raise where.error(key, f"{what}: {key.value!r} appears twice", block)
        out[key.value] = value
    return out


def _scalar(node: yaml.Node, where: _Where, what: str, block: str | None = None) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise where.error(node, f"{what} must be a single value", block)
    return yaml.safe_load(yaml.serialize(node))


def _voice(node: yaml.Node, where: _Where, what: str, block: str | None = None) -> str:
    voice = _text(node, where, what, block)
    if voice not in FESTIVAL_VOICES and not (voice.startswith("espeak:") and len(voice) > 7):
        known = ", ".join([*FESTIVAL_VOICES, "espeak:<voice>"])
        raise where.error(node, f"{what}: unknown voice {voice!r} (known: {known})", block)
    return voice


def _name(node: yaml.Node, where: _Where, what: str, block: str | None = None) -> str:
    """A block name as written (a block may be called `1`: names are keys, kept as text)."""
    if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
        raise where.error(node, f"{what} must name a block", block)
    return str(node.value).strip()


def _text(node: yaml.Node, where: _Where, what: str, block: str | None = None) -> str:
    value = _scalar(node, where, what, block)
    if not isinstance(value, str) or not value.strip():
        raise where.error(node, f"{what} must be non-empty text", block)
    return value.strip()


def _number(node: yaml.Node, where: _Where, what: str, low: float, high: float,
            block: str | None = None) -> float:  # fmt: skip
    value = _scalar(node, where, what, block)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise where.error(node, f"{what} must be a number from {low:g} to {high:g}", block)
    return float(value)


def _only(keys: dict[str, yaml.Node], allowed: set[str], where: _Where, what: str,
          block: str | None) -> None:  # fmt: skip
    for key, node in keys.items():
        if key not in allowed:
            raise where.error(
                node, f"{what}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})", block
            )


_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")
)


def _check_tree(node: yaml.Node, where: _Where, seen: set[int]) -> None:
    """Plain YAML only: no aliases (one anchor could multiply phrases into millions) and
    no tags beyond str/int/float/bool/null/map/seq."""
    if id(node) in seen:
        raise where.error(node, "aliases (*name) are not allowed in a script")
    seen.add(id(node))
    if node.tag not in _PLAIN_TAGS:
        raise where.error(node, f"the tag {node.tag!r} is not allowed in a script")
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _check_tree(key, where, seen)
            _check_tree(value, where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_tree(item, where, seen)


def parse_script(text: str, source: str = "script", prompts: PromptFolder | None = None) -> Script:
    """The script in TEXT. ``prompts``: read and check each ``say.wav`` from that folder
    (campaign create); none: the names are checked, no file is read (a stored script)."""
    where = _Where(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScriptError(f"{source}: {at}not valid YAML: {problem}") from None
    except RecursionError:
        raise ScriptError(f"{source}: nested too deeply") from None
    if root is None:
        raise ScriptError(f"{source}: the script is empty")
    try:
        _check_tree(root, where, set())
        return _parse(root, where, source, prompts)
    except RecursionError:
        raise ScriptError(f"{source}: nested too deeply") from None
    except (yaml.YAMLError, ValueError, KeyError, TypeError) as exc:  # a value YAML can't read
        raise ScriptError(f"{source}: not a valid script: {first_line(exc)}") from None


def _parse(root: yaml.Node, where: _Where, source: str, prompts: PromptFolder | None) -> Script:
    top = _mapping(root, where, "the script")
    _only(
        top,
        {"version", "voice", "threshold", "amd", "intents", "start", "blocks"},
        where,
        "the script",
        None,
    )
    if "version" in top and _scalar(top["version"], where, "version") != 1:
        raise where.error(top["version"], "version must be 1")
    voice = _voice(top["voice"], where, "voice") if "voice" in top else None
    threshold = (
        _number(top["threshold"], where, "threshold", 1, 100)
        if "threshold" in top
        else DEFAULT_THRESHOLD
    )
    intents: dict[str, tuple[str, ...]] = {MACHINE_INTENT: ANSWERING_MACHINE_PHRASES}
    if "intents" in top:
        for name, node in _mapping(top["intents"], where, "intents").items():
            if not isinstance(node, yaml.SequenceNode) or not node.value:
                raise where.error(node, f"intent {name!r} must be a list of sample phrases")
            samples = tuple(
                _text(item, where, f"intent {name!r}: a sample phrase") for item in node.value
            )
            for item, sample in zip(node.value, samples, strict=True):
                if not normalise(sample):
                    raise where.error(item, f"intent {name!r}: {sample!r} has no words")
                if len(sample) > MAX_PHRASE_CHARS:
                    raise where.error(
                        item, f"intent {name!r}: a sample phrase is longer than "
                        f"{MAX_PHRASE_CHARS} characters",
                    )  # fmt: skip
            intents[name] = intents.get(name, ()) + samples
    count = sum(len(samples) for samples in intents.values())
    if count > MAX_PHRASES:
        # every call carries the phrases to its line (the pipe's messages are small)
        raise where.error(top["intents"], f"intents: {count} sample phrases, at most {MAX_PHRASES}")
    if "blocks" not in top:
        raise where.error(root, "no blocks: a script needs at least one block")
    block_nodes = _mapping(top["blocks"], where, "blocks")
    if not block_nodes:
        raise where.error(top["blocks"], "no blocks: a script needs at least one block")
    blocks = {
        name: _block(name, node, where, prompts, intents) for name, node in block_nodes.items()
    }
    start = _name(top["start"], where, "start") if "start" in top else next(iter(blocks))
    if start not in blocks and start != END:
        raise where.error(top["start"], f"start: no block named {start!r}")
    for block in blocks.values():
        for target in _targets(block):
            if target != END and target not in blocks:
                raise ScriptError(
                    f"{source}: block {block.name!r} (line {block.line}): "
                    f"goes to {target!r}, which is not a block (nor {END!r})"
                )
    amd = _amd(top["amd"], where, threshold) if "amd" in top else AmdSettings(threshold=threshold)
    return Script(source, blocks, start, intents, threshold, voice, amd)


def _amd(node: yaml.Node, where: _Where, threshold: float) -> AmdSettings:
    keys = _mapping(node, where, "amd")
    _only(keys, {"beep", "sit", "cadence", "greeting_seconds"}, where, "amd", None)
    switches: dict[str, bool] = {}
    for name in ("beep", "sit", "cadence"):
        if name in keys:
            value = _scalar(keys[name], where, f"amd.{name}")
            if not isinstance(value, bool):
                raise where.error(keys[name], f"amd.{name} must be true or false")
            switches[name] = value
    greeting = (
        _number(keys["greeting_seconds"], where, "amd.greeting_seconds", 1, 60)
        if "greeting_seconds" in keys else AmdSettings.greeting_seconds
    )  # fmt: skip
    return AmdSettings(threshold=threshold, greeting_seconds=greeting, **switches)


def _targets(block: Block) -> list[str]:
    targets = [block.next]
    if isinstance(block.action, Listen):
        targets += [*block.action.intents.values(), block.action.no_match]
    elif isinstance(block.action, Transfer):
        targets.append(block.action.on_failure)
    return targets


def _block(name: str, node: yaml.Node, where: _Where, prompts: PromptFolder | None,
           intents: dict[str, tuple[str, ...]]) -> Block:  # fmt: skip
    keys = _mapping(node, where, "a block", name)
    kinds = [k for k in ("say", "listen", "transfer", "end") if k in keys]
    if len(kinds) != 1:
        raise where.error(
            node, "a block does exactly one of say, listen, transfer, end"
            + (f" (it has {', '.join(kinds)})" if kinds else ""), name,
        )  # fmt: skip
    kind = kinds[0]
    _only(keys, {kind, "next"}, where, "a block", name)
    nxt = _name(keys["next"], where, "next", name) if "next" in keys else END
    body = keys[kind]
    line = node.start_mark.line + 1
    action: Action
    if kind == "say":
        action = _say(body, where, prompts, name)
    elif kind == "listen":
        action = _listen(body, where, intents, name)
    elif kind == "transfer":
        action = _transfer(body, where, name)
    else:
        if not (isinstance(body, yaml.MappingNode) and not body.value) and not (
            isinstance(body, yaml.ScalarNode) and body.value in ("", "null", "~", "true")
        ):
            raise where.error(body, "end takes no settings (write `end: {}`)", name)
        action = End()
    return Block(name, action, nxt, line)


def _say(body: yaml.Node, where: _Where, prompts: PromptFolder | None, block: str) -> Say:
    if isinstance(body, yaml.ScalarNode):
        return Say(text=_text(body, where, "say", block))
    keys = _mapping(body, where, "say", block)
    _only(keys, {"text", "wav", "voice"}, where, "say", block)
    if ("text" in keys) == ("wav" in keys):
        raise where.error(body, "say needs either text or wav", block)
    voice = _voice(keys["voice"], where, "say.voice", block) if "voice" in keys else None
    if "text" in keys:
        return Say(text=_text(keys["text"], where, "say.text", block), voice=voice)
    wav = _text(keys["wav"], where, "say.wav", block)
    try:
        check_name(wav)
        if prompts is not None:
            prompts.load(wav)
    except ValueError as exc:
        raise where.error(keys["wav"], f"say.wav: {exc}", block) from None
    return Say(wav=wav, voice=voice)


def _listen(body: yaml.Node, where: _Where, intents: dict[str, tuple[str, ...]],
            block: str) -> Listen:  # fmt: skip
    if isinstance(body, yaml.ScalarNode) and body.value in ("", "null", "~"):
        return Listen()
    keys = _mapping(body, where, "listen", block)
    _only(keys, {"timeout", "intents", "no_match"}, where, "listen", block)
    timeout = None
    if "timeout" in keys and _scalar(keys["timeout"], where, "listen.timeout", block) is not None:
        timeout = _number(keys["timeout"], where, "listen.timeout", 0.5, 3600, block)
    routes: dict[str, str] = {}
    if "intents" in keys:
        for intent, target in _mapping(keys["intents"], where, "listen.intents", block).items():
            if intent == MACHINE_INTENT:
                raise where.error(
                    target, f"listen.intents: {MACHINE_INTENT} is always active and ends "
                    "the call; it is not routed", block,
                )  # fmt: skip
            if intent not in intents:
                raise where.error(target, f"listen.intents: unknown intent {intent!r}", block)
            routes[intent] = _name(target, where, f"listen.intents.{intent}", block)
    no_match = (
        _name(keys["no_match"], where, "listen.no_match", block) if "no_match" in keys else END
    )
    return Listen(timeout, routes, no_match)


def _transfer(body: yaml.Node, where: _Where, block: str) -> Transfer:
    keys = _mapping(body, where, "transfer", block)
    _only(keys, {"agent", "mode", "on_failure", "ring_timeout"}, where, "transfer", block)
    if "agent" not in keys:
        raise where.error(body, "transfer needs agent (a sip: URI)", block)
    agent = _text(keys["agent"], where, "transfer.agent", block)
    try:
        check_sip_uri(agent, "transfer.agent")  # what the line's Transfer command takes
    except ValueError as exc:
        raise where.error(keys["agent"], str(exc), block) from None
    mode = _text(keys["mode"], where, "transfer.mode", block) if "mode" in keys else "bridge"
    if mode not in ("bridge", "refer"):
        raise where.error(
            keys["mode"], f"transfer.mode must be bridge or refer, got {mode!r}", block
        )
    on_failure = (
        _name(keys["on_failure"], where, "transfer.on_failure", block)
        if "on_failure" in keys
        else END
    )
    ring = (
        _number(keys["ring_timeout"], where, "transfer.ring_timeout", 1, 600, block)
        if "ring_timeout" in keys else 30.0
    )  # fmt: skip
    return Transfer(agent, "bridge" if mode == "bridge" else "refer", on_failure, ring)


def load_script(
    path: str | Path, prompts_dir: str | Path | None = None, *, read_prompts: bool = True
) -> Script:
    """The script file at PATH, validated. Its prompts are read from ``prompts_dir``
    (default: the script's folder) unless ``read_prompts`` is false (names checked only)."""
    return _load(Path(path), prompts_dir, read_prompts)[0]


def _load(
    path: Path, prompts_dir: str | Path | None, read_prompts: bool
) -> tuple[Script, str, dict[str, Prompt]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScriptError(f"cannot read script {path}: {exc.strerror}") from None
    if len(data) > MAX_SCRIPT_BYTES:
        raise ScriptError(f"{path}: larger than {MAX_SCRIPT_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScriptError(f"{path}: not UTF-8 text") from None
    folder = PromptFolder(path.parent if prompts_dir is None else prompts_dir)
    script = parse_script(text, source=path.name, prompts=folder if read_prompts else None)
    return script, text, folder.read


def read_script(
    path: str | Path, prompts_dir: str | Path | None = None
) -> tuple[str, str, dict[str, Prompt]]:
    """(absolute path, text, prompts by name) of a script, once it has been validated
    (for storing with a campaign: what was checked is what runs, read once)."""
    _, text, prompts = _load(Path(path), prompts_dir, True)
    return str(Path(path).resolve()), text, prompts


def script_of(path: str | None, text: str | None) -> Script:
    """A campaign's script from what was stored at create; none: the default script. Its
    prompts are played from their stored copies (dialer.prompts.materialise)."""
    if text is None:
        return default_script()
    return parse_script(text, source=Path(path).name if path else "script")
