"""End to end with the official SDKs: providers that are not OpenAI-shaped, behind the sidecar."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from aiohttp import web

from proxy.fakes.provider import Behaviour, FakeProvider
from proxy.report.build import ReportFilter, build_report
from proxy.report.text import render_text
from proxy.report.thresholds import ReportSettings
from proxy.serve.app import Sidecar
from tests.conftest import OLD_KEY, base_config, serve
from tests.serve.test_reload import write_rename
from tests.serve.test_shadow import recording, rows, settled

CLAUDE_KEY = "sk-ant-test-claude-key-2222"
ABSTRAKT_KEY = "ak-test-abstrakt-key-3333"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ANTHROPIC_WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
}


async def started(fake: FakeProvider) -> FakeProvider:
    await fake.start()
    return fake


@pytest.fixture
async def claude() -> AsyncIterator[FakeProvider]:
    fake = await started(FakeProvider(name="claude", api="anthropic", api_key=CLAUDE_KEY))
    yield fake
    await fake.close()


@pytest.fixture
async def abstrakt() -> AsyncIterator[FakeProvider]:
    fake = await started(FakeProvider(name="abstrakt", api="abstrakt", api_key=ABSTRAKT_KEY))
    yield fake
    await fake.close()


def with_claude(
    old: FakeProvider, new: FakeProvider, claude: FakeProvider, **over: Any
) -> dict[str, Any]:
    cfg = base_config(old, new, **over)
    cfg["upstreams"]["claude"] = {
        "base_url": claude.url,
        "api": "anthropic",
        "api_key": CLAUDE_KEY,
        "models": {"gpt-4o-mini": "claude-sonnet-4-5"},
    }
    return cfg


def anthropic_client(sc: Sidecar) -> anthropic.AsyncAnthropic:
    # The anthropic SDK adds /v1 itself: ANTHROPIC_BASE_URL is the sidecar's root.
    return anthropic.AsyncAnthropic(
        base_url=f"http://{sc.host}:{sc.port}", api_key="sk-app-side", max_retries=0, timeout=20
    )


# -- Anthropic's own API, through the sidecar -------------------------------------------


async def test_the_anthropic_sdk_is_relayed_plain_and_streamed_and_recorded(
    old, new, claude, make_sidecar, tmp_path
) -> None:
    route = {"path": "/v1/messages", "primary": "claude", "split": {"claude": 1}}
    cfg = with_claude(old, new, claude, routes=[route], record=recording(tmp_path))
    sc = await make_sidecar(cfg)
    client = anthropic_client(sc)
    try:
        msg = await client.messages.create(
            model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        assert msg.content[0].type == "text" and msg.usage.output_tokens > 0
        async with client.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=100,
            tools=[ANTHROPIC_WEATHER],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "weather in Oslo?"}],
        ) as stream:
            final = await stream.get_final_message()
        assert final.stop_reason == "tool_use"
        [call] = [b for b in final.content if b.type == "tool_use"]
        assert call.name == "get_weather" and "city" in call.input  # type: ignore[operator]
    finally:
        await client.close()
    # The provider got its own key, never the app's, and the version header the SDK sent.
    assert all(r.headers["x-api-key"] == CLAUDE_KEY for r in claude.received)
    assert all(r.headers["anthropic-version"] for r in claude.received)
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 2, 2)
    recorded = rows(db, "SELECT * FROM responses ORDER BY ts")
    assert [r["upstream"] for r in recorded] == ["claude", "claude"]
    assert all(
        r["error_kind"] is None and r["prompt_tokens"] and r["completion_tokens"] for r in recorded
    )
    assert recorded[1]["stream_done"] == 1


async def test_an_anthropic_route_rolls_back_to_its_own_primary(
    old, new, claude, make_sidecar
) -> None:
    canary = await started(FakeProvider(name="canary", api="anthropic", api_key=CLAUDE_KEY))
    try:
        cfg = with_claude(old, new, claude)
        cfg["upstreams"]["canary"] = {
            "base_url": canary.url,
            "api": "anthropic",
            "api_key": CLAUDE_KEY,
        }
        cfg["routes"] = [{"path": "/v1/messages", "primary": "claude", "split": {"canary": 1}}]
        sc = await make_sidecar(cfg)
        client = anthropic_client(sc)
        ask = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
        }
        await client.messages.create(**ask)  # type: ignore[arg-type]
        assert len(canary.received) == 1 and not claude.received
        write_rename(Path(sc.path), {**cfg, "rollback": True})
        assert await sc.reload("test")
        await client.messages.create(**ask)  # type: ignore[arg-type]
        # Not the top-level primary, an OpenAI-shaped provider with no /v1/messages.
        assert len(claude.received) == 1 and not old.received
        await client.close()
    finally:
        await canary.close()


async def test_a_messages_call_to_an_openai_shaped_upstream_is_refused_not_sent(
    old, new, make_sidecar
) -> None:
    sc = await make_sidecar(base_config(old, new))
    client = anthropic_client(sc)
    with pytest.raises(anthropic.APIStatusError) as e:
        await client.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    await client.close()
    assert e.value.status_code == 501 and "api: openai" in e.value.message
    assert not old.received


# -- OpenAI chat completions served by an Anthropic-shaped provider ---------------------


async def test_an_openai_chat_call_is_served_by_an_anthropic_provider(
    old, new, claude, make_sidecar, sdk, tmp_path
) -> None:
    route = {"path": "/v1/chat/completions", "split": {"claude": 1}}
    cfg = with_claude(old, new, claude, routes=[route], record=recording(tmp_path))
    sc = await make_sidecar(cfg)
    client = sdk(sc)
    reply = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        max_tokens=50,
    )
    assert reply.model == "gpt-4o-mini"  # the app's id, not the provider's
    assert reply.choices[0].message.content and reply.usage and reply.usage.total_tokens > 0
    sent = claude.received[-1]
    assert sent.path == "/v1/messages" and sent.json["model"] == "claude-sonnet-4-5"
    assert sent.json["system"] == "Be brief." and sent.json["max_tokens"] == 50
    assert sent.headers["x-api-key"] == CLAUDE_KEY and "authorization" not in sent.headers

    chunks = [
        c
        async for c in await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "weather in Oslo?"}],
            tools=[WEATHER],  # type: ignore[list-item]
            stream=True,
            stream_options={"include_usage": True},
        )
    ]
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].function and calls[0].function.name == "get_weather"
    arguments = "".join(tc.function.arguments or "" for tc in calls if tc.function)
    assert isinstance(orjson.loads(arguments), dict)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 2, 2)
    recorded = rows(db, "SELECT * FROM responses ORDER BY ts")
    assert all(r["error_kind"] is None and r["completion_tokens"] for r in recorded)
    assert recorded[1]["stream_done"] == 1


async def test_a_stream_without_usage_asked_shows_the_app_no_usage_chunk(
    old, new, claude, make_sidecar, sdk
) -> None:
    route = {"path": "/v1/chat/completions", "split": {"claude": 1}}
    sc = await make_sidecar(with_claude(old, new, claude, routes=[route]))
    chunks = [
        c
        async for c in await sdk(sc).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    ]
    assert chunks and all(c.choices for c in chunks)  # an app indexing choices[0] never breaks
    assert "".join(c.choices[0].delta.content or "" for c in chunks)


async def test_what_anthropic_cannot_express_is_refused_with_a_clear_400(
    old, new, claude, make_sidecar, sdk
) -> None:
    route = {"path": "/v1/chat/completions", "split": {"claude": 1}}
    sc = await make_sidecar(with_claude(old, new, claude, routes=[route]))
    with pytest.raises(openai.BadRequestError, match="`n` above 1"):
        await sdk(sc).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], n=2
        )
    assert not claude.received


async def test_an_anthropic_error_reaches_the_openai_sdk_as_its_own_error(
    old, new, claude, make_sidecar, sdk
) -> None:
    claude.behaviour = Behaviour(fail="429")
    route = {"path": "/v1/chat/completions", "split": {"claude": 1}}
    sc = await make_sidecar(with_claude(old, new, claude, routes=[route]))
    with pytest.raises(openai.RateLimitError):
        await sdk(sc).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )


async def test_an_anthropic_provider_shadows_openai_chat_calls(
    old, new, claude, make_sidecar, sdk, tmp_path
) -> None:
    cfg = with_claude(
        old, new, claude, shadow={"upstream": "claude", "sample": 1.0}, record=recording(tmp_path)
    )
    sc = await make_sidecar(cfg)
    await sdk(sc).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    await sdk(sc).embeddings.create(model="text-embedding-3-small", input="x")
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 2, 3)
    shadow = rows(db, "SELECT * FROM responses WHERE role = 'shadow'")
    assert len(shadow) == 1 and shadow[0]["status"] == 200 and shadow[0]["completion_tokens"]
    # Embeddings have no Anthropic equivalent: that copy is skipped, and counted.
    assert sc.stats_view()["shadow"]["skipped_other_shape"] == 1


# -- Abstrakt's image API ----------------------------------------------------------------


def with_abstrakt(
    old: FakeProvider, new: FakeProvider, abstrakt: FakeProvider, **over: Any
) -> dict[str, Any]:
    cfg = base_config(old, new, **over)
    cfg["upstreams"]["abstrakt"] = {
        "base_url": abstrakt.url,
        "api": "abstrakt",
        "api_key": ABSTRAKT_KEY,
        # "flux" is also a model of the OpenAI-shaped fakes, for splits between the two.
        "models": {"dall-e-3": "flux-schnell", "dall-e-2": "sdxl-turbo", "flux": "flux-schnell"},
    }
    cfg.setdefault("routes", []).append(
        {"path": "/v1/images/generations", "split": {"abstrakt": 1}}
    )
    return cfg


async def test_images_generate_reaches_abstrakt_and_comes_back_as_openai_images(
    old, new, abstrakt, make_sidecar, sdk
) -> None:
    sc = await make_sidecar(with_abstrakt(old, new, abstrakt))
    client = sdk(sc)
    images = await client.images.generate(model="dall-e-3", prompt="a red fox", n=2, size="256x256")
    assert len(images.data) == 2 and all(i.url for i in images.data)
    sent = abstrakt.received[-1]
    assert sent.path == "/v1/models/flux-schnell/run"
    assert sent.json["input"]["num_images"] == 2 and sent.json["input"]["width"] == 256
    async with aiohttp.ClientSession() as http, http.get(images.data[0].url) as r:  # type: ignore[arg-type]
        assert r.status == 200 and (await r.read())[:8] == b"\x89PNG\r\n\x1a\n"
    b64 = await client.images.generate(model="dall-e-2", prompt="x", response_format="b64_json")
    assert base64.b64decode(b64.data[0].b64_json or "")[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (429, openai.RateLimitError, "rate_limited"),
        (422, openai.BadRequestError, "invalid_input"),
        (503, openai.InternalServerError, "model_unavailable"),
    ],
)
async def test_each_abstrakt_error_code_is_the_sdk_s_own_error(
    old, new, abstrakt, make_sidecar, sdk, status: int, error: type[Exception], code: str
) -> None:
    abstrakt.behaviour = Behaviour(fail="error", error_status=status)
    sc = await make_sidecar(with_abstrakt(old, new, abstrakt))
    with pytest.raises(error) as e:
        await sdk(sc).images.generate(model="dall-e-3", prompt="x")
    assert e.value.code == code  # type: ignore[attr-defined]
    if status == 429:
        assert e.value.response.headers["retry-after"] == "1"  # type: ignore[attr-defined]


async def test_a_sticky_split_keeps_each_user_on_one_image_provider(
    old, new, abstrakt, make_sidecar, sdk
) -> None:
    cfg = with_abstrakt(old, new, abstrakt, sticky={"header": "x-user-id"})
    cfg["routes"][-1]["split"] = {"old": 50, "abstrakt": 50}
    sc = await make_sidecar(cfg)
    client = sdk(sc)
    served: dict[str, set[str]] = {}
    for user in ("ana", "bo", "cy", "dee", "eli", "fay"):
        for _ in range(3):
            raw = await client.images.with_raw_response.generate(
                model="flux", prompt="x", extra_headers={"x-user-id": user}
            )
            served.setdefault(user, set()).add(raw.headers["x-sidecar-upstream"])
    assert all(len(s) == 1 for s in served.values())
    assert {s for u in served.values() for s in u} == {"old", "abstrakt"}


async def test_abstrakt_shadows_image_calls_and_they_are_recorded(
    old, new, abstrakt, make_sidecar, sdk, tmp_path
) -> None:
    cfg = with_abstrakt(old, new, abstrakt, record=recording(tmp_path))
    cfg["routes"][-1] = {
        "path": "/v1/images/generations",
        "split": {"old": 1},
        "shadow": {"upstream": "abstrakt", "sample": 1.0},
    }
    sc = await make_sidecar(cfg)
    await sdk(sc).images.generate(model="flux", prompt="a fox", n=2)
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 1, 2)
    by_role = {r["role"]: r for r in rows(db, "SELECT * FROM responses")}
    assert by_role["shadow"]["upstream"] == "abstrakt" and by_role["shadow"]["status"] == 200
    assert by_role["shadow"]["images"] == 2 and by_role["primary"]["images"] == 2
    await sc.stop()  # everything written
    settings = ReportSettings.model_validate(
        {"pricing": {"old": {"*": {"image": 0.04}}, "abstrakt": {"*": {"image": 0.03}}}}
    )
    report = build_report(db, ReportFilter(), settings)
    by_upstream = {(u.upstream, u.role): u for u in report.upstreams}
    assert by_upstream[("abstrakt", "shadow")].images == 2
    assert by_upstream[("abstrakt", "shadow")].cost == pytest.approx(0.06)
    assert by_upstream[("old", "primary")].cost == pytest.approx(0.08)
    assert "images" in render_text(report)


# -- objects, paths, model lists ---------------------------------------------------------


async def test_a_video_job_is_polled_where_it_was_made_and_never_shadowed(
    old, new, make_sidecar
) -> None:
    cfg = base_config(old, new, split={"new": 1}, shadow={"upstream": "old", "sample": 1.0})
    sc = await make_sidecar(cfg)
    headers = {"authorization": "Bearer sk-app"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(
            f"{sc.url}/videos", json={"model": "gpt-4o-mini", "prompt": "waves"}
        ) as r:
            job = await r.json()
        assert r.status == 200 and job["id"]
        write_rename(Path(sc.path), {**cfg, "split": {"old": 1}})
        assert await sc.reload("test")
        async with http.get(f"{sc.url}/videos/{job['id']}") as r:
            assert r.status == 200 and r.headers["x-sidecar-upstream"] == "new"
    await asyncio.sleep(0.05)  # a copy, had one been sent, would be under way by now
    assert not [q for q in old.received if q.path.startswith("/v1/videos")]


async def test_a_path_outside_v1_is_relayed_only_under_its_route(old, new, make_sidecar) -> None:
    async def native(request: web.Request) -> web.Response:
        return web.json_response(
            {"path": request.path, "key": request.headers.get("x-goog-api-key")}
        )

    runner, port = await serve("/v1beta/models/gemini:generateContent", native)
    try:
        cfg = base_config(old, new)
        cfg["upstreams"]["gemini"] = {
            "base_url": f"http://127.0.0.1:{port}/v1",
            "auth_header": "x-goog-api-key",
            "api_key": "gk-test-gemini-key-4444",
        }
        plain = await make_sidecar(cfg, name="plain.yaml")
        url = f"http://{plain.host}:{plain.port}/v1beta/models/gemini:generateContent"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={}) as r:
                assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
            cfg["routes"] = [{"path": "/v1beta", "primary": "gemini", "split": {"gemini": 1}}]
            routed = await make_sidecar(cfg, name="routed.yaml")
            url = f"http://{routed.host}:{routed.port}/v1beta/models/gemini:generateContent"
            async with http.post(url, json={}) as r:
                assert r.status == 200
                assert await r.json() == {
                    "path": "/v1beta/models/gemini:generateContent",
                    "key": "gk-test-gemini-key-4444",
                }
    finally:
        await runner.cleanup()


async def test_a_many_to_one_map_answers_with_the_asked_id_and_lists_every_id(
    old, new, make_sidecar, sdk
) -> None:
    llama = await started(FakeProvider(name="llama", api_key=OLD_KEY, models=("llama-3.3-70b",)))
    try:
        cfg = base_config(old, new, split={"llama": 1})
        cfg["upstreams"]["llama"] = {
            "base_url": llama.url,
            "api_key": OLD_KEY,
            "models": {"gpt-4": "llama-3.3-70b", "gpt-4-turbo": "llama-3.3-70b"},
        }
        sc = await make_sidecar(cfg)
        client = sdk(sc)
        reply = await client.chat.completions.create(
            model="gpt-4-turbo", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.model == "gpt-4-turbo"
        listed = [m.id async for m in client.models.list()]
        assert {"gpt-4", "gpt-4-turbo"} <= set(listed) and "llama-3.3-70b" not in listed
        assert (await client.models.retrieve("gpt-4-turbo")).id == "gpt-4-turbo"
    finally:
        await llama.close()


async def test_an_image_given_only_as_a_url_reaches_an_app_that_asked_b64_inline(
    old, new, make_sidecar, sdk
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
    seen: list[str | None] = []

    async def run(request: web.Request) -> web.Response:
        # An Abstrakt that answers URLs whatever output_format asked for.
        base = f"http://127.0.0.1:{request.url.port}"
        return web.json_response({"result": {"images": [{"url": f"{base}/files/1.png"}]}})

    async def file(request: web.Request) -> web.Response:
        seen.append(request.headers.get("authorization"))
        return web.Response(body=png, content_type="image/png")

    app = web.Application()
    app.router.add_post("/v1/models/{model}/run", run)
    app.router.add_get("/files/1.png", file)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        cfg = base_config(old, new)
        cfg["upstreams"]["abstrakt"] = {
            "base_url": f"http://127.0.0.1:{port}/v1",
            "api": "abstrakt",
            "api_key": ABSTRAKT_KEY,
        }
        cfg["routes"] = [{"path": "/v1/images/generations", "split": {"abstrakt": 1}}]
        sc = await make_sidecar(cfg)
        images = await sdk(sc).images.generate(model="m", prompt="x", response_format="b64_json")
        assert base64.b64decode(images.data[0].b64_json or "") == png
        assert seen == [None]  # the provider's key never goes to where its files are
    finally:
        await runner.cleanup()
