"""Log lines: text for people (the default) or, with `EXCHANGE_LOG_FORMAT=json`, one JSON
object per line for log collectors: `ts` (ms), `level`, `logger`, `msg`, `seq` (the last
committed sequence number when the line was written) and `exc` for a traceback.

Rule owned here: the seq comes from `STATE`, which the sequencer sets after each commit
(one assignment per batch), so a log line can be placed in the journal's history.
"""

from __future__ import annotations

import json
import logging


class _State:
    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0


STATE = _State()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": int(record.created * 1000),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "seq": STATE.seq,
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"))


def configure(level: str, fmt: str) -> None:
    """The root logger for the process: `fmt` "json" or "text"."""
    if fmt not in ("json", "text"):
        raise ValueError(f"EXCHANGE_LOG_FORMAT must be json or text, not {fmt!r}")
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
