"""The circuit breaker's rules, pure: the clock is an argument."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from followup.delivery.breaker import Breaker, BreakerState, Sign, sign_of
from followup.domain.outcomes import Delivery, Outcome

T0 = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
SILENT = Delivery(Outcome.RETRY, None, "SMTPConnectTimeoutError: timed out")
LOST = Delivery(Outcome.UNCERTAIN, None, "no reply to the message data")
SENT = Delivery(Outcome.SENT, 250, "queued")
BUSY = Delivery(Outcome.RETRY, 451, "try later")


def breaker(failures: int = 3) -> Breaker:
    return Breaker("relay:25", failures, backoff_seconds=10, backoff_max_seconds=35)


def test_what_an_outcome_says_about_the_server() -> None:
    assert sign_of(SILENT) is Sign.SILENT
    assert sign_of(LOST) is Sign.LOST
    assert sign_of(SENT) is Sign.ALIVE
    assert sign_of(BUSY) is Sign.ALIVE, "a 4yz is an answer"
    assert sign_of(Delivery(Outcome.BOUNCED, 550, "unknown")) is Sign.ALIVE


def test_it_starts_closed_and_opens_after_n_failures_in_a_row() -> None:
    b = breaker()
    assert b.state(T0) is BreakerState.CLOSED
    assert b.record(SILENT, T0) is None
    assert b.record(SILENT, T0) is None
    change = b.record(SILENT, T0)
    assert change is not None and change.state is BreakerState.OPEN
    assert change.until == T0 + timedelta(seconds=10)
    assert "3 connection failure(s) in a row" in change.reason
    assert b.state(T0 + timedelta(seconds=9)) is BreakerState.OPEN
    assert b.state(T0 + timedelta(seconds=10)) is BreakerState.HALF_OPEN


def test_an_answer_resets_the_count() -> None:
    b = breaker()
    for delivery in (SILENT, SILENT, BUSY, SILENT, SILENT, SENT, SILENT):
        assert b.record(delivery, T0) is None
    assert b.state(T0) is BreakerState.CLOSED


def test_a_loss_after_the_data_opens_it_at_once() -> None:
    change = breaker().record(LOST, T0)
    assert change is not None and change.state is BreakerState.OPEN
    assert change.reason.startswith("no reply after the message data")


def test_outcomes_of_the_same_trip_change_nothing_while_open() -> None:
    b = breaker()
    b.record(LOST, T0)
    for delivery in (LOST, SILENT, SENT):
        assert b.record(delivery, T0 + timedelta(seconds=1)) is None
    assert b.until == T0 + timedelta(seconds=10) and b.trips == 1


def test_a_failed_probe_doubles_the_backoff_up_to_the_cap() -> None:
    b = breaker()
    now = T0
    b.record(LOST, now)
    waits = []
    for _ in range(4):
        assert b.until is not None
        now = b.until
        assert b.state(now) is BreakerState.HALF_OPEN
        # One silent probe is enough to open it again.
        change = b.record(SILENT, now)
        assert change is not None and change.until is not None
        waits.append((change.until - now).total_seconds())
    assert waits == [20, 35, 35, 35]


def test_a_probe_that_gets_an_answer_closes_it_and_the_backoff_starts_over() -> None:
    b = breaker()
    b.record(LOST, T0)
    later = T0 + timedelta(seconds=10)
    change = b.record(SENT, later)
    assert change is not None and change.state is BreakerState.CLOSED
    assert b.state(later) is BreakerState.CLOSED and b.snapshot(later)["until"] is None
    again = b.record(LOST, later)
    assert again is not None and again.until == later + timedelta(seconds=10)


def test_a_refusal_of_the_setup_opens_it_with_the_backoff_and_doubles_it() -> None:
    """The daemon's answer to a relay, login or sender refusal: wait, do not claim again at
    every run (each claim would give the queue back with a history row per touch)."""
    b = breaker()
    change = b.refused(T0, "SMTP server x refuses to relay for this client")
    assert change.state is BreakerState.OPEN and change.until == T0 + timedelta(seconds=10)
    assert change.reason.startswith("refused: SMTP server x refuses to relay")
    assert b.state(T0 + timedelta(seconds=9)) is BreakerState.OPEN
    assert b.state(T0 + timedelta(seconds=10)) is BreakerState.HALF_OPEN
    again = b.refused(T0 + timedelta(seconds=10), "the same")
    assert again.until == T0 + timedelta(seconds=10 + 20)
    assert b.refused(T0, "the same").until == T0 + timedelta(seconds=35)  # the cap
