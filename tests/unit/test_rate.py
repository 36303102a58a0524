"""The token bucket that paces messages to an SMTP server (pure: the time is passed in)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from followup.delivery.ratelimit import TokenBucket


def schedule(bucket: TokenBucket, arrivals: list[float]) -> list[float]:
    """When each event actually happens if every caller waits as told."""
    times = []
    clock = 0.0
    for arrival in arrivals:
        clock = max(clock, arrival)
        clock += bucket.take(clock)
        times.append(clock)
    return times


def test_2000_messages_at_50_per_second_take_40_seconds() -> None:
    times = schedule(TokenBucket(50.0), [0.0] * 2000)
    assert times[-1] == pytest.approx(1999 / 50)
    assert all(later - earlier >= 1 / 50 - 1e-9 for earlier, later in itertools.pairwise(times))


def test_an_idle_bucket_allows_a_burst_then_paces() -> None:
    bucket = TokenBucket(10.0, burst=5)
    assert [bucket.take(100.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(100.0) == pytest.approx(0.1)


@given(
    rate=st.floats(0.5, 500),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=300),
)
def test_no_window_ever_holds_more_than_the_rate_allows(
    rate: float, burst: int, gaps: list[float]
) -> None:
    arrivals = []
    clock = 0.0
    for gap in gaps:
        clock += gap
        arrivals.append(clock)
    times = schedule(TokenBucket(rate, burst), arrivals)
    assert all(t >= a for t, a in zip(times, arrivals, strict=True))
    for i, start in enumerate(times):
        # Events in [start, start + 1 s] never exceed burst + rate (plus rounding).
        inside = sum(1 for t in times[i:] if t <= start + 1.0)
        assert inside <= burst + rate + 1e-6


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)
