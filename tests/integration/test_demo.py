"""`exchange demo` (what `make demo` runs): a newcomer sees a live book on every market,
trades print, and Ctrl-C stops the server and the oracle with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx

from tests.server import ROOT, free_port


def test_demo_quotes_every_market_and_trades(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    env.update({"EXCHANGE_DATA_DIR": str(tmp_path),
                "EXCHANGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}",
                "EXCHANGE_PORT": str(port)})
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115 - closed below
    demo = subprocess.Popen([sys.executable, "-m", "app.cli", "demo", "--seconds", "120"],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    books: dict[str, dict[str, list[list[str]]]] = {}
    trades: dict[str, list[dict[str, str]]] = {}
    try:
        deadline = time.monotonic() + 90
        with httpx.Client(base_url=url, timeout=2) as http:
            while time.monotonic() < deadline:
                assert demo.poll() is None, (tmp_path / "demo.log").read_text()
                try:
                    markets = [m["symbol"] for m in http.get("/v1/markets").json()["markets"]]
                    books = {m: http.get(f"/v1/markets/{m}/book?depth=5").json()
                             for m in markets}
                    trades = {m: http.get(f"/v1/markets/{m}/trades").json()["trades"]
                              for m in markets}
                except httpx.HTTPError:
                    time.sleep(0.5)
                    continue
                quoted = all(b["bids"] and b["asks"] for b in books.values())
                if quoted and any(trades.values()):
                    break
                time.sleep(0.5)
        assert len(books) == 6
        for market, book in books.items():
            assert len(book["bids"]) == 5 and len(book["asks"]) == 5, market
            best_bid, best_ask = Decimal(book["bids"][0][0]), Decimal(book["asks"][0][0])
            assert best_bid < best_ask, market
            assert (best_ask - best_bid) / best_ask < Decimal("0.003"), market  # a tight book
        assert any(trades.values())
        demo.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert demo.wait(30) == 0
        with httpx.Client(timeout=1) as http:
            try:
                http.get(url + "/v1/health")
                raise AssertionError("the server outlived the demo")
            except httpx.ConnectError:
                pass
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        log.close()
