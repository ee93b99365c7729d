"""Assembling a running worker: the trunks in use, a line pool carrying them, the worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from billing.ledger import Ledger
from billing.storage import Database
from dialer import db, store
from dialer.campaign_cache import trunk_configs
from dialer.config import MqttConfig, OpsConfig, Settings, SipConfig
from dialer.events import EventBuffer, Events
from dialer.liveness import Liveness, default_worker_id
from dialer.mqtt import MqttBridge
from dialer.ops import OpsServer
from dialer.worker import Worker
from sip.pool import LinePool, PoolConfig

WORKER_COMMAND_TIMEOUT = 60.0


@contextlib.asynccontextmanager
async def running_worker(
    database: Database,
    ledger: Ledger,
    *,
    lines: int,
    sip_port: int = 0,
    rtp_port: int = 20000,
    bind_address: str = "127.0.0.1",
    ring_timeout: float = 30.0,
    drain_seconds: float = 30.0,
    assets: Path | None = None,
    mqtt: MqttConfig | None = None,
    ops: OpsConfig | None = None,
    worker_id: str | None = None,
    sip: SipConfig | None = None,
    dead_after: float = 30.0,
) -> AsyncIterator[Worker]:
    """A worker dialling until the block ends; leaving it stops the worker gracefully
    (no new calls, calls up get ``drain_seconds``, then are hung up and settled). It
    announces itself and beats while it runs, and settles dead workers' calls
    (dialer.liveness: silent for ``dead_after`` seconds is dead)."""
    rows = await database.run(store.trunks_in_use, write=False)
    config = PoolConfig(
        lines=lines,
        bind_address=bind_address,
        sip_port=sip_port,
        rtp_port=rtp_port,
        trunks=trunk_configs(rows),
        allow_from=tuple(sip.allow_from) if sip else (),
        user_agent=sip.user_agent if sip else "campaign-dialer",
    )
    stop = asyncio.Event()
    events = Events(EventBuffer(mqtt.buffer_events)) if mqtt is not None and mqtt.url else None
    async with LinePool(config) as pool:
        worker = Worker(
            database,
            ledger,
            pool,
            assets=assets,
            ring_timeout=ring_timeout,
            events=events,
            worker_id=worker_id,
            campaign_header=sip.campaign_header if sip else False,
        )

        def settled(calls: list[dict[str, object]]) -> None:
            worker.metrics.recovered += len(calls)

        liveness = Liveness(database, worker.worker_id, dead_after, on_settled=settled,
                            on_fence=lambda: worker.cancel_unanswered("worker fenced"))  # fmt: skip
        await liveness.__aenter__()  # announced before the first claim
        worker.liveness = liveness
        bridge_stop = asyncio.Event()
        bridge: asyncio.Task[None] | None = None
        if events is not None and mqtt is not None and mqtt.url:
            mqtt_bridge = MqttBridge(
                mqtt.url, ledger, events, worker.worker_id, username=mqtt.username,
                password=mqtt.password.get_secret_value() if mqtt.password else None,
                tls=mqtt.tls, ca_file=mqtt.ca_file, max_packet=mqtt.max_packet_bytes,
            )  # fmt: skip
            worker.mqtt = mqtt_bridge
            bridge = asyncio.create_task(mqtt_bridge.run(bridge_stop), name="mqtt")
        task = asyncio.create_task(worker.run(stop, drain_seconds))
        endpoints = contextlib.AsyncExitStack()
        try:
            if ops is not None and ops.port is not None:
                server = await endpoints.enter_async_context(
                    OpsServer(worker, ops.bind_address, ops.port)
                )
                worker.ops_port = server.port
            yield worker
        finally:
            await endpoints.aclose()
            stop.set()
            try:
                await task
            finally:  # beating until the calls are settled; the row stays if some are not
                await liveness.close(withdraw_row=not worker.calls)
            if bridge is not None:  # after the worker: its last events go out too
                bridge_stop.set()
                await bridge


async def run_worker(
    cfg: Settings,
    stop: asyncio.Event,
    *,
    lines: int | None = None,
    sip_port: int | None = None,
    drain_seconds: float = 30.0,
) -> None:
    """`dialer worker`: until ``stop`` (SIGTERM) is set."""
    # a server that stops answering fails the worker's transactions after a minute
    # (they are retried) instead of hanging them forever
    database = await db.open_database(cfg.database.url, command_timeout=WORKER_COMMAND_TIMEOUT)
    port = cfg.sip.port if sip_port is None else sip_port
    try:
        ledger = Ledger(database, cfg.billing.make_tariff())
        async with running_worker(
            database,
            ledger,
            lines=lines or cfg.sip.lines,
            sip_port=port,
            rtp_port=cfg.sip.rtp_port_base,
            bind_address=cfg.sip.bind_address,
            drain_seconds=drain_seconds,
            mqtt=cfg.mqtt,
            ops=cfg.ops,
            # a stable default: a restart settles its previous run's calls at once
            worker_id=cfg.worker.id or default_worker_id(cfg.sip.bind_address, port),
            sip=cfg.sip,
            dead_after=cfg.worker.dead_after,
        ):
            await stop.wait()
    finally:
        await database.dispose()
