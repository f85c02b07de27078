"""Bad input, bad credentials and other accounts' objects: exact statuses, codes and bodies.

Every error body must be exactly `{"error": {"code", "message"}}` (plus `order_id`
where documented). Requests that must be byte-exact (malformed JSON, replays,
tampered bodies) are signed with `exchange_client.signing` and sent with httpx.
Several tests pin server bugs found while writing them (now fixed): out-of-range
numbers, unknown query parameters, per-account withdrawal ids, non-UTF-8 bodies,
empty batches and concurrent identical requests from the client library.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import httpx
import orjson
import pytest

from exchange_client import ApiError, AsyncExchangeClient
from exchange_client.signing import auth_headers, now_ms
from tests.integration.conftest import MakeTrader, Trader
from tests.server import ServerProcess

BTC = "BTC-USDC"
ETH = "ETH-USDC"
ORDER = {"market": BTC, "side": "buy", "price": "50000", "size": "0.01"}


# --------------------------------------------------------------------------- helpers

def check_body(status: int, body: Any, want_status: int, code: str,
               extra: frozenset[str] = frozenset(), ctx: Any = None) -> dict[str, Any]:
    got = body.get("error", {}).get("code") if isinstance(body, dict) else body
    assert (status, got) == (want_status, code), (ctx, body)
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message"} | extra, err
    assert isinstance(err["message"], str) and err["message"]
    return dict(err)


def check_response(r: httpx.Response, status: int, code: str,
                   extra: frozenset[str] = frozenset(), ctx: Any = None) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/json"), (ctx, r.headers)
    return check_body(r.status_code, r.json(), status, code, extra, ctx)


async def rejects(call: Awaitable[Any], status: int, code: str,
                  extra: frozenset[str] = frozenset()) -> dict[str, Any]:
    with pytest.raises(ApiError) as info:
        await call
    return check_body(info.value.status, info.value.body, status, code, extra)


def signed_headers(key: str, secret: str, method: str, path: str, content: bytes = b"",
                   **kw: Any) -> dict[str, str]:
    headers = auth_headers(key, secret, method, path, content, **kw)
    if content:
        headers["Content-Type"] = "application/json"
    return headers


async def send(t: Trader, method: str, path: str, content: bytes = b"",
               headers: dict[str, str] | None = None) -> httpx.Response:
    """Signed (unless headers are given) request with exactly these body bytes."""
    if headers is None:
        headers = signed_headers(t.api_key, t.api_secret, method, path, content)
    return await t.client.http.request(method, t.client.base_url + path, content=content,
                                       headers=headers)


async def post_json(t: Trader, path: str, body: Any) -> httpx.Response:
    return await send(t, "POST", path, orjson.dumps(body))


async def snapshot(t: Trader) -> tuple[Any, ...]:
    """Everything a refused request must leave unchanged."""
    acct = await t.client.account()
    orders = (await t.client.get_orders())["orders"]
    return (acct["balances"], acct["open_orders"], orders, await t.client.book(BTC),
            await t.client.book(ETH))




# --------------------------------------------------------------------------- body shape

BAD_BODIES: list[tuple[dict[str, Any], str]] = [
    ({**ORDER, "size": 1}, "size"),
    ({**ORDER, "price": 50000}, "price"),
    ({**ORDER, "price": 50000.5}, "price"),
    ({**ORDER, "side": "BUY"}, "side"),
    ({**ORDER, "market": 5}, "market"),
    ({**ORDER, "reduce_only": "false"}, "reduce_only"),
    ({**ORDER, "time_in_force": "gtt", "expire_ts": "1900000000000"}, "expire_ts"),
    ({**ORDER, "time_in_force": "day"}, "time_in_force"),
    ({**ORDER, "type": "iceberg"}, "type"),
    ({**ORDER, "size": "1e-3"}, "size"),
    ({**ORDER, "size": " 0.01"}, "size"),
    ({**ORDER, "size": ""}, "size"),
    ({**ORDER, "client_order_id": "has space"}, "client_order_id"),
    ({**ORDER, "leverage": 5}, "leverage"),
    ({**ORDER, "Size": "0.01"}, "Size"),
    ({k: v for k, v in ORDER.items() if k != "size"}, "size"),
    ({k: v for k, v in ORDER.items() if k != "side"}, "side"),
    ({k: v for k, v in ORDER.items() if k != "market"}, "market"),
]


async def test_order_body_validation(traders: MakeTrader) -> None:
    """Wrong types, unknown and missing fields: 422 VALIDATION_ERROR naming the field."""
    t = await traders()
    before = await snapshot(t)
    for body, where in BAD_BODIES:
        r = await post_json(t, "/v1/orders", body)
        err = check_response(r, 422, "VALIDATION_ERROR", ctx=body)
        assert where in err["message"], (body, err)
    assert await snapshot(t) == before


async def test_non_object_bodies_and_other_routes(traders: MakeTrader) -> None:
    t = await traders()
    o = (await t.client.place_order(**ORDER))["order"]
    for body in (b"[1, 2]", b"null", b"\"order\"", b""):
        check_response(await send(t, "POST", "/v1/orders", body), 422, "VALIDATION_ERROR")
    cases = [
        ("PATCH", f"/v1/orders/{o['order_id']}", {"price": "50000", "tif": "gtc"}),
        ("PATCH", f"/v1/orders/{o['order_id']}", {"size": 1}),
        ("POST", "/v1/orders/batch", {"orders": [{**ORDER, "extra": 1}]}),
        ("POST", "/v1/orders/batch", {"orders": [ORDER], "atomic": "no"}),
        ("POST", "/v1/orders/batch", {"orders": [ORDER], "all_or_none": True}),
        ("POST", "/v1/orders/batch", {"order": [ORDER]}),
        ("POST", "/v1/withdrawals", {"asset": "USDC", "amount": "1"}),
        ("POST", "/v1/withdrawals", {"asset": "USDC", "amount": 1, "withdrawal_id": "x"}),
        ("POST", "/v1/withdrawals", {"asset": "USDC", "amount": "1", "withdrawal_id": "x",
                                     "to": "elsewhere"}),
        ("POST", "/v1/account/keys", {"permissions": ["read", "admin"]}),
        ("POST", "/v1/account/keys", {"permissions": []}),
        ("PUT", "/v1/account/settings", {"stp": "never"}),
    ]
    for method, path, body in cases:
        r = await send(t, method, path, orjson.dumps(body))
        check_response(r, 422, "VALIDATION_ERROR")
    for query in ("status=closed", "limit=0", "limit=1001", "limit=ten"):
        check_response(await send(t, "GET", f"/v1/orders?{query}"), 422, "VALIDATION_ERROR")
    got = (await t.client.get_order(o["order_id"]))["order"]
    assert (got["status"], got["price"], got["size"]) == ("open", "50000", "0.01")
    assert (await t.client.get_orders())["orders"] == [got]
    assert (await t.client.ledger())["entries"][0]["reason"] == "deposit"


async def test_malformed_json_signed_correctly(traders: MakeTrader) -> None:
    t = await traders()
    before = await snapshot(t)
    for raw in (b'{"market": "BTC-USDC", "side": "buy",', b"{'market': 'BTC-USDC'}",
                b'{"market": "BTC-USDC"}}', b"{", b"\x00"):
        r = await send(t, "POST", "/v1/orders", raw)
        check_response(r, 422, "MALFORMED_JSON")
    r = await send(t, "POST", "/v1/orders/batch", b'{"orders": [')
    check_response(r, 422, "MALFORMED_JSON")
    assert await snapshot(t) == before


async def test_body_that_is_not_utf8_is_malformed_json(traders: MakeTrader) -> None:
    t = await traders()
    r = await send(t, "POST", "/v1/orders", b'{"market": "\xff"}')
    check_response(r, 422, "MALFORMED_JSON")


# --------------------------------------------------------------------------- business rules

REJECTIONS: list[tuple[dict[str, Any], int, str]] = [
    ({"price": "50000.05"}, 400, "PRICE_NOT_ON_TICK"),
    ({"price": "50000.0000001"}, 400, "PRICE_NOT_ON_TICK"),
    ({"price": "0"}, 400, "INVALID_PRICE"),
    ({"price": "-50000"}, 400, "INVALID_PRICE"),
    ({"price": None}, 400, "PRICE_REQUIRED"),
    ({"size": "0.00005"}, 400, "SIZE_NOT_ON_LOT"),
    ({"size": "0.000000001"}, 400, "SIZE_NOT_ON_LOT"),
    ({"size": "0"}, 400, "INVALID_SIZE"),
    ({"size": "0.0000"}, 400, "INVALID_SIZE"),
    ({"size": "-1"}, 400, "INVALID_SIZE"),
    ({"size": "-0.0001"}, 400, "INVALID_SIZE"),
    ({"market": ETH, "price": "3000", "size": "0.0005"}, 400, "SIZE_NOT_ON_LOT"),
    ({"market": ETH, "price": "3000.001", "size": "0.001"}, 400, "PRICE_NOT_ON_TICK"),
    ({"market": "DOGE-USDC"}, 404, "UNKNOWN_MARKET"),
    ({"market": "btc-usdc"}, 404, "UNKNOWN_MARKET"),
    ({"type": "stop_market", "trigger_price": "49000"}, 400, "UNSUPPORTED_ORDER_TYPE"),
    ({"reduce_only": True}, 400, "REDUCE_ONLY_NOT_SPOT"),
    ({"size": "10"}, 400, "INSUFFICIENT_BALANCE"),
    ({"side": "sell", "price": "60000", "size": "2.0001"}, 400, "INSUFFICIENT_BALANCE"),
]


async def test_order_business_rejections(traders: MakeTrader) -> None:
    """Refused orders get their code and change nothing (no order, no hold, same book)."""
    t = await traders()
    before = await snapshot(t)
    for fields, status, code in REJECTIONS:
        body = {k: v for k, v in {**ORDER, **fields}.items() if v is not None}
        r = await post_json(t, "/v1/orders", body)
        check_response(r, status, code, ctx=body)
    assert await snapshot(t) == before
    assert (await t.client.get_orders())["orders"] == []


async def test_on_tick_prices_with_trailing_zeros_are_accepted(traders: MakeTrader) -> None:
    t = await traders()
    o = (await t.client.place_order(market=BTC, side="buy", price="40000.100000",
                                    size="0.010000"))["order"]
    assert (o["price"], o["size"], o["status"]) == ("40000.1", "0.01", "open")


async def test_balance_is_checked_exactly_and_nothing_is_half_applied(
        traders: MakeTrader) -> None:
    # 0.1 BTC at 50000 costs 5000 + 2 (taker fee reserve): exactly what this account has
    t = await traders({"USDC": "5002", "BTC": "0.5"})
    poor = await traders({"USDC": "5001.999999"})
    before = await snapshot(poor)
    await rejects(poor.client.place_order(market=BTC, side="buy", price="50000", size="0.1"),
                  400, "INSUFFICIENT_BALANCE")
    assert await snapshot(poor) == before
    o = (await t.client.place_order(market=BTC, side="buy", price="50000", size="0.1"))["order"]
    assert o["status"] == "open"
    usdc = next(b for b in (await t.client.account())["balances"] if b["asset"] == "USDC")
    assert (usdc["balance"], usdc["hold"], usdc["available"]) == ("5002", "5002", "0")
    before = await snapshot(t)
    # the smallest possible order still needs 0.00001 + 0.000001 fee reserve
    await rejects(t.client.place_order(market=BTC, side="buy", price="0.1", size="0.0001"),
                  400, "INSUFFICIENT_BALANCE")
    await rejects(t.client.place_order(market=BTC, side="sell", price="60000", size="0.5001"),
                  400, "INSUFFICIENT_BALANCE")
    await rejects(t.client.amend_order(o["order_id"], size="0.1001"), 400,
                  "INSUFFICIENT_BALANCE")
    await rejects(t.client.withdraw("USDC", "0.000001", "too-much"), 400,
                  "INSUFFICIENT_BALANCE")
    assert await snapshot(t) == before
    # a batch: the funded item is placed, the others are refused one by one
    r = await t.client.place_batch([
        {"market": BTC, "side": "sell", "price": "60000", "size": "0.5"},
        {"market": BTC, "side": "sell", "price": "60000", "size": "0.0001"},
        {"market": ETH, "side": "buy", "price": "100", "size": "0.001"},
    ])
    assert [x.get("error", {}).get("code") for x in r["results"]] == [
        None, "INSUFFICIENT_BALANCE", "INSUFFICIENT_BALANCE"]
    assert r["results"][0]["order"]["status"] == "open"


async def test_batch_limits(traders: MakeTrader) -> None:
    t = await traders()
    before = await snapshot(t)
    item = {"market": BTC, "side": "buy", "price": "40000", "size": "0.0001"}
    r = await post_json(t, "/v1/orders/batch", {"orders": [item] * 21})
    check_response(r, 400, "BATCH_TOO_LARGE")
    r = await post_json(t, "/v1/orders/batch", {"orders": [item] * 21, "atomic": True})
    check_response(r, 400, "BATCH_TOO_LARGE")
    assert await snapshot(t) == before
    r = await post_json(t, "/v1/orders/batch", {"orders": [item] * 20})
    assert r.status_code == 200, r.text
    assert [x["order"]["status"] for x in r.json()["results"]] == ["open"] * 20
    assert len((await t.client.get_orders(status="open"))["orders"]) == 20


async def test_empty_batch_is_batch_empty(traders: MakeTrader) -> None:
    t = await traders()
    r = await post_json(t, "/v1/orders/batch", {"orders": []})
    check_response(r, 400, "BATCH_EMPTY")


# --------------------------------------------------------------------------- other accounts

async def test_another_accounts_orders_look_missing(traders: MakeTrader) -> None:
    owner, other = await traders(), await traders()
    live = (await owner.client.place_order(market=BTC, side="buy", price="40000", size="0.01",
                                           client_order_id="mine"))["order"]
    done = (await owner.client.place_order(market=BTC, side="buy", price="40000", size="0.01",
                                           time_in_force="ioc"))["order"]
    assert done["status"] == "cancelled"
    missing = "999999999"

    async def bodies(oid: str) -> list[tuple[int, Any]]:
        out = []
        for method, body in (("GET", b""), ("PATCH", orjson.dumps({"size": "0.001"})),
                             ("DELETE", b"")):
            r = await send(other, method, f"/v1/orders/{oid}", body)
            out.append((r.status_code, r.json()))
        return out

    expected = await bodies(missing)
    for status, body in expected:
        check_body(status, body, 404, "ORDER_NOT_FOUND")
    assert await bodies(live["order_id"]) == expected
    assert await bodies(done["order_id"]) == expected
    r = await send(other, "GET", "/v1/orders/by-client-id/mine")
    assert (r.status_code, r.json()) == (404, expected[0][1])
    r = await post_json(other, "/v1/orders/cancel-batch",
                        {"cancels": [{"order_id": live["order_id"]}, {"order_id": missing}]})
    assert r.status_code == 200, r.text
    assert [x["error"]["code"] for x in r.json()["results"]] == ["ORDER_NOT_FOUND"] * 2
    assert r.json()["results"][0] == r.json()["results"][1]
    # nothing happened to the owner's order
    got = (await owner.client.get_order(live["order_id"]))["order"]
    assert (got["status"], got["size"]) == ("open", "0.01")
    assert (await other.client.get_orders())["orders"] == []
    assert (await other.client.cancel_all()) == {"cancelled": []}
    assert (await owner.client.get_order(live["order_id"]))["order"]["status"] == "open"


# --------------------------------------------------------------------------- keys

async def test_read_only_key_can_read_but_not_trade(traders: MakeTrader) -> None:
    t = await traders()
    o = (await t.client.place_order(**ORDER))["order"]
    r = await post_json(t, "/v1/account/keys", {"permissions": ["read"], "label": "viewer"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert (created["permissions"], created["label"]) == (["read"], "viewer")
    async with AsyncExchangeClient(t.client.base_url, created["api_key"],
                                   created["api_secret"]) as ro:
        acct = await ro.account()
        assert acct["account_id"] == t.account_id
        assert [x["order_id"] for x in (await ro.get_orders())["orders"]] == [o["order_id"]]
        assert (await ro.get_order(o["order_id"]))["order"]["status"] == "open"
        assert (await ro.fills())["fills"] == []
        assert len((await ro.ledger())["entries"]) == 2
        for call in (ro.place_order(**ORDER), ro.cancel_order(o["order_id"]), ro.cancel_all(),
                     ro.amend_order(o["order_id"], size="0.005"),
                     ro.place_batch([ORDER]), ro.withdraw("USDC", "1", "ro-w"),
                     ro.create_key(["read", "trade"]), ro.revoke_key(t.api_key),
                     ro.update_settings(stp="cancel_maker")):
            await rejects(call, 403, "PERMISSION_DENIED")
    trade_only = await t.client.create_key(["read", "trade"])
    async with AsyncExchangeClient(t.client.base_url, trade_only["api_key"],
                                   trade_only["api_secret"]) as tr:
        await rejects(tr.withdraw("USDC", "1", "tr-w"), 403, "PERMISSION_DENIED")
        placed = (await tr.place_order(market=BTC, side="buy", price="40000",
                                       size="0.01"))["order"]
        assert placed["status"] == "open"
    got = (await t.client.get_order(o["order_id"]))["order"]
    assert (got["status"], got["size"]) == ("open", "0.01")
    usdc = next(b for b in (await t.client.account())["balances"] if b["asset"] == "USDC")
    assert usdc["balance"] == "100000"


async def test_keys_and_operator_routes(traders: MakeTrader,
                                        admin: AsyncExchangeClient) -> None:
    t = await traders()
    for call in (t.client.create_account("intruder"),
                 t.client.deposit(t.account_id, "USDC", "1000000", "self-dep"),
                 t.client.set_market_state(BTC, "halted"),
                 t.client.request("GET", "/v1/admin/accounts")):
        await rejects(call, 403, "PERMISSION_DENIED")
    assert next(b for b in (await t.client.account())["balances"]
                if b["asset"] == "USDC")["balance"] == "100000"
    assert (await t.client.request("GET", f"/v1/markets/{BTC}", signed=False))["state"] == "open"
    # the operator key has no trading account
    await rejects(admin.place_order(**ORDER), 403, "PERMISSION_DENIED")
    await rejects(admin.account(), 403, "PERMISSION_DENIED")


async def test_revoked_and_unknown_keys(traders: MakeTrader) -> None:
    t, other = await traders(), await traders()
    key = await t.client.create_key(["read", "trade"], label="bot")
    async with AsyncExchangeClient(t.client.base_url, key["api_key"], key["api_secret"]) as bot:
        assert (await bot.account())["account_id"] == t.account_id
        await rejects(other.client.revoke_key(key["api_key"]), 404, "API_KEY_NOT_FOUND")
        assert (await bot.account())["account_id"] == t.account_id
        assert await t.client.revoke_key(key["api_key"]) == {"api_key": key["api_key"],
                                                             "revoked": True}
        await rejects(bot.account(), 401, "UNKNOWN_API_KEY")
        await rejects(bot.place_order(**ORDER), 401, "UNKNOWN_API_KEY")
        await rejects(t.client.revoke_key(key["api_key"]), 404, "API_KEY_NOT_FOUND")
    async with AsyncExchangeClient(t.client.base_url, "k-does-not-exist", "x" * 64) as ghost:
        body = await rejects(ghost.account(), 401, "UNKNOWN_API_KEY")
    async with AsyncExchangeClient(t.client.base_url, key["api_key"], key["api_secret"]) as old:
        revoked = await rejects(old.account(), 401, "UNKNOWN_API_KEY")
    assert revoked == body  # revoked and unknown keys are indistinguishable
    assert (await t.client.account())["account_id"] == t.account_id


# --------------------------------------------------------------------------- signatures

async def test_bad_signatures(traders: MakeTrader) -> None:
    t = await traders()
    before = await snapshot(t)
    async with AsyncExchangeClient(t.client.base_url, t.api_key, "wrong-secret") as wrong:
        await rejects(wrong.place_order(**ORDER), 401, "INVALID_SIGNATURE")
        await rejects(wrong.account(), 401, "INVALID_SIGNATURE")
    body = orjson.dumps(ORDER)
    # signed for one body, sent with another
    headers = signed_headers(t.api_key, t.api_secret, "POST", "/v1/orders", body)
    tampered = body.replace(b"0.01", b"0.02")
    check_response(await send(t, "POST", "/v1/orders", tampered, headers), 401,
                   "INVALID_SIGNATURE")
    # signed for another path / method / query
    headers = signed_headers(t.api_key, t.api_secret, "GET", "/v1/orders?status=open")
    check_response(await send(t, "GET", "/v1/orders", b"", headers), 401, "INVALID_SIGNATURE")
    headers = signed_headers(t.api_key, t.api_secret, "GET", "/v1/orders")
    check_response(await send(t, "DELETE", "/v1/orders", b"", headers), 401,
                   "INVALID_SIGNATURE")
    # uppercase hex is not the documented signature
    headers = signed_headers(t.api_key, t.api_secret, "GET", "/v1/account")
    headers["X-Signature"] = headers["X-Signature"].upper()
    check_response(await send(t, "GET", "/v1/account", b"", headers), 401, "INVALID_SIGNATURE")
    assert await snapshot(t) == before


async def test_timestamps_and_recv_window(traders: MakeTrader) -> None:
    t = await traders()
    for offset in (-10_000, 10_000, -5_200):
        headers = signed_headers(t.api_key, t.api_secret, "GET", "/v1/account",
                                 timestamp_ms=now_ms() + offset)
        check_response(await send(t, "GET", "/v1/account", b"", headers), 401,
                       "TIMESTAMP_OUTSIDE_RECV_WINDOW")
    headers = signed_headers(t.api_key, t.api_secret, "GET", "/v1/account",
                             timestamp_ms=now_ms() - 10_000, recv_window=20_000)
    r = await send(t, "GET", "/v1/account", b"", headers)
    assert (r.status_code, r.json()["account_id"]) == (200, t.account_id)
    for window in ("60001", "0", "abc"):
        headers = signed_headers(t.api_key, t.api_secret, "GET", "/v1/account")
        headers["X-Recv-Window"] = window
        check_response(await send(t, "GET", "/v1/account", b"", headers), 401,
                       "INVALID_RECV_WINDOW")
    for ts in ("abc", "-5", "1.7e12"):
        headers = signed_headers(t.api_key, t.api_secret, "GET", "/v1/account")
        headers["X-Timestamp"] = ts
        check_response(await send(t, "GET", "/v1/account", b"", headers), 401,
                       "INVALID_TIMESTAMP")


async def test_replayed_request_is_refused(traders: MakeTrader) -> None:
    t = await traders()
    body = orjson.dumps({**ORDER, "price": "40000"})
    headers = signed_headers(t.api_key, t.api_secret, "POST", "/v1/orders", body)
    first = await send(t, "POST", "/v1/orders", body, headers)
    assert first.status_code == 201, first.text
    second = await send(t, "POST", "/v1/orders", body, headers)
    check_response(second, 401, "REPLAYED_SIGNATURE")
    orders = (await t.client.get_orders())["orders"]
    assert [o["order_id"] for o in orders] == [first.json()["order"]["order_id"]]
    # reads are protected the same way
    headers = signed_headers(t.api_key, t.api_secret, "GET", "/v1/account")
    ok = await send(t, "GET", "/v1/account", b"", headers)
    assert ok.status_code == 200
    check_response(await send(t, "GET", "/v1/account", b"", headers), 401, "REPLAYED_SIGNATURE")


async def test_concurrent_identical_requests_from_the_client_library(traders: MakeTrader) -> None:
    t = await traders()
    results = await asyncio.gather(*(t.client.account() for _ in range(50)),
                                   return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []


async def test_missing_auth_headers(traders: MakeTrader) -> None:
    t = await traders()
    body = orjson.dumps(ORDER)
    full = signed_headers(t.api_key, t.api_secret, "POST", "/v1/orders", body)
    for drop in ("X-API-Key", "X-Timestamp", "X-Signature"):
        headers = {k: v for k, v in full.items() if k != drop}
        check_response(await send(t, "POST", "/v1/orders", body, headers), 401,
                       "MISSING_AUTH_HEADERS")
    r = await t.client.http.get(t.client.base_url + "/v1/account")
    check_response(r, 401, "MISSING_AUTH_HEADERS")
    r = await t.client.http.delete(t.client.base_url + "/v1/orders")
    check_response(r, 401, "MISSING_AUTH_HEADERS")
    assert (await t.client.get_orders())["orders"] == []


async def test_unknown_routes_and_methods(server: ServerProcess, traders: MakeTrader) -> None:
    t = await traders()
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        for path in ("/v1/nope", "/v2/orders", "/v1/markets/BTC-USDC/nope", "/"):
            check_response(await http.get(path), 404, "NOT_FOUND")
        check_response(await http.put("/v1/orders"), 405, "METHOD_NOT_ALLOWED")
        check_response(await http.get("/v1/markets/DOGE-USDC/book"), 404, "UNKNOWN_MARKET")
        check_response(await http.get("/v1/markets/BTC-USDC/book?depth=0"), 422,
                       "VALIDATION_ERROR")
        check_response(await http.get("/v1/markets/BTC-USDC/candles?interval=2m"), 422,
                       "VALIDATION_ERROR")
    check_response(await send(t, "GET", "/v1/nope"), 404, "NOT_FOUND")
    for path in ("/v1/orders?market=DOGE-USDC", "/v1/fills?market=DOGE-USDC"):
        check_response(await send(t, "GET", path), 404, "UNKNOWN_MARKET")
    check_response(await send(t, "DELETE", "/v1/orders?market=DOGE-USDC"), 404,
                   "UNKNOWN_MARKET")
    check_response(await send(t, "GET", "/v1/ledger?asset=DOGE"), 400, "UNKNOWN_ASSET")
    check_response(await post_json(t, "/v1/withdrawals",
                                   {"asset": "DOGE", "amount": "1", "withdrawal_id": "d"}),
                   400, "UNKNOWN_ASSET")
    check_response(await post_json(t, "/v1/withdrawals",
                                   {"asset": "USDC", "amount": "0.0000001",
                                    "withdrawal_id": "d"}), 400, "INVALID_AMOUNT")
    check_response(await post_json(t, "/v1/withdrawals",
                                   {"asset": "USDC", "amount": "-1", "withdrawal_id": "d"}),
                   400, "INVALID_AMOUNT")


# --------------------------------------------------------------------------- known bugs

async def test_unknown_query_parameter_is_rejected(traders: MakeTrader) -> None:
    t = await traders()
    await t.client.place_order(market=BTC, side="buy", price="40000", size="0.01")
    await t.client.place_order(market=ETH, side="buy", price="100", size="0.01")
    r = await send(t, "DELETE", "/v1/orders?markt=BTC-USDC")
    check_response(r, 422, "VALIDATION_ERROR")
    assert len((await t.client.get_orders(status="open"))["orders"]) == 2


async def test_withdrawal_ids_are_per_account(traders: MakeTrader) -> None:
    a, b = await traders(), await traders()
    await a.client.withdraw("USDC", "1", "payout-1")
    w = await b.client.withdraw("USDC", "2", "payout-1")
    assert (w["replayed"], w["entry"]["amount"]) == (False, "-2")


async def test_out_of_range_numbers_are_business_rejections(traders: MakeTrader,
                                                            server: ServerProcess) -> None:
    t = await traders()
    try:
        r = await post_json(t, "/v1/orders", {**ORDER, "side": "sell",
                                              "price": "100000000000000000"})
        check_response(r, 400, "INVALID_PRICE")
        r = await send(t, "POST", "/v1/orders", b'{"market": "BTC-USDC", "side": "sell", '
                       b'"price": "60000", "size": "0.01", "time_in_force": "gtt", '
                       b'"expire_ts": 100000000000000000000}')
        check_response(r, 400, "INVALID_EXPIRE_TS")
    finally:
        await wait_healthy(server)


async def wait_healthy(server: ServerProcess, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        while time.monotonic() < deadline:
            r = await http.get("/v1/health")
            if r.status_code == 200:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("server did not become healthy again")



async def test_unicode_digits_and_control_characters_are_refused(traders: MakeTrader) -> None:
    """"²" passes str.isdigit() but is no id (it was a 500); a NUL in a key label failed
    PostgreSQL's commit for the whole batch (it was a 503 and a recovery)."""
    t = await traders()
    check_response(await send(t, "DELETE", "/v1/orders/%C2%B2"), 404, "ORDER_NOT_FOUND")
    r = await post_json(t, "/v1/orders/cancel-batch", {"cancels": [{"order_id": "²"}]})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["error"]["code"] == "ORDER_NOT_FOUND"
    for label in ("a\x00b", "tab\there", "\x7f"):
        check_response(await post_json(t, "/v1/account/keys",
                                       {"permissions": ["read"], "label": label}),
                       422, "VALIDATION_ERROR", ctx=label)
    r = await post_json(t, "/v1/account/keys", {"permissions": ["read"], "label": "Zoë 🚀"})
    assert r.status_code == 201 and r.json()["label"] == "Zoë 🚀", r.text
    assert (await t.client.account())["account_id"] == t.account_id  # still taking commands
