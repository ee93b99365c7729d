"""structlog configuration: JSON lines off a terminal, bound context, no secrets."""

from __future__ import annotations

import io
import json

import structlog

from dialer.logs import configure_logging, get_logger


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_with_bound_context_and_no_secrets() -> None:
    stream = io.StringIO()
    configure_logging("auto", "info", stream=stream)  # not a terminal -> JSON
    structlog.contextvars.bind_contextvars(account="acme", campaign="spring")
    try:
        log = get_logger(call_id="c-1")
        log.info(
            "trunk registered",
            password="hunter2",
            sip_auth_token="abc",
            url="postgresql://app:hunter2@db:5432/dialer",
        )
        log.debug("not shown at info")
    finally:
        structlog.contextvars.clear_contextvars()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "trunk registered"
    assert (record["account"], record["campaign"], record["call_id"]) == ("acme", "spring", "c-1")
    assert record["level"] == "info" and record["timestamp"].endswith("Z")
    assert "hunter2" not in lines[0] and "abc" not in lines[0]
    assert record["url"] == "postgresql://app:***@db:5432/dialer"


def test_console_on_a_terminal_and_json_when_configured() -> None:
    tty = Tty()
    configure_logging("auto", "debug", stream=tty)
    get_logger(account="acme").debug("hello")
    assert "hello" in tty.getvalue()
    assert not tty.getvalue().lstrip().startswith("{")

    forced = Tty()
    configure_logging("json", "info", stream=forced)
    get_logger().info("hello")
    assert json.loads(forced.getvalue())["event"] == "hello"


def test_secrets_in_exceptions_nested_values_and_query_strings_are_masked() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    try:
        raise RuntimeError("cannot reach postgresql://u:pw1@h/db")
    except RuntimeError:
        get_logger().error(
            "failed",
            exc_info=True,
            settings={"mqtt": {"password": "pw2", "url": "mqtt://:pw3@broker"}},
            dsn="postgresql://u@h/db?password=pw4&sslmode=require",
        )
    text = stream.getvalue()
    for secret in ("pw1", "pw2", "pw3", "pw4"):
        assert secret not in text
    assert "sslmode=require" in text
