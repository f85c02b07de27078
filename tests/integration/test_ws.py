"""WebSocket `GET /v1/ws` against the real server: book stream, trades, private channels,
order entry, bad frames, cancel-on-disconnect and slow consumers.

The book stream is checked with `BookFollower` (seq/prev_seq chain and CRC32 on every
message) while orders are placed, amended, cancelled and matched over REST, and the
followed book must equal `GET /v1/markets/{m}/book` at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from exchange_client import ApiError, AsyncExchangeClient, BookFollower, ExchangeWebSocket
from exchange_client.signing import now_ms, ws_auth_frame
from tests.integration.conftest import MakeTrader, Trader, start_server
from tests.server import ADMIN_KEY, ADMIN_SECRET, ServerProcess

BTC = "BTC-USDC"
LOT = Decimal("0.001")
OpenSocket = Callable[[], Awaitable[ExchangeWebSocket]]


# --------------------------------------------------------------------------- helpers



@pytest.fixture
async def sockets(server: ServerProcess) -> AsyncIterator[OpenSocket]:
    opened: list[ExchangeWebSocket] = []

    async def open_ws() -> ExchangeWebSocket:
        ws = await ExchangeWebSocket(request_timeout=5).connect(server.ws_url)
        opened.append(ws)
        return ws

    yield open_ws
    for ws in opened:
        await ws.close()


async def drain(ws: ExchangeWebSocket, settle: float = 0.0) -> list[dict[str, Any]]:
    """Every message already received (waiting `settle` seconds for late ones)."""
    out: list[dict[str, Any]] = []
    if settle:
        await asyncio.sleep(settle)
    while ws.pending_messages():
        out.append(await ws.recv(timeout=1))
    return out


async def collect(ws: ExchangeWebSocket, done: Callable[[list[dict[str, Any]]], bool],
                  timeout: float = 5.0) -> list[dict[str, Any]]:
    """Messages until `done(messages)` holds; fails after `timeout` seconds."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not done(out):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; got {out}"
        try:
            out.append(await ws.recv(timeout=left))
        except TimeoutError:
            continue
    return out


def check_error_frame(frame: dict[str, Any], ftype: str, code: str,
                      req_id: str | None = None) -> None:
    assert frame["type"] == ftype, frame
    assert set(frame) <= {"type", "id", "error"}, frame
    assert frame.get("id") == req_id, frame
    assert set(frame["error"]) == {"code", "message"}, frame
    assert frame["error"]["code"] == code, frame
    assert isinstance(frame["error"]["message"], str) and frame["error"]["message"]


async def ws_rejects(call: Awaitable[Any], ftype: str, code: str) -> dict[str, Any]:
    with pytest.raises(ApiError) as info:
        await call
    frame = info.value.body
    check_error_frame(frame, ftype, code, frame.get("id"))
    assert frame.get("id") is not None
    return dict(frame)


async def assert_alive(ws: ExchangeWebSocket) -> None:
    pong = await ws.ping()
    assert pong["type"] == "pong"


def pick(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: d[k] for k in keys}


# --------------------------------------------------------------------------- public stream

async def random_flow(rng: random.Random, a: Trader, b: Trader, steps: int) -> dict[str, int]:
    """Random places, amends, cancels and market orders by two traders (REST)."""
    counts = {"place": 0, "market": 0, "amend": 0, "cancel": 0, "refused": 0}
    for _ in range(steps):
        t = rng.choice((a, b))
        roll = rng.random()
        if roll < 0.4:
            counts["amend" if roll < 0.2 else "cancel"] += 1
            live = (await t.client.get_orders(market=BTC, status="open"))["orders"]
            if not live:
                roll = 0.5
            else:
                o = rng.choice(live)
                if roll >= 0.2:
                    r = await t.client.cancel_order(o["order_id"])
                    assert r["order"]["status"] == "cancelled"
                    continue
                size, filled = Decimal(o["size"]), Decimal(o["filled"])
                if rng.random() < 0.5 and size - filled > LOT:
                    new = filled + max(LOT, ((size - filled) / 2).quantize(LOT))
                    r = await t.client.amend_order(o["order_id"], size=str(new))
                    assert (r["order"]["size"], r["order"]["order_id"]) == (
                        str(new.normalize()), o["order_id"])
                    continue
                price = Decimal(o["price"]) + rng.choice((-1, 1)) * rng.randint(1, 8) * \
                    Decimal("0.5")
                try:
                    r = await t.client.amend_order(o["order_id"], price=str(price))
                except ApiError as exc:
                    assert exc.code == "POST_ONLY_WOULD_TAKE", exc
                    counts["refused"] += 1
                continue
        side = rng.choice(("buy", "sell"))
        size = str(rng.randint(1, 20) * LOT)
        if roll < 0.48:
            counts["market"] += 1
            try:
                await t.client.place_order(market=BTC, side=side, type="market", size=size)
            except ApiError as exc:
                assert exc.code == "NO_LIQUIDITY", exc
                counts["refused"] += 1
            continue
        counts["place"] += 1
        # mostly a two-sided book around 50000, sometimes crossing
        offset = rng.randint(-30, 6) if side == "buy" else rng.randint(-6, 30)
        price = Decimal(50000) + offset * Decimal("0.5")
        tif = rng.choice(("gtc", "gtc", "gtc", "ioc", "post_only"))
        try:
            await t.client.place_order(market=BTC, side=side, price=str(price), size=size,
                                       time_in_force=tif)
        except ApiError as exc:
            assert (tif, exc.code) == ("post_only", "POST_ONLY_WOULD_TAKE"), exc
            counts["refused"] += 1
    return counts


