"""Token-bucket rate limiting (API.md "Rate limits"), pure with an injectable clock.

Rule owned here: each (category, key) pair has a bucket holding up to ``burst``
tokens, refilled continuously at ``rate`` tokens per second; a request of ``cost``
is allowed iff the bucket holds at least ``cost`` tokens, which are then taken.
A refused request takes nothing and is told ``retry_after_s = (cost - tokens) / rate``.
Categories (defaults): per API key ``order`` (new orders and amends, 50/s burst 100),
``cancel`` (200/s burst 400, a separate bucket so cancels stay allowed while orders
are throttled), ``read`` (20/s burst 40); per client IP ``ip`` (100/s burst 200).
Memory is bounded: buckets idle long enough to be full again are forgotten (lossless)
and at most ``max_buckets`` are kept (least recently used dropped first).
``enabled=False`` (EXCHANGE_RATE_LIMITS=off) allows everything.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_EPS = 1e-9


@dataclass(frozen=True)
class Limit:
    rate: float  # tokens per second
    burst: int  # bucket capacity


DEFAULT_LIMITS: dict[str, Limit] = {
    "order": Limit(50, 100),
    "cancel": Limit(200, 400),
    "read": Limit(20, 40),
    "ip": Limit(100, 200),
}


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    remaining: int  # whole tokens left after this request (X-RateLimit-Remaining)
    retry_after_s: float  # 0.0 when allowed

    @property
    def retry_after_header(self) -> str:
        """Value for the ``Retry-After`` header: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


class _Bucket:
    __slots__ = ("tokens", "last")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last


class RateLimiter:
    """Token buckets per (category, key); ``check`` is O(1) amortized."""

    def __init__(
        self,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        limits: Mapping[str, Limit] | None = None,
        max_buckets: int = 100_000,
    ) -> None:
        self.enabled = enabled
        self.clock = clock
        self.limits: dict[str, Limit] = {**DEFAULT_LIMITS, **(limits or {})}
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()

    def check(self, key: str, category: str, cost: int = 1) -> RateDecision:
        """Take ``cost`` tokens from ``key``'s ``category`` bucket if it has them."""
        limit = self.limits[category]  # KeyError for an unknown category
        if not self.enabled:
            return RateDecision(True, limit.burst, 0.0)
        now = self.clock()
        self._evict_idle(now)
        bucket = self._buckets.get((category, key))
        if bucket is None:
            bucket = _Bucket(float(limit.burst), now)
            self._buckets[(category, key)] = bucket
            if len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end((category, key))
            elapsed = max(0.0, now - bucket.last)
            bucket.tokens = min(float(limit.burst), bucket.tokens + elapsed * limit.rate)
            bucket.last = now
        if bucket.tokens + _EPS >= cost:
            bucket.tokens = max(0.0, bucket.tokens - cost)
            return RateDecision(True, int(bucket.tokens + _EPS), 0.0)
        wait = (cost - bucket.tokens) / limit.rate
        return RateDecision(False, int(bucket.tokens + _EPS), wait)

    def bucket_count(self) -> int:
        return len(self._buckets)

    def _evict_idle(self, now: float, budget: int = 4) -> None:
        """Forget up to ``budget`` least-recently-used buckets that would be full by now."""
        while budget and self._buckets:
            (category, _), bucket = next(iter(self._buckets.items()))
            limit = self.limits[category]
            missing = limit.burst - bucket.tokens
            if bucket.last + missing / limit.rate > now:
                return
            self._buckets.popitem(last=False)
            budget -= 1
