"""Connection limits (tickertape.server.limits.ConnectionLimits)."""

from __future__ import annotations

from tickertape.server.limits import ConnectionLimits


def test_connections_are_limited_in_all_and_per_address() -> None:
    refusals: list[str] = []
    limits = ConnectionLimits(3, 2, refusals.append)
    assert limits.admit("10.0.0.1") is None
    assert limits.admit("10.0.0.1") is None
    refused = limits.admit("10.0.0.1")
    assert refused == "too many connections from 10.0.0.1 (at most 2 from one address)"
    assert limits.admit("10.0.0.2") is None
    assert limits.admit("10.0.0.3") == "too many connections (this server takes at most 3)"
    assert refusals == ["per_address", "total"] and limits.refused == 2
    limits.forget("10.0.0.1")
    assert limits.admit("10.0.0.3") is None  # room again, in all
    limits.forget("10.0.0.2")
    assert limits.admit("10.0.0.1") is None  # and for that address
    assert limits.admit("10.0.0.1") is not None


def test_refusals_are_logged_the_first_then_every_thousandth() -> None:
    limits = ConnectionLimits(1, 1)
    assert limits.admit("a") is None
    logged = []
    for _ in range(2500):
        assert limits.admit("b") is not None
        if limits.worth_logging():
            logged.append(limits.refused)
    assert logged == [1, 1000, 2000]
