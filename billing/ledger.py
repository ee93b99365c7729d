"""The minute ledger: accounts, packages, idempotent debits, the balance gate, usage.

Rules of this file:

* Entries are append-only. Each has a unique idempotency key; writing an existing key
  again changes nothing and returns the original entry (a different payload under the
  same key is refused: the caller is confused).
* The balance row per (account, counter) moves in the same transaction as its entry,
  by one atomic ``UPDATE ... RETURNING``; so balance = sum of entries, always, however
  many processes write at once (PostgreSQL row lock; SQLite ``BEGIN IMMEDIATE``, see
  billing.storage).
* A debit may take the balance negative: a call in progress is never cut.
* Signals: EXHAUSTED when a debit leaves a counter at or below zero, RESTORED when a
  package makes a counter that was not positive positive again. Nothing is resumed
  here; listeners decide.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Select, bindparam, distinct, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from billing.errors import BillingError, DuplicateAccount, IdempotencyConflict, UnknownAccount
from billing.models import Account, CounterBalance, LedgerEntry, Package
from billing.period import Period, to_naive_utc, utcnow
from billing.storage import Database
from billing.tariff import Counter, Tariff, TrunkKind

ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_PACKAGE_MINUTES = 10_000_000

ENTRY = LedgerEntry.__table__  # type: ignore[attr-defined]
BALANCE = CounterBalance.__table__  # type: ignore[attr-defined]
ACCOUNT = Account.__table__  # type: ignore[attr-defined]
PACKAGE = Package.__table__  # type: ignore[attr-defined]


class SignalKind(StrEnum):
    EXHAUSTED = "balance_exhausted"
    RESTORED = "balance_restored"


@dataclass(frozen=True)
class BalanceSignal:
    kind: SignalKind
    account: str
    counter: Counter
    balance_seconds: int


@dataclass(frozen=True)
class AccountInfo:
    name: str
    created_at: datetime


@dataclass(frozen=True)
class EntryResult:
    entry_id: int
    account: str
    counter: Counter
    seconds: int  # signed: + package, - debit
    balance_seconds: int  # after this entry (for a replay: the balance now)
    replayed: bool
    signal: BalanceSignal | None = None


@dataclass(frozen=True)
class GateDecision:
    allowed: bool
    balances: dict[Counter, int]
    blocking: tuple[Counter, ...]

    def reason(self) -> str:
        if self.allowed:
            return "balance is positive"
        parts = [f"{c.value} balance is {self.balances[c]} s" for c in self.blocking]
        return "; ".join(parts) + " (must be positive: top up first)"


@dataclass(frozen=True)
class CampaignUsage:
    campaign: str
    unique_contacts: int
    billed_seconds: dict[Counter, int]


@dataclass(frozen=True)
class UsageReport:
    account: str
    period: Period
    unique_contacts: int
    billed_seconds: dict[Counter, int]
    campaigns: list[CampaignUsage] = field(default_factory=list)


@dataclass(frozen=True)
class AuditLine:
    counter: Counter
    balance_seconds: int
    sum_of_entries: int

    @property
    def consistent(self) -> bool:
        return self.balance_seconds == self.sum_of_entries


SignalListener = Callable[[BalanceSignal], Awaitable[None]]


def validate_account_name(name: str) -> str:
    if not ACCOUNT_NAME.fullmatch(name):  # match() lets a trailing newline through ($)
        raise BillingError(
            f"invalid account name {name!r}: 1-64 characters, letters, digits, '_', '.', '-',"
            " starting with a letter or digit"
        )
    return name


def parse_minutes(value: object) -> int:
    """Whole positive minutes, from an int or its decimal text; anything else is refused."""
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"\+?[0-9]+", text):
        raise BillingError(f"minutes must be a whole positive number, got {value!r}")
    minutes = int(text)
    if minutes <= 0:
        raise BillingError(f"minutes must be a whole positive number, got {value!r}")
    if minutes > MAX_PACKAGE_MINUTES:
        raise BillingError(f"minutes must be at most {MAX_PACKAGE_MINUTES}, got {minutes}")
    return minutes


MAX_REFERENCE = 200


def _check_text(what: str, value: str | None, limit: int) -> None:
    if value is not None and (not value or len(value) > limit):
        raise BillingError(f"{what} must be 1-{limit} characters, got {len(value)}")


def package_key(acct_id: int, reference: str) -> str:
    """References are the account's own: scoped by its id (migration 0005), so another
    account's reference never blocks a purchase, nor says anything about it."""
    return f"package:{acct_id}:{reference}"


