"""Funding over the real server, on SQLite and Postgres: samples every second,
settlements every 2 s; the ticker, the funding history, each account's payments
and its ledger agree to the last atomic unit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from decimal import Decimal
from typing import Any

import pytest

from exchange_client import ApiError, AsyncExchangeClient, ExchangeWebSocket
from tests.integration.conftest import MakeTrader, markets_server
from tests.server import ServerProcess

PERP = "BTC-PERP"
ETH = "ETH-PERP"


def pick(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: d[k] for k in keys}


server = markets_server(
    "funding",
    {
        "funding_sample_s": 1,
        "funding_interval_s": 2,
        "impact_notional": "1000",
        "oracle_stale_s": 3600,
    },
)


async def settlement_after(client: AsyncExchangeClient, after_ts: int) -> dict[str, Any]:
    """The first funding settlement of BTC-PERP at or after `after_ts` (waits for it)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rows = (await client.funding(PERP))["funding"]
        later = [r for r in rows if r["ts"] >= after_ts]
        if later:
            return later[-1]
        await asyncio.sleep(0.2)
    raise AssertionError("no funding settlement came")


async def test_longs_pay_shorts_through_the_wire(
    admin: AsyncExchangeClient, make_trader: MakeTrader
) -> None:
    await admin.set_oracle_prices({"BTC": "50000"})
    alice = await make_trader({"USDC": "10000"})
    bob = await make_trader({"USDC": "10000"})
    mm = await make_trader({"USDC": "10000"})
    await bob.client.place_order(market=PERP, side="sell", type="limit", price="50000",
                                 size="0.2")  # fmt: skip
    await alice.client.place_order(market=PERP, side="buy", type="limit", price="50000",
                                   size="0.2", time_in_force="ioc")  # fmt: skip
    # the book trades 0.2% over the index: premium 0.002, F = 0.0015, 0.0001875 a settlement
    await mm.client.place_order(market=PERP, side="buy", type="limit", price="50100", size="0.1")
    await mm.client.place_order(market=PERP, side="sell", type="limit", price="50300", size="0.1")
    ready = int(time.time() * 1000)
    # the first settlement whose samples all came after the quotes: one interval later
    row = await settlement_after(admin, ready + 2_000)
    assert {k: row[k] for k in ("rate", "premium", "index_price", "open_interest", "dust")} == {
        "rate": "0.0001875",
        "premium": "0.002",
        "index_price": "50000",
        "open_interest": "0.2",
        "dust": "0",
    }
    assert row["samples"] in (1, 2)  # 2 a settlement; fewer if one fell on a busy tick
    ts = row["ts"]
    for trader, amount in ((alice, "1.875"), (bob, "-1.875")):
        payments = (await trader.client.funding_payments(market=PERP))["payments"]
        (paid,) = [p for p in payments if p["ts"] == ts]
        assert paid == {
            "market": PERP,
            "size": "0.2" if trader is alice else "-0.2",
            "index_price": "50000",
            "rate": "0.0001875",
            "amount": amount,
            "asset": "USDC",
            "ts": ts,
        }
        ledger = (await trader.client.ledger(asset="USDC"))["entries"]
        (entry,) = [e for e in ledger if e["ref"] == f"funding:{PERP}:{ts}"]
        assert (entry["reason"], Decimal(entry["amount"])) == ("funding", -Decimal(amount))
        # every funding payment the account ever had is in its ledger, and no more
        all_paid = sum(Decimal(p["amount"]) for p in payments)
        in_ledger = sum(Decimal(e["amount"]) for e in ledger if e["reason"] == "funding")
        assert in_ledger == -all_paid
    ticker = await admin.ticker(PERP)
    assert ticker["funding_rate"] == "0.0001875"
    assert ticker["open_interest"] == "0.2"
    assert ticker["next_funding_ts"] > ts and ticker["next_funding_ts"] % 2_000 == 0
    # mark = median(index + basis, bid, ask): the bid, 50,100
    assert ticker["mark"] == "50100"
    audit = await admin.request("GET", "/v1/admin/audit")
    assert audit["invariants"] == []


async def test_funding_routes_refuse_what_has_no_funding(
    admin: AsyncExchangeClient, make_trader: MakeTrader
) -> None:
    with pytest.raises(ApiError) as err:
        await admin.funding("BTC-USDC")
    assert (err.value.status, err.value.code) == (404, "UNKNOWN_MARKET")
    trader = await make_trader({})
    assert await trader.client.funding_payments() == {"payments": [], "next_cursor": None}
    with pytest.raises(ApiError) as err:
        await trader.client.funding_payments(cursor="bogus")
    assert (err.value.status, err.value.code) == (404, "INVALID_CURSOR")


async def test_private_stream_carries_position_funding_and_health(
    server: ServerProcess, admin: AsyncExchangeClient, make_trader: MakeTrader
) -> None:
    await admin.set_oracle_prices({"ETH": "3000"})  # a market the other tests leave alone
    alice = await make_trader({"USDC": "10000"})
    bob = await make_trader({"USDC": "10000"})
    mm = await make_trader({"USDC": "10000"})
    async with await ExchangeWebSocket(request_timeout=5).connect(server.ws_url) as ws:
        await ws.auth(alice.api_key, alice.api_secret)
        await ws.subscribe(["account"])
        await bob.client.place_order(market=ETH, side="sell", type="limit", price="3000",
                                     size="1")  # fmt: skip
        await alice.client.place_order(market=ETH, side="buy", type="limit", price="3000",
                                       size="1", time_in_force="ioc")  # fmt: skip
        await mm.client.place_order(market=ETH, side="buy", price="3006", size="1")
        await mm.client.place_order(market=ETH, side="sell", price="3018", size="1")
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        def full(m: dict[str, Any]) -> bool:  # a settlement whose samples all saw the quotes
            return m["type"] == "funding" and m["rate"] == "0.0001875"

        while time.monotonic() < deadline and not (
            {"position", "health"} <= {m["type"] for m in got} and any(map(full, got))
        ):
            with contextlib.suppress(TimeoutError):
                got.append(await ws.recv(timeout=1))
    kinds = {m["type"] for m in got}
    assert {"position", "funding", "health", "balance"} <= kinds, got
    (pos,) = [m for m in got if m["type"] == "position"]
    assert {k: pos[k] for k in ("market", "size", "entry_price", "realized_pnl")} == {
        "market": ETH, "size": "1", "entry_price": "3000", "realized_pnl": "0"}  # fmt: skip
    funding = next(filter(full, got))
    # premium (3,006 - 3,000) / 3,000 = 0.2%: the settlement rate 0.0001875 of 3,000
    assert pick(funding, "market", "size", "asset", "rate", "amount") == {
        "market": ETH, "size": "1", "asset": "USDC", "rate": "0.0001875", "amount": "0.5625"}
    # the message is the payment as GET /v1/funding-payments shows it
    payments = (await alice.client.funding_payments())["payments"]
    assert {k: v for k, v in funding.items() if k not in ("type", "seq")} in payments
    health = [m for m in got if m["type"] == "health"][-1]
    assert set(health["health"]) == {"initial", "maintenance", "liquidation_end", "equity"}
    # the ledger entry of the funding payment came as a balance message too
    assert any(m["type"] == "balance" and m["reason"] == "funding" for m in got)
