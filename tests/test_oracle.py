"""Index prices from the oracle (engine/oracle.py): exact events, refusals, staleness."""

from __future__ import annotations

import dataclasses
import random
from decimal import Decimal

import orjson
import pytest

from app.oracle_sim import CENT, DEFAULT_START, starting_prices, step
from engine.commands import PlaceOrder, SetOraclePrices, Tick
from engine.events import IndexStale, IndexUpdated, Rejected
from engine.exchange import Exchange
from engine.funding import FundingParams
from engine.markets import ExchangeConfig, default_config
from engine.snapshot import take_snapshot
from engine.types import Reject, Side, TimeInForce

USDC = 10**6
BTC_65000_5 = 65_000_500_000  # 65,000.5 USDC per BTC in USDC atomic units


def no_funding() -> ExchangeConfig:
    """The default markets with funding samples far apart: these tests are about the index."""
    return dataclasses.replace(default_config(), funding=FundingParams(10**9, 10**9, 1))


def prices(seq: int, ts: int, *pairs: tuple[str, int]) -> SetOraclePrices:
    return SetOraclePrices(seq=seq, ts=ts, prices=pairs)


def test_prices_are_set_in_asset_order_with_the_command_ts() -> None:
    ex = Exchange(no_funding())
    events = ex.apply(prices(1, 1_000, ("SOL", 150 * USDC), ("BTC", BTC_65000_5)))
    assert events == [
        IndexUpdated("BTC", BTC_65000_5, 1_000),
        IndexUpdated("SOL", 150 * USDC, 1_000),
    ]
    assert ex.oracle.index("BTC") == BTC_65000_5
    assert ex.oracle.index("ETH") is None
    assert ex.next_deadline() == 1_000 + 15_000


@pytest.mark.parametrize(
    ("pairs", "reason", "detail"),
    [
        ((), Reject.INVALID_PRICE, "no prices"),
        ((("DOGE", USDC),), Reject.UNKNOWN_ASSET, "unknown asset DOGE"),
        ((("USDC", USDC),), Reject.UNKNOWN_ASSET, "USDC is the quote asset: no index"),
        ((("BTC", USDC), ("BTC", 2 * USDC)), Reject.INVALID_PRICE, "BTC priced twice"),
        ((("BTC", 0),), Reject.INVALID_PRICE, "BTC: price must be positive"),
        ((("BTC", -5),), Reject.INVALID_PRICE, "BTC: price must be positive"),
        ((("BTC", 10**17 + 1),), Reject.INVALID_PRICE, "BTC: price must be positive"),
    ],
)
def test_refused_prices_change_nothing(
    pairs: tuple[tuple[str, int], ...], reason: Reject, detail: str
) -> None:
    ex = Exchange(default_config())
    ex.apply(prices(1, 1_000, ("ETH", 3_000 * USDC)))
    before = {k: v for k, v in take_snapshot(ex).items() if k not in ("last_seq", "last_ts")}
    # a valid price first: all or none, so ETH must not move either
    command = prices(2, 2_000, ("ETH", 3_100 * USDC), *pairs) if pairs else prices(2, 2_000)
    events = ex.apply(command)
    assert events == [Rejected(reason, None, detail, None, None)]
    assert ex.oracle.index("ETH") == 3_000 * USDC
    after = {k: v for k, v in take_snapshot(ex).items() if k not in ("last_seq", "last_ts")}
    assert after == before


def test_a_price_goes_stale_exactly_at_set_ts_plus_the_limit() -> None:
    ex = Exchange(no_funding())  # oracle_stale_ms = 15,000
    ex.apply(prices(1, 1_000, ("BTC", BTC_65000_5)))
    ex.apply(prices(2, 9_000, ("ETH", 3_000 * USDC)))
    assert ex.apply(Tick(seq=3, ts=15_999)) == []
    assert ex.next_deadline() == 16_000
    assert ex.apply(Tick(seq=4, ts=16_000)) == [IndexStale("BTC", BTC_65000_5, 1_000, 16_000)]
    assert ex.oracle.index("BTC") is None and ex.oracle.index("ETH") == 3_000 * USDC
    assert ex.next_deadline() == 24_000
    # any command past the deadline reports it first, before its own events
    events = ex.apply(prices(5, 30_000, ("BTC", 66_000 * USDC)))
    assert events == [
        IndexStale("ETH", 3_000 * USDC, 9_000, 30_000),
        IndexUpdated("BTC", 66_000 * USDC, 30_000),
    ]
    assert ex.oracle.index("BTC") == 66_000 * USDC and ex.oracle.index("ETH") is None
    assert ex.next_deadline() == 45_000


