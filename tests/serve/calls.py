"""Calls and runtimes built from config text, for testing the pipeline's steps without sockets."""

from __future__ import annotations

import time
from typing import Any

import orjson
from multidict import CIMultiDict

from proxy import config as config_mod
from proxy.record import answers
from proxy.serve.call import Arrival, Call
from proxy.serve.rewrite import ModelAt
from proxy.serve.runtime import Live, Runtime

CONFIG = b"""
upstreams:
  old: {base_url: "http://127.0.0.1:1/v1", api_key: sk-old-provider-key-000}
  new:
    base_url: "http://127.0.0.1:2/v1"
    api_key: sk-new-provider-key-111
    models: {gpt-4o-mini: prov/gpt-4o-mini}
primary: old
split: {old: 50, new: 50}
sticky: {header: x-user}
record: {enabled: true, path: unused.db}
"""


def runtime(text: bytes = CONFIG) -> Runtime:
    """The compiled config, as the request path reads it; opens nothing."""
    cfg = config_mod.parse(text, "config.yaml", env={})
    return Live(cfg, config_mod.digest(text), "config.yaml").current


def make_call(
    rt: Runtime,
    *,
    method: str = "POST",
    tail: str = "/chat/completions",
    body: dict[str, Any] | bytes | None = None,
    sticky: str | None = None,
    headers: dict[str, str] | None = None,
    model: str | None = None,
    model_at: ModelAt = "body",
) -> Call:
    """A call as `read_call` would make it from such a request."""
    obj = body if isinstance(body, dict) else None
    raw = orjson.dumps(body) if obj is not None else (body or b"")
    if model is None and obj is not None:
        model = obj.get("model")
    path = "/v1" + tail
    return Call(
        Arrival("req_test", time.time(), time.perf_counter(), rt),
        method,
        path,
        tail,
        "",
        CIMultiDict(headers or {}),
        raw,  # type: ignore[arg-type]
        obj,
        model,
        model_at,
        obj is not None and obj.get("stream") is True,
        obj is not None and answers.wants_json(obj),
        sticky,
        rt.table.match(path, model),
        True,
        False,
    )
