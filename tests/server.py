"""A real exchange server in a subprocess (uvicorn on a free loopback port) for tests.

Rule owned here: integration tests talk to the server only over HTTP and
WebSocket, exactly like a client would; the database is migrated with Alembic
(`exchange db upgrade`) before the first start, so migrations run every time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "admin-test-key"
ADMIN_SECRET = "admin-test-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                 timeout: float = 15.0) -> None:
    """Send `sig` and wait; kill it if it is still there after `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class ServerProcess:
    def __init__(
        self, database_url: str, data_dir: Path, extra_env: dict[str, str] | None = None
    ) -> None:
        self.database_url = database_url
        self.data_dir = data_dir
        self.port = free_port()
        self.env = {
            **os.environ,
            "EXCHANGE_DATABASE_URL": database_url,
            "EXCHANGE_DATA_DIR": str(data_dir),
            "EXCHANGE_HOST": "127.0.0.1",
            "EXCHANGE_PORT": str(self.port),
            "EXCHANGE_ADMIN_KEY": ADMIN_KEY,
            "EXCHANGE_ADMIN_SECRET": ADMIN_SECRET,
            "EXCHANGE_RATE_LIMITS": "off",
            "EXCHANGE_LOG_LEVEL": "warning",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.log_path = data_dir / f"server-{self.port}.log"
        self.prefix: list[str] = []  # e.g. ["taskset", "-c", "0"] (the benchmarks pin it)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def migrate(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "app.cli", "db", "upgrade"],
            env=self.env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._log is not None:
            self._log.close()
        self._log = log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "app.cli", "serve"],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.base_url + "/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become healthy:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
