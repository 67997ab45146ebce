"""The SQL the report runs, and the tool-call functions it registers with SQLite."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Final, NamedTuple

import orjson

from proxy.replay.compare import RUN_CLAUSE
from proxy.report.bins import bin_sql
from proxy.report.data import ReportFilter

# The app leaving and the sidecar refusing are nobody's upstream's doing: they are shown,
# but left out of error rates and of every shadow-vs-primary comparison.
NOT_UPSTREAM: Final = ("client_disconnect", "proxy")


class Query(NamedTuple):
    """A SELECT and the names of its columns, so rows are read by name, not position."""

    sql: str
    columns: tuple[str, ...]

    def named(self, row: Sequence[Any]) -> dict[str, Any]:
        return dict(zip(self.columns, row, strict=True))


def _query(columns: list[tuple[str, str]], rest: str) -> Query:
    select = ",\n  ".join(expr for _, expr in columns)
    return Query(f"SELECT {select}\n{rest}", tuple(name for name, _ in columns))


_COLUMN: Final = re.compile(r"\b([epsr])\.(\w+)")


def _query_once(columns: list[tuple[str, str]], rest: str, computed: dict[str, str]) -> Query:
    """`_query`, with each of `computed`'s expressions (named in `columns` by its key)
    evaluated once per row: in a subquery SQLite runs as a co-routine (LIMIT keeps it from
    being flattened back into the aggregates). A cost or usage used by five aggregates
    otherwise costs five evaluations; this took a third off the pair query."""
    exprs = [expr for _, expr in columns]
    used = sorted({m.group(0) for expr in exprs for m in _COLUMN.finditer(expr)})
    inner = [f"{ref} AS {ref.replace('.', '_', 1)}" for ref in used]
    inner += [f"{expr} AS {name}" for name, expr in computed.items()]
    outer = [_COLUMN.sub(r"\1_\2", expr) for expr in exprs]
    sql = (
        "SELECT "
        + ",\n  ".join(outer)
        + "\nFROM (SELECT "
        + ",\n  ".join(inner)
        + f"\n{rest}\nLIMIT -1)"
    )
    return Query(sql, tuple(name for name, _ in columns))


def usage_sql(a: str) -> str:
    """The token count of a response row, NULL when it reported no usage at all."""
    return (
        f"coalesce({a}.total_tokens, {a}.prompt_tokens + {a}.completion_tokens, "
        f"{a}.prompt_tokens, {a}.completion_tokens)"
    )


def _us(expr: str) -> str:
    # Integer microseconds print and parse several times faster than REAL through group_concat.
    return f"CAST(round(({expr}) * 1000) AS INTEGER)"


def _by_app(a: str) -> str:
    kinds = ", ".join(f"'{k}'" for k in NOT_UPSTREAM)
    return f"coalesce({a}.error_kind, '') IN ({kinds})"


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


def upstream_query(role: str, where: str, cost: str, *, binned: bool, priced: bool) -> Query:
    ok = "r.error_kind IS NULL"
    stream = f"e.stream AND r.status / 100 = 2 AND NOT {_by_app('r')}"
    upstream_error = f"r.error_kind IS NOT NULL AND NOT {_by_app('r')}"
    bucket = "r__bucket"
    usage = "r__usage"
    # Only primaries are served under a revision's split.
    revisions = "group_concat(e.revision, char(31))" if role == "primary" else "NULL"
    # Successful answers without a price, by the model asked for (char(30): none), whether
    # they carried usage and images: what the notes on report.pricing say.
    unpriced = (
        f"group_concat(CASE WHEN {ok} AND r__cost IS NULL THEN ifnull(e.model, char(30)) "
        "|| char(29) || (r.prompt_tokens IS NOT NULL) || (coalesce(r.images, 0) > 0) END, "
        "char(31))"
        if priced
        else "NULL"
    )
    columns = [
        ("responses", "count(*)"),
        ("ok", f"sum({ok})"),
        ("upstream_errors", f"sum({upstream_error})"),
        ("kinds", "group_concat(r.error_kind)"),
        ("with_usage", f"count({usage})"),
        ("prompt", "sum(r.prompt_tokens)"),
        ("completion", "sum(r.completion_tokens)"),
        ("tokens", f"sum({usage})"),
        ("cached", "total(r.cached_tokens)"),
        ("images", "total(r.images)"),
        ("priced", "count(r__cost)"),
        ("cost", "sum(r__cost) / 1e6"),
        ("streams", f"sum({stream})"),
        ("streams_ok", f"sum({stream} AND r.stream_done = 1 AND {usage} IS NOT NULL)"),
        ("json_answers", f"count(CASE WHEN {ok} THEN r.json_ok END)"),
        ("json_ok", f"total(CASE WHEN {ok} THEN r.json_ok END)"),
        ("ttfb", f"group_concat(CASE WHEN {ok} THEN {_value('r.ttfb_ms', binned)} END)"),
        ("ttft", f"group_concat(CASE WHEN {ok} THEN {_value('r.ttft_ms', binned)} END)"),
        ("total", f"group_concat(CASE WHEN {ok} THEN {_value('r.total_ms', binned)} END)"),
        ("buckets", f"group_concat({bucket})"),
        ("error_buckets", f"group_concat(CASE WHEN {upstream_error} THEN {bucket} END)"),
        ("revisions", revisions),
        ("unpriced", unpriced),
    ]
    return _query_once(
        columns,
        "FROM responses r CROSS JOIN exchanges e ON e.id = r.exchange_id\n"
        f"WHERE {_GROUP_RANGE.format(a='r')}{where}",
        {
            "r__cost": cost,
            "r__usage": usage_sql("r"),
            "r__bucket": "CAST((e.ts - :t0) / :width AS INTEGER)",
        },
    )


def _latency_pair(ok: str, binned: bool) -> list[tuple[str, str]]:
    """Per pair, time to first token for a stream, total time otherwise, so one distribution
    holds every pair the latency check compares: exact, "primary,copy,stream" in
    microseconds; binned, the ratio's and the difference's bins and the streams counted."""
    p = "(CASE WHEN e.stream THEN p.ttft_ms ELSE p.total_ms END)"
    s = "(CASE WHEN e.stream THEN s.ttft_ms ELSE s.total_ms END)"
    timed = f"{ok} AND {p} IS NOT NULL AND {s} IS NOT NULL"
    if binned:
        # A primary under half a microsecond has no ratio, as exact microseconds have none.
        timed += f" AND {p} >= 0.0005"
        return [
            ("latency", "NULL"),
            ("latency_ratio", f"group_concat(CASE WHEN {timed} THEN {bin_sql(f'{s} / {p}')} END)"),
            ("latency_diff", f"group_concat(CASE WHEN {timed} THEN {bin_sql(f'{s} - {p}')} END)"),
            ("latency_streams", f"sum({timed} AND e.stream)"),
        ]
    return [
        (
            "latency",
            f"group_concat(CASE WHEN {timed} THEN "
            f"{_us(p)} || ',' || {_us(s)} || ',' || (e.stream != 0) END)",
        ),
        ("latency_ratio", "NULL"),
        ("latency_diff", "NULL"),
        ("latency_streams", "NULL"),
    ]


def _ratio_sums(name: str, cond: str, p: str, s: str, binned: bool) -> list[tuple[str, str]]:
    """The sums a ratio of sums and its delta-method interval need, and in exact mode the
    pairs themselves, for the bootstrap of a few."""

    def total(expr: str) -> str:
        return f"total(CASE WHEN {cond} THEN {expr} END)"

    pairs = "NULL" if binned else f"group_concat(CASE WHEN {cond} THEN {p} || ',' || {s} END)"
    return [
        (f"{name}_pairs", pairs),
        (f"{name}_p", total(p)),
        (f"{name}_s", total(s)),
        (f"{name}_pp", total(f"({p}) * ({p})")),
        (f"{name}_ss", total(f"({s}) * ({s})")),
        (f"{name}_ps", total(f"({p}) * ({s})")),
    ]


def _error_counts() -> list[tuple[str, str]]:
    return [
        ("pairs", "count(*)"),
        ("p_errors", "sum(p.error_kind IS NOT NULL)"),
        ("s_errors", "sum(s.error_kind IS NOT NULL)"),
        ("both_errors", "sum(p.error_kind IS NOT NULL AND s.error_kind IS NOT NULL)"),
    ]


def _latencies(ok: str, binned: bool) -> list[tuple[str, str]]:
    def both(column: str, value: str, cond: str = "") -> str:
        return (
            f"group_concat(CASE WHEN {ok}{cond} AND p.{column} IS NOT NULL "
            f"AND s.{column} IS NOT NULL THEN {_value(value, binned)} END)"
        )

    return [
        ("ttfb_diff", both("ttfb_ms", "s.ttfb_ms - p.ttfb_ms")),
        ("ttft_diff", both("ttft_ms", "s.ttft_ms - p.ttft_ms")),
        ("total_diff", both("total_ms", "s.total_ms - p.total_ms")),
        ("p_ttft", both("ttft_ms", "p.ttft_ms", " AND e.stream")),
        ("s_ttft", both("ttft_ms", "s.ttft_ms", " AND e.stream")),
        ("p_total", both("total_ms", "p.total_ms", " AND NOT e.stream")),
        ("s_total", both("total_ms", "s.total_ms", " AND NOT e.stream")),
        *_latency_pair(ok, binned),
    ]


def pair_query(where: str, p_cost: str, s_cost: str, *, binned: bool) -> Query:
    ok = "p.error_kind IS NULL AND s.error_kind IS NULL"
    same_class = "p.status / 100 IS s.status / 100"
    computed = {
        "p__usage": usage_sql("p"),
        "s__usage": usage_sql("s"),
        "p__cost": p_cost,
        "s__cost": s_cost,
    }
    p_usage, s_usage, p_cost, s_cost = computed
    usage = f"{p_usage} IS NOT NULL AND {s_usage} IS NOT NULL"
    priced = f"{p_cost} IS NOT NULL AND {s_cost} IS NOT NULL"
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

    def when(cond: str, value: str) -> str:
        return f"sum(CASE WHEN {cond} THEN {value} END)"

    columns = [
        *_error_counts(),
        ("same_class", f"sum({same_class})"),
        ("same_shape", f"sum({same_class} AND p.shape IS s.shape)"),
        ("tools", f"sum({tools})"),
        ("tools_same", f"sum(CASE WHEN {tools} THEN {tools_same} END)"),
        ("texts", f"sum({text})"),
        ("texts_same", f"sum({text} AND p.text_sha256 = s.text_sha256)"),
        ("usage_pairs", f"sum({usage})"),
        ("p_prompt", when(usage, "coalesce(p.prompt_tokens, 0)")),
        ("p_completion", when(usage, "coalesce(p.completion_tokens, 0)")),
        ("p_tokens", when(usage, p_usage)),
        ("s_prompt", when(usage, "coalesce(s.prompt_tokens, 0)")),
        ("s_completion", when(usage, "coalesce(s.completion_tokens, 0)")),
        ("s_tokens", when(usage, s_usage)),
        ("p_cached", when(usage, "coalesce(p.cached_tokens, 0)")),
        ("s_cached", when(usage, "coalesce(s.cached_tokens, 0)")),
        *_ratio_sums("token", usage, p_usage, s_usage, binned),
        ("priced_pairs", f"sum({priced})"),
        ("p_cost", f"{when(priced, p_cost)} / 1e6"),
        ("s_cost", f"{when(priced, s_cost)} / 1e6"),
        *_ratio_sums("cost", priced, p_cost, s_cost, binned),
        *_latencies(ok, binned),
        ("ex_status", f"group_concat(CASE WHEN NOT {same_class} THEN s.rowid END)"),
        (
            "ex_shape",
            f"group_concat(CASE WHEN {same_class} AND p.shape IS NOT s.shape THEN s.rowid END)",
        ),
        (
            "ex_tool_calls",
            f"group_concat(CASE WHEN {tools} THEN (CASE WHEN {tools_same} THEN NULL "
            "ELSE s.rowid END) END)",
        ),
        ("bodies", f"group_concat(CASE WHEN {text} AND {bodies} THEN s.rowid END)"),
    ]
    return _query_once(
        columns,
        "FROM responses s\n"
        "  CROSS JOIN responses p ON p.exchange_id = s.exchange_id AND p.role = 'primary'\n"
        "  CROSS JOIN exchanges e ON e.id = s.exchange_id\n"
        f"WHERE {_GROUP_RANGE.format(a='s')}{where}\n"
        f"  AND NOT {_by_app('p')} AND NOT {_by_app('s')}",
        computed,
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
