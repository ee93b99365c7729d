"""CLI: which numbers an account and a trunk may dial (dialer.number_policy)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from sqlalchemy import Connection

from billing.ledger import Ledger, account_id
from billing.period import utcnow
from dialer import store
from dialer.cli import JsonOpt, account_app, emit_json, run, stdout
from dialer.cli_campaigns import trunk_app
from dialer.number_policy import NumberPolicy

CountriesOpt = Annotated[
    str | None,
    typer.Option(
        "--allow-countries",
        help="ISO codes, e.g. US,CA ('*': any country; 001: non-geographic numbers)",
    ),
]
TypesOpt = Annotated[
    str | None,
    typer.Option(
        "--allow-types",
        help="e.g. fixed_line,mobile,toll_free,voip (empty: the default types)",
    ),
]


def _merged(current: NumberPolicy, countries: str | None, types: str | None) -> NumberPolicy:
    """What is given replaces that half; the other half stays as it is."""
    given = NumberPolicy.parse(countries, types)
    return NumberPolicy(
        given.countries if countries is not None else current.countries,
        given.types if types is not None else current.types,
    )


def _show(owner: str, policy: NumberPolicy, as_json: bool) -> None:
    described = policy.describe()
    if as_json:
        emit_json({"owner": owner, **described})
    else:
        stdout.print(
            f"{owner}: countries {','.join(described['countries'])};"
            f" types {','.join(described['types'])}",
            highlight=False,
        )


@account_app.command("policy")
def account_policy(
    account: str,
    countries: CountriesOpt = None,
    types: TypesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show or set the numbers an account may dial (with each trunk's own policy)."""

    async def work(ledger: Ledger) -> NumberPolicy:
        def change(conn: Connection) -> NumberPolicy:
            account_id(conn, account)  # an unknown account is an error, not the defaults
            policy = _merged(store.account_policy(conn, account), countries, types)
            if countries is not None or types is not None:
                store.set_account_policy(conn, account, policy, utcnow())
            return policy

        result: NumberPolicy = await ledger.database.run(change)
        return result

    _show(f"account {account}", run(work), as_json)


@trunk_app.command("policy")
def trunk_policy(
    name: str,
    countries: CountriesOpt = None,
    types: TypesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show or set the numbers a trunk may carry (with its account's own policy)."""

    async def work(ledger: Ledger) -> Any:
        def change(conn: Connection) -> NumberPolicy:
            policy = _merged(store.trunk_policy(store.trunk_by_name(conn, name)), countries, types)
            if countries is not None or types is not None:
                store.set_trunk_policy(conn, name, policy)
            return policy

        return await ledger.database.run(change)

    _show(f"trunk {name}", run(work), as_json)
