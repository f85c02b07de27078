"""`/metrics` in the Prometheus text format, rendered from counters the parts keep.

Rule owned here: metrics are read, never computed on the hot path; the
sequencer and the hub only bump plain counters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.runtime import Runtime

COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


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
            "commands committed by type",
            [(f'{{type="{t}"}}', n) for t, n in sorted(st.by_type.items())],
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
        samples = st.commit_seconds
        hist: list[tuple[str, float]] = []
        for b in COMMIT_BUCKETS:
            hist.append((f'_bucket{{le="{b}"}}', sum(1 for s in samples if s <= b)))
        hist.append(('_bucket{le="+Inf"}', len(samples)))
        hist.append(("_sum", round(sum(samples), 6)))
        hist.append(("_count", len(samples)))
        lines.append("# HELP exchange_commit_seconds journal commit latency (recent window)")
        lines.append("# TYPE exchange_commit_seconds histogram")
        lines += [f"exchange_commit_seconds{suffix} {v}" for suffix, v in hist]
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
