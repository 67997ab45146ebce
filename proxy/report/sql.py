"""The SQL the report runs, and the tool-call functions it registers with SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Final, NamedTuple

import orjson

from proxy.record.rollups import NOT_UPSTREAM, answer_flags, usage_sql
from proxy.replay.compare import RUN_CLAUSE
from proxy.report.bins import bin_sql
from proxy.report.data import ReportFilter


class Query(NamedTuple):
    """A SELECT and the names of its columns, so rows are read by name, not position."""

    sql: str
    columns: tuple[str, ...]

    def named(self, row: Sequence[Any]) -> dict[str, Any]:
        return dict(zip(self.columns, row, strict=True))


def _two_level(inner: dict[str, str], outer: list[tuple[str, str]], rest: str) -> Query:
    """A query whose aggregates (`outer`) read the values `inner` computes once per row, in a
    subquery SQLite runs as a co-routine (LIMIT keeps it from being flattened back into the
    aggregates, which would evaluate a value once for each aggregate that reads it)."""
    sql = (
        "SELECT "
        + ",\n  ".join(expr for _, expr in outer)
        + "\nFROM (SELECT "
        + ",\n  ".join(f"{expr} AS {name}" for name, expr in inner.items())
        + f"\n{rest}\nLIMIT -1)"
    )
    return Query(sql, tuple(name for name, _ in outer))


def _us(expr: str) -> str:
    # Integer microseconds print and parse several times faster than REAL through group_concat.
    return f"CAST(round(({expr}) * 1000) AS INTEGER)"


def _by_app(a: str) -> str:
    kinds = ", ".join(f"'{k}'" for k in NOT_UPSTREAM)
    return f"coalesce({a}.error_kind, '') IN ({kinds})"


def _upstream_side(a: str) -> str:
    """Not ended by the app nor refused by the sidecar; the IN list only for the few errors."""
    kinds = ", ".join(f"'{k}'" for k in NOT_UPSTREAM)
    return f"({a}.error_kind IS NULL OR {a}.error_kind NOT IN ({kinds}))"


def where_clause(flt: ReportFilter) -> tuple[str, dict[str, Any]]:
    clauses = []
    params: dict[str, Any] = {}
    for name, clause in (
        ("since", "e.ts >= :since"),
        ("until", "e.ts < :until"),
        ("route", "e.route = :route"),
        ("model", "e.model = :model"),
        ("revision", "e.revision = :revision"),
        ("replay", RUN_CLAUSE),
    ):
        value = getattr(flt, name)
        if value is not None:
            clauses.append(clause)
            params[name] = value
    return "".join(f" AND {c}" for c in clauses), params


def since_clause(flt: ReportFilter, a: str) -> str:
    # Implied by e.ts >= since (an upstream is asked after the request arrived); it lets a
    # short window read responses through their ts index instead of scanning them all.
    return "" if flt.since is None else f" AND {a}.ts >= :since"


def _value(expr: str, binned: bool) -> str:
    """A latency (ms) as the report's distributions take it: integer microseconds, or its bin."""
    return bin_sql(expr) if binned else _us(expr)


# Rows the report reads in one query: a range of rowids of one (upstream, role), found through
# the index on (upstream, role), whose entries end in the rowid. Ranges bound the memory a
# query's lists take, and let two threads share a big recording.
_GROUP_RANGE: Final = (
    "{a}.upstream = :upstream AND {a}.role = :role AND {a}.rowid >= :lo AND {a}.rowid < :hi"
)


# An answer's counts travel as one small integer per row: its flags (`proxy.record.rollups.OK`
# ...), plus ANSWER_BUCKET times (its timeline bucket times REVISIONS plus its revision's
# place). Python counts the distinct integers (a few hundred) and reads every count off them:
# one aggregate where there were ten, and SQLite's cost is per row and per aggregate.
ANSWER_BUCKET: Final = 128
# A primary's config revision travels in the same integer, as its place in a list of up to
# REVISIONS - 1 (read through the index on revision before the answers; the last place is a
# revision not in it, which one snapshot rules out): the name itself, group concatenated,
# cost a fifth of the primaries' query. Beyond, names it is.
REVISIONS: Final = 16


def revision_index(names: int) -> str:
    """SQL for the exchange's revision's place among :rev0 .. :rev{names - 1}."""
    whens = " ".join(f"WHEN :rev{i} THEN {i}" for i in range(names))
    return f"(CASE e.revision {whens} ELSE {REVISIONS - 1} END)"


Parts = tuple[dict[str, str], list[tuple[str, str]]]


