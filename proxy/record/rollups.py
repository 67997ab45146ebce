"""Counts the recording keeps as it is written, so the report reads minutes, not rows.

SQLite triggers keep three tables equal to what the report would count from the rows present:

- `exchange_minutes`: exchanges per minute of arrival, route, model and config revision;
- `primary_minutes`: primary answers per minute of their exchange's arrival, upstream,
  revision, model and the answer's flags (`OK` ...), with their token sums;
- `primary_latency`: the successful primary answers' latencies per upstream, in the report's
  log bins (`proxy.report.bins`).

A row added to `exchanges` or `responses` adds itself; a row deleted (retention, anyone's
DELETE) takes itself back out, so the counts stay those of the rows in the file. An answer
counts once both it and its exchange are in, whichever came first. Keys are never NULL
(`NO_MODEL`, `NO_ERROR` stand in), so an upsert always finds its row; rows that drop to zero
stay until retention prunes them (`PRUNE`), and the report skips them.

The report uses them for an unfiltered, binned read (see proxy/report/build.py); every other
read counts the rows themselves, so a test can hold the two to each other.
"""

from __future__ import annotations

from typing import Final

from proxy.report.bins import bin_sql

# An answer's counts travel as one small integer: these bits (the report reads them, see
# proxy/report/figures.py). Never renumber: `primary_minutes` stores them.
OK: Final = 1  # no error of any kind
UPSTREAM_ERROR: Final = 2  # an error neither the app nor the sidecar caused
STREAM: Final = 4  # a stream answered 2xx (not cut by the app)
STREAM_OK: Final = 8  # ... that ended with [DONE] and usage
JSON: Final = 16  # a successful answer in JSON mode
JSON_OK: Final = 32  # ... that parsed
USAGE: Final = 64  # it reported usage

# The app leaving and the sidecar refusing are nobody's upstream's doing: they are shown,
# but left out of error rates and of every shadow-vs-primary comparison.
NOT_UPSTREAM: Final = ("client_disconnect", "proxy")

NO_MODEL: Final = "\x1e"  # `model` of an exchange that named none
NO_ERROR: Final = ""  # `error_kind` of an answer without an error
MINUTE: Final = 60  # seconds


def usage_sql(a: str) -> str:
    """The token count of a response row, NULL when it reported no usage at all."""
    return (
        f"coalesce({a}.total_tokens, {a}.prompt_tokens + {a}.completion_tokens, "
        f"{a}.prompt_tokens, {a}.completion_tokens)"
    )


def answer_flags(a: str, e: str = "e") -> str:
    """`OK` to `USAGE` of response `a` to exchange `e`; the IN list of the app's and the
    sidecar's error kinds only reached by the few errors."""
    kinds = ", ".join(f"'{k}'" for k in NOT_UPSTREAM)
    usage = usage_sql(a)
    stream = (
        f"(CASE WHEN {e}.stream AND {a}.status / 100 = 2 THEN {STREAM} + {STREAM_OK} * "
        f"({a}.stream_done IS 1 AND {usage} IS NOT NULL) ELSE 0 END)"
    )
    json = (
        f"(CASE WHEN {a}.json_ok IS NULL THEN 0 WHEN {a}.json_ok THEN {JSON + JSON_OK} "
        f"ELSE {JSON} END)"
    )
    return (
        f"(CASE WHEN {a}.error_kind IS NULL THEN {OK} + {stream} + {json} "
        f"WHEN {a}.error_kind IN ({kinds}) THEN 0 ELSE {UPSTREAM_ERROR} + {stream} END)"
        f" + {USAGE} * ({usage} IS NOT NULL)"
    )


def _minute(e: str) -> str:
    return f"CAST({e}.ts / {MINUTE} AS INTEGER)"


