"""The report's reads of the counts a recording keeps as it is written (proxy/record/rollups.py):
per minute, not per row, so a big recording reads in the time its copies take.

Each read returns what the row-by-row query it stands in for returns, for the same code to
fold: `answers` what `sql.upstream_query` gives (parsed), `traffic_rows` and `revisions`
what their SELECTs over `exchanges` give. Only for an unfiltered, binned read: a filter cuts
through minutes, and exact latencies are not kept.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

from proxy.record.rollups import MINUTE
from proxy.report.prices import cost_sql, price_sql
from proxy.report.sql import ANSWER_BUCKET, REVISIONS, Reading
from proxy.report.thresholds import Price
from proxy.report.traffic import Window

_METRICS: Final = ("ttfb", "ttft", "total")

# `primary_minutes` with its columns named as `cost_sql` reads a response row, so the cost of
# a minute's answers is the price applied to their sums (a request price is per answer: the
# sums carry it once, the rest is added outside).
_AS_ANSWERS: Final = (
    "SELECT upstream, minute, revision, nullif(model, char(30)) AS model, flags, "
    "nullif(error_kind, '') AS error_kind, has_prompt, has_images, n, "
    "prompt AS prompt_tokens, completion AS completion_tokens, tokens, "
    "cached AS cached_tokens, images FROM primary_minutes WHERE n != 0"
)


def answers(
    db: Reading, win: Window, pricing: dict[str, dict[str, Price]], upstreams: set[str]
) -> dict[str, dict[str, Any]]:
    """Every primary upstream's answers, as `figures.parsed_answers` gives one range's."""
    params: dict[str, Any] = {}
    price = price_sql(pricing, "e", None, params)
    cost = cost_sql("e", price)
    if cost != "NULL":
        cost = (
            f"(CASE WHEN {cost} IS NULL THEN NULL "
            f"ELSE {cost} + (e.n - 1) * coalesce({price.request}, 0) * 1e6 END)"
        )
    # `_AS_ANSWERS`' columns in order, then the cost: what `_add` unpacks
    rows = db.con.execute(f"SELECT e.*, {cost} FROM ({_AS_ANSWERS}) e", params).fetchall()
    found = {u: _empty() for u in upstreams}
    for row in rows:
        if row[0] in found:
            _add(found[row[0]], row, win, priced=bool(pricing))
    for upstream, metric, key, n in db.con.execute(
        "SELECT upstream, metric, bin, n FROM primary_latency WHERE n != 0"
    ):
        if upstream in found:
            found[upstream][_METRICS[metric]][key] += n
    for row in found.values():
        if row["cost"] is not None:
            row["cost"] /= 1e6  # summed in millionths of a dollar, as the rows' query does
    return {u: row for u, row in found.items() if row["flags"]}


def _empty() -> dict[str, Any]:
    return {
        "flags": Counter(),
        **dict.fromkeys(("prompt", "completion", "tokens", "cached", "images", "priced"), 0),
        "cost": None,
        "kinds": Counter(),
        **{name: Counter() for name in _METRICS},
        "revisions": Counter(),
        "unpriced": Counter(),
        "revision_names": (),
    }


def _add(out: dict[str, Any], row: tuple[Any, ...], win: Window, *, priced: bool) -> None:
    _, minute, revision, model, flags, kind, has_prompt, has_images, n = row[:9]
    prompt, completion, tokens, cached, images, cost = row[9:]
    bucket = int((minute * MINUTE - win.start) // win.width)
    out["flags"][bucket * REVISIONS * ANSWER_BUCKET + flags] += n
    out["revisions"][revision] += n
    for name, value in (
        ("prompt", prompt),
        ("completion", completion),
        ("tokens", tokens),
        ("cached", cached),
        ("images", images),
    ):
        out[name] += value or 0
    if kind is not None:
        out["kinds"][kind] += n
    if cost is not None:
        out["priced"] += n
        out["cost"] = (out["cost"] or 0.0) + cost
    elif priced and kind is None:
        out["unpriced"][(model, bool(has_prompt), bool(has_images))] += n


# --- the exchanges' side -----------------------------------------------------------------


def traffic_rows(db: Reading) -> list[Any]:
    """(route, model, exchanges, streams, first ts, last ts), as `traffic.traffic_rows`."""
    rows = db.con.execute(
        "SELECT route, nullif(model, char(30)) AS m, sum(n), sum(streams), min(minute), "
        "max(minute) FROM exchange_minutes WHERE n != 0 GROUP BY route, model ORDER BY route, m"
    ).fetchall()
    where = "+route = :route AND +model IS :model"
    return [
        (route, model, n, streams, *_ends(db, first, last, where, route=route, model=model))
        for route, model, n, streams, first, last in rows
    ]


def revisions(db: Reading) -> list[Any]:
    """(revision, exchanges, first ts, last ts), as `traffic.read_seen`'s revisions."""
    rows = db.con.execute(
        "SELECT revision, sum(n), min(minute), max(minute) FROM exchange_minutes "
        "WHERE n != 0 GROUP BY revision ORDER BY revision"
    ).fetchall()
    return [
        (revision, n, *_ends(db, first, last, "+revision = :revision", revision=revision))
        for revision, n, first, last in rows
    ]


def _ends(db: Reading, first: int, last: int, where: str, **params: Any) -> tuple[float, float]:
    """The first exchange's ts in minute `first` and the last's in minute `last`, among those
    `where` picks (its columns written +column, so SQLite reads through the index on ts, not
    theirs); a second either side, as a ts a hair off a minute's edge may have been counted
    in the next."""
    sql = "SELECT {0}(ts) FROM exchanges WHERE ts >= :lo AND ts < :hi AND " + where
    lo = db.con.execute(
        sql.format("min"), {**params, "lo": first * MINUTE - 1, "hi": (first + 1) * MINUTE + 1}
    ).fetchone()[0]
    hi = db.con.execute(
        sql.format("max"), {**params, "lo": last * MINUTE - 1, "hi": (last + 1) * MINUTE + 1}
    ).fetchone()[0]
    return lo, hi
