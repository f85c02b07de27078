"""The dead-man switch over the wire, on SQLite and Postgres: it cancels every order
when not refreshed in time, a refresh pushes it back, 0 disarms it, and an armed
switch survives a restart."""

from __future__ import annotations

import asyncio
import time

import pytest

from exchange_client import ApiError, AsyncExchangeClient
from tests.integration.conftest import MakeTrader
from tests.server import ServerProcess

BTC = "BTC-USDC"


async def wait_status(client: AsyncExchangeClient, order_id: str, status: str,
                      timeout: float = 10) -> dict[str, object]:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        order = (await client.get_order(order_id))["order"]
        if order["status"] == status or time.monotonic() > deadline:
            return order  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)


async def test_the_switch_cancels_unless_refreshed_and_survives_a_restart(
    server: ServerProcess, make_trader: MakeTrader
) -> None:
    trader = await make_trader({"USDC": "100000"})
    c = trader.client
    with pytest.raises(ApiError) as err:
        await c.dead_man_switch(86_400_001)
    assert (err.value.status, err.value.code) == (400, "INVALID_TIMEOUT")
    first = (await c.place_order(market=BTC, side="buy", price="40000", size="0.01"))["order"]
    armed = await c.dead_man_switch(1_500)
    assert armed["armed"] is True and armed["timeout_ms"] == 1_500
    assert armed["deadline"] >= int(time.time() * 1000) + 1_000
    await asyncio.sleep(0.8)
    again = await c.dead_man_switch(1_500)  # refreshed in time: pushed back
    assert again["deadline"] > armed["deadline"]
    await asyncio.sleep(0.9)  # past the first deadline, not the second
    assert (await c.get_order(first["order_id"]))["order"]["status"] == "open"
    done = await wait_status(c, first["order_id"], "cancelled")
    assert (done["status"], done["cancel_reason"]) == ("cancelled", "dead_man_switch")
    assert int(time.time() * 1000) >= again["deadline"]
    # disarmed: nothing happens
    kept = (await c.place_order(market=BTC, side="buy", price="40000", size="0.01"))["order"]
    await c.dead_man_switch(1_000)
    assert (await c.dead_man_switch(0)) == {"armed": False, "timeout_ms": 0, "deadline": None}
    await asyncio.sleep(1.3)
    assert (await c.get_order(kept["order_id"]))["order"]["status"] == "open"
    # armed, then the server restarts: the switch still fires
    await c.dead_man_switch(2_500)
    server.stop()
    server.start()
    async with AsyncExchangeClient(server.base_url, trader.api_key, trader.api_secret) as back:
        done = await wait_status(back, kept["order_id"], "cancelled")
        assert (done["status"], done["cancel_reason"]) == ("cancelled", "dead_man_switch")