# --- the upserts -------------------------------------------------------------------------
# Each is written once over aliases: `r` the response, `e` its exchange, read from `source`
# (a FROM ... WHERE that finds both); `sign` 1 adds, -1 takes back; `grouped` sums many rows
# (the migration's backfill), where a trigger's source finds at most one.


def _exchange_upsert(e: str, source: str, sign: int, grouped: bool) -> str:
    key = {
        "minute": _minute(e),
        "route": f"{e}.route",
        "model": f"ifnull({e}.model, char(30))",
        "revision": f"{e}.revision",
    }
    row = {"n": "1", "streams": f"({e}.stream != 0)"}
    return _upsert("exchange_minutes", key, row, source, sign, grouped)


def _answer_upsert(r: str, e: str, source: str, sign: int, grouped: bool) -> str:
    key = {
        "minute": _minute(e),
        "upstream": f"{r}.upstream",
        "revision": f"{e}.revision",
        "model": f"ifnull({e}.model, char(30))",
        "flags": answer_flags(r, e),
        "error_kind": f"ifnull({r}.error_kind, '')",
        "has_prompt": f"({r}.prompt_tokens IS NOT NULL)",
        "has_images": f"(coalesce({r}.images, 0) > 0)",
    }
    row = {
        "n": "1",
        # NULL where the answers carried no prompt count: `has_prompt` keeps them apart.
        "prompt": f"{r}.prompt_tokens",
        "completion": f"coalesce({r}.completion_tokens, 0)",
        "tokens": f"coalesce({usage_sql(r)}, 0)",
        "cached": f"coalesce({r}.cached_tokens, 0)",
        "images": f"coalesce({r}.images, 0)",
    }
    return _upsert("primary_minutes", key, row, source, sign, grouped)


def _latency_upserts(r: str, source: str, sign: int, grouped: bool) -> tuple[str, ...]:
    """The three latencies of a successful answer, one (metric, bin) row each: three plain
    statements cost less in a trigger than one over a three-row subquery."""
    return tuple(
        _upsert(
            "primary_latency",
            {"upstream": f"{r}.upstream", "metric": str(i), "bin": bin_sql(f"{r}.{name}_ms")},
            {"n": "1"},
            f"{source} AND {r}.error_kind IS NULL AND {r}.{name}_ms IS NOT NULL",
            sign,
            grouped,
        )
        for i, name in enumerate(("ttfb", "ttft", "total"))
    )


def _upsert(
    table: str, key: dict[str, str], row: dict[str, str], source: str, sign: int, grouped: bool
) -> str:
    """Adds (or takes back) `row`'s values, one row's or, `grouped`, each key's sums, to the
    row of `table` with that key."""
    values = (f"sum({v})" if grouped else v for v in row.values())
    names = [*key, *row]
    exprs = [*key.values(), *(v if sign > 0 else f"-({v})" for v in values)]
    group = f" GROUP BY {', '.join(str(i + 1) for i in range(len(key)))}" if grouped else ""
    added = ", ".join(f"{v} = {v} + excluded.{v}" for v in row)
    # The SELECT always has a WHERE, which keeps SQLite from reading ON as a join's.
    return (
        f"INSERT INTO {table} ({', '.join(names)})\n"
        f"SELECT {', '.join(exprs)}\n{source}{group}\n"
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {added}"
    )


# --- the migration -----------------------------------------------------------------------

_TABLES: Final = (
    """CREATE TABLE exchange_minutes (
        minute INTEGER NOT NULL, route TEXT NOT NULL, model TEXT NOT NULL,
        revision TEXT NOT NULL, n INTEGER NOT NULL, streams INTEGER NOT NULL,
        PRIMARY KEY (minute, route, model, revision)
    ) WITHOUT ROWID""",
    """CREATE TABLE primary_minutes (
        minute INTEGER NOT NULL, upstream TEXT NOT NULL, revision TEXT NOT NULL,
        model TEXT NOT NULL, flags INTEGER NOT NULL, error_kind TEXT NOT NULL,
        has_prompt INTEGER NOT NULL, has_images INTEGER NOT NULL,
        n INTEGER NOT NULL, prompt INTEGER, completion INTEGER NOT NULL,
        tokens INTEGER NOT NULL, cached INTEGER NOT NULL, images INTEGER NOT NULL,
        PRIMARY KEY (minute, upstream, revision, model, flags, error_kind, has_prompt, has_images)
    ) WITHOUT ROWID""",
    """CREATE TABLE primary_latency (
        upstream TEXT NOT NULL, metric INTEGER NOT NULL, bin INTEGER NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (upstream, metric, bin)
    ) WITHOUT ROWID""",
)

