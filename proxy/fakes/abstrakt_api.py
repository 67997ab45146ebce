"""Abstrakt's image API as a fake serves it: `POST /v1/models/{model}/run` makes PNGs, handed
out as URLs the fake serves or inline as base64. Its errors name a code in the body, and a
client must read the code, not the status: `{"error": {"code": ..., "message": ...}}`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson

from proxy.fakes.answers import png, png_bytes
from proxy.fakes.api import Ask, Refusal, Stream, Style, data
from proxy.fakes.files import Files

DEFAULT_MODELS: Final = ("flux-schnell", "sdxl-turbo")
# The status each code comes with. A forced failure (`Behaviour(fail="error", error_status=...)`
# or the error rate) carries the code of its status: 429 is RATE_LIMITED, any other 4xx
# INVALID_INPUT, any 5xx MODEL_UNAVAILABLE.
STATUS: Final = {"RATE_LIMITED": 429, "INVALID_INPUT": 422, "MODEL_UNAVAILABLE": 503}
_PREFIX: Final = "/v1/models/"
_SUFFIX: Final = "/run"
_MAX_IMAGES: Final = 4
_SIDES: Final = (64, 2048)  # the smallest and largest width or height, in pixels


def _error(status: int, code: str, message: str) -> Refusal:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return Refusal(status, body, {"Retry-After": "1"} if code == "RATE_LIMITED" else {})


def _code(status: int) -> str:
    if status == 429:
        return "RATE_LIMITED"
    return "MODEL_UNAVAILABLE" if status >= 500 else "INVALID_INPUT"


class AbstraktApi:
    """The Abstrakt API of one fake: its models, its key, the runs and files it hands out."""

    def __init__(
        self,
        *,
        models: Sequence[str],
        api_key: str | None,
        next_id: Callable[[str], str],
        files: Files,
    ) -> None:
        self._auth = None if api_key is None else f"Bearer {api_key}"
        self._known = frozenset(models)
        self._next_id = next_id
        self._files = files
        self.paths: tuple[str, ...] = ()  # the one endpoint has the model in its path
        self.request_id_header = "x-request-id"

    # --- refusals the server asks for ---

    def unauthorized(self, headers: Mapping[str, str]) -> Refusal | None:
        if self._auth is None or headers.get("Authorization") == self._auth:
            return None
        return _error(401, "UNAUTHENTICATED", "Missing or invalid 'Authorization: Bearer' key.")

    def unreadable(self) -> Refusal:
        return self.bad_request("The body is not valid JSON.")

    def bad_request(self, message: str) -> Refusal:
        return _error(400, "INVALID_INPUT", message)

    def failure(self, status: int) -> Refusal:
        code = _code(status)
        messages = {
            "RATE_LIMITED": "Too many runs; retry after the time in Retry-After.",
            "MODEL_UNAVAILABLE": "The model cannot take runs right now.",
            "INVALID_INPUT": "The input was refused.",
        }
        return _error(status, code, messages[code])

    def stream_failure(self, status: int) -> bytes:
        return data(orjson.loads(self.failure(status).body))  # never sent: runs do not stream

    # --- the one endpoint ---

    def reply(self, ask: Ask, style: Style) -> bytes | Stream | Refusal:
        path = ask.path
        if ask.method != "POST" or not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
            return _error(404, "NOT_FOUND", f"No endpoint at {ask.method} {path}.")
        model = path[len(_PREFIX) : -len(_SUFFIX)]
        if model not in self._known:
            return _error(404, "MODEL_UNAVAILABLE", f"Model '{model}' is not available.")
        if not isinstance(ask.json, dict):
            return self.unreadable() if not ask.parsed else self.bad_request("Send an object.")
        run = ask.json.get("input")
        if not isinstance(run, dict):
            return _invalid("input must be an object.")
        return self._run(model, run, style)

    def _run(self, model: str, run: dict[str, Any], style: Style) -> bytes | Refusal:
        prompt, count = run.get("prompt"), run.get("num_images", 1)
        width, height = run.get("width", 1024), run.get("height", 1024)
        output = run.get("output_format", "url")
        if not isinstance(prompt, str) or not prompt.strip():
            return _invalid("input.prompt must be a non-empty string.")
        if not _whole(count) or not 1 <= count <= _MAX_IMAGES:
            return _invalid(f"input.num_images must be from 1 to {_MAX_IMAGES}.")
        low, high = _SIDES
        if not all(_whole(side) and low <= side <= high for side in (width, height)):
            return _invalid(f"input.width and input.height must be from {low} to {high}.")
        if output not in ("url", "base64"):
            return _invalid("input.output_format must be url or base64.")
        images = []
        for i in range(count):
            key = f"{style.variant}\0{model}\0{prompt}\0{width}x{height}\0{i}"
            where = {"b64": png(key)} if output == "base64" else {"url": self._publish(key)}
            images.append({**where, "width": width, "height": height})
        body = {
            "id": self._next_id("run_"),
            "model": model,
            "result": {"images": images},
            "usage": {"images": count},
        }
        return orjson.dumps(body)

    def _publish(self, key: str) -> str:
        return self._files.put(f"{self._next_id('img_')}.png", png_bytes(key), "image/png")


def _invalid(message: str) -> Refusal:
    return _error(STATUS["INVALID_INPUT"], "INVALID_INPUT", message)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
