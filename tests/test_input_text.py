"""dialer.text: the one place error messages cut and clean user input."""

from dialer.text import has_controls, shorten, strip_controls


def test_strip_controls_removes_c0_c1_and_del() -> None:
    assert strip_controls("a\r\nb\x00c\x1bd\x7fe\x85f\x9fg\th") == "abcdefgh"
    assert strip_controls("Zoë 日本 +33") == "Zoë 日本 +33"


def test_has_controls() -> None:
    assert has_controls("alice\r\nX-Evil: 1")
    assert has_controls("\x9b")
    assert not has_controls("sip:alice@example.com;transport=tcp")


def test_shorten_cuts_long_input_and_says_how_long() -> None:
    out = shorten("9" * 100_000)
    assert out == "9" * 40 + "... (100000 characters)"
    assert shorten("short") == "short"
    assert shorten("abcdef", 3) == "abc... (6 characters)"


def test_shorten_escapes_controls() -> None:
    assert shorten("a\r\nb") == "a\\r\\nb"
    assert "\x1b" not in shorten("\x1b[2J")