def test_next_deadline_is_the_earlier_of_expiry_and_staleness() -> None:
    ex = Exchange(no_funding())
    ex.apply(prices(1, 1_000, ("BTC", BTC_65000_5)))
    assert ex.next_deadline() == 16_000
    from engine.commands import CreateAccount, Deposit

    ex.apply(CreateAccount(seq=2, ts=1_000, name="a", api_key="k", api_secret="s"))
    ex.apply(Deposit(seq=3, ts=1_000, account_id=1000, asset="USDC", amount=10**12,
                     deposit_id="d"))  # fmt: skip
    ex.apply(PlaceOrder(seq=4, ts=1_000, account_id=1000, market="BTC-USDC", side=Side.BUY,
                        size=10**4, price=60_000 * USDC, tif=TimeInForce.GTT,
                        expire_ts=5_000))  # fmt: skip
    assert ex.next_deadline() == 5_000
    ex.apply(Tick(seq=5, ts=5_000))
    assert ex.next_deadline() == 16_000
    ex.apply(Tick(seq=6, ts=16_000))
    assert ex.next_deadline() is None


def test_oracle_state_is_in_the_snapshot_and_the_hash() -> None:
    cfg = default_config()
    a, b = Exchange(cfg), Exchange(cfg)
    a.apply(prices(1, 1_000, ("BTC", BTC_65000_5)))
    b.apply(prices(1, 1_000, ("BTC", BTC_65000_5 + 1)))
    assert a.state_hash() != b.state_hash()
    a.apply(Tick(seq=2, ts=20_000))
    snap = orjson.loads(orjson.dumps(take_snapshot(a)))
    assert snap["oracle"] == [["BTC", BTC_65000_5, 1_000, True]]
    restored = Exchange.restore(cfg, snap)
    assert restored.state_hash() == a.state_hash()
    assert restored.oracle.index("BTC") is None and restored.next_deadline() is None
    old = {k: v for k, v in snap.items() if k != "oracle"}  # written before the oracle existed
    assert Exchange.restore(cfg, old).oracle.prices == {}


def test_oracle_stale_limit_comes_from_the_config() -> None:
    cfg = dataclasses.replace(default_config(), oracle_stale_ms=2_000)
    ex = Exchange(cfg)
    ex.apply(prices(1, 1_000, ("BTC", BTC_65000_5)))
    assert ex.next_deadline() == 3_000
    assert dataclasses.replace(cfg, oracle_stale_ms=0).validate() == [
        "oracle_stale_ms must be positive"
    ]


def test_simulated_feed_walks_from_the_current_index_in_cents() -> None:
    assets = [
        {"symbol": "USDC", "decimals": 6, "index": None},
        {"symbol": "BTC", "decimals": 8, "index": {"price": "65000.5", "ts": 1, "stale": False}},
        {"symbol": "ETH", "decimals": 8, "index": None},
    ]
    start = starting_prices(assets, "USDC")
    assert start == {"BTC": Decimal("65000.5"), "ETH": DEFAULT_START["ETH"]}
    a = step(start, random.Random(7), 0.001)
    b = step(start, random.Random(7), 0.001)
    assert a == b and set(a) == {"BTC", "ETH"}
    assert all(p == p.quantize(CENT) and p > 0 for p in a.values())
    assert a != {k: v.quantize(CENT) for k, v in start.items()}
    assert abs(a["BTC"] / start["BTC"] - 1) < 0.01
