"""The migration report: is the new gateway safe to take my traffic, and what will it cost?

`build_report` reads a recording through one read-only snapshot (safe while the sidecar
writes) and leaves the aggregation to SQLite; `render_text` and `render_json` present it.
"""

from __future__ import annotations

import math
import re
import sqlite3
import textwrap
import time
import types
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any, Final, Literal, get_args, get_origin, get_type_hints

import orjson

from proxy.measure import answer_of, similarity
from proxy.records import ErrorKind
from proxy.store import open_readonly
from proxy.thresholds import Band, Price, ReportSettings

Status = Literal["pass", "warn", "fail", "n/a"]
Unit = Literal["ratio", "share", "difference"]
Reason = Literal["status", "shape", "tool_calls", "similarity"]

ERROR_KINDS: Final[tuple[str, ...]] = get_args(ErrorKind)
# The app leaving and the sidecar refusing are nobody's upstream's doing: they are shown,
# but left out of error rates and of every shadow-vs-primary comparison.
NOT_UPSTREAM: Final = ("client_disconnect", "proxy")
SIMILARITY_SAMPLE: Final = 2_000  # pairs: similarity runs in Python, ~1 ms a pair
EXAMPLES_PER_REASON: Final = 5
EXAMPLE_CHARS: Final = 1_500
SKETCH_POINTS: Final = 400  # evenly ranked values kept per latency distribution, for charts
MAX_BUCKETS: Final = 100
_BUCKET_SECONDS: Final = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400)
_ORDER: Final[dict[str, int]] = {"n/a": 0, "pass": 1, "warn": 2, "fail": 3}


# --- the report ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportFilter:
    since: float | None = None  # unix seconds, inclusive, on the exchange's arrival
    until: float | None = None  # exclusive
    route: str | None = None
    model: str | None = None  # the requested model
    revision: str | None = None


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
class Traffic:
    exchanges: int
    streams: int
    first_ts: float | None
    last_ts: float | None
    by_upstream: tuple[Count, ...]  # primary answers: the canary share actually served
    by_route: tuple[Count, ...]
    by_model: tuple[Count, ...]
    revisions: tuple[RevisionSeen, ...]


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
    priced: int  # responses with usage and a price
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
class PairStats:
    """One upstream's copies (`shadow`, or pooled `noise`) against the primary answers."""

    role: str
    upstream: str
    pairs: int  # both sides recorded, neither ended by the app or refused by the sidecar
    primary_error_rate: float | None
    other_error_rate: float | None
    status: Agreement  # same status class (2xx/4xx/5xx/none)
    status_shape: Agreement  # same status class and same response shape
    tool_calls: Agreement  # pairs with tool calls: same names and argument keys, args valid
    text: Agreement  # normalised answer text identical
    similarity: Similarity
    ttfb_diff_ms: Percentiles  # other minus primary, per exchange
    ttft_diff_ms: Percentiles
    total_diff_ms: Percentiles
    primary_ttft_ms: Percentiles  # streams answered by both
    other_ttft_ms: Percentiles
    primary_total_ms: Percentiles  # non-streams answered by both
    other_total_ms: Percentiles
    usage_pairs: int  # both sides reported usage
    primary_tokens: tuple[int, int, int]  # prompt, completion, total over usage_pairs
    other_tokens: tuple[int, int, int]
    priced_pairs: int
    primary_cost: float | None
    other_cost: float | None


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    value: float | None  # the figure compared with the band
    unit: Unit
    warn: float
    fail: float
    n: int  # pairs or answers behind the figure
    evidence: str
    note: str | None


@dataclass(frozen=True, slots=True)
class Verdict:
    upstream: str  # the shadowed upstream being judged
    status: Status
    checks: tuple[Check, ...]


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
class Report:
    db_path: str
    generated_at: float
    filter: ReportFilter
    min_pairs: int
    traffic: Traffic
    upstreams: tuple[UpstreamStats, ...]
    pairs: tuple[PairStats, ...]  # one per shadowed upstream, then the pooled noise floor
    verdicts: tuple[Verdict, ...]
    verdict: Status  # the worst check of all
    examples: tuple[Example, ...]
    timeline: Timeline
    notes: tuple[str, ...]

    def stats(self, upstream: str, role: str) -> UpstreamStats | None:
        return next((s for s in self.upstreams if (s.upstream, s.role) == (upstream, role)), None)

    def noise(self) -> PairStats | None:
        return next((p for p in self.pairs if p.role == "noise"), None)


# --- times ---------------------------------------------------------------------------------

