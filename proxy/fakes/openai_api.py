"""OpenAI's API as a fake serves it: which request goes to which reply in `replies`, and
OpenAI's refusals (401, 404, 400) in OpenAI's words."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from proxy.fakes import replies
from proxy.fakes.api import Ask, Refusal, Stream, Style
from proxy.fakes.replies import Invalid, Reply, error_body, model_bodies, status_error

# An endpoint: the request's JSON object, its model and the style in force, to a reply.
_Endpoint = Callable[[dict[str, Any], str, Style], Reply]

_MODELS: Final = "/v1/models"
_MODEL: Final = "/v1/models/"
_IMAGES: Final = "/v1/images/generations"
_UNPARSEABLE: Final = "We could not parse the JSON body of your request."


def _refusal(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> Refusal:
    return Refusal(status, error_body(message, "invalid_request_error", code, param))


def _no_model(model: str) -> Refusal:
    message = f"The model `{model}` does not exist or you do not have access to it."
    return _refusal(404, message, "model_not_found", "model")


class OpenAiApi:
    """The OpenAI API of one fake: its models, its key, and the ids it hands out."""

    def __init__(
        self,
        *,
        owner: str,
        models: Sequence[str],
        api_key: str | None,
        next_id: Callable[[str], str],
    ) -> None:
        self._auth = None if api_key is None else f"Bearer {api_key}"
        self._known = frozenset(models)
        self._models_body, self._model_bodies = model_bodies(models, owner)
        # The clock and the ids are the only state the replies take.
        self._next_id = next_id
        self._posts: dict[str, _Endpoint] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/responses": self._responses,
            "/v1/embeddings": self._embeddings,
            _IMAGES: self._images,
        }
        self.paths: tuple[str, ...] = (*self._posts, _MODELS)

    # --- refusals the server asks for ---

    def unauthorized(self, headers: Mapping[str, str]) -> Refusal | None:
        if self._auth is None or headers.get("Authorization") == self._auth:
            return None
        message = (
            "Incorrect API key provided."
            if "Authorization" in headers
            else "You didn't provide an API key. Provide it as 'Authorization: Bearer <key>'."
        )
        return _refusal(401, message, "invalid_api_key")

    def unreadable(self) -> Refusal:
        return self.bad_request(_UNPARSEABLE)

    def bad_request(self, message: str) -> Refusal:
        return _refusal(400, message)

    def failure(self, status: int) -> Refusal:
        body, headers = status_error(status)
        return Refusal(status, body, headers)

    # --- routing ---

    def reply(self, ask: Ask, style: Style) -> bytes | Stream | Refusal:
        method, path = ask.method, ask.path
        if method == "GET" and path == _MODELS:
            return self._models_body
        if method == "GET" and path.startswith(_MODEL):
            wanted = path.removeprefix(_MODEL)
            return self._model_bodies.get(wanted) or _no_model(wanted)
        endpoint, model_in_path = self._endpoint(method, path)
        if endpoint is None:
            return _refusal(404, f"Invalid URL ({method} {path})")
        if not isinstance(ask.json, dict):
            if ask.parsed:
                return self.bad_request("The request body must be a JSON object.")
            return self.unreadable()
        model = self._model(ask.json, path, model_in_path)
        if isinstance(model, Refusal):
            return model
        reply = endpoint(ask.json, model, style)
        if isinstance(reply, Invalid):
            return _refusal(400, reply.message, param=reply.param)
        return reply

    def _endpoint(self, method: str, path: str) -> tuple[_Endpoint | None, str | None]:
        """The endpoint for a POST, and the model when the path names it."""
        if method != "POST":
            return None, None
        if path.startswith(_MODEL) and path.endswith("/run"):
            return self._run, path[len(_MODEL) : -len("/run")]
        return self._posts.get(path), None

    def _model(self, body: dict[str, Any], path: str, in_path: str | None) -> str | Refusal:
        model: Any = in_path if in_path is not None else body.get("model")
        if model is None and path == _IMAGES:
            return ""  # the images API lets the provider pick a default model
        if not isinstance(model, str):
            return _refusal(400, "You must provide a model parameter.", param="model")
        if model not in self._known:
            return _no_model(model)
        return model

    # --- endpoints ---

    def _chat(self, body: dict[str, Any], model: str, style: Style) -> Reply:
        return replies.chat(body, model, style, created=int(time.time()), next_id=self._next_id)

    def _completions(self, body: dict[str, Any], model: str, style: Style) -> Reply:
        return replies.completions(
            body, model, style, created=int(time.time()), next_id=self._next_id
        )

    def _responses(self, body: dict[str, Any], model: str, style: Style) -> Reply:
        return replies.responses(
            body, model, style, created=int(time.time()), next_id=self._next_id
        )

    def _embeddings(self, body: dict[str, Any], model: str, style: Style) -> Reply:
        return replies.embeddings(body, model, style)

    def _images(self, body: dict[str, Any], model: str, style: Style) -> Reply:
        return replies.images(body, model, style, created=int(time.time()))

    def _run(self, body: dict[str, Any], model: str, style: Style) -> Reply:
        # Not OpenAI's: an image API the sidecar must pass through untouched, kept on this fake
        # until an own shape serves it.
        return replies.run(body, model, style, latency=style.latency)
