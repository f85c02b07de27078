"""JSON log lines (app/logs.py): one object per line with the last committed seq."""

from __future__ import annotations

import json
import logging

import pytest

from app import logs


def test_a_json_line_carries_level_logger_message_seq_and_the_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        logs.configure("info", "json")
        logs.STATE.seq = 42
        logging.getLogger("exchange.test").info("hello %s", "world")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("exchange.test").exception("failed")
        logging.getLogger("exchange.test").debug("not at info")
    finally:
        root.handlers[:], logs.STATE.seq = saved, 0
        root.setLevel(level)
    first, second = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert {k: first[k] for k in ("level", "logger", "msg", "seq")} == {
        "level": "info", "logger": "exchange.test", "msg": "hello world", "seq": 42}
    assert isinstance(first["ts"], int) and "exc" not in first
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json or text"):
        logs.configure("info", "xml")
