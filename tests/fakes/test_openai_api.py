"""OpenAI's API shape for the fakes, as plain calls: which request reaches which reply, and
what is refused in OpenAI's words. No server, no sockets."""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from proxy.fakes.api import Ask, Refusal
from proxy.fakes.openai_api import OpenAiApi
from proxy.fakes.provider import Behaviour

MODELS = ("gpt-4o-mini", "flux")


def api(key: str | None = "sk-k") -> OpenAiApi:
    count = itertools.count(1)
    return OpenAiApi(
        owner="fake", models=MODELS, api_key=key, next_id=lambda p: f"{p}{next(count)}"
    )


def post(path: str, body: Any) -> Ask:
    return Ask("POST", path, body, parsed=True)


def error(got: object) -> tuple[int, Any]:
    assert isinstance(got, Refusal)
    return got.status, orjson.loads(got.body)["error"]


def test_a_missing_or_wrong_key_is_refused_with_a_401() -> None:
    status, missing = error(api().unauthorized({}))
    assert status == 401 and "didn't provide an API key" in missing["message"]
    status, wrong = error(api().unauthorized({"Authorization": "Bearer sk-other"}))
    assert status == 401 and wrong["code"] == "invalid_api_key"
    assert api().unauthorized({"Authorization": "Bearer sk-k"}) is None
    assert api(None).unauthorized({}) is None


def test_unknown_paths_and_methods_are_a_404_naming_the_request() -> None:
    for ask in (post("/v1/nope", {}), Ask("GET", "/v1/chat/completions", None, parsed=False)):
        status, body = error(api().reply(ask, Behaviour()))
        assert status == 404 and body["message"] == f"Invalid URL ({ask.method} {ask.path})"


def test_a_body_that_is_not_a_json_object_is_a_400() -> None:
    _, unparsed = error(api().reply(Ask("POST", "/v1/embeddings", None, False), Behaviour()))
    _, listed = error(api().reply(post("/v1/embeddings", [1]), Behaviour()))
    assert "could not parse" in unparsed["message"] and "JSON object" in listed["message"]


def test_the_model_is_checked_before_the_endpoint_runs() -> None:
    status, missing = error(api().reply(post("/v1/embeddings", {"input": "x"}), Behaviour()))
    assert status == 400 and missing["param"] == "model"
    status, unknown = error(api().reply(post("/v1/embeddings", {"model": "x"}), Behaviour()))
    assert status == 404 and unknown["code"] == "model_not_found"
    status, invalid = error(api().reply(post("/v1/embeddings", {"model": "flux"}), Behaviour()))
    assert status == 400 and invalid["param"] == "input"


def test_images_may_omit_the_model_and_run_takes_it_from_the_path() -> None:
    image = api().reply(post("/v1/images/generations", {"prompt": "a cat"}), Behaviour())
    assert isinstance(image, bytes) and len(orjson.loads(image)["data"]) == 1
    ran = api().reply(post("/v1/models/flux/run", {"prompt": "a cat"}), Behaviour(latency=0.25))
    assert isinstance(ran, bytes)
    assert orjson.loads(ran)["model"] == "flux" and orjson.loads(ran)["latency_ms"] == 250


def test_models_are_listed_and_an_unknown_card_is_a_404() -> None:
    listing = api().reply(Ask("GET", "/v1/models", None, False), Behaviour())
    assert isinstance(listing, bytes)
    assert [m["id"] for m in orjson.loads(listing)["data"]] == list(MODELS)
    status, _ = error(api().reply(Ask("GET", "/v1/models/nope", None, False), Behaviour()))
    assert status == 404