def _answer_parts(
    a: str, role: str, cost: str, *, binned: bool, priced: bool, revisions: int = 0
) -> Parts:
    """What `upstream_query` reads of response `a`, as the subquery's values (named r_...)
    and the aggregates over them: the answers' flags (see `OK`: bucket, revision's place,
    flags), token sums, latencies, error kinds, and, for primaries, the revisions they were
    served under (by place among `revisions` names given as :rev0.., or by name)."""
    usage = usage_sql(a)
    flags = answer_flags(a)
    bucket = "CAST((e.ts - :t0) / :width AS INTEGER)"
    by_place = role == "primary" and 0 < revisions < REVISIONS
    if by_place:
        bucket = f"({bucket} * {REVISIONS} + {revision_index(revisions)})"
    else:
        bucket = f"{bucket} * {REVISIONS}"
    inner = {
        "r_k": f"{bucket} * {ANSWER_BUCKET} + {flags}",
        "r_u": usage,
        "r_kind": f"{a}.error_kind",
        "r_pt": f"{a}.prompt_tokens",
        "r_ct": f"{a}.completion_tokens",
        "r_cached": f"{a}.cached_tokens",
        "r_images": f"{a}.images",
        **{
            f"r_{name}": f"CASE WHEN {a}.error_kind IS NULL THEN {a}.{name}_ms END"
            for name in ("ttfb", "ttft", "total")
        },
    }
    # Only primaries are served under a revision's split.
    by_name = "NULL"
    if role == "primary" and not by_place:
        inner["r_rev"] = "e.revision"
        by_name = "group_concat(r_rev, char(31))"
    priced_n = total_cost = unpriced = "NULL"
    if cost != "NULL":
        inner["r_cost"] = cost
        priced_n, total_cost = "count(r_cost)", "sum(r_cost) / 1e6"
    if priced:
        # Successful answers without a price, by the model asked for (char(30): none),
        # whether they carried usage and images: what the notes on report.pricing say.
        inner["r_model"] = "e.model"
        paid = "r_cost" if cost != "NULL" else "NULL"
        unpriced = (
            f"group_concat(CASE WHEN r_kind IS NULL AND {paid} IS NULL THEN "
            "ifnull(r_model, char(30)) || char(29) || (r_pt IS NOT NULL) || "
            "(coalesce(r_images, 0) > 0) END, char(31))"
        )
    outer = [
        ("flags", "group_concat(r_k)"),
        ("kinds", "group_concat(r_kind)"),
        ("prompt", "sum(r_pt)"),
        ("completion", "sum(r_ct)"),
        ("tokens", "sum(r_u)"),
        ("cached", "total(r_cached)"),
        ("images", "total(r_images)"),
        ("priced", priced_n),
        ("cost", total_cost),
        *(
            (name, f"group_concat({_value(f'r_{name}', binned)})")
            for name in ("ttfb", "ttft", "total")
        ),
        ("revisions", by_name),
        ("unpriced", unpriced),
    ]
    return inner, outer


def upstream_query(
    role: str, where: str, cost: str, *, binned: bool, priced: bool, revisions: int = 0
) -> Query:
    """One range of one (upstream, role)'s answers: see `_answer_parts`."""
    inner, outer = _answer_parts("r", role, cost, binned=binned, priced=priced, revisions=revisions)
    return _two_level(
        inner,
        outer,
        "FROM responses r CROSS JOIN exchanges e ON e.id = r.exchange_id\n"
        f"WHERE {_GROUP_RANGE.format(a='r')}{where}",
    )


# A pair's counts, as an answer's (see `OK`): one small integer per pair, these bits.
P_ERROR: Final = 1  # the primary failed (an upstream error)
S_ERROR: Final = 2  # the copy did
SAME_CLASS: Final = 4  # the same status class (2xx/4xx/5xx/none)
SAME_SHAPE: Final = 8  # ... and the same response shape
TOOLS: Final = 16  # tool calls to compare (see `_pair_flags`)
TOOLS_SAME: Final = 32  # ... the same names and argument keys, the copy's arguments valid
TEXTS: Final = 64  # both answered with text
TEXTS_SAME: Final = 128  # ... the same normalised text
USAGE_BOTH: Final = 256  # both reported usage
PRICED_BOTH: Final = 512  # both have a price
TIMED_STREAM: Final = 1024  # a stream both sides timed (binned reads only)
BODIES: Final = 2048  # texts with both bodies recorded, in the similarity sample
PAIR_ROWID: Final = 4096  # marks: the copy's rowid times this, plus its flags


