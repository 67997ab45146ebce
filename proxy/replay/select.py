"""Which recorded exchanges a run replays: those whose request body was kept, that are safe to
send twice (the shadowing rule), that the candidate's API shape can take, and that no run has
replayed yet; each with what it will likely cost, from the recorded sizes.

`prepare` is pure but for the upstream's settings it reads; `found` reads the recording one row
at a time and keeps no bodies: a worker reads each body again when its turn comes.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

import aiosqlite
import orjson

from proxy.errors import ErrorAnswer
from proxy.record.answers import wants_json
from proxy.serve.originate import attempt
from proxy.serve.plan import Attempt
from proxy.serve.rewrite import USAGE_OPT_IN_PATHS
from proxy.serve.shadow import unrepeatable
from proxy.serve.upstream import UpstreamClient

# A token per 3 bytes of UTF-8 errs high (English runs at about 4 characters a token): the
# estimate guards a budget. The judge's estimate says the same.
BYTES_PER_TOKEN: Final = 3

# Why an exchange is not replayed, as the run says it.
NO_BODY: Final = "request body not kept (record.bodies.request is not full)"
OUTSIDE: Final = "a path outside /v1/"
UNSAFE: Final = (
    "not safe to send twice: not a POST, an object API, or naming a stored object "
    "(the shadowing rule)"
)
NOT_JSON: Final = "not a JSON body (a form or an upload)"
CANNOT: Final = "the candidate's API shape cannot take it"
REFUSED: Final = "the sidecar refused it: no upstream answered, nothing to compare with"
APP_LEFT: Final = "the app left before its answer: nothing to compare with"
RETRY: Final = "an SDK's retry of a call (its first attempt is replayed)"
REPLAYED: Final = "replayed before (one replay answer per exchange)"


@dataclass(frozen=True, slots=True)
class Candidate:
    """An exchange to replay, and the sizes its cost is estimated from."""

    exchange_id: str
    ts: float
    route: str
    model: str | None
    prompt_tokens: int  # the primary's, or the request's size in tokens
    completion_tokens: int  # the primary's, or its answer's size in tokens
    images: int  # in the primary's answer


@dataclass(frozen=True, slots=True)
class Selection:
    """What the command's filters ask for."""

    since: float | None = None
    route: str | None = None
    model: str | None = None
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Found:
    candidates: tuple[Candidate, ...]
    skipped: dict[str, int]  # by why
    seen: int  # exchanges in the window


def prepare(up: UpstreamClient, method: str, path: str, raw: bytes | None) -> Attempt | str:
    """The candidate's attempt at a recorded request, or why there is none. Usage is asked for
    on a stream the sidecar records, as for a shadow copy, so the report can count it."""
    if raw is None:
        return NO_BODY
    if not path.startswith("/v1/"):
        return OUTSIDE
    tail = path[3:]
    if unrepeatable(method, tail, raw):
        return UNSAFE
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return NOT_JSON
    if not isinstance(body, dict):
        return NOT_JSON
    opts = body.get("stream_options")
    asked = isinstance(opts, dict) and opts.get("include_usage") is True
    if body.get("stream") is True and tail in USAGE_OPT_IN_PATHS and up.inject_usage and not asked:
        body["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    try:
        at = attempt(up, method, tail, body, "replay")
    except ErrorAnswer:
        return CANNOT
    return at._replace(json_mode=wants_json(body))


def _tokens(size: int | None) -> int:
    return math.ceil((size or 0) / BYTES_PER_TOKEN)


_FOUND: Final = """
SELECT e.id, e.ts, e.route, e.model, e.method, e.path, e.request_body, e.retry_count,
  p.upstream, p.error_kind, p.prompt_tokens, p.completion_tokens, p.images, p.bytes,
  EXISTS (SELECT 1 FROM replays x WHERE x.exchange_id = e.id)
FROM exchanges e LEFT JOIN responses p ON p.exchange_id = e.id AND p.role = 'primary'
WHERE e.ts >= :since AND (:route IS NULL OR e.route = :route)
  AND (:model IS NULL OR e.model = :model)
ORDER BY e.ts, e.id"""


def classify(row: tuple[Any, ...], up: UpstreamClient) -> Candidate | str:
    """The candidate a row is, or why it is not replayed."""
    xid, ts, route, model, method, path, raw, retry, upstream, kind, p, c, images, size, done = row
    if done:
        return REPLAYED
    if upstream is None or upstream == "-":
        return REFUSED
    if kind == "client_disconnect":
        return APP_LEFT
    if retry:
        return RETRY
    prepared = prepare(up, str(method), str(path), raw)
    if isinstance(prepared, str):
        return prepared
    prompt = p if p is not None else _tokens(len(raw))
    completion = c if c is not None else _tokens(size)
    return Candidate(str(xid), float(ts), str(route), model, prompt, completion, images or 0)


async def found(db: aiosqlite.Connection, selection: Selection, up: UpstreamClient) -> Found:
    """The exchanges the selection names, sorted into candidates (oldest first, up to its
    limit) and skips."""
    params = {
        "since": -1e300 if selection.since is None else selection.since,
        "route": selection.route,
        "model": selection.model,
    }
    candidates: list[Candidate] = []
    skipped: Counter[str] = Counter()
    seen = 0
    async with db.execute(_FOUND, params) as cursor:
        while rows := await cursor.fetchmany(256):
            for row in rows:
                seen += 1
                kind = classify(tuple(row), up)
                if isinstance(kind, Candidate):
                    candidates.append(kind)
                else:
                    skipped[kind] += 1
    limit = selection.limit
    if limit is not None and len(candidates) > limit:
        skipped[f"beyond --limit {limit}"] = len(candidates) - limit
        candidates = candidates[:limit]
    return Found(tuple(candidates), dict(skipped), seen)


_BODY: Final = "SELECT method, path, request_body FROM exchanges WHERE id = ?"


async def attempt_for(db: aiosqlite.Connection, up: UpstreamClient, xid: str) -> Attempt | str:
    """A chosen exchange's attempt, its body read again now that its turn has come."""
    async with db.execute(_BODY, (xid,)) as cursor:
        row = await cursor.fetchone()
    if row is None:
        return "deleted from the recording since (retention)"
    return prepare(up, str(row[0]), str(row[1]), row[2])
