"""Counters, trunk kinds, segments and the tariff that says which time is charged.

A tariff answers one question: on a trunk of this kind, during a segment of this kind,
does this counter run? The default table is the one in ARCHITECTURE.md "Billing rules".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from billing.errors import BillingError


class Counter(StrEnum):
    TELEPHONY = "telephony"
    SPEECH = "speech"


class TrunkKind(StrEnum):
    PLATFORM = "platform"
    CUSTOMER = "customer"


class Segment(StrEnum):
    BOT = "bot"
    AGENT = "agent"


DEFAULT_INCREMENT_SECONDS = 15

#: (trunk kind, counter) -> segments during which the counter runs.
DEFAULT_CHARGES: Mapping[tuple[TrunkKind, Counter], frozenset[Segment]] = {
    (TrunkKind.PLATFORM, Counter.TELEPHONY): frozenset({Segment.BOT, Segment.AGENT}),
    (TrunkKind.PLATFORM, Counter.SPEECH): frozenset({Segment.BOT}),
    (TrunkKind.CUSTOMER, Counter.TELEPHONY): frozenset(),
    (TrunkKind.CUSTOMER, Counter.SPEECH): frozenset({Segment.BOT}),
}


def parse_counter(value: str) -> Counter:
    try:
        return Counter(value)
    except ValueError:
        known = ", ".join(c.value for c in Counter)
        raise BillingError(f"unknown counter {value!r} (known: {known})") from None


def parse_trunk_kind(value: str) -> TrunkKind:
    try:
        return TrunkKind(value)
    except ValueError:
        known = ", ".join(k.value for k in TrunkKind)
        raise BillingError(f"unknown trunk kind {value!r} (known: {known})") from None


@dataclass(frozen=True)
class Tariff:
    increment_seconds: int = DEFAULT_INCREMENT_SECONDS
    charges: Mapping[tuple[TrunkKind, Counter], frozenset[Segment]] = field(
        default_factory=lambda: dict(DEFAULT_CHARGES)
    )

    def __post_init__(self) -> None:
        if (
            not isinstance(self.increment_seconds, int)
            or isinstance(self.increment_seconds, bool)
            or self.increment_seconds <= 0
        ):
            raise BillingError(
                f"increment_seconds must be a positive whole number, got {self.increment_seconds!r}"
            )

    @classmethod
    def from_table(
        cls,
        table: Mapping[str, Mapping[str, Iterable[str]]],
        increment_seconds: int = DEFAULT_INCREMENT_SECONDS,
    ) -> Tariff:
        """Build from config shape ``{"platform": {"telephony": ["bot", "agent"]}, ...}``.

        Pairs the table leaves out keep their default.
        """
        charges = dict(DEFAULT_CHARGES)
        for kind_name, counters in table.items():
            kind = parse_trunk_kind(kind_name)
            for counter_name, segments in counters.items():
                counter = parse_counter(counter_name)
                parsed: set[Segment] = set()
                for name in segments:
                    try:
                        parsed.add(Segment(name))
                    except ValueError:
                        raise BillingError(
                            f"unknown segment {name!r} in tariff {kind_name}.{counter_name}"
                            " (known: bot, agent)"
                        ) from None
                charges[(kind, counter)] = frozenset(parsed)
        return cls(increment_seconds=increment_seconds, charges=charges)

    def charges_during(self, trunk: TrunkKind, counter: Counter, segment: Segment) -> bool:
        return segment in self.charges.get((trunk, counter), frozenset())

    def charged_counters(self, trunk: TrunkKind) -> tuple[Counter, ...]:
        """Counters this trunk kind charges at all: the ones the balance gate checks."""
        return tuple(c for c in Counter if self.charges.get((trunk, c)))
