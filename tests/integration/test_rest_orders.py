"""Orders, fills, ledger, withdrawals, deposits and market states over signed HTTP.

Every test runs against the module's real server (SQLite and PostgreSQL) with fresh
accounts; at teardown each account's orders are cancelled so the shared books start
empty for the next test. Expected amounts are worked out by hand from docs/orders.md
(tier 0: maker 100 ppm, taker 400 ppm, fees paid in USDC, cumulative per order).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from exchange_client import ApiError, AsyncExchangeClient
from exchange_client.signing import auth_headers
from tests.integration.conftest import MakeTrader

BTC = "BTC-USDC"
ETH = "ETH-USDC"
SOL = "SOL-USDC"



# --------------------------------------------------------------------------- helpers

def check_error(exc: ApiError, status: int, code: str, extra: frozenset[str] = frozenset()
                ) -> dict[str, Any]:
    """The error has this status and code and exactly the documented body shape."""
    assert (exc.status, exc.code) == (status, code), exc.body
    assert isinstance(exc.body, dict) and set(exc.body) == {"error"}, exc.body
    err = exc.body["error"]
    assert set(err) == {"code", "message"} | extra, err
    assert isinstance(err["message"], str) and err["message"]
    return dict(err)


async def rejects(call: Awaitable[Any], status: int, code: str,
                  extra: frozenset[str] = frozenset()) -> dict[str, Any]:
    with pytest.raises(ApiError) as info:
        await call
    return check_error(info.value, status, code, extra)


async def balances(client: AsyncExchangeClient) -> dict[str, tuple[str, str, str]]:
    """asset -> (balance, hold, available) from GET /v1/account."""
    acct = await client.account()
    return {b["asset"]: (b["balance"], b["hold"], b["available"]) for b in acct["balances"]}


async def raw(client: AsyncExchangeClient, method: str, path: str, body: Any = None
              ) -> httpx.Response:
    """A signed request sent with httpx directly (to see the status of a 2xx reply)."""
    assert client.api_key is not None and client.api_secret is not None
    content = b"" if body is None else orjson.dumps(body)
    headers = auth_headers(client.api_key, client.api_secret, method, path, content)
    if body is not None:
        headers["Content-Type"] = "application/json"
    return await client.http.request(method, client.base_url + path, content=content,
                                     headers=headers)


def pick(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: d[k] for k in keys}


ORDER_KEYS = ("market", "side", "type", "price", "size", "filled", "remaining",
              "avg_fill_price", "status", "time_in_force")
FILL_KEYS = ("order_id", "market", "side", "price", "size", "fee", "liquidity")


def order_fields(order: dict[str, Any]) -> dict[str, Any]:
    return pick(order, *ORDER_KEYS)


def expect_order(market: str, side: str, price: str | None, size: str, filled: str,
                 remaining: str, avg: str | None, status: str, tif: str = "gtc",
                 otype: str = "limit") -> dict[str, Any]:
    return {"market": market, "side": side, "type": otype, "price": price, "size": size,
            "filled": filled, "remaining": remaining, "avg_fill_price": avg, "status": status,
            "time_in_force": tif}


def fill_fields(fill: dict[str, Any]) -> dict[str, Any]:
    return pick(fill, *FILL_KEYS)


def fill(order_id: str, market: str, side: str, price: str, size: str, fee: str,
         liquidity: str) -> dict[str, Any]:
    return {"order_id": order_id, "market": market, "side": side, "price": price, "size": size,
            "fee": fee, "liquidity": liquidity}




# --------------------------------------------------------------------------- limit orders

async def test_limit_order_rests_then_fills_with_exact_fees(traders: MakeTrader) -> None:
    a, b = await traders(), await traders()
    r = await a.client.place_order(market=BTC, side="sell", type="limit", price="50000",
                                   size="0.1")
    maker = r["order"]
    assert r["fills"] == []
    assert order_fields(maker) == expect_order(BTC, "sell", "50000", "0.1", "0", "0.1", None,
                                               "open")
    assert maker["client_order_id"] is None and maker["reduce_only"] is False
    assert (await balances(a.client))["BTC"] == ("2", "0.1", "1.9")
    book = await a.client.book(BTC)
    assert (book["bids"], book["asks"]) == ([], [["50000", "0.1"]])

    r = await b.client.place_order(market=BTC, side="buy", price="50010", size="0.1")
    taker = r["order"]
    assert order_fields(taker) == expect_order(BTC, "buy", "50010", "0.1", "0.1", "0", "50000",
                                               "filled")
    assert [fill_fields(f) for f in r["fills"]] == [
        fill(taker["order_id"], BTC, "buy", "50000", "0.1", "2", "taker")]
    trade_id = r["fills"][0]["trade_id"]

    got = (await a.client.get_order(maker["order_id"]))["order"]
    assert order_fields(got) == expect_order(BTC, "sell", "50000", "0.1", "0.1", "0", "50000",
                                             "filled")
    a_fills = (await a.client.fills(market=BTC))["fills"]
    assert [fill_fields(f) for f in a_fills] == [
        fill(maker["order_id"], BTC, "sell", "50000", "0.1", "0.5", "maker")]
    assert a_fills[0]["trade_id"] == trade_id

    # notional 5000: the seller gets 5000 - 0.5 maker fee, the buyer pays 5000 + 2 taker fee
    ba, bb = await balances(a.client), await balances(b.client)
    assert (ba["USDC"], ba["BTC"]) == (("104999.5", "0", "104999.5"), ("1.9", "0", "1.9"))
    assert (bb["USDC"], bb["BTC"]) == (("94998", "0", "94998"), ("2.1", "0", "2.1"))
    book = await a.client.book(BTC)
    assert (book["bids"], book["asks"]) == ([], [])
    trades = (await a.client.trades(BTC, limit=1))["trades"]
    assert pick(trades[0], "trade_id", "price", "size", "side") == {
        "trade_id": trade_id, "price": "50000", "size": "0.1", "side": "buy"}


async def test_partial_fill_rests_with_exact_hold_then_cancel(traders: MakeTrader) -> None:
    a, b = await traders(), await traders()
    await a.client.place_order(market=BTC, side="sell", price="50000", size="0.05")
    r = await b.client.place_order(market=BTC, side="buy", price="50000", size="0.1")
    order = r["order"]
    assert order_fields(order) == expect_order(BTC, "buy", "50000", "0.1", "0.05", "0.05",
                                               "50000", "partially_filled")
    assert [fill_fields(f) for f in r["fills"]] == [
        fill(order["order_id"], BTC, "buy", "50000", "0.05", "1", "taker")]
    # hold = notional(50000, 0.05) 2500 + ceil((2500*400 + 2500*400) / 1e6) - 1 paid = 2501
    acct = await b.client.account()
    assert acct["open_orders"] == 1
    bal = {x["asset"]: (x["balance"], x["hold"], x["available"]) for x in acct["balances"]}
    assert bal["USDC"] == ("97499", "2501", "94998")
    assert bal["BTC"] == ("2.05", "0", "2.05")
    book = await b.client.book(BTC)
    assert (book["bids"], book["asks"]) == ([["50000", "0.05"]], [])

    cancelled = (await b.client.cancel_order(order["order_id"]))["order"]
    assert order_fields(cancelled) == expect_order(BTC, "buy", "50000", "0.1", "0.05", "0",
                                                   "50000", "cancelled")
    assert (await balances(b.client))["USDC"] == ("97499", "0", "97499")
    await rejects(b.client.cancel_order(order["order_id"]), 400, "ORDER_NOT_LIVE")
    assert (await b.client.get_orders(market=BTC, status="open"))["orders"] == []
    listed = (await b.client.get_orders(market=BTC))["orders"]
    assert [(o["order_id"], o["status"]) for o in listed] == [(order["order_id"], "cancelled")]


async def test_ioc_remainder_is_cancelled(traders: MakeTrader) -> None:
    a, b = await traders(), await traders()
    await a.client.place_order(market=BTC, side="sell", price="50000", size="0.05")
    r = await b.client.place_order(market=BTC, side="buy", price="50000", size="0.1",
                                   time_in_force="ioc")
    o = r["order"]
    assert order_fields(o) == expect_order(BTC, "buy", "50000", "0.1", "0.05", "0", "50000",
                                           "cancelled", tif="ioc")
    assert o["cancel_reason"] == "ioc_remainder"
    assert [fill_fields(f) for f in r["fills"]] == [
        fill(o["order_id"], BTC, "buy", "50000", "0.05", "1", "taker")]
    assert (await balances(b.client))["USDC"] == ("97499", "0", "97499")
    # nothing left to match: accepted, then cancelled whole
    r = await b.client.place_order(market=BTC, side="buy", price="50000", size="0.1",
                                   time_in_force="ioc")
    assert order_fields(r["order"]) == expect_order(BTC, "buy", "50000", "0.1", "0", "0", None,
                                                    "cancelled", tif="ioc")
    assert r["fills"] == []
    book = await b.client.book(BTC)
    assert (book["bids"], book["asks"]) == ([], [])


async def test_fok_fills_whole_or_nothing(traders: MakeTrader) -> None:
    a, b = await traders(), await traders()
    await a.client.place_order(market=BTC, side="sell", price="50000", size="0.05")
    await a.client.place_order(market=BTC, side="sell", price="50100", size="0.05")
    before_b, before_book = await balances(b.client), await b.client.book(BTC)
    await rejects(b.client.place_order(market=BTC, side="buy", price="50100", size="0.15",
                                       time_in_force="fok"), 400, "FOK_NOT_FILLED")
    await rejects(b.client.place_order(market=BTC, side="buy", price="50050", size="0.1",
                                       time_in_force="fok"), 400, "FOK_NOT_FILLED")
    assert await balances(b.client) == before_b
    assert await b.client.book(BTC) == before_book
    assert (await b.client.get_orders())["orders"] == []

    r = await b.client.place_order(market=BTC, side="buy", price="50100", size="0.1",
                                   time_in_force="fok")
    o = r["order"]
    assert order_fields(o) == expect_order(BTC, "buy", "50100", "0.1", "0.1", "0", "50050",
                                           "filled", tif="fok")
    # fees cumulative: ceil(2500*400e-6)=1, then ceil((2500+2505)*400e-6)=2.002 -> 1.002
    assert [fill_fields(f) for f in r["fills"]] == [
        fill(o["order_id"], BTC, "buy", "50000", "0.05", "1", "taker"),
        fill(o["order_id"], BTC, "buy", "50100", "0.05", "1.002", "taker")]
    assert (await balances(b.client))["USDC"] == ("94992.998", "0", "94992.998")


async def test_post_only(traders: MakeTrader) -> None:
    a, b = await traders(), await traders()
    await a.client.place_order(market=BTC, side="sell", price="50000", size="0.1")
    await b.client.place_order(market=BTC, side="buy", price="49000", size="0.1")
    before = await balances(b.client)
    await rejects(b.client.place_order(market=BTC, side="buy", price="50000", size="0.1",
                                       time_in_force="post_only"), 400, "POST_ONLY_WOULD_TAKE")
    await rejects(a.client.place_order(market=BTC, side="sell", price="49000", size="0.1",
                                       time_in_force="post_only"), 400, "POST_ONLY_WOULD_TAKE")
    assert await balances(b.client) == before
    r = await b.client.place_order(market=BTC, side="buy", price="49999.9", size="0.1",
                                   time_in_force="post_only")
    assert order_fields(r["order"]) == expect_order(BTC, "buy", "49999.9", "0.1", "0", "0.1",
                                                    None, "open", tif="post_only")
    assert r["fills"] == []
    # holds: 4900 + 1.96 for the 49000 bid; 4999.99 + 1.999996 for the post-only bid
    assert (await balances(b.client))["USDC"] == ("100000", "9903.949996", "90096.050004")
    book = await b.client.book(BTC)
    assert book["bids"] == [["49999.9", "0.1"], ["49000", "0.1"]]
    assert book["asks"] == [["50000", "0.1"]]


async def test_market_orders(traders: MakeTrader) -> None:
    a, b, c = await traders(), await traders(), await traders()
    await a.client.place_order(market=BTC, side="sell", price="50000", size="0.05")
    await a.client.place_order(market=BTC, side="sell", price="50100", size="0.05")
    await a.client.place_order(market=BTC, side="sell", price="53000", size="0.1")
    # protective limit: 5% past the best ask 50000 = 52500, so the 53000 ask is not reached
    r = await b.client.place_order(market=BTC, side="buy", type="market", size="0.15")
    o = r["order"]
    assert order_fields(o) == expect_order(BTC, "buy", "52500", "0.15", "0.1", "0", "50050",
                                           "cancelled", tif="ioc", otype="market")
    assert o["cancel_reason"] == "ioc_remainder"
    assert [fill_fields(f) for f in r["fills"]] == [
        fill(o["order_id"], BTC, "buy", "50000", "0.05", "1", "taker"),
        fill(o["order_id"], BTC, "buy", "50100", "0.05", "1.002", "taker")]
    assert (await balances(b.client))["USDC"] == ("94992.998", "0", "94992.998")

    await rejects(b.client.place_order(market=BTC, side="buy", type="market", size="0.2",
                                       time_in_force="fok"), 400, "FOK_NOT_FILLED")
    await rejects(b.client.place_order(market=BTC, side="buy", type="market", size="0.1",
                                       time_in_force="gtc"), 400, "INVALID_TIME_IN_FORCE")
    r = await b.client.place_order(market=BTC, side="buy", type="market", size="0.1",
                                   time_in_force="fok")
    assert order_fields(r["order"]) == expect_order(BTC, "buy", "55650", "0.1", "0.1", "0",
                                                    "53000", "filled", tif="fok", otype="market")
    assert [f["fee"] for f in r["fills"]] == ["2.12"]

    await rejects(b.client.place_order(market=BTC, side="sell", type="market", size="0.1"),
                  400, "NO_LIQUIDITY")
    await c.client.place_order(market=BTC, side="buy", price="50000", size="0.1")
    # protective sell limit: 50000 * 0.95 = 47500
    r = await b.client.place_order(market=BTC, side="sell", type="market", size="0.04")
    assert order_fields(r["order"]) == expect_order(BTC, "sell", "47500", "0.04", "0.04", "0",
                                                    "50000", "filled", tif="ioc",
                                                    otype="market")
    assert [fill_fields(f) for f in r["fills"]] == [
        fill(r["order"]["order_id"], BTC, "sell", "50000", "0.04", "0.8", "taker")]
    # 94992.998 - 5300 - 2.12 + 2000 - 0.8 ; BTC 2 + 0.1 + 0.1 - 0.04
    assert (await balances(b.client))["USDC"] == ("91690.078", "0", "91690.078")
    assert (await balances(b.client))["BTC"] == ("2.16", "0", "2.16")


async def test_gtt_order_expires(traders: MakeTrader) -> None:
    a = await traders()
    now = int(time.time() * 1000)
    await rejects(a.client.place_order(market=BTC, side="sell", price="70000", size="0.1",
                                       time_in_force="gtt", expire_ts=now - 1000),
                  400, "INVALID_EXPIRE_TS")
    await rejects(a.client.place_order(market=BTC, side="sell", price="70000", size="0.1",
                                       time_in_force="gtt"), 400, "INVALID_EXPIRE_TS")
    await rejects(a.client.place_order(market=BTC, side="sell", price="70000", size="0.1",
                                       expire_ts=now + 60_000), 400, "INVALID_EXPIRE_TS")
    expire_ts = int(time.time() * 1000) + 400
    r = await a.client.place_order(market=BTC, side="sell", price="70000", size="0.1",
                                   time_in_force="gtt", expire_ts=expire_ts)
    oid = r["order"]["order_id"]
    assert order_fields(r["order"]) == expect_order(BTC, "sell", "70000", "0.1", "0", "0.1",
                                                    None, "open", tif="gtt")
    assert r["order"]["expire_ts"] == expire_ts
    assert (await balances(a.client))["BTC"] == ("2", "0.1", "1.9")
    deadline = time.monotonic() + 3.0
    order = r["order"]
    while time.monotonic() < deadline:
        order = (await a.client.get_order(oid))["order"]
        if order["status"] != "open":
            break
        await asyncio.sleep(0.05)
    assert order_fields(order) == expect_order(BTC, "sell", "70000", "0.1", "0", "0", None,
                                               "expired", tif="gtt")
    assert order["updated_ts"] >= expire_ts
    assert (await balances(a.client))["BTC"] == ("2", "0", "2")
    assert (await a.client.book(BTC))["asks"] == []
    await rejects(a.client.cancel_order(oid), 400, "ORDER_NOT_LIVE")


# --------------------------------------------------------------------------- client ids

async def test_client_order_ids(traders: MakeTrader) -> None:
    a = await traders()
    first = (await a.client.place_order(market=BTC, side="buy", price="40000", size="0.01",
                                        client_order_id="grid-1"))["order"]
    assert first["client_order_id"] == "grid-1"
    got = (await a.client.get_order_by_client_id("grid-1"))["order"]
    assert got == first
    err = await rejects(a.client.place_order(market=BTC, side="buy", price="40100", size="0.01",
                                             client_order_id="grid-1"),
                        409, "DUPLICATE_CLIENT_ORDER_ID", frozenset({"order_id"}))
    assert err["order_id"] == first["order_id"]
    assert [o["order_id"] for o in (await a.client.get_orders())["orders"]] == [first["order_id"]]
    await rejects(a.client.get_order_by_client_id("grid-404"), 404, "ORDER_NOT_FOUND")
    # another account may use the same client id
    b = await traders()
    other = (await b.client.place_order(market=BTC, side="buy", price="40000", size="0.01",
                                        client_order_id="grid-1"))["order"]
    assert other["order_id"] != first["order_id"]
    assert (await a.client.get_order_by_client_id("grid-1"))["order"]["order_id"] == \
        first["order_id"]
    # once the first order is done the id is free again; lookup gives the newest
    await a.client.cancel_order(first["order_id"])
    second = (await a.client.place_order(market=BTC, side="buy", price="40100", size="0.01",
                                         client_order_id="grid-1"))["order"]
    assert int(second["order_id"]) > int(first["order_id"])
    got = (await a.client.get_order_by_client_id("grid-1"))["order"]
    assert (got["order_id"], got["status"], got["price"]) == (second["order_id"], "open", "40100")


# --------------------------------------------------------------------------- amend

async def test_amend_size_down_keeps_priority_price_change_loses_it(traders: MakeTrader) -> None:
    a, c, b = await traders(), await traders(), await traders()
    a1 = (await a.client.place_order(market=BTC, side="sell", price="51000", size="0.1"))["order"]
    c1 = (await c.client.place_order(market=BTC, side="sell", price="51000", size="0.1"))["order"]
    amended = (await a.client.amend_order(a1["order_id"], size="0.05"))["order"]
    assert amended["order_id"] == a1["order_id"]
    assert order_fields(amended) == expect_order(BTC, "sell", "51000", "0.05", "0", "0.05", None,
                                                 "open")
    assert (await a.client.get_order(a1["order_id"]))["order"] == amended
    assert (await balances(a.client))["BTC"] == ("2", "0.05", "1.95")
    assert (await b.client.book(BTC))["asks"] == [["51000", "0.15"]]
    # size down kept a1 ahead of c1: a buy of 0.05 takes a1
    r = await b.client.place_order(market=BTC, side="buy", price="51000", size="0.05")
    assert r["order"]["status"] == "filled"
    assert (await a.client.get_order(a1["order_id"]))["order"]["status"] == "filled"
    c_now = (await c.client.get_order(c1["order_id"]))["order"]
    assert (c_now["status"], c_now["filled"]) == ("open", "0")

    # price change (away and back): a2 goes behind c2
    a2 = (await a.client.place_order(market=BTC, side="sell", price="51500", size="0.1"))["order"]
    c2 = (await c.client.place_order(market=BTC, side="sell", price="51500", size="0.1"))["order"]
    moved = (await a.client.amend_order(a2["order_id"], price="51600"))["order"]
    assert (moved["order_id"], moved["price"], moved["status"]) == (a2["order_id"], "51600", "open")
    back = (await a.client.amend_order(a2["order_id"], price="51500"))["order"]
    assert (back["price"], back["remaining"]) == ("51500", "0.1")
    await c.client.cancel_order(c1["order_id"])
    await b.client.place_order(market=BTC, side="buy", price="51500", size="0.1")
    assert (await c.client.get_order(c2["order_id"]))["order"]["status"] == "filled"
    a2_now = (await a.client.get_order(a2["order_id"]))["order"]
    assert (a2_now["status"], a2_now["filled"]) == ("open", "0")

    # a larger size loses priority too
    await a.client.cancel_order(a2["order_id"])
    a3 = (await a.client.place_order(market=BTC, side="sell", price="52000", size="0.05"))["order"]
    c3 = (await c.client.place_order(market=BTC, side="sell", price="52000", size="0.1"))["order"]
    grown = (await a.client.amend_order(a3["order_id"], size="0.1"))["order"]
    assert (grown["size"], grown["remaining"]) == ("0.1", "0.1")
    await b.client.place_order(market=BTC, side="buy", price="52000", size="0.1")
    assert (await c.client.get_order(c3["order_id"]))["order"]["status"] == "filled"
    assert (await a.client.get_order(a3["order_id"]))["order"]["status"] == "open"


async def test_amend_rules_and_crossing_amend_takes(traders: MakeTrader) -> None:
    a, b = await traders(), await traders()
    ask = (await a.client.place_order(market=BTC, side="sell", price="51000", size="0.1"))["order"]
    bid = (await b.client.place_order(market=BTC, side="buy", price="50900", size="0.2"))["order"]
    await rejects(b.client.amend_order(bid["order_id"], price="50900"), 400, "NOTHING_TO_AMEND")
    await rejects(b.client.amend_order(bid["order_id"], price="50900.05"), 400,
                  "PRICE_NOT_ON_TICK")
    await rejects(b.client.amend_order(bid["order_id"], size="0.00005"), 400, "SIZE_NOT_ON_LOT")
    await rejects(b.client.amend_order(bid["order_id"], size="10"), 400, "INSUFFICIENT_BALANCE")
    assert (await balances(b.client))["USDC"] == ("100000", "10184.072", "89815.928")
    # the amended price crosses: it trades as a taker at the maker's price, the rest rests
    r = await b.client.amend_order(bid["order_id"], price="51000")
    o = r["order"]
    assert o["order_id"] == bid["order_id"]
    assert order_fields(o) == expect_order(BTC, "buy", "51000", "0.2", "0.1", "0.1", "51000",
                                           "partially_filled")
    assert [fill_fields(f) for f in r["fills"]] == [
        fill(bid["order_id"], BTC, "buy", "51000", "0.1", "2.04", "taker")]
    assert (await a.client.get_order(ask["order_id"]))["order"]["status"] == "filled"
    await rejects(b.client.amend_order(bid["order_id"], size="0.1"), 400,
                  "AMEND_SIZE_NOT_ABOVE_FILLED")
    # remaining hold: 5100 + ceil((5100*400 + 5100*400)/1e6) - 2.04 = 5102.04
    assert (await balances(b.client))["USDC"] == ("94897.96", "5102.04", "89795.92")
    await rejects(a.client.amend_order(ask["order_id"], size="0.2"), 400, "ORDER_NOT_LIVE")


# --------------------------------------------------------------------------- cancel

async def test_cancel_all_per_market_and_everything(traders: MakeTrader) -> None:
    a = await traders()
    b1 = (await a.client.place_order(market=BTC, side="buy", price="40000", size="0.01"))["order"]
    b2 = (await a.client.place_order(market=BTC, side="buy", price="40100", size="0.01"))["order"]
    e1 = (await a.client.place_order(market=ETH, side="buy", price="2000", size="0.1"))["order"]
    # holds: 400 + 0.16, 401 + 0.1604, 200 + 0.08
    assert (await balances(a.client))["USDC"] == ("100000", "1001.4004", "98998.5996")
    r = await a.client.cancel_all(BTC)
    assert sorted(r["cancelled"]) == sorted([b1["order_id"], b2["order_id"]])
    opened = (await a.client.get_orders(status="open"))["orders"]
    assert [o["order_id"] for o in opened] == [e1["order_id"]]
    assert (await balances(a.client))["USDC"] == ("100000", "200.08", "99799.92")
    assert (await a.client.cancel_all()) == {"cancelled": [e1["order_id"]]}
    assert (await a.client.cancel_all()) == {"cancelled": []}
    assert (await balances(a.client))["USDC"] == ("100000", "0", "100000")
    for oid in (b1["order_id"], b2["order_id"], e1["order_id"]):
        assert (await a.client.get_order(oid))["order"]["status"] == "cancelled"
    await rejects(a.client.cancel_all("DOGE-USDC"), 404, "UNKNOWN_MARKET")


async def test_open_orders_come_from_the_engine_newest_first_in_pages(
    traders: MakeTrader,
) -> None:
    """`status=open` reads the engine's live orders (no index on disk holds them): the same
    order fields as the stored rows, newest first, keyset pages, the market filter."""
    a = await traders()
    b = await traders()
    bids = [(await a.client.place_order(market=BTC, side="buy", price=px, size="0.01")
             )["order"]["order_id"] for px in ("40000", "40100", "40200")]
    eth = (await a.client.place_order(market=ETH, side="buy", price="2000", size="0.1")
           )["order"]["order_id"]
    gone = (await a.client.place_order(market=BTC, side="buy", price="39000", size="0.01")
            )["order"]["order_id"]
    await a.client.cancel_order(gone)
    part = (await a.client.place_order(market=BTC, side="sell", price="60000", size="0.02")
            )["order"]["order_id"]
    await b.client.place_order(market=BTC, side="buy", price="60000", size="0.01",
                               time_in_force="ioc")

    pages: list[tuple[list[str], str | None]] = []
    cursor: str | None = None
    while True:
        got = await a.client.get_orders(status="open", limit=2, cursor=cursor)
        pages.append(([o["order_id"] for o in got["orders"]], got["next_cursor"]))
        for o in got["orders"]:  # the engine's view renders exactly as the stored row
            assert o == (await a.client.get_order(o["order_id"]))["order"]
        cursor = got["next_cursor"]
        if cursor is None:
            break
    assert pages == [([part, eth], eth), ([bids[2], bids[1]], bids[1]), ([bids[0]], None)]
    partly = (await a.client.get_order(part))["order"]
    assert (partly["status"], partly["filled"], partly["remaining"]) == (
        "partially_filled", "0.01", "0.01")
    assert await a.client.get_orders(market=ETH, status="open", limit=1) == {
        "orders": [(await a.client.get_order(eth))["order"]], "next_cursor": None}
    everything = (await a.client.get_orders(limit=10))["orders"]  # every status: from disk
    assert [(o["order_id"], o["status"]) for o in everything] == [
        (part, "partially_filled"), (gone, "cancelled"), (eth, "open"), (bids[2], "open"),
        (bids[1], "open"), (bids[0], "open")]
    await a.client.cancel_all()
    assert await a.client.get_orders(status="open") == {"orders": [], "next_cursor": None}


# --------------------------------------------------------------------------- batches

async def test_batch_with_mixed_items(traders: MakeTrader) -> None:
    a = await traders()
    r = await raw(a.client, "POST", "/v1/orders/batch", {"orders": [
        {"market": BTC, "side": "sell", "price": "60000", "size": "0.01",
         "client_order_id": "b-0"},
        {"market": BTC, "side": "sell", "price": "60000.05", "size": "0.01"},
        {"market": "DOGE-USDC", "side": "sell", "price": "1", "size": "1"},
        {"market": BTC, "side": "sell", "price": "60000", "size": "5"},
        {"market": BTC, "side": "buy", "price": "40000", "size": "0.01"},
        {"market": BTC, "side": "buy", "price": "40000", "size": "0.01",
         "client_order_id": "b-0"},
        {"market": BTC, "side": "buy", "price": "40000", "size": "0"},
    ]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 7
    assert set(results[0]) == {"order", "fills"} and results[0]["fills"] == []
    assert order_fields(results[0]["order"]) == expect_order(BTC, "sell", "60000", "0.01", "0",
                                                             "0.01", None, "open")
    codes = [x["error"]["code"] if "error" in x else None for x in results]
    assert codes == [None, "PRICE_NOT_ON_TICK", "UNKNOWN_MARKET", "INSUFFICIENT_BALANCE", None,
                     "DUPLICATE_CLIENT_ORDER_ID", "INVALID_SIZE"]
    for x in results:
        if "error" in x:
            assert set(x) == {"error"}
            assert set(x["error"]) - {"order_id"} == {"code", "message"}
    assert results[5]["error"]["order_id"] == results[0]["order"]["order_id"]
    assert order_fields(results[4]["order"]) == expect_order(BTC, "buy", "40000", "0.01", "0",
                                                             "0.01", None, "open")
    bal = await balances(a.client)
    assert (bal["BTC"], bal["USDC"]) == (("2", "0.01", "1.99"), ("100000", "400.16", "99599.84"))
    ids = sorted(o["order_id"] for o in (await a.client.get_orders(status="open"))["orders"])
    assert ids == sorted([results[0]["order"]["order_id"], results[4]["order"]["order_id"]])


async def test_atomic_batch_all_or_nothing(traders: MakeTrader) -> None:
    a = await traders({"USDC": "100000", "BTC": "2", "ETH": "10"})
    b = await traders()
    await a.client.place_order(market=BTC, side="sell", price="50000", size="0.1")
    await a.client.place_order(market=ETH, side="sell", price="3000", size="1")
    legs = [{"market": BTC, "side": "buy", "price": "50000", "size": "0.1",
             "time_in_force": "ioc"},
            {"market": ETH, "side": "buy", "price": "3000", "size": "1", "time_in_force": "fok"}]
    r = await b.client.place_batch(legs, atomic=True)
    results = r["results"]
    assert [order_fields(x["order"]) for x in results] == [
        expect_order(BTC, "buy", "50000", "0.1", "0.1", "0", "50000", "filled", tif="ioc"),
        expect_order(ETH, "buy", "3000", "1", "1", "0", "3000", "filled", tif="fok")]
    assert [[f["fee"] for f in x["fills"]] for x in results] == [["2"], ["1.2"]]
    bal = await balances(b.client)
    assert (bal["USDC"], bal["BTC"], bal["ETH"]) == (
        ("91996.8", "0", "91996.8"), ("2.1", "0", "2.1"), ("1", "0", "1"))

    # the BTC leg could fill, the ETH leg cannot: nothing happens at all
    await a.client.place_order(market=BTC, side="sell", price="50000", size="0.1")
    books = (await b.client.book(BTC), await b.client.book(ETH))
    orders_before = (await b.client.get_orders())["orders"]
    r = await b.client.place_batch(legs, atomic=True)
    assert len(r["results"]) == 2
    for x in r["results"]:
        assert set(x) == {"error"} and x["error"]["code"] == "ATOMIC_BATCH_FAILED"
    assert await balances(b.client) == bal
    assert (await b.client.book(BTC), await b.client.book(ETH)) == books
    assert books[0]["asks"] == [["50000", "0.1"]]
    assert (await b.client.get_orders())["orders"] == orders_before

    # a resting leg is refused for every item
    r = await b.client.place_batch([{**legs[0], "time_in_force": "gtc"}], atomic=True)
    assert [x["error"]["code"] for x in r["results"]] == ["ATOMIC_LEG_NOT_IMMEDIATE"]

    # proceeds of an earlier leg pay for a later one: sell BTC, then buy ETH with the USDC
    d = await traders({"BTC": "0.1"})
    await a.client.cancel_all(BTC)
    await a.client.place_order(market=ETH, side="sell", price="3000", size="1")
    await b.client.place_order(market=BTC, side="buy", price="50000", size="0.1")
    backwards = [{"market": ETH, "side": "buy", "price": "3000", "size": "1",
                  "time_in_force": "ioc"},
                 {"market": BTC, "side": "sell", "price": "50000", "size": "0.1",
                  "time_in_force": "ioc"}]
    r = await d.client.place_batch(backwards, atomic=True)
    assert [x["error"]["code"] for x in r["results"]] == ["ATOMIC_BATCH_FAILED"] * 2
    r = await d.client.place_batch(backwards[::-1], atomic=True)
    assert [x["order"]["status"] for x in r["results"]] == ["filled", "filled"]
    bal = await balances(d.client)
    # 5000 - 2 fee - 3000 - 1.2 fee
    assert (bal["USDC"], bal["BTC"], bal["ETH"]) == (
        ("1996.8", "0", "1996.8"), ("0", "0", "0"), ("1", "0", "1"))


async def test_self_trade_prevention_cancels_taker(traders: MakeTrader) -> None:
    a, c = await traders(), await traders()
    own = (await a.client.place_order(market=BTC, side="sell", price="50000", size="0.1"))["order"]
    await c.client.place_order(market=BTC, side="sell", price="49990", size="0.05")
    r = await a.client.place_order(market=BTC, side="buy", price="50000", size="0.1")
    o = r["order"]
    assert order_fields(o) == expect_order(BTC, "buy", "50000", "0.1", "0.05", "0", "49990",
                                           "cancelled")
    assert o["cancel_reason"] == "self_trade_prevention"
    assert [fill_fields(f) for f in r["fills"]] == [
        fill(o["order_id"], BTC, "buy", "49990", "0.05", "0.9998", "taker")]
    mine = (await a.client.get_order(own["order_id"]))["order"]
    assert (mine["status"], mine["filled"], mine["remaining"]) == ("open", "0", "0.1")
    bal = await balances(a.client)
    assert (bal["USDC"], bal["BTC"]) == (("97499.5002", "0", "97499.5002"),
                                         ("2.05", "0.1", "1.95"))
    assert len((await a.client.fills())["fills"]) == 1
    assert (await a.client.book(BTC))["asks"] == [["50000", "0.1"]]


# --------------------------------------------------------------------------- history

async def test_fills_pagination(traders: MakeTrader) -> None:
    a, b = await traders(), await traders()
    for i in range(5):
        await a.client.place_order(market=BTC, side="sell", price=str(50000 + 10 * i),
                                   size="0.01")
    r = await b.client.place_order(market=BTC, side="buy", price="50040", size="0.05")
    assert r["order"]["status"] == "filled"
    expected = sorted((f["trade_id"] for f in r["fills"]), key=int, reverse=True)
    assert len(expected) == 5
    seen: list[str] = []
    cursors: list[str | None] = []
    cursor = None
    while True:
        page = await b.client.fills(market=BTC, limit=2, cursor=cursor)
        assert len(page["fills"]) == (2 if len(seen) < 4 else 1)
        seen += [f["trade_id"] for f in page["fills"]]
        cursor = page["next_cursor"]
        cursors.append(cursor)
        if cursor is None:
            break
    assert seen == expected
    assert cursors == [expected[1], expected[3], None]
    whole = await b.client.fills(limit=5)
    assert [f["trade_id"] for f in whole["fills"]] == expected and whole["next_cursor"] is None
    assert [f["price"] for f in whole["fills"]] == ["50040", "50030", "50020", "50010", "50000"]
    assert (await b.client.fills(market=ETH))["fills"] == []


async def test_ledger_and_withdrawals(traders: MakeTrader) -> None:
    a, b = await traders(), await traders()
    await a.client.place_order(market=BTC, side="sell", price="50000", size="0.1")
    await b.client.place_order(market=BTC, side="buy", price="50000", size="0.1")
    await a.client.place_order(market=BTC, side="sell", price="60000", size="0.5")  # holds 0.5

    r = await raw(a.client, "POST", "/v1/withdrawals",
                  {"asset": "USDC", "amount": "1000", "withdrawal_id": "w-1"})
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["replayed"] is False
    assert pick(first["entry"], "asset", "amount", "balance_after", "reason") == {
        "asset": "USDC", "amount": "-1000", "balance_after": "103999.5", "reason": "withdrawal"}
    r = await raw(a.client, "POST", "/v1/withdrawals",
                  {"asset": "USDC", "amount": "1000", "withdrawal_id": "w-1"})
    assert r.status_code == 200, r.text
    assert r.json()["replayed"] is True and r.json()["entry"] == first["entry"]
    await rejects(a.client.withdraw("USDC", "999", "w-1"), 409, "DUPLICATE_WITHDRAWAL_ID")
    # BTC: balance 1.9, 0.5 held by the open sell -> 1.4 available
    await rejects(a.client.withdraw("BTC", "1.5", "w-2"), 400, "INSUFFICIENT_BALANCE")
    await rejects(a.client.withdraw("USDC", "1000000", "w-3"), 400, "INSUFFICIENT_BALANCE")
    w = await a.client.withdraw("BTC", "1.4", "w-4")
    assert (w["entry"]["amount"], w["entry"]["balance_after"]) == ("-1.4", "0.5")
    bal = await balances(a.client)
    assert (bal["USDC"], bal["BTC"]) == (("103999.5", "0", "103999.5"), ("0.5", "0.5", "0"))

    entries = (await a.client.ledger(limit=1000))["entries"]
    got = [(e["asset"], e["amount"], e["reason"]) for e in reversed(entries)]
    assert got == [
        ("USDC", "100000", "deposit"), ("BTC", "2", "deposit"),
        ("USDC", "5000", "trade"), ("BTC", "-0.1", "trade"), ("USDC", "-0.5", "fee"),
        ("USDC", "-1000", "withdrawal"), ("BTC", "-1.4", "withdrawal"),
    ]
    for asset, balance in (("USDC", "103999.5"), ("BTC", "0.5")):
        mine = [e for e in reversed(entries) if e["asset"] == asset]
        running = Decimal(0)
        for e in mine:
            running += Decimal(e["amount"])
            assert Decimal(e["balance_after"]) == running
        assert running == Decimal(balance)
        only = (await a.client.ledger(asset=asset))["entries"]
        assert only == [e for e in entries if e["asset"] == asset]
    b_entries = (await b.client.ledger())["entries"]
    assert [(e["asset"], e["amount"], e["reason"]) for e in reversed(b_entries)][2:] == [
        ("USDC", "-5000", "trade"), ("BTC", "0.1", "trade"), ("USDC", "-2", "fee")]
    page = await a.client.ledger(limit=3)
    assert [e["entry_id"] for e in page["entries"]] == [e["entry_id"] for e in entries[:3]]
    assert page["next_cursor"] == entries[2]["entry_id"]


async def test_deposits_are_idempotent(traders: MakeTrader, admin: AsyncExchangeClient) -> None:
    a = await traders({"USDC": "100"})
    r = await raw(admin, "POST", "/v1/admin/deposits",
                  {"account_id": a.account_id, "asset": "USDC", "amount": "50",
                   "deposit_id": "idem-1"})
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["replayed"] is False
    assert pick(first["entry"], "account_id", "asset", "amount", "balance_after", "reason") == {
        "account_id": a.account_id, "asset": "USDC", "amount": "50", "balance_after": "150",
        "reason": "deposit"}
    r = await raw(admin, "POST", "/v1/admin/deposits",
                  {"account_id": a.account_id, "asset": "USDC", "amount": "50",
                   "deposit_id": "idem-1"})
    assert r.status_code == 200, r.text
    assert r.json() == {"entry": first["entry"], "replayed": True}
    await rejects(admin.deposit(a.account_id, "USDC", "51", "idem-1"), 409,
                  "DUPLICATE_DEPOSIT_ID")
    await rejects(admin.deposit(a.account_id, "BTC", "50", "idem-1"), 409,
                  "DUPLICATE_DEPOSIT_ID")
    await rejects(admin.deposit(a.account_id, "USDC", "0", "idem-2"), 400, "INVALID_AMOUNT")
    await rejects(admin.deposit(a.account_id, "DOGE", "1", "idem-3"), 400, "UNKNOWN_ASSET")
    await rejects(admin.deposit("999999", "USDC", "1", "idem-4"), 404, "UNKNOWN_ACCOUNT")
    assert (await balances(a.client))["USDC"] == ("150", "0", "150")
    reasons = [(e["amount"], e["reason"]) for e in (await a.client.ledger())["entries"]]
    assert reasons == [("50", "deposit"), ("100", "deposit")]


# --------------------------------------------------------------------------- market states

async def test_market_states(traders: MakeTrader, admin: AsyncExchangeClient) -> None:
    a = await traders({"USDC": "1000", "SOL": "10"})
    o = (await a.client.place_order(market=SOL, side="sell", price="100", size="1"))["order"]
    assert order_fields(o) == expect_order(SOL, "sell", "100", "1", "0", "1", None, "open")
    try:
        assert await admin.set_market_state(SOL, "halted") == {"market": SOL, "state": "halted"}
        assert (await a.client.request("GET", f"/v1/markets/{SOL}", signed=False))["state"] == \
            "halted"
        await rejects(a.client.place_order(market=SOL, side="sell", price="100", size="1"),
                      400, "MARKET_HALTED")
        await rejects(a.client.cancel_order(o["order_id"]), 400, "MARKET_HALTED")
        await rejects(a.client.amend_order(o["order_id"], size="0.5"), 400, "MARKET_HALTED")
        assert await a.client.cancel_all(SOL) == {"cancelled": []}
        assert (await a.client.get_order(o["order_id"]))["order"]["status"] == "open"

        await admin.set_market_state(SOL, "cancel_only")
        await rejects(a.client.place_order(market=SOL, side="buy", price="90", size="1"),
                      400, "MARKET_CANCEL_ONLY")
        await rejects(a.client.amend_order(o["order_id"], size="0.5"), 400,
                      "MARKET_CANCEL_ONLY")
        cancelled = (await a.client.cancel_order(o["order_id"]))["order"]
        assert (cancelled["status"], cancelled["remaining"]) == ("cancelled", "0")
        assert (await balances(a.client))["SOL"] == ("10", "0", "10")

        await admin.set_market_state(SOL, "reduce_only")
        await rejects(a.client.place_order(market=SOL, side="sell", price="100", size="1"),
                      400, "MARKET_REDUCE_ONLY")
        await rejects(admin.set_market_state(SOL, "closed"), 422, "VALIDATION_ERROR")
        await rejects(admin.set_market_state("DOGE-USDC", "open"), 404, "UNKNOWN_MARKET")
    finally:
        await admin.set_market_state(SOL, "open")
    assert (await a.client.request("GET", f"/v1/markets/{SOL}", signed=False))["state"] == "open"
    again = (await a.client.place_order(market=SOL, side="sell", price="100", size="1"))["order"]
    assert again["status"] == "open"
