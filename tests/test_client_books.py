"""The client's sans-I/O parts: BookSet resync bookkeeping, backoff, the quote ladder."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from exchange_client import Backoff, BookSet, book_checksum
from exchange_client.market_maker import index_prices, quote_ladder


def _snap(market: str, seq: int, bids: list[list[str]], asks: list[list[str]]) -> dict[str, Any]:
    return {"type": "book_snapshot", "market": market, "seq": seq, "bids": bids, "asks": asks,
            "checksum": book_checksum(bids, asks)}


def _delta(market: str, seq: int, prev: int, bids: list[list[str]], asks: list[list[str]],
           after: tuple[list[list[str]], list[list[str]]]) -> dict[str, Any]:
    return {"type": "book_delta", "market": market, "seq": seq, "prev_seq": prev,
            "bids": bids, "asks": asks, "checksum": book_checksum(*after)}


def test_bookset_follows_each_market_and_ignores_others() -> None:
    books = BookSet(["A", "B"])
    assert books.channels == ["book:A", "book:B"]
    assert not books.ready("A")
    assert books.feed(_snap("A", 3, [["10", "1"]], [["11", "2"]])) is None
    assert books.ready("A") and not books.ready("B")
    assert books.feed(_delta("A", 5, 3, [["10", "0"], ["9", "4"]], [],
                             ([["9", "4"]], [["11", "2"]]))) is None
    assert books["A"].bids == [["9", "4"]] and books["A"].seq == 5
    assert books.feed(_snap("C", 1, [], [])) is None  # not followed
    assert books.feed({"type": "trade", "market": "A"}) is None
    assert books["A"].seq == 5 and books.resyncs == 0


def test_bookset_gap_asks_for_a_resync_and_drops_deltas_until_the_snapshot() -> None:
    books = BookSet(["A"])
    books.feed(_snap("A", 3, [["10", "1"]], []))
    gap = _delta("A", 9, 8, [["10", "2"]], [], ([["10", "2"]], []))
    assert books.feed(gap) == "A"
    assert books.resyncs == 1 and not books.ready("A")
    # a late delta of the old subscription: ignored, no second resync request
    assert books.feed(_delta("A", 10, 9, [], [], ([["10", "2"]], []))) is None
    assert books.resyncs == 1 and books["A"].seq is None
    assert books.feed(_snap("A", 12, [["10", "7"]], [["12", "1"]])) is None
    assert books.ready("A") and books["A"].bids == [["10", "7"]] and books["A"].seq == 12
    # and the chain goes on from the new snapshot
    assert books.feed(_delta("A", 13, 12, [], [["12", "0"]], ([["10", "7"]], []))) is None
    assert books["A"].asks == []


def test_bookset_checksum_mismatch_asks_for_a_resync() -> None:
    books = BookSet(["A"])
    books.feed(_snap("A", 1, [["10", "1"]], []))
    bad = {**_delta("A", 2, 1, [["9", "1"]], [], ([["10", "1"]], [])), "checksum": 1}
    assert books.feed(bad) == "A"
    assert type(books.last_error).__name__ == "BookChecksumError"
    assert books.resyncs == 1


def test_bookset_reset_waits_for_every_snapshot() -> None:
    books = BookSet(["A", "B"])
    books.feed(_snap("A", 1, [], []))
    books.feed(_snap("B", 1, [], []))
    books.reset()
    assert books.waiting == {"A", "B"}
    assert books.feed(_delta("A", 2, 1, [["1", "1"]], [], ([["1", "1"]], []))) is None
    assert books["A"].bids == []  # ignored: the reconnect's snapshot is the truth
    assert books.resyncs == 0


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 0.5


MARKET = {"symbol": "BTC-PERP", "tick_size": "0.1", "lot_size": "0.0001", "min_size": "0.0001"}


def test_quote_ladder_prices_sizes_and_rounding() -> None:
    ladder = quote_ladder(MARKET, Decimal("65000"), levels=2, spread_bps=10, step_bps=5,
                          notional=Decimal(2000))
    assert ladder == [
        {"market": "BTC-PERP", "side": "buy", "type": "limit", "price": "64967.5",
         "size": "0.0307", "time_in_force": "post_only"},
        {"market": "BTC-PERP", "side": "sell", "type": "limit", "price": "65032.5",
         "size": "0.0307", "time_in_force": "post_only"},
        {"market": "BTC-PERP", "side": "buy", "type": "limit", "price": "64935.0",
         "size": "0.0307", "time_in_force": "post_only"},
        {"market": "BTC-PERP", "side": "sell", "type": "limit", "price": "65065.0",
         "size": "0.0307", "time_in_force": "post_only"},
    ]
    # bids round down and asks up to the tick; a tiny notional still quotes the minimum
    odd = quote_ladder(MARKET, Decimal("100.03"), levels=1, spread_bps=0, notional=Decimal(0))
    assert [(o["price"], o["size"]) for o in odd] == [("100.0", "0.0001"), ("100.1", "0.0001")]


def test_index_prices_skips_assets_without_an_index() -> None:
    body = {"assets": [{"symbol": "USDC", "index": None},
                       {"symbol": "BTC", "index": {"price": "65000.5", "ts": 1}}]}
    assert index_prices(body) == {"BTC": Decimal("65000.5")}


def test_a_market_that_keeps_breaking_waits_longer_before_each_resync() -> None:
    books = BookSet(["A"])
    bad_snapshot = {**_snap("A", 1, [["1", "1"]], []), "checksum": 7}
    delays = []
    for _ in range(5):
        assert books.feed(bad_snapshot) == "A"
        delays.append(books.resync_delay("A"))
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8]
    # one good snapshot ends the streak
    assert books.feed(_snap("A", 2, [["1", "1"]], [])) is None
    assert books.resync_delay("A") == 0.0
