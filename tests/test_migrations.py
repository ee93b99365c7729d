"""Migrations, on SQLite and PostgreSQL: an empty database to head builds exactly the
schema the models describe; every earlier revision, with rows in it, upgrades to head
keeping the rows and giving the columns added since their defaults; head goes down to
base and back up.

The revisions are read from the migration scripts, so a new migration is covered here
without touching this file (only a new table or column the app must see filled needs a
line in ``_seed``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, MetaData, Table, insert, inspect, select
from sqlmodel import SQLModel

import billing.models  # noqa: F401  (registers the ledger tables)
import dialer.models  # noqa: F401  (and the dialer tables)
from billing.ledger import Ledger
from billing.storage import Database
from billing.tariff import Counter
from dialer import db, store

SCRIPTS = ScriptDirectory.from_config(db.alembic_config())
#: every revision, oldest first
REVISIONS = [script.revision for script in reversed(list(SCRIPTS.walk_revisions()))]
HEAD = db.head_revision()

T0 = datetime(2026, 11, 27, 9, 30, 15, 123456)
T1 = datetime(2026, 11, 27, 9, 31, 2, 500000)
ACCOUNT = "acme"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new database with nothing in it: no tables, no alembic_version."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return str(request.getfixturevalue("pg_empty_url"))


async def _alembic(database: Database, action: Callable[[Config, str], None], to: str) -> None:
    """``alembic upgrade/downgrade TO`` in one transaction on our connection, as db.upgrade."""

    def run(conn: Connection) -> None:
        cfg = db.alembic_config()
        cfg.attributes["connection"] = conn
        action(cfg, to)

    await database.run(run)


def _diff(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, SQLModel.metadata))


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names()) - {"alembic_version"}


async def test_revisions_form_one_chain() -> None:
    assert SCRIPTS.get_bases() == ["0001_ledger"]
    assert SCRIPTS.get_heads() == [HEAD] == REVISIONS[-1:]
    for older, newer in pairwise(REVISIONS):
        assert SCRIPTS.get_revision(newer).down_revision == older


async def test_empty_database_to_head_matches_the_models(empty_url: str) -> None:
    database = Database(empty_url, create=True)
    try:
        assert await database.run(db.current_revision, write=False) is None
        before, after = await db.upgrade(database)
        assert (before, after) == (None, HEAD)
        await db.check_schema(database)
        assert await database.run(_diff, write=False) == []
        assert await database.run(_tables, write=False) == set(SQLModel.metadata.tables)
        assert await db.upgrade(database) == (HEAD, HEAD)  # idempotent
    finally:
        await database.dispose()


# -- from every earlier revision, with rows -----------------------------------------------


class _Seeder:
    """Inserts rows with only the columns the table has at this revision.

    The values are hand-written for every column the models have; a column the table
    has now but the models no longer do, required and not given, gets a filler value.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.tables = _tables(conn)
        self.rows: dict[str, list[dict[str, Any]]] = {}

    def add(self, name: str, /, **values: Any) -> Any:
        """Insert one row if the table exists; returns its (first) key, or None."""
        model = SQLModel.metadata.tables[name]
        assert set(values) <= set(model.c.keys()), f"{name}: not in the models"
        if name not in self.tables:
            return None
        table = Table(name, MetaData(), autoload_with=self.conn)
        row = {key: value for key, value in values.items() if key in table.c}
        for column in table.c:
            if column.name not in row and _required(column, table):
                row[column.name] = _filler(column)
        keys = list(table.primary_key.columns)
        inserted = self.conn.execute(insert(table).values(row).returning(*keys)).one()
        row |= inserted._asdict()
        self.rows.setdefault(name, []).append(row)
        return inserted[0]


def _required(column: Column[Any], table: Table) -> bool:
    if column.nullable or column.server_default is not None:
        return False
    # a lone integer key is autoincrement (SERIAL on PostgreSQL, the rowid on SQLite)
    return not (column.primary_key and len(table.primary_key.columns) == 1 and _kind(column) is int)


def _kind(column: Column[Any]) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


def _filler(column: Column[Any]) -> object:
    fillers: dict[type | None, object] = {int: 0, float: 0.0, bool: False, datetime: T0, dict: {}}
    return fillers.get(_kind(column), "x")


