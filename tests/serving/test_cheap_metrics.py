"""The hot path's counter and histogram: exact counts under threads, Prometheus's bucket rules."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from serving.ops.cheap_metrics import Counter, Histogram


def test_histogram_buckets_are_less_or_equal_and_cumulative():
    registry = CollectorRegistry()
    h = Histogram("t_seconds", "doc", ["model"], buckets=(0.1, 1, 10), registry=registry)
    for value in (0.05, 0.1, 0.5, 1.0, 20.0):
        h.labels("m").observe(value)
    text = generate_latest(registry).decode()
    assert 't_seconds_bucket{le="0.1",model="m"} 2.0' in text  # 0.1 itself is in le=0.1
    assert 't_seconds_bucket{le="1.0",model="m"} 4.0' in text
    assert 't_seconds_bucket{le="10.0",model="m"} 4.0' in text
    assert 't_seconds_bucket{le="+Inf",model="m"} 5.0' in text
    assert 't_seconds_count{model="m"} 5.0' in text
    assert 't_seconds_sum{model="m"} 21.65' in text


def test_counts_are_exact_when_threads_observe_at_once():
    registry = CollectorRegistry()
    h = Histogram("t", "doc", ["model"], buckets=(1,), registry=registry)
    c = Counter("n", "doc", ["model"], registry=registry)

    def work() -> None:
        for _ in range(20_000):
            h.labels("m").observe(0.5)
            c.labels("m").inc()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = generate_latest(registry).decode()
    assert 't_count{model="m"} 80000.0' in text
    assert 'n_total{model="m"} 80000.0' in text


def test_wrong_label_count_is_refused():
    h = Histogram("t", "doc", ["model", "version"], buckets=(1,), registry=CollectorRegistry())
    with pytest.raises(ValueError, match="expected labels"):
        h.labels("only-one")
