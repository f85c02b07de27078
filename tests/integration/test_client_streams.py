"""The client library's streams against a real server: book resync on a checksum
mismatch, reconnect and resync after a server restart, and the sync twins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from exchange_client import (
    ApiError,
    AsyncExchangeClient,
    Backoff,
    MarketStream,
    SyncExchangeWebSocket,
    SyncMarketStream,
)
from tests.integration.conftest import MakeTrader
from tests.server import ServerProcess

BTC = "BTC-USDC"


async def until(stream: MarketStream, ok: Callable[[dict[str, Any]], bool],
                timeout: float = 15.0) -> dict[str, Any]:
    """Iterate the stream until a message satisfies `ok`."""
    async def run() -> dict[str, Any]:
        async for message in stream:
            if ok(message):
                return message
        raise AssertionError("the stream ended")

    return await asyncio.wait_for(run(), timeout)


def rest_book(book: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    return book["bids"], book["asks"]


async def test_market_stream_resyncs_and_survives_a_restart(
    server: ServerProcess, traders: MakeTrader
) -> None:
    maker = await traders()
    stream = MarketStream(server.ws_url, books=[BTC], channels=[f"trades:{BTC}"],
                          api_key=maker.api_key, api_secret=maker.api_secret,
                          backoff=Backoff(0.1, 0.5))
    try:
        await maker.client.place_order(market=BTC, side="buy", price="100", size="0.5")
        await until(stream, lambda m: m["type"] == "book_delta" and
                    stream.books[BTC].bids[:1] == [["100", "0.5"]]
                    or m["type"] == "book_snapshot" and ["100", "0.5"] in stream.books[BTC].bids)
        assert stream.books.ready(BTC) and stream.reconnects == 0

        # a corrupted local book: the next delta's checksum differs -> unsubscribe,
        # subscribe, fresh snapshot; the caller only sees the snapshot
        stream.books[BTC]._bids.set("1", "1")
        await maker.client.place_order(market=BTC, side="buy", price="101", size="1")
        await until(stream, lambda m: m["type"] == "book_snapshot")
        assert stream.books.resyncs == 1
        assert type(stream.books.last_error).__name__ == "BookChecksumError"
        assert stream.books[BTC].bids[:2] == [["101", "1"], ["100", "0.5"]]
        book = await maker.client.book(BTC)
        assert (stream.books[BTC].bids, stream.books[BTC].asks) == rest_book(book)
        assert ["1", "1"] not in stream.books[BTC].bids

        # the server goes away and comes back: reconnect, re-auth, resubscribe, resync
        server.stop()
        server.start()
        await until(stream, lambda m: m["type"] == "book_snapshot")
        assert stream.reconnects == 1 and stream.books.ready(BTC)
        await maker.client.place_order(market=BTC, side="sell", price="120", size="0.25")
        await until(stream, lambda m: m["type"] == "book_delta" and
                    stream.books[BTC].asks[:1] == [["120", "0.25"]])
        book = await maker.client.book(BTC)
        assert (stream.books[BTC].bids, stream.books[BTC].asks) == rest_book(book)
        assert stream.books[BTC].bids[:2] == [["101", "1"], ["100", "0.5"]]
    finally:
        await stream.close()


def _sync_session(ws_url: str, key: str, secret: str) -> dict[str, Any]:
    """Order entry over the blocking WebSocket, followed by the blocking stream."""
    stream = SyncMarketStream(ws_url, books=[BTC], backoff=Backoff(0.1, 0.5))
    seen: dict[str, Any] = {}
    with SyncExchangeWebSocket(request_timeout=5).connect(ws_url) as ws:
        ws.auth(key, secret)
        ws.subscribe(["orders"])
        out = ws.place_order(market=BTC, side="sell", price="150", size="0.75",
                             client_order_id="sync-1")
        seen["order"] = out["order"]
        seen["pushed"] = ws.recv(timeout=5)  # the private push queued behind the reply
        eth = "ETH-USDC"  # (the BTC book is what the stream below follows)
        seen["many"] = ws.request_many([
            ("order.place", {"market": eth, "side": "buy", "price": "10", "size": "1"}),
            ("ping", None),
            ("order.place", {"market": eth, "side": "buy", "price": "10.001", "size": "1"}),
            ("order.cancel_all", {"market": eth}),
        ])
        seen["pushes"] = [ws.recv(timeout=5)["type"] for _ in range(2)]  # kept for recv
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            stream.poll(timeout=1)
            if stream.books.ready(BTC) and ["150", "0.75"] in stream.books[BTC].asks:
                break
        seen["asks"] = stream.books[BTC].asks
        stream.books[BTC]._asks.set("149", "9")  # corrupt, then make a delta arrive
        ws.cancel_order(out["order"]["order_id"])
        while time.monotonic() < deadline and stream.books.resyncs == 0:
            stream.poll(timeout=1)
        while time.monotonic() < deadline and not stream.books.ready(BTC):
            stream.poll(timeout=1)
        seen["resyncs"] = stream.books.resyncs
        seen["asks_after"] = stream.books[BTC].asks
    stream.close()
    return seen


async def test_sync_websocket_and_stream(server: ServerProcess, traders: MakeTrader) -> None:
    trader = await traders()
    seen = await asyncio.to_thread(_sync_session, server.ws_url, trader.api_key,
                                   trader.api_secret)
    assert seen["order"]["client_order_id"] == "sync-1"
    assert seen["order"]["status"] == "open" and seen["order"]["size"] == "0.75"
    assert seen["pushed"]["type"] == "order"
    assert seen["pushed"]["order"]["order_id"] == seen["order"]["order_id"]
    placed, pong, refused, cancelled = seen["many"]
    assert placed["order"]["status"] == "open" and pong["type"] == "pong"
    assert isinstance(refused, ApiError) and refused.code == "PRICE_NOT_ON_TICK"
    assert cancelled == {"cancelled": [placed["order"]["order_id"]]}
    assert seen["pushes"] == ["order", "order"]  # the pushes of the place and the cancel
    assert ["150", "0.75"] in seen["asks"]
    assert seen["resyncs"] == 1
    assert ["149", "9"] not in seen["asks_after"] and ["150", "0.75"] not in seen["asks_after"]
    async with AsyncExchangeClient(server.base_url) as public:
        book = await public.book(BTC)
    assert seen["asks_after"] == book["asks"]


