"""The Dockerfile and docker-compose.yml, checked by parsing them (no Docker engine runs
here): a slim non-root runtime without build or dev tools, a health check on
/v1/health, PostgreSQL with a health check, a one-shot migration, and the server
waiting on both with the same database URL; Prometheus scraping /metrics."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEV_TOOLS = ("pytest", "ruff", "mypy", "hypothesis", "gcc", "build-essential", "[dev]")


def stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """Each stage of the Dockerfile: (its FROM line, [(instruction, arguments)])."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)  # line continuations
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            out.append((rest, []))
        else:
            out[-1][1].append((word.upper(), rest.strip()))
    return out


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_the_runtime_stage_is_slim_non_root_and_has_no_build_or_dev_tools() -> None:
    all_stages = stages()
    assert len(all_stages) == 2
    (build_from, build), (run_from, runtime) = all_stages
    assert build_from == "python:3.11-slim AS build"
    assert run_from == "python:3.11-slim AS runtime"
    run_lines = [args for op, args in runtime if op == "RUN"]
    for args in run_lines:
        assert not any(tool in args for tool in DEV_TOOLS), args
        assert "pip install" not in args and "apt-get install" not in args, args
    # it takes only the venv and the source tree (with the compiled engine) from the build
    copies = [args for op, args in runtime if op == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv", "--from=build /app /app"]
    # the dev tools stay in the build stage's own Python, out of /opt/venv
    build_runs = " ".join(args for op, args in build if op == "RUN")
    assert "/opt/venv/bin/pip install --no-cache-dir -e ." in build_runs
    assert "[dev]" not in build_runs and "/opt/venv/bin/pip install --no-cache-dir mypy" not in (
        build_runs)  # fmt: skip
    assert "native.build()" in build_runs  # the engine is compiled in the image
    users = [args for op, args in runtime if op == "USER"]
    assert users == ["exchange"]
    assert any("useradd --system --uid 10001" in args for args in run_lines)


def test_the_runtime_serves_on_all_interfaces_with_the_compiled_engine_and_a_healthcheck() -> None:
    runtime = dict(stages()[1][1])
    env = runtime["ENV"]
    for setting in ("EXCHANGE_HOST=0.0.0.0", "EXCHANGE_PORT=8000", "EXCHANGE_DATA_DIR=/data",
                    "EXCHANGE_ENGINE=native", "EXCHANGE_LOG_FORMAT=json",
                    "PATH=/opt/venv/bin:$PATH"):  # fmt: skip
        assert setting in env.split(), setting
    assert runtime["EXPOSE"] == "8000"
    assert runtime["CMD"] == '["exchange", "serve"]'
    check = runtime["HEALTHCHECK"]
    assert "--interval=" in check and "--start-period=" in check
    assert "http://127.0.0.1:8000/v1/health" in check  # 503 until recovery is over


def test_every_file_the_build_copies_exists_and_is_not_ignored() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}  # fmt: skip
    for op, args in stages()[0][1]:
        if op != "COPY":
            continue
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (ROOT / src).exists(), src
            assert src.rstrip("/") not in ignored, src
    for heavy in (".venv", "build", "data", ".git"):
        assert heavy in ignored


def test_compose_runs_postgres_then_the_migration_then_the_server() -> None:
    services = compose()["services"]
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    migrate, server = services["migrate"], services["exchange"]
    assert migrate["command"] == ["exchange", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert server["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    # both build this repository's image
    assert migrate["build"] == server["build"] == "."
    assert migrate["image"] == server["image"]
    assert server["ports"] == ["8000:8000"]
    assert "exchange-data:/data" in server["volumes"]


def test_the_server_and_the_migration_reach_the_postgres_the_compose_file_creates() -> None:
    services = compose()["services"]
    env = services["postgres"]["environment"]
    for name in ("migrate", "exchange"):
        url = urlsplit(services[name]["environment"]["EXCHANGE_DATABASE_URL"])
        assert url.scheme == "postgresql+asyncpg"
        assert (url.hostname, url.port) == ("postgres", 5432)
        assert (url.username, url.password, url.path) == (
            env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], "/" + env["POSTGRES_DB"])  # fmt: skip


def test_prometheus_is_optional_and_scrapes_the_servers_metrics() -> None:
    prom = compose()["services"]["prometheus"]
    assert prom["profiles"] == ["monitoring"]
    assert prom["depends_on"] == {"exchange": {"condition": "service_healthy"}}
    host_path, container_path, _mode = prom["volumes"][0].split(":")
    assert container_path == "/etc/prometheus/prometheus.yml"
    config = yaml.safe_load((ROOT / host_path).read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["exchange:8000"]


def test_locust_is_optional_and_runs_the_repositorys_locustfile_against_the_server() -> None:
    services = compose()["services"]
    load = services["locust"]
    assert load["profiles"] == ["load"]
    assert load["depends_on"] == {"exchange": {"condition": "service_healthy"}}
    mounts = {v.split(":")[1]: v.split(":")[0] for v in load["volumes"]}
    assert mounts == {"/mnt/locust/loadtests": "./loadtests",
                      "/mnt/locust/exchange_client": "./exchange_client"}  # fmt: skip
    for host_path in mounts.values():
        assert (ROOT / host_path).is_dir()
    command = load["command"]
    locustfile = command[command.index("-f") + 1]
    assert locustfile == "/mnt/locust/loadtests/locustfile.py"
    assert (ROOT / "loadtests" / "locustfile.py").is_file()
    assert command[command.index("--host") + 1] == "http://exchange:8000"
    assert load["environment"]["PYTHONPATH"] == "/mnt/locust"
    assert {"EXCHANGE_ADMIN_KEY", "EXCHANGE_ADMIN_SECRET"} <= set(load["environment"])
