"""The worker's /metrics (Prometheus) and /health endpoints, scraped over HTTP while it
runs real calls."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from siputil import rtp_base
from workerutil import make_campaign, setup_account, simulator, wait_for_state

from billing.ledger import Ledger
from billing.storage import Database
from dialer import ops, runtime
from dialer.campaign_state import Action
from dialer.campaigns import change_state
from dialer.config import OpsConfig

pytestmark = pytest.mark.sip


async def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


async def test_metrics_and_health_of_a_running_worker(sqlite_url: str, tmp_path: Path) -> None:
    numbers = ["+14155554001", "+14155554002", "+14155554003"]
    plan = (
        "".join(f'[numbers."{n}"]\nring = 0.2\ntalk = 1\n\n' for n in numbers[:2])
        + f'[numbers."{numbers[2]}"]\nreject = 486\n'
    )
    with simulator(tmp_path, plan) as sim:
        async with Database(sqlite_url) as database:
            ledger = Ledger(database)
            await setup_account(database, ledger, sim, "platform", 10)
            await make_campaign(database, tmp_path, "spring", "main", [f"{n}," for n in numbers],
                                retries=0)  # fmt: skip
            async with runtime.running_worker(
                database, ledger, lines=2, rtp_port=rtp_base(), drain_seconds=5,
                ops=OpsConfig(port=0),
            ) as worker:  # fmt: skip
                assert worker.ops_port is not None
                port = worker.ops_port
                status, body = await get(port, "/health")
                health = json.loads(body)
                assert status == 200 and health["status"] == "ok", health
                assert health["lines"] == {"up": 2, "total": 2, "free_slots": 8}
                assert health["database"] == "ok" and health["mqtt"] == "off"
                await change_state(database, ledger.tariff, "spring", Action.START)
                await wait_for_state(database, "spring", {"completed"})
                status, body = await get(port, "/metrics")
                assert status == 200
                metrics = samples(body)
                assert (await get(port, "/nope"))[0] == 404
                assert (await get(port, "/metrics", "POST"))[0] == 405
                assert health["dialling"] == "ok"
                # a dialling loop that has not completed a round for too long: degraded
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(ops, "STALE_LOOP_SECONDS", -1.0)
                    status, body = await get(port, "/health")
                assert status == 503 and json.loads(body)["dialling"].startswith("stalled")
    assert metrics[("dialer_calls_placed_total", ())] == 3
    assert metrics[("dialer_calls_ended_total", (("disposition", "answered"),))] == 2
    assert metrics[("dialer_calls_ended_total", (("disposition", "busy"),))] == 1
    assert metrics[("dialer_line_free_slots", ())] == 8
    assert metrics[("dialer_lines_up", ())] == 2
    assert metrics[("dialer_line_deaths_total", ())] == 0
    assert metrics[("dialer_db_write_retries_total", ())] == 0
    assert metrics[("dialer_inbound_unrecorded_total", ())] == 0
    assert metrics[("dialer_calls_up", (("state", "answered"),))] == 0
    # balances as the ledger has them: 10 min each, 2 answered calls x 15 s
    for counter in ("telephony", "speech"):
        key = ("dialer_balance_seconds", (("account", "acme"), ("counter", counter)))
        assert metrics[key] == 600 - 30
    assert 0 <= metrics[("dialer_billing_lag_seconds", (("quantile", "0.5"),))] < 5
