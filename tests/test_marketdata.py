"""Market data read model: exact public messages built from hand-made engine events."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from app.marketdata import MarketData
from engine.events import BookDelta, IndexStale, IndexUpdated, MarketStateChanged, TradeEvent
from engine.fixedpoint import parse_units
from engine.markets import default_config
from engine.types import MarketState, Side
from exchange_client.checksum import book_checksum

BTC = "BTC-USDC"
H = 1_699_999_200_000  # a whole hour (so also a whole 5 and 1 minute)
DAY = 86_400_000


def px(text: str) -> int:
    return parse_units(text, 6)


def sz(text: str) -> int:
    return parse_units(text, 8)


def delta(bids: list[tuple[str, str]], asks: list[tuple[str, str]], market: str = BTC) -> BookDelta:
    return BookDelta(
        market,
        tuple((px(p), sz(s)) for p, s in bids),
        tuple((px(p), sz(s)) for p, s in asks),
    )


_trade_ids = iter(range(1, 10_000))


def trade(price: str, size: str, side: Side, ts: int, trade_id: int | None = None) -> TradeEvent:
    return TradeEvent(
        trade_id=trade_id if trade_id is not None else next(_trade_ids),
        market=BTC,
        price=px(price),
        size=sz(size),
        taker_side=side,
        maker_order_id=1,
        taker_order_id=2,
        maker_account=10,
        taker_account=11,
        maker_fee=0,
        taker_fee=0,
        ts=ts,
    )


def decoded(messages: list[tuple[str, bytes]]) -> list[tuple[str, dict[str, Any]]]:
    return [(channel, orjson.loads(body)) for channel, body in messages]


@pytest.fixture
def md() -> MarketData:
    return MarketData(default_config())


def test_book_deltas_chain_per_market_and_remove_levels(md: MarketData) -> None:
    out = decoded(md.on_command(5, H, [delta([("65000", "1.5")], [("65001", "0.25")])]))
    assert out == [
        (
            "book:BTC-USDC",
            {
                "type": "book_delta",
                "market": BTC,
                "seq": 5,
                "prev_seq": 0,
                "bids": [["65000", "1.5"]],
                "asks": [["65001", "0.25"]],
                "checksum": book_checksum([["65000", "1.5"]], [["65001", "0.25"]]),
            },
        )
    ]
    eth = BookDelta("ETH-USDC", ((parse_units("3000", 6), parse_units("2", 8)),), ())
    out = decoded(md.on_command(7, H, [eth]))
    assert out[0][0] == "book:ETH-USDC"
    assert (out[0][1]["seq"], out[0][1]["prev_seq"]) == (7, 0)
    assert md.on_command(8, H, []) == []  # no book change: no message, chain untouched

    # two deltas of one command are merged into one message, bids best first
    events = [delta([("65000", "0")], []), delta([("64999.9", "2")], [("65001", "0")])]
    out = decoded(md.on_command(9, H, events))
    assert out == [
        (
            "book:BTC-USDC",
            {
                "type": "book_delta",
                "market": BTC,
                "seq": 9,
                "prev_seq": 5,
                "bids": [["65000", "0"], ["64999.9", "2"]],
                "asks": [["65001", "0"]],
                "checksum": book_checksum([["64999.9", "2"]], []),
            },
        )
    ]
    snap = md.book_snapshot(BTC)
    assert snap == {
        "market": BTC,
        "seq": 9,
        "bids": [["64999.9", "2"]],
        "asks": [],
        "checksum": book_checksum([["64999.9", "2"]], []),
    }
    assert md.book_snapshot_message(BTC) == {"type": "book_snapshot", **snap}
    assert md.book_snapshot("ETH-USDC")["seq"] == 7


def test_a_batch_sends_one_delta_per_market_then_trades_then_the_last_ticker(
        md: MarketData) -> None:
    md.on_command(3, H, [delta([("64990", "1")], [("65010", "1")])])
    batch = [
        (4, H + 1, [delta([("64995", "2")], [])]),
        (5, H + 2, [delta([], [("65010", "0.5")]), trade("65010", "0.5", Side.BUY, H + 2)]),
        (6, H + 3, [delta([("64995", "0")], [], market="ETH-USDC")]),
        (7, H + 4, []),  # changes nothing
        (8, H + 5, [delta([("64995", "0"), ("64996", "1")], []),
                    trade("64990", "0.25", Side.SELL, H + 5)]),
    ]
    out = decoded(md.on_batch(batch))
    assert [channel for channel, _ in out] == [
        "book:BTC-USDC", "book:ETH-USDC", "trades:BTC-USDC", "trades:BTC-USDC",
        "ticker:BTC-USDC", "candles:BTC-USDC:1m", "candles:BTC-USDC:5m", "candles:BTC-USDC:1h"]
    btc_bids = [["64996", "1"], ["64990", "1"]]
    assert out[0][1] == {
        "type": "book_delta", "market": BTC, "seq": 8, "prev_seq": 3,  # 4, 5 and 8 merged
        "bids": [["64996", "1"], ["64995", "0"]], "asks": [["65010", "0.5"]],
        "checksum": book_checksum(btc_bids, [["65010", "0.5"]]),
    }
    assert (out[1][1]["seq"], out[1][1]["prev_seq"]) == (6, 0)
    assert [(m["price"], m["side"]) for _, m in out[2:4]] == [("65010", "buy"), ("64990", "sell")]
    ticker = out[4][1]
    assert (ticker["last"], ticker["best_bid"], ticker["best_ask"]) == ("64990", "64996", "65010")
    assert out[5][1]["close"] == "64990" and out[5][1]["trades"] == 2
    assert md.book_snapshot(BTC)["seq"] == 8 and md.seq == 8
    assert md.on_batch([]) == []


def test_checksum_covers_top_25_only_and_tracks_every_change(md: MarketData) -> None:
    rng = random.Random(7)
    bids: dict[int, int] = {}
    asks: dict[int, int] = {}
    for seq in range(1, 400):
        b = [
            (rng.randrange(600_000, 650_000) * 100_000, rng.choice([0, 10_000, 2_500_000]))
            for _ in range(rng.randrange(0, 4))
        ]
        a = [
            (rng.randrange(650_001, 700_000) * 100_000, rng.choice([0, 10_000, 70_000]))
            for _ in range(rng.randrange(0, 4))
        ]
        msgs = md.on_command(seq, H, [BookDelta(BTC, tuple(b), tuple(a))])
        for side, levels in ((bids, b), (asks, a)):
            for p, s in levels:
                if s:
                    side[p] = s
                else:
                    side.pop(p, None)
        spec = md.books[BTC].spec
        want_b = [[spec.fmt_price(p), spec.fmt_size(bids[p])] for p in sorted(bids, reverse=True)]
        want_a = [[spec.fmt_price(p), spec.fmt_size(asks[p])] for p in sorted(asks)]
        want = book_checksum(want_b[:25], want_a[:25])
        if msgs:
            assert orjson.loads(msgs[0][1])["checksum"] == want
        snap = md.book_snapshot(BTC, depth=3)
        assert snap["bids"] == want_b[:3] and snap["asks"] == want_a[:3]
        assert snap["checksum"] == want
    assert len(bids) > 25 and len(asks) > 25
    full = md.book_snapshot_message(BTC)
    assert full["bids"] == want_b and full["asks"] == want_a


def test_trades_candles_ticker_messages(md: MarketData) -> None:
    md.on_command(1, H, [delta([("64999", "3")], [("65020", "0.5")])])
    out = decoded(
        md.on_command(
            2,
            H + 1000,
            [
                trade("65000", "0.5", Side.BUY, H + 1000, 1),
                trade("65000.5", "0.25", Side.BUY, H + 1000, 2),
            ],
        )
    )
    assert [c for c, _ in out] == [
        "trades:BTC-USDC",
        "trades:BTC-USDC",
        "ticker:BTC-USDC",
        "candles:BTC-USDC:1m",
        "candles:BTC-USDC:5m",
        "candles:BTC-USDC:1h",
    ]
    assert out[0][1] == {
        "type": "trade",
        "market": BTC,
        "trade_id": "1",
        "price": "65000",
        "size": "0.5",
        "side": "buy",
        "ts": H + 1000,
    }
    assert out[1][1]["trade_id"] == "2"
    assert out[2][1] == {
        "type": "ticker",
        "market": BTC,
        "state": "open",
        "best_bid": "64999",
        "best_bid_size": "3",
        "best_ask": "65020",
        "best_ask_size": "0.5",
        "last": "65000.5",
        "mark": None,
        "index": None,
        "index_ts": None,
        "index_stale": None,
        "funding_rate": None,
        "next_funding_ts": None,
        "open_interest": None,
        "open_24h": "65000",
        "high_24h": "65000.5",
        "low_24h": "65000",
        "volume_24h": "0.75",
        "quote_volume_24h": "48750.125",
        "trades_24h": 2,
        "change_24h": "0.5",
        "change_24h_pct": "0.00",
        "ts": H + 1000,
    }
    assert out[3][1] == {
        "type": "candle",
        "market": BTC,
        "interval": "1m",
        "open_ts": H,
        "open": "65000",
        "high": "65000.5",
        "low": "65000",
        "close": "65000.5",
        "volume": "0.75",
        "quote_volume": "48750.125",
        "trades": 2,
    }

    md.on_command(3, H + 30_000, [trade("64999.9", "1", Side.SELL, H + 30_000, 3)])
    out = decoded(md.on_command(4, H + 61_000, [trade("65010", "0.0001", Side.BUY, H + 61_000, 4)]))
    candles = {c: m for c, m in out if c.startswith("candles:")}
    assert candles["candles:BTC-USDC:1m"]["open_ts"] == H + 60_000
    assert candles["candles:BTC-USDC:5m"]["trades"] == 4

    assert md.candles(BTC, "1m", 10) == [
        {
            "market": BTC,
            "interval": "1m",
            "open_ts": H,
            "open": "65000",
            "high": "65000.5",
            "low": "64999.9",
            "close": "64999.9",
            "volume": "1.75",
            "quote_volume": "113750.025",
            "trades": 3,
        },
        {
            "market": BTC,
            "interval": "1m",
            "open_ts": H + 60_000,
            "open": "65010",
            "high": "65010",
            "low": "65010",
            "close": "65010",
            "volume": "0.0001",
            "quote_volume": "6.501",
            "trades": 1,
        },
    ]
    assert md.candles(BTC, "1m", 1) == md.candles(BTC, "1m", 10)[1:]
    for iv in ("5m", "1h"):
        assert md.candles(BTC, iv, 10) == [
            {
                "market": BTC,
                "interval": iv,
                "open_ts": H,
                "open": "65000",
                "high": "65010",
                "low": "64999.9",
                "close": "65010",
                "volume": "1.7501",
                "quote_volume": "113756.526",
                "trades": 4,
            },
        ]
    assert [t["trade_id"] for t in md.recent_trades(BTC, 10)] == ["4", "3", "2", "1"]
    assert md.recent_trades(BTC, 2) == [
        {
            "market": BTC,
            "trade_id": "4",
            "price": "65010",
            "size": "0.0001",
            "side": "buy",
            "ts": H + 61_000,
        },
        {
            "market": BTC,
            "trade_id": "3",
            "price": "64999.9",
            "size": "1",
            "side": "sell",
            "ts": H + 30_000,
        },
    ]


def test_ticker_rolling_24h_from_1m_candles(md: MarketData) -> None:
    md.on_command(1, H, [trade("65000", "0.5", Side.BUY, H + 1000)])
    md.on_command(2, H, [trade("64999.9", "1", Side.SELL, H + 30_000)])
    md.on_command(3, H, [trade("65010", "0.0001", Side.BUY, H + 61_000)])

    def day(now: int) -> tuple[Any, ...]:
        t = md.ticker(BTC, now)
        return (
            t["open_24h"],
            t["high_24h"],
            t["low_24h"],
            t["volume_24h"],
            t["quote_volume_24h"],
            t["trades_24h"],
            t["last"],
            t["change_24h"],
            t["change_24h_pct"],
        )

    assert day(H + 61_000) == (
        "65000",
        "65010",
        "64999.9",
        "1.5001",
        "97506.401",
        3,
        "65010",
        "10",
        "0.02",
    )
    # the first minute leaves the window once its bucket is 24h old
    assert day(H + DAY - 1) == day(H + 61_000)
    assert day(H + DAY) == ("65010", "65010", "65010", "0.0001", "6.501", 1, "65010", "0", "0.00")
    # a trade in the current minute is added to the cached closed minutes
    md.on_command(4, H + DAY + 5_000, [trade("64000", "0.1", Side.SELL, H + DAY + 5_000)])
    assert day(H + DAY + 6_000) == (
        "65010",
        "65010",
        "64000",
        "0.1001",
        "6406.501",
        2,
        "64000",
        "-1010",
        "-1.55",
    )
    assert day(H + 2 * DAY + 60_000) == (None, None, None, "0", "0", 0, "64000", None, None)
    empty = MarketData(default_config()).ticker(BTC, H)
    assert (empty["last"], empty["best_bid"], empty["volume_24h"]) == (None, None, "0")


def test_late_trade_lands_in_its_own_candle(md: MarketData) -> None:
    md.on_command(1, H, [trade("65010", "1", Side.BUY, H + 61_000)])
    md.ticker(BTC, H + 62_000)  # caches the closed minutes
    md.on_command(2, H, [trade("65000", "1", Side.BUY, H + 1000)])
    assert [c["open_ts"] for c in md.candles(BTC, "1m", 10)] == [H, H + 60_000]
    assert md.ticker(BTC, H + 62_000)["trades_24h"] == 2


def test_market_state(md: MarketData) -> None:
    assert md.market_state(BTC) == "open"
    assert md.on_command(1, H, [MarketStateChanged(BTC, MarketState.HALTED)]) == []
    assert md.market_state(BTC) == "halted"
    assert md.market_state("ETH-USDC") == "open"
    assert md.ticker(BTC, H)["state"] == "halted"


def test_index_prices_update_the_tickers_of_markets_on_that_asset(md: MarketData) -> None:
    out = decoded(md.on_command(5, H, [IndexUpdated("BTC", px("65000.5"), H)]))
    assert [c for c, _ in out] == ["ticker:BTC-USDC", "ticker:BTC-PERP"]
    perp = out[1][1]
    assert (perp["index"], perp["mark"]) == ("65000.5", "65000.5")  # empty book: the index
    ticker = out[0][1]
    assert (ticker["index"], ticker["index_ts"], ticker["index_stale"]) == ("65000.5", H, False)
    assert md.index_wire("BTC", 6) == {"price": "65000.5", "ts": H, "stale": False}
    assert md.index_wire("ETH", 6) is None
    out = decoded(md.on_command(6, H + 20_000, [IndexStale("BTC", px("65000.5"), H, H + 20_000)]))
    assert [c for c, _ in out] == ["ticker:BTC-USDC", "ticker:BTC-PERP"]
    assert (out[0][1]["index"], out[0][1]["index_stale"]) == ("65000.5", True)
    assert md.index_wire("BTC", 6) == {"price": "65000.5", "ts": H, "stale": True}
    assert decoded(md.on_command(7, H, [IndexUpdated("DOGE", 1, H)])) == []


def test_only_followed_channels_get_messages_but_every_read_model_moves(md: MarketData) -> None:
    """With nobody on a channel its message is not built; the books, trades and candles
    change all the same, so a subscriber arriving later chains on the right seq."""
    followed = {"trades:BTC-USDC"}
    out = md.on_batch(
        [(7, H + 5, [delta([("65000", "1")], [("65001", "2")]),
                     trade("65001", "0.5", Side.BUY, H + 5)])],
        followed.__contains__,
    )
    assert [channel for channel, _ in out] == ["trades:BTC-USDC"]
    assert md.books[BTC].seq == 7
    assert md.book_snapshot(BTC)["bids"] == [["65000", "1"]]
    assert [t["price"] for t in md.recent_trades(BTC)] == ["65001"]
    assert [(c["close"], c["volume"]) for c in md.candles(BTC, "1m")] == [("65001", "0.5")]
    assert md.ticker(BTC, H + 5)["last"] == "65001"
    followed.add("book:BTC-USDC")
    later = decoded(md.on_batch([(9, H + 6, [delta([], [("65001", "0")])])], followed.__contains__))
    assert later == [
        (
            "book:BTC-USDC",
            {
                "type": "book_delta",
                "market": BTC,
                "seq": 9,
                "prev_seq": 7,
                "bids": [],
                "asks": [["65001", "0"]],
                "checksum": book_checksum([["65000", "1"]], []),
            },
        )
    ]
