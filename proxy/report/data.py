"""What a report holds: the frozen dataclass tree `build_report` fills and renderers read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from proxy.judge.tally import NO_QUALITY, Quality

# "inconclusive": the interval still spans a band edge; more pairs would settle it.
Status = Literal["pass", "warn", "fail", "inconclusive", "n/a"]
Unit = Literal["ratio", "share", "difference"]
Reason = Literal["status", "shape", "tool_calls", "similarity"]


@dataclass(frozen=True, slots=True)
class ReportFilter:
    since: float | None = None  # unix seconds, inclusive, on the exchange's arrival
    until: float | None = None  # exclusive
    route: str | None = None
    model: str | None = None  # the requested model
    revision: str | None = None
    replay: str | None = None  # one replay run's exchanges only (`python -m proxy replay`)


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Nearest rank: pN is the smallest value with at least N% of the values at or below it."""

    n: int
    p50: float | None
    p90: float | None
    p99: float | None


@dataclass(frozen=True, slots=True)
class Count:
    name: str | None  # None: the requests named no model
    count: int
    share: float


@dataclass(frozen=True, slots=True)
class Share:
    upstream: str
    weight: float


@dataclass(frozen=True, slots=True)
class RevisionSeen:
    revision: str
    started: float | None  # when it came into force (None: not in the revisions table)
    rollback: bool
    split: tuple[Share, ...]  # the configured default split
    first_seen: float | None  # first and last exchange under it, in the window
    last_seen: float | None
    requests: int
    served: tuple[Share, ...]  # share of primary answers per upstream under it


@dataclass(frozen=True, slots=True)
class Calls:
    """The app's calls as the SDKs retry them: attempts with one `retry_key` are one call."""

    calls: int  # exchanges, counting all attempts of one call once
    retried: int  # calls seen with more than one attempt (or a retry count above 0)
    attempts: int  # exchanges of the retried calls
    max_attempts: int
    failed: int  # retried calls whose every attempt the primary answered with an error


@dataclass(frozen=True, slots=True)
class Refusal:
    """Requests the sidecar answered itself, sent to no upstream, by status and reason."""

    status: int | None
    reason: str | None
    count: int


@dataclass(frozen=True, slots=True)
class FailedOver:
    """Calls whose upstream failed before the app had a byte, answered by another."""

    failed: str
    to: str
    calls: int


@dataclass(frozen=True, slots=True)
class GuardTripped:
    upstream: str
    rule: str
    figures: str
    ts: float
    revision: str


@dataclass(frozen=True, slots=True)
class Traffic:
    exchanges: int
    streams: int
    first_ts: float | None
    last_ts: float | None
    by_upstream: tuple[Count, ...]  # primary answers: the canary share actually served
    by_route: tuple[Count, ...]
    by_model: tuple[Count, ...]
    revisions: tuple[RevisionSeen, ...]
    calls: Calls
    refused: tuple[Refusal, ...]
    failovers: tuple[FailedOver, ...] = ()  # calls moved off a failing upstream
    trips: tuple[GuardTripped, ...] = ()  # upstreams the guard took out of rotation


@dataclass(frozen=True, slots=True)
class DimsSeen:
    upstream: str
    role: str
    dims: int
    answers: int


@dataclass(frozen=True, slots=True)
class RouteDims:
    """The embedding dimensions one route's answers came in: `mixed` when the app was served
    vectors of more than one length, or a shadow's differ from what the app was served."""

    route: str
    seen: tuple[DimsSeen, ...]
    mixed: bool


@dataclass(frozen=True, slots=True)
class UpstreamStats:
    """Everything about one upstream in one role (routed `primary`, `shadow` or `noise`)."""

    upstream: str
    role: str
    responses: int
    succeeded: int  # no error of any kind
    upstream_errors: int  # errors other than the app leaving or the sidecar refusing
    error_rate: float  # upstream_errors / responses
    errors: tuple[Count, ...]  # by kind, share of responses
    ttfb_ms: Percentiles  # latencies of successful responses
    ttft_ms: Percentiles
    total_ms: Percentiles
    ttft_sketch: tuple[float, ...]
    total_sketch: tuple[float, ...]
    with_usage: int
    no_usage: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int  # of prompt_tokens, read from the provider's cache
    images: int
    priced: int  # responses with a price for what they carry
    cost: float | None  # US dollars over the priced responses
    cost_per_1k: float | None
    streams: int  # streams that got a 2xx answer
    streams_ok: int  # ... and ended with [DONE] and usage
    json_answers: int  # successful answers in JSON mode
    json_ok: int


@dataclass(frozen=True, slots=True)
class Agreement:
    agree: int
    compared: int
    rate: float | None


@dataclass(frozen=True, slots=True)
class Similarity:
    sampled: int
    mean: float | None
    p10: float | None


@dataclass(frozen=True, slots=True)
class Estimate:
    """A figure, its 95% interval (None: too few values for one) and what it rests on."""

    value: float | None
    low: float | None
    high: float | None
    n: int


