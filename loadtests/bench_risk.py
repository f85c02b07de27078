"""What portfolio risk costs: the order workload with margin checks on and off, one
health computation, one oracle update and one funding settlement with many positions.

    python loadtests/bench_risk.py [--ops 200000] [--runs 5] [--accounts 10000,100000]

* **workload**: the seeded workload of `loadtests/bench_engine.py` (62% resting
  limits, 8% crossing IOC, 30% cancels; 16 maker and 4 taker accounts) sent to
  BTC-PERP instead of BTC-USDC, so every order is judged by the account's initial
  health (this order and its ~60 other open orders counted as filled on the worse
  side, its position, its balances); "off" is the same engine with
  `margin_checks=False` (engine/markets.py). Runs interleave on and off; the
  ratio of medians is the price of the check. The spot row (BTC-USDC, no margin
  check because no account has a loan or a position) is the reference of
  bench_engine.py.
* **health**: one `Exchange.health` (the four levels) and one initial-health check
  (`_initial_health`, what an order pays) for an account with USDC, a BTC loan, ETH,
  two perp positions and 10 open orders; median of 2,000 calls.
* **oracle / funding with N accounts holding positions**: N accounts each long
  BTC-PERP against one short market maker (set up with real commands), then the
  median time of one `SetOraclePrices` (BTC), and of one funding settlement, which
  pays every position.
* **oracle updates that cross breach triggers** (engine/margin_index.py): the same
  N accounts plus 6,000 accounts long 0.05 BTC-PERP and 1 ETH-PERP on staggered
  collateral, so their BTC triggers are spread below the index. Each update moves
  BTC down to just past the k-th trigger: k accounts are looked at and indexed
  again (none is breached: ETH holds). The table gives the median per k, the
  number of accounts whose triggers the update replaced, and the update that
  follows (one USDC up: nobody crossed). The timed update follows the script's own
  scan over every trigger, so its caches are cold; the next one runs warm.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

try:
    from loadtests import bench_engine as be
    from loadtests import workload as wl
except ModuleNotFoundError:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from loadtests import bench_engine as be
    from loadtests import workload as wl

from engine import commands as c
from engine.events import Rejected
from engine.exchange import Exchange
from engine.funding import FundingParams
from engine.markets import ExchangeConfig, default_config
from engine.risk import Level
from engine.types import OrderType, Side, TimeInForce

USDC, BTC, ETH = 10**6, 10**8, 10**8
INDEX = 60_000 * USDC  # the workload's mid: 600,000 ticks of 0.1


def perp_config(checks: bool) -> ExchangeConfig:
    return dataclasses.replace(default_config(), oracle_stale_ms=10**12, margin_checks=checks)


class PerpRunner(be.EngineRunner):
    """bench_engine's engine runner on BTC-PERP, with the index set before the clock."""

    def __init__(self, ops: list[wl.Op], checks: bool) -> None:
        saved = be.MARKET
        be.MARKET = "BTC-PERP"
        try:
            super().__init__(ops)
        finally:
            be.MARKET = saved
        self.config = perp_config(checks)
        self.name = f"BTC-PERP, margin checks {'on' if checks else 'off'}"
        self.setup_cmds.append(c.SetOraclePrices(
            seq=len(self.setup_cmds) + 1, ts=be.TS0 + len(self.setup_cmds) + 1,
            prices=(("BTC", INDEX),)))  # fmt: skip
        # the index must come before the first order: renumber the setup, then the ops
        for i, cmd in enumerate(self.setup_cmds + self.cmds, start=1):
            cmd.seq, cmd.ts = i, be.TS0 + i  # type: ignore[misc]

    def setup(self) -> list[be.Step]:
        steps = super().setup()
        return steps


