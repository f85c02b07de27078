"""Small helpers for engine tests: apply commands stamped like the sequencer does."""

from __future__ import annotations

import dataclasses

from engine.commands import Command
from engine.events import Event, Rejected
from engine.exchange import Exchange


def run(ex: Exchange, *cmds: Command, ts: int | None = None) -> list[Event]:
    """Apply `cmds` in order, each with the next seq and `ts` (default: 1 ms after the
    previous command); return all their events."""
    out: list[Event] = []
    for cmd in cmds:
        ex.last_seq += 1
        stamp = ex.last_ts + 1 if ts is None else ts
        out += ex.apply(dataclasses.replace(cmd, seq=ex.last_seq, ts=stamp))
    return out


def rejections(events: list[Event]) -> list[Rejected]:
    return [e for e in events if isinstance(e, Rejected)]