_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_time(s: str, *, now: float | None = None) -> float:
    """Unix seconds from ISO-8601 (a date or date-time; naive means UTC), unix seconds, or an
    age ago: "90s", "15m", "2h", "3d", "1w"."""
    text = s.strip()
    if m := _AGO.fullmatch(text.lower()):
        return (time.time() if now is None else now) - float(m[1]) * _UNIT_SECONDS[m[2]]
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):
            return seconds
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{s!r} is not a time: give an ISO-8601 date or date-time (2024-05-01, "
            "2024-05-01T12:00Z), unix seconds, or an age such as 15m, 2h or 3d"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# --- SQL pieces ----------------------------------------------------------------------------


def _usage(a: str) -> str:
    """The token count of a response row, NULL when it reported no usage at all."""
    return (
        f"coalesce({a}.total_tokens, {a}.prompt_tokens + {a}.completion_tokens, "
        f"{a}.prompt_tokens, {a}.completion_tokens)"
    )


def _cost(a: str, price: tuple[str, str]) -> str:
    """Dollars times a million; NULL without a price or prompt tokens."""
    return f"({a}.prompt_tokens * {price[0]} + coalesce({a}.completion_tokens, 0) * {price[1]})"


def _us(expr: str) -> str:
    # Integer microseconds print and parse several times faster than REAL through group_concat.
    return f"CAST(round(({expr}) * 1000) AS INTEGER)"


def _by_app(a: str) -> str:
    kinds = ", ".join(f"'{k}'" for k in NOT_UPSTREAM)
    return f"coalesce({a}.error_kind, '') IN ({kinds})"


def _where(flt: ReportFilter) -> tuple[str, dict[str, Any]]:
    clauses = []
    params: dict[str, Any] = {}
    for name, clause in (
        ("since", "e.ts >= :since"),
        ("until", "e.ts < :until"),
        ("route", "e.route = :route"),
        ("model", "e.model = :model"),
        ("revision", "e.revision = :revision"),
    ):
        value = getattr(flt, name)
        if value is not None:
            clauses.append(clause)
            params[name] = value
    return "".join(f" AND {c}" for c in clauses), params


def _since(flt: ReportFilter, a: str) -> str:
    # Implied by e.ts >= since (an upstream is asked after the request arrived); it lets a
    # short window read responses through their ts index instead of scanning them all.
    return "" if flt.since is None else f" AND {a}.ts >= :since"


def _price_sql(
    pricing: dict[str, dict[str, Price]], a: str, upstream: str | None, params: dict[str, Any]
) -> tuple[str, str]:
    """SQL for the input and output price per million tokens of response row `a`, NULL when
    unpriced; with `upstream` known, only that upstream's table is consulted."""
    tables = {upstream: pricing.get(upstream, {})} if upstream is not None else pricing
    sql: list[list[str]] = [[], []]
    for i, (name, models) in enumerate(tables.items()):
        cases: list[list[str]] = [[], []]
        wild: list[str | None] = [None, None]
        for j, (model, price) in enumerate(models.items()):
            for k, value in enumerate((price.input, price.output)):
                key = f"{a}{i}_{j}_{k}"
                params[key] = value
                if model == "*":
                    wild[k] = f":{key}"
                else:
                    params[f"{a}{i}_{j}m"] = model
                    cases[k].append(f"WHEN :{a}{i}_{j}m THEN :{key}")
        for k in (0, 1):
            # The exact model wins over "*", whatever order the config lists them in.
            by_model = (
                f"CASE e.model {' '.join(cases[k])} ELSE {wild[k] or 'NULL'} END"
                if cases[k]
                else wild[k] or "NULL"
            )
            if upstream is not None:
                sql[k].append(by_model)
            else:
                params[f"{a}{i}u"] = name
                sql[k].append(f"WHEN :{a}{i}u THEN {by_model}")
    if upstream is not None:
        return (sql[0][0], sql[1][0]) if sql[0] else ("NULL", "NULL")
    if not sql[0]:
        return "NULL", "NULL"
    return tuple(f"(CASE {a}.upstream {' '.join(x)} END)" for x in sql)  # type: ignore[return-value]


def _upstream_sql(role: str, where: str, price: tuple[str, str]) -> str:
    ok = "r.error_kind IS NULL"
    stream = f"e.stream AND r.status / 100 = 2 AND NOT {_by_app('r')}"
    upstream_error = f"r.error_kind IS NOT NULL AND NOT {_by_app('r')}"
    bucket = "CAST((e.ts - :t0) / :width AS INTEGER)"
    # Only primaries are served under a revision's split.
    revisions = "group_concat(e.revision, char(31))" if role == "primary" else "NULL"
    return f"""
SELECT count(*), sum({ok}), sum({upstream_error}), group_concat(r.error_kind),
  count({_usage("r")}), sum(r.prompt_tokens), sum(r.completion_tokens), sum({_usage("r")}),
  count({_cost("r", price)}), sum({_cost("r", price)}) / 1e6,
  sum({stream}), sum({stream} AND r.stream_done = 1 AND {_usage("r")} IS NOT NULL),
  count(CASE WHEN {ok} THEN r.json_ok END), total(CASE WHEN {ok} THEN r.json_ok END),
  group_concat(CASE WHEN {ok} THEN {_us("r.ttfb_ms")} END),
  group_concat(CASE WHEN {ok} THEN {_us("r.ttft_ms")} END),
  group_concat(CASE WHEN {ok} THEN {_us("r.total_ms")} END),
  group_concat({bucket}),
  group_concat(CASE WHEN {upstream_error} THEN {bucket} END),
  {revisions}
FROM responses r CROSS JOIN exchanges e ON e.id = r.exchange_id
WHERE +r.upstream = :upstream AND +r.role = :role{where}"""


def _pair_sql(where: str, p_price: tuple[str, str], s_price: tuple[str, str]) -> str:
    ok = "p.error_kind IS NULL AND s.error_kind IS NULL"
    same_class = "p.status / 100 IS s.status / 100"
    usage = f"{_usage('p')} IS NOT NULL AND {_usage('s')} IS NOT NULL"
    p_cost, s_cost = _cost("p", p_price), _cost("s", s_price)
    priced = f"{p_cost} IS NOT NULL AND {s_cost} IS NOT NULL"
    tools = f"{ok} AND (p.tool_calls IS NOT NULL OR s.tool_calls IS NOT NULL)"
    tools_same = "(tool_sig(p.tool_calls) IS tool_sig(s.tool_calls) AND tool_valid(s.tool_calls))"
    text = f"{ok} AND p.text_sha256 IS NOT NULL AND s.text_sha256 IS NOT NULL"
    bodies = "length(p.response_body) > 0 AND length(s.response_body) > 0"

    def both(column: str, value: str, cond: str = "") -> str:
        return (
            f"group_concat(CASE WHEN {ok}{cond} AND p.{column} IS NOT NULL "
            f"AND s.{column} IS NOT NULL THEN {_us(value)} END)"
        )

    return f"""
SELECT count(*), sum(p.error_kind IS NOT NULL), sum(s.error_kind IS NOT NULL),
  sum({same_class}), sum({same_class} AND p.shape IS s.shape),
  sum({tools}), sum({tools} AND {tools_same}),
  sum({text}), sum({text} AND p.text_sha256 = s.text_sha256),
  sum({usage}),
  sum(CASE WHEN {usage} THEN coalesce(p.prompt_tokens, 0) END),
  sum(CASE WHEN {usage} THEN coalesce(p.completion_tokens, 0) END),
  sum(CASE WHEN {usage} THEN {_usage("p")} END),
  sum(CASE WHEN {usage} THEN coalesce(s.prompt_tokens, 0) END),
  sum(CASE WHEN {usage} THEN coalesce(s.completion_tokens, 0) END),
  sum(CASE WHEN {usage} THEN {_usage("s")} END),
  sum({priced}),
  sum(CASE WHEN {priced} THEN {p_cost} END) / 1e6,
  sum(CASE WHEN {priced} THEN {s_cost} END) / 1e6,
  {both("ttfb_ms", "s.ttfb_ms - p.ttfb_ms")},
  {both("ttft_ms", "s.ttft_ms - p.ttft_ms")},
  {both("total_ms", "s.total_ms - p.total_ms")},
  {both("ttft_ms", "p.ttft_ms", " AND e.stream")},
  {both("ttft_ms", "s.ttft_ms", " AND e.stream")},
  {both("total_ms", "p.total_ms", " AND NOT e.stream")},
  {both("total_ms", "s.total_ms", " AND NOT e.stream")},
  group_concat(CASE WHEN NOT {same_class} THEN s.rowid END),
  group_concat(CASE WHEN {same_class} AND p.shape IS NOT s.shape THEN s.rowid END),
  group_concat(CASE WHEN {tools} AND NOT {tools_same} THEN s.rowid END),
  group_concat(CASE WHEN {text} AND {bodies} THEN s.rowid END)
FROM responses s
  CROSS JOIN responses p ON p.exchange_id = s.exchange_id AND p.role = 'primary'
  CROSS JOIN exchanges e ON e.id = s.exchange_id
WHERE +s.upstream = :upstream AND +s.role = :role{where}
  AND NOT {_by_app("p")} AND NOT {_by_app("s")}"""


_PAIR_ROWS = """
SELECT s.rowid, e.id, e.ts, e.route, e.model, e.stream, p.text_sha256 IS s.text_sha256,
  p.upstream, p.status, p.error_kind, p.error, p.finish_reason, p.total_ms, p.response_body,
  s.upstream, s.status, s.error_kind, s.error, s.finish_reason, s.total_ms, s.response_body
FROM responses s
  CROSS JOIN responses p ON p.exchange_id = s.exchange_id AND p.role = 'primary'
  CROSS JOIN exchanges e ON e.id = s.exchange_id
WHERE s.rowid IN (SELECT value FROM json_each(:rowids))"""


@lru_cache(maxsize=4096)
def _tool_signature(calls_json: str | bytes | None) -> str | None:
    """Tool names with their argument keys, order of the calls ignored."""
    if calls_json is None:
        return None
    try:
        calls = orjson.loads(calls_json)
    except orjson.JSONDecodeError:
        return "?"
    if not isinstance(calls, list):
        return "?"
    signatures = []
    for call in calls:
        if not isinstance(call, dict):
            signatures.append(b"?")
            continue
        keys = call.get("keys")
        if isinstance(keys, list):
            keys = sorted(str(k) for k in keys)
        signatures.append(orjson.dumps([call.get("name"), keys]))
    return b"\n".join(sorted(signatures)).decode() if signatures else None


@lru_cache(maxsize=4096)
def _tool_valid(calls_json: str | bytes | None) -> int:
    if calls_json is None:
        return 1
    try:
        calls = orjson.loads(calls_json)
    except orjson.JSONDecodeError:
        return 0
    return int(
        isinstance(calls, list)
        and all(isinstance(c, dict) and c.get("valid") is True for c in calls)
    )


# --- numbers -------------------------------------------------------------------------------


def _ints(joined: str | None) -> list[int]:
    """A group_concat of integers as a list; orjson parses it three times faster than int()."""
    return orjson.loads(f"[{joined}]") if joined else []


def _sorted(joined: str | None) -> list[int]:
    values = _ints(joined)
    values.sort()
    return values


def _rank(values: Sequence[float], p: int) -> float:
    """Nearest-rank percentile of sorted values: the value at rank ceil(p/100 * n)."""
    return values[max(-(-p * len(values) // 100), 1) - 1]


def _percentiles(us_sorted: Sequence[int]) -> Percentiles:
    if not us_sorted:
        return Percentiles(0, None, None, None)
    p50, p90, p99 = (_rank(us_sorted, p) / 1000 for p in (50, 90, 99))
    return Percentiles(len(us_sorted), p50, p90, p99)


def _sketch(us_sorted: Sequence[int]) -> tuple[float, ...]:
    n = len(us_sorted)
    if n <= SKETCH_POINTS:
        return tuple(v / 1000 for v in us_sorted)
    last = SKETCH_POINTS - 1
    return tuple(us_sorted[i * (n - 1) // last] / 1000 for i in range(SKETCH_POINTS))


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _agreement(agree: int, compared: int) -> Agreement:
    return Agreement(agree, compared, _rate(agree, compared))


def _n(row: Sequence[Any], i: int) -> int:
    return int(row[i] or 0)


# --- reading -------------------------------------------------------------------------------


def build_report(db_path: str, flt: ReportFilter, settings: ReportSettings) -> Report:
    """Read the recording at `db_path`; raises `store.StoreError` if it isn't one."""
    con = open_readonly(db_path)
    try:
        # Read through the OS page cache instead of copying pages into SQLite's own: the join
        # revisits index pages far more often than a bounded page cache keeps them (a quarter
        # less CPU on a million exchanges). Mapping is safe here: the recorder never shrinks
        # the file, and no checkpoint truncates it under our open read transaction.
        con.execute("PRAGMA mmap_size = 4294967296")
        con.create_function("tool_sig", 1, _tool_signature, deterministic=True)
        con.create_function("tool_valid", 1, _tool_valid, deterministic=True)
        # One read transaction: every figure comes from the same snapshot of a live db.
        con.execute("BEGIN")
        return _Reader(con, db_path, flt, settings).report()
    finally:
        con.close()


class _PairRaw:
    """One query's sums for (shadow or noise) copies against primaries; noise ones are pooled."""

    def __init__(self, role: str, upstream: str) -> None:
        self.role = role
        self.upstream = upstream
        self.counts = [0] * 17
        self.costs: list[float | None] = [None, None]
        self.values: list[list[int]] = [[] for _ in range(7)]
        self.examples: dict[str, list[int]] = {"status": [], "shape": [], "tool_calls": []}
        self.bodies: list[int] = []

    def add(self, row: Sequence[Any]) -> None:
        for i in range(17):
            self.counts[i] += _n(row, i)
        for i, value in enumerate(row[17:19]):
            if value is not None:
                self.costs[i] = (self.costs[i] or 0.0) + value
        for i in range(7):
            self.values[i] += _ints(row[19 + i])
        for i, reason in enumerate(("status", "shape", "tool_calls")):
            self.examples[reason] += _ints(row[26 + i])
        self.bodies += _ints(row[29])


class _Reader:
    def __init__(
        self, con: sqlite3.Connection, db_path: str, flt: ReportFilter, settings: ReportSettings
    ) -> None:
        self.con = con
        self.db_path = db_path
        self.flt = flt
        self.settings = settings
        self.where, self.params = _where(flt)
        self.notes: list[str] = []

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        return self.con.execute(sql, {**self.params, **(params or {})}).fetchall()

    def report(self) -> Report:
        traffic_rows = self.rows(
            "SELECT route, model, count(*), sum(stream), min(ts), max(ts) FROM exchanges e "
            f"WHERE 1{self.where} GROUP BY route, model"
        )
        exchanges = sum(r[2] for r in traffic_rows)
        first = min((r[4] for r in traffic_rows), default=None)
        last = max((r[5] for r in traffic_rows), default=None)
        width = _bucket_seconds((last or 0.0) - (first or 0.0))
        t0 = math.floor((first or 0.0) / width) * width
        n_buckets = int(((last or 0.0) - t0) // width) + 1 if first is not None else 0

        order = {"primary": 0, "shadow": 1, "noise": 2}  # no other role is ours to judge
        groups = sorted(
            (g for g in self.groups() if g[1] in order), key=lambda g: (order[g[1]], g[0])
        )
        upstreams: list[UpstreamStats] = []
        series: list[Series] = []
        served: dict[str, Counter[str]] = {}  # revision -> primary upstream -> answers
        for upstream, role in groups:
            params: dict[str, Any] = {"upstream": upstream, "role": role, "t0": t0, "width": width}
            price = _price_sql(self.settings.pricing, "r", upstream, params)
            sql = _upstream_sql(role, self.where + _since(self.flt, "r"), price)
            row = self.rows(sql, params)[0]
            if not row[0]:
                continue
            upstreams.append(_upstream_stats(upstream, role, row))
            requests, errors = Counter(_ints(row[17])), Counter(_ints(row[18]))
            series.append(
                Series(
                    upstream,
                    role,
                    tuple(requests[b] for b in range(n_buckets)),
                    tuple(errors[b] for b in range(n_buckets)),
                )
            )
            for revision, count in Counter(row[19].split("\x1f") if row[19] else ()).items():
                served.setdefault(revision, Counter())[upstream] += count

        primary = {s.upstream: s.responses for s in upstreams if s.role == "primary"}
        total_primary = sum(primary.values())
        traffic = Traffic(
            exchanges=exchanges,
            streams=sum(int(r[3] or 0) for r in traffic_rows),
            first_ts=first,
            last_ts=last,
            by_upstream=_counts(primary.items(), total_primary),
            by_route=_counts(_sum_by(traffic_rows, 0), exchanges),
            by_model=_counts(_sum_by(traffic_rows, 1), exchanges),
            revisions=self.revisions(first, last, served),
        )

        shadows = (self.pairs([g]) for g in groups if g[1] == "shadow")
        raws = [raw for raw in shadows if raw.counts[0]]
        noise_groups = [g for g in groups if g[1] == "noise"]
        if noise_groups and (noise := self.pairs(noise_groups)).counts[0]:
            raws.append(noise)  # pooled: the floor is the primary's, whichever upstream it was
        scores = {id(raw): self.similarities(raw) for raw in raws}
        pairs = tuple(_pair_stats(raw, scores[id(raw)]) for raw in raws)
        noise_stats = next((p for p in pairs if p.role == "noise"), None)

        verdicts = tuple(
            _verdict(p, _find(upstreams, p.upstream, "shadow"), noise_stats, self.settings)
            for p in pairs
            if p.role == "shadow"
        )
        examples = tuple(
            e for raw in raws if raw.role == "shadow" for e in self.examples(raw, scores[id(raw)])
        )
        self.explain(exchanges, upstreams, pairs, noise_stats)
        return Report(
            db_path=self.db_path,
            generated_at=time.time(),
            filter=self.flt,
            min_pairs=self.settings.thresholds.min_pairs,
            traffic=traffic,
            upstreams=tuple(upstreams),
            pairs=pairs,
            verdicts=verdicts,
            verdict=_worst(v.status for v in verdicts),
            examples=examples,
            timeline=Timeline(t0, width, tuple(series)),
            notes=tuple(self.notes),
        )

    def groups(self) -> list[tuple[str, str]]:
        """The distinct (upstream, role) pairs, by seeking through their index."""
        found = []
        row = self.con.execute(
            "SELECT upstream, role FROM responses ORDER BY upstream, role LIMIT 1"
        ).fetchone()
        while row is not None:
            found.append((str(row[0]), str(row[1])))
            row = self.con.execute(
                "SELECT upstream, role FROM responses WHERE (upstream, role) > (?, ?) "
                "ORDER BY upstream, role LIMIT 1",
                row,
            ).fetchone()
        return found

    def revisions(
        self, first: float | None, last: float | None, served: dict[str, Counter[str]]
    ) -> tuple[RevisionSeen, ...]:
        seen = {
            r[0]: r
            for r in self.rows(
                "SELECT revision, count(*), min(ts), max(ts) FROM exchanges e "
                f"WHERE 1{self.where} GROUP BY revision"
            )
        }
        known = {
            r[0]: r for r in self.con.execute("SELECT revision, ts, rollback, split FROM revisions")
        }
        start = self.flt.since if self.flt.since is not None else first
        end = self.flt.until if self.flt.until is not None else last
        names = set(seen)
        if start is not None and end is not None and self.flt.revision is None:
            names |= {name for name, r in known.items() if start <= r[1] <= end}
        out = []
        for name in names:
            k = known.get(name)
            s = seen.get(name)
            counts = served.get(name, Counter())
            total = sum(counts.values())
            out.append(
                RevisionSeen(
                    revision=name,
                    started=k[1] if k else None,
                    rollback=bool(k[2]) if k else False,
                    split=_split(k[3]) if k else (),
                    first_seen=s[2] if s else None,
                    last_seen=s[3] if s else None,
                    requests=s[1] if s else 0,
                    served=tuple(Share(u, c / total) for u, c in sorted(counts.items())),
                )
            )
        return tuple(sorted(out, key=lambda r: (r.started or r.first_seen or 0.0, r.revision)))

    def pairs(self, groups: list[tuple[str, str]]) -> _PairRaw:
        role = groups[0][1]
        raw = _PairRaw(role, "+".join(u for u, _ in groups))
        for upstream, _ in groups:
            params: dict[str, Any] = {"upstream": upstream, "role": role}
            p_price = _price_sql(self.settings.pricing, "p", None, params)
            s_price = _price_sql(self.settings.pricing, "s", upstream, params)
            sql = _pair_sql(self.where + _since(self.flt, "s"), p_price, s_price)
            raw.add(self.rows(sql, params)[0])
        return raw

    def pair_rows(self, rowids: Iterable[int]) -> list[Any]:
        return self.con.execute(
            _PAIR_ROWS, {"rowids": orjson.dumps(list(rowids)).decode()}
        ).fetchall()

    def similarities(self, raw: _PairRaw) -> list[tuple[float, int]]:
        """(score, rowid) over an evenly spread sample of the pairs with both bodies."""
        eligible = raw.bodies
        step = max(len(eligible) / SIMILARITY_SAMPLE, 1.0)
        sample = [eligible[int(i * step)] for i in range(min(len(eligible), SIMILARITY_SAMPLE))]
        scores = []
        for row in self.pair_rows(sample):
            a, b = _answer_text(row[13], row[5]), _answer_text(row[20], row[5])
            if a is None or b is None:
                continue
            scores.append((1.0 if row[6] else similarity(a, b), row[0]))
        return scores

    def examples(self, raw: _PairRaw, scores: list[tuple[float, int]]) -> list[Example]:
        wanted: list[tuple[Reason, int, float | None]] = []
        reasons: tuple[Reason, ...] = ("status", "shape", "tool_calls")
        for reason in reasons:
            # rowids grow with insertion, so the last ones are the most recent
            wanted += [(reason, i, None) for i in raw.examples[reason][-EXAMPLES_PER_REASON:]]
        lowest = sorted(s for s in scores if s[0] < 1.0)[:EXAMPLES_PER_REASON]
        wanted += [("similarity", rowid, score) for score, rowid in lowest]
        rows = {row[0]: row for row in self.pair_rows({w[1] for w in wanted})}
        out = []
        for reason, rowid, score in wanted:
            row = rows.get(rowid)
            if row is None:
                continue
            out.append(
                Example(
                    reason=reason,
                    exchange_id=row[1],
                    ts=row[2],
                    route=row[3],
                    model=row[4],
                    stream=bool(row[5]),
                    similarity=score,
                    primary=_side(row[7:14], bool(row[5])),
                    other=_side(row[14:21], bool(row[5])),
                )
            )
        return out

    def explain(
        self,
        exchanges: int,
        upstreams: list[UpstreamStats],
        pairs: tuple[PairStats, ...],
        noise: PairStats | None,
    ) -> None:
        filtered = self.where != ""
        if not exchanges:
            self.notes.append(
                "No data: no exchanges match the filter."
                if filtered
                else "No data: the recording holds no exchanges yet."
            )
            return
        if not any(p.role == "shadow" for p in pairs):
            self.notes.append(
                "No shadow pairs: nothing to compare, so there is no verdict. Configure "
                "`shadow` to copy requests to the new upstream."
            )
        elif noise is None:
            self.notes.append(
                "No noise pairs: the output comparison is not discounted by how much the primary "
                "disagrees with itself. Set `shadow.noise_sample` (e.g. 0.05) to measure it."
            )
        no_usage = sum(s.no_usage for s in upstreams)
        if no_usage:
            self.notes.append(
                f"{no_usage:,} responses carried no token usage; they are counted apart, never as zero."
            )
        unpriced = [
            f"{s.upstream} ({s.role})"
            for s in upstreams
            if s.with_usage and s.priced < s.with_usage
        ]
        if unpriced:
            self.notes.append(
                "Some responses have no price in `report.pricing`: " + ", ".join(unpriced) + "."
            )


def _upstream_stats(upstream: str, role: str, row: Sequence[Any]) -> UpstreamStats:
    n = _n(row, 0)
    kinds = Counter(row[3].split(",") if row[3] else ())
    ordered = [k for k in ERROR_KINDS if k in kinds] + sorted(
        k for k in kinds if k not in ERROR_KINDS
    )
    ttfb, ttft, total = (_sorted(row[i]) for i in (14, 15, 16))
    with_usage, priced, cost = _n(row, 4), _n(row, 8), row[9]
    cost = cost if priced else None
    return UpstreamStats(
        upstream=upstream,
        role=role,
        responses=n,
        succeeded=_n(row, 1),
        upstream_errors=_n(row, 2),
        error_rate=_n(row, 2) / n,
        errors=tuple(Count(k, kinds[k], kinds[k] / n) for k in ordered),
        ttfb_ms=_percentiles(ttfb),
        ttft_ms=_percentiles(ttft),
        total_ms=_percentiles(total),
        ttft_sketch=_sketch(ttft),
        total_sketch=_sketch(total),
        with_usage=with_usage,
        no_usage=n - with_usage,
        prompt_tokens=_n(row, 5),
        completion_tokens=_n(row, 6),
        total_tokens=_n(row, 7),
        priced=priced,
        cost=cost,
        cost_per_1k=cost / priced * 1000 if priced and cost is not None else None,
        streams=_n(row, 10),
        streams_ok=_n(row, 11),
        json_answers=_n(row, 12),
        json_ok=_n(row, 13),
    )


def _pair_stats(raw: _PairRaw, scores: list[tuple[float, int]]) -> PairStats:
    c = raw.counts
    pairs = c[0]
    for v in raw.values:
        v.sort()
    values = raw.values
    sims = sorted(s for s, _ in scores)
    return PairStats(
        role=raw.role,
        upstream=raw.upstream,
        pairs=pairs,
        primary_error_rate=_rate(c[1], pairs),
        other_error_rate=_rate(c[2], pairs),
        status=_agreement(c[3], pairs),
        status_shape=_agreement(c[4], pairs),
        tool_calls=_agreement(c[6], c[5]),
        text=_agreement(c[8], c[7]),
        similarity=Similarity(
            len(sims),
            sum(sims) / len(sims) if sims else None,
            _rank(sims, 10) if sims else None,
        ),
        ttfb_diff_ms=_percentiles(values[0]),
        ttft_diff_ms=_percentiles(values[1]),
        total_diff_ms=_percentiles(values[2]),
        primary_ttft_ms=_percentiles(values[3]),
        other_ttft_ms=_percentiles(values[4]),
        primary_total_ms=_percentiles(values[5]),
        other_total_ms=_percentiles(values[6]),
        usage_pairs=c[9],
        primary_tokens=(c[10], c[11], c[12]),
        other_tokens=(c[13], c[14], c[15]),
        priced_pairs=c[16],
        primary_cost=raw.costs[0],
        other_cost=raw.costs[1],
    )


def _answer_text(body: bytes | str | None, stream: int) -> str | None:
    if body is None:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if stream:  # the recorder's reassembled {"text", "tool_calls", "finish_reason"}
        text = parsed.get("text") if isinstance(parsed, dict) else None
        return text if isinstance(text, str) else None
    return answer_of(parsed).text


def _side(row: Sequence[Any], stream: bool) -> Side:
    text = _answer_text(row[6], int(stream))
    if text is not None and len(text) > EXAMPLE_CHARS:
        text = text[:EXAMPLE_CHARS] + " [...]"
    return Side(row[0], row[1], row[2], row[3], row[4], row[5], text)


def _split(split_json: str) -> tuple[Share, ...]:
    try:
        split = orjson.loads(split_json)
    except orjson.JSONDecodeError:
        return ()
    if not isinstance(split, dict):
        return ()
    return tuple(Share(str(k), float(v)) for k, v in split.items() if isinstance(v, int | float))


def _sum_by(rows: Iterable[Sequence[Any]], key: int) -> Iterable[tuple[str | None, int]]:
    totals: Counter[str | None] = Counter()
    for row in rows:
        totals[row[key]] += row[2]
    return totals.items()


def _counts(items: Iterable[tuple[str | None, int]], whole: int) -> tuple[Count, ...]:
    ranked = sorted(items, key=lambda kv: (-kv[1], kv[0] or ""))
    return tuple(Count(name, n, n / whole if whole else 0.0) for name, n in ranked)


def _bucket_seconds(span: float) -> float:
    for width in _BUCKET_SECONDS:
        if span / width < MAX_BUCKETS:
            return float(width)
    return float(math.ceil(span / MAX_BUCKETS / 86_400) * 86_400)


def _find(stats: list[UpstreamStats], upstream: str, role: str) -> UpstreamStats | None:
    return next((s for s in stats if (s.upstream, s.role) == (upstream, role)), None)


def _worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, key=_ORDER.__getitem__, default="n/a")


# --- the verdict ---------------------------------------------------------------------------


def _grade(
    name: str,
    value: float | None,
    n: int,
    band: Band,
    unit: Unit,
    evidence: str,
    min_n: int,
    what: str = "pairs",
    note: str | None = None,
) -> Check:
    """Smaller is better: pass below `warn`, warn below `fail`, fail from `fail` on."""
    if value is None or n == 0:
        return Check(name, "n/a", None, unit, band.warn, band.fail, n, evidence, note)
    status: Status = "pass" if value < band.warn else "warn" if value < band.fail else "fail"
    if n < min_n:
        # Too few to tell either way: never a pass, never a fail.
        alone = f"; the figure alone would {status}" if status != "warn" else ""
        few = f"not enough {what} ({n:,} < min_pairs {min_n}){alone}"
        note = f"{few}; {note}" if note else few
        status = "warn"
    return Check(name, status, value, unit, band.warn, band.fail, n, evidence, note)


def _shortfall(a: Agreement) -> float | None:
    # (compared - agree) / compared, not 1 - rate: a band edge like 0.05 must compare exactly.
    return (a.compared - a.agree) / a.compared if a.compared else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _verdict(
    pair: PairStats, shadow: UpstreamStats | None, noise: PairStats | None, settings: ReportSettings
) -> Verdict:
    t = settings.thresholds
    m = t.min_pairs
    n = pair.pairs
    checks = []

    err = None
    if pair.other_error_rate is not None and pair.primary_error_rate is not None:
        err = pair.other_error_rate - pair.primary_error_rate
    checks.append(
        _grade(
            "errors",
            err,
            n,
            t.errors,
            "difference",
            f"shadow {pct(pair.other_error_rate, 2)} vs primary {pct(pair.primary_error_rate, 2)} "
            f"upstream errors over {n:,} pairs",
            m,
        )
    )

    ratios = []
    parts = []
    for label, prim, other in (
        ("ttft", pair.primary_ttft_ms, pair.other_ttft_ms),
        ("total", pair.primary_total_ms, pair.other_total_ms),
    ):
        for p in ("p50", "p90"):
            r = _ratio(getattr(other, p), getattr(prim, p))
            if r is not None:
                ratios.append(r)
                parts.append(
                    f"{label} {p} {ms(getattr(other, p))} vs {ms(getattr(prim, p))} ({times(r)})"
                )
    latency_n = pair.primary_ttft_ms.n + pair.primary_total_ms.n
    checks.append(
        _grade(
            "latency",
            max(ratios, default=None),
            latency_n,
            t.latency_ratio,
            "ratio",
            ("; ".join(parts) + " - ttft for streams, total for the rest")
            if parts
            else "no pairs where both answered",
            m,
        )
    )

    p_tok, o_tok = pair.primary_tokens, pair.other_tokens
    token_ratio = _ratio(o_tok[2], p_tok[2])
    checks.append(
        _grade(
            "tokens",
            token_ratio,
            pair.usage_pairs,
            t.token_ratio,
            "ratio",
            f"shadow/primary: prompt {times(_ratio(o_tok[0], p_tok[0]))}, completion "
            f"{times(_ratio(o_tok[1], p_tok[1]))}, total {times(token_ratio)} over "
            f"{pair.usage_pairs:,} pairs with usage on both sides",
            m,
        )
    )

    cost_ratio = _ratio(pair.other_cost, pair.primary_cost)
    k = pair.priced_pairs
    checks.append(
        _grade(
            "cost",
            cost_ratio,
            k,
            t.cost_ratio,
            "ratio",
            f"per 1,000 requests {money(_per_1k(pair.other_cost, k))} vs "
            f"{money(_per_1k(pair.primary_cost, k))} over {k:,} priced pairs"
            if k
            else "no pair priced on both sides: add both upstreams to report.pricing",
            m,
        )
    )

    mismatch = _shortfall(pair.status_shape)
    note = None
    evidence = f"{pct(pair.status_shape.rate)} of {n:,} pairs have the same status class and shape"
    if mismatch is not None and noise is not None and noise.status_shape.rate is not None:
        floor = (noise.pairs - noise.status_shape.agree) / noise.pairs
        if noise.pairs >= m:
            note = (
                f"noise floor {pct(floor)} subtracted: the primary disagrees with itself "
                f"that often over {noise.pairs:,} noise pairs"
            )
            evidence += f" ({pct(mismatch)} differ, minus the noise floor {pct(floor)})"
            mismatch = max(mismatch - floor, 0.0)
        else:
            note = f"noise floor {pct(floor)} not subtracted: only {noise.pairs} noise pairs"
    checks.append(
        _grade("output shape", mismatch, n, t.shape_mismatch, "share", evidence, m, note=note)
    )

    streams = shadow.streams if shadow else 0
    ok = shadow.streams_ok if shadow else 0
    checks.append(
        _grade(
            "streaming",
            (streams - ok) / streams if streams else None,
            streams,
            t.stream_broken,
            "share",
            f"{ok:,} of {streams:,} shadow streams ended with [DONE] and usage"
            if streams
            else "no shadow streams",
            m,
            what="streams",
        )
    )

    tools = pair.tool_calls
    checks.append(
        _grade(
            "tool calls",
            _shortfall(tools),
            tools.compared,
            t.tool_call_mismatch,
            "share",
            f"{tools.agree:,} of {tools.compared:,} pairs with tool calls agree on names and "
            "argument keys, with valid arguments"
            if tools.compared
            else "no tool calls in the pairs",
            m,
        )
    )

    answers = shadow.json_answers if shadow else 0
    parsed = shadow.json_ok if shadow else 0
    checks.append(
        _grade(
            "JSON output",
            (answers - parsed) / answers if answers else None,
            answers,
            t.json_invalid,
            "share",
            f"{parsed:,} of {answers:,} shadow JSON-mode answers parse"
            if answers
            else "no JSON-mode answers from the shadow",
            m,
            what="answers",
        )
    )
    return Verdict(pair.upstream, _worst(c.status for c in checks), tuple(checks))


# --- presenting ----------------------------------------------------------------------------
# Shared by the terminal and the HTML report, so both always say the same thing.


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x * 100:.{digits}f}%"


def ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f} ms" if abs(x) >= 10 else f"{x:.1f} ms"


def times(x: float | None) -> str:
    return "-" if x is None else f"x{x:.2f}"


def money(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.2f}" if abs(x) >= 1 else f"${x:.4f}"


def _per_1k(cost: float | None, n: int) -> float | None:
    return cost / n * 1000 if cost is not None and n else None


def value_text(check: Check) -> str:
    v = check.value
    if v is None:
        return "-"
    if check.unit == "ratio":
        return times(v)
    if check.unit == "difference":
        return f"{v * 100:+.2f} pts"
    return pct(v, 2)


def band_text(check: Check) -> str:
    if check.unit == "ratio":
        return f"warn from x{check.warn:g}, fail from x{check.fail:g}"
    unit = " pts" if check.unit == "difference" else "%"
    return f"warn from {check.warn * 100:g}{unit}, fail from {check.fail * 100:g}{unit}"


VERDICT_HELP: Final = (
    "Every check reads smaller-is-better against report.thresholds: pass below `warn`, warn "
    "below `fail`, fail from `fail` on. A check over fewer than min_pairs ({min_pairs}) pairs "
    "or answers is at most a warn, and never a pass. The overall verdict is the worst check."
)
NOISE_HELP: Final = (
    "Noise pairs send the same request to the primary upstream twice: how often the primary "
    "disagrees with itself is a floor no new gateway can beat. The output-shape check "
    "subtracts it; read text agreement and similarity against it too."
)


@dataclass(frozen=True, slots=True)
class Table:
    caption: str
    head: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    align: str  # per column: "l" or "r"


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    tables: tuple[Table, ...]
    text: tuple[str, ...] = ()


def _name(x: str | None) -> str:
    return "(none)" if x is None else x


def _p3(p: Percentiles) -> str:
    if not p.n:
        return "-"
    return " / ".join(
        f"{v:,.0f}" if abs(v) >= 10 else f"{v:.1f}" for v in (p.p50, p.p90, p.p99) if v is not None
    )


def _of(a: Agreement) -> str:
    return f"{pct(a.rate)} of {a.compared:,}" if a.compared else "-"


def _label(p: PairStats) -> str:
    return f"{p.upstream} ({p.role})"


def sections(report: Report) -> tuple[Section, ...]:
    """The report's tables, in order, as text cells."""
    t = report.traffic
    ups = report.upstreams
    traffic = [
        Table(
            "primary answers per upstream: the share actually served",
            ("upstream", "answers", "share"),
            tuple((_name(c.name), f"{c.count:,}", pct(c.share)) for c in t.by_upstream),
            "lrr",
        ),
        *(
            Table(
                f"exchanges per {title}",
                (title, "exchanges", "share"),
                tuple((_name(c.name), f"{c.count:,}", pct(c.share)) for c in counts),
                "lrr",
            )
            for title, counts in (("route", t.by_route), ("model", t.by_model))
        ),
    ]
    if t.revisions:
        traffic.append(
            Table(
                "config revisions: configured split against the share served under it",
                ("revision", "in force from", "requests", "split", "served"),
                tuple(
                    (
                        r.revision + (" (rollback)" if r.rollback else ""),
                        when(r.started),
                        f"{r.requests:,}",
                        " ".join(f"{s.upstream}:{s.weight:g}" for s in r.split) or "-",
                        " ".join(f"{s.upstream}:{s.weight * 100:.1f}%" for s in r.served) or "-",
                    )
                    for r in t.revisions
                ),
                "llrll",
            )
        )
    reliability = (
        Table(
            "error rate: upstream errors only; the app leaving or the sidecar refusing is not one",
            ("upstream", "role", "responses", "ok", "error rate"),
            tuple(
                (
                    s.upstream,
                    s.role,
                    f"{s.responses:,}",
                    pct(s.succeeded / s.responses),
                    pct(s.error_rate, 2),
                )
                for s in ups
            ),
            "llrrr",
        ),
        Table(
            "errors by kind",
            ("upstream", "role", "kind", "responses", "share"),
            tuple(
                (s.upstream, s.role, _name(e.name), f"{e.count:,}", pct(e.share, 2))
                for s in ups
                for e in s.errors
            ),
            "lllrr",
        ),
    )
    latency = [
        Table(
            "successful responses, ms, p50 / p90 / p99 (nearest rank)",
            ("upstream", "role", "ttfb", "ttft (streams)", "total"),
            tuple(
                (s.upstream, s.role, _p3(s.ttfb_ms), _p3(s.ttft_ms), _p3(s.total_ms)) for s in ups
            ),
            "llrrr",
        )
    ]
    tokens = [
        Table(
            "responses without usage are counted apart, never as zero",
            ("upstream", "role", "usage", "no usage", "prompt", "completion", "cost", "per 1k"),
            tuple(
                (
                    s.upstream,
                    s.role,
                    f"{s.with_usage:,}",
                    f"{s.no_usage:,}",
                    f"{s.prompt_tokens:,}",
                    f"{s.completion_tokens:,}",
                    money(s.cost),
                    money(s.cost_per_1k),
                )
                for s in ups
            ),
            "llrrrrrr",
        )
    ]
    compat: list[Table] = []
    text: tuple[str, ...] = ()
    if report.pairs:
        latency.append(
            Table(
                "paired difference, copy minus primary on the same request, ms p50 / p90 / p99",
                ("copies", "pairs", "ttfb", "ttft", "total"),
                tuple(
                    (
                        _label(p),
                        f"{p.pairs:,}",
                        _p3(p.ttfb_diff_ms),
                        _p3(p.ttft_diff_ms),
                        _p3(p.total_diff_ms),
                    )
                    for p in report.pairs
                ),
                "lrrrr",
            )
        )
        tokens.append(
            Table(
                "copy / primary over pairs with usage on both sides",
                ("copies", "pairs", "prompt", "completion", "total", "cost"),
                tuple(
                    (
                        _label(p),
                        f"{p.usage_pairs:,}",
                        *(
                            times(_ratio(o, q))
                            for o, q in zip(p.other_tokens, p.primary_tokens, strict=True)
                        ),
                        times(_ratio(p.other_cost, p.primary_cost)),
                    )
                    for p in report.pairs
                ),
                "lrrrrr",
            )
        )
        rows = [
            ("same status class", *(_of(p.status) for p in report.pairs)),
            ("same status and shape", *(_of(p.status_shape) for p in report.pairs)),
            ("same tool calls", *(_of(p.tool_calls) for p in report.pairs)),
            ("same text (exact)", *(_of(p.text) for p in report.pairs)),
            (
                "similarity mean / p10",
                *(
                    f"{p.similarity.mean:.2f} / {p.similarity.p10:.2f} of {p.similarity.sampled:,}"
                    if p.similarity.mean is not None and p.similarity.p10 is not None
                    else "-"
                    for p in report.pairs
                ),
            ),
        ]
        compat.append(
            Table(
                "copy against primary on the same request",
                ("", *(_label(p) for p in report.pairs)),
                tuple(rows),
                "l" + "r" * len(report.pairs),
            )
        )
        text = (NOISE_HELP,)
    formed = [s for s in ups if s.streams or s.json_answers]
    if formed:
        compat.append(
            Table(
                "streams well formed ([DONE] and usage), JSON-mode answers that parse",
                ("upstream", "role", "streams ok", "JSON ok"),
                tuple(
                    (
                        s.upstream,
                        s.role,
                        f"{pct(_rate(s.streams_ok, s.streams))} of {s.streams:,}"
                        if s.streams
                        else "-",
                        f"{pct(_rate(s.json_ok, s.json_answers))} of {s.json_answers:,}"
                        if s.json_answers
                        else "-",
                    )
                    for s in formed
                ),
                "llrr",
            )
        )
    return (
        Section("Traffic", tuple(traffic)),
        Section("Reliability", reliability),
        Section("Latency", tuple(latency)),
        Section("Tokens and cost", tuple(tokens)),
        Section("Compatibility", tuple(compat), text),
    )


def _text_table(table: Table) -> list[str]:
    rows = [table.head, *table.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(table.head))]
    out = [f"  {table.caption}"]
    for r in rows:
        cells = [
            c.rjust(w) if a == "r" else c.ljust(w)
            for c, w, a in zip(r, widths, table.align, strict=True)
        ]
        out.append(("    " + "  ".join(cells)).rstrip())
    return out


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, 100, initial_indent=indent, subsequent_indent=indent) or [indent]


def filter_text(f: ReportFilter) -> str:
    shown = [
        f"{k}={when(v) if k in ('since', 'until') else v}"
        for k in ("since", "until", "route", "model", "revision")
        if (v := getattr(f, k)) is not None
    ]
    return ", ".join(shown) if shown else "none"


def render_text(report: Report) -> str:
    """Terminal tables, readable in 100 columns."""
    t = report.traffic
    out = [
        f"Migration report, generated {when(report.generated_at)}",
        f"Recording: {report.db_path}",
        f"Filter: {filter_text(report.filter)}",
    ]
    if not t.exchanges:
        return "\n".join([*out, "", *report.notes]) + "\n"
    out.append(
        f"Window: {when(t.first_ts)} .. {when(t.last_ts)}: {t.exchanges:,} exchanges, "
        f"{t.streams:,} of them streams"
    )
    out += ["", f"VERDICT: {report.verdict.upper()}"]
    if not report.verdicts:
        out.append("  no shadow pairs: nothing was compared")
    for v in report.verdicts:
        pairs = next(
            p.pairs for p in report.pairs if (p.upstream, p.role) == (v.upstream, "shadow")
        )
        out.append(f"  {v.upstream}: {v.status.upper()} over {pairs:,} shadow pairs")
        for c in v.checks:
            status = f"[{c.status.upper()}]"
            out.append(f"    {status:7} {c.name:<13} {value_text(c):>11}   ({band_text(c)})")
            out += _wrap(c.evidence, " " * 12)
            if c.note:
                out += _wrap(f"note: {c.note}", " " * 12)
    out += _wrap(VERDICT_HELP.format(min_pairs=report.min_pairs), "  ")
    for section in sections(report):
        out += ["", section.title.upper()]
        for table in section.tables:
            out += _text_table(table)
        for paragraph in section.text:
            out += _wrap(paragraph, "  ")
    if report.examples:
        out += ["", "EXAMPLES TO LOOK AT"]
        for e in report.examples:
            sim = f", similarity {e.similarity:.2f}" if e.similarity is not None else ""
            out.append(
                f"  {e.reason}: {e.exchange_id} at {when(e.ts)}, {e.route} {_name(e.model)}{sim}"
            )
            for label, side in (("primary", e.primary), ("copy", e.other)):
                status = "no response" if side.status is None else str(side.status)
                kind = f" {side.error_kind}" if side.error_kind else ""
                out += _wrap(
                    f"{label} {side.upstream}: {status}{kind}, {ms(side.total_ms)}", "    "
                )
                if side.text is not None:
                    out += _wrap('"' + " ".join(side.text.split())[:300] + '"', "      ")
    if report.notes:
        out += ["", "NOTES"]
        for note in report.notes:
            out += _wrap(note, "  ")
    return "\n".join(out) + "\n"


# --- JSON ----------------------------------------------------------------------------------


def render_json(report: Report) -> bytes:
    return orjson.dumps(report, option=orjson.OPT_INDENT_2)


def load_json(data: bytes | str) -> Report:
    """The inverse of `render_json`, e.g. to draw the HTML from a saved report."""
    return _decode(Report, orjson.loads(data))  # type: ignore[no-any-return]


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _decode(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    if is_dataclass(tp) and isinstance(tp, type):
        hints = _hints(tp)
        return tp(**{f.name: _decode(hints[f.name], value[f.name]) for f in fields(tp)})
    origin = get_origin(tp)
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in value)
        return tuple(_decode(a, v) for a, v in zip(args, value, strict=True))
    if origin is types.UnionType:
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _decode(inner[0], value)
    if tp is float:
        return float(value)
    return value