def workload_table(ops: list[wl.Op], outcome: wl.Outcome, runs: int) -> str:
    runners: list[Any] = [PerpRunner(ops, True), PerpRunner(ops, False), be.EngineRunner(ops)]
    runners[2].name = "BTC-USDC (spot, no check needed)"
    rates: dict[str, list[float]] = {r.name: [] for r in runners}
    lat: dict[str, list[list[int]]] = {r.name: [] for r in runners}
    for run in range(runs):
        for r in runners:
            steps = r.setup()
            rate, per_op, _ = be.timed_run(steps)
            del steps
            _, problems = r.check(outcome)
            r.teardown()
            if problems:
                raise SystemExit(f"{r.name}: {problems[:3]}")
            rates[r.name].append(rate)
            lat[r.name].append(per_op)
            print(f"  run {run + 1}/{runs} {r.name}: {be.fmt_int(rate)} ops/s", file=sys.stderr)
            gc.collect()
    off = statistics.median(rates[runners[1].name])
    lines = ["| workload | ops/s median | min | max | p50 µs | p99 µs | ÷ checks off |",
             "|---|---|---|---|---|---|---|"]
    for r in runners:
        med = statistics.median(rates[r.name])
        i = min(range(runs), key=lambda k: abs(rates[r.name][k] - med))
        ns = sorted(lat[r.name][i])
        lines.append(f"| {r.name} | {be.fmt_int(med)} | {be.fmt_int(min(rates[r.name]))} | "
                     f"{be.fmt_int(max(rates[r.name]))} | {be.percentile(ns, 50):.1f} | "
                     f"{be.percentile(ns, 99):.1f} | {med / off:.2f} |")  # fmt: skip
    return "\n".join(lines)


# ------------------------------------------------------------------ single computations
def _apply(ex: Exchange, cmd: c.Command, ts: int | None = None) -> list[Any]:
    ex.last_seq += 1
    cmd = dataclasses.replace(cmd, seq=ex.last_seq, ts=ex.last_ts + 1 if ts is None else ts)
    events = ex.apply(cmd)
    bad = [e for e in events if isinstance(e, Rejected)]
    if bad:
        raise RuntimeError(f"{cmd} refused: {bad}")
    return events


