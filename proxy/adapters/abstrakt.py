"""Abstrakt's image API: `images.generate` asked of `POST {base_url}/models/{model}/run`.

The app's `POST /v1/images/generations` body maps as: `prompt` to `input.prompt`; `n` to
`input.num_images`; `size` ("1024x1792") to `input.width` and `input.height`;
`response_format: b64_json` to `input.output_format: "base64"` (else "url"); `quality`,
`style` and `user` are not sent; the model is the upstream's id for it (its `models:` map).
The answer's `result.images` become OpenAI's `data` (`url`, or `b64_json`), with `created`;
an image given only as a URL to an app that asked for `b64_json` is fetched (see `_Inline`).
Errors are read from the code in the body, whatever the HTTP status: `RATE_LIMITED` is a 429
(its `Retry-After` kept), `INVALID_INPUT` a 400, `MODEL_UNAVAILABLE` a 503, anything else a
502 naming the code.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Any, Final
from urllib.parse import quote

import orjson

from proxy.adapters.base import AppAnswer, AppCall, ProviderCall, Unsupported, loads, openai_error
from proxy.sse import Event

_CODES: Final = {
    "RATE_LIMITED": (429, "rate_limit_error"),
    "INVALID_INPUT": (400, "invalid_request_error"),
    "MODEL_UNAVAILABLE": (503, "server_error"),
}


class ImagesToRun:
    """One image generation call."""

    def request(self, call: AppCall) -> ProviderCall:
        body = call.json
        if body is None or not isinstance(body.get("prompt"), str):
            raise Unsupported("an image generation needs a JSON body with a `prompt`")
        if not call.model:
            raise Unsupported("an image generation for Abstrakt needs a `model`")
        data: dict[str, Any] = {"prompt": body["prompt"]}
        n = body.get("n")
        if n is not None:
            data["num_images"] = n
        size = body.get("size")
        if isinstance(size, str) and "x" in size:
            w, _, h = size.partition("x")
            if w.isdigit() and h.isdigit():
                data["width"], data["height"] = int(w), int(h)
        b64 = body.get("response_format") == "b64_json"
        data["output_format"] = "base64" if b64 else "url"
        tail = f"/models/{quote(call.model, safe='')}/run"
        answer = _INLINE if b64 else None
        return ProviderCall("POST", tail, orjson.dumps({"input": data}), answer=answer)

    def answer(self, status: int, body: bytes, headers: dict[str, str]) -> AppAnswer:
        obj = loads(body)
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict) or status >= 400 or not isinstance(obj, dict):
            return _error(status, err, headers)
        images = (obj.get("result") or {}).get("images") or []
        data = []
        for image in images:
            if image.get("b64"):
                data.append({"b64_json": image["b64"]})
            elif image.get("url"):
                data.append({"url": image["url"]})
        out = {"created": int(time.time()), "data": data}
        return AppAnswer(200, orjson.dumps(out))

    def stream(self) -> _NoStream:
        return _NoStream()


def _error(status: int, err: Any, headers: dict[str, str]) -> AppAnswer:
    code = str(err.get("code")) if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    mapped, kind = _CODES.get(code or "", (502, "upstream_error"))
    if code is None:
        mapped = status if status >= 400 else 502
        kind = "server_error" if mapped >= 500 else "invalid_request_error"
    text = str(message or f"the Abstrakt-shaped upstream answered {status} ({code or 'no code'})")
    answer = openai_error(mapped, text, kind, (code or "upstream_error").lower())
    kept = {k: v for k, v in headers.items() if k.lower() == "retry-after"}
    return AppAnswer(answer.status, answer.body, kept)


class _Inline(ImagesToRun):
    """The answer to a call that asked for `b64_json`: an image the provider gave only as a
    URL is fetched, and handed to the app inline."""

    def answer(self, status: int, body: bytes, headers: dict[str, str]) -> AppAnswer:
        answer = super().answer(status, body, headers)
        if answer.status != 200:
            return answer
        data = orjson.loads(answer.body)["data"]
        urls = tuple(image["url"] for image in data if "url" in image)
        if not urls:
            return answer
        return replace(answer, fetch=urls, complete=partial(_inlined, data))


def _inlined(data: list[dict[str, str]], fetched: Mapping[str, bytes]) -> AppAnswer:
    images = [
        {"b64_json": base64.b64encode(fetched[i["url"]]).decode()} if "url" in i else i
        for i in data
    ]
    return AppAnswer(200, orjson.dumps({"created": int(time.time()), "data": images}))


_INLINE: Final = _Inline()


class _NoStream:
    """Image runs answer whole; an event stream from one is passed on as it is."""

    def event(self, ev: Event) -> list[Event]:
        return [ev]

    def end(self) -> list[Event]:
        return []
