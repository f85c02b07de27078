"""Every benchmark in loadtests/ runs end to end with tiny parameters and says what it
measured: a benchmark that rots is found by the suite, not by the next reader of
BENCHMARKS.md. (Figures come from full runs, recorded in BENCHMARKS.md, never from here.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import dbutil
from tests.integration.conftest import ROOT


def run_bench(*args: str, timeout: float = 180) -> str:
    run = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, env={**os.environ})
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-3000:])
    return run.stdout


def table_rows(out: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in out.splitlines() if line.startswith(f"| {first_cell}")]


BACKENDS = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])


def backend_name(backend: str) -> str:
    """The backend's name in a benchmark's tables (PostgreSQL only when it is set up)."""
    if backend == "postgres" and dbutil.postgres_base_url() is None:
        pytest.skip(f"{dbutil.ENV_VAR} is not set")
    return {"sqlite": "SQLite", "postgres": "PostgreSQL"}[backend]


def test_engine_benchmark() -> None:
    out = run_bench("loadtests/bench_engine.py", "--ops", "3000", "--runs", "1",
                    "--impls", "engine,ceiling", "--order-matching-ops", "500")
    rows: dict[str, list[str]] = {}
    for r in table_rows(out, "engine") + table_rows(out, "pure-Python"):
        rows.setdefault(r[0], r)  # the first table: throughput (the second is by kind)
    assert rows["engine (ours)"][-1] == "1.00"
    assert int(rows["engine (ours)"][1].replace(",", "")) > 0
    assert "pure-Python ceiling" in rows


@BACKENDS
def test_durable_benchmark(backend: str) -> None:
    name = backend_name(backend)
    out = run_bench("loadtests/bench_durable.py", "--commands", "2000", "--runs", "1",
                    "--mix", "workload", "--concurrency", "64", "--backends", backend)
    rows = [r for r in table_rows(out, name) if len(r) == 12]
    ours = next(r for r in rows if r[3].startswith("ours"))
    peer = next(r for r in rows if r[3].startswith("peer"))
    assert peer[-1] == "1.00" and float(ours[-1]) > 0


def test_rest_benchmark() -> None:
    out = run_bench("loadtests/bench_rest.py", "--seconds", "1", "--runs", "1", "--warmup",
                    "0.2", "--no-ceiling")
    ours = table_rows(out, "exchange (ours)")[0]
    peer = table_rows(out, "FastAPI")[0]
    assert ours[9] == "0" and peer[9] == "0"  # errors: every answer was checked
    assert peer[-1] == "1.00" and float(ours[-1].strip("*")) > 0


def test_websocket_benchmark_drops_slow_consumers_without_stalling_the_rest() -> None:
    out = run_bench("loadtests/bench_ws.py", "--seconds", "1", "--runs", "1", "--window", "1",
                    "--subscribers", "50", "--slow", "3", "--server-buffer", "65536")
    ours = table_rows(out, "ours")
    entry = next(r for r in ours if len(r) == 10)  # order entry: msgs/s ... ours ÷ peer
    fanout = next(r for r in ours if len(r) == 9)  # fan-out: deliveries/s ... ours ÷ peer
    slow = next(r for r in ours if "(4008)" in r[1])  # what dropped the slow consumers
    assert float(entry[-1]) > 0 and float(fanout[-1]) > 0
    assert slow[1] == "3/3: hub: queue full (4008) x3"  # our hub dropped all three
    assert slow[3] == "0"  # and no healthy subscriber was closed


def test_snapshot_benchmark() -> None:
    out = run_bench("loadtests/bench_snapshot.py", "--warm", "3000", "--every", "500",
                    "--snapshots", "2")
    kept = next(line for line in out.splitlines() if "finished kept" in line)
    assert "3,000 commands, then a snapshot every 500 x 2" in kept
    rows = {r[0]: r for r in table_rows(out, "")}
    for name in ("copy (on the loop)", "encode (worker thread)", "full gc.collect()"):
        median, slowest = float(rows[name][1]), float(rows[name][2])
        assert 0 < median <= slowest


@BACKENDS
def test_recovery_benchmark(backend: str) -> None:
    name = backend_name(backend)
    out = run_bench("loadtests/bench_recovery.py", "--commands", "3000", "--runs", "1",
                    "--backends", backend)
    full, from_snapshot, read_back = (r for r in table_rows(out, name))
    assert int(full[2].replace(",", "")) > 0  # full replay, commands/s
    assert float(from_snapshot[1].split()[0]) > 0  # recovery from the snapshot, s
    assert int(read_back[2].replace(",", "")) > 0  # signatures read back per second
    assert "Every recovered engine reached the builder's state hash." in out


def test_risk_benchmark() -> None:
    out = run_bench("loadtests/bench_risk.py", "--ops", "3000", "--runs", "1",
                    "--accounts", "200", "--crossing", "200")
    on, off = table_rows(out, "BTC-PERP, margin checks")
    assert off[-1] == "1.00" and 0 < float(on[-1]) < 1  # the check costs something
    numbered = [r for r in table_rows(out, "") if r[0].replace(",", "").isdigit()]
    assert [r[0] for r in numbered if len(r) == 4] == ["200"]  # accounts with a position
    crossing = [r for r in numbered if len(r) == 5]  # oracle updates crossing k triggers
    assert [r[0] for r in crossing] == ["0", "1", "10", "100", "1,000"]
    assert all(r[2] == r[0].replace(",", "") for r in crossing)  # k accounts re-indexed


def test_sqlite_schema_benchmark() -> None:
    out = run_bench("loadtests/bench_sqlite_schema.py", "--commands", "2000", "--runs", "1")
    rows = {r[0]: r for r in table_rows(out, "0003") + table_rows(out, "head")}
    assert set(rows) == {"0003", "head"}
    for row in rows.values():
        assert int(row[3].replace(",", "")) > 0  # bytes written per command


def test_crash_simulation() -> None:
    out = run_bench("loadtests/crash_sim.py", "--accounts", "50", "--updates", "10")
    header = table_rows(out, "")[0]
    assert header[1:] == ["unified", "isolated"]
    checks = table_rows(out, "invariant checks (all empty)")[0]
    assert int(checks[1]) > 0 and int(checks[2]) > 0  # it exits non-zero if any failed
