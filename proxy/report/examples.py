"""Pairs worth a look, with both answers side by side: status, shape and tool-call mismatches
(a shape mismatch with the JSON paths where the answers part), and the least similar texts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import orjson

from proxy.record.answers import answer_of, shape_paths, similarity
from proxy.report.data import Example, Reason, Side
from proxy.report.figures import PairSums
from proxy.report.sql import PAIR_ROWS, Reading

SIMILARITY_SAMPLE: Final = 2_000  # pairs: similarity runs in Python, ~1 ms a pair
EXAMPLES_PER_REASON: Final = 5
EXAMPLE_CHARS: Final = 1_500
MAX_PATHS: Final = 8  # differing JSON paths shown per shape example


def pair_rows(db: Reading, rowids: Iterable[int]) -> list[Any]:
    return db.con.execute(PAIR_ROWS, {"rowids": orjson.dumps(list(rowids)).decode()}).fetchall()


def _by_source(wanted: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for source, rowid in wanted:
        found.setdefault(source, []).append(rowid)
    return found


def similarities(dbs: Sequence[Reading], raw: PairSums) -> list[tuple[float, int, int]]:
    """(score, recording, rowid) over an evenly spread sample of the pairs with both bodies."""
    eligible = sorted(raw.bodies)
    step = max(len(eligible) / SIMILARITY_SAMPLE, 1.0)
    sample = [eligible[int(i * step)] for i in range(min(len(eligible), SIMILARITY_SAMPLE))]
    scores = []
    for source, rowids in _by_source(sample).items():
        for row in pair_rows(dbs[source], rowids):
            a, b = _answer_text(row[13], row[5]), _answer_text(row[20], row[5])
            if a is None or b is None:
                continue
            scores.append((1.0 if row[6] else similarity(a, b), source, row[0]))
    return scores


def examples(
    dbs: Sequence[Reading], raw: PairSums, scores: list[tuple[float, int, int]]
) -> list[Example]:
    wanted: list[tuple[Reason, int, int, float | None]] = []
    reasons: tuple[Reason, ...] = ("status", "shape", "tool_calls")
    for reason in reasons:
        wanted += [(reason, s, i, None) for s, kept in raw.examples[reason].items() for i in kept]
    lowest = sorted(s for s in scores if s[0] < 1.0)[:EXAMPLES_PER_REASON]
    wanted += [("similarity", source, rowid, score) for score, source, rowid in lowest]
    rows = {
        (source, row[0]): row
        for source, rowids in _by_source((w[1], w[2]) for w in wanted).items()
        for row in pair_rows(dbs[source], set(rowids))
    }
    found: list[tuple[Reason, float | None, Any]] = [
        (reason, score, rows[(source, rowid)])
        for reason, source, rowid, score in wanted
        if (source, rowid) in rows
    ]
    out = []
    for reason in (*reasons, "similarity"):
        mine = [f for f in found if f[0] == reason]
        if reason != "similarity":
            # the most recent mismatches, whichever recording holds them
            mine = sorted(mine, key=lambda f: f[2][2])[-EXAMPLES_PER_REASON:]
        out += [_example(reason, score, row) for reason, score, row in mine]
    return out


def _example(reason: Reason, score: float | None, row: Any) -> Example:
    stream = bool(row[5])
    return Example(
        reason=reason,
        exchange_id=row[1],
        ts=row[2],
        route=row[3],
        model=row[4],
        stream=stream,
        similarity=score,
        primary=_side(row[7:14], stream),
        other=_side(row[14:21], stream),
        paths=shape_difference(row[13], row[20]) if reason == "shape" else (),
    )


def shape_difference(primary: bytes | str | None, copy: bytes | str | None) -> tuple[str, ...]:
    """Where two recorded answers' shapes part, one line per JSON path: only in one of them
    (a missing subtree named once, at its root), or of another type or value. Empty when a
    body was not recorded."""
    a, b = _parsed(primary), _parsed(copy)
    if a is None or b is None:
        return ()
    left, right = shape_paths(a), shape_paths(b)
    out: list[str] = []
    for path in sorted(left.keys() | right.keys()):
        x, y = left.get(path), right.get(path)
        if x == y:
            continue
        if x is not None and y is not None:
            out.append(f"{path}: {x} in the primary, {y} in the copy")
            continue
        side, other = ("primary", right) if y is None else ("copy", left)
        root = _absent_root(path, other)
        line = f"{root}: only in the {side}"
        if root == path:
            line += f" ({x if y is None else y})"
        if line not in out:
            out.append(line)
    return tuple(out[:MAX_PATHS]) + (
        (f"... {len(out) - MAX_PATHS} more",) if len(out) > MAX_PATHS else ()
    )


def _absent_root(path: str, other: dict[str, str]) -> str:
    """The shortest ancestor of `path` with nothing under it in `other`."""
    parts = path.split(".")
    for k in range(1, len(parts) + 1):
        root = ".".join(parts[:k])
        bare = root.removesuffix("[]")
        if not any(p == bare or p.startswith((bare + ".", bare + "[]")) for p in other):
            return root if root == path else bare
    return path


def _parsed(body: bytes | str | None) -> Any:
    if body is None:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _answer_text(body: bytes | str | None, stream: int) -> str | None:
    parsed = _parsed(body)
    if parsed is None:
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
