"""The number policy (dialer.number_policy), pure: every number type, non-geographic
ranges, countries, both owners, parsing of what users type."""

from __future__ import annotations

import phonenumbers
import pytest

from dialer.errors import DialerError
from dialer.number_policy import (
    DEFAULT_TYPES,
    NumberFacts,
    NumberPolicy,
    NumberType,
    refusal,
)

#: one valid example per (region, type) phonenumbers knows, from its own metadata
EXAMPLES = {
    (region, kind): str(phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164))
    for region in sorted(phonenumbers.SUPPORTED_REGIONS)
    for kind in phonenumbers.PhoneNumberType.values()
    if (example := phonenumbers.example_number_for_type(region, kind)) is not None
}
NON_GEOGRAPHIC = [
    "+80012345678",  # international freephone: toll free, still refused
    "+80812345678",  # international shared cost
    "+870772111111",  # Inmarsat
    "+881631234567",  # Iridium/Globalstar satellite: typed MOBILE by phonenumbers
    "+883510012345",  # international networks: typed VOIP by phonenumbers
]
ALLOWED_BY_DEFAULT = {"fixed_line", "mobile", "fixed_line_or_mobile", "toll_free", "voip"}


def test_the_reported_fraud_numbers_are_refused_by_default() -> None:
    policy = [("account 'acme'", NumberPolicy())]
    assert refusal("+19005550199", policy) == (
        "+19005550199 is a premium-rate number, not an allowed type for account 'acme'"
    )
    assert refusal("+449098790000", policy) == (
        "+449098790000 is a premium-rate number, not an allowed type for account 'acme'"
    )
    assert refusal("+881631234567", policy) == (
        "+881631234567 is a non-geographic number (satellite or international network)"
        " for account 'acme'"
    )


@pytest.mark.parametrize("example", sorted(EXAMPLES.items()), ids=lambda e: f"{e[0][0]}-{e[0][1]}")
def test_every_type_of_every_region_follows_the_default(
    example: tuple[tuple[str, int], str],
) -> None:
    (region, _), number = example
    facts = NumberFacts.of(number)
    why = NumberPolicy().refusal(facts)
    if facts.region == "001":
        assert why is not None
    elif facts.type.value in ALLOWED_BY_DEFAULT:
        assert why is None, (region, number, facts)
    else:
        assert why is not None and facts.type.value.replace("_", "-") in why, facts


@pytest.mark.parametrize("number", NON_GEOGRAPHIC)
def test_non_geographic_numbers_need_001_listed(number: str) -> None:
    facts = NumberFacts.of(number)
    assert facts.region == "001"
    assert NumberPolicy().refusal(facts) is not None
    everything = frozenset(NumberType)
    assert NumberPolicy(None, everything).refusal(facts) is not None  # '*' is not enough
    assert NumberPolicy(frozenset({"US"}), everything).refusal(facts) is not None
    assert NumberPolicy(frozenset({"001"}), everything).refusal(facts) is None


def test_countries_are_regions_not_calling_codes() -> None:
    us_only = NumberPolicy.parse("US", None)
    assert us_only.refusal(NumberFacts.of("+14155550101")) is None
    jamaica = NumberFacts.of("+18765550123")  # +1, but Jamaica: a one-ring-scam favourite
    assert jamaica.region == "JM"
    assert us_only.refusal(jamaica) == "in region JM, not an allowed country"
    assert NumberPolicy.parse("us, ca;gb", None).countries == frozenset({"US", "CA", "GB"})


def test_fixed_line_or_mobile_passes_with_either() -> None:
    nanp = NumberFacts.of("+14155550101")
    assert nanp.type is NumberType.FIXED_LINE_OR_MOBILE
    for types in ("mobile", "fixed_line", "fixed_line_or_mobile"):
        assert NumberPolicy.parse(None, types).refusal(nanp) is None
    assert NumberPolicy.parse(None, "toll_free").refusal(nanp) is not None
    assert NumberPolicy.parse(None, "fixed_line").refusal(NumberFacts.of("+33612345678"))


def test_both_owners_must_allow_and_the_first_refusal_is_named() -> None:
    relaxed = NumberPolicy(None, frozenset(NumberType))
    strict = NumberPolicy.parse("FR", "mobile")
    pair = [("account 'acme'", relaxed), ("trunk 'main'", strict)]
    assert refusal("+33612345678", pair) is None
    assert refusal("+19005550199", pair) == (
        "+19005550199 is in region US, not an allowed country for trunk 'main'"
    )
    assert refusal("+19005550199", [("account 'acme'", relaxed)]) is None


def test_unparseable_numbers_are_refused() -> None:
    assert NumberFacts.of("not a number").type is NumberType.UNKNOWN
    assert refusal("+1", [("trunk 'x'", NumberPolicy(frozenset({"001"}), frozenset()))])


@pytest.mark.parametrize(
    ("countries", "types", "message"),
    [
        ("US,XX", None, "unknown country code 'XX'"),
        ("*,US", None, "cannot be combined"),
        (None, "mobile,premium", "unknown number type 'premium'"),
        ("U" * 5000, None, "unknown country code 'UUUUUUUUUUUU... (5000 characters)'"),
        (",".join(["US"] * 301), None, "at most 300 countries"),
    ],
)
def test_bad_policies_are_refused_naming_the_value(
    countries: str | None, types: str | None, message: str
) -> None:
    with pytest.raises(DialerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NumberPolicy.parse(countries, types)


def test_stored_text_round_trips() -> None:
    assert NumberPolicy.parse(None, None) == NumberPolicy()
    assert NumberPolicy().countries_text is None and NumberPolicy().types_text is None
    policy = NumberPolicy.parse("gb,us", "voip,mobile")
    assert (policy.countries_text, policy.types_text) == ("GB,US", "mobile,voip")
    assert NumberPolicy.parse(policy.countries_text, policy.types_text) == policy
    assert NumberPolicy.parse("*", "").types == DEFAULT_TYPES
    assert NumberPolicy().describe()["countries"] == ["*"]