def _pair_flags(binned: bool) -> str:
    """`P_ERROR` to `BODIES` but `USAGE_BOTH`, `PRICED_BOTH` and `TIMED_STREAM` (added
    outside, from the values the pair's subquery computes)."""
    ok = "p.error_kind IS NULL AND s.error_kind IS NULL"
    # A copy that refused a request the primary answered with tool calls (a 4xx such as
    # "function calling is not supported") disagrees on them; its 5xx and timeouts are the
    # errors check's, not this one's.
    tools = (
        "p.error_kind IS NULL AND (s.error_kind IS NULL OR s.error_kind = 'http_4xx') "
        "AND (p.tool_calls IS NOT NULL OR (s.error_kind IS NULL AND s.tool_calls IS NOT NULL))"
    )
    # CASE, not AND: SQLite evaluates both sides of an AND for its value, and these two
    # call back into Python; most pairs carry no tool calls and need neither.
    tools_same = (
        "(CASE WHEN s.error_kind IS NOT NULL THEN 0 "
        "WHEN tool_sig(p.tool_calls) IS NOT tool_sig(s.tool_calls) THEN 0 "
        "ELSE tool_valid(s.tool_calls) END)"
    )
    text = f"{ok} AND p.text_sha256 IS NOT NULL AND s.text_sha256 IS NOT NULL"
    bodies = "length(p.response_body) > 0 AND length(s.response_body) > 0"
    if binned:  # a fixed share of the pairs, by a hash of the rowid, for the similarity sample
        bodies += " AND (s.rowid * 2654435761) % 1000 < :keep"
    return (
        f"(p.error_kind IS NOT NULL) * {P_ERROR} + (s.error_kind IS NOT NULL) * {S_ERROR}\n"
        f"  + (CASE WHEN p.status / 100 IS s.status / 100 THEN {SAME_CLASS} + {SAME_SHAPE} * "
        "(p.shape IS s.shape) ELSE 0 END)\n"
        f"  + (CASE WHEN {tools} THEN {TOOLS} + {TOOLS_SAME} * {tools_same} ELSE 0 END)\n"
        f"  + (CASE WHEN {text} THEN {TEXTS} + {TEXTS_SAME} * (p.text_sha256 = s.text_sha256) "
        f"+ (CASE WHEN {bodies} THEN {BODIES} ELSE 0 END) ELSE 0 END)"
    )


def _pair_latencies(binned: bool) -> list[tuple[str, str]]:
    """Per pair, from the subquery's differences and its `pl` and `sl` (time to first token
    for a stream, total time otherwise, NULL unless both answered): the distributions of
    the differences, of each side's time (times 2, plus 1 for a non-stream: one list holds
    both kinds), and of the latency check's ratio and difference. Exact, "primary,copy,stream"
    in microseconds instead of the last two; binned, the streams among them are a flag."""
    both = "sl IS NOT NULL AND pl IS NOT NULL"
    columns = [
        *((f"{name}_diff", f"group_concat({_value(name, binned)})") for name in ("ttfb", "ttft", "total")),
        ("p_lat", f"group_concat(CASE WHEN sl IS NOT NULL THEN {_value('pl', binned)} * 2 + (NOT stream) END)"),
        ("s_lat", f"group_concat(CASE WHEN pl IS NOT NULL THEN {_value('sl', binned)} * 2 + (NOT stream) END)"),
    ]  # fmt: skip
    if binned:
        # A primary under half a microsecond has no ratio, as exact microseconds have none.
        timed = f"{both} AND pl >= 0.0005"
        return [
            *columns,
            ("latency", "NULL"),
            ("latency_ratio", f"group_concat(CASE WHEN {timed} THEN {bin_sql('(sl / pl)')} END)"),
            ("latency_diff", f"group_concat(CASE WHEN {timed} THEN {bin_sql('(sl - pl)')} END)"),
        ]
    return [
        *columns,
        ("latency", f"group_concat(CASE WHEN {both} THEN {_us('pl')} || ',' || {_us('sl')} || ',' || (stream != 0) END)"),
        ("latency_ratio", "NULL"),
        ("latency_diff", "NULL"),
    ]  # fmt: skip


