"""Which numbers may be dialled: countries and number types, per account and per trunk.

Rules of this file (pure: no clock, no I/O):

* A number is dialled only when the account's policy AND the trunk's policy allow it.
  Both are checked at import (refused rows are reported with their line numbers) and
  again in the transaction that claims the contact, so a policy tightened after the
  import holds: the contact is finished without a call (disposition ``number_policy``).
* A policy is two lists. ``countries``: ISO region codes as phonenumbers gives them
  (``US``, ``GB``; ``JM`` for +1 876: NANP islands are their own regions), or ``*``
  (the default): any country. ``types``: phonenumbers' number types.
* Non-geographic numbers (phonenumbers' region ``001``: +800 international freephone,
  +808 shared cost, +870 Inmarsat, +878, +881 satellite, +882/+883 international
  networks, +888, +979 international premium) are refused unless ``001`` is listed
  explicitly: ``*`` never includes them. +881 numbers are typed ``mobile`` and +883
  ``voip`` by phonenumbers, so the type list alone would let them through.
* Default types: fixed line, mobile, fixed-line-or-mobile, toll free and VoIP. Refused
  by default: premium rate, shared cost, personal numbers, UAN, pagers, voicemail
  access and unknown types (the revenue-share ranges of toll fraud, and numbers no
  person answers).
* VoIP is allowed by default: phonenumbers' VOIP ranges (UK 056, DE 032, FR 09...) are
  ordinary subscriber numbers billed at geographic rates, commonly held by people and
  businesses; a trunk whose carrier charges them more can drop ``voip`` from its list.
* ``fixed_line_or_mobile`` (NANP numbers, where the two cannot be told apart) passes
  when ``fixed_line`` or ``mobile`` is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import phonenumbers
from phonenumbers import PhoneNumberType

from dialer.errors import DialerError
from dialer.text import shorten

NON_GEOGRAPHIC = "001"
ANY_COUNTRY = "*"
MAX_COUNTRIES = 300


class NumberType(StrEnum):
    FIXED_LINE = "fixed_line"
    MOBILE = "mobile"
    FIXED_LINE_OR_MOBILE = "fixed_line_or_mobile"
    TOLL_FREE = "toll_free"
    PREMIUM_RATE = "premium_rate"
    SHARED_COST = "shared_cost"
    VOIP = "voip"
    PERSONAL_NUMBER = "personal_number"
    PAGER = "pager"
    UAN = "uan"
    VOICEMAIL = "voicemail"
    UNKNOWN = "unknown"


_OF_PHONENUMBERS: dict[int, NumberType] = {
    PhoneNumberType.FIXED_LINE: NumberType.FIXED_LINE,
    PhoneNumberType.MOBILE: NumberType.MOBILE,
    PhoneNumberType.FIXED_LINE_OR_MOBILE: NumberType.FIXED_LINE_OR_MOBILE,
    PhoneNumberType.TOLL_FREE: NumberType.TOLL_FREE,
    PhoneNumberType.PREMIUM_RATE: NumberType.PREMIUM_RATE,
    PhoneNumberType.SHARED_COST: NumberType.SHARED_COST,
    PhoneNumberType.VOIP: NumberType.VOIP,
    PhoneNumberType.PERSONAL_NUMBER: NumberType.PERSONAL_NUMBER,
    PhoneNumberType.PAGER: NumberType.PAGER,
    PhoneNumberType.UAN: NumberType.UAN,
    PhoneNumberType.VOICEMAIL: NumberType.VOICEMAIL,
    PhoneNumberType.UNKNOWN: NumberType.UNKNOWN,
}

DEFAULT_TYPES = frozenset(
    {
        NumberType.FIXED_LINE,
        NumberType.MOBILE,
        NumberType.FIXED_LINE_OR_MOBILE,
        NumberType.TOLL_FREE,
        NumberType.VOIP,
    }
)
_REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS) | {NON_GEOGRAPHIC}


@dataclass(frozen=True)
class NumberFacts:
    """What phonenumbers says about a number: its region and its type."""

    e164: str
    region: str  # ISO code, "001" for non-geographic, "ZZ" when unknown
    type: NumberType

    @classmethod
    def of(cls, e164: str) -> NumberFacts:
        try:
            number = phonenumbers.parse(e164)
        except phonenumbers.NumberParseException:
            return cls(e164, "ZZ", NumberType.UNKNOWN)
        region = phonenumbers.region_code_for_number(number) or "ZZ"
        kind = _OF_PHONENUMBERS.get(phonenumbers.number_type(number), NumberType.UNKNOWN)
        return cls(e164, region, kind)


@dataclass(frozen=True)
class NumberPolicy:
    """One owner's rule (an account or a trunk). ``countries`` None: any country."""

    countries: frozenset[str] | None = None
    types: frozenset[NumberType] = field(default=DEFAULT_TYPES)

    @classmethod
    def parse(cls, countries: str | None, types: str | None) -> NumberPolicy:
        """From the stored/CLI text: ``"US,CA"`` or ``"*"``; ``"mobile,fixed_line"``.
        None or empty: the default. Anything unknown is refused, naming it."""
        return cls(_parse_countries(countries), _parse_types(types))

    @property
    def countries_text(self) -> str | None:
        """As stored: None for the default (any country)."""
        return None if self.countries is None else ",".join(sorted(self.countries))

    @property
    def types_text(self) -> str | None:
        return None if self.types == DEFAULT_TYPES else ",".join(sorted(self.types))

    def describe(self) -> dict[str, list[str]]:
        return {
            "countries": [ANY_COUNTRY] if self.countries is None else sorted(self.countries),
            "types": sorted(self.types),
        }

    def refusal(self, facts: NumberFacts) -> str | None:
        """Why this policy refuses the number, or None when it allows it."""
        if facts.region == NON_GEOGRAPHIC:
            if self.countries is None or NON_GEOGRAPHIC not in self.countries:
                return "a non-geographic number (satellite or international network)"
        elif self.countries is not None and facts.region not in self.countries:
            return f"in region {facts.region}, not an allowed country"
        kind = facts.type
        allowed = kind in self.types or (
            kind is NumberType.FIXED_LINE_OR_MOBILE
            and bool(self.types & {NumberType.FIXED_LINE, NumberType.MOBILE})
        )
        if not allowed:
            return f"a {kind.value.replace('_', '-')} number, not an allowed type"
        return None


