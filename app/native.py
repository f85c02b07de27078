"""The compiled build of `engine/` (mypyc): where it lives and when it runs.

`engine/` is plain, strictly typed Python. mypyc compiles the same source to C
extension modules, which run the same program about twice as fast (see
BENCHMARKS.md). Rules owned here:

* the build lives outside the source tree, in `build/native/engine/` (every
  engine module, the hot ones compiled), so a stale `.so` can never shadow an
  edited `engine/*.py`;
* it is used only if the source hash recorded at build time equals the hash of
  `engine/*.py` now; otherwise the pure-Python engine runs and the log says
  why. `EXCHANGE_ENGINE=python` forces pure Python; `EXCHANGE_ENGINE=native`
  refuses to start without a fresh build;
* the choice is made once, by `import app`, before anything imports `engine`;
* both builds are one program: the same commands give the same events and the
  same `state_hash()` (tests/test_native.py runs a workload through both).

`exchange engine build` (run by `make run` and `make test`) builds it;
without a C compiler or mypyc it says so and exits 0, and the pure engine runs.
`exchange engine codegen` regenerates engine/decoders.py after a command changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "engine"
BUILD = ROOT / "build" / "native"
STAMP = "SOURCE_HASH"
DECODERS_FILE = SOURCE / "decoders.py"
MODE_ENV = "EXCHANGE_ENGINE"
MODES = ("auto", "native", "python")

# Modules left interpreted: codegen reads annotations (which compiling erases). The
# snapshot is compiled: it is taken on the event loop (50k resting orders: 270 -> 180 ms).
INTERPRETED = ("__init__.py", "codegen.py", "message.py")

# Why select() chose what it chose (`exchange engine status`, the startup log).
reason = "not selected yet"


def source_hash(source: Path = SOURCE) -> str:
    """SHA-256 over the names and bytes of engine/*.py, in name order, and the names of
    the modules left interpreted (changing those makes a different build too)."""
    digest = hashlib.sha256(repr(INTERPRETED).encode())
    for path in sorted(source.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_is_fresh() -> tuple[bool, str]:
    stamp = BUILD / STAMP
    if not stamp.exists():
        return False, f"no compiled build in {BUILD} (run `make native`)"
    if stamp.read_text().strip() != source_hash():
        return False, "compiled build is stale: engine/*.py changed since (run `make native`)"
    return True, f"compiled build in {BUILD}"


def select() -> str:
    """Put the compiled build first on sys.path when allowed; returns the choice."""
    global reason
    mode = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise RuntimeError(f"{MODE_ENV} must be one of {', '.join(MODES)}, not {mode!r}")
    if "engine" in sys.modules:
        reason = "engine was imported before app; kept what was imported"
        return running()
    if mode == "python" or not SOURCE.is_dir():
        reason = f"{MODE_ENV}=python" if mode == "python" else "engine source not found"
        return "python"
    fresh, reason = build_is_fresh()
    if fresh:
        sys.path.insert(0, str(BUILD))
        return "native"
    if mode == "native":
        raise RuntimeError(f"{MODE_ENV}=native but {reason}")
    return "python"


def running() -> str:
    """Which build of the engine this process imported: 'native' or 'python'."""
    import engine.exchange as module

    return "python" if str(module.__file__).endswith(".py") else "native"


def generated_decoders() -> str:
    """engine/decoders.py as engine/codegen.py writes it, in a child process that
    imports the pure-Python engine (compiling erases the annotations it reads)."""
    code = "import sys; from engine.codegen import decoders_source as s; sys.stdout.write(s())"
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return result.stdout


def build(out: Path = BUILD) -> int:
    """Compile engine/ into `out`. 0 when built; 1 when mypyc or the compiler failed."""
    digest = source_hash()
    # a work folder of its own: two builds at once (two sessions, make run and make test)
    # must not delete each other's files
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    (work / "engine").mkdir(parents=True)
    for path in sorted(SOURCE.glob("*.py")):
        shutil.copy2(path, work / "engine" / path.name)
    compiled = sorted(
        f"engine/{p.name}" for p in SOURCE.glob("*.py") if p.name not in INTERPRETED
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "mypyc", *compiled],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, "MYPY_CACHE_DIR": str(work / ".mypy_cache")},
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        print("native engine build failed; the pure-Python engine will run:", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
        return 1
    shutil.rmtree(work / "build", ignore_errors=True)
    shutil.rmtree(work / ".mypy_cache", ignore_errors=True)
    (work / STAMP).write_text(digest + "\n")
    shutil.rmtree(out, ignore_errors=True)
    try:
        work.rename(out)
    except OSError:  # another build put its (identical or newer) result there first
        shutil.rmtree(work, ignore_errors=True)
    print(f"native engine built in {out} ({len(compiled)} modules compiled)")
    return 0
