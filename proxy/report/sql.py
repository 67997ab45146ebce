"""The SQL the report runs, and the tool-call functions it registers with SQLite."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

import orjson

from proxy.report.data import ReportFilter
from proxy.report.thresholds import Price

# The app leaving and the sidecar refusing are nobody's upstream's doing: they are shown,
# but left out of error rates and of every shadow-vs-primary comparison.
NOT_UPSTREAM: Final = ("client_disconnect", "proxy")


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


def where_clause(flt: ReportFilter) -> tuple[str, dict[str, Any]]:
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


def since_clause(flt: ReportFilter, a: str) -> str:
    # Implied by e.ts >= since (an upstream is asked after the request arrived); it lets a
    # short window read responses through their ts index instead of scanning them all.
    return "" if flt.since is None else f" AND {a}.ts >= :since"


def price_sql(
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


def upstream_sql(role: str, where: str, price: tuple[str, str]) -> str:
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


def pair_sql(where: str, p_price: tuple[str, str], s_price: tuple[str, str]) -> str:
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
