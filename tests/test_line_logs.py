"""Line processes log through structlog like the worker: pjsip's own log included, at
mapped levels, with the line's name, never a raw pjsip line, never a secret."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from clitools import Run
from siputil import rtp_base

from sip.logs import PjsipLog, configure
from sip.protocol import Configure, LineConfig, TrunkConfig, encode

pytestmark = pytest.mark.sip

PASSWORD = "Tr0mb0ne-s3cret"
CONSOLE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z \[(debug|info|warning|error|critical)\s*\] ")
# a CSeq that does not parse: pjsip drops the packet with a level 2 warning
BAD_CSEQ = (
    b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bKbad\r\n"
    b"Call-ID: bad\r\nCSeq: abc OPTIONS\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class Stderr:
    """A process's stderr lines, read as they come."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        self._stream = process.stderr
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for raw in self._stream:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, match: Callable[[str], bool], within: float = 15) -> str:
        deadline = time.monotonic() + within
        with self._changed:
            while True:
                found = next((line for line in self.lines if match(line)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                assert left > 0, "not logged:\n" + "\n".join(self.lines[-20:])
                self._changed.wait(left)

    def finish(self) -> list[str]:
        self._thread.join(10)
        return self.lines


def records(lines: list[str]) -> list[dict[str, Any]]:
    """Every line must be a structlog JSON record: a raw pjsip line fails here."""
    found = []
    for line in lines:
        record = json.loads(line)
        assert {"event", "level", "timestamp"} <= record.keys(), line
        found.append(record)
    return found


@contextmanager
def silent_registrar() -> Iterator[int]:
    """A UDP port that takes REGISTERs and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def send_bad_packet(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(BAD_CSEQ, ("127.0.0.1", port))


@contextmanager
def line_process(**fields: Any) -> Iterator[tuple[int, Stderr]]:
    """A real line (``python -m sip.line``) with a registering trunk; yields its SIP port."""
    with silent_registrar() as registrar:
        trunk = TrunkConfig(name="main", uri=f"sip:127.0.0.1:{registrar}", username="u",
                            password=PASSWORD, registers=True)  # fmt: skip
        config = LineConfig(name="line7", sip_port=0, rtp_port=rtp_base(), trunks=[trunk],
                            **fields)  # fmt: skip
        process = subprocess.Popen(
            [sys.executable, "-m", "sip.line"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert process.stdin is not None and process.stdout is not None
        stderr = Stderr(process)
        try:
            process.stdin.write(encode(Configure(line=config)))
            process.stdin.flush()
            ready = json.loads(process.stdout.readline())
            assert ready["event"] == "ready", ready
            yield int(ready["sip_port"]), stderr
            process.stdin.close()  # the line hangs up and exits
            assert process.wait(15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        stderr.finish()


def test_pjsip_levels_map_to_structlog_levels_and_never_raise() -> None:
    try:
        check_pjsip_levels()
    finally:
        configure(stream=sys.__stderr__)  # the next tests log where pytest expects


def check_pjsip_levels() -> None:
    stream = io.StringIO()
    configure("json", "info", stream=stream)
    pjsip = PjsipLog(line="line1")
    pjsip(1, "   pjsua_acc.c Unable to send REGISTER")
    pjsip(2, "sip_transport.c Dropping packet\r\nINVITE sip:x SIP/2.0\r\nCSeq: x")
    pjsip(3, "  pjsua_call.c Call 0 state changed to CONFIRMED")  # chatty: debug
    pjsip(4, "os_core_unix.c pjlib initialized")
    pjsip(2, None)  # type: ignore[arg-type]  # from C++, anything: it must not raise
    logged = records(stream.getvalue().splitlines())
    assert [(r["level"], r["pjsip_level"], r["sender"]) for r in logged] == [
        ("error", 1, "pjsua_acc.c"),
        ("warning", 2, "sip_transport.c"),
    ]
    assert logged[0]["event"] == "Unable to send REGISTER" and logged[0]["line"] == "line1"
    assert logged[1]["event"] == "Dropping packet"
    assert logged[1]["more"] == ["INVITE sip:x SIP/2.0", "CSeq: x"]  # one record, one line

    stream = io.StringIO()
    configure("json", "debug", stream=stream)
    PjsipLog()(3, "  pjsua_call.c Call 0 state changed to CONFIRMED")
    (record,) = records(stream.getvalue().splitlines())
    assert (record["level"], record["event"]) == ("debug", "Call 0 state changed to CONFIRMED")


def test_a_line_at_info_logs_pjsip_warnings_as_structlog_and_nothing_raw() -> None:
    with line_process() as (port, stderr):
        send_bad_packet(port)
        stderr.wait_for(lambda line: "Dropping" in line)
    text = "\n".join(stderr.lines)
    logged = records(stderr.lines)
    warning = next(r for r in logged if "Dropping" in r["event"])
    assert (warning["level"], warning["logger"], warning["line"]) == ("warning", "pjsip", "line7")
    assert warning["sender"] == "sip_transport.c" and warning["pjsip_level"] == 2
    assert all(r["level"] != "debug" for r in logged)
    assert all(r["line"] == "line7" for r in logged)
    assert "pjlib" not in text  # libCreate's chatter: not produced at info
    assert PASSWORD not in text


def test_a_line_at_debug_lets_pjsip_info_through_as_debug_lines_in_console_format() -> None:
    with line_process(log_format="console", log_threshold="debug") as (port, stderr):
        send_bad_packet(port)
        stderr.wait_for(lambda line: "Dropping" in line)
    assert stderr.lines
    for line in stderr.lines:
        assert CONSOLE.match(line), line  # no raw pjsip line, no JSON
    initialized = next(line for line in stderr.lines if "pjlib 2.15" in line)
    assert "[debug" in initialized and "line=line7" in initialized and "[pjsip]" in initialized
    assert "[warning" in next(line for line in stderr.lines if "Dropping" in line)
    assert PASSWORD not in "\n".join(stderr.lines)


def test_the_worker_hands_its_logging_settings_down_to_its_lines(
    tmp_path: Path, isolated: None, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dialer worker` at the default level, then with the config's level and format."""
    exe = str(Path(sys.executable).with_name("dialer"))
    url = f"sqlite:///{tmp_path / 'w.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env["DIALER_DATABASE__URL"] = url

    def worker(**extra: str) -> list[str]:
        process = subprocess.Popen(
            [exe, "worker", "--lines", "1", "--sip-port", "0", "--drain-seconds", "0"],
            env=env | {"DIALER_SIP__RTP_PORT_BASE": str(rtp_base())} | extra,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        stderr = Stderr(process)
        try:
            up = stderr.wait_for(lambda line: "line up" in line)
            port = re.search(r"sip_port\W+(\d+)", up)
            assert port is not None, up
            send_bad_packet(int(port.group(1)))  # from the trunk's host: it gets through
            stderr.wait_for(lambda line: "Dropping" in line)
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        lines = stderr.finish()
        assert PASSWORD not in "\n".join(lines)
        return lines

    with silent_registrar() as registrar:
        monkeypatch.setenv("DIALER_DATABASE__URL", url)  # the setup, in process: quicker
        monkeypatch.setenv("DIALER_TRUNK_PASSWORD", PASSWORD)
        run("db", "upgrade")
        run("account", "create", "acme")
        run("trunk", "add", "main", "--account", "acme", "--kind", "platform", "--uri",
            f"sip:127.0.0.1:{registrar}", "--username", "u", "--register")  # fmt: skip
        run("campaign", "create", "spring", "--account", "acme", "--trunk", "main")

        logged = records(worker())  # stderr is no terminal: JSON, at info
        warning = next(r for r in logged if "Dropping" in r["event"])
        assert (warning["level"], warning["line"], warning["logger"]) == (
            "warning",
            "line0",
            "pjsip",
        )
        assert not any(r["level"] == "debug" for r in logged)

        lines = worker(DIALER_LOGGING__LEVEL="debug", DIALER_LOGGING__FORMAT="console")
        for n, line in enumerate(lines):  # the neighbours say where a stray line came from
            assert CONSOLE.match(line), (line, lines[max(0, n - 3) : n + 3])
        initialized = next(line for line in lines if "pjlib 2.15" in line)
        assert "[debug" in initialized and "line=line0" in initialized


def test_lines_of_an_unconfigured_process_log_like_its_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pool in a process that never configured structlog (a benchmark, a script)."""
    import sip.logs
    from sip.pool import PoolConfig

    monkeypatch.setattr(sip.logs, "_current", None)
    monkeypatch.setattr(sys, "stderr", Tty())
    config = PoolConfig().line_config(0)
    assert (config.log_format, config.log_threshold, config.log_level) == ("console", "info", None)
    configure("json", "debug", stream=io.StringIO())
    try:
        assert PoolConfig().line_config(1).log_format == "json"
        assert PoolConfig().line_config(1).log_threshold == "debug"
    finally:
        configure(stream=sys.__stderr__)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True
