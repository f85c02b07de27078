"""`/metrics` in the Prometheus text format, rendered from counters the parts keep.

Rule owned here: metrics are read, never computed on the hot path; the
sequencer and the hub only bump plain counters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.sequencer import Histogram

if TYPE_CHECKING:
    from app.runtime import Runtime

def histogram(lines: list[str], name: str, help_text: str, h: Histogram) -> None:
    """A cumulative Prometheus histogram: counts at or under each bound, +Inf, sum, count."""
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} histogram")
    for bound, n in zip(h.bounds, h.counts, strict=True):
        lines.append(f'{name}_bucket{{le="{bound}"}} {n}')
    lines.append(f'{name}_bucket{{le="+Inf"}} {h.count}')
    lines.append(f"{name}_sum {round(h.sum, 6)}")
    lines.append(f"{name}_count {h.count}")


def render_metrics(rt: Runtime) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{labels} {value}")

    seq = rt.sequencer
    metric(
        "exchange_up", "gauge", "1 when the sequencer takes commands", [("", 1 if rt.ready else 0)]
    )
    metric(
        "exchange_seq",
        "gauge",
        "last committed sequence number",
        [("", seq.committed_seq if seq else rt.engine.last_seq)],
    )
    if seq is not None:
        st = seq.stats
        metric(
            "exchange_commands_total",
            "counter",
            "commands applied, by type and result (rejected: the command itself was refused)",
            [(f'{{type="{t}",result="{r}"}}', n) for (t, r), n in sorted(st.by_type.items())],
        )
        metric("exchange_batches_total", "counter", "group commits", [("", st.batches)])
        metric(
            "exchange_last_batch_size",
            "gauge",
            "commands in the last batch",
            [("", st.last_batch_size)],
        )
        metric(
            "exchange_commit_failures_total",
            "counter",
            "failed journal commits",
            [("", st.commit_failures)],
        )
        metric(
            "exchange_queue_depth",
            "gauge",
            "commands waiting for the sequencer",
            [("", seq.queue_depth)],
        )
        metric(
            "exchange_engine_apply_seconds_total",
            "counter",
            "time spent in engine.apply",
            [("", round(st.apply_seconds_total, 6))],
        )
        histogram(lines, "exchange_commit_seconds", "journal commit latency", st.commit_seconds)
        histogram(lines, "exchange_batch_size", "commands per group commit", st.batch_sizes)
    metric(
        "exchange_hot_route_requests_total",
        "counter",
        "requests of the hot routes, served past FastAPI or handed to it (fallback)",
        [
            (f'{{route="{r}",outcome="{o}"}}', n)
            for (r, o), n in sorted(rt.hot_route_counts.items())
        ],
    )
    hm = rt.hub.metrics
    metric("exchange_ws_clients", "gauge", "connected WebSocket clients", [("", hm.connections)])
    metric(
        "exchange_ws_messages_total",
        "counter",
        "frames written to sockets",
        [("", hm.messages_delivered)],
    )
    metric(
        "exchange_ws_slow_disconnects_total",
        "counter",
        "clients closed for being slow",
        [("", hm.drops)],
    )
    return "\n".join(lines) + "\n"
