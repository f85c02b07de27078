"""Engine values -> wire JSON (API.md): the one place integers become decimal strings.

Rule owned here: every price, size and amount leaves the server as a decimal
string formatted from integer atomic units, ids leave as strings, and the same
object is rendered the same way whether it comes from an event (live) or from
a database row (history).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.events import (
    MarginStateChanged,
    OrderView,
    PositionChanged,
    TradeEvent,
    Transfer,
    fill_row,
    posting_row,
)
from engine.fixedpoint import format_units
from engine.markets import ExchangeConfig, MarketSpec
from engine.risk import AssetRisk


def avg_price(spec: MarketSpec, filled: int, filled_notional: int) -> str | None:
    """The average fill price in the quote asset, rounded half to even to its decimals."""
    if filled <= 0:
        return None
    units, rest = divmod(filled_notional * 10**spec.base_decimals, filled)
    if 2 * rest > filled or (2 * rest == filled and units % 2):
        units += 1
    return format_units(units, spec.quote_decimals)


_ORDER_FIELDS = OrderView._fields
_LIVE = frozenset(("open", "partially_filled", "untriggered"))


def order_wire(config: ExchangeConfig, order: OrderView | Mapping[str, Any]) -> dict[str, Any]:
    """An order from an event (its OrderView) or a database row. Enum members are the
    strings they hold, so both render alike."""
    (order_id, _, client_order_id, market, side, type_, tif, price, trigger_price, size, filled,
     filled_notional, status, reduce_only, stp, expire_ts, created_ts, updated_ts,
     cancel_reason) = order if isinstance(order, OrderView) else [
        order[k] for k in _ORDER_FIELDS]  # fmt: skip
    spec = config.markets[market]
    return {
        "order_id": str(order_id),
        "client_order_id": client_order_id,
        "market": market,
        "side": side,
        "type": type_,
        "price": None if price is None else spec.fmt_price(price),
        "trigger_price": None if trigger_price is None else spec.fmt_price(trigger_price),
        "size": spec.fmt_size(size),
        "filled": spec.fmt_size(filled),
        "remaining": spec.fmt_size(size - filled if status in _LIVE else 0),
        "avg_fill_price": avg_price(spec, filled, filled_notional),
        "status": status,
        "time_in_force": tif,
        "reduce_only": bool(reduce_only),
        "stp": stp,
        "expire_ts": expire_ts,
        "cancel_reason": cancel_reason,
        "created_ts": created_ts,
        "updated_ts": updated_ts,
    }


def fill_from_trade(config: ExchangeConfig, t: TradeEvent, account_id: int) -> dict[str, Any]:
    """The fill of `account_id` in trade `t` (taker or maker side), as the fills route shows it."""
    return fill_row_wire(config, fill_row(t, account_id))


def fill_row_wire(config: ExchangeConfig, r: Mapping[str, Any]) -> dict[str, Any]:
    spec = config.markets[r["market"]]
    return {
        "trade_id": str(r["trade_id"]),
        "order_id": str(r["order_id"]),
        "market": r["market"],
        "side": r["side"],
        "price": spec.fmt_price(r["price"]),
        "size": spec.fmt_size(r["size"]),
        "fee": format_units(r["fee"], spec.quote_decimals),
        "fee_asset": spec.quote,
        "liquidity": r["liquidity"],
        "ts": r["ts"],
    }


def trade_row_wire(config: ExchangeConfig, r: Mapping[str, Any]) -> dict[str, Any]:
    spec = config.markets[r["market"]]
    return {
        "trade_id": str(r["trade_id"]),
        "market": r["market"],
        "price": spec.fmt_price(r["price"]),
        "size": spec.fmt_size(r["size"]),
        "side": r["taker_side"],
        "ts": r["ts"],
    }


def transfer_wire(config: ExchangeConfig, t: Transfer, account_id: int) -> dict[str, Any]:
    """A ledger entry as seen by `account_id`, exactly as the ledger route shows it."""
    return ledger_row_wire(config, posting_row(t, account_id))


def ledger_row_wire(config: ExchangeConfig, r: Mapping[str, Any]) -> dict[str, Any]:
    dec = config.assets[r["asset"]].decimals
    return {
        "entry_id": str(r["transfer_id"]),
        "account_id": str(r["account_id"]),
        "asset": r["asset"],
        "amount": format_units(r["amount"], dec),
        "balance_after": format_units(r["balance_after"], dec),
        "reason": r["reason"],
        "ref": r["ref"],
        "ts": r["ts"],
    }


def lending_wire(asset: str, decimals: int, pool: dict[str, int]) -> dict[str, Any]:
    """One lending pool: amounts in the asset, rates and ratios as decimal fractions a year."""
    return {
        "asset": asset,
        "supplied": format_units(pool["supplied"], decimals),
        "borrowed": format_units(pool["borrowed"], decimals),
        "utilization": format_units(pool["utilization_ppm"], 6),
        "borrow_rate": format_units(pool["borrow_rate_ppm"], 6),
        "supply_rate": format_units(pool["supply_rate_ppm"], 6),
        "max_utilization": format_units(pool["max_utilization_ppm"], 6),
        "reserve_factor": format_units(pool["reserve_factor_ppm"], 6),
    }


def risk_wire(risk: AssetRisk | None) -> dict[str, str] | None:
    """An asset's risk parameters as decimal fractions (0.12 = 12%)."""
    if risk is None:
        return None
    return {
        "initial": format_units(risk.initial_ppm, 6),
        "maintenance": format_units(risk.maintenance_ppm, 6),
        "liquidation_end": format_units(risk.liquidation_end_ppm, 6),
        "slippage": format_units(risk.slippage_ppm, 6),
        "supply_haircut": format_units(risk.supply_haircut_ppm, 6),
    }


