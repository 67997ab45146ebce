"""The Abstrakt-shaped fake (an image API with its own error codes), driven by aiohttp: Abstrakt
has no official SDK."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest

from proxy.fakes.abstrakt_api import STATUS
from proxy.fakes.provider import Behaviour, FakeProvider
from tests.fakes.conftest import KEY, Start

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
async def abstrakt(start: Start) -> FakeProvider:
    return await start(api="abstrakt")


async def run(
    fake: FakeProvider, body: Any, model: str = "flux-schnell", key: str | None = KEY
) -> tuple[int, Any, Any]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.post(f"{fake.url}/models/{model}/run", json=body) as resp,
    ):
        return resp.status, await resp.json(), resp.headers


async def test_a_run_answers_urls_the_fake_serves_without_a_key(abstrakt: FakeProvider) -> None:
    status, answer, _ = await run(abstrakt, {"input": {"prompt": "a red fox", "num_images": 2}})
    assert status == 200 and answer["id"].startswith("run_") and answer["model"] == "flux-schnell"
    images = answer["result"]["images"]
    assert answer["usage"] == {"images": 2} and len(images) == 2
    assert {(i["width"], i["height"]) for i in images} == {(1024, 1024)}
    assert all(i["url"].startswith(f"{abstrakt.url_root}/files/") for i in images)
    async with aiohttp.ClientSession() as session:  # no key: a signed URL needs none
        for image in images:
            async with session.get(image["url"]) as resp:
                assert resp.status == 200 and resp.content_type == "image/png"
                assert (await resp.read()).startswith(PNG)
        async with session.get(f"{abstrakt.url_root}/files/nope.png") as resp:
            assert resp.status == 404


async def test_base64_output_inlines_the_images_at_the_asked_size(abstrakt: FakeProvider) -> None:
    asked = {"prompt": "a red fox", "width": 512, "height": 768, "output_format": "base64"}
    status, answer, _ = await run(abstrakt, {"input": asked})
    assert status == 200
    (image,) = answer["result"]["images"]
    assert (image["width"], image["height"]) == (512, 768) and "url" not in image
    assert base64.b64decode(image["b64"]).startswith(PNG)
    _, again, _ = await run(abstrakt, {"input": asked})
    assert again["result"]["images"][0]["b64"] == image["b64"]  # deterministic
    assert again["id"] != answer["id"]


@pytest.mark.parametrize(
    ("body", "model", "key", "status", "code"),
    [
        ({"input": {"prompt": "x"}}, "flux-schnell", None, 401, "UNAUTHENTICATED"),
        ({"input": {"prompt": "x"}}, "flux-nope", KEY, 404, "MODEL_UNAVAILABLE"),
        ({"input": {}}, "flux-schnell", KEY, 422, "INVALID_INPUT"),
        ({"prompt": "x"}, "flux-schnell", KEY, 422, "INVALID_INPUT"),
        ({"input": {"prompt": "x", "num_images": 9}}, "flux-schnell", KEY, 422, "INVALID_INPUT"),
        ({"input": {"prompt": "x", "width": 9}}, "flux-schnell", KEY, 422, "INVALID_INPUT"),
        ({"input": {"prompt": "x", "output_format": "gif"}}, "sdxl-turbo", KEY, 422, "INVALID_INPUT"),
    ],
)  # fmt: skip
async def test_refusals_carry_a_code_in_the_body(
    abstrakt: FakeProvider, body: Any, model: str, key: str | None, status: int, code: str
) -> None:
    got, answer, _ = await run(abstrakt, body, model, key)
    assert got == status and answer["error"]["code"] == code and answer["error"]["message"]


@pytest.mark.parametrize("code", sorted(STATUS))
async def test_each_error_code_can_be_forced(start: Start, code: str) -> None:
    fake = await start(api="abstrakt", behaviour=Behaviour(fail="error", error_status=STATUS[code]))
    status, answer, headers = await run(fake, {"input": {"prompt": "a red fox"}})
    assert status == STATUS[code] and answer["error"]["code"] == code
    assert ("Retry-After" in headers) is (code == "RATE_LIMITED")


async def test_drawn_and_forced_statuses_map_to_the_three_codes(start: Start) -> None:
    for fail, status, code in (("500", 500, "MODEL_UNAVAILABLE"), ("429", 429, "RATE_LIMITED")):
        fake = await start(api="abstrakt", behaviour=Behaviour(fail=fail))
        got, answer, _ = await run(fake, {"input": {"prompt": "x"}})
        assert (got, answer["error"]["code"]) == (status, code)
    drawn = await start(api="abstrakt", behaviour=Behaviour(error_rate=1.0, error_status=400))
    got, answer, _ = await run(drawn, {"input": {"prompt": "x"}})
    assert (got, answer["error"]["code"]) == (400, "INVALID_INPUT")
