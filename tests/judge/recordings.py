"""Recordings written row by row, for the tests that need a pair of a given kind: an error,
a path with no text, a body not kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from proxy.record.rows import Exchange, Response
from proxy.record.schema import MIGRATIONS, SCHEMA_VERSION

T0 = 1_700_000_000.0


def request_body(question: str) -> bytes:
    return orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}
    )


def chat_body(text: str) -> bytes:
    message = {"role": "assistant", "content": text}
    return orjson.dumps(
        {"id": "chatcmpl-1", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    )


def exchange(
    xid: str,
    *,
    ts: float = T0,
    route: str = "default",
    model: str | None = "gpt-4o-mini",
    path: str = "/v1/chat/completions",
    body: bytes | None = None,
) -> Exchange:
    return Exchange(
        xid, ts, route, "POST", path, model, False, "r1", None,
        request_body(f"question {xid}") if body is None else body or None, None,
    )  # fmt: skip


def response(
    xid: str,
    role: str = "primary",
    upstream: str = "old",
    *,
    status: int = 200,
    body: bytes | None = None,
) -> Response:
    error = None if status < 400 else "http_5xx"
    kept = chat_body(f"answer to {xid}") if body is None else body or None
    return Response(
        xid, role, upstream, None, T0, status, error, None, 1.0, None, 2.0, 10,  # type: ignore[arg-type]
        1, 1, 2, "stop", None, "s", None, None, None, kept, None,
    )  # fmt: skip


def write(path: Path, exchanges: list[Exchange], responses: list[Response]) -> Path:
    con = sqlite3.connect(path)
    try:
        for migration in MIGRATIONS:
            for statement in migration:
                con.execute(statement)
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.executemany(f"INSERT INTO exchanges VALUES ({','.join('?' * 13)})", exchanges)
        con.executemany(f"INSERT INTO responses VALUES ({','.join('?' * 26)})", responses)
        con.commit()
    finally:
        con.close()
    return path


def pair(xid: str, role: str = "shadow", **exchange_kw: object) -> tuple[Exchange, list[Response]]:
    upstream = "new" if role == "shadow" else "old"
    return exchange(xid, **exchange_kw), [response(xid), response(xid, role, upstream)]  # type: ignore[arg-type]
