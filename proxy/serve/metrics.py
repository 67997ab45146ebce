"""`GET /metrics`: the traffic and the sidecar's state in the Prometheus text format.

The request path only adds to plain ints and bucket lists (an observer, see `observe`); the
families are built at scrape time by a custom collector on a registry of this sidecar's own,
so two sidecars in one process (tests) never share a series, and the hot path takes no lock.
prometheus_client's own `Counter.labels(...).inc()` costs a lock and a label lookup per
call, several per attempt: about what the 5% budget of a proxied call allows in all.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from time import perf_counter, time
from typing import TYPE_CHECKING, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from proxy.serve.live import Window

if TYPE_CHECKING:
    from proxy.errors import ErrorAnswer
    from proxy.record.meter import Meter
    from proxy.serve.app import Sidecar
    from proxy.serve.call import Arrival, Call
    from proxy.serve.plan import Attempt
    from proxy.serve.runtime import Runtime

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST  # the text format `generate_latest` writes

PREFIX: Final = "llm_sidecar"
# Bucket bounds in milliseconds (as the meter measures), exported in seconds. An LLM call
# takes from ~50 ms (an embedding) to minutes (a long stream); the sidecar's own share is
# counted in tens of microseconds.
LATENCY_MS: Final = (
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10_000,
    30_000,
    60_000,
    120_000,
)
BATCH: Final = 64  # attempts noted before they are counted, at most (see `Metrics.served`)
HELD_BYTES: Final = 4 << 20  # bytes of their bodies the notes may keep alive, at most
OVERHEAD_MS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100)
# The upstream's own failures, as the guard counts them: not a 4xx the request caused, nor
# the app leaving.
FAILED: Final = frozenset({"http_5xx", "rate_limit", "connection", "timeout", "broken_stream"})
_CLASS: Final = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")
_CLASS_OF: Final = {status: _CLASS[status // 100] for status in range(100, 600)}


def _fine() -> tuple[float, ...]:
    """Latencies are counted in buckets 5% wide from 0.1 ms to ten minutes, the exported
    bounds among them: the dashboard's percentiles come from these counts (within 5%), and
    /metrics sums them into `LATENCY_MS`."""
    bounds: set[float] = set(LATENCY_MS)
    b = 0.1
    while b < 600_000:
        bounds.add(round(b, 4))
        b *= 1.05
    return tuple(sorted(bounds))


FINE: Final = _fine()
_EXPORTED: Final = tuple(FINE.index(b) for b in LATENCY_MS)


class Hist:
    """A histogram as counts per bucket (not cumulative) and a sum, in milliseconds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, ms: float) -> None:
        self.counts[bisect_left(self.bounds, ms)] += 1  # `le`: a value on a bound is in it
        self.sum += ms

    def buckets(self, at: tuple[int, ...] | None = None) -> list[tuple[str, float]]:
        """Cumulative counts at each bound (`at`: at these bounds' positions only), in seconds."""
        out: list[tuple[str, float]] = []
        n = i = 0
        for k in range(len(self.bounds)) if at is None else at:
            n += sum(self.counts[i : k + 1])
            i = k + 1
            out.append((repr(self.bounds[k] / 1000.0), n))
        out.append(("+Inf", n + sum(self.counts[i:])))
        return out


class Series:
    """What one upstream did in one role: calls, errors, latencies, tokens; all since start."""

    __slots__ = ("calls", "errors", "input", "output", "total", "ttfb", "ttft")

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str, str], int] = {}  # (route, model, status class)
        self.errors: dict[str, int] = {}  # by error kind
        self.ttfb = Hist(FINE)
        self.ttft = Hist(FINE)
        self.total = Hist(FINE)
        self.input = 0
        self.output = 0

    def calls_and_failures(self) -> tuple[int, int]:
        """All calls, and those that failed of the upstream's own doing (`FAILED`)."""
        return sum(self.calls.values()), sum(n for k, n in self.errors.items() if k in FAILED)


def known_models(rt: Runtime) -> frozenset[str]:
    """The model ids labels may name: `metrics.models` and both sides of every `models:` map."""
    cfg = rt.config
    names = set(cfg.metrics.models)
    for up in cfg.upstreams.values():
        names.update(up.models)
        names.update(up.models.values())
    return frozenset(names)


