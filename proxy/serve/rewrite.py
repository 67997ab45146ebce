"""Pure rewrites of a request for one upstream: its model id (body or path) and usage opt-in."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import quote, unquote

import orjson

# Streams on these paths carry usage only when asked with stream_options.include_usage.
USAGE_OPT_IN_PATHS = frozenset({"/chat/completions", "/completions"})


def path_model(tail: str) -> str | None:
    """`/models/{model}` and `/models/{model}/run`: APIs that carry the model in the path."""
    if tail.startswith("/models/"):
        seg = tail[8:].split("/", 1)[0]
        return unquote(seg) if seg else None
    return None


# Where a request names its model: its JSON body, its path (`/models/{model}/...`), or the
# (start, end) of the `model` field's value in a multipart/form-data body (audio uploads).
ModelAt = Literal["body", "path"] | tuple[int, int]

_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^\s;]+))', re.IGNORECASE)
# The part's Content-Disposition names the field `model`; `filename="model"` does not count.
_MODEL_PART = re.compile(rb'(?im)^content-disposition:[^\r\n]*;\s*name="?model"?\s*(?:;|$)')


def multipart_model(content_type: str, body: bytes) -> tuple[str, tuple[int, int]] | None:
    """The `model` form field of a multipart/form-data body, and where its value lies.

    Only the part boundaries and headers are searched (memchr speed over a large file part);
    nothing is decoded or copied. None when the body has no such field or is malformed.
    """
    m = _BOUNDARY.search(content_type)
    if m is None:
        return None
    delim = b"\r\n--" + (m.group(1) or m.group(2)).encode("latin-1")
    # The first boundary may open the body without a CRLF before it.
    pos = 0 if body.startswith(delim[2:]) else body.find(delim)
    while pos != -1:
        pos = body.find(b"\n", pos + 2)  # the end of the boundary line
        head_end = body.find(b"\r\n\r\n", pos) if pos != -1 else -1
        if head_end == -1:
            return None
        start = head_end + 4
        end = body.find(delim, start)
        if end == -1:
            return None
        if _MODEL_PART.search(body, pos, head_end + 2):
            try:
                return body[start:end].decode(), (start, end)
            except UnicodeDecodeError:
                return None
        pos = end + 2
    return None


def rewrite_path_model(tail: str, mapped: str) -> str:
    rest = tail[8:].split("/", 1)
    return "/models/" + quote(mapped, safe="") + ("/" + rest[1] if len(rest) > 1 else "")


def upstream_body(
    models: Mapping[str, str],
    inject_usage: bool,
    obj: dict[str, Any] | None,
    raw: bytes,
    model: str | None,
    want_usage: bool,
) -> tuple[bytes, str | None, bool]:
    """The body for one upstream: its model id, and usage asked for on streams.

    Returns (body, model sent, whether the usage-only chunk must be stripped again).
    Without a change the app's bytes go out untouched.
    """
    if obj is None:
        return raw, model, False
    changes: dict[str, Any] = {}
    sent = model
    if model is not None and model in models:
        sent = models[model]
        changes["model"] = sent
    strip = False
    if want_usage and inject_usage:
        opts = obj.get("stream_options")
        if not (isinstance(opts, dict) and opts.get("include_usage")):
            changes["stream_options"] = {
                **(opts if isinstance(opts, dict) else {}),
                "include_usage": True,
            }
            strip = True
    if not changes:
        return raw, sent, False
    return orjson.dumps({**obj, **changes}), sent, strip


def model_outside_body(
    models: Mapping[str, str], tail: str, raw: bytes, model: str, at: ModelAt
) -> tuple[str, bytes, str] | None:
    """(path tail, body, model sent) when the model is named in the path or a form field and
    the upstream has its own id for it; None otherwise."""
    if at == "body" or model not in models:
        return None
    mapped = models[model]
    if at == "path":
        return rewrite_path_model(tail, mapped), raw, mapped
    start, end = at
    return tail, raw[:start] + mapped.encode() + raw[end:], mapped


Unmap = Callable[[bytes], bytes]


@lru_cache(maxsize=256)
def model_unmapper(sent: str, asked: str) -> Unmap:
    """Puts the app's model id back where the answer names the one the sidecar sent.

    Only a `"model": "<sent>"` member changes (at any depth: the Responses API nests one): in
    JSON a quoted key can't occur inside a string, where its quotes would be escaped, so the
    pattern never touches text. An answer that names another id (a dated version, say) keeps
    it, as the app would see it from that provider directly.
    """
    quoted = orjson.dumps(sent)
    pattern = re.compile(rb'("model"\s*:\s*)' + re.escape(quoted))
    replacement = rb"\g<1>" + orjson.dumps(asked).replace(b"\\", b"\\\\")
    bare = quoted[1:-1]  # a memmem test before the regex: most reads don't name the model

    def unmap(data: bytes) -> bytes:
        return pattern.sub(replacement, data) if bare in data else data

    return unmap


def model_id_unmapper(models: Mapping[str, str]) -> Unmap | None:
    """The model list (`GET /models`) of an upstream with its own ids names every id the app
    may ask for: an entry whose id the map reaches is given once per app id that maps to it
    (`gpt-4` and `gpt-4-turbo` both to `llama-3.3-70b`: two entries), the provider's other
    models keep their ids. An answer that is not a JSON list goes back as it came.
    """
    back: dict[str, list[str]] = {}
    for asked, sent in models.items():
        back.setdefault(sent, []).append(asked)
    if not back:
        return None

    def unmap(data: bytes) -> bytes:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
        entries = obj.get("data") if isinstance(obj, dict) else None
        if not isinstance(entries, list):
            return data
        out: list[Any] = []
        for entry in entries:
            ids = back.get(str(entry.get("id"))) if isinstance(entry, dict) else None
            out.extend([{**entry, "id": asked} for asked in ids] if ids else [entry])
        return orjson.dumps({**obj, "data": out})

    return unmap


@lru_cache(maxsize=256)
def id_unmapper(sent: str, asked: str) -> Unmap:
    """One model object (`GET /models/{model}`) names the id the app asked for."""
    quoted = orjson.dumps(sent)
    pattern = re.compile(rb'("id"\s*:\s*)' + re.escape(quoted))
    replacement = rb"\g<1>" + orjson.dumps(asked).replace(b"\\", b"\\\\")

    def unmap(data: bytes) -> bytes:
        return pattern.sub(replacement, data)

    return unmap
