"""Workers announce themselves in the database and watch each other: a dead worker's calls
are settled by a live one within ``[worker] dead_after`` seconds (30 by default), with the
rules of crash recovery (``store.reconcile_abandoned``), instead of when its contacts'
leases run out (15 minutes).

The rule (``Watch``, sans I/O; ``Liveness`` runs it):

* Each worker has a row (``dialer_worker``) and bumps its ``beats`` every ``interval``
  (dead_after / 6, at most 5 s). Its row also says its ``dead_after``.
* A judge declares worker X dead when it has seen X's ``(run, beats)`` unchanged for X's
  ``dead_after`` seconds, measured on the judge's own monotonic clock from just after the
  first read that saw the value to just before the latest one. No wall clock and no
  database clock is compared, so clocks of different hosts may disagree freely.
* The judge's watch counts only while the judge itself keeps in touch: a round of its own
  farther than ``3 * interval`` from the previous one (the database was away, the judge
  stalled) forgets everything it had seen. After the database was away for 40 s nobody
  is dead for that alone: every worker beats again before anyone has watched it long
  enough.
* A worker never judges itself (its own id is never a candidate, and the settlement
  excludes its contacts), and X is settled in one transaction that first re-reads X's row
  with the same ``(run, beats)`` under a lock (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite:
  the only writer): a beat that lands meanwhile saves X.
* X knows its own deadline: nobody can declare it dead before ``dead_after`` after its last
  beat committed. So when ``dead_after - interval`` has passed since the start of its last
  beat that committed, X is *fenced*: it claims no contact and cancels its calls not yet
  answered (an answered call goes on: its contact is finished by the settlement, and its
  debits and record are written when the database is back). Its next beat then tells it
  whether it was settled meanwhile (its row is gone): it says so in one error line and
  announces itself again; its calls' records end with their real billing.
* A worker stopping cleanly deletes its row (only once no call of its own is left open;
  otherwise the row goes silent and another worker settles what is left).

Default ids (``default_worker_id``): ``<host>:<SIP port>``, stable across restarts, so a
restart settles its previous run's calls at once (``Worker._recover(own_previous=True)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from importlib import metadata
from typing import Any

import structlog
from sqlalchemy import Connection, delete, insert, select, update

from billing.period import utcnow
from billing.storage import Database, first_line
from dialer import store
from dialer.models import WorkerPresence

log = structlog.get_logger("dialer.liveness")
WORKER = WorkerPresence.__table__  # type: ignore[attr-defined]

MAX_INTERVAL = 5.0
GAP_INTERVALS = 3.0  # a judge's own rounds farther apart than this many intervals: blind
WILDCARD = frozenset({"", "0.0.0.0", "127.0.0.1", "::", "localhost"})


def interval_of(dead_after: float) -> float:
    """Seconds between heartbeats for this ``dead_after``."""
    return min(MAX_INTERVAL, dead_after / 6)


def default_worker_id(bind_address: str, sip_port: int) -> str:
    """``<host>:<port>`` (``<host>:<address>:<port>`` when bound to one address, so two
    workers on one host, each on its own address, differ). Port 0 (any free port per line)
    cannot be told apart across runs: a random suffix, so recovery waits for dead_after."""

    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.:-]", "-", text)

    where = str(sip_port) if sip_port else uuid.uuid4().hex[:8]
    if sip_port and bind_address not in WILDCARD:
        where = f"{clean(bind_address)}:{where}"
    host = clean(socket.gethostname()) or "host"
    return f"{host[: 63 - len(where)]}:{where}"[:64]


def _version() -> str:
    try:
        return metadata.version("campaign-dialer")[:32]
    except metadata.PackageNotFoundError:
        return "unknown"


# -- the rule, sans I/O ---------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """Another worker's row as a judge read it."""

    id: str
    run: str
    beats: int
    dead_after: float


@dataclass
class Watch:
    """What one judge has seen of the other workers, and when (its monotonic clock)."""

    gap: float
    _since: dict[str, tuple[tuple[str, int], float]] = field(default_factory=dict)
    _last: float | None = None  # the start of the judge's previous round that went through

    def round(self, started: float, ended: float, rows: Sequence[Seen]) -> list[Seen]:
        """One round of the judge that went through: it began at ``started``, its read of
        ``rows`` (every worker but the judge) committed by ``ended``. Returns the dead."""
        blind = self._last is None or ended - self._last > self.gap
        self._last = started
        if blind:  # what was seen before the judge lost touch proves nothing now
            self._since.clear()
        dead: list[Seen] = []
        present = set()
        for row in rows:
            present.add(row.id)
            value = (row.run, row.beats)
            seen = self._since.get(row.id)
            if seen is None or seen[0] != value:
                self._since[row.id] = (value, ended)  # read no later than this
            elif started - seen[1] >= row.dead_after:  # silent at least this long
                dead.append(row)
        for gone in set(self._since) - present:
            del self._since[gone]
        return dead

    def forget(self, worker: str) -> None:
        self._since.pop(worker, None)