def debit_key(call_id: str, counter: Counter, increment: int) -> str:
    return f"debit:{call_id}:{counter.value}:{increment}"


def account_id(conn: Connection, name: str) -> int:
    row = conn.execute(select(ACCOUNT.c.id).where(ACCOUNT.c.name == name)).first()
    if row is None:
        raise UnknownAccount(name)
    return int(row[0])


def read_balances(conn: Connection, acct_id: int) -> dict[Counter, int]:
    rows = conn.execute(
        select(BALANCE.c.counter, BALANCE.c.balance_seconds).where(BALANCE.c.account_id == acct_id)
    )
    return {Counter(r.counter): int(r.balance_seconds) for r in rows}


def gate(conn: Connection, acct_id: int, trunk: TrunkKind, tariff: Tariff) -> GateDecision:
    """May this account dial on this kind of trunk? Every counter the tariff charges > 0.

    A transaction step, so that the dialer can ask inside the transaction that claims a
    contact.
    """
    balances = read_balances(conn, acct_id)
    blocking = tuple(c for c in tariff.charged_counters(trunk) if balances.get(c, 0) <= 0)
    return GateDecision(allowed=not blocking, balances=balances, blocking=blocking)


ENTRY_COLUMNS = (
    "account_id",
    "counter",
    "kind",
    "seconds",
    "idempotency_key",
    "call_id",
    "increment",
    "campaign",
    "contact",
    "created_at",
)


def _entry_values(values: dict[str, Any]) -> dict[str, Any]:
    return {name: values.get(name) for name in ENTRY_COLUMNS}


_ENTRY_PARAMS = {name: bindparam(f"e_{name}", type_=ENTRY.c[name].type) for name in ENTRY_COLUMNS}


def _pg_append_statement() -> Any:
    """Insert the entry and move its balance in ONE statement (built once: it is hot).

    If the key exists, the insert yields no row and the balance does not move. The
    UPDATE re-reads a row another writer just changed, so no update is lost.
    """
    new_entry = (
        postgresql.insert(ENTRY)
        .values(_ENTRY_PARAMS)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(ENTRY.c.id, ENTRY.c.account_id, ENTRY.c.counter, ENTRY.c.seconds)
        .cte("new_entry")
    )
    return (
        update(BALANCE)
        .where(
            BALANCE.c.account_id == new_entry.c.account_id,
            BALANCE.c.counter == new_entry.c.counter,
        )
        .values(balance_seconds=BALANCE.c.balance_seconds + new_entry.c.seconds)
        .returning(new_entry.c.id, BALANCE.c.balance_seconds)
    )


_PG_APPEND = _pg_append_statement()
_SQLITE_INSERT = (
    sqlite.insert(ENTRY)
    .values(_ENTRY_PARAMS)
    .on_conflict_do_nothing(index_elements=["idempotency_key"])
    .returning(ENTRY.c.id)
)
_MOVE_BALANCE = (
    update(BALANCE)
    .where(
        BALANCE.c.account_id == _ENTRY_PARAMS["account_id"],
        BALANCE.c.counter == _ENTRY_PARAMS["counter"],
    )
    .values(balance_seconds=BALANCE.c.balance_seconds + _ENTRY_PARAMS["seconds"])
    .returning(BALANCE.c.balance_seconds)
)


