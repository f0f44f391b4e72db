"""A counter and a histogram cheap enough for the hot path, exported by prometheus_client.

Why: prometheus_client's `Histogram.observe` walks its buckets in Python and takes a lock for
each of two increments. Our four observations per request cost ~20 µs of a ~115 µs request
(in-process, v1 side_effects; measured by stubbing them out). Here an observation is a bisect
and two additions under one uncontended lock (observations come from the event loop and from
the executor's threads, so the lock stays). The exposition is prometheus_client's own
(`generate_latest` over a registered collector), with the same names, labels and buckets;
only the optional `_created` series are left out.

Each family can also hand out its values and merge in those of other worker processes
(serving/ops/shared_metrics.py), so that a scrape of one of several workers sees them all.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class HistogramChild:
    __slots__ = ("_bounds", "_counts", "_lock", "_sum")

    def __init__(self, bounds: list[float]):
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect_left(self._bounds, value)  # buckets are "less than or equal"
        lock = self._lock
        lock.acquire()  # not `with`: it costs more than the rest, and nothing here can raise
        self._counts[index] += 1
        self._sum += value
        lock.release()

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self._counts), self._sum


class CounterChild:
    __slots__ = ("_lock", "_value")

    def __init__(self) -> None:
        self._value = 0.0
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        lock = self._lock
        lock.acquire()
        self._value += amount
        lock.release()

    @property
    def value(self) -> float:
        return self._value


class GaugeChild:
    """A value that is set, not added to (rarely: a model's load time)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)


class HasValue(Protocol):
    @property
    def value(self) -> float: ...


Child = TypeVar("Child")
NumberChild = TypeVar("NumberChild", bound=HasValue)
Labels = tuple[str, ...]
Values = dict[Labels, Any]
"""A family's values by label values: a float (counter, gauge) or `[counts, sum]`
(histogram, counts per bucket, not cumulative); JSON-able once the keys are lists."""


@dataclass(frozen=True)
class PeerValues:
    """What another worker process last wrote of its metrics (serving/ops/shared_metrics.py)."""

    pid: int
    alive: bool
    """Gauges count only while their process runs; counts stay after it died."""
    families: dict[str, Values] = field(default_factory=dict)


class Family(Collector, Generic[Child]):
    """A metric's children by label values, made on first use, exported by `collect`."""

    kind: ClassVar[Literal["counter", "gauge", "histogram"]]

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ):
        """Registers the family, which collects it once: a subclass sets its own attributes
        first."""
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._children: dict[tuple[str, ...], Child] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> Child:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        with self._lock:
            child = self._children.get(values)
            if child is None:
                child = self._children[values] = self._new_child()
        return child

    def _new_child(self) -> Child:
        raise NotImplementedError

    def _items(self) -> list[tuple[tuple[str, ...], Child]]:
        with self._lock:
            return list(self._children.items())

    def values(self) -> Values:
        """This process's values, a consistent copy per child."""
        return {labels: self._value_of(child) for labels, child in self._items()}

    def collect(self) -> Iterator[Metric]:
        yield self.metric(self.values())

    @property
    def buckets(self) -> int:
        """Counts per value (a histogram's buckets and +Inf); 0 for a plain number."""
        return 0

    def merge_peers(self, own: Values, peers: Sequence[PeerValues]) -> Values:
        """`own` values plus the other processes' (checked by the reader to fit this family)."""
        merged = dict(own)
        for peer in peers:
            theirs = peer.families.get(self.name)
            if theirs and self._counts(peer):
                self._merge(merged, theirs)
        return merged

    def _counts(self, peer: PeerValues) -> bool:
        """Whether a peer's values count: a dead process's counts stay in the totals (they
        never go back when a worker restarts), its gauges do not."""
        return True

    def _value_of(self, child: Child) -> Any:
        raise NotImplementedError

    def _merge(self, into: Values, theirs: Values) -> None:
        raise NotImplementedError

    def metric(self, values: Values) -> Metric:
        raise NotImplementedError


