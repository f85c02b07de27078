"""Public market data read model: L2 books, recent trades, candles, tickers.

Rules owned here:
* Fed only by engine events, after commit, in seq order (`on_batch`); it never
  touches engine state and does no I/O.
* Each public message is serialized ONCE (orjson) and returned as (channel, bytes)
  for the hub to fan out unchanged.
* Book messages of a market chain: a message's `prev_seq` is the `seq` of the
  previous book message of that market (0 at start) and a snapshot carries the seq
  of the last delta applied, so a client detects gaps. All `BookDelta`s of one
  market in one committed batch are merged into one message (`on_batch`), whose
  `seq` is that of the last command that changed the book. `checksum` is taken
  over the top 25 levels of the book after the message (exchange_client.checksum).
* Candles (1m, 5m, 1h) are keyed by the trade's timestamp bucket; periods without
  trades produce no candle. The ticker's 24h figures come from the 1m candles
  whose bucket lies in the 24h ending at `now_ts`.
"""

from __future__ import annotations

import zlib
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from itertools import islice
from typing import Any

import orjson
from sortedcontainers import SortedDict

from app.views import rate_wire
from engine.events import (
    BookDelta,
    Event,
    FundingSampled,
    IndexStale,
    IndexUpdated,
    MarketStateChanged,
    OpenInterestChanged,
    TradeEvent,
)
from engine.fixedpoint import format_units
from engine.markets import ExchangeConfig, MarketSpec
from engine.positions import mark_price
from engine.types import MarketKind, MarketState
from exchange_client.checksum import CHECKSUM_DEPTH, normalize

INTERVALS: dict[str, int] = {"1m": 60_000, "5m": 300_000, "1h": 3_600_000}
DAY_MS = 86_400_000
MAX_TRADES = 1000
MAX_CANDLES = 1000
MAX_1M_CANDLES = DAY_MS // 60_000  # the 24h ticker needs a full day of 1m candles
PRICE_MEMO = 65_536

Wire = dict[str, Any]
_LevelStr = tuple[str, str, str]  # price, size, and both normalized for the checksum
Message = tuple[str, bytes]


def _every_channel(channel: str) -> bool:
    return True


@dataclass(slots=True)
class Candle:
    open_ts: int
    open: int
    high: int
    low: int
    close: int
    volume: int = 0  # base atomic units
    quote_volume: int = 0  # quote atomic units
    trades: int = 0

    def add(self, price: int, size: int, notional: int) -> None:
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.close = price
        self.volume += size
        self.quote_volume += notional
        self.trades += 1


