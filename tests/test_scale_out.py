"""Two workers on one PostgreSQL database, over real SIP: the trunk's channel cap holds
for both together (it is counted in the database), each contact is dialled exactly once,
and the books balance. (Shared calls-per-second budgets: tests/test_claims.py.)"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from siputil import Sipp, rtp_base, sipps
from workerutil import MINUTES, Outcome, callee_calls, check_books, phones, unfinished

from billing.ledger import Ledger
from billing.storage import Database
from billing.tariff import Counter
from dialer import runtime, store
from dialer.campaign_state import Action
from dialer.campaigns import CampaignSpec, add_trunk, change_state, create_campaign, import_contacts

pytestmark = pytest.mark.sip


async def test_two_workers_share_the_trunks_channels(pg_url: str, tmp_path: Path) -> None:
    numbers = phones(10)
    with sipps(Sipp("uas_answer", tmp_path, calls=10,
                    sets={"ring_ms": 100, "talk_ms": 1500})) as (uas,):  # fmt: skip
        async with Database(pg_url) as setup, Database(pg_url) as first, Database(pg_url) as second:
            ledger = Ledger(setup)
            await ledger.create_account("acme")
            for counter in Counter:
                await ledger.buy_package("acme", counter, MINUTES)
            # each worker alone could carry 8 calls and would dial 10/s: the trunk says 3
            await add_trunk(setup, name="main", account="acme", kind="platform", uri=uas.uri,
                            channels=3, cps=100)  # fmt: skip
            spec = CampaignSpec(name="c-main", account="acme", trunk="main", max_concurrent=8,
                                cps=10, retries=0)  # fmt: skip
            await create_campaign(setup, spec)
            csv = tmp_path / "c.csv"
            csv.write_text("phone\n" + "\n".join(numbers) + "\n")
            await import_contacts(setup, "c-main", csv)
            async with contextlib.AsyncExitStack() as stack:
                workers = []
                for n, database in enumerate((first, second)):
                    running = runtime.running_worker(database, Ledger(database), lines=2,
                                                     rtp_port=rtp_base(), drain_seconds=5,
                                                     worker_id=f"w{n}")  # fmt: skip
                    workers.append(await stack.enter_async_context(running))
                await change_state(setup, ledger.tariff, "c-main", Action.START)
                for _ in range(600):
                    if not await setup.run(unfinished, write=False):
                        break
                    await asyncio.sleep(0.1)
            calls, contacts = await setup.run(
                lambda c: (list(c.execute(store.CALL.select())),
                           list(c.execute(store.CONTACT.select()))), write=False,
            )  # fmt: skip
            audit = await ledger.audit("acme")
            balances = await ledger.balances("acme")
    callees = callee_calls(uas)
    check_books(Outcome(calls, contacts, balances, all(a.consistent for a in audit), workers[0]),
                callees)  # fmt: skip
    assert len(callees) == 10 and all(c.state == store.DONE for c in contacts)
    placed = [w.metrics.placed for w in workers]
    assert all(n > 0 for n in placed), placed  # both dialled
    # the callee's view: never more than 3 calls at once, whichever worker placed them
    edges = sorted([(c.invited_at, 1) for c in callees] + [(c.ended_at or 0, -1) for c in callees])
    up = peak = 0
    for _, step in edges:
        up += step
        peak = max(peak, up)
    assert peak == 3
