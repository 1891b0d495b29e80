"""Integrator counters, rendered in the Prometheus text exposition format (0.0.4).

One :class:`Metrics` object per integrator process; :meth:`Metrics.render` is what
``/metrics`` serves. Counters only grow; gauges (consumer lag) are the last value seen.
"""

from __future__ import annotations

import bisect
import threading
import time

__all__ = ["LATENCY_BUCKETS", "Metrics", "parse"]

#: upper bounds (seconds) of the commit-latency histogram buckets
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_COUNTERS: dict[str, str] = {
    "received_messages": "messages fetched from the JetStream consumer",
    "redelivered_messages": "fetched messages that had been delivered before (num_delivered > 1)",
    "committed_batches": "messages whose statements were committed to the store",
    "committed_triples": "statements committed to the store (parsed count, before set semantics)",
    "dead_lettered_messages": "messages that could not be parsed and went to the dead-letter stream",
    "commit_failures": "store commits that failed (the fetch was not acked and will be redelivered)",
    "commits": "store commits (one per fetch)",
}


class Metrics:
    """Thread-safe counters of one integrator."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, float] = dict.fromkeys(_COUNTERS, 0)
        self.consumer_lag = 0
        self.ack_pending = 0
        self.started = time.time()
        self.last_commit = 0.0
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._latency_count = 0

    def inc(self, name: str, value: float = 1) -> None:
        with self._lock:
            self.counters[name] += value

    def observe_commit(self, seconds: float) -> None:
        with self._lock:
            self._buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._latency_sum += seconds
            self._latency_count += 1
            self.last_commit = time.time()

    def snapshot(self) -> dict[str, float]:
        """Counters and gauges as a plain dict (for ``provgraph status --json``)."""
        with self._lock:
            out = dict(self.counters)
            out["consumer_lag"] = self.consumer_lag
            out["commit_latency_seconds_sum"] = self._latency_sum
            out["commit_latency_seconds_count"] = self._latency_count
            out["last_commit_timestamp_seconds"] = self.last_commit
            return out

    def render(self) -> str:
        """All metrics in the Prometheus text exposition format."""
        lines: list[str] = []
        with self._lock:
            for name, help_text in _COUNTERS.items():
                full = f"provgraph_integrator_{name}_total"
                lines += [f"# HELP {full} {help_text}", f"# TYPE {full} counter",
                          f"{full} {_num(self.counters[name])}"]
            lines += ["# HELP provgraph_integrator_consumer_lag_messages messages in the stream not yet "
                      "delivered to the consumer (num_pending)",
                      "# TYPE provgraph_integrator_consumer_lag_messages gauge",
                      f"provgraph_integrator_consumer_lag_messages {self.consumer_lag}",
                      "# HELP provgraph_integrator_last_commit_timestamp_seconds time of the last commit",
                      "# TYPE provgraph_integrator_last_commit_timestamp_seconds gauge",
                      f"provgraph_integrator_last_commit_timestamp_seconds {_num(self.last_commit)}",
                      "# HELP provgraph_integrator_start_time_seconds start time of the integrator",
                      "# TYPE provgraph_integrator_start_time_seconds gauge",
                      f"provgraph_integrator_start_time_seconds {_num(self.started)}"]
            h = "provgraph_integrator_commit_latency_seconds"
            lines += [f"# HELP {h} time to commit one fetch to the store", f"# TYPE {h} histogram"]
            cumulative = 0
            for bound, count in zip(LATENCY_BUCKETS, self._buckets, strict=False):
                cumulative += count
                lines.append(f'{h}_bucket{{le="{bound}"}} {cumulative}')
            lines.append(f'{h}_bucket{{le="+Inf"}} {self._latency_count}')
            lines.append(f"{h}_sum {_num(self._latency_sum)}")
            lines.append(f"{h}_count {self._latency_count}")
        return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parse(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition (``name{labels}`` → value); comments skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out
