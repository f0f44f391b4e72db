"""The hot path's histogram: exact counts under threads, Prometheus's bucket rules."""

from __future__ import annotations

import threading

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from serving.ops.cheap_metrics import Histogram


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

    def work() -> None:
        for _ in range(20_000):
            h.labels("m").observe(0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = generate_latest(registry).decode()
    assert 't_count{model="m"} 80000.0' in text
    assert 't_bucket{le="1.0",model="m"} 80000.0' in text


def test_wrong_label_count_is_refused():
    h = Histogram("t", "doc", ["model", "version"], buckets=(1,), registry=CollectorRegistry())
    with pytest.raises(ValueError, match="expected labels"):
        h.labels("only-one")


def test_the_text_is_prometheus_clients_own_histograms():
    """The same observations through prometheus_client's `Histogram`: the same text, but for
    the `_created` series it adds."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    for make, registry in ((Histogram, ours), (prometheus_client.Histogram, theirs)):
        h = make("t_seconds", "doc", ["model", "version"], buckets=(0.5, 1, 2.5), registry=registry)
        for value in (0.25, 0.5, 3.0, 1.5):
            h.labels("m", "1").observe(value)
    text = generate_latest(theirs).decode()
    assert generate_latest(ours).decode() == "".join(
        line + "\n" for line in text.splitlines() if "_created" not in line
    )
