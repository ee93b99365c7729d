"""Number policies with the real CLI and a real worker, on SQLite and PostgreSQL: refused
rows reported at import with their line numbers, and every number checked again in the
claim, right before its INVITE: a premium number that is in the database anyway, or one a
policy tightened after the import now refuses, never reaches the callee (sipp)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from clitools import Run
from siputil import Sipp, rtp_base, sipps
from sqlalchemy import Connection, insert, select

from billing.ledger import Ledger
from billing.storage import Database
from dialer import runtime, store
from dialer.campaigns import campaign_status

pytestmark = [pytest.mark.sip, pytest.mark.usefixtures("isolated")]

ALLOWED = "+14155550101"
LATER_REFUSED = "+33612345678"  # allowed at import; the account then keeps to US numbers
PLANTED = "+19005550199"  # premium, written into the database behind the import's back


async def _dial_until_done(url: str) -> dict[str, Any]:
    async with Database(url) as database:

        def plant(conn: Connection) -> None:
            campaign = store.campaign_by_name(conn, "spring")
            conn.execute(insert(store.CONTACT).values(
                campaign_id=campaign.id, phone=PLANTED, timezone="UTC", attributes={},
                state="pending", attempts=0,
            ))  # fmt: skip

        await database.run(plant)
        ledger = Ledger(database)
        async with runtime.running_worker(database, ledger, lines=1, rtp_port=rtp_base(),
                                          drain_seconds=5) as worker:  # fmt: skip
            deadline = asyncio.get_running_loop().time() + 60
            while (await campaign_status(database, "spring"))["state"] != "completed":
                assert asyncio.get_running_loop().time() < deadline, "never completed"
                await asyncio.sleep(0.2)
            placed = worker.metrics.placed

        def contacts(conn: Connection) -> dict[str, Any]:
            rows = conn.execute(select(store.CONTACT)).all()
            calls = conn.execute(select(store.CALL.c.phone)).scalars().all()
            return {"contacts": {r.phone: r for r in rows}, "calls": sorted(calls)}

        found = await database.run(contacts, write=False)
        return found | {"placed": placed}


def test_refused_numbers_are_reported_at_import_and_never_dialled(
    run: Run, database: str, tmp_path: Path
) -> None:
    cli = run
    cli("account", "create", "acme")
    for counter in ("telephony", "speech"):
        cli("billing", "topup", "acme", "--counter", counter, "--minutes", "5")
    with sipps(Sipp("uas_answer", tmp_path, calls=1, sets={"ring_ms": 0, "talk_ms": 500})) as (
        uas,
    ):
        cli("trunk", "add", "main", "--account", "acme", "--kind", "platform", "--uri", uas.uri)
        cli("campaign", "create", "spring", "--account", "acme", "--trunk", "main", "--cps", "10")
        csv = tmp_path / "contacts.csv"
        csv.write_text(
            "phone,name\n"
            f"{ALLOWED},Ann\n"
            "+19005550199,premium US\n"
            "+449098790000,premium UK\n"
            "+881631234567,satellite\n"
            "+447012345678,UK personal number\n"
            f"{LATER_REFUSED},Zoe\n"
        )
        report = json.loads(cli("campaign", "import", "spring", str(csv), "--json")[1])
        assert report["imported"] == 2
        assert report["problems"] == [
            "line 3: +19005550199 is a premium-rate number, not an allowed type for account 'acme'",
            "line 4: +449098790000 is a premium-rate number, not an allowed type for"
            " account 'acme'",
            "line 5: +881631234567 is a non-geographic number (satellite or international"
            " network) for account 'acme'",
            "line 6: +447012345678 is a personal-number number, not an allowed type for"
            " account 'acme'",
        ]
        # tightened after the import: from now on only US numbers
        shown = cli.json("account", "policy", "acme", "--allow-countries", "US")
        assert shown == {"owner": "account acme", "countries": ["US"],
                         "types": sorted(["fixed_line", "fixed_line_or_mobile", "mobile",
                                          "toll_free", "voip"])}  # fmt: skip
        assert "unknown country code 'XX'" in cli.fails(
            "trunk", "policy", "main", "--allow-countries", "US,XX"
        )
        cli("campaign", "start", "spring")
        found = asyncio.run(_dial_until_done(database))
        assert uas.wait(15) == 0  # its one call, answered and ended
        invites = uas.received("INVITE")
    assert [m.first_line.split()[1].split("@")[0] for m in invites] == [f"sip:{ALLOWED}"]
    assert found["placed"] == 1 and found["calls"] == [ALLOWED]
    contacts = found["contacts"]
    assert contacts[ALLOWED].last_disposition == "answered"
    for phone in (PLANTED, LATER_REFUSED):
        contact = contacts[phone]
        assert (contact.state, contact.last_disposition, contact.attempts) == (
            "done", "number_policy", 0,
        ), phone  # fmt: skip
    assert contacts[LATER_REFUSED].last_reason == (
        "+33612345678 is in region FR, not an allowed country for account 'acme'"
    )
    assert contacts[PLANTED].last_reason == (
        "+19005550199 is a premium-rate number, not an allowed type for account 'acme'"
    )
    status = cli.json("campaign", "status", "spring")
    assert status["contacts"]["done"] == 3 and status["calls"]["placed"] == 1  # type: ignore[index]