def market_wire(spec: MarketSpec, state: str, risk: AssetRisk | None = None) -> dict[str, Any]:
    return {
        "symbol": spec.symbol,
        "kind": spec.kind.value,
        "base": spec.base,
        "quote": spec.quote,
        "tick_size": spec.fmt_price(spec.tick),
        "lot_size": spec.fmt_size(spec.lot),
        "min_size": spec.fmt_size(spec.min_size),
        "state": state,
        "risk": risk_wire(risk),
    }


def rate_wire(rate_ppb: int | None) -> str | None:
    """A funding rate (ppb per settlement) as a decimal fraction: 187500 -> "0.0001875"."""
    return None if rate_ppb is None else format_units(rate_ppb, 9)


def funding_row_wire(config: ExchangeConfig, r: Mapping[str, Any]) -> dict[str, Any]:
    """One funding settlement of a perp (GET /v1/markets/{m}/funding)."""
    spec = config.markets[r["market"]]
    return {
        "market": r["market"],
        "rate": rate_wire(r["rate"]),
        "premium": rate_wire(r["premium"]),
        "index_price": spec.fmt_price(r["index_price"]),
        "samples": r["samples"],
        "open_interest": spec.fmt_size(r["open_interest"]),
        "dust": format_units(r["dust"], spec.quote_decimals),
        "ts": r["ts"],
    }


def funding_payment_wire(config: ExchangeConfig, r: Mapping[str, Any]) -> dict[str, Any]:
    """One position's funding payment: `amount` > 0 paid, < 0 received (in the quote)."""
    spec = config.markets[r["market"]]
    return {
        "market": r["market"],
        "size": spec.fmt_size(r["size"]),
        "index_price": spec.fmt_price(r["index_price"]),
        "rate": rate_wire(r["rate"]),
        "amount": format_units(r["amount"], spec.quote_decimals),
        "asset": spec.quote,
        "ts": r["ts"],
    }


def health_wire(levels: dict[Any, int | None], decimals: int) -> dict[str, str | None]:
    """Health per level and equity in the quote asset; null where an asset has no price."""
    return {
        str(level): None if value is None else format_units(value, decimals)
        for level, value in levels.items()
    }


def position_event_wire(config: ExchangeConfig, e: PositionChanged) -> dict[str, Any]:
    """A position after a fill (private `account` channel): size, entry price, realized PnL."""
    spec = config.markets[e.market]
    entry = e.open_notional * spec.base_unit // e.size if e.size else None
    return {
        "market": e.market,
        "size": spec.fmt_size(e.size),
        "entry_price": None if entry is None else spec.fmt_price(entry),
        "realized_pnl": format_units(e.realized, spec.quote_decimals),
    }


def liquidation_wire(config: ExchangeConfig, r: Mapping[str, Any]) -> dict[str, Any]:
    """A liquidation slice or a bad debt (a `liquidations` row, or engine.events.
    liquidation_row of the event), amounts as decimal strings."""
    if r["kind"] == "slice":
        spec = config.markets[r["market"]]
        quote = spec.quote_decimals
        return {
            "kind": "slice",
            "account_id": str(r["account_id"]),
            "step": r["step"],
            "market": r["market"],
            "side": r["side"],
            "size": spec.fmt_size(r["size"]),
            "limit_price": spec.fmt_price(r["limit_price"]),
            "book_size": spec.fmt_size(r["book_size"]),
            "book_notional": format_units(r["book_notional"], quote),
            "backstop_size": spec.fmt_size(r["backstop_size"]),
            "backstop_notional": format_units(r["backstop_notional"], quote),
            "fee": format_units(r["fee"], quote),
            "ts": r["ts"],
        }
    dec = config.assets[r["asset"]].decimals
    return {
        "kind": "bad_debt",
        "account_id": str(r["account_id"]),
        "asset": r["asset"],
        "amount": format_units(r["amount"], dec),
        "insurance": format_units(r["insurance"], dec),
        "socialized": format_units(r["socialized"], dec),
        "suppliers": r["suppliers"],
        "ts": r["ts"],
    }


def margin_state_wire(config: ExchangeConfig, e: MarginStateChanged) -> dict[str, Any]:
    """An account entering or leaving a margin call or liquidation (private `margin`)."""
    quote = config.assets[config.quote_asset].decimals
    return {
        "state": e.state.value,
        "previous": e.previous.value,
        "deadline": e.deadline,
        "reason": e.reason,
        "health": {
            "maintenance": format_units(e.maintenance, quote),
            "liquidation_end": format_units(e.liquidation_end, quote),
            "equity": format_units(e.equity, quote),
        },
        "ts": e.ts,
    }
