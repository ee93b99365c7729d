"""Assembling a running worker from the configuration: database, ledger, pool, worker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from billing.ledger import Ledger
from dialer import db, store
from dialer.config import Settings
from dialer.worker import Worker
from sip.pool import LinePool, PoolConfig
from sip.protocol import TrunkConfig


def trunk_configs(rows: list[Any]) -> tuple[TrunkConfig, ...]:
    return tuple(
        TrunkConfig(
            name=r.name,
            kind=r.kind,
            uri=r.uri,
            outbound_proxy=r.outbound_proxy,
            username=r.username,
            password=r.password,
            registers=r.registers,
        )
        for r in rows
    )


async def run_worker(
    cfg: Settings,
    stop: asyncio.Event,
    *,
    lines: int | None = None,
    sip_port: int | None = None,
    drain_seconds: float = 30.0,
    assets: Path | None = None,
) -> None:
    database = await db.open_database(cfg.database.url)
    try:
        ledger = Ledger(database, cfg.billing.make_tariff())

        rows = await database.run(store.trunks_in_use, write=False)
        pool_config = PoolConfig(
            lines=lines or cfg.sip.lines,
            bind_address=cfg.sip.bind_address,
            sip_port=cfg.sip.port if sip_port is None else sip_port,
            rtp_port=cfg.sip.rtp_port_base,
            trunks=trunk_configs(rows),
        )
        async with LinePool(pool_config) as pool:
            worker = Worker(database, ledger, pool, assets=assets,
                            trunks={r.name: r for r in rows})  # fmt: skip
            await worker.run(stop, drain_seconds)
    finally:
        await database.dispose()