_EVERY: Final = (
    "FROM responses r CROSS JOIN exchanges e ON e.id = r.exchange_id WHERE r.role = 'primary'"
)


def _trigger(name: str, when: str, table: str, condition: str, body: tuple[str, ...]) -> str:
    where = f" WHEN {condition}" if condition else ""
    statements = "".join(f"{statement};\n" for statement in body)
    return f"CREATE TRIGGER {name} AFTER {when} ON {table}{where} BEGIN\n{statements}END"


def _exchange_triggers(when: str, e: str, sign: int) -> tuple[str, str]:
    """An exchange counted (or taken back); and its primary answer, when that came first."""
    found = f"FROM responses r WHERE r.exchange_id = {e}.id AND r.role = 'primary'"
    verb = "counted" if sign > 0 else "uncounted"
    return (
        _trigger(
            f"exchange_{verb}",
            when,
            "exchanges",
            "",
            (_exchange_upsert(e, "WHERE 1", sign, grouped=False),),
        ),
        _trigger(
            f"exchange_answer_{verb}",
            when,
            "exchanges",
            f"EXISTS (SELECT 1 {found})",
            (
                _answer_upsert("r", e, found, sign, grouped=False),
                *_latency_upserts("r", found, sign, grouped=False),
            ),
        ),
    )


def _answer_trigger(when: str, r: str, sign: int) -> str:
    """A primary answer counted (or taken back), if its exchange is in."""
    found = f"FROM exchanges e WHERE e.id = {r}.exchange_id"
    return _trigger(
        f"answer_{'counted' if sign > 0 else 'uncounted'}",
        when,
        "responses",
        f"{r}.role = 'primary' AND EXISTS (SELECT 1 {found})",
        (
            _answer_upsert(r, "e", found, sign, grouped=False),
            *_latency_upserts(r, "WHERE 1", sign, grouped=False),
        ),
    )


# Schema version 7 (see schema.MIGRATIONS): the tables, filled from the rows already there,
# and the triggers that keep them. Generated, but fixed once released: a change of what they
# count is a new migration that rebuilds them.
MIGRATION: Final = (
    *_TABLES,
    _exchange_upsert("e", "FROM exchanges e WHERE 1", 1, grouped=True),
    _answer_upsert("r", "e", _EVERY, 1, grouped=True),
    *_latency_upserts("r", _EVERY, 1, grouped=True),
    *_exchange_triggers("INSERT", "NEW", 1),
    *_exchange_triggers("DELETE", "OLD", -1),
    _answer_trigger("INSERT", "NEW", 1),
    _answer_trigger("DELETE", "OLD", -1),
    # The report's count of embeddings answers by dimension reads only the rows with one.
    "CREATE INDEX responses_embedding_dims ON responses(embedding_dims) "
    "WHERE embedding_dims IS NOT NULL",
)

# Minutes whose rows are all deleted, now zero: retention removes them with the rows, over
# the minutes (:first, :last) it deleted from. A latency bin at zero stays: there are at most
# a few thousand bins an upstream, however long the recording.
PRUNE: Final = tuple(
    f"DELETE FROM {table} WHERE minute BETWEEN :first AND :last AND n = 0"
    for table in ("exchange_minutes", "primary_minutes")
)
