"""Contact CSV import: phone numbers checked with `phonenumbers`, time zones resolved.

Row-level problems (a bad or duplicate number, a bad time zone) are reported with their
line number and the row is skipped; file-level problems (unreadable, not UTF-8, no
`phone` column) import nothing.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers
from phonenumbers import timezone as number_zones

from dialer.errors import DialerError
from dialer.windows import parse_zone

MAX_FILE_BYTES = 50 * 1024 * 1024


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
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise DialerError(f"bad phone number {text!r}: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise DialerError(f"bad phone number {text!r}: not a valid number")
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
        reader.fieldnames = fields
        return [
            (reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}) for row in reader
        ]
    except csv.Error as exc:
        raise DialerError(f"{path}: not a valid CSV file: {exc}; nothing imported") from None


def parse_contacts(path: Path, fallback_zone: str) -> ParsedFile:
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
        zone = row.get("timezone") or ""
        if zone:
            try:
                parse_zone(zone)
            except DialerError as exc:
                parsed.problems.append(f"line {line}: {exc}")
                continue
        else:
            zone = zone_of_number(phone) or fallback_zone
        seen[phone] = line
        attributes = {k: v for k, v in row.items() if k not in ("phone", "timezone") and v}
        parsed.contacts.append(ParsedContact(line, phone, zone, attributes))
    return parsed