async def follow_until(ws: ExchangeWebSocket, follower: BookFollower, seq: int,
                       sink: list[dict[str, Any]]) -> None:
    """Apply book messages until the follower reaches `seq`; other messages go to `sink`."""
    deadline = time.monotonic() + 5
    while follower.seq != seq:
        assert time.monotonic() < deadline, f"follower at {follower.seq}, book at {seq}"
        msg = await ws.recv(timeout=5)
        if msg["type"] in ("book_snapshot", "book_delta"):
            assert msg["type"] == "book_delta", "only one snapshot is expected"
            follower.apply(msg)  # raises on a gap or a checksum mismatch
        else:
            sink.append(msg)


async def test_book_stream_follows_random_trading(server: ServerProcess, traders: MakeTrader,
                                                  sockets: Any) -> None:
    a, b = await traders(), await traders()
    ws: ExchangeWebSocket = await sockets()
    channels = [f"book:{BTC}", f"trades:{BTC}", f"ticker:{BTC}", f"candles:{BTC}:1m"]
    sub = await ws.subscribe(channels)
    assert (sub["type"], sub["channels"]) == ("subscribed", channels)
    first = await ws.recv(timeout=5)
    assert (first["type"], first["market"]) == ("book_snapshot", BTC)
    assert set(first) == {"type", "market", "seq", "bids", "asks", "checksum"}
    follower = BookFollower(BTC)
    follower.apply(first)

    counts = await random_flow(random.Random(20240601), a, b, 50)
    assert counts["place"] + counts["market"] >= 20 and counts["amend"] + counts["cancel"] >= 10
    others: list[dict[str, Any]] = []
    book = await a.client.book(BTC, depth=1000)
    await follow_until(ws, follower, book["seq"], others)
    assert (follower.bids, follower.asks) == (book["bids"], book["asks"])
    assert follower.checksum() == book["checksum"]
    assert follower.messages_verified >= 25, counts
    assert book["bids"] and book["asks"]

    # everything cancelled: the stream follows to the (now empty for us) book
    await a.client.cancel_all()
    await b.client.cancel_all()
    book = await a.client.book(BTC, depth=1000)
    await follow_until(ws, follower, book["seq"], others)
    assert (follower.bids, follower.asks, follower.checksum()) == (
        book["bids"], book["asks"], book["checksum"])
    others += await drain(ws, settle=0.2)
    assert not [m for m in others if m["type"] in ("book_snapshot", "book_delta")]

    # trades: exactly the trades in the two accounts' fills, as the taker saw them
    fills = (await a.client.fills(market=BTC, limit=1000))["fills"] + \
        (await b.client.fills(market=BTC, limit=1000))["fills"]
    taker = {f["trade_id"]: f for f in fills if f["liquidity"] == "taker"}
    assert {f["trade_id"] for f in fills} == set(taker)
    trades = [m for m in others if m["type"] == "trade"]
    assert len(trades) == len(taker) > 0
    for m in trades:
        f = taker[m["trade_id"]]
        assert pick(m, "market", "price", "size", "side", "ts") == pick(
            f, "market", "price", "size", "side", "ts")
    assert [m["trade_id"] for m in trades] == sorted((m["trade_id"] for m in trades), key=int)
    public = {t["trade_id"]: t for t in (await a.client.trades(BTC, limit=1000))["trades"]}
    for m in trades:
        assert {k: v for k, v in m.items() if k != "type"} == public[m["trade_id"]]

    # ticker and candle messages came with the trades and agree with the last one
    tickers = [m for m in others if m["type"] == "ticker"]
    candles = [m for m in others if m["type"] == "candle"]
    assert tickers and candles
    assert tickers[-1]["last"] == trades[-1]["price"]
    assert candles[-1]["close"] == trades[-1]["price"]
    assert (candles[-1]["market"], candles[-1]["interval"]) == (BTC, "1m")
    rest_candle = (await a.client.candles(BTC, "1m", limit=1))["candles"][-1]
    assert rest_candle == {k: v for k, v in candles[-1].items() if k != "type"}
    assert {m["type"] for m in others} == {"trade", "ticker", "candle"}


# --------------------------------------------------------------------------- private channels

