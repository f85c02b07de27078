"""GET|PUT /v1/account/risk-plan over the wire (SQLite and Postgres)."""

from __future__ import annotations

import pytest

from exchange_client import ApiError
from tests.integration.conftest import MakeTrader, markets_server

server = markets_server("riskplan", {"max_cure_window_s": 600})


async def test_set_read_refuse_and_restart(make_trader: MakeTrader) -> None:
    trader = await make_trader({})
    c = trader.client
    assert await c.get_risk_plan() == {
        "plan": {"cure_window_s": 0, "max_slice_pct": 100, "order": [], "hedge_groups": [],
                 "keep_last": []},
        "max_cure_window_s": 600,
    }  # fmt: skip
    plan = {"cure_window_s": 120, "max_slice_pct": 25, "order": ["ETH-PERP", "SOL-PERP"],
            "hedge_groups": [["BTC-USDC", "BTC-PERP"]], "keep_last": ["BTC"]}  # fmt: skip
    assert (await c.set_risk_plan(plan))["plan"] == plan
    assert (await c.get_risk_plan())["plan"] == plan
    for bad, status, code in (
        ({"cure_window_s": 601}, 400, "INVALID_RISK_PLAN"),
        ({"order": ["DOGE-PERP"]}, 404, "UNKNOWN_MARKET"),
        ({"hedge_groups": [["BTC-USDC", "BTC-PERP"], ["BTC-PERP", "ETH-PERP"]]}, 400,
         "INVALID_RISK_PLAN"),
        ({"keep_last": ["USDC"]}, 400, "UNKNOWN_ASSET"),
        ({"max_slice_pct": 0}, 400, "INVALID_RISK_PLAN"),
    ):  # fmt: skip
        with pytest.raises(ApiError) as err:
            await c.set_risk_plan(bad)
        assert (err.value.status, err.value.code) == (status, code), bad
    assert (await c.get_risk_plan())["plan"] == plan  # unchanged by the refusals
    with pytest.raises(ApiError) as err:
        await c.set_risk_plan({"cure_window": 5})
    assert (err.value.status, err.value.code) == (422, "VALIDATION_ERROR")
