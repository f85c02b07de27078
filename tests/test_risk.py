"""Portfolio health (engine/risk.py), with every number worked out by hand.

Units: USDC has 6 decimals, BTC 8; prices are USDC atomic units per whole BTC.
BTC risk (DESIGN defaults): shocks initial 12%, liquidation-end 10%, maintenance
8%; slippage 0.5%.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from app.config import load_exchange_config
from engine.commands import CreateAccount, Deposit, SetOraclePrices
from engine.exchange import Exchange
from engine.markets import default_config
from engine.risk import DEFAULT_RISK, AssetRisk, Level, PerpExposure, health
from tests.risk_reference import reference_health

USDC, BTC = 10**6, 10**8
DEC = {"USDC": 6, "BTC": 8, "ETH": 8}
MARK = 50_000 * USDC
ROOT = Path(__file__).resolve().parent.parent


def levels(balances: dict[str, int], perps: list[PerpExposure] = (),  # type: ignore[assignment]
           rates: dict[str, int] | None = None,
           risk: dict[str, AssetRisk] = DEFAULT_RISK) -> dict[Level, int | None]:  # fmt: skip
    return all_levels(balances, list(perps), {"BTC": MARK}, risk, rates or {})


def all_levels(balances: dict[str, int], perps: list[PerpExposure], marks: dict[str, int],
               risk: dict[str, AssetRisk], rates: dict[str, int]) -> dict[Level, int | None]:
    return {level: health(balances, perps, marks, DEC, risk, rates, "USDC", level)
            for level in Level}  # fmt: skip


def test_spot_long_with_cash() -> None:
    # 1,000 USDC + 0.2 BTC at 50,000. Equity 1,000 + 10,000 = 11,000.
    # maintenance: worse of 54,000 / 46,000 -> 0.2 * 46,000 * 0.995 = 9,154 -> 10,154
    # liquidation-end (45,000): 9,000 * 0.995 = 8,955 -> 9,955
    # initial (44,000): 8,800 * 0.995 = 8,756 -> 9,756
    got = levels({"USDC": 1_000 * USDC, "BTC": BTC // 5})
    assert got == {
        Level.INITIAL: 9_756 * USDC,
        Level.MAINTENANCE: 10_154 * USDC,
        Level.LIQUIDATION_END: 9_955 * USDC,
        Level.EQUITY: 11_000 * USDC,
    }


def test_basis_trade_hedges_inside_the_asset() -> None:
    # USDC -9,000 (1,000 own, 10,000 spent), BTC +0.2, BTC-PERP -0.2 at mark 50,000 (entry
    # 50,000, no PnL). value(P) = 0.2P - 0.001P - 0.2(P - 50,000) - 0.001P = 10,000 - 0.002P
    # maintenance: min(10,000 - 108, 10,000 - 92) = 9,892 -> -9,000 + 9,892 = 892
    # initial: min(10,000 - 112, 10,000 - 88) = 9,888 -> 888; liq-end: 9,890 -> 890
    perp = PerpExposure("BTC", -BTC // 5, MARK, 0)
    got = levels({"USDC": -9_000 * USDC, "BTC": BTC // 5}, [perp])
    assert got == {
        Level.INITIAL: 888 * USDC,
        Level.MAINTENANCE: 892 * USDC,
        Level.LIQUIDATION_END: 890 * USDC,
        Level.EQUITY: 1_000 * USDC,
    }
    # the spot leg alone on the same loan is far under water at the initial level
    alone = levels({"USDC": -9_000 * USDC, "BTC": BTC // 5})
    assert alone[Level.INITIAL] == -9_000 * USDC + 8_756 * USDC  # -244 USDC
    assert alone[Level.EQUITY] == 1_000 * USDC


def test_loans_carry_ten_days_of_interest_and_results_round_down() -> None:
    # The basis account with USDC borrowed at 10%/year: the loan counts as
    # 9,000 * (1 + 0.1 * 10/365) = 9,024.657534246... USDC, so maintenance health is
    # 9,892 - 9,024.657534246... = 867.342465753... -> 867.342465 (rounded down).
    perp = PerpExposure("BTC", -BTC // 5, MARK, 0)
    got = levels({"USDC": -9_000 * USDC, "BTC": BTC // 5}, [perp], rates={"USDC": 100_000})
    assert got[Level.MAINTENANCE] == 867_342_465
    assert got[Level.INITIAL] == 863_342_465
    assert got[Level.EQUITY] == 1_000 * USDC  # equity: the loan as it is


def test_unrealized_pnl_and_haircut() -> None:
    # A short perp entered at 49,000: PnL at 50,000 is -0.2 * 1,000 = -200 USDC.
    # Only the perp on BTC: value(P) = -0.2(P - 50,000) - 0.001P; maintenance:
    # P = 54,000 -> -800 - 54 = -854; P = 46,000 -> 800 - 46 = 754 -> -854.
    # health = 2,000 - 200 - 854 = 946; equity = 2,000 - 200 = 1,800.
    perp = PerpExposure("BTC", -BTC // 5, MARK, -200 * USDC)
    got = levels({"USDC": 2_000 * USDC}, [perp])
    assert (got[Level.MAINTENANCE], got[Level.EQUITY]) == (946 * USDC, 1_800 * USDC)
    # A 10% supply haircut on BTC: 0.2 BTC counts as 0.18; maintenance
    # 0.18 * 46,000 * 0.995 = 8,238.6.
    cut = {"BTC": dataclasses.replace(DEFAULT_RISK["BTC"], supply_haircut_ppm=100_000)}
    got = levels({"BTC": BTC // 5}, risk=cut)
    assert got[Level.MAINTENANCE] == 8_238_600_000
    assert got[Level.EQUITY] == 10_000 * USDC


def test_an_asset_without_a_price_makes_health_unknown() -> None:
    got = all_levels({"USDC": USDC, "ETH": BTC}, [], {"BTC": MARK}, DEFAULT_RISK, {})
    assert set(got.values()) == {None}
    # nothing held in it: no price needed
    assert health({"USDC": USDC, "ETH": 0}, [], {}, DEC, DEFAULT_RISK, {}, "USDC",
                  Level.INITIAL) == USDC  # fmt: skip


def test_risk_parameters_are_validated() -> None:
    assert AssetRisk(120_000, 80_000, 100_000, 5_000).problems("BTC") == []
    assert AssetRisk(80_000, 120_000, 100_000, 5_000).problems("BTC") == [
        "BTC: risk prices need 0 <= maintenance <= liquidation_end <= initial < 1"
    ]
    cfg = default_config()
    broken = dataclasses.replace(cfg, risk={k: v for k, v in cfg.risk.items() if k != "SOL"})
    assert broken.validate() == ["SOL: no risk parameters"]


@pytest.mark.parametrize("index", [None, 50_000 * USDC])
def test_engine_health_uses_the_oracle_index(index: int | None) -> None:
    ex = Exchange(default_config())
    ex.apply(CreateAccount(seq=1, ts=1, name="a", api_key="k", api_secret="s"))
    ex.apply(Deposit(seq=2, ts=1, account_id=1000, asset="USDC", amount=1_000 * USDC,
                     deposit_id="d1"))  # fmt: skip
    ex.apply(Deposit(seq=3, ts=1, account_id=1000, asset="BTC", amount=BTC // 5,
                     deposit_id="d2"))  # fmt: skip
    if index is not None:
        ex.apply(SetOraclePrices(seq=4, ts=2, prices=(("BTC", index),)))
    got = ex.health(1000)
    if index is None:
        assert set(got.values()) == {None}
    else:
        assert got[Level.MAINTENANCE] == 10_154 * USDC
        assert got[Level.EQUITY] == 11_000 * USDC


def test_markets_file_sets_risk_and_oracle_staleness(tmp_path: Path) -> None:
    raw = json.loads((ROOT / "markets.example.json").read_text())
    raw["risk"] = {"SOL": {"initial": "0.2", "supply_haircut": "0.05"}}
    raw["oracle_stale_s"] = 3
    path = tmp_path / "m.json"
    path.write_text(json.dumps(raw))
    cfg = load_exchange_config(str(path))
    assert cfg.risk["SOL"] == AssetRisk(200_000, 120_000, 150_000, 5_000, 50_000)
    assert cfg.risk["BTC"] == DEFAULT_RISK["BTC"]
    assert cfg.oracle_stale_ms == 3_000
    raw["assets"]["DOGE"] = {"decimals": 8}
    raw["risk"] = {"DOGE": {"initial": "0.5"}}
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError) as err:
        load_exchange_config(str(path))
    assert str(err.value).endswith(
        "risk DOGE: a new asset needs maintenance, liquidation_end, slippage"
    )
    del raw["assets"]["DOGE"]
    raw["risk"] = {"BTC": {"initial": "0.01"}}
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError) as err:
        load_exchange_config(str(path))
    assert str(err.value).endswith(
        "BTC: risk prices need 0 <= maintenance <= liquidation_end <= initial < 1"
    )


@settings(max_examples=3000, deadline=None)
@given(
    balances=st.dictionaries(
        st.sampled_from(("USDC", "BTC", "ETH", "SOL")),
        st.integers(-(10**14), 10**14),
        max_size=4,
    ),
    perps=st.lists(
        st.tuples(
            st.sampled_from(("BTC", "ETH", "SOL")),
            st.integers(-(10**11), 10**11),
            st.integers(1, 10**12),
        ),
        max_size=3,
    ),
    marks=st.fixed_dictionaries(
        {a: st.integers(1, 10**12) for a in ("BTC", "ETH")},
        optional={"SOL": st.integers(1, 10**12)},
    ),
    rates=st.dictionaries(st.sampled_from(("USDC", "BTC", "ETH", "SOL")),
                          st.integers(0, 3_000_000)),  # fmt: skip
    haircut=st.integers(0, 300_000),
    level=st.sampled_from(list(Level)),
)
def test_integer_health_equals_the_fraction_reference(
    balances: dict[str, int],
    perps: list[tuple[str, int, int]],
    marks: dict[str, int],
    rates: dict[str, int],
    haircut: int,
    level: Level,
) -> None:
    """engine/risk.py computes over one integer denominator; tests/risk_reference.py is
    the first, Fraction-based version: same result, parts included, to the atomic unit."""
    risk = {a: dataclasses.replace(r, supply_haircut_ppm=haircut) for a, r in DEFAULT_RISK.items()}
    exposures = [
        PerpExposure(a, size, mark, size * mark // 10**8 - size * 50_000)
        for a, size, mark in perps
    ]
    decimals = {"USDC": 6, "BTC": 8, "ETH": 8, "SOL": 8}
    args = (balances, exposures, marks, decimals, risk, rates, "USDC", level)
    got_parts: dict[str, int] = {}
    want_parts: dict[str, int] = {}
    assert health(*args, got_parts) == reference_health(*args, want_parts)
    assert got_parts == want_parts
