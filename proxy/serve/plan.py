"""Plan: a call as one upstream is to get it (its path, body, key, model id), as an `Attempt`.

Pure: no I/O. Each upstream a call goes to (the one serving it, a shadow copy, the noise
copy) gets its own attempt, made from the same `Call`.
"""

from __future__ import annotations

from typing import NamedTuple

from multidict import CIMultiDict

from proxy.adapters import registry
from proxy.adapters.base import AppCall, Translation, Unsupported
from proxy.errors import BadRequest, NotImplementedHere
from proxy.record.rows import Reading, Role
from proxy.serve.affinity import creates, stores_completion
from proxy.serve.call import Call
from proxy.serve.rewrite import (
    USAGE_OPT_IN_PATHS,
    Unmap,
    id_unmapper,
    model_outside_body,
    model_unmapper,
    upstream_body,
)
from proxy.serve.upstream import UpstreamClient


class Attempt(NamedTuple):
    """One request to one upstream, and what its answer needs on the way back."""

    role: Role
    upstream: UpstreamClient
    method: str
    tail: str
    query: str
    headers: CIMultiDict[str]  # the call's, with the upstream's key and headers
    body: bytes
    model_sent: str | None
    json_mode: bool
    parse_stream: Reading  # how much of a streamed answer is parsed: a copy's, all of it
    strip_usage: bool  # the sidecar asked for the usage chunk: the app did not, and won't see it
    unmap: Unmap | None  # puts the app's model ids back where the answer names the upstream's
    learn: bool  # the answer names an object the app will name again (see `affinity`)
    translation: Translation | None  # the provider speaks another shape (see `proxy.adapters`)
    rooted: bool  # `tail` is a path from the upstream's origin, not from its base_url


def plan(call: Call, up: UpstreamClient, role: Role, reading: Reading) -> Attempt:
    """The attempt for `up`; `reading`: how much of the answer is read (a stream read at all
    is asked for its usage).

    Raises `ErrorAnswer` when `up` cannot take the call: its provider shape has no such
    call (501), or the call asks for what the shape cannot express (400).
    """
    try:
        translation = registry.translation(up.api, call.method, call.tail)
    except registry.CannotServe as e:
        raise NotImplementedHere(
            f"upstream {up.name!r} (api: {up.api}) cannot serve {e}; route this path to an "
            "upstream that can (routes: with a split and a primary of that shape)"
        ) from None
    if translation is not None:
        return _translated(call, up, role, translation)
    model, tail, body = call.model, call.tail, call.body
    moved: tuple[str, bytes, str] | None = None
    sent: str | None
    if model is not None:  # named in the path or a form field: mapped there
        moved = model_outside_body(up.models, tail, body, model, call.model_at)
    if moved is not None:
        tail, body, sent = moved
        strip = False
    else:
        # Usage is asked for only to be recorded or counted: otherwise the request goes as
        # sent, and the stream is relayed without being parsed at all.
        want_usage = reading != "none" and call.stream and tail in USAGE_OPT_IN_PATHS
        body, sent, strip = upstream_body(
            up.models, up.inject_usage, call.json, body, model, want_usage
        )
    headers = CIMultiDict(call.headers)
    headers.update(up.headers)
    primary = role == "primary"
    return Attempt(
        role,
        up,
        call.method,
        tail,
        call.query,
        headers,
        body,
        sent,
        call.json_mode,
        "all" if not primary else "counts" if strip and reading == "none" else reading,
        strip,
        _unmap(call, up, sent),
        primary and (creates(call.method, call.tail) or stores_completion(call.tail, call.json, call.body)),
        None,
        call.rooted,
    )  # fmt: skip


def _translated(call: Call, up: UpstreamClient, role: Role, translation: Translation) -> Attempt:
    """The attempt for an upstream of another shape: its request, made by the adapter."""
    model = call.model
    sent = up.models.get(model, model) if model is not None else None
    try:
        asked = translation.request(AppCall(call.method, call.tail, call.json, sent, call.stream))
    except Unsupported as e:
        raise BadRequest(
            f"upstream {up.name!r} (api: {up.api}) cannot take this call: {e}"
        ) from None
    headers = CIMultiDict(call.headers)
    headers.popall("content-type", None)
    headers["content-type"] = "application/json"
    for name, value in asked.headers.items():
        headers.setdefault(name, value)
    headers.update(up.headers)  # the upstream's own settings win over the adapter's defaults
    # The adapter's stream always carries usage; the app sees it only if it asked.
    opts = call.json.get("stream_options") if call.json is not None else None
    strip = call.stream and not (isinstance(opts, dict) and opts.get("include_usage") is True)
    return Attempt(
        role, up, asked.method, asked.tail, call.query, headers, asked.body, sent,
        call.json_mode, "all", strip, _unmap(call, up, sent), False, asked.answer or translation, False,
    )  # fmt: skip


def _unmap(call: Call, up: UpstreamClient, sent: str | None) -> Unmap | None:
    """The answer names the id the provider was sent; the app gets back the one it asked for."""
    model = call.model
    if call.method == "GET" and up.unmap_ids is not None:
        if call.tail == "/models":
            return up.unmap_ids  # the model list: ids as the app knows them
        if call.model_at == "path" and "/" not in call.tail[8:]:  # one model
            return id_unmapper(sent, model) if model and sent and sent != model else None
    if model is not None and sent is not None and sent != model:
        return model_unmapper(sent, model)
    return None
