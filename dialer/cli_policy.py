"""CLI: which numbers an account and a trunk may dial (dialer.number_policy). The two
commands join their groups in dialer/cli_billing.py and dialer/cli_campaigns.py."""

from __future__ import annotations

from typing import Annotated

import typer

from dialer import service
from dialer.cli_common import JsonOpt, emit_json, run, stdout
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


def account_policy(
    account: str,
    countries: CountriesOpt = None,
    types: TypesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show or set the numbers an account may dial (with each trunk's own policy)."""
    policy = run(lambda ledger: service.account_policy(ledger, account, countries, types))
    _show(f"account {account}", policy, as_json)


def trunk_policy(
    name: str,
    countries: CountriesOpt = None,
    types: TypesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show or set the numbers a trunk may carry (with its account's own policy)."""
    policy = run(lambda ledger: service.trunk_policy(ledger, name, countries, types))
    _show(f"trunk {name}", policy, as_json)
