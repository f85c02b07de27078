"""The issue's "done means", as a test: a new user's session survives a restart.

Accounts are created and funded with the `exchange` CLI, a trade happens over
signed HTTP, the book and trades are followed on the WebSocket with every
checksum verified, then the server is stopped (SIGTERM, then SIGKILL) and
started again: balances, open orders, fills, trades and the book are the same,
and `seq` goes on from where it stopped.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets

from exchange_client import AsyncExchangeClient, BookFollower, ExchangeWebSocket
from exchange_client.signing import auth_headers, ws_auth_frame
from tests.integration.conftest import start_server
from tests.server import ADMIN_KEY, ADMIN_SECRET, ROOT, ServerProcess


def cli(server: ServerProcess, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", *args, "--url", server.base_url],
        env=server.env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    data: dict[str, Any] = json.loads(out.stdout)
    return data


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    yield from start_server(request.param, tmp_path)


async def snapshot_state(server: ServerProcess, traders: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    async with AsyncExchangeClient(server.base_url) as public:
        state["book"] = await public.book("BTC-USDC")
        state["trades"] = (await public.trades("BTC-USDC"))["trades"]
    for t in traders:
        async with AsyncExchangeClient(server.base_url, t["api_key"], t["api_secret"]) as c:
            account = await c.account()
            state[t["account_id"]] = {
                "balances": account["balances"],
                "open": (await c.get_orders(status="open"))["orders"],
                "fills": (await c.fills())["fills"],
                "ledger": (await c.ledger())["entries"],
            }
    return state


async def test_new_user_session_survives_restarts(fresh_server: ServerProcess) -> None:
    server = fresh_server
    alice = cli(server, "accounts", "create", "--name", "alice")
    bob = cli(server, "accounts", "create", "--name", "bob")
    assert alice["permissions"] == ["read", "trade", "withdraw"]
    dep = cli(server, "deposit", alice["account_id"], "USDC", "100000", "--deposit-id", "d-alice")
    assert dep["entry"]["amount"] == "100000" and dep["entry"]["reason"] == "deposit"
    cli(server, "deposit", bob["account_id"], "BTC", "2", "--deposit-id", "d-bob")
    again = cli(server, "deposit", bob["account_id"], "BTC", "2", "--deposit-id", "d-bob")
    assert again["replayed"] is True

    ws = ExchangeWebSocket()
    await ws.connect(server.ws_url)
    await ws.subscribe(["book:BTC-USDC", "trades:BTC-USDC"])
    follower = BookFollower("BTC-USDC")
    trades_seen: list[dict[str, Any]] = []

    async with (
        AsyncExchangeClient(server.base_url, bob["api_key"], bob["api_secret"]) as b,
        AsyncExchangeClient(server.base_url, alice["api_key"], alice["api_secret"]) as a,
    ):
        await b.place_order(
            market="BTC-USDC", side="sell", price="50000", size="0.5", client_order_id="ask-1"
        )
        await b.place_order(market="BTC-USDC", side="sell", price="50100", size="0.25")
        await a.place_order(
            market="BTC-USDC", side="buy", price="49900", size="0.1", client_order_id="bid-1"
        )
        taken = await a.place_order(market="BTC-USDC", side="buy", price="50000", size="0.2")
    assert taken["order"]["status"] == "filled"
    # 0.2 BTC at 50000 = 10000 USDC; taker fee 400 ppm = 4 USDC
    assert taken["fills"] == [
        {
            "trade_id": "1",
            "order_id": taken["order"]["order_id"],
            "market": "BTC-USDC",
            "side": "buy",
            "price": "50000",
            "size": "0.2",
            "fee": "4",
            "fee_asset": "USDC",
            "liquidity": "taker",
            "ts": taken["fills"][0]["ts"],
        }
    ]

    while (
        len(trades_seen) < 1
        or follower.seq < 0
        or not follower.asks
        or follower.asks[0] != ["50000", "0.3"]
    ):
        msg = await ws.recv(timeout=5)
        if msg["type"] in ("book_snapshot", "book_delta"):
            follower.apply(msg)
        elif msg["type"] == "trade":
            trades_seen.append(msg)
    await ws.close()
    assert follower.messages_verified >= 4
    assert follower.bids == [["49900", "0.1"]]
    assert follower.asks == [["50000", "0.3"], ["50100", "0.25"]]
    assert [(t["price"], t["size"], t["side"]) for t in trades_seen] == [("50000", "0.2", "buy")]

    before = await snapshot_state(server, [alice, bob])
    usdc = next(x for x in before[alice["account_id"]]["balances"] if x["asset"] == "USDC")
    # 100000 - 10000 - 4 fee = 89996; the resting bid holds 0.1 * 49900 = 4990 USDC plus a fee
    # reserve of ceil(4990_000000 * 400 / 1e6) = 1_996_000 atomic = 1.996 USDC
    assert usdc == {
        "asset": "USDC",
        "balance": "89996",
        "hold": "4991.996",
        "available": "85004.004",
        "rate": "0",
    }
    assert before["book"]["checksum"] == follower.checksum()

    async with AsyncExchangeClient(server.base_url) as public:
        seq_before = (await public.health())["seq"]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        server.stop(sig)
        server.start()
        after = await snapshot_state(server, [alice, bob])
        assert after == before
        async with AsyncExchangeClient(server.base_url) as public:
            assert (await public.health())["seq"] == seq_before

    # the restarted server keeps trading from the recovered book and ids
    async with AsyncExchangeClient(server.base_url, alice["api_key"], alice["api_secret"]) as a:
        more = await a.place_order(market="BTC-USDC", side="buy", price="50000", size="0.3")
        assert more["order"]["status"] == "filled"
        assert more["fills"][0]["trade_id"] == "2"
        dup = await a.get_order_by_client_id("bid-1")
        assert dup["order"]["status"] == "open"
    await asyncio.sleep(0)


async def test_a_request_captured_before_a_crash_cannot_be_replayed_after_it(
    fresh_server: ServerProcess,
) -> None:
    """Accepted signatures are journaled with their commands, so the replay window survives
    a SIGKILL: the same signed bytes sent again after the restart are refused."""
    server = fresh_server
    alice = cli(server, "accounts", "create", "--name", "alice")
    cli(server, "deposit", alice["account_id"], "USDC", "1000", "--deposit-id", "d-1")
    body = orjson.dumps({"market": "BTC-USDC", "side": "buy", "price": "10000", "size": "0.01"})
    headers = auth_headers(alice["api_key"], alice["api_secret"], "POST", "/v1/orders", body,
                           recv_window=60_000)
    headers["Content-Type"] = "application/json"
    first = httpx.post(server.base_url + "/v1/orders", content=body, headers=headers)
    assert first.status_code == 201, first.text
    server.kill()
    server.start()
    again = httpx.post(server.base_url + "/v1/orders", content=body, headers=headers)
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "REPLAYED_SIGNATURE"
    async with AsyncExchangeClient(server.base_url, alice["api_key"], alice["api_secret"]) as a:
        orders = (await a.get_orders())["orders"]
    assert [o["order_id"] for o in orders] == [first.json()["order"]["order_id"]]



@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def wide_window_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose default receive window is the longest (60 s), so a WebSocket `auth`
    frame (which names no window) is still inside it after a restart on a slow machine."""
    yield from start_server(request.param, tmp_path, {"EXCHANGE_RECV_WINDOW_MS": "60000"})


