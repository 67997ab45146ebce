"""What the app sent and what it was served: requests per route and model, the share each
upstream served under each config revision, calls the SDKs retried, the sidecar's own
refusals, and the embedding dimensions each route answered in."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from proxy.report.data import (
    Calls,
    Count,
    DimsSeen,
    FailedOver,
    GuardTripped,
    Refusal,
    ReportFilter,
    RevisionSeen,
    RouteDims,
    Share,
    Traffic,
    UpstreamStats,
)
from proxy.report.sql import Many, calls_sql, dims_sql, refusals_sql

MAX_BUCKETS: Final = 100
_BUCKET_SECONDS: Final = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400)
MAX_REFUSALS: Final = 10  # reasons listed; the rest are counted together


def traffic_rows(db: Many) -> list[Any]:
    """(route, model, exchanges, streams, first ts, last ts) for the exchanges in the filter."""
    return db.rows(
        "SELECT route, model, count(*), sum(stream), min(ts), max(ts) FROM exchanges e "
        f"WHERE 1{db.where} GROUP BY route, model"
    )


@dataclass(frozen=True, slots=True)
class Window:
    """When the matching exchanges were made, and the timeline's buckets over that time."""

    first: float | None
    last: float | None
    start: float  # of the first bucket
    width: float
    buckets: int


def span(db: Many) -> tuple[float | None, float | None]:
    """The first and last matching exchange, through the index on ts."""
    first = [r[0] for r in db.rows(f"SELECT min(e.ts) FROM exchanges e WHERE 1{db.where}")]
    last = [r[0] for r in db.rows(f"SELECT max(e.ts) FROM exchanges e WHERE 1{db.where}")]
    return (
        min((t for t in first if t is not None), default=None),
        max((t for t in last if t is not None), default=None),
    )