NO_ESTIMATE = Estimate(None, None, None, 0)


@dataclass(frozen=True, slots=True)
class PairStats:
    """One upstream's copies (`shadow`, or pooled `noise`) against the primary answers."""

    role: str
    upstream: str
    pairs: int  # both sides recorded, neither ended by the app or refused by the sidecar
    primary_error_rate: float | None
    other_error_rate: float | None
    both_errors: int  # pairs where both sides had an upstream error
    status: Agreement  # same status class (2xx/4xx/5xx/none)
    status_shape: Agreement  # same status class and same response shape
    # pairs with tool calls (or the primary's tool calls and the copy's 4xx): same names and
    # argument keys, arguments valid
    tool_calls: Agreement
    text: Agreement  # normalised answer text identical
    similarity: Similarity
    ttfb_diff_ms: Percentiles  # other minus primary, per exchange
    ttft_diff_ms: Percentiles
    total_diff_ms: Percentiles
    primary_ttft_ms: Percentiles  # streams answered by both
    other_ttft_ms: Percentiles
    primary_total_ms: Percentiles  # non-streams answered by both
    other_total_ms: Percentiles
    # Same request, other / primary: time to first token for streams, total for the rest.
    latency_ratio: Estimate  # the median of the per-pair ratios
    latency_diff_ms: Estimate  # the median of the per-pair differences
    latency_streams: int  # of latency_ratio.n, the pairs compared on time to first token
    usage_pairs: int  # both sides reported usage
    primary_tokens: tuple[int, int, int]  # prompt, completion, total over usage_pairs
    other_tokens: tuple[int, int, int]
    primary_cached: int  # cached prompt tokens over usage_pairs
    other_cached: int
    token_ratio: Estimate  # other / primary total tokens
    priced_pairs: int
    primary_cost: float | None
    other_cost: float | None
    cost_ratio: Estimate


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    value: float | None  # the estimate graded against the band
    low: float | None  # its 95% interval; None when there is none yet
    high: float | None
    unit: Unit
    warn: float
    fail: float
    n: int  # pairs or answers behind the figure
    method: str  # how the interval was made
    evidence: str
    note: str | None
    more: int | None  # inconclusive: how many more pairs would likely settle it


@dataclass(frozen=True, slots=True)
class Verdict:
    upstream: str  # the shadowed upstream being judged
    status: Status
    checks: tuple[Check, ...]
    role: str = "shadow"  # whose copies: "shadow", or "replay" (sent again later)


@dataclass(frozen=True, slots=True)
class Side:
    upstream: str
    status: int | None
    error_kind: str | None
    error: str | None
    finish_reason: str | None
    total_ms: float | None
    text: str | None  # truncated; None when no body was recorded


@dataclass(frozen=True, slots=True)
class Example:
    reason: Reason
    exchange_id: str
    ts: float
    route: str
    model: str | None
    stream: bool
    similarity: float | None
    primary: Side
    other: Side
    paths: tuple[str, ...]  # shape examples: the JSON paths where the two answers differ


@dataclass(frozen=True, slots=True)
class Series:
    upstream: str
    role: str
    requests: tuple[int, ...]  # per bucket
    errors: tuple[int, ...]  # upstream errors per bucket


@dataclass(frozen=True, slots=True)
class Timeline:
    start: float
    bucket_seconds: float
    series: tuple[Series, ...]


@dataclass(frozen=True, slots=True)
class Recording:
    """One file the report read: several make one recording, pooled."""

    path: str
    schema: int  # its schema version (older ones are read as if migrated)
    exchanges: int  # matching the filter
    first_ts: float | None
    last_ts: float | None


@dataclass(frozen=True, slots=True)
class Report:
    db_path: str
    generated_at: float
    filter: ReportFilter
    min_pairs: int
    traffic: Traffic
    upstreams: tuple[UpstreamStats, ...]
    pairs: tuple[PairStats, ...]  # one per shadowed upstream, then the pooled noise floor
    verdicts: tuple[Verdict, ...]
    verdict: Status  # the worst conclusive check; "inconclusive" rather than a pass
    embeddings: tuple[RouteDims, ...]
    examples: tuple[Example, ...]
    timeline: Timeline
    notes: tuple[str, ...]
    quality: Quality = NO_QUALITY  # what `python -m proxy judge` recorded, in the window
    recordings: tuple[Recording, ...] = ()  # the files read, each with its own span
    # latency percentiles and medians read from log bins, within bins.RELATIVE_ERROR
    binned: bool = False

    def stats(self, upstream: str, role: str) -> UpstreamStats | None:
        return next((s for s in self.upstreams if (s.upstream, s.role) == (upstream, role)), None)

    def noise(self) -> PairStats | None:
        return next((p for p in self.pairs if p.role == "noise"), None)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is unknown or b is 0: an unmeasured figure is not a 0."""
    return a / b if a is not None and b else None
