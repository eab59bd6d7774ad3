"""In-process counters and latency summaries, rendered in Prometheus text format."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Iterable

#: Upper bounds (seconds) of the latency histogram buckets.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)

Labels = tuple[tuple[str, str], ...]


def _number(value: float) -> str:
    """A sample value at full precision (``:g`` kept 6 digits: 1234567 became 1.23457e+06)."""
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _render_labels(labels: Labels, extra: Iterable[tuple[str, str]] = ()) -> str:
    pairs = [*labels, *extra]
    if not pairs:
        return ""
    body = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in pairs
    )
    return "{" + body + "}"


class Metrics:
    """Counters and histograms keyed by name and labels; safe to read from the web thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._help: dict[str, tuple[str, str]] = {}
        self._histograms: dict[str, dict[Labels, list[float]]] = defaultdict(dict)

    def describe(self, name: str, kind: str, text: str) -> None:
        """Register HELP/TYPE lines for a metric."""
        self._help[name] = (kind, text)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add to a counter."""
        key = _labels(labels)
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        with self._lock:
            self._counters[name][_labels(labels)] = value

    def value(self, name: str, **labels: str) -> float:
        """Current value of a counter or gauge (0 when never touched)."""
        with self._lock:
            return self._counters.get(name, {}).get(_labels(labels), 0.0)

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        """Record one latency observation."""
        key = _labels(labels)
        with self._lock:
            series = self._histograms[name]
            buckets = series.get(key)
            if buckets is None:
                # one count per bucket, then +Inf, then sum
                buckets = series[key] = [0.0] * (len(LATENCY_BUCKETS) + 2)
            buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            buckets[-1] += seconds

    def render(self) -> str:
        """All metrics in Prometheus text exposition format."""
        lines: list[str] = []
        with self._lock:
            for name in sorted(self._counters):
                kind, text = self._help.get(name, ("counter", name))
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                for labels, value in sorted(self._counters[name].items()):
                    lines.append(f"{name}{_render_labels(labels)} {_number(value)}")
            for name in sorted(self._histograms):
                _, text = self._help.get(name, ("histogram", name))
                lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
                for labels, buckets in sorted(self._histograms[name].items()):
                    cumulative = 0.0
                    for bound, count in zip(LATENCY_BUCKETS, buckets, strict=False):
                        cumulative += count
                        lines.append(
                            f"{name}_bucket{_render_labels(labels, [('le', f'{bound:g}')])}"
                            f" {_number(cumulative)}"
                        )
                    cumulative += buckets[len(LATENCY_BUCKETS)]
                    infinity = _render_labels(labels, [("le", "+Inf")])
                    lines.append(f"{name}_bucket{infinity} {_number(cumulative)}")
                    lines.append(f"{name}_sum{_render_labels(labels)} {_number(buckets[-1])}")
                    lines.append(f"{name}_count{_render_labels(labels)} {_number(cumulative)}")
        return "\n".join(lines) + "\n"
