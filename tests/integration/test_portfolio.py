"""The basis trade over the wire, on SQLite and Postgres: deposit 1,000 USDC, turn
auto_borrow on, buy 0.2 BTC spot and sell 0.2 BTC-PERP in one atomic batch, ask
what-if at 40,000 and 60,000, then hold through funding and interest settlements
and reconcile every balance with the ledger to the last atomic unit."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest

from exchange_client import ApiError, AsyncExchangeClient
from tests.integration.conftest import MakeTrader, markets_server

server = markets_server(
    "portfolio",
    {
        "funding_sample_s": 1,
        "funding_interval_s": 2,
        "interest_interval_s": 2,
        "oracle_stale_s": 3600,
    },
)


def balance(account: dict[str, Any], asset: str) -> Decimal:
    return next(Decimal(b["balance"]) for b in account["balances"] if b["asset"] == asset)


async def all_ledger(client: AsyncExchangeClient, asset: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await client.ledger(asset=asset, limit=1000, cursor=cursor)
        entries += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            return entries


async def test_basis_trade_hedge_hold_and_reconcile(
    admin: AsyncExchangeClient, make_trader: MakeTrader
) -> None:
    await admin.set_oracle_prices({"BTC": "50000"})
    await make_trader({"USDC": "100000"})  # the lender: its USDC supplies the pool
    mm = await make_trader({"USDC": "20000", "BTC": "1"})
    trader = await make_trader({"USDC": "1000"})
    await mm.client.place_order(market="BTC-USDC", side="sell", price="50000", size="0.2")
    await mm.client.place_order(market="BTC-PERP", side="buy", price="50000", size="0.2")
    settings = await trader.client.update_settings(auto_borrow=True)
    assert settings["settings"]["auto_borrow"] is True
    spot = {"market": "BTC-USDC", "side": "buy", "type": "limit", "price": "50000",
            "size": "0.2", "time_in_force": "ioc"}  # fmt: skip
    perp = {"market": "BTC-PERP", "side": "sell", "type": "limit", "price": "50000",
            "size": "0.2", "time_in_force": "ioc"}  # fmt: skip
    with pytest.raises(ApiError) as err:  # the spot leg alone: a 9,004 loan, unhedged
        await trader.client.place_order(**spot)
    assert (err.value.status, err.value.code) == (400, "INSUFFICIENT_MARGIN")
    done = await trader.client.place_batch([spot, perp], atomic=True)
    assert [r["order"]["status"] for r in done["results"]] == ["filled", "filled"]
    view = await trader.client.account()
    assert balance(view, "USDC") == Decimal("-9008")  # 10x its capital, 4 + 4 fees
    assert balance(view, "BTC") == Decimal("0.2")
    assert view["health"]["equity"] == "992"
    assert Decimal(view["health"]["maintenance"]) > 880
    assert view["health_by_asset"]["BTC"]["maintenance"] == "9892"
    (pos,) = view["positions"]
    assert pos["size"] == "-0.2" and Decimal(pos["liquidation_price"]) > 450_000
    assert Decimal(view["liquidation_prices"]["BTC"]) == Decimal(pos["liquidation_price"])
    notional = Decimal("10000")
    for price in ("40000", "60000"):
        moved = await trader.client.what_if(prices={"BTC": price})
        equity = Decimal(moved["health"]["equity"])
        assert abs(equity - Decimal(view["health"]["equity"])) < notional / 100
        assert Decimal(moved["health"]["maintenance"]) > 0
        assert moved["before"]["health"] == view["health"]
    # what-if an order: closing the hedge's perp leg leaves an unhedged loan
    unhedged = await trader.client.what_if(
        orders=[{"market": "BTC-PERP", "side": "buy", "price": "50000", "size": "0.2"}]
    )
    assert Decimal(unhedged["health"]["initial"]) < 0
    assert (await trader.client.account())["balances"] == view["balances"]  # nothing placed
    with pytest.raises(ApiError) as err:
        await trader.client.what_if(prices={"USDC": "1"})
    assert (err.value.status, err.value.code) == (400, "UNKNOWN_ASSET")

    # the index really moves: the hedge holds (equity changes only by interest accrued)
    for price in ("45000", "55000", "50000"):
        await admin.set_oracle_prices({"BTC": price})
        moved = await trader.client.account()
        assert abs(Decimal(moved["health"]["equity"]) - Decimal("992")) < 1
        assert Decimal(moved["health"]["maintenance"]) > 0
    # hold: the perp trades over the index (shorts receive funding), the loan pays interest
    await mm.client.place_order(market="BTC-PERP", side="buy", price="50100", size="0.1")
    await mm.client.place_order(market="BTC-PERP", side="sell", price="50300", size="0.1")
    start = int(time.time() * 1000)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reasons = {e["reason"] for e in await all_ledger(trader.client, "USDC")}
        payments = (await trader.client.funding_payments())["payments"]
        if "interest" in reasons and any(p["ts"] > start + 2_000 for p in payments):
            break
        await asyncio.sleep(0.3)
    else:
        raise AssertionError("no funding payment and interest came")
    received = [p for p in payments if p["ts"] > start + 2_000]
    assert all(Decimal(p["amount"]) < 0 for p in received)  # the short receives
    final = await trader.client.account()
    for asset in ("USDC", "BTC"):
        entries = await all_ledger(trader.client, asset)
        assert sum(Decimal(e["amount"]) for e in entries) == balance(final, asset)
        assert Decimal(entries[0]["balance_after"]) == balance(final, asset)
    reasons = {e["reason"] for e in await all_ledger(trader.client, "USDC")}
    assert reasons == {"deposit", "trade", "fee", "funding", "interest"}
    audit = await admin.request("GET", "/v1/admin/audit")
    assert audit["invariants"] == []