def append_entry(conn: Connection, values: dict[str, Any]) -> tuple[int, int] | None:
    """Insert the entry and move its balance in the same transaction.

    Returns (entry id, balance after), or None when the key exists already (a replay).
    """
    if conn.dialect.name == "postgresql":
        row = conn.execute(_PG_APPEND, {f"e_{k}": v for k, v in _entry_values(values).items()})
        found = row.first()
        return None if found is None else (int(found[0]), int(found[1]))
    # SQLite: the transaction began IMMEDIATE, so no other writer runs in between.
    params = {f"e_{k}": v for k, v in _entry_values(values).items()}
    inserted = conn.execute(_SQLITE_INSERT, params).scalar_one_or_none()
    if inserted is None:
        return None
    after = conn.execute(_MOVE_BALANCE, params).scalar_one()
    return int(inserted), int(after)


def replayed_entry(conn: Connection, account: str, values: dict[str, Any]) -> EntryResult:
    """The original entry of a replayed key; a different payload is refused."""
    original = conn.execute(
        select(ENTRY).where(ENTRY.c.idempotency_key == values["idempotency_key"])
    ).one()
    for name in (
        "account_id",
        "counter",
        "kind",
        "seconds",
        "call_id",
        "increment",
        "campaign",
        "contact",
    ):
        if name in values and getattr(original, name) != values[name]:
            if name == "account_id":  # never another account's internal id, or its data
                raise IdempotencyConflict(
                    f"entry {values['idempotency_key']!r} exists for another account"
                )
            raise IdempotencyConflict(
                f"entry {values['idempotency_key']!r} exists with a different {name}"
                f" ({getattr(original, name)!r}, not {values[name]!r})"
            )
    counter = Counter(original.counter)
    balance = read_balances(conn, original.account_id)[counter]
    signal = None
    if original.kind == "debit" and balance <= 0:
        # Signals are sent after commit; a crash in between would lose this one for good.
        # The replay that follows a crash sends it again (pausing twice is harmless).
        signal = BalanceSignal(SignalKind.EXHAUSTED, account, counter, balance)
    return EntryResult(
        int(original.id), account, counter, int(original.seconds), balance, True, signal
    )


def call_debits(conn: Connection, call_id: str) -> dict[Counter, int]:
    """Seconds debited so far for one call, per counter (what a crash left persisted)."""
    rows = conn.execute(
        select(ENTRY.c.counter, func.sum(ENTRY.c.seconds))
        .where(ENTRY.c.call_id == call_id, ENTRY.c.seconds < 0)
        .group_by(ENTRY.c.counter)
    ).all()
    totals = {c: 0 for c in Counter}
    for counter, seconds in rows:
        totals[Counter(counter)] = -int(seconds)
    return totals


