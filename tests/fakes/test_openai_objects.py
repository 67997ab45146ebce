"""The OpenAI fake's objects as the real API hands them out, through the official openai SDK:
image URLs it serves, moderations, video jobs, and the responses a later one may continue."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import openai
import pytest

from proxy.fakes.provider import FakeProvider
from tests.fakes.conftest import Connect, Start

PNG = b"\x89PNG\r\n\x1a\n"


@contextmanager
def sora() -> Iterator[None]:
    """The SDK marks the video API deprecated (it shuts down in 2026) and the suite turns
    warnings into errors; these tests call it on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


async def fetch(url: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, resp.content_type, await resp.read()


# --- images ---


async def test_dall_e_images_are_urls_the_fake_serves(start: Start, connect: Connect) -> None:
    fake = await start(models=("dall-e-3", "gpt-image-1"))
    client = connect(fake)
    for model in ("dall-e-3", openai.omit):
        images = await client.images.generate(model=model, prompt="a cat", n=2)
        urls = [image.url or "" for image in images.data or []]
        assert len(urls) == 2 and all(u.startswith(f"{fake.url_root}/files/") for u in urls)
        assert all(image.b64_json is None for image in images.data or [])
        status, kind, png = await fetch(urls[0])
        assert (status, kind) == (200, "image/png") and png.startswith(PNG)


async def test_b64_json_is_inline_when_asked_and_always_for_gpt_image(
    start: Start, connect: Connect
) -> None:
    fake = await start(models=("dall-e-3", "gpt-image-1"))
    client = connect(fake)
    asked = await client.images.generate(
        model="dall-e-3", prompt="a cat", response_format="b64_json"
    )
    always = await client.images.generate(model="gpt-image-1", prompt="a cat")
    for images in (asked, always):
        (image,) = images.data or []
        assert image.url is None and base64.b64decode(image.b64_json or "").startswith(PNG)


# --- moderations ---


async def test_moderations_flag_only_the_texts_with_a_flagged_word(
    fake: FakeProvider, connect: Connect
) -> None:
    result = await connect(fake).moderations.create(
        input=["Paris is lovely in May.", "I will kill the process."]
    )
    assert result.id.startswith("modr-") and result.model == "omni-moderation-latest"
    calm, violent = result.results
    assert not calm.flagged and not any(calm.categories.model_dump().values())
    assert violent.flagged and violent.categories.violence
    assert violent.category_scores.violence > 0.5 > calm.category_scores.violence


# --- videos ---


async def test_a_video_job_moves_from_queued_to_completed_and_its_content_downloads(
    start: Start, connect: Connect
) -> None:
    fake = await start(models=("sora-2",))
    client = connect(fake)
    with sora():
        video = await client.videos.create(prompt="a cat surfing", seconds="4")
        assert video.id.startswith("video_") and video.object == "video"
        assert (video.status, video.progress, video.model) == ("queued", 0, "sora-2")
        assert video.prompt == "a cat surfing"  # read from the SDK's multipart form
        assert fake.received[0].headers["Content-Type"].startswith("multipart/form-data")
        with pytest.raises(openai.BadRequestError, match="not ready"):
            await client.videos.download_content(video.id)
        polled = await client.videos.poll(video.id)  # queued -> in_progress -> completed
        assert polled.status == "completed" and polled.progress == 100
        assert polled.completed_at is not None
        content = await client.videos.download_content(video.id)
    assert content.response.headers["content-type"] == "video/mp4"
    assert content.content[4:8] == b"ftyp"
    assert [r.path for r in fake.received].count(f"/v1/videos/{video.id}") == 2


async def test_videos_this_fake_did_not_make_are_a_404(start: Start, connect: Connect) -> None:
    fake, other = await start(models=("sora-2",)), await start(name="other", models=("sora-2",))
    with sora():
        theirs = await connect(other).videos.create(prompt="a cat surfing")
        client = connect(fake)
        for ask in (client.videos.retrieve, client.videos.download_content):
            with pytest.raises(openai.NotFoundError) as caught:
                await ask(theirs.id)
            assert caught.value.code == "video_not_found"


# --- chained responses ---


async def test_a_response_may_continue_one_this_fake_made(
    fake: FakeProvider, connect: Connect
) -> None:
    client = connect(fake)
    first = await client.responses.create(model="gpt-4o-mini", input="hi")
    streamed = [e async for e in await client.responses.create(
        model="gpt-4o-mini", input="and?", previous_response_id=first.id, stream=True
    )]  # fmt: skip
    made = next(e.response.id for e in streamed if e.type == "response.completed")
    third = await client.responses.create(
        model="gpt-4o-mini", input="then?", previous_response_id=made
    )
    assert third.previous_response_id == made


async def test_an_unknown_previous_response_is_a_404_in_openai_s_words(
    start: Start, connect: Connect
) -> None:
    fake, other = await start(), await start(name="other")
    theirs = await connect(other).responses.create(model="gpt-4o-mini", input="hi")
    with pytest.raises(openai.NotFoundError) as caught:
        await connect(fake).responses.create(
            model="gpt-4o-mini", input="and?", previous_response_id=theirs.id
        )
    assert caught.value.body == {
        "message": f"Previous response with id '{theirs.id}' not found.",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "previous_response_not_found",
    }