def _seed(conn: Connection, revision: str) -> dict[str, list[dict[str, Any]]]:
    """Representative rows in every table the schema has at this revision, as the code
    of that revision wrote them."""
    seed = _Seeder(conn)
    scoped = REVISIONS.index(revision) >= REVISIONS.index("0005_number_policy")
    account = seed.add("billing_account", name=ACCOUNT, created_at=T0)
    seed.add("billing_balance", account_id=account, counter="telephony", balance_seconds=585)
    seed.add("billing_balance", account_id=account, counter="speech", balance_seconds=45)
    entry = {"account_id": account, "kind": "package", "created_at": T0}
    for counter, minutes in (("telephony", 10), ("speech", 1)):
        entry_id = seed.add(
            "billing_entry",
            **entry,
            counter=counter,
            seconds=minutes * 60,
            idempotency_key=f"package:{account}:seed-{counter}"
            if scoped
            else f"package:seed-{counter}",
        )
        seed.add(
            "billing_package",
            account_id=account,
            counter=counter,
            minutes=minutes,
            entry_id=entry_id,
            bought_at=T0,
        )
    for counter in ("telephony", "speech"):
        seed.add(
            "billing_entry",
            account_id=account,
            counter=counter,
            kind="debit",
            seconds=-15,
            idempotency_key=f"debit:call-1:{counter}:1",
            call_id="call-1",
            increment=1,
            campaign="spring",
            contact="+33612345678",
            created_at=T1,
        )

    seed.add("dialer_dnc", account=ACCOUNT, phone="+33699999999", added_at=T0)
    trunk = seed.add(
        "dialer_trunk",
        name="main",
        account=ACCOUNT,
        kind="platform",
        uri="sip:gw.example.net;transport=udp",
        outbound_proxy="sip:proxy.example.net",
        username="acme",
        password="s3cret",
        registers=True,
        channels=12,
        cps=2.5,
        created_at=T0,
    )
    campaign = seed.add(
        "dialer_campaign",
        name="spring",
        account=ACCOUNT,
        trunk_id=trunk,
        script="scripts/spring.yaml",
        script_text="say: Hello Zoé\n",
        caller_id="+33100000000",
        window="09:00-18:00",
        days="mon,tue,wed,thu,fri",
        timezone="Europe/Paris",
        max_concurrent=3,
        cps=0.5,
        retry={"busy": {"attempts": 2, "delay_seconds": 600}},
        agent_uri="sip:agent@example.net",
        max_call_seconds=300,
        state="paused",
        pause_reason="balance",
        created_at=T0,
        updated_at=T1,
    )
    contact = {"campaign_id": campaign, "timezone": "Europe/Paris"}
    seed.add(
        "dialer_contact",
        **contact,
        phone="+33612345678",
        attributes={"name": "Zoé", "plan": "gold"},
        state="done",
        attempts=1,
        last_disposition="human",
    )
    leased = seed.add(
        "dialer_contact",
        **contact,
        phone="+33612345679",
        attributes={},
        state="in_progress",
        attempts=2,
        next_attempt_at=T0,
        lease_owner="worker-1",
        lease_until=T1,
        last_disposition="busy",
    )
    seed.add("dialer_contact", **contact, phone="+33612345670", state="pending", attempts=0)
    seed.add(
        "dialer_call",
        call_id="call-1",
        campaign_id=campaign,
        account=ACCOUNT,
        contact_id=leased,
        phone="+33612345679",
        attempt=2,
        direction="outbound",
        trunk_kind="platform",
        line="line-0",
        invite_at=T0,
        ringing_at=T0,
        answered_at=T1,
        ended_at=None,
        sip_status=200,
        disposition=None,
        hangup_by=None,
        amd_reason="speech",
        agent_seconds=1.5,
        billed_telephony_seconds=15,
        billed_speech_seconds=15,
        segments=[{"kind": "bot", "start": 0.0, "end": 9.5}],
    )
    return seed.rows


#: "table.column" -> what a migration that fills a new column from the row's other values
#: must have put in it (a column added without such a backfill holds the model's default)
BACKFILLED: dict[str, Callable[[dict[str, Any]], object]] = {}

#: "table.column" -> (the revision that rewrites it, what a row written before that
#: revision must hold at head)
REWRITTEN: dict[str, tuple[str, Callable[[dict[str, Any]], object]]] = {
    # top-up references scoped per account
    "billing_entry.idempotency_key": (
        "0005_number_policy",
        lambda row: (
            row["idempotency_key"].replace("package:", f"package:{row['account_id']}:", 1)
            if row["kind"] == "package"
            else row["idempotency_key"]
        ),
    ),
}


def _expected(column: Column[Any], row: dict[str, Any], revision: str) -> object:
    rewrite = REWRITTEN.get(f"{column.table.name}.{column.name}")
    if rewrite is not None and REVISIONS.index(revision) < REVISIONS.index(rewrite[0]):
        return rewrite[1](row)
    return row[column.name]