def refusal(e164: str, policies: Iterable[tuple[str, NumberPolicy]]) -> str | None:
    """The first refusal among ``(owner, policy)`` pairs, as one line; None: dial it.

    ``owner`` names whose rule it is (``account 'acme'``, ``trunk 'main'``)."""
    facts = NumberFacts.of(e164)
    for owner, policy in policies:
        why = policy.refusal(facts)
        if why is not None:
            return f"{e164} is {why} for {owner}"
    return None


def _items(text: str) -> list[str]:
    return [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]


def _parse_countries(text: str | None) -> frozenset[str] | None:
    if text is None or not text.strip() or text.strip() == ANY_COUNTRY:
        return None
    codes = [code.upper() for code in _items(text)]
    if len(codes) > MAX_COUNTRIES:
        raise DialerError(f"at most {MAX_COUNTRIES} countries, got {len(codes)}")
    for code in codes:
        if code == ANY_COUNTRY:
            raise DialerError("'*' (any country) cannot be combined with country codes")
        if code not in _REGIONS:
            raise DialerError(
                f"unknown country code '{shorten(code, 12)}': ISO codes such as US, GB, FR"
                f" ({NON_GEOGRAPHIC}: non-geographic numbers)"
            )
    return frozenset(codes)


def _parse_types(text: str | None) -> frozenset[NumberType]:
    if text is None or not text.strip():
        return DEFAULT_TYPES
    names = [name.lower().replace("-", "_") for name in _items(text)]
    known = {t.value for t in NumberType}
    for name in names:
        if name not in known:
            raise DialerError(
                f"unknown number type '{shorten(name, 24)}': one of {', '.join(sorted(known))}"
            )
    return frozenset(NumberType(name) for name in names)
