"""When the runtime snapshots: every N commands or T seconds, but never sooner than
SNAPSHOT_DUTY times the previous snapshot's cost (the policy only: the writing is
recorded instead of done; the integration tests write real snapshots)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from app.config import Settings
from app.runtime import SNAPSHOT_DUTY, Runtime


async def test_a_costly_snapshot_spaces_out_the_next(tmp_path: Path) -> None:
    rt = Runtime(Settings(data_dir=str(tmp_path), snapshot_every=10, snapshot_interval_s=60,
                          admin_key="k", admin_secret="s"))
    written: list[int] = []

    async def record(seq: int, ts: int, snap: dict[str, Any]) -> None:
        written.append(seq)

    rt._write_snapshot = record  # type: ignore[method-assign]
    engine = rt.engine

    async def after_commands(n: int) -> None:
        engine.last_seq += n
        rt._maybe_snapshot()
        await asyncio.sleep(0)  # let the recording task run

    await after_commands(9)
    assert written == []  # fewer than 10 commands, less than 60 s
    await after_commands(1)
    assert written == [10]
    assert 0 < rt._snap_cost < 1  # what the copy took

    rt._snap_cost = 1.0  # as if that snapshot had cost a second
    await after_commands(50)
    assert written == [10]  # 50 commands behind, but not 20 s since
    rt._snap_time -= SNAPSHOT_DUTY * 1.0 + 0.1
    await after_commands(0)
    assert written == [10, 60]