class Book:
    """One market's aggregated L2 book (int price -> int size) and its message chain.

    Each level's wire strings (and their checksum form) are made once, when the level
    changes, so a checksum or a snapshot never re-formats the whole top of the book.
    """

    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self.bids: SortedDict = SortedDict()  # ascending; best bid is the last
        self.asks: SortedDict = SortedDict()  # ascending; best ask is the first
        self._strs: tuple[dict[int, _LevelStr], dict[int, _LevelStr]] = ({}, {})  # asks, bids
        self.seq = 0  # seq of the last book message of this market
        self._checksum: int | None = None  # None = top 25 changed, recompute
        self._price_str: dict[int, str] = {}

    def fmt_price(self, price: int) -> str:
        """`MarketSpec.fmt_price`, memoized (prices repeat; the memo is bounded)."""
        text = self._price_str.get(price)
        if text is None:
            if len(self._price_str) >= PRICE_MEMO:
                self._price_str.clear()
            text = self._price_str[price] = self.spec.fmt_price(price)
        return text

    def apply(self, is_bid: bool, price: int, size: int) -> list[str]:
        """Set one level (size 0 removes it); returns the level as wire strings."""
        side, strs = (self.bids, self._strs[1]) if is_bid else (self.asks, self._strs[0])
        if self._checksum is not None and self._in_top(side, is_bid, price):
            self._checksum = None
        ps, ss = self.fmt_price(price), self.spec.fmt_size(size)
        if size > 0:
            side[price] = size
            strs[price] = (ps, ss, normalize(ps) + normalize(ss))
        else:
            side.pop(price, None)
            strs.pop(price, None)
        return [ps, ss]

    @staticmethod
    def _in_top(side: SortedDict, is_bid: bool, price: int) -> bool:
        if len(side) < CHECKSUM_DEPTH:
            return True
        if is_bid:
            return bool(price >= side.peekitem(-CHECKSUM_DEPTH)[0])
        return bool(price <= side.peekitem(CHECKSUM_DEPTH - 1)[0])

    def _top(self, is_bid: bool, depth: int | None) -> list[_LevelStr]:
        side, strs = (self.bids, self._strs[1]) if is_bid else (self.asks, self._strs[0])
        n = len(side) if depth is None else min(depth, len(side))
        keys = side.islice(len(side) - n, reverse=True) if is_bid else side.islice(0, n)
        return [strs[p] for p in keys]

    def levels(self, is_bid: bool, depth: int | None = None) -> list[list[str]]:
        """Best first: bids descending, asks ascending."""
        return [[ps, ss] for ps, ss, _ in self._top(is_bid, depth)]

    def checksum(self) -> int:
        """exchange_client.checksum.book_checksum of the top 25, from the cached strings."""
        if self._checksum is None:
            top = self._top(False, CHECKSUM_DEPTH) + self._top(True, CHECKSUM_DEPTH)
            text = "".join([norm for _, _, norm in top])
            self._checksum = zlib.crc32(text.encode("ascii")) & 0xFFFFFFFF
        return self._checksum

    def best(self, is_bid: bool) -> tuple[int, int] | None:
        side = self.bids if is_bid else self.asks
        if not side:
            return None
        price, size = side.peekitem(-1 if is_bid else 0)
        return int(price), int(size)


