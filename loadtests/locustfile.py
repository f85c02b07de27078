"""Load test with locust: traders sending signed REST orders, cancels and account reads
through the project's own client (`exchange_client.ExchangeClient`), and market makers
quoting over the WebSocket (`exchange_client.SyncExchangeWebSocket`) while following
the book and verifying every checksum.

    EXCHANGE_ADMIN_KEY=... EXCHANGE_ADMIN_SECRET=... \\
        locust -f loadtests/locustfile.py --headless -u 20 -r 5 -t 60s \\
        --host http://127.0.0.1:8000

Each simulated user creates its own account with the operator key (from the two
variables above) and funds it with 1,000,000 USDC and 20 BTC, then trades BTC-USDC
around 50,000. A `Trader` sends limit orders on both sides a few ticks from the middle
(some cross and trade), cancels of its own open orders, and account reads. A
`MarketMaker` (one, or `EXCHANGE_LOCUST_MAKERS` of them) replaces a ladder of post-only quotes with
`order.cancel_all` + `order.batch` over one authenticated WebSocket, cancels single
quotes, and follows `book:BTC-USDC` on the same socket: every snapshot and delta must
chain on `seq` and match its checksum (a mismatch is a failure named "WS book"). A
post-only quote refused because a trader's order crossed it (`POST_ONLY_WOULD_TAKE`)
is expected. Every call is one locust request named after the route or operation; any
other refusal is a failure, so
`--exit-code-on-error 1` makes a run fail on the first one (tests/integration/
test_locust_smoke.py runs it so for a few seconds against a real server).
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from locust import User, between, events, task

from exchange_client import ApiError, BookSet, ExchangeClient, SyncExchangeWebSocket
from exchange_client.market_maker import quote_ladder

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
        self.market = next(m for m in admin.markets()["markets"] if m["symbol"] == MARKET)
        name = f"locust-{os.getpid()}-{next(_names)}-{time.time_ns()}"
        info = self.call("POST /v1/admin/accounts", admin.create_account, name)
        for asset, amount in (("USDC", "1000000"), ("BTC", "20")):
            self.call("POST /v1/admin/deposits", admin.deposit, info["account_id"], asset,
                      amount, f"{name}-{asset}")  # fmt: skip
        admin.close()
        self.credentials = (info["api_key"], info["api_secret"])
        self.api = ExchangeClient(host, *self.credentials)
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
        self.report(name, start, error)
        return result

    def report(self, name: str, start: float, error: Exception | None) -> None:
        events.request.fire(
            request_type=name.split(" ", 1)[0] if name.startswith("WS ") else "REST",
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=0,
            exception=error,
            context={},
        )


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


class MarketMaker(ExchangeUser):
    """Quotes a ladder over the WebSocket and checks the book it sees on the same socket."""

    # exactly this many market makers; every other user is a Trader
    fixed_count = int(os.environ.get("EXCHANGE_LOCUST_MAKERS", "1"))
    wait_time = between(0.1, 0.3)

    def on_start(self) -> None:
        super().on_start()
        self.ws = SyncExchangeWebSocket(request_timeout=30)
        ws_url = (self.host or "http://127.0.0.1:8000").replace("http", "ws", 1) + "/v1/ws"
        self.call("WS connect", self.ws.connect, ws_url)
        self.call("WS auth", self.ws.auth, *self.credentials, cancel_on_disconnect=True)
        self.books = BookSet([MARKET])
        self.call("WS subscribe", self.ws.subscribe, [f"book:{MARKET}"])
        self.quote_ids: list[str] = []

    def on_stop(self) -> None:
        self.ws.close()
        super().on_stop()

    def follow_book(self) -> None:
        """Apply every book message received so far: one "WS book" success when they all
        chained and matched their checksums, a failure (and a resubscription) if not."""
        start = time.perf_counter()
        applied = 0
        while True:
            try:
                message = self.ws.recv(timeout=0)
            except TimeoutError:
                break
            broken = self.books.feed(message)
            applied += 1
            if broken is not None:
                self.report("WS book", start, self.books.last_error)
                self.ws.unsubscribe([f"book:{broken}"])
                self.ws.subscribe([f"book:{broken}"])
                return
        if applied:
            self.report("WS book", start, None)

    @task(4)
    def requote(self) -> None:
        self.follow_book()
        mid = Decimal(MID + random.randint(-10, 10))
        self.call("WS order.cancel_all", self.ws.cancel_all, MARKET)
        out = self.call("WS order.batch", self.ws.place_batch,
                        quote_ladder(self.market, mid, levels=5, notional=Decimal(500)))
        self.quote_ids = []
        for leg in (out or {}).get("results", ()):
            if "order" in leg:
                self.quote_ids.append(leg["order"]["order_id"])
            elif leg["error"]["code"] != "POST_ONLY_WOULD_TAKE":
                self.report("WS order.batch leg", time.perf_counter(),
                            ApiError(0, leg["error"]["code"], leg["error"]["message"]))

    @task(1)
    def cancel_one(self) -> None:
        self.follow_book()
        if self.quote_ids:
            order_id = self.quote_ids.pop(random.randrange(len(self.quote_ids)))
            self.call("WS order.cancel", self.ws.cancel_order, order_id,
                      expected=("ORDER_NOT_LIVE",))
