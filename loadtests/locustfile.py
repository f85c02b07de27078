"""Load test with locust: traders sending signed REST orders, cancels and account reads
through the project's own client (`exchange_client.ExchangeClient`).

    EXCHANGE_ADMIN_KEY=... EXCHANGE_ADMIN_SECRET=... \\
        locust -f loadtests/locustfile.py --headless -u 20 -r 5 -t 60s \\
        --host http://127.0.0.1:8000

Each simulated user creates its own account with the operator key (from the two
variables above) and funds it with 1,000,000 USDC and 20 BTC, then trades BTC-USDC
around 50,000: limit orders on both sides a few ticks from the middle (some cross and
trade), cancels of its own open orders, and account reads. Every call is one locust
request named after the route; a refusal of any kind is a failure, so
`--exit-code-on-error 1` makes a run fail on the first one (tests/integration/
test_locust_smoke.py runs it so for a few seconds against a real server).
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable
from typing import Any

from locust import User, between, events, task

from exchange_client import ApiError, ExchangeClient

MARKET = "BTC-USDC"
MID = 50_000
_names = itertools.count(1)


class ExchangeUser(User):
    """A locust user holding an `ExchangeClient` for an account of its own."""

    abstract = True

    def on_start(self) -> None:
        host = self.host or "http://127.0.0.1:8000"
        admin = ExchangeClient(
            host, os.environ["EXCHANGE_ADMIN_KEY"], os.environ["EXCHANGE_ADMIN_SECRET"]
        )
        name = f"locust-{os.getpid()}-{next(_names)}-{time.time_ns()}"
        info = self.call("POST /v1/admin/accounts", admin.create_account, name)
        for asset, amount in (("USDC", "1000000"), ("BTC", "20")):
            self.call("POST /v1/admin/deposits", admin.deposit, info["account_id"], asset,
                      amount, f"{name}-{asset}")  # fmt: skip
        admin.close()
        self.api = ExchangeClient(host, info["api_key"], info["api_secret"])
        self.open_ids: list[str] = []

    def on_stop(self) -> None:
        self.api.close()

    def call(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        expected: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> Any:
        """Run one client call as a locust request (its time, its failure if it raised an
        error whose code is not in `expected`)."""
        start = time.perf_counter()
        error: Exception | None = None
        result: Any = None
        try:
            result = fn(*args, **kwargs)
        except ApiError as exc:
            if exc.code not in expected:
                error = exc
        except Exception as exc:  # every other refusal counts: the smoke test fails on any
            error = exc
        events.request.fire(
            request_type="REST",
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=0,
            exception=error,
            context={},
        )
        return result


class Trader(ExchangeUser):
    wait_time = between(0.02, 0.1)

    @task(6)
    def place(self) -> None:
        side = random.choice(("buy", "sell"))
        offset = random.randint(-5, 20)  # mostly resting, sometimes crossing the other side
        price = MID - offset if side == "buy" else MID + offset
        size = f"0.{random.randint(1, 50):04d}"
        out = self.call("POST /v1/orders", self.api.place_order, market=MARKET, side=side,
                        type="limit", price=str(price), size=size)  # fmt: skip
        if out and out["order"]["status"] in ("open", "partially_filled"):
            self.open_ids.append(out["order"]["order_id"])

    @task(3)
    def cancel(self) -> None:
        if not self.open_ids:
            return
        order_id = self.open_ids.pop(random.randrange(len(self.open_ids)))
        # it may have filled since: then the cancel is refused with ORDER_NOT_LIVE
        self.call("DELETE /v1/orders/{id}", self.api.cancel_order, order_id,
                  expected=("ORDER_NOT_LIVE",))  # fmt: skip

    @task(1)
    def account(self) -> None:
        self.call("GET /v1/account", self.api.account)