class Ledger:
    def __init__(
        self,
        database: Database,
        tariff: Tariff | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.tariff = tariff or Tariff()
        self._clock = clock
        self._listeners: list[SignalListener] = []
        self._account_ids: dict[str, int] = {}  # names are immutable and never deleted

    def subscribe(self, listener: SignalListener) -> None:
        """Call ``listener`` after commit for every exhausted/restored signal."""
        self._listeners.append(listener)

    async def _emit(self, signal: BalanceSignal | None) -> None:
        if signal is None:
            return
        for listener in self._listeners:
            await listener(signal)

    def _account_id(self, conn: Connection, name: str) -> int:
        cached = self._account_ids.get(name)
        if cached is None:
            cached = self._account_ids[name] = account_id(conn, name)
        return cached

    # -- accounts -------------------------------------------------------------------------

    async def create_account(self, name: str) -> AccountInfo:
        validate_account_name(name)
        created = self._clock()

        def create(conn: Connection) -> None:
            new_id = conn.execute(
                insert(ACCOUNT).values(name=name, created_at=created).returning(ACCOUNT.c.id)
            ).scalar_one()
            conn.execute(
                insert(BALANCE),
                [{"account_id": new_id, "counter": c.value, "balance_seconds": 0} for c in Counter],
            )

        try:
            await self.database.run(create)
        except IntegrityError:
            raise DuplicateAccount(name) from None
        return AccountInfo(name=name, created_at=created)

    async def list_accounts(self) -> list[AccountInfo]:
        def rows(conn: Connection) -> list[AccountInfo]:
            result = conn.execute(
                select(ACCOUNT.c.name, ACCOUNT.c.created_at).order_by(ACCOUNT.c.name)
            )
            return [AccountInfo(name=r.name, created_at=r.created_at) for r in result]

        return await self.database.run(rows, write=False)

    async def balances(self, account: str) -> dict[Counter, int]:
        return await self.database.run(
            lambda conn: read_balances(conn, self._account_id(conn, account)), write=False
        )

    async def all_balances(self) -> list[tuple[str, Counter, int]]:
        """(account, counter, balance seconds) for every account (metrics)."""

        def read(conn: Connection) -> list[tuple[str, Counter, int]]:
            rows = conn.execute(
                select(ACCOUNT.c.name, BALANCE.c.counter, BALANCE.c.balance_seconds)
                .join(BALANCE, BALANCE.c.account_id == ACCOUNT.c.id)
                .order_by(ACCOUNT.c.name, BALANCE.c.counter)
            ).all()
            return [(r[0], Counter(r[1]), int(r[2])) for r in rows]

        return await self.database.run(read, write=False)

    async def may_dial(self, account: str, trunk: TrunkKind) -> GateDecision:
        return await self.database.run(
            lambda conn: gate(conn, self._account_id(conn, account), trunk, self.tariff),
            write=False,
        )

    # -- movements ------------------------------------------------------------------------

    async def buy_package(
        self,
        account: str,
        counter: Counter,
        minutes: int,
        *,
        reference: str | None = None,
        at: datetime | None = None,
    ) -> EntryResult:
        """Add a package: pays off a negative balance first, accumulates on a positive one.

        ``reference`` makes the purchase idempotent (e.g. a payment or request id).
        """
        minutes = parse_minutes(minutes)
        if reference is not None:
            _check_text("reference", reference, MAX_REFERENCE)
        when = to_naive_utc(at) if at else self._clock()
        seconds = minutes * 60

        def buy(conn: Connection) -> EntryResult:
            acct = self._account_id(conn, account)
            values = {
                "account_id": acct,
                "counter": counter.value,
                "kind": "package",
                "seconds": seconds,
                "idempotency_key": package_key(acct, reference or uuid.uuid4().hex),
                "created_at": when,
            }
            appended = append_entry(conn, values)
            if appended is None:
                return replayed_entry(conn, account, values)
            entry_id, after = appended
            conn.execute(
                insert(PACKAGE).values(
                    account_id=acct,
                    counter=counter.value,
                    minutes=minutes,
                    entry_id=entry_id,
                    bought_at=when,
                )
            )
            before = after - seconds
            signal = None
            if before <= 0 < after:
                signal = BalanceSignal(SignalKind.RESTORED, account, counter, after)
            return EntryResult(entry_id, account, counter, seconds, after, False, signal)

        try:
            result = await self.database.run(buy)
        except IdempotencyConflict:
            # the key holds this account's id: say it in the caller's terms instead
            raise IdempotencyConflict(
                f"reference {reference!r} was already used by account {account!r} for"
                " another purchase (a different counter or number of minutes)"
            ) from None
        await self._emit(result.signal)
        return result

    async def debit(
        self,
        account: str,
        counter: Counter,
        seconds: int,
        *,
        call_id: str,
        increment: int,
        campaign: str | None = None,
        contact: str | None = None,
        at: datetime | None = None,
    ) -> EntryResult:
        """Debit one increment of a call. May leave the balance negative.

        The key (call_id, counter, increment) makes a replay a no-op that returns the
        original entry.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
            raise BillingError(f"debit seconds must be a positive whole number, got {seconds!r}")
        if isinstance(increment, bool) or not isinstance(increment, int) or increment <= 0:
            raise BillingError(f"increment number must be >= 1, got {increment!r}")
        if not call_id:
            raise BillingError("a debit needs a call id")
        _check_text("call id", call_id, 128)
        _check_text("campaign", campaign, 128)
        _check_text("contact", contact, 64)
        when = to_naive_utc(at) if at else self._clock()

        def take(conn: Connection) -> EntryResult:
            values = {
                "account_id": self._account_id(conn, account),
                "counter": counter.value,
                "kind": "debit",
                "seconds": -seconds,
                "idempotency_key": debit_key(call_id, counter, increment),
                "call_id": call_id,
                "increment": increment,
                "campaign": campaign,
                "contact": contact,
                "created_at": when,
            }
            appended = append_entry(conn, values)
            if appended is None:
                return replayed_entry(conn, account, values)
            entry_id, after = appended
            signal = None
            if after <= 0:
                signal = BalanceSignal(SignalKind.EXHAUSTED, account, counter, after)
            return EntryResult(entry_id, account, counter, -seconds, after, False, signal)

        result = await self.database.run(take)
        await self._emit(result.signal)
        return result

    # -- reports --------------------------------------------------------------------------

    async def usage(self, account: str, period: Period, campaign: str | None = None) -> UsageReport:
        """Debited seconds and unique contacts reached, by debit time, in one period."""

        def report(conn: Connection) -> UsageReport:
            acct = self._account_id(conn, account)

            def debits(*columns: Any) -> Select[Any]:
                stmt = select(*columns).where(
                    ENTRY.c.account_id == acct,
                    ENTRY.c.kind == "debit",
                    ENTRY.c.created_at >= period.start,
                    ENTRY.c.created_at < period.end,
                )
                return stmt if campaign is None else stmt.where(ENTRY.c.campaign == campaign)

            contacts = func.count(distinct(ENTRY.c.contact))
            billed = func.sum(-ENTRY.c.seconds)
            in_campaigns = ENTRY.c.campaign.is_not(None)
            total_contacts = conn.execute(debits(contacts)).scalar_one()
            totals = conn.execute(debits(ENTRY.c.counter, billed).group_by(ENTRY.c.counter))
            per_counter = _zero_counters() | {Counter(c): int(n) for c, n in totals}
            by_campaign: dict[str, dict[Counter, int]] = {}
            rows = conn.execute(
                debits(ENTRY.c.campaign, ENTRY.c.counter, billed)
                .where(in_campaigns)
                .group_by(ENTRY.c.campaign, ENTRY.c.counter)
            )
            for name, counter, seconds in rows:
                by_campaign.setdefault(name, _zero_counters())[Counter(counter)] = int(seconds)
            reached = conn.execute(
                debits(ENTRY.c.campaign, contacts).where(in_campaigns).group_by(ENTRY.c.campaign)
            )
            campaign_contacts = {name: int(count) for name, count in reached}
            return UsageReport(
                account=account,
                period=period,
                unique_contacts=int(total_contacts or 0),
                billed_seconds=per_counter,
                campaigns=[
                    CampaignUsage(name, campaign_contacts.get(name, 0), by_campaign[name])
                    for name in sorted(by_campaign)
                ],
            )

        return await self.database.run(report, write=False)

    async def audit(self, account: str) -> list[AuditLine]:
        """Materialised balance vs. the sum of entries, per counter."""

        def compare(conn: Connection) -> list[AuditLine]:
            acct = self._account_id(conn, account)
            balances = read_balances(conn, acct)
            rows = conn.execute(
                select(ENTRY.c.counter, func.sum(ENTRY.c.seconds))
                .where(ENTRY.c.account_id == acct)
                .group_by(ENTRY.c.counter)
            )
            sums = {counter: int(total) for counter, total in rows}
            return [AuditLine(c, balances.get(c, 0), sums.get(c.value, 0)) for c in Counter]

        return await self.database.run(compare, write=False)

    async def entries(self, account: str) -> Sequence[Any]:
        def rows(conn: Connection) -> Sequence[Any]:
            acct = self._account_id(conn, account)
            return conn.execute(
                select(ENTRY).where(ENTRY.c.account_id == acct).order_by(ENTRY.c.id)
            ).all()

        return await self.database.run(rows, write=False)


def _zero_counters() -> dict[Counter, int]:
    return dict.fromkeys(Counter, 0)
