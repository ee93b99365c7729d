"""One ledger writer process: debits calls (and buys packages) on one account as fast as
it can, and prints what it did as JSON. Used by the concurrency test and the benchmark.

    python scripts/ledger_load.py --url URL --account ACME --writer 3 --calls 50 \
        --increments 4 [--shared] [--start-at EPOCH]

Each writer debits its own calls `w{writer}-c{k}`; with --shared every writer also
debits the same calls `shared-c{k}` and buys the same packages, so idempotency is
exercised under contention. Counters alternate telephony/speech.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from billing.ledger import Ledger
from billing.storage import Database
from billing.tariff import Counter


async def main(args: argparse.Namespace) -> dict[str, object]:
    database = Database(args.url, pool_size=1)
    ledger = Ledger(database)
    applied = replayed = packages = 0
    try:
        await ledger.balances(args.account)  # connect before the clock starts
        if args.start_at:
            await asyncio.sleep(max(0.0, args.start_at - time.time()))
        started = time.time()
        calls = [f"w{args.writer}-c{k}" for k in range(args.calls)]
        if args.shared:
            calls += [f"shared-c{k}" for k in range(args.calls)]
        for k, call_id in enumerate(calls):
            for n in range(1, args.increments + 1):
                for counter in Counter:
                    result = await ledger.debit(
                        args.account,
                        counter,
                        15,
                        call_id=call_id,
                        increment=n,
                        campaign="load",
                        contact=f"+1415555{k % 10000:04d}",
                    )
                    replayed += result.replayed
                    applied += not result.replayed
            if args.shared and k % 10 == 0:
                for ref in (f"w{args.writer}-p{k}", f"shared-p{k}"):
                    result = await ledger.buy_package(
                        args.account, Counter.SPEECH, 1, reference=ref
                    )
                    packages += not result.replayed
        finished = time.time()
    finally:
        await database.dispose()
    return {
        "writer": args.writer,
        "applied": applied,
        "replayed": replayed,
        "packages": packages,
        "started": started,
        "finished": finished,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--account", required=True)
    parser.add_argument("--writer", type=int, required=True)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--increments", type=int, default=4)
    parser.add_argument("--shared", action="store_true")
    parser.add_argument("--start-at", type=float, default=0.0)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
