"""Item 20 end to end: campaigns made through the real CLI on SQLite and PostgreSQL, a
real worker with line processes and a `dialer sim` callee. The worker plays the prompt
stored at create, never the host file; a prompt missing or corrupt in the database
blocks its campaign with the reason."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from clitools import Run
from sqlalchemy import Connection, delete, update
from workerutil import running_worker, simulator, wait_for_state

from billing.ledger import Ledger
from billing.storage import Database
from dialer import store
from dialer.campaigns import campaign_status

pytestmark = [pytest.mark.sip, pytest.mark.usefixtures("isolated")]
PHONE = "+14155557001"


def _tamper(url: str) -> None:
    """`broken`'s stored prompt corrupted, `bare`'s deleted, `legacy` given a script that
    names a host path (a campaign from before prompts were stored)."""

    def work(conn: Connection) -> None:
        ids = {n: store.campaign_by_name(conn, n).id for n in ("broken", "bare", "legacy")}
        conn.execute(update(store.PROMPT).where(store.PROMPT.c.campaign_id == ids["broken"])
                     .values(content=b"RIFF" + b"\x00" * 100))  # fmt: skip
        conn.execute(delete(store.PROMPT).where(store.PROMPT.c.campaign_id == ids["bare"]))
        legacy = "blocks:\n  hi:\n    say: {wav: /etc/hello.wav}\n"
        conn.execute(update(store.CAMPAIGN).where(store.CAMPAIGN.c.id == ids["legacy"])
                     .values(script_text=legacy))  # fmt: skip

    async def main() -> None:
        async with Database(url) as database:
            await database.run(work)

    asyncio.run(main())


async def _dial(url: str) -> tuple[dict[str, Any], dict[str, Any], Path, list[Any]]:
    async with Database(url) as database:
        ledger = Ledger(database)
        async with running_worker(database, ledger) as worker:
            done = await wait_for_state(database, "spring", {"completed"})
            blocked: dict[str, Any] = {}
            deadline = asyncio.get_running_loop().time() + 90
            for name in ("broken", "bare", "legacy"):
                while not (status := await campaign_status(database, name))["blocked"]:
                    assert status["state"] == "running", status  # never dialled: still running
                    assert asyncio.get_running_loop().time() < deadline, (name, status)
                    await asyncio.sleep(0.2)
                blocked[name] = status
            assets = worker.cache.assets
        calls = await database.run(
            lambda c: store.calls_of(c, store.campaign_by_name(c, "spring").id), write=False
        )
    return done, blocked, assets, list(calls)


def test_the_worker_plays_the_stored_prompt_not_the_host_file(
    run: Run, database: str, tmp_path: Path, tone_wav: Path
) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    tone = tone_wav.read_bytes()
    (prompts / "hello.wav").write_bytes(tone)
    script = prompts / "spring.yaml"
    script.write_text("blocks:\n  hi:\n    say: {wav: hello.wav}\n")
    (tmp_path / "contacts.csv").write_text(f"phone\n{PHONE}\n")
    with simulator(tmp_path, f'[numbers."{PHONE}"]\nring = 0.2\ntalk = 20\n') as sim:
        run("account", "create", "acme")
        for counter in ("telephony", "speech"):
            run("billing", "topup", "acme", "--counter", counter, "--minutes", "10")
        run("trunk", "add", "main", "--account", "acme", "--kind", "platform",
            "--uri", f"sip:127.0.0.1:{sim.port}")  # fmt: skip
        for name in ("spring", "broken", "bare", "legacy"):
            run("campaign", "create", name, "--account", "acme", "--trunk", "main",
                "--script", str(script), "--cps", "10")  # fmt: skip
            run("campaign", "import", name, str(tmp_path / "contacts.csv"))
        # after create the host file is replaced by silence: calls must not hear it
        subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16",
                        str(prompts / "hello.wav"), "trim", "0", "1"], check=True)  # fmt: skip
        _tamper(database)
        for name in ("spring", "broken", "bare", "legacy"):
            run("campaign", "start", name)
        done, blocked, assets, calls = asyncio.run(_dial(database))
    [call] = calls
    assert done["calls"]["answered"] == 1
    assert call.disposition == "answered" and call.hangup_by == "local"  # script end
    ended = sim.wait_for(lambda e: e["event"] == "ended" and e.get("number") == PHONE)
    assert ended["voiced_frames"] > 20  # the stored tone, not the silent host file
    copy = assets / "prompts" / f"{hashlib.sha256(tone).hexdigest()}.wav"
    assert copy.read_bytes() == tone
    reasons = {name: status["blocked"] for name, status in blocked.items()}
    assert all(status["calls"]["placed"] == 0 for status in blocked.values())
    assert reasons["broken"] == (
        "script unusable: prompt 'hello.wav' is corrupt: its content does not match its sha256"
    )
    assert reasons["bare"] == (
        "script unusable: prompt 'hello.wav' is not stored with the campaign (create it again)"
    )
    assert reasons["legacy"].startswith(
        "script unusable: spring.yaml: block 'hi' (line 3): say.wav: '/etc/hello.wav': "
        "absolute paths are not allowed"
    )
