"""Process settings (environment, prefix `EXCHANGE_`) and the markets file loader.

Rule owned here: configuration is read once at start and validated before the
engine sees it; a markets file with any problem refuses to load (ValueError
listing every problem), it is never half applied. File format: docs/markets.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.fixedpoint import FixedPointError, parse_units
from engine.funding import DEFAULT_FUNDING, FundingParams
from engine.lending import DEFAULT_LENDING, STABLE, VOLATILE, LendingParams
from engine.markets import AssetSpec, ExchangeConfig, FeeTier, MarketSpec, default_config
from engine.risk import DEFAULT_RISK, AssetRisk
from engine.types import MarketKind


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXCHANGE_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./data/exchange.db"
    host: str = "127.0.0.1"
    port: int = 8000
    admin_key: str | None = None
    admin_secret: str | None = None
    # An operator key that may only post oracle prices (the feed's key), if set.
    oracle_key: str | None = None
    oracle_secret: str | None = None
    markets: str | None = None  # path to a JSON markets file; None = built-in defaults
    rate_limits: Literal["on", "off"] = "on"
    data_dir: str = "./data"
    recv_window_ms: int = 5000
    batch_max: int = 512  # sequencer: max commands per group commit
    ws_queue_size: int = 4096  # frames queued per client (when not written directly)
    ws_buffer_bytes: int = 1 << 20  # unsent bytes per client (frames written directly)
    ws_direct: bool = True  # write frames straight to uvicorn's transport
    hot_routes: bool = True  # order entry and cancel served past FastAPI (app/api/hot.py)
    snapshot_every: int = 10_000  # commands between snapshots
    snapshot_interval_s: float = 60.0  # or this long, whichever comes first (if anything changed)
    snapshot_keep: int = 3  # newest snapshots kept

    @property
    def rate_limits_enabled(self) -> bool:
        return self.rate_limits == "on"


def load_exchange_config(path: str | None) -> ExchangeConfig:
    """The built-in config for None, else the JSON markets file at `path`."""
    if path is None:
        return default_config()
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"markets file {path}: {exc}") from exc
    problems: list[str] = []
    config = _build(raw, problems)
    if config is not None:
        problems.extend(config.validate())
    if problems or config is None:
        raise ValueError(f"markets file {path}: " + "; ".join(problems))
    return config


def _build(raw: Any, problems: list[str]) -> ExchangeConfig | None:
    if not isinstance(raw, dict):
        problems.append("top level must be an object")
        return None
    unknown = set(raw) - {
        "assets",
        "markets",
        "fee_tiers",
        "max_batch",
        "market_slippage_ppm",
        "lending",
        "max_cure_window_s",
        "oracle_stale_s",
        "risk",
        "interest_interval_s",
        "funding_sample_s",
        "funding_interval_s",
        "impact_notional",
        *_LIQUIDATION_FRACTIONS,
        "liquidation_step_ms",
    }
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)}")
    if not isinstance(raw.get("assets"), dict) or not isinstance(raw.get("markets"), list):
        problems.append('"assets" must be an object and "markets" a list')
        return None
    assets: dict[str, AssetSpec] = {}
    for symbol, spec in raw["assets"].items():
        decimals = spec.get("decimals") if isinstance(spec, dict) else None
        if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= 18:
            problems.append(f"asset {symbol}: decimals must be an integer 0..18")
            continue
        assets[symbol] = AssetSpec(symbol, decimals)
    markets: dict[str, MarketSpec] = {}
    for item in raw["markets"]:
        market = _market(item, assets, problems)
        if market is not None:
            if market.symbol in markets:
                problems.append(f"{market.symbol}: defined twice")
            markets[market.symbol] = market
    extra: dict[str, Any] = {}
    if "fee_tiers" in raw:
        fee_tiers: dict[int, FeeTier] = {}
        tiers = raw["fee_tiers"] if isinstance(raw["fee_tiers"], dict) else {}
        for tier_id, tier in tiers.items():
            try:
                fee_tiers[int(tier_id)] = FeeTier(int(tier["maker_ppm"]), int(tier["taker_ppm"]))
            except (KeyError, TypeError, ValueError):
                problems.append(f"fee tier {tier_id}: needs integer maker_ppm and taker_ppm")
        extra["fee_tiers"] = fee_tiers
    for key in ("max_batch", "market_slippage_ppm"):
        if key in raw:
            if not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 0:
                problems.append(f"{key} must be a non-negative integer")
            else:
                extra[key] = raw[key]
    if "max_cure_window_s" in raw:
        seconds = raw["max_cure_window_s"]
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 0:
            problems.append("max_cure_window_s must be a non-negative integer")
        else:
            extra["max_cure_window_ms"] = seconds * 1000
    for key in ("oracle_stale_s", "interest_interval_s"):
        if key in raw:
            seconds = raw[key]
            if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 1:
                problems.append(f"{key} must be a positive integer")
            else:
                extra[key[:-2] + "_ms"] = seconds * 1000
    _liquidation(raw, extra, problems)
    if "risk" in raw:
        extra["risk"] = _risk(raw["risk"], problems)
    quotes = {m.quote for m in markets.values()}
    extra["lending"] = _lending(
        raw.get("lending", {}), assets, quotes.pop() if len(quotes) == 1 else "", problems
    )
    funding = _funding(raw, assets, problems)
    if funding is not None:
        extra["funding"] = funding
    if not markets:
        problems.append("no markets defined")
    if problems:
        return None
    return ExchangeConfig(assets=assets, markets=markets, **extra)


def _funding(
    raw: dict[str, Any], assets: dict[str, AssetSpec], problems: list[str]
) -> FundingParams | None:
    """`funding_sample_s`, `funding_interval_s` (whole seconds) and `impact_notional`
    (a decimal string of the quote asset) over the defaults of engine/funding.py."""
    keys = ("funding_sample_s", "funding_interval_s", "impact_notional")
    if not any(k in raw for k in keys):
        return None
    sample, interval = DEFAULT_FUNDING.sample_ms, DEFAULT_FUNDING.interval_ms
    impact = DEFAULT_FUNDING.impact_notional
    for key in keys[:2]:
        if key in raw:
            seconds = raw[key]
            if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 1:
                problems.append(f"{key} must be a positive integer")
                return None
            if key == "funding_sample_s":
                sample = seconds * 1000
            else:
                interval = seconds * 1000
    if "impact_notional" in raw:
        quotes = {m["quote"] for m in raw["markets"] if isinstance(m, dict) and "quote" in m}
        quote = quotes.pop() if len(quotes) == 1 else ""
        try:
            impact = parse_units(str(raw["impact_notional"]), assets[quote].decimals)
        except (KeyError, ValueError, FixedPointError):
            problems.append("impact_notional must be a decimal amount of the quote asset")
            return None
    return FundingParams(sample, interval, impact)


_RISK_FIELDS = {
    "initial": "initial_ppm",
    "maintenance": "maintenance_ppm",
    "liquidation_end": "liquidation_end_ppm",
    "slippage": "slippage_ppm",
    "supply_haircut": "supply_haircut_ppm",
}
_LENDING_FIELDS = {
    "base_rate": "base_ppm",
    "slope1": "slope1_ppm",
    "slope2": "slope2_ppm",
    "optimal_utilization": "optimal_ppm",
    "reserve_factor": "reserve_factor_ppm",
    "max_utilization": "max_utilization_ppm",
}


def _per_asset(
    raw: Any,
    what: str,
    fields: dict[str, str],
    out: dict[str, Any],
    make: Callable[..., Any],
    problems: list[str],
    optional: dict[str, int] | None = None,
) -> None:
    """`{"BTC": {"field": "0.12", ...}}` over `out` (the defaults): fractions as decimal
    strings, fields not given keep the asset's defaults; an asset without defaults must
    give every field but those in `optional`."""
    if not isinstance(raw, dict):
        problems.append(f"{what} must be an object of assets")
        return
    for asset, given in raw.items():
        if not isinstance(given, dict) or set(given) - set(fields):
            problems.append(f"{what} {asset}: fields are {', '.join(fields)}")
            continue
        base = out.get(asset)
        values = dict(optional or {})
        if base is not None:
            values.update({f: getattr(base, f) for f in fields.values()})
        missing = [k for k, f in fields.items() if f not in values and k not in given]
        if missing:
            problems.append(f"{what} {asset}: a new asset needs {', '.join(missing)}")
            continue
        try:
            for key, value in given.items():
                values[fields[key]] = parse_units(str(value), 6)
            out[asset] = make(**values)
        except (FixedPointError, TypeError) as exc:
            problems.append(f"{what} {asset}: {exc}")


_LIQUIDATION_FRACTIONS = {
    "liquidation_slippage": "liquidation_slippage_ppm",
    "liquidation_fee": "liquidation_fee_ppm",
    "backstop_floor": "backstop_floor_ppm",
}


def _liquidation(raw: dict[str, Any], extra: dict[str, Any], problems: list[str]) -> None:
    """Liquidation settings (engine/liquidation.py): fractions as decimals, the step in ms."""
    for key, field in _LIQUIDATION_FRACTIONS.items():
        if key in raw:
            try:
                extra[field] = parse_units(str(raw[key]), 6)
            except FixedPointError as exc:
                problems.append(f"{key}: {exc}")
    if "liquidation_step_ms" in raw:
        step = raw["liquidation_step_ms"]
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            problems.append("liquidation_step_ms must be a positive integer")
        else:
            extra["liquidation_step_ms"] = step


def _risk(raw: Any, problems: list[str]) -> dict[str, AssetRisk]:
    """Price shocks per asset (DESIGN section 7) over the built-in defaults."""
    out = dict(DEFAULT_RISK)
    _per_asset(raw, "risk", _RISK_FIELDS, out, AssetRisk, problems, {"supply_haircut_ppm": 0})
    return out


def _lending(raw: Any, assets: dict[str, AssetSpec], quote: str, problems: list[str]
             ) -> dict[str, LendingParams]:  # fmt: skip
    """Pool rate curves per asset (DESIGN section 6) over the built-in defaults; an asset
    the defaults do not know starts from the volatile curve (the quote: the stable one)."""
    out = dict(DEFAULT_LENDING)
    for asset in assets:
        out.setdefault(asset, STABLE if asset == quote else VOLATILE)
    _per_asset(raw, "lending", _LENDING_FIELDS, out, LendingParams, problems)
    return {a: p for a, p in out.items() if a in assets}


def _market(item: Any, assets: dict[str, AssetSpec], problems: list[str]) -> MarketSpec | None:
    if not isinstance(item, dict):
        problems.append("each market must be an object")
        return None
    symbol = item.get("symbol", "?")
    try:
        kind = MarketKind(item["kind"])
        base, quote = assets[item["base"]], assets[item["quote"]]
    except KeyError as exc:
        problems.append(f"market {symbol}: missing or unknown {exc}")
        return None
    except ValueError:
        problems.append(f"market {symbol}: kind must be one of {[k.value for k in MarketKind]}")
        return None
    try:
        return MarketSpec(
            symbol=symbol,
            kind=kind,
            base=base.symbol,
            quote=quote.symbol,
            tick=parse_units(item["tick"], quote.decimals),
            lot=parse_units(item["lot"], base.decimals),
            min_size=parse_units(
                item["min_size"] if "min_size" in item else item["lot"], base.decimals
            ),
            base_decimals=base.decimals,
            quote_decimals=quote.decimals,
            max_price=parse_units(item["max_price"], quote.decimals) if "max_price" in item else 0,
        )
    except KeyError as exc:
        problems.append(f"market {symbol}: missing {exc}")
    except ValueError as exc:
        problems.append(f"market {symbol}: {exc}")
    return None