async def test_private_channels(traders: MakeTrader, sockets: Any) -> None:
    a, b = await traders(), await traders()
    wa, wb = await sockets(), await sockets()
    auth = await wa.auth(a.api_key, a.api_secret)
    assert auth == {"authenticated": True, "account_id": a.account_id,
                    "permissions": ["read", "trade", "withdraw"], "cancel_on_disconnect": False}
    await wb.auth(b.api_key, b.api_secret)
    for ws in (wa, wb):
        sub = await ws.subscribe(["orders", "fills", "account"])
        assert sub["channels"] == ["orders", "fills", "account"]

    ask = (await a.client.place_order(market=BTC, side="sell", price="50000",
                                      size="0.1"))["order"]
    bid = (await b.client.place_order(market=BTC, side="buy", price="50000",
                                      size="0.04"))["order"]
    await a.client.cancel_order(ask["order_id"])

    def enough(n_orders: int, n_fills: int, n_balances: int) -> Callable[[list[Any]], bool]:
        def done(msgs: list[dict[str, Any]]) -> bool:
            kinds = [m["type"] for m in msgs]
            return (kinds.count("order"), kinds.count("fill"), kinds.count("balance")) == (
                n_orders, n_fills, n_balances)
        return done

    got_a = await collect(wa, enough(3, 1, 3))
    got_a += await drain(wa, settle=0.3)
    got_a = [m for m in got_a if m["type"] != "health"]  # (its own test, below)
    orders = [m["order"] for m in got_a if m["type"] == "order"]
    assert [(o["order_id"], o["status"], o["filled"], o["remaining"]) for o in orders] == [
        (ask["order_id"], "open", "0", "0.1"),
        (ask["order_id"], "partially_filled", "0.04", "0.06"),
        (ask["order_id"], "cancelled", "0.04", "0")]
    fills = [m for m in got_a if m["type"] == "fill"]
    assert [pick(f, "order_id", "side", "price", "size", "fee", "liquidity") for f in fills] == [
        {"order_id": ask["order_id"], "side": "sell", "price": "50000", "size": "0.04",
         "fee": "0.2", "liquidity": "maker"}]
    balances = [m for m in got_a if m["type"] == "balance"]
    assert [(m["asset"], m["amount"], m["balance_after"], m["reason"]) for m in balances] == [
        ("USDC", "2000", "102000", "trade"), ("BTC", "-0.04", "1.96", "trade"),
        ("USDC", "-0.2", "101999.8", "fee")]
    assert {m["account_id"] for m in balances} == {a.account_id}
    assert len(got_a) == 7
    seqs = [m["seq"] for m in got_a]
    assert seqs == sorted(seqs)

    got_b = await collect(wb, enough(1, 1, 3))
    got_b += await drain(wb, settle=0.1)
    got_b = [m for m in got_b if m["type"] != "health"]
    assert [(m["order"]["order_id"], m["order"]["status"]) for m in got_b
            if m["type"] == "order"] == [(bid["order_id"], "filled")]
    assert [pick(m, "order_id", "size", "fee", "liquidity") for m in got_b
            if m["type"] == "fill"] == [
        {"order_id": bid["order_id"], "size": "0.04", "fee": "0.8", "liquidity": "taker"}]
    assert [(m["asset"], m["amount"], m["reason"]) for m in got_b if m["type"] == "balance"] == [
        ("USDC", "-2000", "trade"), ("BTC", "0.04", "trade"), ("USDC", "-0.8", "fee")]
    assert len(got_b) == 5
    # the fill over the socket is the fill over REST
    rest_fill = (await a.client.fills(market=BTC, limit=1))["fills"][0]
    assert {k: v for k, v in fills[0].items() if k not in ("type", "seq")} == rest_fill

    # unsubscribing stops the flow
    await wa.unsubscribe(["orders", "fills", "account"])
    await a.client.place_order(market=BTC, side="sell", price="60000", size="0.01")
    assert [m for m in await drain(wa, settle=0.3) if m["type"] != "health"] == []


# --------------------------------------------------------------------------- order entry

