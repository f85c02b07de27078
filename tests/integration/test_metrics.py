"""What operators watch, over the real server: /metrics (commands by type and result,
cumulative commit latency and batch size histograms, as Prometheus reads them) and JSON
log lines carrying the seq."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from exchange_client import ApiError, AsyncExchangeClient
from tests.integration.conftest import BACKENDS, MakeTrader, start_server
from tests.server import ADMIN_KEY, ADMIN_SECRET, ServerProcess


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def test_commands_by_result_and_cumulative_histograms(
    server: ServerProcess, admin: AsyncExchangeClient, make_trader: MakeTrader
) -> None:
    async with httpx.AsyncClient() as http:
        before = samples((await http.get(server.base_url + "/metrics")).text)
        trader = await make_trader({"USDC": "1000"})
        await trader.client.place_order(market="BTC-USDC", side="buy", price="100", size="1")
        with pytest.raises(ApiError):  # 100,000 USDC of BTC on 1,000: refused
            await trader.client.place_order(market="BTC-USDC", side="buy", price="100000",
                                            size="1")  # fmt: skip
        text = (await http.get(server.base_url + "/metrics")).text
    after = samples(text)
    accepted = 'exchange_commands_total{type="PlaceOrder",result="accepted"}'
    rejected = 'exchange_commands_total{type="PlaceOrder",result="rejected"}'
    assert after[accepted] - before.get(accepted, 0) == 1
    assert after[rejected] - before.get(rejected, 0) == 1
    for name in ("exchange_commit_seconds", "exchange_batch_size"):
        assert f"# TYPE {name} histogram" in text
        buckets = [(m.group(1), after[m.group(0)])
                   for m in re.finditer(rf'{name}_bucket\{{le="([^"]+)"\}}', text)]  # fmt: skip
        counts = [n for _, n in buckets]
        assert counts == sorted(counts) and buckets[-1][0] == "+Inf"  # cumulative
        assert buckets[-1][1] == after[f"{name}_count"] == after["exchange_batches_total"]
        assert after[f"{name}_count"] > before.get(f"{name}_count", 0)


@pytest.fixture(scope="module", params=BACKENDS)
def json_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp(f"json-logs-{request.param}")
    env = {"EXCHANGE_LOG_FORMAT": "json", "EXCHANGE_LOG_LEVEL": "info"}
    yield from start_server(request.param, tmp, env)


async def test_the_server_logs_json_lines_with_the_seq(json_server: ServerProcess) -> None:
    async with AsyncExchangeClient(json_server.base_url, ADMIN_KEY, ADMIN_SECRET) as admin:
        await admin.create_account("json-logs")
        await admin.create_account("json-logs-2")
    text = json_server.log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines, text
    assert all({"ts", "level", "logger", "msg", "seq"} <= set(line) for line in lines)
    # uvicorn's access lines come through the same formatter, after the commits
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert access and max(line["seq"] for line in access) >= 2
