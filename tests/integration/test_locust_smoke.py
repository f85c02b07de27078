"""A short, bounded locust run (loadtests/locustfile.py) against the real server, on
SQLite and Postgres: traders must send orders, cancels and account reads, the market
maker must quote and cancel over the WebSocket and verify the book it follows, and
the run fails on any error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.integration.conftest import ROOT
from tests.server import ADMIN_KEY, ADMIN_SECRET, ServerProcess


def test_a_short_locust_run_has_no_failures(server: ServerProcess) -> None:
    env = {**os.environ, "EXCHANGE_ADMIN_KEY": ADMIN_KEY, "EXCHANGE_ADMIN_SECRET": ADMIN_SECRET}
    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless",
         "-u", "4", "-r", "4", "-t", "5s", "--host", server.base_url, "--json",
         "--only-summary", "--exit-code-on-error", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    stats = {row["name"]: row for row in json.loads(run.stdout)}
    for name in ("POST /v1/orders", "DELETE /v1/orders/{id}", "GET /v1/account",
                 "WS order.cancel_all", "WS order.batch", "WS book"):
        assert stats[name]["num_requests"] > 0, name
    assert sum(row["num_failures"] for row in stats.values()) == 0