# -- the transactions -----------------------------------------------------------------------


class Beat(Enum):
    OK = "ok"
    REVIVED = "revived"  # our row was gone: another worker settled us; announced again
    TAKEN = "taken"  # another process runs under our id


@dataclass(frozen=True)
class Me:
    id: str
    run: str
    dead_after: float
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    version: str = field(default_factory=_version)


def announce(conn: Connection, me: Me, now: datetime) -> None:
    """This run's row (a previous run's under the same id is replaced)."""
    values = {"run": me.run, "host": me.host[:255], "pid": me.pid, "version": me.version,
              "dead_after": me.dead_after, "beats": 0, "started_at": now,
              "heartbeat_at": now}  # fmt: skip
    if not conn.execute(update(WORKER).where(WORKER.c.id == me.id).values(values)).rowcount:
        conn.execute(insert(WORKER).values(id=me.id, **values))


def beat(conn: Connection, me: Me, now: datetime) -> tuple[Beat, Any, list[Seen]]:
    """Our heartbeat, and the other workers' rows as they are now. (Beat.TAKEN: the row
    of the process that holds our id.)"""
    done = conn.execute(
        update(WORKER)
        .where(WORKER.c.id == me.id, WORKER.c.run == me.run)
        .values(beats=WORKER.c.beats + 1, heartbeat_at=now)
    )
    outcome, holder = Beat.OK, None
    if not done.rowcount:
        holder = conn.execute(select(WORKER).where(WORKER.c.id == me.id)).first()
        if holder is None:
            announce(conn, me, now)
            outcome = Beat.REVIVED
        else:
            outcome = Beat.TAKEN
    rows = conn.execute(
        select(WORKER.c.id, WORKER.c.run, WORKER.c.beats, WORKER.c.dead_after).where(
            WORKER.c.id != me.id
        )
    ).all()
    return outcome, holder, [Seen(r.id, r.run, int(r.beats), float(r.dead_after)) for r in rows]


