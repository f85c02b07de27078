"""Lending over the real server: a loan by withdrawal, the pools, interest paid and
earned through the ledger, and the same after a restart."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest

from exchange_client import ApiError, AsyncExchangeClient
from tests.integration.conftest import MakeTrader, markets_server
from tests.server import ADMIN_KEY, ADMIN_SECRET, ServerProcess

# interest settles every 2 s; index prices stay fresh for an hour
server = markets_server("lending", {"interest_interval_s": 2, "oracle_stale_s": 3600})


def pool(lending: dict[str, Any], asset: str) -> dict[str, Any]:
    return next(p for p in lending["pools"] if p["asset"] == asset)


def balance(account: dict[str, Any], asset: str) -> dict[str, Any]:
    return next(b for b in account["balances"] if b["asset"] == asset)


async def test_borrow_by_withdrawal_pays_interest_to_the_supplier(
    admin: AsyncExchangeClient, make_trader: MakeTrader
) -> None:
    await admin.set_oracle_prices({"BTC": "50000"})
    alice = await make_trader({"USDC": "10000"})
    bob = await make_trader({"BTC": "1"})
    with pytest.raises(ApiError) as err:  # without allow_borrow: no loan
        await bob.client.withdraw("USDC", "5000", "w1")
    assert (err.value.status, err.value.code) == (400, "INSUFFICIENT_BALANCE")
    with pytest.raises(ApiError) as err:  # 96% of the pool: over max utilization
        await bob.client.withdraw("USDC", "9600", "w2", allow_borrow=True)
    assert (err.value.status, err.value.code) == (400, "INSUFFICIENT_LIQUIDITY")
    done = await bob.client.withdraw("USDC", "5000", "w3", allow_borrow=True)
    entry = done["entry"]
    assert (entry["amount"], entry["balance_after"], done["replayed"]) == ("-5000", "-5000", False)
    usdc = pool(await admin.lending(), "USDC")
    assert usdc == {
        "asset": "USDC",
        "supplied": "10000",
        "borrowed": "5000",
        "utilization": "0.5",
        "borrow_rate": "0.022222",  # 4% * 50/90
        "supply_rate": "0.009999",  # 2.2222% * 50% * 90%
        "max_utilization": "0.95",
        "reserve_factor": "0.1",
    }
    account = await bob.client.account()
    assert balance(account, "USDC")["rate"] == "-0.022222"
    assert balance(await alice.client.account(), "USDC")["rate"] == "0.009999"
    # an idempotent retry returns the same entry and borrows nothing more
    again = await bob.client.withdraw("USDC", "5000", "w3", allow_borrow=True)
    assert (again["entry"], again["replayed"]) == (entry, True)

    deadline = time.monotonic() + 15
    while True:  # interest settles every 2 s (a Tick when due)
        paid = [e for e in (await bob.client.ledger(asset="USDC"))["entries"]
                if e["reason"] == "interest"]  # fmt: skip
        if paid:
            break
        assert time.monotonic() < deadline, "no interest within 15 s"
        await asyncio.sleep(0.2)
    owed = -Decimal(paid[0]["amount"])
    assert Decimal("0.000001") <= owed <= Decimal("0.01")  # ~2 s of 2.2% on 5,000
    earned = [e for e in (await alice.client.ledger(asset="USDC"))["entries"]
              if e["ref"] == paid[0]["ref"]]  # the same settlement  # fmt: skip
    # Alice is the only USDC supplier: she gets 90% of what Bob paid, rounded down
    assert [Decimal(e["amount"]) for e in earned] == [
        (owed * 9 / 10).quantize(Decimal("0.000001"), rounding="ROUND_FLOOR")
    ]
    audit = await admin.request("GET", "/v1/admin/audit")
    assert audit["invariants"] == []
    for asset, t in audit["totals"].items():
        assert Decimal(t["users"]) + Decimal(t["system"]) + Decimal(t["external"]) == 0, asset


async def test_loans_and_pools_survive_a_restart(
    server: ServerProcess, admin: AsyncExchangeClient
) -> None:
    before = await admin.lending()
    server.stop()
    server.start()
    async with AsyncExchangeClient(server.base_url, ADMIN_KEY, ADMIN_SECRET) as again:
        after = await again.lending()
    assert pool(after, "USDC")["borrowed"] >= pool(before, "USDC")["borrowed"] != "0"
    assert pool(after, "BTC") == pool(before, "BTC")