def _pair_sums(kind: str, both: str, p: str, s: str, binned: bool) -> list[tuple[str, str]]:
    """The sums a ratio of sums and its delta-method interval need (`both` is 1 when both
    sides have a value, NULL otherwise), and in exact mode the pairs themselves, for the
    bootstrap of a few."""
    pairs = "NULL" if binned else f"group_concat(CASE WHEN {both} THEN {p} || ',' || {s} END)"
    return [
        (f"{kind}_pairs", pairs),
        (f"{kind}_p", f"total({both} * {p})"),
        (f"{kind}_s", f"total({both} * {s})"),
        (f"{kind}_pp", f"total({both} * {p} * {p})"),
        (f"{kind}_ss", f"total({both} * {s} * {s})"),
        (f"{kind}_ps", f"total({both} * {p} * {s})"),
    ]


def _pair_parts(p_cost: str, s_cost: str, *, binned: bool) -> Parts:
    """What `copy_query` reads of a pair (copy s, primary p, NULL when the copy has none):
    the subquery's values and the aggregates over them, counting only the pairs (neither
    side ended by the app nor refused by the sidecar): the pairs' flags (see `P_ERROR`),
    token and cost sums, latencies, and the rowids of mismatches and of the similarity
    sample."""
    paired = f"p.rowid IS NOT NULL AND {_upstream_side('p')} AND {_upstream_side('s')}"
    ok = "p.rowid IS NOT NULL AND p.error_kind IS NULL AND s.error_kind IS NULL"
    p_usage, s_usage = usage_sql("p"), usage_sql("s")
    inner = {
        "rid": "s.rowid",
        "f": f"CASE WHEN {paired} THEN {_pair_flags(binned)} END",
        "stream": "e.stream",
        "pu": p_usage,
        "su": s_usage,
        "tu": f"CASE WHEN {p_usage} IS NOT NULL AND {s_usage} IS NOT NULL AND {paired} THEN 1 END",
        **{
            f"{a}_{name}": f"{a}.{name}_tokens"
            for a in ("p", "s")
            for name in ("prompt", "completion", "cached")
        },
        **{
            name: f"CASE WHEN {ok} THEN s.{name}_ms - p.{name}_ms END"
            for name in ("ttfb", "ttft", "total")
        },
        **{
            f"{a}l": f"CASE WHEN {ok} THEN (CASE WHEN e.stream THEN {a}.ttft_ms "
            f"ELSE {a}.total_ms END) END"
            for a in ("p", "s")
        },
    }
    priced = p_cost != "NULL" and s_cost != "NULL"
    if priced:
        inner["pc"], inner["sc"] = p_cost, s_cost
        inner["tc"] = (
            f"CASE WHEN {p_cost} IS NOT NULL AND {s_cost} IS NOT NULL AND {paired} THEN 1 END"
        )
    timed = "(stream AND sl IS NOT NULL AND pl >= 0.0005)" if binned else "0"
    costs = (
        _pair_sums("cost", "tc", "pc", "sc", binned)
        if priced
        else [(f"cost_{name}", "NULL") for name in ("pairs", "p", "s", "pp", "ss", "ps")]
    )
    marks = f"(f & {SAME_SHAPE}) = 0 OR (f & {TOOLS + TOOLS_SAME}) = {TOOLS} OR f & {BODIES}"
    outer = [
        (
            "flags",
            f"group_concat(f + {USAGE_BOTH} * (tu IS NOT NULL) + "
            + (f"{PRICED_BOTH} * (tc IS NOT NULL)" if priced else "0")
            + f" + {TIMED_STREAM} * {timed})",
        ),
        *(
            (f"{a}_{name}", f"sum(tu * coalesce({a}_{name}, 0))")
            for a in ("p", "s")
            for name in ("prompt", "completion", "cached")
        ),
        *_pair_sums("token", "tu", "pu", "su", binned),
        *costs,
        *_pair_latencies(binned),
        ("marks", f"group_concat(CASE WHEN {marks} THEN rid * {PAIR_ROWID} + f END)"),
    ]
    return inner, outer


ANSWER: Final = "answer_"  # copy_query's columns of the copies' own answers start with this


def copy_query(
    role: str, where: str, p_cost: str, s_cost: str, *, binned: bool, priced: bool
) -> Query:
    """One range of one upstream's copies (shadow, noise or replay): their answers, as
    `upstream_query` reads them (columns named with `ANSWER` first), and their pairs with
    the primary answers (`_pair_parts`), in one read of the copies and their exchanges."""
    answer_inner, answer_outer = _answer_parts("s", role, s_cost, binned=binned, priced=priced)
    pair_inner, pair_outer = _pair_parts(p_cost, s_cost, binned=binned)
    return _two_level(
        {**answer_inner, **pair_inner},
        [(ANSWER + name, expr) for name, expr in answer_outer] + pair_outer,
        "FROM responses s\n"
        "  LEFT JOIN responses p ON p.exchange_id = s.exchange_id AND p.role = 'primary'\n"
        "  CROSS JOIN exchanges e ON e.id = s.exchange_id\n"
        f"WHERE {_GROUP_RANGE.format(a='s')}{where}",
    )


