"""app.ratelimit: exact token arithmetic with a fake clock."""

from __future__ import annotations

import pytest

from app.ratelimit import DEFAULT_LIMITS, Limit, RateDecision, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_defaults() -> None:
    expected = {"order": Limit(50, 100), "cancel": Limit(200, 400),
                "read": Limit(20, 40), "ip": Limit(100, 200)}
    assert expected == DEFAULT_LIMITS


def test_burst_then_refill_exact_counts() -> None:
    clock = Clock()
    rl = RateLimiter(clock=clock)
    for i in range(100):
        d = rl.check("k", "order")
        assert d == RateDecision(True, 99 - i, 0.0)
    denied = rl.check("k", "order")
    assert not denied.allowed and denied.remaining == 0
    assert denied.retry_after_s == pytest.approx(1 / 50)
    assert denied.retry_after_header == "1"
    clock.now += 0.1  # 5 tokens at 50/s
    assert [rl.check("k", "order").allowed for _ in range(6)] == [True] * 5 + [False]
    clock.now += 100  # refill caps at burst
    assert rl.check("k", "order").remaining == 99


def test_cost_and_retry_after() -> None:
    clock = Clock()
    rl = RateLimiter(clock=clock)
    assert rl.check("k", "read", cost=30) == RateDecision(True, 10, 0.0)
    d = rl.check("k", "read", cost=15)  # 10 left, 5 missing at 20/s
    assert not d.allowed and d.remaining == 10
    assert d.retry_after_s == pytest.approx(0.25)
    clock.now += 0.25
    assert rl.check("k", "read", cost=15) == RateDecision(True, 0, 0.0)


def test_cancel_bucket_independent_of_orders() -> None:
    rl = RateLimiter(clock=Clock())
    for _ in range(100):
        rl.check("k", "order")
    assert not rl.check("k", "order").allowed
    assert rl.check("k", "cancel") == RateDecision(True, 399, 0.0)
    assert rl.check("other", "order").allowed  # keys are independent too
    assert rl.check("k", "ip").remaining == 199


def test_disabled_always_allows() -> None:
    rl = RateLimiter(enabled=False, clock=Clock())
    for _ in range(1000):
        assert rl.check("k", "order", cost=5).allowed
    assert rl.bucket_count() == 0


def test_unknown_category() -> None:
    with pytest.raises(KeyError):
        RateLimiter(clock=Clock()).check("k", "nope")


def test_bounded_memory_and_idle_eviction() -> None:
    clock = Clock()
    rl = RateLimiter(clock=clock, max_buckets=10)
    for i in range(50):
        rl.check(f"ip{i}", "ip")
    assert rl.bucket_count() == 10
    clock.now += 1.0  # every bucket is full again: idle ones are forgotten losslessly
    rl.check("new0", "read")
    assert rl.bucket_count() == 7  # at most 4 idle buckets are dropped per check
    for i in range(1, 10):
        rl.check(f"new{i}", "read")
    assert rl.bucket_count() == 10
    assert rl.check("new0", "read").remaining == 38