class Metrics:
    """The observer behind `/metrics` and the dashboard (see `observe.Observer`), and the
    collector of `/metrics`. One observer for both: each call is counted once, into counters
    since start; the dashboard's window is marks of those counters every few seconds."""

    def __init__(self, sidecar: Sidecar, clock: Callable[[], float] = time) -> None:
        self.sidecar = sidecar
        self.clock = clock
        self.series: dict[tuple[str, str], Series] = {}  # (upstream, role)
        self.window = Window()
        self.overhead = Hist(OVERHEAD_MS)
        self.refusals: dict[str, int] = {}  # by status class
        self._rt: Runtime | None = None
        self._models: frozenset[str] = frozenset()
        self._none = "none"  # the model label of a call that names none (see `served`)
        # The last call's overhead waits here until it is known no failover follows (see
        # `served`), with its attempts' upstream milliseconds so far.
        self._call: Call | None = None
        self._upstream_ms = 0.0
        self._overhead_ms = 0.0
        self._notes: list[tuple[Call | None, Attempt, Meter, float]] = []  # see `served`
        self._held = 0  # bytes of bodies the notes keep
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # --- the observer: a note on the request path, counted in batches ---------------------

    def served(self, call: Call, attempt: Attempt, meter: Meter) -> None:
        # A call's counting touches a dozen objects that the rest of a request has pushed out
        # of the CPU's caches by then: counted together, a batch finds them warm, which costs
        # a third of counting each on its own (the bench's CPU per request). At most `BATCH`
        # attempts or `HELD_BYTES` of their bodies wait; every read of the figures counts
        # what waits first, and so does a call in the dashboard's next slot.
        if self.clock() >= self.window.ends:
            self.flush()
        self._notes.append((call, attempt, meter, perf_counter()))
        self._held += 2 * len(call.body) + (len(meter.body) if meter.body else 0)
        if len(self._notes) >= BATCH or self._held >= HELD_BYTES:
            self.flush()

    def copied(self, call_id: str, attempt: Attempt, meter: Meter) -> None:
        if self.clock() >= self.window.ends:
            self.flush()
        self._notes.append((None, attempt, meter, 0.0))
        self._held += len(meter.body) if meter.body else 0
        if len(self._notes) >= BATCH or self._held >= HELD_BYTES:
            self.flush()

    def refused(self, arrival: Arrival, error: ErrorAnswer) -> None:
        cls = _CLASS_OF.get(error.status, "none")
        self.refusals[cls] = self.refusals.get(cls, 0) + 1

    def flush(self) -> None:
        """Counts the attempts noted so far, then marks the window if a new slot has begun
        (the notes belong to the slots before it)."""
        notes, self._notes, self._held = self._notes, [], 0
        for call, attempt, meter, at in notes:
            if call is None:
                self._count(attempt, meter, "-")  # a copy belongs to no route of the app's
            else:
                self._count_call(call, attempt, meter, at)
        now = self.clock()
        if now >= self.window.ends:
            self.window.mark(now, self.series)

    def _count_call(self, call: Call, attempt: Attempt, meter: Meter, at: float) -> None:
        rt = call.arrival.runtime
        if rt is not self._rt:
            self._rt, self._models = rt, known_models(rt)
            self._none = "none" if rt.inspect_bodies else "unread"
        self._count(attempt, meter, call.route.name)
        # The sidecar's own time for the call: from arrival to `at` (its answer complete, or
        # a plain one about to be written) less every attempt's upstream time. `settle` tells
        # of a call's attempts one after another with nothing in between, so a failover
        # replaces its call's pending figure, and any other call settles it.
        upstream_ms = meter.total_ms or 0.0
        if self._call is call:
            upstream_ms += self._upstream_ms
        elif self._call is not None:
            h = self.overhead
            h.counts[bisect_left(OVERHEAD_MS, self._overhead_ms)] += 1
            h.sum += self._overhead_ms
        self._call = call
        self._upstream_ms = upstream_ms
        self._overhead_ms = (at - call.arrival.t0) * 1000.0 - upstream_ms

    def _count(self, attempt: Attempt, meter: Meter, route: str) -> None:
        key = (attempt.upstream.name, attempt.role)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = Series()
        model = attempt.model_sent
        label = (
            route,
            model if model in self._models else "other" if model else self._none,
            _CLASS_OF.get(meter.status, "none"),  # type: ignore[arg-type]
        )
        calls = s.calls
        calls[label] = calls.get(label, 0) + 1
        kind = meter.error_kind
        if kind is not None:
            s.errors[kind] = s.errors.get(kind, 0) + 1
        # `Hist.observe`, inlined: three method calls were a tenth of this function's cost.
        ms = meter.ttfb_ms
        if ms is not None:
            h = s.ttfb
            h.counts[bisect_left(FINE, ms)] += 1
            h.sum += ms
        ms = meter.ttft_ms
        if ms is not None:
            h = s.ttft
            h.counts[bisect_left(FINE, ms)] += 1
            h.sum += ms
        ms = meter.total_ms
        if ms is not None:
            h = s.total
            h.counts[bisect_left(FINE, ms)] += 1
            h.sum += ms
        if kind is None:
            i, o = meter.tokens()
            s.input += i
            s.output += o

    # --- the collector: at scrape time ------------------------------------------------------

    def text(self) -> bytes:
        """The exposition, as `GET /metrics` answers it."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        self.flush()
        if self._call is not None:
            self.overhead.observe(self._overhead_ms)
            self._call = None
        yield from self._traffic()
        yield from _state(self.sidecar)
        yield from _guard_and_quotas(self.sidecar)
        refused = CounterMetricFamily(
            f"{PREFIX}_refused", "Requests the sidecar answered itself.", labels=["status_class"]
        )
        for cls, n in sorted(self.refusals.items()):
            refused.add_metric([cls], n)
        yield refused

    def _traffic(self) -> Iterator[Metric]:
        who = ["upstream", "role"]
        calls = CounterMetricFamily(
            f"{PREFIX}_calls",
            "Upstream attempts, complete: app calls (primary, failover) and copies (shadow, noise).",
            labels=[*who, "route", "model", "status_class"],
        )
        errors = CounterMetricFamily(
            f"{PREFIX}_errors", "Upstream attempts that failed, by kind.", labels=[*who, "kind"]
        )
        toks = CounterMetricFamily(
            f"{PREFIX}_tokens", "Tokens in successful answers' usage.", labels=[*who, "kind"]
        )
        hists = {
            "ttfb": HistogramMetricFamily(
                f"{PREFIX}_time_to_first_byte_seconds",
                "Time to the upstream's headers.",
                labels=who,
            ),
            "ttft": HistogramMetricFamily(
                f"{PREFIX}_time_to_first_token_seconds",
                "Time to a stream's first content.",
                labels=who,
            ),
            "total": HistogramMetricFamily(
                f"{PREFIX}_upstream_duration_seconds", "Time to the answer's end.", labels=who
            ),
        }
        for (up, role), s in sorted(self.series.items()):
            for (route, model, cls), n in sorted(s.calls.items()):
                calls.add_metric([up, role, route, model, cls], n)
            for kind, n in sorted(s.errors.items()):
                errors.add_metric([up, role, kind], n)
            toks.add_metric([up, role, "input"], s.input)
            toks.add_metric([up, role, "output"], s.output)
            for name, fam in hists.items():
                h: Hist = getattr(s, name)
                fam.add_metric([up, role], h.buckets(_EXPORTED), h.sum / 1000.0)
        overhead = HistogramMetricFamily(
            f"{PREFIX}_overhead_seconds",
            "The sidecar's own time per app call: its time less the upstreams'.",
        )
        overhead.add_metric([], self.overhead.buckets(), self.overhead.sum / 1000.0)
        yield from (calls, errors, toks, *hists.values(), overhead)


def _state(sidecar: Sidecar) -> Iterator[Metric]:
    """The config in force, the shadow copies and the recorder: read from their counters."""
    live = sidecar.live
    rt = live.current
    info = InfoMetricFamily(f"{PREFIX}_config", "The config revision in force and its file.")
    info.add_metric([], {"revision": rt.revision, "path": rt.path})
    yield info
    yield GaugeMetricFamily(
        f"{PREFIX}_rollback", "1 while the rollback switch is on.", value=int(rt.config.rollback)
    )
    yield CounterMetricFamily(
        f"{PREFIX}_config_reloads", "Config reloads applied.", value=live.reloads
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_config_reload_failed",
        "1 when the last reload was refused (the running config is kept).",
        value=int(live.last_error is not None),
    )
    split = GaugeMetricFamily(
        f"{PREFIX}_split_share",
        "Configured share of each route's calls.",
        labels=["route", "upstream"],
    )
    for route in rt.table.routes:
        for up, share in route.split.shares().items():
            split.add_metric([route.name, up], share)
    yield split
    flight = GaugeMetricFamily(
        f"{PREFIX}_upstream_in_flight", "Requests open to each upstream.", labels=["upstream"]
    )
    for name, client in rt.upstreams.items():
        flight.add_metric([name], client.in_flight)
    yield flight
    c = sidecar.counters
    failovers = CounterMetricFamily(
        f"{PREFIX}_failovers", "App calls moved off an upstream that failed.", labels=["upstream"]
    )
    for name, n in sorted(c.failovers.items()):
        failovers.add_metric([name], n)
    yield failovers
    yield CounterMetricFamily(
        f"{PREFIX}_shadow_copies_sent", "Shadow and noise copies sent.", value=c.shadow_sent
    )
    yield CounterMetricFamily(
        f"{PREFIX}_shadow_copies_failed", "Copies that failed.", value=c.shadow_failed
    )
    skipped = CounterMetricFamily(
        f"{PREFIX}_shadow_copies_skipped", "Copies not sent, by reason.", labels=["reason"]
    )
    for reason, n in (
        ("in_flight_cap", c.shadow_skipped_cap),
        ("same_upstream", c.shadow_skipped_same),
        ("not_repeatable", c.shadow_skipped_state),
        ("other_shape", c.shadow_skipped_shape),
        ("guard", c.shadow_skipped_guard),
        ("quota", sidecar.shadower.quotas.skipped),
    ):
        skipped.add_metric([reason], n)
    yield skipped
    yield GaugeMetricFamily(
        f"{PREFIX}_shadow_copies_in_flight", "Copies under way.", value=sidecar.shadower.in_flight
    )
    yield from _records(sidecar)


def _records(sidecar: Sidecar) -> Iterator[Metric]:
    written = CounterMetricFamily(f"{PREFIX}_records_written", "Records committed to SQLite.")
    dropped = CounterMetricFamily(
        f"{PREFIX}_records_dropped", "Records lost (queue full, failed batches)."
    )
    depth = GaugeMetricFamily(f"{PREFIX}_record_queue_depth", "Records waiting for the writer.")
    if sidecar.recorder is not None:
        s = sidecar.recorder.stats()
        written.add_metric([], s.written)
        dropped.add_metric([], s.dropped)
        depth.add_metric([], s.queue_depth)
    yield from (written, dropped, depth)


def _guard_and_quotas(sidecar: Sidecar) -> Iterator[Metric]:
    rt = sidecar.live.current
    guard = sidecar.shadower.guard
    tripped = GaugeMetricFamily(
        f"{PREFIX}_guard_tripped",
        "1 while the guard keeps an upstream out of rotation.",
        labels=["upstream"],
    )
    for name in rt.upstreams:
        tripped.add_metric([name], int(name in guard.tripped))
    yield tripped
    yield CounterMetricFamily(
        f"{PREFIX}_guard_rerouted",
        "Calls sent to the primary as their pick was tripped.",
        value=sidecar.counters.guard_rerouted,
    )
    view = sidecar.shadower.quotas.view()
    spent = GaugeMetricFamily(
        f"{PREFIX}_quota_spent", "1 while an upstream's quota is spent.", labels=["upstream"]
    )
    used = GaugeMetricFamily(
        f"{PREFIX}_quota_used", "What each quota counts now.", labels=["upstream", "kind"]
    )
    for name, q in sorted(view["upstreams"].items()):
        spent.add_metric([name], int(q["spent"]))
        used.add_metric([name, "requests_last_minute"], q["requests_last_minute"])
        used.add_metric([name, "tokens_last_minute"], q["tokens_last_minute"])
        used.add_metric([name, "usd_today"], q["usd_today"])
    yield spent
    yield used
    yield CounterMetricFamily(
        f"{PREFIX}_quota_rerouted", "Calls sent to the primary for a quota.", value=view["rerouted"]
    )