async def test_order_entry_over_the_socket(traders: MakeTrader, sockets: Any) -> None:
    a, b = await traders(), await traders()
    ws: ExchangeWebSocket = await sockets()
    await ws.auth(a.api_key, a.api_secret)

    placed = await ws.place_order(market=BTC, side="sell", price="50000", size="0.1",
                                  client_order_id="ws-1")
    o = placed["order"]
    assert placed["fills"] == []
    assert pick(o, "client_order_id", "price", "size", "remaining", "status") == {
        "client_order_id": "ws-1", "price": "50000", "size": "0.1", "remaining": "0.1",
        "status": "open"}
    assert (await a.client.get_order(o["order_id"]))["order"] == o

    amended = (await ws.amend_order(o["order_id"], size="0.05"))["order"]
    assert (amended["order_id"], amended["size"], amended["remaining"]) == (
        o["order_id"], "0.05", "0.05")
    # a taker over the socket gets its fills in the result
    await b.client.place_order(market=BTC, side="buy", price="49000", size="0.02")
    taken = await ws.place_order(market=BTC, side="sell", price="49000", size="0.02",
                                 time_in_force="ioc")
    assert (taken["order"]["status"], taken["order"]["avg_fill_price"]) == ("filled", "49000")
    assert [pick(f, "price", "size", "fee", "liquidity") for f in taken["fills"]] == [
        {"price": "49000", "size": "0.02", "fee": "0.392", "liquidity": "taker"}]

    batch = await ws.place_batch([
        {"market": BTC, "side": "sell", "price": "51000", "size": "0.01"},
        {"market": BTC, "side": "sell", "price": "51000.05", "size": "0.01"},
        {"market": BTC, "side": "sell", "price": "52000", "size": "0.01"},
    ])
    results = batch["results"]
    assert [x["order"]["status"] if "order" in x else x["error"]["code"] for x in results] == [
        "open", "PRICE_NOT_ON_TICK", "open"]

    cancelled = (await ws.cancel_order(o["order_id"]))["order"]
    assert (cancelled["order_id"], cancelled["status"]) == (o["order_id"], "cancelled")
    assert (await ws.cancel_all(BTC)) == {"cancelled": [results[0]["order"]["order_id"],
                                                        results[2]["order"]["order_id"]]}
    assert (await ws.cancel_all()) == {"cancelled": []}
    assert (await a.client.get_orders(status="open"))["orders"] == []

    # errors are responses carrying the request id
    await ws_rejects(ws.place_order(market=BTC, side="sell", price="50000.05", size="0.1"),
                     "response", "PRICE_NOT_ON_TICK")
    await ws_rejects(ws.place_order(market="DOGE-USDC", side="sell", price="1", size="1"),
                     "response", "UNKNOWN_MARKET")
    await ws_rejects(ws.place_order(market=BTC, side="sell", price="50000", size="9"),
                     "response", "INSUFFICIENT_BALANCE")
    await ws_rejects(ws.place_order(market=BTC, side="sell", price="50000", size=1),
                     "response", "VALIDATION_ERROR")
    await ws_rejects(ws.place_order(market=BTC, side="sell", price="50000", size="0.1",
                                    leverage=3), "response", "VALIDATION_ERROR")
    await ws_rejects(ws.cancel_order(o["order_id"]), "response", "ORDER_NOT_LIVE")
    await ws_rejects(ws.cancel_order("999999999"), "response", "ORDER_NOT_FOUND")
    await ws_rejects(ws.request("order.cancel", {"order_id": 5}), "response", "VALIDATION_ERROR")
    # "²" passes str.isdigit(): once an exception past the checks that closed the socket
    await ws_rejects(ws.cancel_order("²"), "response", "ORDER_NOT_FOUND")
    await ws_rejects(ws.request("order.amend", {"size": "0.1"}), "response", "VALIDATION_ERROR")
    await ws_rejects(ws.amend_order(o["order_id"], size="0.01"), "response", "ORDER_NOT_LIVE")
    await ws_rejects(ws.place_batch([{"market": BTC, "side": "buy", "price": "1",
                                      "size": "0.001"}] * 21), "response", "BATCH_TOO_LARGE")
    await ws_rejects(ws.request("order.explode", {}), "response", "UNKNOWN_OP")
    # another account's order over the socket: like a missing one
    other = (await b.client.place_order(market=BTC, side="buy", price="40000",
                                        size="0.01"))["order"]
    await ws_rejects(ws.cancel_order(other["order_id"]), "response", "ORDER_NOT_FOUND")
    await ws_rejects(ws.amend_order(other["order_id"], size="0.02"), "response",
                     "ORDER_NOT_FOUND")
    assert (await b.client.get_order(other["order_id"]))["order"]["status"] == "open"
    await assert_alive(ws)


