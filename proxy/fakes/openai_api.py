"""OpenAI's API as a fake serves it: which request goes to which reply in `replies` (and video
jobs in `videos`), and OpenAI's refusals (401, 404, 400) in OpenAI's words."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeAlias

import orjson

from proxy.fakes import replies
from proxy.fakes.api import Ask, Body, Refusal, Stream, Style, data
from proxy.fakes.files import Files
from proxy.fakes.replies import Invalid, Reply, error_body, model_bodies, status_error
from proxy.fakes.videos import DEFAULT_MODEL, Videos, form_fields

# An endpoint: the request's JSON object, its model and the style in force, to a reply.
_Answer: TypeAlias = Reply | Refusal
_Endpoint = Callable[[dict[str, Any], str, Style], _Answer]

DEFAULT_MODELS: Final = ("gpt-4o-mini", "text-embedding-3-small")
_MODELS: Final = "/v1/models"
_MODEL: Final = "/v1/models/"
_IMAGES: Final = "/v1/images/generations"
_VIDEOS: Final = "/v1/videos"
_VIDEO: Final = "/v1/videos/"
# The endpoints that let the provider pick the model when the request names none.
_DEFAULT_MODEL: Final = {
    _IMAGES: "",
    _VIDEOS: DEFAULT_MODEL,
    "/v1/moderations": "omni-moderation-latest",
}
_TOOLS: Final = ("/v1/chat/completions", "/v1/responses")
_UNPARSEABLE: Final = "We could not parse the JSON body of your request."
# How many response ids a fake remembers for `previous_response_id`; OpenAI keeps 30 days'.
_KEEP_RESPONSES: Final = 100_000


def _refusal(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> Refusal:
    return Refusal(status, error_body(message, "invalid_request_error", code, param))


def _no_model(model: str) -> Refusal:
    message = f"The model `{model}` does not exist or you do not have access to it."
    return _refusal(404, message, "model_not_found", "model")


class OpenAiApi:
    """The OpenAI API of one fake: its models, its key, and the ids and objects it hands out."""

    def __init__(
        self,
        *,
        owner: str,
        models: Sequence[str],
        api_key: str | None,
        next_id: Callable[[str], str],
        files: Files | None = None,
    ) -> None:
        self._auth = None if api_key is None else f"Bearer {api_key}"
        self._known = frozenset(models)
        self._models_body, self._model_bodies = model_bodies(models, owner)
        # The clock, the ids, the files served and what `previous_response_id` and the video
        # endpoints look up are the only state the replies take.
        self._next_id = next_id
        self._files = files or Files()
        self._videos = Videos(next_id=next_id)
        self._responses_made: dict[str, None] = {}  # an ordered set: the oldest goes first
        self._posts: dict[str, _Endpoint] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/responses": self._responses,
            "/v1/embeddings": self._embeddings,
            "/v1/moderations": self._moderations,
            _IMAGES: self._images,
            _VIDEOS: self._video,
        }
        self.paths: tuple[str, ...] = (*self._posts, _MODELS)
        self.request_id_header = "x-request-id"

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

    def stream_failure(self, status: int) -> bytes:
        # OpenAI breaks off a stream with an error object in a data line.
        body, _ = status_error(status)
        return data(orjson.loads(body))

    # --- routing ---

    def reply(self, ask: Ask, style: Style) -> bytes | Body | Stream | Refusal:
        method, path = ask.method, ask.path
        if method == "GET":
            got = self._get(path)
            if got is not None:
                return got
        endpoint, model_in_path = self._endpoint(method, path)
        if endpoint is None:
            return _refusal(404, f"Invalid URL ({method} {path})")
        body = form_fields(ask) if path == _VIDEOS else ask.json
        if not isinstance(body, dict):
            if ask.parsed:
                return self.bad_request("The request body must be a JSON object.")
            return self.unreadable()
        model = self._model(body, path, model_in_path)
        if isinstance(model, Refusal):
            return model
        if style.refuse_tools and path in _TOOLS and body.get("tools"):
            return _refusal(400, "Function calling is not supported yet", param="tools")
        reply = endpoint(body, model, style)
        if isinstance(reply, Invalid):
            return _refusal(400, reply.message, param=reply.param)
        return reply

    def _get(self, path: str) -> bytes | Body | Refusal | None:
        """A GET's answer; None for a path no GET is served at."""
        if path == _MODELS:
            return self._models_body
        if path.startswith(_MODEL):
            wanted = path.removeprefix(_MODEL)
            return self._model_bodies.get(wanted) or _no_model(wanted)
        if path.startswith(_VIDEO):
            video_id, _, rest = path.removeprefix(_VIDEO).partition("/")
            if not rest:
                return self._videos.retrieve(video_id)
            if rest == "content":
                return self._videos.content(video_id)
        return None

    def _endpoint(self, method: str, path: str) -> tuple[_Endpoint | None, str | None]:
        """The endpoint for a POST, and the model when the path names it."""
        if method != "POST":
            return None, None
        if path.startswith(_MODEL) and path.endswith("/run"):
            return self._run, path[len(_MODEL) : -len("/run")]
        return self._posts.get(path), None

    def _model(self, body: dict[str, Any], path: str, in_path: str | None) -> str | Refusal:
        model: Any = in_path if in_path is not None else body.get("model")
        if model is None and path in _DEFAULT_MODEL:
            return _DEFAULT_MODEL[path]  # these APIs let the provider pick a default model
        if not isinstance(model, str):
            return _refusal(400, "You must provide a model parameter.", param="model")
        if model not in self._known:
            return _no_model(model)
        return model

    # --- what the replies remember ---

    def _remembered(self, prefix: str) -> str:
        """A new id, remembered when it names a response that a later one may continue."""
        made = self._next_id(prefix)
        if prefix == "resp_":
            if len(self._responses_made) >= _KEEP_RESPONSES:
                del self._responses_made[next(iter(self._responses_made))]
            self._responses_made[made] = None
        return made

    def _publish_png(self, png: bytes) -> str:
        return self._files.put(f"{self._next_id('img_')}.png", png, "image/png")

    # --- endpoints ---

    def _chat(self, body: dict[str, Any], model: str, style: Style) -> _Answer:
        return replies.chat(body, model, style, created=int(time.time()), next_id=self._next_id)

    def _completions(self, body: dict[str, Any], model: str, style: Style) -> _Answer:
        return replies.completions(
            body, model, style, created=int(time.time()), next_id=self._next_id
        )

    def _responses(self, body: dict[str, Any], model: str, style: Style) -> _Answer:
        previous = body.get("previous_response_id")
        if isinstance(previous, str) and previous not in self._responses_made:
            message = f"Previous response with id '{previous}' not found."
            code, param = "previous_response_not_found", "previous_response_id"
            return _refusal(404, message, code, param)
        return replies.responses(
            body, model, style, created=int(time.time()), next_id=self._remembered
        )

    def _embeddings(self, body: dict[str, Any], model: str, style: Style) -> _Answer:
        return replies.embeddings(body, model, style)

    def _moderations(self, body: dict[str, Any], model: str, style: Style) -> _Answer:
        return replies.moderations(body, model, next_id=self._next_id)

    def _images(self, body: dict[str, Any], model: str, style: Style) -> _Answer:
        return replies.images(
            body, model, style, created=int(time.time()), publish=self._publish_png
        )

    def _video(self, body: dict[str, Any], model: str, style: Style) -> _Answer:
        return self._videos.create(body, model, int(time.time()))

    def _run(self, body: dict[str, Any], model: str, style: Style) -> _Answer:
        # Not OpenAI's: an image API the sidecar must pass through untouched, kept on this fake
        # for the routes that name a model in the path (`abstrakt_api.py` is that API's shape).
        return replies.run(body, model, style, latency=style.latency)
