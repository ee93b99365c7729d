"""CLI: `dialer amd classify FILE.wav` (answering-machine detection on a recording)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from dialer.classify import classify
from dialer.cli_common import emit_json, group
from dialer.script import load_script

amd_app = group("Answering-machine detection.")


@amd_app.command("classify")
def amd_classify(
    wav: Annotated[str, typer.Argument(metavar="FILE.wav", help="PCM 16-bit, mu-law or A-law")],
    script: Annotated[
        str | None, typer.Option("--script", help="use this script's intents and threshold")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document on stdout")] = False,
    facts: Annotated[
        bool, typer.Option("--facts", help="also list what was heard, in order")
    ] = False,
) -> None:
    """Is it a machine (voicemail, carrier announcement) or a human?"""
    result = classify(wav, load_script(script, read_prompts=False) if script else None)
    document = result.as_dict()
    if facts:
        document["facts"] = result.facts
    if as_json:
        emit_json(document)
        return
    out = Console(highlight=False)
    out.print(
        f"[bold]{result.decision.decision}[/] after {document['decision_seconds']} s: "
        f"{escape(result.decision.reason)}"
    )
    out.print(f"transcript: {escape(result.transcript) or '(nothing recognised)'}")
    for fact in result.facts if facts else []:
        out.print(f"  {fact['audio_s']:7.2f} s  {escape(str(fact))}")