def health_world() -> tuple[Exchange, int]:
    """A market maker, and a trader with USDC, a BTC loan, ETH, two positions, 10 orders."""
    ex = Exchange(perp_config(True))
    for name in ("mm", "trader", "lender"):
        _apply(ex, c.CreateAccount(name=name, api_key=name, api_secret="s"))
    mm, trader, lender = 1000, 1001, 1002
    _apply(ex, c.SetOraclePrices(prices=(("BTC", INDEX), ("ETH", 3_000 * USDC))))
    for aid, asset, amount in ((mm, "USDC", 10**7 * USDC), (trader, "USDC", 100_000 * USDC),
                               (trader, "ETH", 10 * ETH), (lender, "BTC", 10 * BTC)):
        _apply(ex, c.Deposit(account_id=aid, asset=asset, amount=amount,
                             deposit_id=f"{aid}{asset}"))  # fmt: skip
    _apply(ex, c.Withdraw(account_id=trader, asset="BTC", amount=BTC // 2,
                          withdrawal_id="loan", allow_borrow=True))  # fmt: skip
    for market, price, size in (("BTC-PERP", INDEX, BTC // 2), ("ETH-PERP", 3_000 * USDC, 5 * ETH)):
        _apply(ex, c.PlaceOrder(account_id=mm, market=market, side=Side.SELL, size=size,
                                price=price))  # fmt: skip
        _apply(ex, c.PlaceOrder(account_id=trader, market=market, side=Side.BUY, size=size,
                                price=price, tif=TimeInForce.IOC))  # fmt: skip
    for i in range(10):
        market = ("BTC-PERP", "ETH-PERP", "ETH-USDC")[i % 3]
        spec = ex.markets[market].spec
        index = INDEX if market == "BTC-PERP" else 3_000 * USDC
        _apply(ex, c.PlaceOrder(account_id=trader, market=market, side=Side.BUY,
                                size=spec.min_size * 10, price=index * 9 // 10 // spec.tick
                                * spec.tick - i * spec.tick))  # fmt: skip
    return ex, trader


def median_us(fn: Any, n: int = 2_000) -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return statistics.median(samples) / 1000


def health_table() -> str:
    ex, trader = health_world()
    acct = ex.accounts[trader]
    h = ex.health(trader)
    rates = ex.borrow_rates()
    rows = [
        ("`Exchange.health`: all four levels", median_us(lambda: ex.health(trader))),
        ("`_initial_health`: what one order's margin check costs",
         median_us(lambda: ex._initial_health(acct, {}, rates))),
        ("`account_state`: the account view (levels, parts, liquidation prices)",
         median_us(lambda: ex.account_state(trader), 500)),
    ]  # fmt: skip
    equity = (h[Level.EQUITY] or 0) // USDC
    lines = [f"Account: {equity:,} USDC of equity, a 0.5 BTC loan, 10 ETH, long 0.5 "
             f"BTC-PERP and 5 ETH-PERP, {len(acct.live)} open orders.", "",
             "| computation | median µs |", "|---|---|"]  # fmt: skip
    lines += [f"| {name} | {us:.1f} |" for name, us in rows]
    return "\n".join(lines)


def positions_world(n: int) -> Exchange:
    """`n` accounts each long 0.0001 BTC-PERP against one market maker."""
    cfg = dataclasses.replace(perp_config(True), funding=FundingParams(1_000, 10**12, USDC))
    ex = Exchange(cfg)
    _apply(ex, c.CreateAccount(name="mm", api_key="mm", api_secret="s"))
    _apply(ex, c.SetOraclePrices(prices=(("BTC", INDEX),)))
    _apply(ex, c.Deposit(account_id=1000, asset="USDC", amount=10**9 * USDC, deposit_id="mm"))
    spec = ex.markets["BTC-PERP"].spec
    _apply(ex, c.PlaceOrder(account_id=1000, market="BTC-PERP", side=Side.SELL,
                            size=spec.min_size * n, price=INDEX))  # fmt: skip
    for i in range(n):
        aid = 1001 + i
        _apply(ex, c.CreateAccount(name=f"t{i}", api_key=f"t{i}", api_secret="s"))
        _apply(ex, c.Deposit(account_id=aid, asset="USDC", amount=1_000 * USDC,
                             deposit_id=f"t{i}"))  # fmt: skip
        _apply(ex, c.PlaceOrder(account_id=aid, market="BTC-PERP", side=Side.BUY,
                                size=spec.min_size, price=INDEX, type=OrderType.LIMIT,
                                tif=TimeInForce.IOC))  # fmt: skip
    assert ex.open_interest["BTC-PERP"] == spec.min_size * n
    return ex


def scale_table(sizes: list[int], repeats: int = 21) -> str:
    lines = ["| accounts with a position | oracle update median µs | funding settlement "
             "median ms | µs per position paid |", "|---|---|---|---|"]
    for n in sizes:
        t = time.perf_counter()
        ex = positions_world(n)
        print(f"  {n} positions set up in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        oracle, settle = [], []
        for k in range(repeats):
            price = INDEX + (k % 7 - 3) * 10 * USDC
            t0 = time.perf_counter_ns()
            _apply(ex, c.SetOraclePrices(prices=(("BTC", price),)))
            oracle.append(time.perf_counter_ns() - t0)
        for _ in range(max(repeats // 4, 3)):
            mf = ex.funding["BTC-PERP"]
            mf.premium_sum, mf.samples = 2_000_000, 1  # one sample's worth: rate 0.01875%
            ex.next_funding_ts = ex.last_ts + 1  # the next command settles
            ex.next_sample_ts = ex.last_ts + 1
            t0 = time.perf_counter_ns()
            events = _apply(ex, c.Tick())
            settle.append(time.perf_counter_ns() - t0)
            assert sum(1 for e in events if type(e).__name__ == "FundingPayment") == n + 1
        o_us = statistics.median(oracle) / 1000
        s_ms = statistics.median(settle) / 1e6
        lines.append(f"| {n:,} | {o_us:.1f} | {s_ms:.1f} | {s_ms * 1000 / (n + 1):.1f} |")
        assert ex.check_invariants() == []
        del ex
        gc.collect()
    return "\n".join(lines)


def crossing_world(n: int, near: int = 6_000) -> Exchange:
    """`positions_world(n)` plus `near` accounts long 0.05 BTC-PERP and 1 ETH-PERP with
    1,000 USDC + 0.01 USDC per account number: BTC triggers about 9% down, 0.0002%
    apart (so crossing thousands moves BTC by about 1%, and nobody is breached)."""
    ex = positions_world(n)
    _apply(ex, c.SetOraclePrices(prices=(("BTC", INDEX), ("ETH", 3_000 * USDC))))
    mm = 1000
    for market, price, size in (("BTC-PERP", INDEX, BTC // 20), ("ETH-PERP", 3_000 * USDC, ETH)):
        _apply(ex, c.PlaceOrder(account_id=mm, market=market, side=Side.SELL, size=size * near,
                                price=price))  # fmt: skip
    first = ex.next_account_id
    for i in range(near):
        aid = first + i
        _apply(ex, c.CreateAccount(name=f"near{i}", api_key=f"near{i}", api_secret="s"))
        _apply(ex, c.Deposit(account_id=aid, asset="USDC", amount=1_000 * USDC + i * 10_000,
                             deposit_id=f"near{i}"))  # fmt: skip
        for market, price, size in (("BTC-PERP", INDEX, BTC // 20),
                                    ("ETH-PERP", 3_000 * USDC, ETH)):  # fmt: skip
            _apply(ex, c.PlaceOrder(account_id=aid, market=market, side=Side.BUY, size=size,
                                    price=price, tif=TimeInForce.IOC))  # fmt: skip
    return ex


def crossing_table(n: int, ks: list[int], repeats: int = 5) -> str:
    ex = crossing_world(n)
    gc.collect()
    gc.freeze()  # the world's objects out of the collector's way: no pauses in the timings
    lines = [f"{n:,} accounts with a position, plus 6,000 near accounts.", "",
             "| triggers crossed (k) | update median µs | accounts re-indexed | µs per account "
             "| the next update (crosses nobody) µs |", "|---|---|---|---|---|"]  # fmt: skip
    price = INDEX
    for k in ks:
        times, touched, after = [], [], []
        for _ in range(repeats):
            falls = sorted((p for t in ex.breach.entries.values() for a, p, up in t
                            if a == "BTC" and not up and p < price), reverse=True)  # fmt: skip
            target = falls[k - 1] if k else price - USDC  # k = 0: one USDC down, nobody
            before = dict(ex.breach.entries)
            t0 = time.perf_counter_ns()
            _apply(ex, c.SetOraclePrices(prices=(("BTC", target),)))
            times.append(time.perf_counter_ns() - t0)
            # the update right after, one USDC higher: no trigger crossed, caches warm (the
            # timed update above follows this loop's scans over every entry: caches cold)
            price = target + USDC
            t0 = time.perf_counter_ns()
            _apply(ex, c.SetOraclePrices(prices=(("BTC", price),)))
            after.append(time.perf_counter_ns() - t0)
            touched.append(sum(1 for a, t in ex.breach.entries.items() if before.get(a) != t))
        us = statistics.median(times) / 1000
        per = f"{us / statistics.median(touched):.1f}" if statistics.median(touched) else "-"
        nxt = statistics.median(after) / 1000
        lines.append(f"| {k:,} | {us:.1f} | {statistics.median(touched):.0f} | {per} | "
                     f"{nxt:.1f} |")  # fmt: skip
    assert ex.check_invariants() == []
    assert not ex.margin_cases, "a near account was breached: the benchmark is off"
    gc.unfreeze()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--ops", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--accounts", default="10000,100000")
    ap.add_argument("--crossing", type=int, default=100_000,
                    help="accounts in the trigger-crossing benchmark (0: skip it)")
    args = ap.parse_args(argv)
    print(f"# risk benchmark, {datetime.date.today().isoformat()}")
    print()
    print(f"- machine: {be.machine()}")
    print(f"- engine revision: {be.engine_revision()}")
    print(f"- command: `python loadtests/bench_risk.py {' '.join(sys.argv[1:])}`".rstrip())
    print()
    ops, outcome = wl.generate_with_outcome(args.ops, args.seed)
    print(f"## The order workload with margin checks on and off ({args.runs} runs each, "
          f"interleaved)")
    print()
    print(workload_table(ops, outcome, args.runs))
    print()
    print("## One health computation")
    print()
    print(health_table())
    print()
    print("## Oracle update and funding settlement with many positions")
    print()
    print(scale_table([int(x) for x in args.accounts.split(",") if x]))
    if args.crossing:
        print()
        print("## Oracle updates that cross breach triggers")
        print()
        print(crossing_table(args.crossing, [0, 1, 10, 100, 1000]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
