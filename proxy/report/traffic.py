"""What the app sent and what it was served: requests per route and model, the share each
upstream served under each config revision, calls the SDKs retried, the sidecar's own
refusals, and the embedding dimensions each route answered in."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from proxy.report.data import (
    Calls,
    Count,
    DimsSeen,
    FailedOver,
    GuardTripped,
    Refusal,
    RevisionSeen,
    RouteDims,
    Share,
    Traffic,
    UpstreamStats,
)
from proxy.report.sql import Reading, calls_sql, dims_sql, refusals_sql

MAX_BUCKETS: Final = 100
_BUCKET_SECONDS: Final = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400)
MAX_REFUSALS: Final = 10  # reasons listed; the rest are counted together


def traffic_rows(db: Reading) -> list[Any]:
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


def window(rows: Sequence[Sequence[Any]]) -> Window:
    first = min((r[4] for r in rows), default=None)
    last = max((r[5] for r in rows), default=None)
    width = _bucket_seconds((last or 0.0) - (first or 0.0))
    start = math.floor((first or 0.0) / width) * width
    buckets = int(((last or 0.0) - start) // width) + 1 if first is not None else 0
    return Window(first, last, start, width, buckets)


def traffic(
    db: Reading,
    rows: Sequence[Sequence[Any]],
    win: Window,
    upstreams: list[UpstreamStats],
    served: dict[str, Counter[str]],
) -> Traffic:
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
        revisions=_revisions(db, win, served),
        calls=_calls(db, exchanges),
        refused=_refused(db),
        failovers=_failovers(db),
        trips=_trips(db),
    )


def _failovers(db: Reading) -> tuple[FailedOver, ...]:
    rows = db.rows(
        "SELECT p.upstream, f.upstream, count(*) FROM responses f "
        "JOIN responses p ON p.exchange_id = f.exchange_id AND p.role = 'primary' "
        f"CROSS JOIN exchanges e ON e.id = f.exchange_id WHERE f.role = 'failover'{db.where} "
        "GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"
    )
    return tuple(FailedOver(a, b, n) for a, b, n in rows)


def _trips(db: Reading) -> tuple[GuardTripped, ...]:
    flt = db.flt
    rows = db.con.execute(
        "SELECT upstream, rule, figures, ts, revision FROM guard_trips ORDER BY ts"
    ).fetchall()
    return tuple(
        GuardTripped(*r)
        for r in rows
        if (flt.since is None or r[3] >= flt.since)
        and (flt.until is None or r[3] <= flt.until)
        and (flt.revision is None or r[4] == flt.revision)
    )


def _revisions(
    db: Reading, win: Window, served: dict[str, Counter[str]]
) -> tuple[RevisionSeen, ...]:
    seen = {
        r[0]: r
        for r in db.rows(
            "SELECT revision, count(*), min(ts), max(ts) FROM exchanges e "
            f"WHERE 1{db.where} GROUP BY revision"
        )
    }
    known = {r[0]: r for r in db.con.execute("SELECT revision, ts, rollback, split FROM revisions")}
    flt = db.flt
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


def _calls(db: Reading, exchanges: int) -> Calls:
    _, extra, retried, most, attempts, failed = db.rows(calls_sql(db.where))[0]
    return Calls(
        calls=exchanges - int(extra),
        retried=int(retried),
        attempts=int(attempts),
        max_attempts=int(most),
        failed=int(failed),
    )


def _refused(db: Reading) -> tuple[Refusal, ...]:
    rows = db.rows(refusals_sql(db.where))
    listed = [Refusal(status, reason, count) for status, reason, count in rows[:MAX_REFUSALS]]
    rest = sum(count for _, _, count in rows[MAX_REFUSALS:])
    if rest:
        listed.append(Refusal(None, "other reasons", rest))
    return tuple(listed)


def embeddings(db: Reading) -> tuple[RouteDims, ...]:
    """Per route, the dimensions its embeddings came in. Mixed when the app was served more
    than one, or a shadow's differ from what the app got: vectors of different lengths can't
    share an index, so switching (or splitting) would break the app's search."""
    by_route: dict[str, list[DimsSeen]] = {}
    for route, upstream, role, dims, count in db.rows(dims_sql(db.where)):
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