def settle_dead(
    conn: Connection, dead: Seen, me: str, now: datetime
) -> list[dict[str, Any]] | None:
    """Settle a dead worker's calls (store.reconcile_abandoned, the recovery rules) and
    delete its row, if the row still shows the beat it was judged on. None: it beat
    meanwhile, or someone else is settling it."""
    if dead.id == me:
        raise ValueError("a worker never settles itself")
    stmt = select(WORKER.c.id).where(
        WORKER.c.id == dead.id, WORKER.c.run == dead.run, WORKER.c.beats == dead.beats
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    if conn.execute(stmt).first() is None:
        return None
    settled = store.reconcile_abandoned(conn, now, dead.id, exclude=me)
    conn.execute(delete(WORKER).where(WORKER.c.id == dead.id, WORKER.c.run == dead.run))
    return settled


def withdraw(conn: Connection, me: Me) -> None:
    conn.execute(delete(WORKER).where(WORKER.c.id == me.id, WORKER.c.run == me.run))


def workers(conn: Connection) -> list[Any]:
    return list(conn.execute(select(WORKER).order_by(WORKER.c.id)).all())


# -- the running part -----------------------------------------------------------------------


class Liveness:
    """A worker's heartbeat and its watch over the others, as one async resource:

        async with Liveness(db, worker_id, dead_after, on_fence=..., on_settled=...) as me:
            ... me.fenced ...

    ``on_fence``: called once when this worker becomes fenced (see the module's rule);
    ``on_settled(calls)``: the calls of a dead worker this one settled.
    """

    def __init__(
        self,
        db: Database,
        worker_id: str,
        dead_after: float,
        *,
        on_fence: Callable[[], Any] | None = None,
        on_settled: Callable[[list[dict[str, Any]]], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.me = Me(worker_id, uuid.uuid4().hex, dead_after)
        self.interval = interval_of(dead_after)
        self.watch = Watch(GAP_INTERVALS * self.interval)
        self.on_fence = on_fence
        self.on_settled = on_settled
        self.clock = clock
        self._last_ok: float | None = None  # the start of our last beat that committed
        self._fence_noted = False
        self._taken_noted = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def fence_at(self) -> float | None:
        if self._last_ok is None:
            return None
        return self._last_ok + self.me.dead_after - self.interval

    @property
    def fenced(self) -> bool:
        """Silent so long that others may settle our calls soon: no new claim."""
        at = self.fence_at
        return at is not None and self.clock() >= at

    async def __aenter__(self) -> Liveness:
        await self.announce()
        self._tasks = [
            asyncio.create_task(self._beating(), name="liveness-beat"),
            asyncio.create_task(self._fencing(), name="liveness-fence"),
        ]
        return self

    async def announce(self) -> None:
        """Our row, before the first claim (``step`` then keeps it fresh)."""
        started = self.clock()
        await self.db.run(lambda conn: announce(conn, self.me, utcnow()))
        self._last_ok = started
        log.info("worker announced", worker=self.me.id, dead_after=self.me.dead_after,
                 heartbeat_every=round(self.interval, 2))  # fmt: skip

    async def __aexit__(self, *exc: object) -> None:
        await self.close(withdraw_row=True)

    async def close(self, *, withdraw_row: bool) -> None:
        """Stop beating; ``withdraw_row``: delete our row (no call of ours is left open)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if withdraw_row:
            try:
                await self.db.run(lambda conn: withdraw(conn, self.me))
            except Exception as exc:  # silent now: the others settle what is left
                log.warning("could not withdraw the worker's row", error=first_line(exc))

    async def _beating(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.step()
            except Exception as exc:  # never stop beating; the fence watches the silence
                log.error("heartbeat failed", worker=self.me.id, error=first_line(exc))

    async def step(self) -> None:
        """One round: beat, look at the others, settle the dead."""
        started = self.clock()
        outcome, holder, rows = await self.db.run(lambda conn: beat(conn, self.me, utcnow()))
        ended = self.clock()
        if outcome is Beat.TAKEN:
            if not self._taken_noted:
                log.error("another worker runs under this worker's id: give each worker its "
                          "own [worker] id", worker=self.me.id, other_host=holder.host,
                          other_pid=holder.pid)  # fmt: skip
                self._taken_noted = True
            return  # not our row: neither a beat of ours nor a round to judge on
        self._taken_noted = False
        silent = started - (self._last_ok if self._last_ok is not None else started)
        self._last_ok = started
        if outcome is Beat.REVIVED:
            log.error("this worker was found dead while it could not beat: its calls were "
                      "settled as interrupted elsewhere (their records get their final "
                      "billing when they end); announced again", worker=self.me.id,
                      silent_seconds=round(silent, 1))  # fmt: skip
        if self._fence_noted:
            self._fence_noted = False
            log.warning("heartbeat back: dialling again", worker=self.me.id,
                        silent_seconds=round(silent, 1))  # fmt: skip
        for dead in self.watch.round(started, ended, rows):
            await self._settle(dead)

    async def _settle(self, dead: Seen) -> None:
        now = utcnow()
        settled = await self.db.run(lambda conn: settle_dead(conn, dead, self.me.id, now))
        self.watch.forget(dead.id)
        if settled is None:
            return
        log.warning("worker dead: its calls settled", dead_worker=dead.id,
                    silent_for_more_than=dead.dead_after, calls=len(settled))  # fmt: skip
        for call in settled:
            log.warning("call left by a dead worker settled as interrupted", **call)
        if self.on_settled is not None:
            self.on_settled(settled)

    async def _fencing(self) -> None:
        while True:
            at = self.fence_at
            wait = self.interval if at is None else max(0.05, at - self.clock())
            await asyncio.sleep(wait)
            if self.fenced and not self._fence_noted:
                self._fence_noted = True
                assert self._last_ok is not None
                log.error("no heartbeat: other workers may settle this worker's calls soon; "
                          "no new calls, the ones not answered are cancelled",
                          worker=self.me.id,
                          silent_seconds=round(self.clock() - self._last_ok, 1))  # fmt: skip
                if self.on_fence is not None:
                    try:
                        result = self.on_fence()
                        if asyncio.iscoroutine(result):
                            await result
                    except Exception:
                        log.exception("fencing failed")
            if self._fence_noted:
                await asyncio.sleep(self.interval)  # until a beat goes through