def _added(column: Column[Any], row: dict[str, Any]) -> object:
    """What a column added after the row was written must hold at head."""
    backfill = BACKFILLED.get(f"{column.table.name}.{column.name}")
    if backfill is not None:
        return backfill(row)
    default = column.default
    if default is None:
        return None
    if default.is_scalar:
        return default.arg  # type: ignore[attr-defined]
    assert default.is_callable, f"{column}: say in BACKFILLED what old rows must hold"
    return default.arg(None)  # type: ignore[attr-defined]


def _unchanged(
    conn: Connection, seeded: dict[str, list[dict[str, Any]]], revision: str
) -> list[str]:
    """Every seeded row, read at head: the values it had, its new columns' defaults."""
    wrong = []
    for name, rows in seeded.items():
        model = SQLModel.metadata.tables[name]
        for row in rows:
            key = {column.name: row[column.name] for column in model.primary_key.columns}
            where = [model.c[column] == value for column, value in key.items()]
            found = conn.execute(select(model).where(*where)).first()
            if found is None:
                wrong.append(f"{name} {key}: row lost")
                continue
            for column in model.c:
                expected = (
                    _expected(column, row, revision) if column.name in row else _added(column, row)
                )
                got = found._mapping[column.name]
                if got != expected:
                    wrong.append(f"{name}.{column.name} {key}: {got!r} != {expected!r}")
    return wrong


async def _check_the_app_uses_them(
    database: Database, seeded: dict[str, list[dict[str, Any]]]
) -> None:
    if "billing_account" in seeded:
        ledger = Ledger(database)
        assert await ledger.balances(ACCOUNT) == {Counter.TELEPHONY: 585, Counter.SPEECH: 45}
        assert all(line.consistent for line in await ledger.audit(ACCOUNT))
        debit = await ledger.debit(ACCOUNT, Counter.SPEECH, 15, call_id="call-2", increment=1)
        assert debit.balance_seconds == 30 and not debit.replayed
        assert all(line.consistent for line in await ledger.audit(ACCOUNT))
        # a top-up reference bought before the migration is still recognised
        again = await ledger.buy_package(ACCOUNT, Counter.SPEECH, 1, reference="seed-speech")
        assert again.replayed and again.balance_seconds == 30
    if "dialer_campaign" in seeded:

        def read(conn: Connection) -> None:
            trunk = store.trunk_by_name(conn, "main")
            campaign = store.campaign_by_name(conn, "spring")
            assert (campaign.trunk_id, trunk.cps, campaign.cps) == (trunk.id, 2.5, 0.5)
            assert campaign.retry == {"busy": {"attempts": 2, "delay_seconds": 600}}
            counts = store.contact_counts(conn, campaign.id)
            assert counts == {"pending": 1, "in_progress": 1, "done": 1, "total": 3}
            assert [call.call_id for call in store.calls_of(conn, campaign.id)] == ["call-1"]
            new = [
                {"phone": "+33612345670", "timezone": "UTC"},
                {"phone": "+3361", "timezone": "UTC"},
            ]
            assert store.insert_contacts(conn, campaign.id, new) == 1  # known number skipped
            assert store.contact_counts(conn, campaign.id)["pending"] == 2

        await database.run(read)


@pytest.mark.parametrize("revision", REVISIONS[:-1])
async def test_upgrade_with_rows_to_head(empty_url: str, revision: str) -> None:
    database = Database(empty_url, create=True)
    try:
        await _alembic(database, command.upgrade, revision)
        seeded = await database.run(lambda conn: _seed(conn, revision))
        assert seeded, f"no table to put rows in at {revision}"

        assert await db.upgrade(database) == (revision, HEAD)

        assert await database.run(_diff, write=False) == []
        unchanged = await database.run(lambda conn: _unchanged(conn, seeded, revision), write=False)
        assert unchanged == []
        await _check_the_app_uses_them(database, seeded)
    finally:
        await database.dispose()


# -- down and up again --------------------------------------------------------------------


async def test_downgrade_to_base_and_upgrade_again(empty_url: str) -> None:
    database = Database(empty_url, create=True)
    try:
        await db.upgrade(database)
        await _alembic(database, command.downgrade, "base")
        assert await database.run(db.current_revision, write=False) is None
        assert await database.run(_tables, write=False) == set()

        assert await db.upgrade(database) == (None, HEAD)
        assert await database.run(_diff, write=False) == []
    finally:
        await database.dispose()
