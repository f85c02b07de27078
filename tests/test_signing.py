"""Signing, book checksum, BookFollower, and the REST/WS client plumbing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import zlib
from typing import Any

import httpx
import orjson
import pytest

from app.auth import Authenticator, KeyRecord
from exchange_client import (
    ApiError,
    AsyncExchangeClient,
    BookChecksumError,
    BookFollower,
    BookGapError,
    ExchangeClient,
    ExchangeWebSocket,
    auth_headers,
    book_checksum,
    checksum_string,
    sign,
    ws_auth_frame,
)

# ---------------------------------------------------------------- signing


def test_sign_known_vector() -> None:
    body = '{"market":"BTC-USD"}'
    payload = b'1700000000000POST/v1/orders{"market":"BTC-USD"}'
    expected = hmac.new(b"secret", payload, hashlib.sha256).hexdigest()
    assert expected == "9063276e4fb98371c01b5d5afecade5748f862bac845078b3805901800f5b2af"
    assert sign("secret", 1700000000000, "POST", "/v1/orders", body) == expected
    assert sign("secret", 1700000000000, "post", "/v1/orders", body.encode()) == expected


def test_sign_empty_body_and_query() -> None:
    payload = b"1700000000000GET/v1/orders?market=BTC-USD&status=open"
    expected = hmac.new(b"k", payload, hashlib.sha256).hexdigest()
    assert sign("k", 1700000000000, "GET", "/v1/orders?market=BTC-USD&status=open", b"") == (
        expected
    )


def test_auth_headers_and_ws_frame() -> None:
    h = auth_headers("key1", "s", "DELETE", "/v1/orders/7", b"", timestamp_ms=5, recv_window=9000)
    assert h == {
        "X-API-Key": "key1",
        "X-Timestamp": "5",
        "X-Signature": hmac.new(b"s", b"5DELETE/v1/orders/7", hashlib.sha256).hexdigest(),
        "X-Recv-Window": "9000",
    }
    assert "X-Recv-Window" not in auth_headers("k", "s", "GET", "/v1/account")
    frame = ws_auth_frame("key1", "s", timestamp_ms=42, cancel_on_disconnect=True)
    assert frame == {
        "op": "auth",
        "api_key": "key1",
        "timestamp": 42,
        "signature": hmac.new(b"s", b"42GET/v1/ws", hashlib.sha256).hexdigest(),
        "cancel_on_disconnect": True,
    }


# ---------------------------------------------------------------- checksum


def test_checksum_worked_example() -> None:
    # asks "101.5"/"2" then bids "100"/"0.25": "1015" "2" "100" "25"
    bids, asks = [["100", "0.25"]], [["101.5", "2"]]
    assert checksum_string(bids, asks) == "1015210025"
    assert book_checksum(bids, asks) == zlib.crc32(b"1015210025") == 1137058375


def test_checksum_normalisation() -> None:
    assert checksum_string([["0.0001", "0.5"]], []) == "15"
    assert checksum_string([], [["65000.5", "1"], ["65001", "1.0"]]) == "650005165001" + "10"
    bids = [["65000", "11"]]
    asks = [["65000.5", "1"]]
    # "650005" "1" then "65000" "11"
    assert book_checksum(bids, asks) == zlib.crc32(b"65000516500011") == 2624497134
    assert book_checksum([], []) == zlib.crc32(b"") == 0


def test_checksum_uses_top_25_asks_first() -> None:
    asks = [[str(100 + i), "1"] for i in range(30)]
    bids = [[str(99 - i), "2"] for i in range(30)]
    expected = "".join(f"{100 + i}1" for i in range(25)) + "".join(f"{99 - i}2" for i in range(25))
    assert checksum_string(bids, asks) == expected
    assert book_checksum(bids, asks) == zlib.crc32(expected.encode())


# ---------------------------------------------------------------- BookFollower


def _snap(seq: int, bids: list[list[str]], asks: list[list[str]]) -> dict[str, Any]:
    return {"type": "book_snapshot", "market": "BTC-USD", "seq": seq, "bids": bids, "asks": asks,
            "checksum": book_checksum(bids, asks)}


def test_follower_snapshot_delta_and_removal() -> None:
    f = BookFollower("BTC-USD")
    f.apply(_snap(10, [["10", "1"], ["9.5", "2"]], [["10.5", "3"]]))
    assert f.bids == [["10", "1"], ["9.5", "2"]]  # Decimal order, not string order
    assert f.seq == 10 and f.messages_verified == 1
    new_bids = [["10", "1"], ["9.75", "4"], ["9.5", "2"]]
    new_asks = [["11", "1"]]
    f.apply({"type": "book_delta", "market": "BTC-USD", "seq": 12, "prev_seq": 10,
             "bids": [["9.75", "4"]], "asks": [["10.5", "0"], ["11", "1"]],
             "checksum": book_checksum(new_bids, new_asks)})
    assert f.bids == new_bids and f.asks == new_asks
    assert f.seq == 12 and f.messages_verified == 2
    # removing an unknown level is harmless; "0.000" also removes
    f.apply({"type": "book_delta", "market": "BTC-USD", "seq": 13, "prev_seq": 12,
             "bids": [["9.75", "0.000"], ["1", "0"]], "asks": [],
             "checksum": book_checksum([["10", "1"], ["9.5", "2"]], new_asks)})
    assert f.bids == [["10", "1"], ["9.5", "2"]]


def test_follower_gap() -> None:
    f = BookFollower()
    with pytest.raises(BookGapError):  # delta before any snapshot
        f.apply({"type": "book_delta", "market": "X", "seq": 2, "prev_seq": 1, "bids": [],
                 "asks": [], "checksum": 0})
    f.apply(_snap(5, [], []))
    with pytest.raises(BookGapError):
        f.apply({"type": "book_delta", "market": "BTC-USD", "seq": 7, "prev_seq": 6,
                 "bids": [], "asks": [], "checksum": 0})
    f.apply(_snap(9, [["1", "1"]], []))  # a new snapshot resyncs
    assert f.seq == 9 and f.bids == [["1", "1"]]


def test_follower_checksum_error_and_market_mismatch() -> None:
    f = BookFollower("BTC-USD")
    with pytest.raises(BookChecksumError):
        f.apply({**_snap(1, [["1", "1"]], []), "checksum": 12345})
    g = BookFollower("ETH-USD")
    with pytest.raises(ValueError):
        g.apply(_snap(1, [], []))


def test_follower_deep_book_checksums_top_25_only() -> None:
    bids = [[f"{1000 - i}.5", "1"] for i in range(40)]
    asks = [[f"{1001 + i}", "0.1"] for i in range(40)]
    f = BookFollower()
    f.apply(_snap(1, bids, asks))
    assert len(f.bids) == 40 and f.asks[0] == ["1001", "0.1"]
    assert f.checksum() == book_checksum(bids[:25], asks[:25])


# ---------------------------------------------------------------- REST client


KEYS = {"k1": KeyRecord("k1", "sec1", 1, frozenset({"read", "trade"}))}


def _auth_handler(seen: list[httpx.Request]) -> httpx.MockTransport:
    auth = Authenticator(KEYS.get)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/fail":
            return httpx.Response(400, json={"error": {"code": "INSUFFICIENT_BALANCE",
                                                       "message": "no"}},
                                  headers={"Retry-After": "2"})
        if request.headers.get("X-API-Key"):
            auth.verify(request.headers.get("X-API-Key"), request.headers.get("X-Timestamp"),
                        request.headers.get("X-Signature"), request.method,
                        request.url.raw_path.decode(), request.content,
                        request.headers.get("X-Recv-Window"))
        return httpx.Response(200, json={"ok": True, "body": request.content.decode()})

    return httpx.MockTransport(handler)


def test_sync_client_signs_exact_bytes_and_query() -> None:
    seen: list[httpx.Request] = []
    with ExchangeClient("http://ex", "k1", "sec1", transport=_auth_handler(seen)) as c:
        c.get_orders(market="BTC-USD", status="open", limit=None)
        c.get_order_by_client_id("a/b c:é")
        out = c.place_order(market="BTC-USD", side="buy", type="limit", price="1.5", size="2",
                            expire_ts=None)
        c.cancel_all()
        c.book("BTC-USD", depth=5)
    assert seen[0].url.raw_path == b"/v1/orders?market=BTC-USD&status=open"
    assert seen[1].url.raw_path == b"/v1/orders/by-client-id/a%2Fb%20c%3A%C3%A9"
    assert orjson.loads(out["body"]) == {"market": "BTC-USD", "side": "buy", "type": "limit",
                                         "price": "1.5", "size": "2"}
    assert seen[3].method == "DELETE" and seen[3].content == b""
    assert "X-API-Key" not in seen[4].headers  # public route is unsigned


async def test_async_client_and_api_error() -> None:
    seen: list[httpx.Request] = []
    async with AsyncExchangeClient("http://ex/", "k1", "sec1", recv_window=10000,
                                   transport=_auth_handler(seen)) as c:
        await c.amend_order("7", price="2")
        await c.place_batch([{"market": "BTC-USD", "size": "1", "price": None}], atomic=True)
        with pytest.raises(ApiError) as info:
            await c.request("GET", "/v1/fail")
    assert orjson.loads(seen[0].content) == {"price": "2"}
    assert seen[0].headers["X-Recv-Window"] == "10000"
    assert orjson.loads(seen[1].content) == {"orders": [{"market": "BTC-USD", "size": "1"}],
                                             "atomic": True}
    err = info.value
    assert (err.status, err.code, err.message) == (400, "INSUFFICIENT_BALANCE", "no")
    assert err.retry_after == 2.0


def test_api_error_from_odd_bodies() -> None:
    assert ApiError.from_body(422, {"detail": "bad"}).code == "HTTP_ERROR"
    assert ApiError.from_body(502, "gateway").message == "gateway"


# ---------------------------------------------------------------- WebSocket client (socket)


async def test_ws_client_routes_replies_and_messages() -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def handler(conn: ServerConnection) -> None:
        async for raw in conn:
            msg = orjson.loads(raw)
            if msg["op"] == "subscribe":
                await conn.send(orjson.dumps({"type": "trade", "market": "BTC-USD"}).decode())
                await conn.send(orjson.dumps({"type": "subscribed",
                                              "channels": msg["channels"]}).decode())
            elif msg["op"] == "ping":
                await conn.send(orjson.dumps({"type": "pong", "id": msg["id"]}).decode())
            elif msg["op"] == "order.cancel":
                await conn.send(orjson.dumps({"type": "response", "id": msg["id"], "error": {
                    "code": "ORDER_NOT_FOUND", "message": "no"}}).decode())
            elif msg["op"] == "auth":
                assert msg["signature"] == sign("s", msg["timestamp"], "GET", "/v1/ws", b"")
                await conn.send(orjson.dumps({"type": "response", "id": msg["id"],
                                              "result": {"account_id": 1}}).decode())
            elif msg["op"] == "bye":
                await conn.close(4008, "too slow")

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await ExchangeWebSocket().connect(f"ws://127.0.0.1:{port}/v1/ws")
        sub = await ws.subscribe(["trades:BTC-USD"])
        assert sub == {"type": "subscribed", "channels": ["trades:BTC-USD"]}
        assert (await ws.recv(timeout=2))["type"] == "trade"
        assert (await ws.ping())["type"] == "pong"
        assert await ws.auth("k", "s") == {"account_id": 1}
        with pytest.raises(ApiError) as info:
            await ws.cancel_order("9")
        assert info.value.code == "ORDER_NOT_FOUND"
        await ws.send({"op": "bye"})
        with pytest.raises(Exception):  # noqa: B017 - ConnectionClosed subclasses
            await ws.recv(timeout=2)
        assert ws.close_code == 4008 and ws.close_reason == "too slow"
        await ws.close()
    await asyncio.sleep(0)
