"""Prometheus text rendering."""

from __future__ import annotations

from core.metrics import Metrics


def test_counters_and_histograms_render_in_prometheus_format() -> None:
    m = Metrics()
    m.describe("events_total", "counter", "Events")
    m.inc("events_total", topic="purchases", outcome="ok")
    m.inc("events_total", 2, topic="purchases", outcome="ok")
    m.observe("latency_seconds", 0.003, agent="purchases")
    m.observe("latency_seconds", 7.0, agent="purchases")
    text = m.render()
    assert "# TYPE events_total counter" in text
    assert 'events_total{outcome="ok",topic="purchases"} 3' in text
    assert 'latency_seconds_bucket{agent="purchases",le="0.005"} 1' in text
    assert 'latency_seconds_bucket{agent="purchases",le="+Inf"} 2' in text
    assert 'latency_seconds_count{agent="purchases"} 2' in text
    assert m.value("events_total", topic="purchases", outcome="ok") == 3


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.inc("x", topic='a"b')
    assert 'x{topic="a\\"b"} 1' in m.render()


def test_samples_keep_full_precision() -> None:
    metrics = Metrics()
    metrics.inc("events_total", 1_234_567)
    metrics.set("last_batch_seconds", 1_763_839_234.125)
    text = metrics.render()
    assert "events_total 1234567\n" in text
    assert "last_batch_seconds 1763839234.125\n" in text