def ratio_pairs_sql(where: str, p_cost: str, s_cost: str, kind: str) -> str:
    """The (primary, copy) values of one range's pairs behind a ratio (`kind` "token" or
    "cost"): the bootstrap's input when a big recording holds only a few such pairs."""
    if kind == "token":
        p, s = usage_sql("p"), usage_sql("s")
    else:
        p, s = p_cost, s_cost
    return (
        f"SELECT {p}, {s}\nFROM responses s\n"
        "  CROSS JOIN responses p ON p.exchange_id = s.exchange_id AND p.role = 'primary'\n"
        "  CROSS JOIN exchanges e ON e.id = s.exchange_id\n"
        f"WHERE {_GROUP_RANGE.format(a='s')}{where}\n"
        f"  AND NOT {_by_app('p')} AND NOT {_by_app('s')} AND {p} IS NOT NULL AND {s} IS NOT NULL\n"
        "ORDER BY s.rowid"
    )


PAIR_ROWS = """
SELECT s.rowid, e.id, e.ts, e.route, e.model, e.stream, p.text_sha256 IS s.text_sha256,
  p.upstream, p.status, p.error_kind, p.error, p.finish_reason, p.total_ms, p.response_body,
  s.upstream, s.status, s.error_kind, s.error, s.finish_reason, s.total_ms, s.response_body
FROM responses s
  CROSS JOIN responses p ON p.exchange_id = s.exchange_id AND p.role = 'primary'
  CROSS JOIN exchanges e ON e.id = s.exchange_id
WHERE s.rowid IN (SELECT value FROM json_each(:rowids))"""


@lru_cache(maxsize=4096)
def tool_signature(calls_json: str | bytes | None) -> str | None:
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
def tool_valid(calls_json: str | bytes | None) -> int:
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


def refusals_sql(where: str) -> str:
    """Requests the sidecar answered itself (upstream "-"), by status and reason."""
    return f"""
SELECT r.status, r.error, count(*) FROM responses r CROSS JOIN exchanges e ON e.id = r.exchange_id
WHERE r.upstream = '-'{where}
GROUP BY r.status, r.error ORDER BY count(*) DESC, r.status, r.error"""


def calls_sql(where: str) -> str:
    """Attempts linked by retry_key: keys, attempts beyond the first, retried calls, the most
    attempts, the attempts of retried calls, and retried calls that failed on every attempt."""
    retried = "(n > 1 OR most > 0)"
    return f"""
SELECT count(*), total(n - 1), total({retried}), coalesce(max(n), 0),
  total(CASE WHEN {retried} THEN n END), total({retried} AND ok = 0)
FROM (SELECT count(*) AS n, max(coalesce(e.retry_count, 0)) AS most,
    total(r.exchange_id IS NOT NULL AND r.error_kind IS NULL) AS ok
  FROM exchanges e LEFT JOIN responses r ON r.exchange_id = e.id AND r.role = 'primary'
  WHERE e.retry_key IS NOT NULL{where}
  GROUP BY e.retry_key)"""


def dims_sql(where: str) -> str:
    """Successful embeddings answers per route, upstream, role and dimension."""
    return f"""
SELECT e.route, r.upstream, r.role, r.embedding_dims, count(*)
FROM responses r CROSS JOIN exchanges e ON e.id = r.exchange_id
WHERE r.embedding_dims IS NOT NULL AND r.error_kind IS NULL{where}
GROUP BY e.route, r.upstream, r.role, r.embedding_dims
ORDER BY e.route, r.role != 'primary', r.upstream, r.role, r.embedding_dims"""


class Reading:
    """One read transaction over a recording, the filter compiled to SQL once."""

    def __init__(self, con: sqlite3.Connection, flt: ReportFilter) -> None:
        self.con = con
        self.flt = flt
        self.where, self.params = where_clause(flt)

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        return self.con.execute(sql, {**self.params, **(params or {})}).fetchall()


class Many:
    """Several recordings' readings as one: each query runs on every file, rows concatenated,
    for the caller to pool."""

    def __init__(self, readings: Sequence[Reading]) -> None:
        self.readings = tuple(readings)
        first = self.readings[0]
        self.flt, self.where, self.params = first.flt, first.where, first.params

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        return [row for reading in self.readings for row in reading.rows(sql, params)]
