"""The compiled engine (app/native.py) is the same program as engine/*.py.

Both builds run the replay workload (tests/engine_digest.py) in their own
process; every event, every journal encoding and the final `state_hash()` must
be identical, and a snapshot taken by one build must restore in the other and
finish on the same state. Also: the build is chosen by its source hash, so a
stale build is never used.

`make test` builds the compiled engine first; if it is missing here the test
fails (it does not skip) unless EXCHANGE_ENGINE=python says to run without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from app import native


def _run(build: str, out: Path, restore: Path | None = None) -> dict[str, Any]:
    args = [sys.executable, "-m", "tests.engine_digest", str(out)]
    if restore is not None:
        args += ["--restore", str(restore)]
    env = {**os.environ, native.MODE_ENV: build}
    subprocess.run(args, check=True, cwd=native.ROOT, env=env, timeout=300)
    result: dict[str, Any] = orjson.loads(out.read_bytes())
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    if os.environ.get(native.MODE_ENV) == "python":
        pytest.skip("EXCHANGE_ENGINE=python: running without the compiled engine")
    fresh, why = native.build_is_fresh()
    if not fresh:
        pytest.fail(f"{why}; `make native` builds it")
    d = tmp_path_factory.mktemp("native")
    return {b: _run(b, d / f"{b}.json") for b in ("native", "python")}


def test_each_process_ran_the_build_it_asked_for(runs: dict[str, dict[str, Any]]) -> None:
    assert runs["native"]["engine"] == "native"
    assert runs["python"]["engine"] == "python"


def test_same_events_and_state(runs: dict[str, dict[str, Any]]) -> None:
    n, p = runs["native"], runs["python"]
    assert n["commands"] == p["commands"] > 6000
    assert n["events_digest"] == p["events_digest"]
    assert n["state_hash"] == p["state_hash"]
    assert n["half_snapshot"] == p["half_snapshot"]
    assert n["invariants"] == p["invariants"] == []


@pytest.mark.parametrize(("taken_by", "restored_by"), [("native", "python"), ("python", "native")])
def test_snapshot_restores_across_builds(
    runs: dict[str, dict[str, Any]], tmp_path: Path, taken_by: str, restored_by: str
) -> None:
    snap = tmp_path / "half.json"
    snap.write_bytes(orjson.dumps(runs[taken_by]["half_snapshot"]))
    tail = _run(restored_by, tmp_path / "tail.json", restore=snap)
    assert tail["engine"] == restored_by
    assert tail["commands"] == runs[taken_by]["commands"] // 2 + runs[taken_by]["commands"] % 2
    assert tail["state_hash"] == runs[taken_by]["state_hash"]
    assert tail["invariants"] == []


def test_stale_or_missing_build_is_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(native, "BUILD", tmp_path)
    assert native.build_is_fresh() == (
        False,
        f"no compiled build in {tmp_path} (run `make native`)",
    )
    (tmp_path / native.STAMP).write_text("0" * 64 + "\n")
    fresh, why = native.build_is_fresh()
    assert not fresh and why.startswith("compiled build is stale")
    (tmp_path / native.STAMP).write_text(native.source_hash() + "\n")
    assert native.build_is_fresh() == (True, f"compiled build in {tmp_path}")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("python", "python"), ("native", "native"), ("auto", "native"), ("bogus", "error")],
)
def test_engine_mode_env(mode: str, expected: str) -> None:
    if not native.build_is_fresh()[0]:
        pytest.fail("no fresh compiled build; `make native` builds it")
    code = "import app; from app import native; print(native.running())"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=native.ROOT,
        env={**os.environ, native.MODE_ENV: mode},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if expected == "error":
        assert proc.returncode == 1
        assert "EXCHANGE_ENGINE must be one of auto, native, python, not 'bogus'" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == expected
