"""Perpetuals over the real server: a position opened and closed between two traders,
the account view, margin refusals and reduce-only, on SQLite and Postgres."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from exchange_client import ApiError, AsyncExchangeClient
from tests.integration.conftest import MakeTrader

PERP = "BTC-PERP"


def position(account: dict[str, Any]) -> dict[str, Any]:
    (pos,) = [p for p in account["positions"] if p["market"] == PERP]
    return pos


def usdc(account: dict[str, Any]) -> Decimal:
    return next(Decimal(b["balance"]) for b in account["balances"] if b["asset"] == "USDC")


async def test_open_mark_and_close_a_perp_position(
    admin: AsyncExchangeClient, make_trader: MakeTrader
) -> None:
    await admin.set_oracle_prices({"BTC": "50000"})
    alice = await make_trader({"USDC": "10000"})
    bob = await make_trader({"USDC": "10000"})
    await alice.client.place_order(market=PERP, side="sell", type="limit", price="50000",
                                   size="0.2")  # fmt: skip
    taken = await bob.client.place_order(market=PERP, side="buy", type="limit", price="50000",
                                         size="0.2", time_in_force="ioc")  # fmt: skip
    assert (taken["order"]["status"], taken["order"]["reduce_only"]) == ("filled", False)
    assert (await admin.ticker(PERP))["open_interest"] == "0.2"  # at once, not at a sample
    await admin.set_oracle_prices({"BTC": "55000"})
    bob_view = await bob.client.account()
    assert position(bob_view) == {
        "market": PERP,
        "size": "0.2",
        "entry_price": "50000",
        "mark_price": "55000",
        "unrealized_pnl": "1000",
        "realized_pnl": "0",
        # maintenance(X) = 9,996 + 0.2 X - 10,000 - 0.2 * (8% + 0.5% * 92%) X = 0.18308 X - 4
        "liquidation_price": "21.848372",
    }
    assert usdc(bob_view) == Decimal("9996")  # only the 0.04% taker fee moved
    assert bob_view["health"]["equity"] == "10996"
    assert position(await alice.client.account())["size"] == "-0.2"
    with pytest.raises(ApiError) as err:  # reduce-only that would flip Bob short
        await bob.client.place_order(market=PERP, side="sell", type="market", size="0.3",
                                     reduce_only=True)  # fmt: skip
    assert (err.value.status, err.value.code) == (400, "REDUCE_ONLY_WOULD_INCREASE")
    with pytest.raises(ApiError) as err:  # 10,000 USDC cannot carry 10 BTC
        await bob.client.place_order(market=PERP, side="buy", type="limit", price="55000",
                                     size="10")  # fmt: skip
    assert (err.value.status, err.value.code) == (400, "INSUFFICIENT_MARGIN")
    await alice.client.place_order(market=PERP, side="buy", type="limit", price="55000",
                                   size="0.2")  # fmt: skip
    closed = await bob.client.place_order(market=PERP, side="sell", type="limit",
                                          price="55000", size="0.2", time_in_force="ioc",
                                          reduce_only=True)  # fmt: skip
    assert (closed["order"]["status"], closed["order"]["reduce_only"]) == ("filled", True)
    bob_view = await bob.client.account()
    assert [p for p in bob_view["positions"] if p["market"] == PERP] == []
    assert (await admin.ticker(PERP))["open_interest"] == "0"
    assert usdc(bob_view) == Decimal("10991.6")  # +1,000 realized, 4 + 4.4 fees
    assert usdc(await alice.client.account()) == Decimal("8997.9")  # -1,000, 1 + 1.1 fees
    ledger = (await bob.client.ledger(asset="USDC"))["entries"]
    assert [(e["reason"], e["amount"]) for e in ledger[:2]] == [("fee", "-4.4"), ("trade", "1000")]
    audit = await admin.request("GET", "/v1/admin/audit")
    assert audit["invariants"] == []


async def test_a_stop_loss_and_a_resting_reduce_only_order_over_the_wire(
    admin: AsyncExchangeClient, make_trader: MakeTrader
) -> None:
    await admin.set_oracle_prices({"SOL": "150"})
    mm = await make_trader({"USDC": "10000"})
    bob = await make_trader({"USDC": "1000"})
    market = "SOL-PERP"
    await mm.client.place_order(market=market, side="sell", price="150", size="2")
    await bob.client.place_order(market=market, side="buy", price="150", size="2",
                                 time_in_force="ioc")  # fmt: skip
    stop = await bob.client.place_order(market=market, side="sell", type="stop_market",
                                        size="2", trigger_price="140", reduce_only=True)
    assert (stop["order"]["status"], stop["order"]["trigger_price"]) == ("untriggered", "140")
    assert stop["order"]["remaining"] == "2"
    tp = await bob.client.place_order(market=market, side="sell", price="170", size="2",
                                      reduce_only=True)  # a resting take-profit by hand
    assert tp["order"]["status"] == "open"
    live = (await bob.client.get_orders(market=market, status="open"))["orders"]
    assert {o["order_id"]: o["status"] for o in live} == {
        stop["order"]["order_id"]: "untriggered", tp["order"]["order_id"]: "open"}
    with pytest.raises(ApiError) as err:
        await bob.client.place_order(market=market, side="sell", type="stop_market", size="2",
                                     trigger_price="151", reduce_only=True)  # fmt: skip
    assert (err.value.status, err.value.code) == (400, "WOULD_TRIGGER_IMMEDIATELY")
    await mm.client.place_order(market=market, side="buy", price="139", size="5")
    await admin.set_oracle_prices({"SOL": "139.5"})  # mark = index (no asks): past 140
    done = (await bob.client.get_order(stop["order"]["order_id"]))["order"]
    assert (done["status"], done["filled"], done["avg_fill_price"]) == ("filled", "2", "139")
    gone = (await bob.client.get_order(tp["order"]["order_id"]))["order"]
    assert (gone["status"], gone["cancel_reason"]) == ("cancelled", "reduce_only")
    assert [p for p in (await bob.client.account())["positions"] if p["market"] == market] == []
    audit = await admin.request("GET", "/v1/admin/audit")
    assert audit["invariants"] == []
