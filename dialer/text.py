"""Text helpers for the edges: cut user input before it is echoed, drop control characters.

Every error message that quotes user input goes through `shorten`, so a 100k-character
phone number is printed as its first few characters, never whole.
"""

import re

# C0 controls (U+0000-U+001F), DEL (U+007F) and C1 controls (U+0080-U+009F).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")

DEFAULT_WIDTH = 40


def has_controls(value: str) -> bool:
    """True when `value` holds a C0 or C1 control character or DEL (CR, LF, TAB included)."""
    return _CONTROLS.search(value) is not None


def strip_controls(value: str) -> str:
    """`value` without its C0 and C1 control characters and DEL."""
    return _CONTROLS.sub("", value)


def shorten(value: object, width: int = DEFAULT_WIDTH) -> str:
    """`repr`-free short form of `value` for an error message: controls shown escaped, cut to
    `width` characters with an ellipsis and the full length when longer.

    Control characters are escaped (`\\r`, `\\x1b`) rather than dropped, so the message shows
    that they were there without letting them move the terminal cursor or split a log line.
    Quote it yourself (`f"'{shorten(v)}'"`): `!r` would double the backslashes.
    """
    text = str(value)
    cut = text[:width]
    shown = _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), cut)
    if len(text) > width:
        return f"{shown}... ({len(text)} characters)"
    return shown
