"""images.generate to Abstrakt's `models/{model}/run` and back, as pure translations."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.adapters.abstrakt import ImagesToRun
from proxy.adapters.base import AppCall, Unsupported

T = ImagesToRun()


def ask(body: dict[str, Any], model: str = "flux-pro") -> tuple[str, dict[str, Any]]:
    provider = T.request(AppCall("POST", "/images/generations", body, model, False))
    assert provider.method == "POST"
    return provider.tail, orjson.loads(provider.body)


def test_a_generation_becomes_a_run_of_the_mapped_model() -> None:
    tail, body = ask({"model": "dall-e-3", "prompt": "a red fox", "n": 2, "size": "1024x1792"})
    assert tail == "/models/flux-pro/run"
    assert body == {
        "input": {
            "prompt": "a red fox",
            "num_images": 2,
            "width": 1024,
            "height": 1792,
            "output_format": "url",
        }
    }


def test_b64_json_asks_for_base64() -> None:
    _, body = ask({"prompt": "x", "response_format": "b64_json"})
    assert body["input"]["output_format"] == "base64"


def test_a_model_id_with_a_slash_stays_one_path_segment() -> None:
    tail, _ = ask({"prompt": "x"}, model="black-forest/flux")
    assert tail == "/models/black-forest%2Fflux/run"


def test_a_generation_without_a_prompt_is_refused() -> None:
    with pytest.raises(Unsupported, match="prompt"):
        T.request(AppCall("POST", "/images/generations", {"n": 1}, "flux-pro", False))


def test_images_come_back_as_openai_data() -> None:
    body = {"id": "run_1", "result": {"images": [{"url": "http://h/1.png"}, {"b64": "QUJD"}]}}
    answer = T.answer(200, orjson.dumps(body), {})
    out = orjson.loads(answer.body)
    assert answer.status == 200 and isinstance(out["created"], int)
    assert out["data"] == [{"url": "http://h/1.png"}, {"b64_json": "QUJD"}]


@pytest.mark.parametrize(
    ("code", "http", "status", "kind"),
    [
        ("RATE_LIMITED", 200, 429, "rate_limit_error"),
        ("INVALID_INPUT", 422, 400, "invalid_request_error"),
        ("MODEL_UNAVAILABLE", 500, 503, "server_error"),
        ("SOMETHING_NEW", 500, 502, "upstream_error"),
    ],
)
def test_errors_are_read_from_the_code_whatever_the_http_status(
    code: str, http: int, status: int, kind: str
) -> None:
    body = orjson.dumps({"error": {"code": code, "message": "nope"}})
    answer = T.answer(http, body, {"Retry-After": "7", "x-other": "1"})
    assert answer.status == status
    error = orjson.loads(answer.body)["error"]
    assert (error["type"], error["code"], error["message"]) == (kind, code.lower(), "nope")
    assert answer.headers == {"Retry-After": "7"}


def test_an_error_without_a_code_keeps_its_status() -> None:
    answer = T.answer(401, b"unauthorized", {})
    assert answer.status == 401
    assert orjson.loads(answer.body)["error"]["type"] == "invalid_request_error"
