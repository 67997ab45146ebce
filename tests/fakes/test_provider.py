"""The fake providers, driven by the official openai SDK and, for faults, a raw aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import gzip
import math
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from pydantic import BaseModel
from yarl import URL

from proxy.fakes.provider import CHUNK_DELAY_HEADER, Behaviour, FakeProvider
from tests.fakes.conftest import KEY, Connect, Start

CHAT = "gpt-4o-mini"
EMBED = "text-embedding-3-small"
MESSAGES: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "hourly": {"type": "boolean"},
            },
            "required": ["city", "days", "unit"],
        },
    },
}


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


def events_of(body: bytes) -> list[bytes]:
    """The `data:` payloads of an SSE body, in order."""
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


# --- chat ---


async def test_chat_answer_mentions_the_prompt_and_counts_tokens(
    fake: FakeProvider, connect: Connect
) -> None:
    answer = await connect(fake).chat.completions.create(model=CHAT, messages=MESSAGES)
    choice = answer.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content is not None
    assert "What is the capital of France?" in choice.message.content
    assert answer.object == "chat.completion" and answer.model == CHAT
    assert answer.system_fingerprint
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == round(8 / 0.75)  # "Be brief." + the 6-word question
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


async def test_same_variant_repeats_the_text_and_another_variant_rewords_it(
    start: Start, connect: Connect
) -> None:
    first, twin, other = (
        await start(name="a"),
        await start(name="b"),
        await start(name="c", behaviour=Behaviour(variant=1)),
    )
    texts = [
        (await connect(f).chat.completions.create(model=CHAT, messages=MESSAGES))
        .choices[0]
        .message.content
        for f in (first, twin, other)
    ]
    assert texts[0] == texts[1] != texts[2]
    assert texts[2] is not None and "capital of France" in texts[2]


async def test_offered_tools_get_one_call_filling_the_required_arguments(
    fake: FakeProvider, connect: Connect
) -> None:
    answer = await connect(fake).chat.completions.create(
        model=CHAT, messages=MESSAGES, tools=[WEATHER_TOOL]
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function"
    args = orjson.loads(calls[0].function.arguments)
    assert calls[0].function.name == "get_weather"
    assert set(args) == {"city", "days", "unit"}
    assert isinstance(args["city"], str) and isinstance(args["days"], int)
    assert args["unit"] == "celsius"


async def test_tool_calls_switched_off_answer_in_text(start: Start, connect: Connect) -> None:
    fake = await start(behaviour=Behaviour(tool_calls=False))
    answer = await connect(fake).chat.completions.create(
        model=CHAT, messages=MESSAGES, tools=[WEATHER_TOOL]
    )
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content


async def test_json_object_mode_answers_a_json_object(fake: FakeProvider, connect: Connect) -> None:
    answer = await connect(fake).chat.completions.create(
        model=CHAT, messages=MESSAGES, response_format={"type": "json_object"}
    )
    assert isinstance(orjson.loads(answer.choices[0].message.content or ""), dict)


class City(BaseModel):
    name: str
    population: int
    capital: bool
    districts: list[str]


async def test_json_schema_answer_parses_into_the_requested_model(
    fake: FakeProvider, connect: Connect
) -> None:
    answer = await connect(fake).chat.completions.parse(
        model=CHAT, messages=MESSAGES, response_format=City
    )
    parsed = answer.choices[0].message.parsed
    assert parsed is not None and parsed.capital is True and parsed.districts


async def test_usage_can_be_switched_off(start: Start, connect: Connect) -> None:
    fake = await start(behaviour=Behaviour(usage=False))
    answer = await connect(fake).chat.completions.create(model=CHAT, messages=MESSAGES)
    assert answer.usage is None


# --- chat streams ---


async def test_stream_joins_into_the_non_stream_text_without_a_usage_chunk(
    fake: FakeProvider, connect: Connect
) -> None:
    client = connect(fake)
    whole = await client.chat.completions.create(model=CHAT, messages=MESSAGES)
    stream = await client.chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices[0].delta.content is None
    assert all(c.choices and c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert len(chunks) == 2 + len(text.split())  # role chunk, one per word, finish chunk


async def test_stream_sends_a_usage_chunk_only_when_asked(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    request = {"model": CHAT, "messages": MESSAGES, "stream": True}
    for include in (True, False):
        body = {**request, "stream_options": {"include_usage": include}}
        async with http.post(f"{fake.url}/chat/completions", json=body) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            raw = await resp.read()
        assert raw.endswith(b"\n\ndata: [DONE]\n\n")
        payloads = events_of(raw)
        chunks = [orjson.loads(p) for p in payloads[:-1]]
        if include:
            *content, last = chunks
            assert last["choices"] == [] and last["usage"]["total_tokens"] > 0
            assert all("usage" in c and c["usage"] is None for c in content)
        else:
            assert all("usage" not in c and c["choices"] for c in chunks)


async def test_streamed_tool_call_accumulates_in_the_sdk_helper(
    fake: FakeProvider, connect: Connect
) -> None:
    async with connect(fake).chat.completions.stream(
        model=CHAT, messages=MESSAGES, tools=[WEATHER_TOOL]
    ) as stream:
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = (choice.message.tool_calls or [])[0]
    assert call.function.name == "get_weather"
    assert set(orjson.loads(call.function.arguments)) == {"city", "days", "unit"}


async def test_chunks_sets_the_number_of_content_chunks(start: Start, connect: Connect) -> None:
    for count in (3, 60):
        fake = await start(behaviour=Behaviour(chunks=count))
        stream = await connect(fake).chat.completions.create(
            model=CHAT, messages=MESSAGES, stream=True
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        assert len([p for p in pieces if p]) == count


async def test_chunk_delay_spaces_the_chunks_out(start: Start, connect: Connect) -> None:
    fake = await start(behaviour=Behaviour(chunks=3, chunk_delay=0.02))
    began = time.monotonic()
    stream = await connect(fake).chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
    async for _ in stream:
        pass
    assert time.monotonic() - began >= 3 * 0.02  # role, 3 content, finish: 4 gaps, some slack


async def test_usage_chunk_and_done_follow_the_finish_chunk_without_a_pause(
    start: Start, connect: Connect
) -> None:
    # Generating tokens takes time, reporting usage afterwards does not (as with OpenAI).
    delay = 0.4
    fake = await start(behaviour=Behaviour(chunks=1, chunk_delay=delay))
    stream = await connect(fake).chat.completions.create(
        model=CHAT, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    arrived = []
    async for chunk in stream:
        arrived.append((time.monotonic(), chunk))
    finish_at = next(t for t, c in arrived if c.choices and c.choices[0].finish_reason)
    usage_at, usage = arrived[-1]
    assert usage.usage is not None and not usage.choices
    assert usage_at - finish_at < delay / 2
    assert finish_at - arrived[0][0] >= delay  # role -> content -> finish was paced


async def test_chunk_delay_header_paces_one_request(start: Start, connect: Connect) -> None:
    fake = await start(behaviour=Behaviour(chunks=3, chunk_delay=5.0))
    client = connect(fake)
    began = time.monotonic()
    stream = await client.chat.completions.create(
        model=CHAT, messages=MESSAGES, stream=True, extra_headers={CHUNK_DELAY_HEADER: "0"}
    )
    assert len([c async for c in stream]) == 5  # role, 3 content chunks, finish
    assert time.monotonic() - began < 4.0  # not one 5 s gap was waited
    for bad in ("-1", "soon"):
        with pytest.raises(openai.BadRequestError, match=CHUNK_DELAY_HEADER):
            await client.chat.completions.create(
                model=CHAT, messages=MESSAGES, extra_headers={CHUNK_DELAY_HEADER: bad}
            )


# --- responses, legacy completions, embeddings, models, images ---


async def test_responses_answer_with_text_and_usage(fake: FakeProvider, connect: Connect) -> None:
    response = await connect(fake).responses.create(model=CHAT, input="Name a French city.")
    assert response.status == "completed" and response.object == "response"
    assert "Name a French city." in response.output_text
    assert response.usage is not None and response.usage.output_tokens > 0


async def test_responses_stream_events_satisfy_the_sdk_helper(
    fake: FakeProvider, connect: Connect
) -> None:
    async with connect(fake).responses.stream(model=CHAT, input="Name a city.") as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and "response.output_text.done" in kinds
    assert "Name a city." in final.output_text
    assert final.usage is not None and final.usage.total_tokens > 0


async def test_responses_raw_stream_has_event_lines_and_no_done(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    body = {"model": CHAT, "input": "hi", "stream": True}
    async with http.post(f"{fake.url}/responses", json=body) as resp:
        raw = await resp.read()
    assert raw.startswith(b"event: response.created\ndata: ")
    assert b"[DONE]" not in raw


async def test_responses_with_tools_call_a_function(fake: FakeProvider, connect: Connect) -> None:
    tool: Any = {"type": "function", "name": "get_weather", **WEATHER_TOOL["function"]}
    client = connect(fake)
    response = await client.responses.create(model=CHAT, input="Weather?", tools=[tool])
    async with client.responses.stream(model=CHAT, input="Weather?", tools=[tool]) as stream:
        streamed = await stream.get_final_response()
    for got in (response, streamed):
        call = got.output[0]
        assert call.type == "function_call" and call.name == "get_weather"
        assert set(orjson.loads(call.arguments)) == {"city", "days", "unit"}


async def test_legacy_completions_answer_and_stream(fake: FakeProvider, connect: Connect) -> None:
    client = connect(fake)
    whole = await client.completions.create(model=CHAT, prompt="Say hello")
    assert whole.object == "text_completion" and "Say hello" in whole.choices[0].text
    stream = await client.completions.create(model=CHAT, prompt="Say hello", stream=True)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_embeddings_default_sdk_call_gets_unit_vectors(
    fake: FakeProvider, connect: Connect
) -> None:
    # The SDK asks for base64 unless told otherwise and decodes it itself.
    result = await connect(fake).embeddings.create(model=EMBED, input=["one", "two"])
    sent = fake.received[-1].json
    assert sent is not None and sent["encoding_format"] == "base64"
    first, second = (row.embedding for row in result.data)
    assert len(first) == 8 and first != second
    assert math.isclose(sum(v * v for v in first), 1.0, rel_tol=1e-5)
    assert result.usage.prompt_tokens > 0


async def test_embeddings_honour_dimensions_and_agree_across_formats(
    fake: FakeProvider, connect: Connect
) -> None:
    client = connect(fake)
    floats = await client.embeddings.create(
        model=EMBED, input="one", dimensions=16, encoding_format="float"
    )
    decoded = await client.embeddings.create(model=EMBED, input="one", dimensions=16)
    assert len(floats.data[0].embedding) == 16
    assert floats.data[0].embedding == decoded.data[0].embedding


async def test_models_are_listed_and_retrieved(fake: FakeProvider, connect: Connect) -> None:
    client = connect(fake)
    assert [m.id async for m in client.models.list()] == [CHAT, EMBED]
    assert (await client.models.retrieve(EMBED)).owned_by == "fake"
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("gpt-nope")
    assert caught.value.code == "model_not_found"


async def test_unknown_model_is_a_404(fake: FakeProvider, connect: Connect) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await connect(fake).chat.completions.create(model="gpt-nope", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


async def test_image_endpoints_return_png_bytes(
    start: Start, connect: Connect, http: aiohttp.ClientSession
) -> None:
    fake = await start(models=("flux", "gpt-image-1"))
    images = await connect(fake).images.generate(model="gpt-image-1", prompt="a cat")
    png = base64.b64decode((images.data or [])[0].b64_json or "")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    body = {"prompt": "a cat", "size": "512x512"}
    async with http.post(f"{fake.url}/models/flux/run", json=body) as resp:
        answer = await resp.json()
    assert answer["model"] == "flux" and "latency_ms" in answer
    assert base64.b64decode(answer["images"][0]["b64"]).startswith(b"\x89PNG")


# --- errors and what was received ---


async def test_wrong_key_is_rejected_without_echoing_it(
    fake: FakeProvider, connect: Connect
) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        await connect(fake, "sk-wrong").chat.completions.create(model=CHAT, messages=MESSAGES)
    assert caught.value.code == "invalid_api_key"
    assert "sk-wrong" not in str(caught.value.body) and KEY not in str(caught.value.body)
    assert fake.received[-1].headers["Authorization"] == "Bearer sk-wrong"  # recorded anyway


async def test_invalid_json_is_a_400_and_unknown_paths_a_404(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{fake.url}/chat/completions", data=b"{nope") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    for method, path in (("POST", "/v1/nope"), ("GET", "/v1/chat/completions"), ("GET", "/")):
        url = fake.url.removesuffix("/v1") + path
        async with http.request(method, url) as resp:
            assert resp.status == 404
            assert set((await resp.json())["error"]) == {"message", "type", "param", "code"}
    assert fake.received[0].json is None and fake.received[0].body == b"{nope"


async def test_received_records_each_request_as_it_arrived(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    body = {"model": CHAT, "messages": MESSAGES}
    url = URL(f"{fake.url}/chat/completions?trace=1&next=%2Fv1", encoded=True)
    async with http.post(url, json=body, headers={"X-Tag": "t1"}) as resp:
        assert resp.status == 200
    got = fake.received[-1]
    assert (got.method, got.path) == ("POST", "/v1/chat/completions")
    assert got.query == "trace=1&next=%2Fv1"  # as sent, not decoded
    assert got.headers["x-tag"] == "t1" and got.json == body
    assert orjson.loads(got.body) == body
    assert fake.active == 0


@pytest.mark.parametrize(
    ("fail", "error", "code"),
    [
        ("500", openai.InternalServerError, None),
        ("429", openai.RateLimitError, "rate_limit_exceeded"),
    ],
)
async def test_forced_errors_are_openai_shaped(
    start: Start, connect: Connect, fail: Any, error: type[openai.APIStatusError], code: str | None
) -> None:
    fake = await start(behaviour=Behaviour(fail=fail))
    with pytest.raises(error) as caught:
        await connect(fake).chat.completions.create(model=CHAT, messages=MESSAGES)
    assert caught.value.code == code
    if fail == "429":
        assert caught.value.response.headers["retry-after"] == "1"


async def test_error_rate_is_deterministic_for_a_seed(start: Start) -> None:
    async def statuses(fake: FakeProvider) -> list[int]:
        out = []
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
            for _ in range(40):
                async with session.get(f"{fake.url}/models") as resp:
                    out.append(resp.status)
        return out

    behaviour = Behaviour(error_rate=0.5, error_status=503)
    a = await statuses(await start(behaviour=behaviour, seed=7))
    b = await statuses(await start(behaviour=behaviour, seed=7))
    c = await statuses(await start(behaviour=behaviour, seed=8))
    assert a == b != c
    assert set(a) == {200, 503} and 10 < a.count(503) < 30


async def test_behaviour_can_be_replaced_at_runtime(fake: FakeProvider, connect: Connect) -> None:
    client = connect(fake)
    fake.behaviour = Behaviour(fail="500")
    with pytest.raises(openai.InternalServerError):
        await client.models.list()
    fake.behaviour = Behaviour()
    assert [m.id async for m in client.models.list()]


async def test_gzip_compresses_bodies_for_clients_that_accept_it(
    start: Start, connect: Connect
) -> None:
    fake = await start(behaviour=Behaviour(gzip=True))
    headers = {"Authorization": f"Bearer {KEY}", "Accept-Encoding": "gzip"}
    async with aiohttp.ClientSession(auto_decompress=False, headers=headers) as session:
        async with session.get(f"{fake.url}/models") as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert orjson.loads(gzip.decompress(await resp.read()))["object"] == "list"
        async with session.get(
            f"{fake.url}/models", headers={"Accept-Encoding": "identity"}
        ) as resp:
            assert "Content-Encoding" not in resp.headers
    answer = await connect(fake).chat.completions.create(model=CHAT, messages=MESSAGES)
    assert answer.choices[0].message.content


async def test_latency_delays_the_answer(start: Start, connect: Connect) -> None:
    fake = await start(behaviour=Behaviour(latency=0.05))
    began = time.monotonic()
    await connect(fake).models.list()
    assert time.monotonic() - began >= 0.05


def test_behaviour_rejects_impossible_settings() -> None:
    for bad in ({"error_rate": 1.5}, {"latency": -1.0}, {"chunks": 0}, {"fail": "explode"}):
        with pytest.raises(ValueError):
            Behaviour(**bad)


# --- faults, seen from a raw client ---


async def test_reset_closes_the_connection_without_a_response(
    start: Start, http: aiohttp.ClientSession
) -> None:
    fake = await start(behaviour=Behaviour(fail="reset"))
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"{fake.url}/models"):
            pass


@pytest.mark.parametrize("stream", [True, False])
async def test_die_mid_stream_breaks_off_the_body(
    start: Start, http: aiohttp.ClientSession, stream: bool
) -> None:
    fake = await start(behaviour=Behaviour(fail="die_mid_stream"))
    body = {"model": CHAT, "messages": MESSAGES, "stream": stream}
    async with http.post(f"{fake.url}/chat/completions", json=body) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_broken_stream_ends_cleanly_without_done_on_truncated_json(
    start: Start, http: aiohttp.ClientSession
) -> None:
    fake = await start(behaviour=Behaviour(fail="broken_stream"))
    body = {"model": CHAT, "messages": MESSAGES, "stream": True}
    async with http.post(f"{fake.url}/chat/completions", json=body) as resp:
        raw = await resp.read()
    payloads = events_of(raw)
    assert b"[DONE]" not in raw and raw.endswith(b"\n\n")
    for whole in payloads[:-1]:
        orjson.loads(whole)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(payloads[-1])


async def test_hang_sets_cancelled_once_the_client_leaves(
    start: Start, http: aiohttp.ClientSession
) -> None:
    fake = await start(behaviour=Behaviour(fail="hang"))

    async def ask() -> None:
        async with http.get(f"{fake.url}/models"):
            pass

    request = asyncio.create_task(ask())
    await until(lambda: fake.active == 1)
    assert not fake.cancelled.is_set()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await asyncio.wait_for(fake.cancelled.wait(), 2)
    await until(lambda: fake.active == 0)


async def test_client_leaving_a_stream_sets_cancelled(start: Start, connect: Connect) -> None:
    fake = await start(behaviour=Behaviour(chunk_delay=0.05, chunks=50))
    stream = await connect(fake).chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
    async for _ in stream:
        break
    await stream.close()
    await asyncio.wait_for(fake.cancelled.wait(), 2)
    await until(lambda: fake.active == 0)


async def test_close_ends_hanging_requests_promptly(http: aiohttp.ClientSession) -> None:
    fake = FakeProvider(name="fake", api_key=KEY, behaviour=Behaviour(fail="hang"))
    await fake.start()

    async def ask() -> None:
        async with http.get(f"{fake.url}/models"):
            pass

    request = asyncio.create_task(ask())
    await until(lambda: fake.active == 1)
    began = time.monotonic()
    await fake.close()
    assert time.monotonic() - began < 0.5
    with pytest.raises(aiohttp.ClientConnectionError):
        await request
    assert not fake.cancelled.is_set()  # closing is not a client leaving