def window(first: float | None, last: float | None) -> Window:
    width = _bucket_seconds((last or 0.0) - (first or 0.0))
    start = math.floor((first or 0.0) / width) * width
    buckets = int(((last or 0.0) - start) // width) + 1 if first is not None else 0
    return Window(first, last, start, width, buckets)


@dataclass(frozen=True, slots=True)
class Seen:
    """What the exchanges say, read from every recording before the figures are assembled."""

    rows: list[Any]  # traffic_rows
    revisions: list[Any]
    known: list[Any]
    calls: list[Any]
    refused: list[Any]
    failovers: list[Any]
    trips: list[Any]
    dims: list[Any]
    spans: list[list[Any]] = field(default_factory=list)  # traffic_rows, per recording
    judged: list[Any] = field(default_factory=list)  # the judgments' rows, every recording's


def revisions_rows(db: Many) -> list[Any]:
    """(revision, exchanges, first ts, last ts) for the exchanges in the filter."""
    return db.rows(
        "SELECT revision, count(*), min(ts), max(ts) FROM exchanges e "
        f"WHERE 1{db.where} GROUP BY revision"
    )


def read_seen(db: Many, failovers: bool, rows: list[Any], revisions: list[Any]) -> Seen:
    """The exchange-side queries, in one worker, beside `traffic_rows`' `rows` and
    `revisions_rows`' `revisions`; `failovers`: some recording has any."""
    return Seen(
        rows=rows,
        revisions=revisions,
        known=db.rows("SELECT revision, ts, rollback, split FROM revisions ORDER BY ts"),
        calls=db.rows(calls_sql(db.where)),
        refused=db.rows(refusals_sql(db.where)),
        failovers=db.rows(
            "SELECT p.upstream, f.upstream, count(*) FROM responses f "
            "JOIN responses p ON p.exchange_id = f.exchange_id AND p.role = 'primary' "
            f"CROSS JOIN exchanges e ON e.id = f.exchange_id WHERE f.role = 'failover'{db.where} "
            "GROUP BY 1, 2"
        )
        if failovers
        else [],
        trips=db.rows("SELECT upstream, rule, figures, ts, revision FROM guard_trips"),
        dims=db.rows(dims_sql(db.where)),
    )


def traffic(
    seen: Seen,
    flt: ReportFilter,
    win: Window,
    upstreams: list[UpstreamStats],
    served: dict[str, Counter[str]],
) -> Traffic:
    rows = seen.rows
    exchanges = sum(r[2] for r in rows)
    primary = {s.upstream: s.responses for s in upstreams if s.role == "primary"}
    return Traffic(
        exchanges=exchanges,
        streams=sum(int(r[3] or 0) for r in rows),
        first_ts=win.first,
        last_ts=win.last,
        by_upstream=_counts(primary.items(), sum(primary.values())),
        by_route=_counts(_sum_by(rows, 0), exchanges),
        by_model=_counts(_sum_by(rows, 1), exchanges),
        revisions=_revisions(seen, flt, win, served),
        calls=_calls(seen.calls, exchanges),
        refused=_refused(seen.refused),
        failovers=_failovers(seen.failovers),
        trips=_trips(seen.trips, flt),
    )


def _pooled(rows: Iterable[Sequence[Any]], keys: int) -> Counter[tuple[Any, ...]]:
    """Counts (the last column) summed over rows with the same first `keys` columns: the
    same group seen in several recordings."""
    totals: Counter[tuple[Any, ...]] = Counter()
    for row in rows:
        totals[tuple(row[:keys])] += row[keys]
    return totals


def _failovers(rows: list[Any]) -> tuple[FailedOver, ...]:
    ranked = sorted(_pooled(rows, 2).items(), key=lambda kv: (-kv[1], kv[0]))
    return tuple(FailedOver(a, b, n) for (a, b), n in ranked)


def _trips(rows: list[Any], flt: ReportFilter) -> tuple[GuardTripped, ...]:
    return tuple(
        GuardTripped(*r)
        for r in sorted(rows, key=lambda r: (r[3], r[0], r[1]))
        if (flt.since is None or r[3] >= flt.since)
        and (flt.until is None or r[3] <= flt.until)
        and (flt.revision is None or r[4] == flt.revision)
    )


def _revisions(
    found: Seen, flt: ReportFilter, win: Window, served: dict[str, Counter[str]]
) -> tuple[RevisionSeen, ...]:
    seen: dict[str, tuple[str, int, float, float]] = {}
    for name, count, first, last in found.revisions:  # one revision may be in every file
        was = seen.get(name)
        seen[name] = (
            (name, count, first, last)
            if was is None
            else (name, was[1] + count, min(was[2], first), max(was[3], last))
        )
    known: dict[str, Any] = {}
    for r in found.known:  # ordered by ts: the first file to apply a revision dates it
        known.setdefault(r[0], r)
    start = flt.since if flt.since is not None else win.first
    end = flt.until if flt.until is not None else win.last
    names = set(seen)
    if start is not None and end is not None and flt.revision is None:
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


def _calls(rows: list[Any], exchanges: int) -> Calls:
    # a call's attempts all pass one sidecar, so each file holds whole calls
    extra = sum(r[1] for r in rows)
    retried = sum(r[2] for r in rows)
    most = max((r[3] for r in rows), default=0)
    attempts = sum(r[4] for r in rows)
    failed = sum(r[5] for r in rows)
    return Calls(
        calls=exchanges - int(extra),
        retried=int(retried),
        attempts=int(attempts),
        max_attempts=int(most),
        failed=int(failed),
    )


def _refused(found: list[Any]) -> tuple[Refusal, ...]:
    pooled = _pooled(found, 2)
    rows = sorted(
        ((s, r, n) for (s, r), n in pooled.items()),
        key=lambda x: (-x[2], x[0] if x[0] is not None else -1, x[1] or ""),
    )
    listed = [Refusal(status, reason, count) for status, reason, count in rows[:MAX_REFUSALS]]
    rest = sum(count for _, _, count in rows[MAX_REFUSALS:])
    if rest:
        listed.append(Refusal(None, "other reasons", rest))
    return tuple(listed)


def embeddings(found: Seen) -> tuple[RouteDims, ...]:
    """Per route, the dimensions its embeddings came in. Mixed when the app was served more
    than one, or a shadow's differ from what the app got: vectors of different lengths can't
    share an index, so switching (or splitting) would break the app's search."""
    by_route: dict[str, list[DimsSeen]] = {}
    pooled = _pooled(found.dims, 4)
    ordered = sorted(pooled, key=lambda k: (k[0], k[2] != "primary", k[1], k[2], k[3]))
    for route, upstream, role, dims in ordered:
        count = pooled[(route, upstream, role, dims)]
        by_route.setdefault(route, []).append(DimsSeen(upstream, role, int(dims), count))
    out = []
    for route, seen in by_route.items():
        served = {s.dims for s in seen if s.role == "primary"}
        copies = {s.dims for s in seen if s.role == "shadow"}
        mixed = len(served) > 1 or bool(served and copies - served)
        out.append(RouteDims(route, tuple(seen), mixed))
    return tuple(out)


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