async def test_a_websocket_auth_frame_captured_before_a_crash_cannot_open_a_session_after_it(
    wide_window_server: ServerProcess,
) -> None:
    """`auth` journals an OpenSession with the frame's signature, so the same frame sent
    again after a SIGKILL and restart is refused as a replay; a fresh frame still opens a
    session, and an order pipelined right behind it finds the session open. The audit's
    recovery counts the signatures read back: the account, the deposit and the session."""
    server = wide_window_server
    alice = cli(server, "accounts", "create", "--name", "alice")
    cli(server, "deposit", alice["account_id"], "USDC", "1000", "--deposit-id", "d-1")
    frame = orjson.dumps(ws_auth_frame(alice["api_key"], alice["api_secret"])).decode()

    async def send_auth(text: str) -> dict[str, Any]:
        async with websockets.connect(server.ws_url) as ws:
            await ws.send(text)
            answer: dict[str, Any] = orjson.loads(await ws.recv())
            return answer

    first = await send_auth(frame)
    assert first["result"]["authenticated"] is True, first
    assert first["result"]["account_id"] == alice["account_id"]
    server.kill()
    server.start()
    again = await send_auth(frame)
    assert again["type"] == "error" and again["error"]["code"] == "REPLAYED_SIGNATURE", again
    async with ExchangeWebSocket() as ws:  # auth and an order sent together, pipelined
        await ws.connect(server.ws_url)
        fresh = ws_auth_frame(alice["api_key"], alice["api_secret"])
        del fresh["op"]
        session, placed = await ws.request_many([
            ("auth", fresh),
            ("order.place", {"market": "BTC-USDC", "side": "buy", "price": "10000",
                             "size": "0.01"}),
        ])
        assert session["account_id"] == alice["account_id"], session
        assert placed["order"]["status"] == "open", placed
    async with AsyncExchangeClient(server.base_url, ADMIN_KEY, ADMIN_SECRET) as admin:
        audit: dict[str, Any] = await admin.request("GET", "/v1/admin/audit")
    assert audit["recovery"]["signatures"] == 3
    assert audit["recovery"]["replayed"] == audit["seq"] - 2  # the new session and order
