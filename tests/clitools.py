"""The CLI run in process, its output captured (used by the CLI tests)."""

from __future__ import annotations

import json

import pytest

from dialer.cli import main


class Run:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str, ok: bool = True) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = self.capsys.readouterr()
        if ok:
            assert code == 0, err
        return code, out, err

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--json")[1])

    def fails(self, *args: str, code: int | None = None) -> str:
        rc, out, err = self(*args, ok=False)
        assert rc != 0 if code is None else rc == code
        lines = err.strip().splitlines()
        assert len(lines) == 1, err  # one clear line
        assert out == ""
        return lines[0]