class Histogram(Family[HistogramChild]):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ):
        self.bounds = sorted(float(b) for b in buckets)
        super().__init__(name, documentation, labelnames, registry)

    kind = "histogram"

    @property
    def buckets(self) -> int:
        return len(self.bounds) + 1

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def _value_of(self, child: HistogramChild) -> Any:
        counts, total = child.snapshot()
        return [counts, total]

    def _merge(self, into: Values, theirs: Values) -> None:
        add_histograms(into, theirs)

    def metric(self, values: Values) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, (counts, total) in values.items():
            cumulative, buckets = 0, []
            for bound, count in zip([*self.bounds, float("inf")], counts, strict=True):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            family.add_metric(list(labels), buckets, math.fsum(sum_parts(total)))
        return family


def add_histograms(into: Values, theirs: Values) -> None:
    """Another process's histogram values added to `into`: counts add up; sums are kept as
    their parts and added once, exactly (`Histogram.metric`)."""
    for labels, (counts, total) in theirs.items():
        mine = into.get(labels)
        if mine is None:
            into[labels] = [list(counts), sum_parts(total)]
        else:
            into[labels] = [
                [a + b for a, b in zip(mine[0], counts, strict=True)],
                sum_parts(mine[1]) + sum_parts(total),
            ]


def add_counters(into: Values, theirs: Values) -> None:
    """Another process's counter values added to `into`."""
    for labels, value in theirs.items():
        into[labels] = into.get(labels, 0.0) + value


def sum_parts(total: float | list[float]) -> list[float]:
    """A histogram's sum as parts to be added once, with `math.fsum`: the exactly rounded sum
    whatever their order. Added up one by one, as each worker answers a scrape in its own
    order, sums of three or more workers could differ in the last bit from one scrape to the
    next; a `_sum` a hair below the last one reads as a counter reset in Prometheus."""
    return list(total) if isinstance(total, list) else [total]


class _Number(Family[NumberChild]):
    """A family of plain numbers (counters and gauges): one value per child, exported as
    `metric_type`."""

    metric_type: ClassVar[type[CounterMetricFamily] | type[GaugeMetricFamily]]

    def _value_of(self, child: NumberChild) -> Any:
        return child.value

    def metric(self, values: Values) -> Metric:
        family = self.metric_type(self.name, self.documentation, labels=self.labelnames)
        for labels, value in values.items():
            family.add_metric(list(labels), value)
        return family


class Counter(_Number[CounterChild]):
    kind = "counter"
    metric_type = CounterMetricFamily

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _merge(self, into: Values, theirs: Values) -> None:
        add_counters(into, theirs)


class Gauge(_Number[GaugeChild]):
    """A gauge; across processes, live ones only, summed (`sum`) or the largest (`max`).
    `function` gives the value of a gauge without labels, read at each scrape."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        *,
        across_processes: Literal["sum", "max"],
        function: Callable[[], float] | None = None,
    ):
        if function is not None and labelnames:
            raise ValueError(f"{name}: a gauge read from a function has no labels")
        self._across = across_processes
        self._function = function
        super().__init__(name, documentation, labelnames, registry)

    kind = "gauge"
    metric_type = GaugeMetricFamily

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def values(self) -> Values:
        if self._function is not None:
            return {(): float(self._function())}
        return super().values()

    def _counts(self, peer: PeerValues) -> bool:
        return peer.alive

    def _merge(self, into: Values, theirs: Values) -> None:
        for labels, value in theirs.items():
            mine = into.get(labels)
            if mine is None:
                into[labels] = value
            elif self._across == "sum":
                into[labels] = mine + value
            else:
                into[labels] = max(mine, value)


def _le(bound: float) -> str:
    """A bucket's `le` label as prometheus_client writes it ("0.005", "1.0", "+Inf")."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]
