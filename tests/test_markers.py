"""The markers tests/conftest.py gives by what a test needs (`-m pure` is ./dev test --fast)."""

from __future__ import annotations

import pytest


def markers(request: pytest.FixtureRequest) -> set[str]:
    return {mark.name for mark in request.node.iter_markers()} & {"pure", "sip", "postgres", "mqtt"}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_postgresql_side_of_a_backend_is_postgres_the_other_pure(
    backend: str, request: pytest.FixtureRequest
) -> None:
    assert markers(request) == ({"postgres"} if backend == "postgresql" else {"pure"})


def test_a_test_that_runs_a_program_is_not_pure(
    request: pytest.FixtureRequest, tone_wav: object
) -> None:
    assert markers(request) == set()


@pytest.mark.sip
def test_a_test_marked_sip_is_not_pure(request: pytest.FixtureRequest) -> None:
    assert markers(request) == {"sip"}