class MarketData:
    """All public read models; `on_batch` (or `on_command`) returns the messages to publish."""

    def __init__(self, config: ExchangeConfig) -> None:
        self.config = config
        self.books = {m: Book(spec) for m, spec in config.markets.items()}
        self.trades: dict[str, deque[Wire]] = {m: deque(maxlen=MAX_TRADES) for m in self.books}
        self._candles: dict[tuple[str, str], deque[Candle]] = {
            (m, iv): deque(maxlen=MAX_1M_CANDLES if iv == "1m" else MAX_CANDLES)
            for m in self.books
            for iv in INTERVALS
        }
        self._last: dict[str, int] = {}
        self._day: dict[str, tuple[int, Candle | None]] = {}  # 24h cache per market
        self._state: dict[str, str] = {m: MarketState.OPEN.value for m in self.books}
        # asset -> (index price in quote atomic units, ts it was set, stale)
        self.indexes: dict[str, tuple[int, int, bool]] = {}
        # perp -> the last funding sample: (predicted rate ppb, mark basis, next settlement ts)
        self.funding: dict[str, tuple[int, int, int]] = {}
        self.open_interest: dict[str, int] = {}  # perp -> sum of long positions
        self.seq = 0
        # asset -> the markets whose ticker an index update of that asset changes
        self._markets_of: defaultdict[str, dict[str, None]] = defaultdict(dict)
        for m, b in self.books.items():
            self._markets_of[b.spec.base][m] = None

    # -- feeding -----------------------------------------------------------------

    def on_command(self, seq: int, ts: int, events: Sequence[Event]) -> list[Message]:
        return self.on_batch([(seq, ts, events)])

    def on_batch(
        self,
        commands: Sequence[tuple[int, int, Sequence[Event]]],
        wanted: Callable[[str], bool] = _every_channel,
    ) -> list[Message]:
        """The messages of a committed batch, in this order: one book delta per market
        whose book changed (its `seq` that of the batch's last command changing it),
        then the trades in order, then the last ticker and candles of each market
        touched (they are state: what they were mid-batch is superseded).

        Only the messages of channels `wanted` says someone follows are built (the read
        models change all the same): with nobody subscribed, formatting tickers, candles
        and frames was a fifth of what publishing cost."""
        deltas: dict[str, tuple[dict[int, int], dict[int, int], int]] = {}
        trades: list[Message] = []
        touched: dict[tuple[str, str], Candle] = {}
        ticked: dict[str, None] = {}
        for seq, _ts, events in commands:
            self.seq = seq
            self._collect(seq, events, deltas, trades, touched, ticked, wanted)
        ts = commands[-1][1] if commands else 0  # the tickers' "now"
        out: list[Message] = []
        for m, (b, a, s) in deltas.items():
            if b or a:
                message = self._book_delta(s, m, b, a, wanted(f"book:{m}"))
                if message is not None:
                    out.append(message)
        out += trades
        for market in ticked:
            channel = f"ticker:{market}"
            if wanted(channel):
                out.append((channel, _dumps("ticker", self.ticker(market, ts))))
        for (market, iv), candle in touched.items():
            channel = f"candles:{market}:{iv}"
            if wanted(channel):
                out.append((channel, _dumps("candle", self._candle_wire(market, iv, candle))))
        return out

    def _collect(
        self,
        seq: int,
        events: Sequence[Event],
        deltas: dict[str, tuple[dict[int, int], dict[int, int], int]],
        trades: list[Message],
        touched: dict[tuple[str, str], Candle],
        ticked: dict[str, None],
        wanted: Callable[[str], bool],
    ) -> None:
        """One command's events into the batch's accumulators (the read models that are
        not books change here: trades, candles, indexes, funding, market states)."""
        books = self.books
        for ev in events:
            if isinstance(ev, BookDelta) and ev.market in books:
                bids, asks, _ = deltas.get(ev.market) or ({}, {}, seq)
                bids.update(ev.bids)
                asks.update(ev.asks)
                deltas[ev.market] = (bids, asks, seq)
            elif isinstance(ev, TradeEvent) and ev.market in books:
                wire = self._trade(ev, touched)
                channel = f"trades:{ev.market}"
                if wanted(channel):
                    trades.append((channel, _dumps("trade", wire)))
                ticked[ev.market] = None
            elif isinstance(ev, MarketStateChanged) and ev.market in books:
                self._state[ev.market] = ev.state.value
            elif isinstance(ev, IndexUpdated):
                self.indexes[ev.asset] = (ev.price, ev.ts, False)
                ticked.update(self._markets_of[ev.asset])
            elif isinstance(ev, IndexStale):
                self.indexes[ev.asset] = (ev.price, ev.set_ts, True)
                ticked.update(self._markets_of[ev.asset])
            elif isinstance(ev, FundingSampled) and ev.market in books:
                self.funding[ev.market] = (ev.rate, ev.basis, ev.next_funding_ts)
                self.open_interest[ev.market] = ev.open_interest
                ticked[ev.market] = None
            elif isinstance(ev, OpenInterestChanged) and ev.market in books:
                self.open_interest[ev.market] = ev.open_interest
                ticked[ev.market] = None

    def index_wire(self, asset: str, quote_decimals: int) -> Wire | None:
        """An asset's index for the wire: price, when it was set, whether it is stale."""
        entry = self.indexes.get(asset)
        if entry is None:
            return None
        price, ts, stale = entry
        return {"price": format_units(price, quote_decimals), "ts": ts, "stale": stale}

    def _book_delta(
        self, seq: int, market: str, bids: dict[int, int], asks: dict[int, int], wanted: bool
    ) -> Message | None:
        """Apply a market's merged levels to its book; its message if `wanted`."""
        book = self.books[market]
        bid_levels = [book.apply(True, p, bids[p]) for p in sorted(bids, reverse=True)]
        ask_levels = [book.apply(False, p, asks[p]) for p in sorted(asks)]
        prev, book.seq = book.seq, seq
        if not wanted:
            return None
        msg = {
            "type": "book_delta",
            "market": market,
            "seq": seq,
            "prev_seq": prev,
            "bids": bid_levels,
            "asks": ask_levels,
            "checksum": book.checksum(),
        }
        return f"book:{market}", orjson.dumps(msg)

    def _trade(self, tr: TradeEvent, touched: dict[tuple[str, str], Candle]) -> Wire:
        """Record a trade (recent trades, last price, candles); its wire form."""
        book = self.books[tr.market]
        spec = book.spec
        wire: Wire = {
            "market": tr.market,
            "trade_id": str(tr.trade_id),
            "price": book.fmt_price(tr.price),
            "size": spec.fmt_size(tr.size),
            "side": tr.taker_side.value,
            "ts": tr.ts,
        }
        self.trades[tr.market].append(wire)
        self._last[tr.market] = tr.price
        notional = spec.notional(tr.price, tr.size)
        for iv, ms in INTERVALS.items():
            candle = self._candle_for(tr.market, iv, tr.ts - tr.ts % ms, tr.price)
            candle.add(tr.price, tr.size, notional)
            touched[tr.market, iv] = candle
        cached = self._day.get(tr.market)
        if cached is not None and tr.ts - tr.ts % 60_000 < cached[0]:
            del self._day[tr.market]  # a late trade changed a closed minute
        return wire

    def _candle_for(self, market: str, interval: str, open_ts: int, price: int) -> Candle:
        series = self._candles[market, interval]
        idx = len(series)
        while idx and series[idx - 1].open_ts >= open_ts:  # only late trades walk back
            idx -= 1
            if series[idx].open_ts == open_ts:
                return series[idx]
        candle = Candle(open_ts, price, price, price, price)
        if idx == len(series):
            series.append(candle)  # a full deque drops its oldest
        elif len(series) < (series.maxlen or 0):
            series.insert(idx, candle)
        elif idx:
            series.popleft()
            series.insert(idx - 1, candle)
        return candle

    # -- queries -----------------------------------------------------------------

    def market_state(self, market: str) -> str:
        """The operator's state, except that an open perp whose index is missing or stale
        trades reduce-only (DESIGN section 8) and says so."""
        state = self._state[market]
        spec = self.books[market].spec
        if state == MarketState.OPEN.value and spec.kind is MarketKind.PERP:
            index = self.indexes.get(spec.base)
            if index is None or index[2]:
                return MarketState.REDUCE_ONLY.value
        return state

    def book_snapshot(self, market: str, depth: int | None = 50) -> Wire:
        """`depth=None` gives the full book; the checksum always covers the top 25."""
        book = self.books[market]
        return {
            "market": market,
            "seq": book.seq,
            "bids": book.levels(True, depth),
            "asks": book.levels(False, depth),
            "checksum": book.checksum(),
        }

    def book_snapshot_message(self, market: str) -> Wire:
        return {"type": "book_snapshot", **self.book_snapshot(market, None)}

    def recent_trades(self, market: str, limit: int = 100) -> list[Wire]:
        """Newest first."""
        return list(islice(reversed(self.trades[market]), max(limit, 0)))

    def candles(self, market: str, interval: str, limit: int = 500) -> list[Wire]:
        """Oldest first; raises KeyError for an unknown market or interval."""
        series = self._candles[market, interval]
        n = min(max(limit, 0), MAX_CANDLES, len(series))
        tail = islice(series, len(series) - n, None)
        return [self._candle_wire(market, interval, c) for c in tail]

    def _candle_wire(self, market: str, interval: str, c: Candle) -> Wire:
        book = self.books[market]
        spec, fp = book.spec, book.fmt_price
        return {
            "market": market,
            "interval": interval,
            "open_ts": c.open_ts,
            "open": fp(c.open),
            "high": fp(c.high),
            "low": fp(c.low),
            "close": fp(c.close),
            "volume": spec.fmt_size(c.volume),
            "quote_volume": format_units(c.quote_volume, spec.quote_decimals),
            "trades": c.trades,
        }

    def ticker(self, market: str, now_ts: int) -> Wire:
        book = self.books[market]
        spec, fp = book.spec, book.fmt_price
        bid, ask = book.best(True), book.best(False)
        day = self._last_day(market, now_ts)
        last = self._last.get(market)
        index = self.indexes.get(spec.base)
        mark = None
        funding = self.funding.get(market)
        if spec.kind is MarketKind.PERP:
            mark = mark_price(
                index[0] if index else None,
                bid[0] if bid else None,
                ask[0] if ask else None,
                funding[1] if funding else 0,
            )
        change = pct = None
        if day is not None and last is not None:
            change = fp(last - day.open)
            ratio = Decimal(100 * (last - day.open)) / Decimal(day.open)
            pct = str(ratio.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))
        return {
            "market": market,
            "state": self.market_state(market),
            "best_bid": fp(bid[0]) if bid else None,
            "best_bid_size": spec.fmt_size(bid[1]) if bid else None,
            "best_ask": fp(ask[0]) if ask else None,
            "best_ask_size": spec.fmt_size(ask[1]) if ask else None,
            "last": fp(last) if last is not None else None,
            "mark": fp(mark) if mark is not None else None,
            "index": fp(index[0]) if index else None,
            "index_ts": index[1] if index else None,
            "index_stale": index[2] if index else None,
            "funding_rate": rate_wire(funding[0]) if funding else None,
            "next_funding_ts": funding[2] if funding else None,
            "open_interest": (
                spec.fmt_size(self.open_interest.get(market, 0))
                if spec.kind is MarketKind.PERP
                else None
            ),
            "open_24h": fp(day.open) if day else None,
            "high_24h": fp(day.high) if day else None,
            "low_24h": fp(day.low) if day else None,
            "volume_24h": spec.fmt_size(day.volume if day else 0),
            "quote_volume_24h": format_units(day.quote_volume if day else 0, spec.quote_decimals),
            "trades_24h": day.trades if day else 0,
            "change_24h": change,
            "change_24h_pct": pct,
            "ts": now_ts,
        }

    def _last_day(self, market: str, now_ts: int) -> Candle | None:
        """Totals of the 1440 one-minute buckets ending with the one holding `now_ts`.

        The closed minutes of the window are summed once per minute and cached; only the
        current minute's candle is added on each call.
        """
        bucket = now_ts - now_ts % 60_000
        series = self._candles[market, "1m"]
        cached = self._day.get(market)
        if cached is None or cached[0] != bucket:
            start = bucket - DAY_MS + 60_000
            closed = [c for c in reversed(series) if start <= c.open_ts < bucket]
            cached = (bucket, _merge(reversed(closed)))
            self._day[market] = cached
        current = [c for c in islice(reversed(series), 2) if c.open_ts == bucket]
        return _merge([cached[1], *current]) if current else cached[1]


def _merge(candles: Iterable[Candle | None]) -> Candle | None:
    """One candle covering these (oldest first); None when there are none."""
    out: Candle | None = None
    for c in candles:
        if c is None:
            continue
        if out is None:
            out = Candle(c.open_ts, c.open, c.high, c.low, c.close)
            out.volume, out.quote_volume, out.trades = c.volume, c.quote_volume, c.trades
            continue
        out.high = max(out.high, c.high)
        out.low = min(out.low, c.low)
        out.close = c.close
        out.volume += c.volume
        out.quote_volume += c.quote_volume
        out.trades += c.trades
    return out


def _dumps(kind: str, wire: Wire) -> bytes:
    return orjson.dumps({"type": kind, **wire})


def public_channels(markets: Iterable[str]) -> list[str]:
    """Every public channel name for these markets (for validation of subscribe)."""
    out: list[str] = []
    for m in markets:
        out += [f"book:{m}", f"trades:{m}", f"ticker:{m}"]
        out += [f"candles:{m}:{iv}" for iv in INTERVALS]
    return out
