"""`GET /metrics`: the traffic and the sidecar's state in the Prometheus text format.

The request path only adds to plain ints and bucket lists (an observer, see `observe`); the
families are built at scrape time by a custom collector on a registry of this sidecar's own,
so two sidecars in one process (tests) never share a series, and the hot path takes no lock.
prometheus_client's own `Counter.labels(...).inc()` costs a lock and a label lookup per
call, several per attempt: about what the 5% budget of a proxied call allows in all.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Final

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

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
OVERHEAD_MS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100)
_CLASS: Final = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")
_CLASS_OF: Final = {status: _CLASS[status // 100] for status in range(100, 600)}
# Token counts of a plain answer, read from its "usage" object without parsing the body:
# OpenAI's names and the Responses/Anthropic ones; "_details" objects do not match.
_TOKENS: Final = re.compile(
    rb'"(prompt_tokens|input_tokens|completion_tokens|output_tokens)"\s*:\s*(\d+)'
)


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

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        n = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            n += count
            out.append((repr(bound / 1000.0), n))
        out.append(("+Inf", n + self.counts[-1]))
        return out


class Series:
    """What one upstream did in one role: calls, errors, latencies, tokens."""

    __slots__ = ("calls", "errors", "input", "output", "total", "ttfb", "ttft")

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str, str], int] = {}  # (route, model, status class)
        self.errors: dict[str, int] = {}  # by error kind
        self.ttfb = Hist(LATENCY_MS)
        self.ttft = Hist(LATENCY_MS)
        self.total = Hist(LATENCY_MS)
        self.input = 0
        self.output = 0


def tokens(meter: Meter) -> tuple[int, int]:
    """Input and output tokens of an answer: the stream's tally, or a plain answer's usage."""
    tally = meter.tally
    if tally is not None:
        return tally.prompt_tokens or 0, tally.completion_tokens or 0
    body = meter.body
    at = body.rfind(b'"usage"') if body else -1  # usage comes last, or nearly, everywhere
    if body is None or at < 0:
        return 0, 0
    try:
        # Where usage is the answer's last member, its object is the rest of the body less
        # the closing brace: orjson reads that in a third of the time the search below takes.
        usage = orjson.loads(body[body.index(b":", at) + 1 : body.rindex(b"}")])
    except (ValueError, orjson.JSONDecodeError):
        usage = None
    if isinstance(usage, dict):
        i = usage.get("prompt_tokens", usage.get("input_tokens"))
        o = usage.get("completion_tokens", usage.get("output_tokens"))
        return (i if type(i) is int else 0), (o if type(o) is int else 0)
    found: dict[bytes, int] = {}
    for m in _TOKENS.finditer(body, at):
        found.setdefault(m.group(1), int(m.group(2)))
    return (
        found.get(b"prompt_tokens", found.get(b"input_tokens", 0)),
        found.get(b"completion_tokens", found.get(b"output_tokens", 0)),
    )


def known_models(rt: Runtime) -> frozenset[str]:
    """The model ids labels may name: `metrics.models` and both sides of every `models:` map."""
    cfg = rt.config
    names = set(cfg.metrics.models)
    for up in cfg.upstreams.values():
        names.update(up.models)
        names.update(up.models.values())
    return frozenset(names)


class Metrics:
    """The observer behind `/metrics` (see `observe.Observer`), and its collector."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.series: dict[tuple[str, str], Series] = {}  # (upstream, role)
        self.overhead = Hist(OVERHEAD_MS)
        self.refusals: dict[str, int] = {}  # by status class
        self._rt: Runtime | None = None
        self._models: frozenset[str] = frozenset()
        # The last call's overhead waits here until it is known no failover follows (see
        # `served`), with its attempts' upstream milliseconds so far.
        self._call: Call | None = None
        self._upstream_ms = 0.0
        self._overhead_ms = 0.0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # --- the observer: on the request path, plain arithmetic only -------------------------

    def served(self, call: Call, attempt: Attempt, meter: Meter) -> None:
        rt = call.arrival.runtime
        if rt is not self._rt:
            self._rt, self._models = rt, known_models(rt)
        self._count(attempt, meter, call.route.name)
        # The sidecar's own time for the call: from arrival to now (its answer complete, or a
        # plain one about to be written) less every attempt's upstream time. `settle` tells
        # of a call's attempts one after another with nothing in between, so a failover
        # replaces its call's pending figure, and any other event settles it.
        upstream_ms = meter.total_ms or 0.0
        if self._call is call:
            upstream_ms += self._upstream_ms
        elif self._call is not None:
            self.overhead.observe(self._overhead_ms)
        self._call = call
        self._upstream_ms = upstream_ms
        self._overhead_ms = (perf_counter() - call.arrival.t0) * 1000.0 - upstream_ms

    def copied(self, call_id: str, attempt: Attempt, meter: Meter) -> None:
        self._count(attempt, meter, "-")  # a copy belongs to no route of the app's

    def refused(self, arrival: Arrival, error: ErrorAnswer) -> None:
        cls = _CLASS_OF.get(error.status, "none")
        self.refusals[cls] = self.refusals.get(cls, 0) + 1

    def _count(self, attempt: Attempt, meter: Meter, route: str) -> None:
        key = (attempt.upstream.name, attempt.role)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = Series()
        status = meter.status
        model = attempt.model_sent
        label = (
            route,
            model if model in self._models else "other" if model else "none",
            _CLASS_OF.get(status, "none") if status is not None else "none",
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
            h.counts[bisect_left(LATENCY_MS, ms)] += 1
            h.sum += ms
        ms = meter.ttft_ms
        if ms is not None:
            h = s.ttft
            h.counts[bisect_left(LATENCY_MS, ms)] += 1
            h.sum += ms
        ms = meter.total_ms
        if ms is not None:
            h = s.total
            h.counts[bisect_left(LATENCY_MS, ms)] += 1
            h.sum += ms
        if kind is None:
            i, o = tokens(meter)
            s.input += i
            s.output += o

    # --- the collector: at scrape time ------------------------------------------------------

    def text(self) -> bytes:
        """The exposition, as `GET /metrics` answers it."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
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
                fam.add_metric([up, role], h.buckets(), h.sum / 1000.0)
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
