"""Contact CSV import: phone numbers checked with `phonenumbers`, time zones resolved.

Row-level problems (a bad or duplicate number, a bad time zone, a number the account's
or trunk's policy refuses, a bad attribute) are reported with their line number and the
row is skipped; file-level problems (unreadable, not UTF-8, no `phone` column, bad or
too many column names) import nothing.

Every column is checked once, here: the known ones (`phone`, `timezone`,
`transfer_after`) typed and bounded; the others, kept as attributes, bounded in number,
name and length, without control characters. The worker reads `transfer_after` with the
same check (`transfer_after`), so a bad value that got into the database anyway is
ignored, never a failed call.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers
from phonenumbers import timezone as number_zones

from dialer.errors import DialerError
from dialer.text import has_controls, shorten
from dialer.windows import parse_zone

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_COLUMNS = 50
MAX_VALUE_CHARS = 500  # an attribute's value
MAX_PHONE_CHARS = 64
MAX_TRANSFER_AFTER = 86_400.0  # s after the answer
COLUMN_NAME = re.compile(r"^[a-z0-9_][a-z0-9_ .-]{0,63}$")


@dataclass(frozen=True)
class ParsedContact:
    line: int
    phone: str  # E.164
    timezone: str
    attributes: dict[str, Any]


@dataclass
class ParsedFile:
    contacts: list[ParsedContact] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "line 7: ..." each


def normalise_phone(raw: str, default_region: str | None = None) -> str:
    """E.164 for a valid number; DialerError naming what is wrong otherwise."""
    text = raw.strip()
    if not text:
        raise DialerError("empty phone number")
    # every caller (contacts, do-not-call lists, caller ids) gets the same cut echo
    if len(text) > MAX_PHONE_CHARS:
        raise DialerError(f"bad phone number '{shorten(text)}': too long")
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise DialerError(f"bad phone number '{shorten(text)}': {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise DialerError(f"bad phone number '{shorten(text)}': not a valid number")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def zone_of_number(e164: str) -> str | None:
    """The number's time zone when it has exactly one (a US area code, most countries)."""
    zones = [
        z
        for z in number_zones.time_zones_for_number(phonenumbers.parse(e164))
        if z != "Etc/Unknown"
    ]
    return zones[0] if len(zones) == 1 else None


def read_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise DialerError(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB")
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DialerError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise DialerError(f"{path}: not UTF-8 text (byte {exc.start}); nothing imported") from None
    except OSError as exc:
        raise DialerError(f"{path}: cannot be read: {exc.strerror}; nothing imported") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        if "phone" not in fields:
            raise DialerError(f"{path}: no 'phone' column in the header row; nothing imported")
        _check_columns(path, fields)
        reader.fieldnames = fields
        return [
            (reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}) for row in reader
        ]
    except csv.Error as exc:
        raise DialerError(f"{path}: not a valid CSV file: {exc}; nothing imported") from None


def _check_columns(path: Path, fields: list[str]) -> None:
    """The header row: a bounded number of distinct, plain column names."""
    named = [f for f in fields if f]
    if len(named) > MAX_COLUMNS:
        raise DialerError(f"{path}: {len(named)} columns, at most {MAX_COLUMNS}; nothing imported")
    for name in named:
        if not COLUMN_NAME.match(name):
            raise DialerError(
                f"{path}: bad column name '{shorten(name)}': 1-64 letters, digits, spaces,"
                " '_', '.', '-'; nothing imported"
            )
    twice = sorted({f for f in named if named.count(f) > 1})
    if twice:
        raise DialerError(f"{path}: column {twice[0]!r} appears twice; nothing imported")


def transfer_after(attributes: Mapping[str, Any]) -> float | None:
    """Seconds after the answer for the `transfer_after` column: a number in
    (0, 86400]; DialerError naming the value otherwise, None when absent."""
    raw = attributes.get("transfer_after")
    if raw is None or raw == "":
        return None
    try:
        if isinstance(raw, bool):
            raise ValueError
        seconds = float(raw)
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if not (0 < seconds <= MAX_TRANSFER_AFTER):  # NaN fails too
        raise DialerError(
            f"transfer_after must be seconds in (0, {MAX_TRANSFER_AFTER:g}], got '{shorten(raw)}'"
        )
    return seconds


def check_attributes(row: Mapping[str, str]) -> dict[str, Any]:
    """The row's other columns as attributes (known ones typed); DialerError naming the
    first bad one."""
    attributes: dict[str, Any] = {}
    for name, value in row.items():
        if name in ("phone", "timezone") or not value:
            continue
        if len(value) > MAX_VALUE_CHARS:
            raise DialerError(f"column {name!r}: longer than {MAX_VALUE_CHARS} characters")
        if has_controls(value):
            raise DialerError(f"column {name!r}: control characters in '{shorten(value)}'")
        attributes[name] = value
    seconds = transfer_after(attributes)
    if seconds is not None:
        attributes["transfer_after"] = int(seconds) if seconds.is_integer() else seconds
    return attributes


def parse_contacts(
    path: Path, fallback_zone: str, refuse: Callable[[str], str | None] | None = None
) -> ParsedFile:
    """``refuse``: the number policy (dialer.number_policy.refusal), None to dial any."""
    parsed = ParsedFile()
    seen: dict[str, int] = {}
    for line, row in read_csv(path):
        try:
            phone = normalise_phone(row.get("phone", ""))
        except DialerError as exc:
            parsed.problems.append(f"line {line}: {exc}")
            continue
        if phone in seen:
            parsed.problems.append(
                f"line {line}: duplicate number {phone} (first on line {seen[phone]})"
            )
            continue
        why = refuse(phone) if refuse is not None else None
        if why is not None:
            parsed.problems.append(f"line {line}: {why}")
            continue
        zone = row.get("timezone") or ""
        try:
            if zone:
                if len(zone) > 64 or has_controls(zone):
                    raise DialerError(f"unknown time zone '{shorten(zone)}'")
                parse_zone(zone)
            attributes = check_attributes(row)
        except DialerError as exc:
            parsed.problems.append(f"line {line}: {exc}")
            continue
        zone = zone or zone_of_number(phone) or fallback_zone
        seen[phone] = line
        parsed.contacts.append(ParsedContact(line, phone, zone, attributes))
    return parsed