async def batches_total(server: ServerProcess) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(server.base_url + "/metrics")).text
    return float(re.search(r"^exchange_batches_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


async def test_pipelined_frames_run_in_the_order_sent(server: ServerProcess,
                                                      traders: MakeTrader,
                                                      sockets: Any) -> None:
    """Frames sent without waiting for replies: each takes its place in the sequence in
    the order received, even when an earlier one waits on a read (an amend looks the
    order up first), and every one is answered under its id. They share group commits:
    a socket does not wait for one order's commit before reading the next."""
    a = await traders()
    ws: ExchangeWebSocket = await sockets()
    await ws.auth(a.api_key, a.api_secret)
    first = (await ws.place_order(market=BTC, side="buy", price="40000",
                                  size="0.01"))["order"]
    frames: list[dict[str, Any]] = [
        {"op": "order.amend", "id": "amend", "order_id": first["order_id"], "size": "0.02"},
        {"op": "order.cancel", "id": "cancel", "order_id": first["order_id"]},
        *({"op": "order.place", "id": f"p{i}", "market": BTC, "side": "buy",
           "price": str(39000 + i), "size": "0.001"} for i in range(12)),
        {"op": "ping", "id": "ping"},
        {"op": "order.place", "id": "bad", "market": BTC, "side": "buy", "price": "1.001",
         "size": "0.001"},
    ]
    before = await batches_total(server)
    for frame in frames:
        await ws.send(frame)
    got = await collect(ws, lambda ms: len(ms) == len(frames))
    assert await batches_total(server) - before < 14  # 14 commands; one by one: >= 14
    by_id = {m["id"]: m for m in got}
    assert set(by_id) == {f["id"] for f in frames}
    amended = by_id["amend"]["result"]["order"]
    assert (amended["size"], amended["status"]) == ("0.02", "open")
    cancelled = by_id["cancel"]["result"]["order"]
    assert (cancelled["size"], cancelled["status"]) == ("0.02", "cancelled")
    placed = [by_id[f"p{i}"]["result"]["order"] for i in range(12)]
    assert [o["price"] for o in placed] == [str(39000 + i) for i in range(12)]
    ids = [int(o["order_id"]) for o in placed]
    assert ids == sorted(ids) and len(set(ids)) == 12 and ids[0] > int(first["order_id"])
    assert by_id["ping"]["type"] == "pong"
    assert by_id["bad"]["error"]["code"] == "PRICE_NOT_ON_TICK"
    live = (await a.client.get_orders(status="open"))["orders"]
    assert sorted(int(o["order_id"]) for o in live) == ids


async def test_request_many_sends_at_once_and_returns_each_reply(
        server: ServerProcess, traders: MakeTrader, sockets: Any) -> None:
    a = await traders()
    ws: ExchangeWebSocket = await sockets()
    await ws.auth(a.api_key, a.api_secret)
    before = await batches_total(server)
    replies = await ws.request_many([
        ("order.place", {"market": BTC, "side": "buy", "price": "40000", "size": "0.01",
                         "client_order_id": "rm-1"}),
        ("order.cancel_all", {"market": BTC}),
        ("order.place", {"market": BTC, "side": "buy", "price": "40000.001", "size": "0.01"}),
        ("order.batch", {"orders": [{"market": BTC, "side": "buy", "price": "39000",
                                     "size": "0.01"}] * 2}),
        ("ping", None),
    ])
    assert await batches_total(server) - before < 4  # 3 commands; one by one: >= 3
    placed, cancelled, refused, batch, pong = replies
    assert (placed["order"]["client_order_id"], placed["order"]["status"]) == ("rm-1", "open")
    assert cancelled == {"cancelled": [placed["order"]["order_id"]]}  # ran after the place
    assert isinstance(refused, ApiError) and refused.code == "PRICE_NOT_ON_TICK"
    assert [r["order"]["status"] for r in batch["results"]] == ["open", "open"]
    assert pong["type"] == "pong"
    live = (await a.client.get_orders(status="open"))["orders"]
    assert sorted(o["order_id"] for o in live) == sorted(
        r["order"]["order_id"] for r in batch["results"])


async def test_read_only_key_cannot_trade_over_the_socket(traders: MakeTrader,
                                                          sockets: Any) -> None:
    a = await traders()
    key = await a.client.create_key(["read"])
    ws: ExchangeWebSocket = await sockets()
    auth = await ws.auth(key["api_key"], key["api_secret"])
    assert (auth["account_id"], auth["permissions"]) == (a.account_id, ["read"])
    await ws_rejects(ws.place_order(market=BTC, side="sell", price="50000", size="0.1"),
                     "response", "PERMISSION_DENIED")
    await ws_rejects(ws.cancel_all(), "response", "PERMISSION_DENIED")
    assert (await ws.subscribe(["orders"]))["channels"] == ["orders"]
    assert (await a.client.get_orders())["orders"] == []


async def test_duplicate_client_id_over_the_socket_names_the_order(traders: MakeTrader,
                                                                   sockets: Any) -> None:
    a = await traders()
    ws: ExchangeWebSocket = await sockets()
    await ws.auth(a.api_key, a.api_secret)
    o = (await ws.place_order(market=BTC, side="buy", price="40000", size="0.01",
                              client_order_id="dup"))["order"]
    # an identical retry is idempotent: the live order, nothing new
    again = await ws.place_order(market=BTC, side="buy", price="40000", size="0.01",
                                 client_order_id="dup")
    assert again["replayed"] is True and again["order"]["order_id"] == o["order_id"]
    assert again["order"]["status"] == "open" and again["fills"] == []
    # the same client id with other parameters is a clash that names the live order
    with pytest.raises(ApiError) as info:
        await ws.place_order(market=BTC, side="buy", price="40001", size="0.01",
                             client_order_id="dup")
    assert info.value.code == "DUPLICATE_CLIENT_ORDER_ID"
    assert info.value.body["error"].get("order_id") == o["order_id"]


# --------------------------------------------------------------------------- bad frames

async def test_bad_frames_get_errors_and_the_socket_stays_open(server: ServerProcess,
                                                               traders: MakeTrader,
                                                               sockets: Any) -> None:
    a = await traders()
    ws: ExchangeWebSocket = await sockets()
    assert ws.conn is not None

    async def next_error(code: str, req_id: str | None = None) -> None:
        frame = await ws.recv(timeout=5)
        check_error_frame(frame, "error", code, req_id)
        await assert_alive(ws)

    await ws.conn.send("this is not json")
    await next_error("MALFORMED_JSON")
    await ws.conn.send("[1, 2, 3]")
    await next_error("BAD_FRAME")
    await ws.conn.send('"ping"')
    await next_error("BAD_FRAME")
    await ws.send({"op": "fly", "id": "x-1"})
    await next_error("UNKNOWN_OP", "x-1")
    await ws.send({"op": 5})
    await next_error("UNKNOWN_OP")
    await ws.send({"channels": [f"book:{BTC}"]})
    await next_error("UNKNOWN_OP")
    await ws.conn.send("x" * 70_000)
    await next_error("FRAME_TOO_LARGE")
    for channels in (["book:DOGE-USDC"], [f"candles:{BTC}:2m"], ["book"], [f"book:{BTC}", "x"]):
        await ws_rejects(ws.subscribe(channels), "error", "UNKNOWN_CHANNEL")
        await assert_alive(ws)
    await ws_rejects(ws.request("subscribe", {"channels": f"book:{BTC}"}), "error",
                     "VALIDATION_ERROR")
    await ws_rejects(ws.request("subscribe", {"channels": []}), "error", "VALIDATION_ERROR")
    for channel in ("orders", "fills", "account", "margin"):
        await ws_rejects(ws.subscribe([channel]), "error", "AUTH_REQUIRED")
    await ws_rejects(ws.place_order(market=BTC, side="buy", price="40000", size="0.01"),
                     "response", "AUTH_REQUIRED")
    await ws_rejects(ws.cancel_all(), "response", "AUTH_REQUIRED")
    await assert_alive(ws)

    # bad auth frames: wrong signature, stale timestamp, replay, unknown key, operator key
    frame = ws_auth_frame(a.api_key, a.api_secret)
    await ws_rejects(ws.request("auth", {**frame, "signature": "0" * 64, "op": "auth"}),
                     "error", "INVALID_SIGNATURE")
    stale = ws_auth_frame(a.api_key, a.api_secret, timestamp_ms=now_ms() - 60_000)
    await ws_rejects(ws.request("auth", stale), "error", "TIMESTAMP_OUTSIDE_RECV_WINDOW")
    await ws_rejects(ws.request("auth", ws_auth_frame("k-nobody", "s")), "error",
                     "UNKNOWN_API_KEY")
    await ws_rejects(ws.request("auth", ws_auth_frame(ADMIN_KEY, ADMIN_SECRET)), "error",
                     "PERMISSION_DENIED")
    await ws_rejects(ws.request("auth", {"api_key": a.api_key}), "error",
                     "MISSING_AUTH_HEADERS")
    # still not authenticated after all of that
    await ws_rejects(ws.subscribe(["orders"]), "error", "AUTH_REQUIRED")
    ok = await ws.request("auth", frame)
    assert (ok["authenticated"], ok["account_id"]) == (True, a.account_id)
    # the same signed auth frame on another socket is a replay
    other: ExchangeWebSocket = await sockets()
    await ws_rejects(other.request("auth", frame), "error", "REPLAYED_SIGNATURE")
    await assert_alive(other)

    # binary frames are read as text; the socket still works for real requests
    await ws.conn.send(b'{"op": "ping", "id": "bin"}')
    assert await ws.recv(timeout=5) == {"type": "pong", "id": "bin"}
    assert (await ws.subscribe(["orders", f"book:{BTC}"]))["channels"] == ["orders",
                                                                          f"book:{BTC}"]
    snap = await ws.recv(timeout=5)
    assert snap["type"] == "book_snapshot"
    assert ws.close_code is None
    assert await drain(ws, settle=0.1) == []


# --------------------------------------------------------------------------- disconnect

async def test_cancel_on_disconnect(server: ServerProcess, traders: MakeTrader) -> None:
    a, b = await traders(), await traders()
    # without the flag, closing the socket leaves the orders alone
    keep = await ExchangeWebSocket().connect(server.ws_url)
    assert (await keep.auth(a.api_key, a.api_secret))["cancel_on_disconnect"] is False
    kept = (await keep.place_order(market=BTC, side="buy", price="40000",
                                   size="0.01"))["order"]
    await keep.close()
    await asyncio.sleep(0.3)
    assert (await a.client.get_order(kept["order_id"]))["order"]["status"] == "open"
    other = (await b.client.place_order(market=BTC, side="buy", price="40000",
                                        size="0.01"))["order"]

    ws = await ExchangeWebSocket().connect(server.ws_url)
    auth = await ws.auth(a.api_key, a.api_secret, cancel_on_disconnect=True)
    assert auth["cancel_on_disconnect"] is True
    placed = (await ws.place_order(market=BTC, side="buy", price="40100",
                                   size="0.01"))["order"]
    assert placed["status"] == "open"
    assert (await a.client.get_order(placed["order_id"]))["order"]["status"] == "open"
    await ws.close()
    deadline = time.monotonic() + 3
    order = placed
    while time.monotonic() < deadline:
        order = (await a.client.get_order(placed["order_id"]))["order"]
        if order["status"] != "open":
            break
        await asyncio.sleep(0.05)
    assert (order["status"], order["remaining"], order["cancel_reason"]) == (
        "cancelled", "0", "cancel_on_disconnect")
    # the scope is the account (app/ws/endpoint.py): the older order goes too
    got = (await a.client.get_order(kept["order_id"]))["order"]
    assert (got["status"], got["cancel_reason"]) == ("cancelled", "cancel_on_disconnect")
    usdc = next(x for x in (await a.client.account())["balances"] if x["asset"] == "USDC")
    assert (usdc["hold"], usdc["available"]) == ("0", "100000")
    # other accounts are untouched
    assert (await b.client.get_order(other["order_id"]))["order"]["status"] == "open"


async def all_cancelled(trader: Trader, n: int, within: float = 5.0) -> list[dict[str, Any]]:
    """The account's orders once there are `n`, all cancelled (or as they are after
    `within` seconds, for the caller's assertion to show)."""
    deadline = time.monotonic() + within
    orders: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        orders = (await trader.client.get_orders(limit=100))["orders"]
        if len(orders) == n and all(o["status"] == "cancelled" for o in orders):
            break
        await asyncio.sleep(0.05)
    return orders


async def test_cancel_on_disconnect_waits_for_orders_already_read(
        server: ServerProcess, traders: MakeTrader) -> None:
    """Orders sent just before the close are queued before the cancel-all, even behind an
    amend that waits on a read: none is left resting."""
    a = await traders()
    ws = await ExchangeWebSocket().connect(server.ws_url)
    await ws.auth(a.api_key, a.api_secret, cancel_on_disconnect=True)
    first = (await ws.place_order(market=BTC, side="buy", price="40000",
                                  size="0.01"))["order"]
    await ws.send({"op": "order.amend", "id": "amend", "order_id": first["order_id"],
                   "size": "0.02"})
    for i in range(10):
        await ws.send({"op": "order.place", "id": f"p{i}", "market": BTC, "side": "buy",
                       "price": str(39000 + i), "size": "0.001"})
    await ws.close()
    orders = await all_cancelled(a, 11)
    assert sorted((o["price"], o["status"], o["cancel_reason"]) for o in orders) == sorted(
        [("40000", "cancelled", "cancel_on_disconnect")]
        + [(str(39000 + i), "cancelled", "cancel_on_disconnect") for i in range(10)])


async def test_cancel_on_disconnect_when_auth_orders_and_close_arrive_together(
        server: ServerProcess, traders: MakeTrader) -> None:
    """auth (cancel_on_disconnect), orders and the close frame in one TCP write: the
    server reads all three before any frame has run; the orders must still be cancelled
    (the session waits for the frames read before the close, the auth among them)."""
    a = await traders()
    for attempt in range(3):
        client = ClientProtocol(parse_uri(server.ws_url))
        sock = socket.socket()
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        try:
            client.send_request(client.connect())
            sock.sendall(b"".join(client.data_to_send()))
            while client.state.name == "CONNECTING":
                client.receive_data(sock.recv(4096))
            client.send_text(orjson.dumps(ws_auth_frame(a.api_key, a.api_secret,
                                                        cancel_on_disconnect=True)))
            for i in range(2):
                client.send_text(orjson.dumps({
                    "op": "order.place", "id": f"p{i}", "market": BTC, "side": "buy",
                    "price": str(30000 + 10 * attempt + i), "size": "0.001"}))
            client.send_close(1000)
            sock.sendall(b"".join(client.data_to_send()))  # one write
            await asyncio.sleep(0.5)
        finally:
            sock.close()
    orders = await all_cancelled(a, 6)
    assert sorted((o["status"], o["cancel_reason"]) for o in orders) == [
        ("cancelled", "cancel_on_disconnect")] * 6


# --------------------------------------------------------------------------- slow consumer

class RawSocket:
    """A WebSocket client that reads only when told to (websockets' sans-I/O protocol)."""

    def __init__(self, server: ServerProcess) -> None:
        self.protocol = ClientProtocol(parse_uri(server.ws_url))
        self.sock = socket.socket()
        # a tiny receive buffer so that not reading pushes back on the server quickly
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", server.port))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        while self.protocol.handshake_exc is None and self.protocol.state.name == "CONNECTING":
            self.protocol.receive_data(self.sock.recv(4096))
        assert self.protocol.handshake_exc is None
        self.frames: list[Frame] = []
        self._take()

    def _take(self) -> None:
        self.frames += [e for e in self.protocol.events_received() if isinstance(e, Frame)]

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def send(self, msg: dict[str, Any]) -> None:
        self.protocol.send_text(orjson.dumps(msg))
        self._flush()

    def read_until_closed(self) -> None:
        """Read everything the server sent, up to its close frame (blocking; stops early
        when nothing arrives for the socket timeout)."""
        while self.protocol.close_rcvd is None:
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                return
            if not data:
                self.protocol.receive_eof()
                break
            self.protocol.receive_data(data)
            self._take()

    def messages(self) -> list[dict[str, Any]]:
        return [orjson.loads(f.data) for f in self.frames if f.opcode is Opcode.TEXT]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


async def slow_disconnects(http: httpx.AsyncClient) -> int:
    text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("exchange_ws_slow_disconnects_total"):
            return int(float(line.split()[-1]))
    raise AssertionError("no slow-disconnect metric")


@pytest.fixture(scope="module", params=["direct", "queued"])
def slow_server(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A separate SQLite server whose WebSocket clients may lag by only 64 KiB of frames
    written straight to the socket (the default way), or, with direct writes off, by 5
    queued frames."""
    env = {"EXCHANGE_WS_BUFFER_BYTES": "65536", "EXCHANGE_WS_QUEUE_SIZE": "5",
           "EXCHANGE_WS_DIRECT": "true" if request.param == "direct" else "false"}
    gen = start_server("sqlite", tmp_path_factory.mktemp("slow"), env)
    srv = next(gen)
    try:
        yield srv
    finally:
        gen.close()


@contextlib.asynccontextmanager
async def slow_trader(srv: ServerProcess) -> AsyncIterator[AsyncExchangeClient]:
    async with AsyncExchangeClient(srv.base_url, ADMIN_KEY, ADMIN_SECRET) as admin:
        info = await admin.create_account("slow-test")
        await admin.deposit(info["account_id"], "USDC", "10000000",
                            f"slow-dep-{info['account_id']}")
    async with AsyncExchangeClient(srv.base_url, info["api_key"], info["api_secret"]) as trader:
        yield trader


async def test_slow_consumer_is_closed_with_4008(slow_server: ServerProcess) -> None:
    """A socket that does not read is closed with 4008; a reading one is not disturbed."""
    async with slow_trader(slow_server) as trader, \
            httpx.AsyncClient(base_url=slow_server.base_url) as http:
        await run_slow_consumer(slow_server, trader, http)


async def test_a_burst_that_fits_a_direct_socket_overflows_a_5_frame_queue(
        slow_server: ServerProcess, request: pytest.FixtureRequest) -> None:
    """One subscribe to 6 books answers with 7 frames at once: a reading client keeps
    them all when frames go straight to its socket, and is dropped by a 5-frame queue
    (which tells that the server really writes directly by default)."""
    ws = await ExchangeWebSocket(request_timeout=5).connect(slow_server.ws_url)
    try:
        books = [f"book:{m}" for m in
                 ("BTC-USDC", "ETH-USDC", "SOL-USDC", "BTC-PERP", "ETH-PERP", "SOL-PERP")]
        if request.node.callspec.params["slow_server"] == "direct":
            assert (await ws.subscribe(books))["channels"] == books
            snapshots = [await ws.recv(timeout=5) for _ in books]
            assert [m["type"] for m in snapshots] == ["book_snapshot"] * 6
            await assert_alive(ws)
        else:
            with pytest.raises(ConnectionClosed):
                await ws.subscribe(books)
            assert ws.close_code == 4008
    finally:
        await ws.close()


async def test_slow_consumer_that_keeps_not_reading_is_still_closed(
        slow_server: ServerProcess) -> None:
    async with slow_trader(slow_server) as trader, \
            httpx.AsyncClient(base_url=slow_server.base_url) as http:
        before = await slow_disconnects(http)
        slow = RawSocket(slow_server)
        try:
            slow.send({"op": "subscribe", "channels": [f"book:{BTC}"]})
            for rounds in range(1, 2000):
                slow.send({"op": "unsubscribe", "channels": [f"book:{BTC}"]})
                slow.send({"op": "subscribe", "channels": [f"book:{BTC}"]})
                await trader.place_order(market=BTC, side="buy", price=str(3000 + rounds),
                                         size="0.001")
                if await slow_disconnects(http) > before:
                    break
            assert await slow_disconnects(http) == before + 1
            await asyncio.sleep(6)  # longer than the server waits to send its close frame
            slow.sock.settimeout(3)
            await asyncio.to_thread(slow.read_until_closed)
            close = slow.protocol.close_rcvd
            assert close is not None, "the dropped socket was never closed"
            assert close.code == 4008
        finally:
            slow.close()


async def run_slow_consumer(srv: ServerProcess, trader: AsyncExchangeClient,
                            http: httpx.AsyncClient) -> None:
    fast = await ExchangeWebSocket(request_timeout=5).connect(srv.ws_url)
    slow = RawSocket(srv)
    try:
        await fast.subscribe([f"book:{BTC}"])
        follower = BookFollower(BTC)
        follower.apply(await fast.recv(timeout=5))
        slow.send({"op": "subscribe", "channels": [f"book:{BTC}"]})
        changes = 0

        async def change(body: Any) -> None:
            nonlocal changes
            if isinstance(body, list):
                await trader.place_batch(body)
            else:
                await trader.place_order(**body)
            changes += 1
            while fast.pending_messages():
                follower.apply(await fast.recv(timeout=1))

        # a deep book (1200 levels) makes every snapshot large
        levels = len((await trader.book(BTC, depth=1000))["bids"])
        assert levels == 0, "this test runs first on its server"
        for r in range(60):
            await change([{"market": BTC, "side": "buy", "price": str(10000 + 20 * r + i),
                           "size": "0.001"} for i in range(20)])
        # the slow socket asks for snapshots but never reads; the book keeps changing
        reader: asyncio.Future[None] | None = None
        rounds = dropped_at = 0
        while reader is None or changes < 220:
            rounds += 1
            assert rounds < 2000, "the slow consumer was never disconnected"
            if reader is None:
                slow.send({"op": "unsubscribe", "channels": [f"book:{BTC}"]})
                slow.send({"op": "subscribe", "channels": [f"book:{BTC}"]})
            await change({"market": BTC, "side": "buy", "price": str(5000 + rounds),
                          "size": "0.001"})
            if reader is None and await slow_disconnects(http) == 1:
                # read it now: the server gives up its close frame after a few seconds
                reader = asyncio.ensure_future(asyncio.to_thread(slow.read_until_closed))
                dropped_at = rounds
        await asyncio.wait_for(reader, 15)
        print(f"slow consumer dropped at round {dropped_at}; {changes} book changes in all")
        close = slow.protocol.close_rcvd
        assert close is not None, "no close frame from the server"
        assert (close.code, close.reason) == (4008, "slow consumer: send queue full")
        # what the slow socket did get before the close was a valid stream
        own = BookFollower(BTC)
        kinds = []
        for msg in slow.messages():
            kinds.append(msg["type"])
            if msg["type"] in ("book_snapshot", "book_delta"):
                own.apply(msg)
        assert kinds[:2] == ["subscribed", "book_snapshot"] and own.messages_verified >= 2

        # the reading socket kept a gapless, checksum-verified stream through all of it
        book = await trader.book(BTC, depth=1000)
        deadline = time.monotonic() + 5
        while follower.seq != book["seq"]:
            assert time.monotonic() < deadline
            follower.apply(await fast.recv(timeout=5))
        assert follower.messages_verified == changes + 1
        # REST gives at most 1000 levels; the follower has all of them
        assert len(follower.bids) == 1200 + rounds and follower.asks == book["asks"] == []
        assert (follower.bids[:1000], follower.checksum()) == (book["bids"], book["checksum"])
        await assert_alive(fast)
        assert await slow_disconnects(http) == 1
    finally:
        slow.close()
        await fast.close()
