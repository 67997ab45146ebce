"""End to end through the sidecar with the official SDK: passthrough, streams, mapping, errors."""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
from collections import Counter
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from yarl import URL

from proxy.fakes.provider import Behaviour, FakeProvider
from tests.conftest import CLIENT_KEY, NEW_KEY, OLD_KEY, base_config, send_in_pieces, serve

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    }
]
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello to the sidecar"}]


def direct(fake: FakeProvider, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.url, api_key=key, max_retries=0)


async def test_chat_completion_passes_through_unchanged(old, new, make_sidecar, sdk) -> None:
    sc = await make_sidecar(base_config(old, new))
    via = await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    async with direct(old, OLD_KEY) as d:
        ref = await d.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert via.choices[0].message.content == ref.choices[0].message.content
    assert via.usage is not None and via.usage.total_tokens == ref.usage.total_tokens  # type: ignore[union-attr]


async def test_streamed_content_arrives_complete_and_in_order(old, new, make_sidecar, sdk) -> None:
    sc = await make_sidecar(base_config(old, new))
    stream = await sdk(sc).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    async with direct(old, OLD_KEY) as d:
        ref = await d.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(pieces) > 3
    assert "".join(pieces) == ref.choices[0].message.content


async def test_stream_without_usage_request_gets_no_usage_chunk(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    cfg = base_config(old, new, record={"enabled": True, "path": str(tmp_path / "r.db")})
    sc = await make_sidecar(cfg)
    stream = await sdk(sc).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    # ...although the sidecar asked the upstream for it, to record the tokens.
    assert old.received[-1].json["stream_options"] == {"include_usage": True}


async def test_stream_goes_as_sent_when_nothing_is_recorded(old, new, make_sidecar, sdk) -> None:
    sc = await make_sidecar(base_config(old, new))  # recording off
    stream = await sdk(sc).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks and all(c.choices and c.usage is None for c in chunks)
    assert "stream_options" not in old.received[-1].json


async def test_stream_with_usage_request_keeps_usage_chunk(old, new, make_sidecar, sdk) -> None:
    sc = await make_sidecar(base_config(old, new))
    stream = await sdk(sc).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


async def test_embeddings_models_tools_and_json_mode_pass_intact(
    old, new, make_sidecar, sdk
) -> None:
    sc = await make_sidecar(base_config(old, new))
    client = sdk(sc)
    emb = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
    models = await client.models.list()
    assert "gpt-4o-mini" in [m.id for m in models.data]
    tool = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS)
    call = tool.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert tool.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    import json

    assert set(json.loads(call.function.arguments)) == {"city", "days"}  # type: ignore[union-attr]
    js = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(js.choices[0].message.content or ""), dict)


async def test_responses_api_streams_through(old, new, make_sidecar, sdk) -> None:
    sc = await make_sidecar(base_config(old, new))
    client = sdk(sc)
    plain = await client.responses.create(model="gpt-4o-mini", input="hello there")
    stream = await client.responses.create(model="gpt-4o-mini", input="hello there", stream=True)
    deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
    assert "".join(deltas) == plain.output_text


async def test_model_is_mapped_and_keys_are_swapped(old, new, make_sidecar, sdk) -> None:
    sc = await make_sidecar(base_config(old, new, split={"old": 0, "new": 100}))
    await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    got = new.received[-1]
    assert got.json["model"] == "prov/gpt-4o-mini"
    assert got.headers["authorization"] == f"Bearer {NEW_KEY}"
    assert CLIENT_KEY not in str(dict(got.headers)) and CLIENT_KEY.encode() not in got.body
    assert not old.received


async def test_answers_name_the_model_the_app_asked_for(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    db = tmp_path / "rec.db"
    cfg = base_config(old, new, split={"new": 1}, record={"enabled": True, "path": str(db)})
    sc = await make_sidecar(cfg)
    client = sdk(sc)
    answer = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert answer.model == "gpt-4o-mini"
    assert new.received[-1].json["model"] == "prov/gpt-4o-mini"
    chunks = [
        c
        async for c in await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
    ]
    assert chunks and {c.model for c in chunks} == {"gpt-4o-mini"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        answer.choices[0].message.content
    )
    events = [
        e async for e in await client.responses.create(model="gpt-4o-mini", input="hi", stream=True)
    ]
    done = [e for e in events if e.type == "response.completed"]
    assert done and done[0].response.model == "gpt-4o-mini"  # nested in the event
    embedded = await client.embeddings.create(model="text-embedding-3-small", input="x")
    assert embedded.model == "text-embedding-3-small"
    # The record keeps what the provider said.
    await sc.stop()
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT response_body FROM responses WHERE role = 'primary'").fetchall()
    finally:
        con.close()
    bodies = [orjson.loads(b) for (b,) in rows if b and b.startswith(b"{")]
    chat = [b for b in bodies if b.get("object") == "chat.completion"]
    assert chat and chat[0]["model"] == "prov/gpt-4o-mini"


async def test_model_in_path_is_mapped(old, new, make_sidecar) -> None:
    sc = await make_sidecar(base_config(old, new, split={"new": 1}))
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{sc.url}/models/flux/run", json={"prompt": "a cat"}) as r,
    ):
        assert r.status == 200
        assert (await r.json())["model"] == "flux"  # the provider said black-forest/flux
    assert new.received[-1].path == "/v1/models/black-forest/flux/run"


async def test_the_model_list_and_a_model_name_the_ids_the_app_asks_for(
    old, new, make_sidecar, sdk
) -> None:
    # An app that checks its model with models.retrieve() or models.list() must find it by its
    # own id, whichever provider answers.
    sc = await make_sidecar(base_config(old, new, split={"new": 1}))
    client = sdk(sc)
    got = await client.models.retrieve("gpt-4o-mini")
    assert got.id == "gpt-4o-mini" and got.owned_by == "new"
    assert new.received[-1].path == "/v1/models/prov/gpt-4o-mini"
    listed = [m.id async for m in client.models.list()]
    assert listed == ["gpt-4o-mini", "text-embedding-3-small", "flux"]
    assert new.received[-1].path == "/v1/models"


async def test_non_json_body_is_forwarded_byte_for_byte(old, new, make_sidecar) -> None:
    sc = await make_sidecar(base_config(old, new))
    payload = bytes(range(256)) * 40
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            URL(f"{sc.url}/files?purpose=batch&x=%2F", encoded=True),
            data=payload,
            headers={"content-type": "application/octet-stream"},
        ) as r,
    ):
        await r.read()
    got = old.received[-1]
    assert got.body == payload
    assert got.query == "purpose=batch&x=%2F"


async def test_weighted_split_matches_weights(old, new, make_sidecar) -> None:
    sc = await make_sidecar(base_config(old, new, split={"old": 90, "new": 10}))
    served: Counter[str] = Counter()
    sem = asyncio.Semaphore(32)

    async def one(s: aiohttp.ClientSession) -> None:
        async with sem, s.get(f"{sc.url}/models") as r:
            await r.read()
            served[r.headers["x-sidecar-upstream"]] += 1

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(one(s) for _ in range(2000)))
    # Binomial(2000, 0.1): sd 13.4; 5 sd either side is a false alarm once in ~3 million runs.
    assert 200 - 67 <= served["new"] <= 200 + 67
    assert served["old"] + served["new"] == 2000


async def test_zero_weight_sends_nothing(old, new, make_sidecar) -> None:
    sc = await make_sidecar(base_config(old, new, split={"old": 1, "new": 0}))
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            async with s.get(f"{sc.url}/models") as r:
                await r.read()
    assert not new.received


async def test_sticky_key_always_lands_on_the_same_upstream(old, new, make_sidecar, sdk) -> None:
    cfg = base_config(
        old, new, split={"old": 50, "new": 50}, sticky={"header": "x-user-id", "body_field": "user"}
    )
    sc = await make_sidecar(cfg)
    client = sdk(sc)
    seen: dict[str, set[str]] = {}
    for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
        for _ in range(8):
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MESSAGES, user=user
            )
            seen.setdefault(user, set()).add(raw.headers["x-sidecar-upstream"])
    assert all(len(v) == 1 for v in seen.values())
    assert {next(iter(v)) for v in seen.values()} == {"old", "new"}  # 6 users, 50/50: both used


async def test_responses_carry_request_id_and_upstream(old, new, make_sidecar, sdk) -> None:
    sc = await make_sidecar(base_config(old, new))
    raw = await sdk(sc).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-sidecar-upstream"] == "old"


async def test_gzip_answer_reaches_the_app_decoded(old, new, make_sidecar, sdk) -> None:
    old.behaviour = Behaviour(gzip=True)
    sc = await make_sidecar(base_config(old, new))
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.post(
            f"{sc.url}/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
            headers={"accept-encoding": "gzip"},
        ) as r,
    ):
        body = await r.read()
        encoding = r.headers.get("content-encoding")
    # Either relayed compressed with its header, or decoded without it; never a mix.
    text = gzip.decompress(body) if encoding == "gzip" else body
    assert b"chat.completion" in text
    via = await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert via.choices[0].message.content


async def test_unreachable_upstream_is_a_502_naming_it(old, new, make_sidecar, sdk) -> None:
    cfg = base_config(old, new)
    cfg["upstreams"]["old"]["base_url"] = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    sc = await make_sidecar(cfg)
    with pytest.raises(openai.InternalServerError) as e:
        await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert e.value.status_code == 502
    body: Any = e.value.body
    assert "'old'" in body["message"] and body["code"] == "upstream_unreachable"
    assert OLD_KEY not in str(body)


async def test_slow_upstream_is_a_504(old, new, make_sidecar, sdk) -> None:
    old.behaviour = Behaviour(fail="hang")
    cfg = base_config(old, new)
    cfg["upstreams"]["old"]["timeouts"] = {"first_byte": 0.3}
    sc = await make_sidecar(cfg)
    with pytest.raises(openai.APIStatusError) as e:
        await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert e.value.status_code == 504
    assert e.value.body["code"] == "upstream_timeout"  # type: ignore[index]


async def test_body_over_limit_is_a_413(old, new, make_sidecar, sdk) -> None:
    sc = await make_sidecar(base_config(old, new, limits={"max_body_bytes": 1000}))
    with pytest.raises(openai.APIStatusError) as e:
        await sdk(sc).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 2000}]
        )
    assert e.value.status_code == 413
    assert e.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert not old.received


async def test_chunked_body_over_limit_is_a_413(old, new, make_sidecar) -> None:
    sc = await make_sidecar(base_config(old, new, limits={"max_body_bytes": 1000}))

    async def gen():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"x" * 500

    async with aiohttp.ClientSession() as s, s.post(f"{sc.url}/chat/completions", data=gen()) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "request_too_large"


async def test_body_that_stalls_mid_way_is_a_408_and_the_connection_closes(
    old, new, make_sidecar, sdk
) -> None:
    sc = await make_sidecar(base_config(old, new, limits={"body_timeout": 0.3}))
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.port)
    try:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        writer.write(head + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()  # then nothing more: an app stuck mid-body
        raw = await asyncio.wait_for(reader.read(), timeout=10)  # to EOF: the sidecar closes
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line.split()[1] == b"408"
    error = orjson.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "request_timeout" and "limits.body_timeout" in error["message"]
    assert not old.received
    # A slow body that keeps coming is not cut, though it takes twice the limit in all.
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES})
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.port)
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        step = len(body) // 6 + 1
        for i in range(0, len(body), step):
            writer.write(body[i : i + step])
            await writer.drain()
            await asyncio.sleep(0.1)
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    assert raw.split(b"\r\n", 1)[0].split()[1] == b"200"
    assert old.received[-1].json["messages"] == MESSAGES
    # A body that comes whole is not held to the clock, however slow the upstream.
    old.behaviour = Behaviour(latency=0.5)
    answer = await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert answer.choices[0].message.content


async def test_websocket_upgrade_is_a_clear_501_and_h2c_is_ignored(old, new, make_sidecar) -> None:
    sc = await make_sidecar(base_config(old, new))
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await s.ws_connect(f"{sc.url}/realtime?model=gpt-4o-realtime-preview")
        assert e.value.status == 501
        async with s.get(f"{sc.url}/realtime", headers={"Upgrade": "websocket"}) as r:
            assert r.status == 501
            error = (await r.json())["error"]
            assert error["code"] == "not_implemented" and "WebSocket" in error["message"]
        assert not old.received
        # curl --http2 on plain http asks for h2c; the answer is plain HTTP/1.1 as ever.
        upgrade = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c"}
        async with s.get(f"{sc.url}/models", headers=upgrade) as r:
            assert r.status == 200 and (await r.json())["data"]


async def test_paths_outside_v1_are_a_404_in_openai_shape(old, new, make_sidecar) -> None:
    sc = await make_sidecar(base_config(old, new))
    root = sc.url.removesuffix("/v1")
    async with aiohttp.ClientSession() as s:
        for path in ("/chat/completions", "/", "/_proxy/nope"):
            async with s.get(root + path) as r:
                assert r.status == 404
                assert set((await r.json())["error"]) >= {"message", "type", "code"}


async def test_upstream_errors_pass_through_unchanged(old, new, make_sidecar, sdk) -> None:
    old.behaviour = Behaviour(fail="429")
    sc = await make_sidecar(base_config(old, new))
    with pytest.raises(openai.RateLimitError):
        await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


async def test_client_disconnect_mid_stream_cancels_upstream(old, new, make_sidecar, sdk) -> None:
    old.behaviour = Behaviour(chunk_delay=0.05, chunks=200)
    sc = await make_sidecar(base_config(old, new))
    client = sdk(sc)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    n = 0
    async for _ in stream:
        n += 1
        if n == 3:
            break
    await stream.close()
    await asyncio.wait_for(old.cancelled.wait(), timeout=5)
    for _ in range(100):  # the upstream connection is released
        if sc.live.current.upstreams["old"].in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert sc.live.current.upstreams["old"].in_flight == 0


async def test_upstream_dying_mid_stream_ends_with_an_error_event(
    old, new, make_sidecar, sdk
) -> None:
    old.behaviour = Behaviour(fail="die_mid_stream")
    sc = await make_sidecar(base_config(old, new))
    stream = await sdk(sc).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIError) as e:
        async for _ in stream:
            pass
    assert "broke off" in e.value.message


async def test_idle_stream_times_out_with_an_error_event(old, new, make_sidecar) -> None:
    old.behaviour = Behaviour(chunk_delay=2.0, chunks=5)
    cfg = base_config(old, new)
    cfg["upstreams"]["old"]["timeouts"] = {"idle": 0.3}
    sc = await make_sidecar(cfg)
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{sc.url}/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
        ) as r,
    ):
        body = await asyncio.wait_for(r.read(), timeout=10)
    assert b"upstream_timeout" in body


async def test_health_shows_revision_and_split(old, new, make_sidecar) -> None:
    sc = await make_sidecar(base_config(old, new, split={"old": 3, "new": 1}))
    async with (
        aiohttp.ClientSession() as s,
        s.get(sc.url.removesuffix("/v1") + "/_proxy/health") as r,
    ):
        health = await r.json()
    assert health["status"] == "ok"
    assert health["split"] == {"old": 0.75, "new": 0.25}
    assert health["revision"].startswith("1-")


@pytest.mark.parametrize(
    "label",
    [
        "application/x-www-form-urlencoded",  # what `curl -d '{...}'` sends
        "application/json; charset=utf-8",
        "Application/JSON",
        "text/plain",
        "nonsense",
        None,
    ],
)
async def test_json_under_any_plausible_label_is_still_mapped(
    old, new, make_sidecar, label: str | None
) -> None:
    sc = await make_sidecar(base_config(old, new, split={"new": 1}))
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    headers = {} if label is None else {"content-type": label}
    async with (
        aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as s,
        s.post(f"{sc.url}/chat/completions", data=body, headers=headers) as r,
    ):
        assert r.status == 200
    assert new.received[-1].json["model"] == "prov/gpt-4o-mini"


async def test_ndjson_stream_is_piped_not_buffered(make_sidecar, old, new) -> None:

    release = asyncio.Event()

    async def ndjson(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(b'{"n": 1}\n')
        await release.wait()
        await resp.write(b'{"n": 2}\n')
        await resp.write_eof()
        return resp

    runner, port = await serve("/v1/stream", ndjson)
    try:
        cfg = base_config(old, new)
        cfg["upstreams"]["old"]["base_url"] = f"http://127.0.0.1:{port}/v1"
        sc = await make_sidecar(cfg)
        async with aiohttp.ClientSession() as s, s.post(f"{sc.url}/stream") as r:
            first = await asyncio.wait_for(r.content.readline(), timeout=5)
            assert first == b'{"n": 1}\n'  # arrived before the upstream finished
            release.set()
            assert await r.content.readline() == b'{"n": 2}\n'
    finally:
        release.set()
        await runner.cleanup()


async def test_bodies_are_parsed_only_when_something_reads_them(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    plain = base_config(old, new)
    plain["upstreams"]["new"].pop("models")
    sc = await make_sidecar(plain)
    assert sc.live.current.inspect_bodies is False
    # Unparsed, the request still goes through whole, streams included.
    answer = await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert answer.choices[0].message.content
    stream = await sdk(sc).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    assert [c async for c in stream]
    assert old.received[-1].json["stream"] is True and "stream_options" not in old.received[-1].json
    readers: list[dict[str, Any]] = [
        {"record": {"enabled": True, "path": str(tmp_path / "r.db")}},
        {"log": {"requests": True}},
        {"routes": [{"path": "/v1/chat/completions", "model": "gpt-*", "split": {"old": 1}}]},
        {"sticky": {"body_field": "user"}},
        {"shadow": {"upstream": "new", "sample": 0.5}},
    ]
    for extra in readers:
        sc = await make_sidecar({**plain, **extra}, name=f"{next(iter(extra))}.yaml")
        assert sc.live.current.inspect_bodies is True, extra
    sc = await make_sidecar(base_config(old, new), name="mapped.yaml")  # `new` maps models
    assert sc.live.current.inspect_bodies is True


async def test_a_multi_megabyte_event_in_small_writes_arrives_whole_and_is_counted(
    make_sidecar, old, new, sdk, tmp_path
) -> None:
    # An image's base64 or a long tool call comes as one large event in many TCP reads; the
    # sidecar parses it (recording) and relays it event by event (the model id is mapped back).

    big = "A" * (4 * 1024 * 1024)
    head = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "prov/gpt-4o-mini",
    }
    events = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": big}}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {
            **head,
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        },
    ]
    stream = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"

    async def sse(request: web.Request) -> web.StreamResponse:
        return await send_in_pieces(request, stream, "text/event-stream", 8192)

    runner, port = await serve("/v1/chat/completions", sse)
    try:
        cfg = base_config(old, new, split={"new": 1})
        cfg["upstreams"]["new"]["base_url"] = f"http://127.0.0.1:{port}/v1"
        cfg["record"] = {"enabled": True, "path": str(tmp_path / "r.db")}
        sc = await make_sidecar(cfg)
        chunks = [
            c
            async for c in await sdk(sc).chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True
            )
        ]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == big
        assert {c.model for c in chunks} == {"gpt-4o-mini"}
        await sc.stop()
        con = sqlite3.connect(tmp_path / "r.db")
        try:
            row = con.execute("SELECT completion_tokens, stream_done, error_kind FROM responses")
            assert row.fetchone() == (7, 1, None)
        finally:
            con.close()
    finally:
        await runner.cleanup()


async def test_a_compressed_request_body_goes_on_plain_and_is_mapped(
    old, new, make_sidecar, tmp_path
) -> None:
    # aiohttp decodes gzip/deflate before the handler reads the body; forwarding the decoded
    # bytes under the original Content-Encoding made every provider fail to gunzip them.
    cfg = base_config(old, new, split={"new": 1})
    cfg["record"] = {"enabled": True, "path": str(tmp_path / "r.db")}
    sc = await make_sidecar(cfg)
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES})
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{sc.url}/chat/completions", data=gzip.compress(body), headers=headers) as r,
    ):
        assert r.status == 200, await r.text()
        assert (await r.json())["model"] == "gpt-4o-mini"
    got = new.received[-1]
    assert "content-encoding" not in got.headers
    assert got.json["model"] == "prov/gpt-4o-mini"


async def test_a_body_that_does_not_decode_is_a_400_from_the_sidecar(
    old, new, make_sidecar
) -> None:
    sc = await make_sidecar(base_config(old, new))
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{sc.url}/chat/completions", data=b'{"not": "gzip"}', headers=headers) as r,
    ):
        assert r.status == 400
        error = (await r.json())["error"]
    assert "could not read the request body" in error["message"]
    assert "gzip" in error["message"]
    assert not old.received


async def test_a_coding_the_sidecar_does_not_decode_goes_on_as_sent(old, new, make_sidecar) -> None:
    sc = await make_sidecar(base_config(old, new))
    headers = {"content-type": "application/json", "content-encoding": "x-custom"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{sc.url}/chat/completions", data=b"\x00opaque", headers=headers) as r,
    ):
        await r.read()
    got = old.received[-1]
    assert got.headers["content-encoding"] == "x-custom"
    assert got.body == b"\x00opaque"


async def test_an_app_that_leaves_at_done_is_not_a_failure(
    make_sidecar, old, new, sdk, tmp_path
) -> None:
    # The SDKs stop reading at [DONE] and close; an upstream that takes its time to end the
    # response after [DONE] must not turn a complete stream into a client_disconnect.
    events = [
        {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
         "choices": [{"index": 0, "delta": {"content": "hi"}}]},
        {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
    ]  # fmt: skip

    release = asyncio.Event()

    async def slow_end(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for e in events:
            await resp.write(b"data: " + orjson.dumps(e) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await release.wait()  # the response is not ended for as long as the test runs
        return resp

    runner, port = await serve("/v1/chat/completions", slow_end)
    try:
        cfg = base_config(old, new)
        cfg["upstreams"]["old"]["base_url"] = f"http://127.0.0.1:{port}/v1"
        cfg["record"] = {"enabled": True, "path": str(tmp_path / "r.db")}
        sc = await make_sidecar(cfg)
        stream = await sdk(sc).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        async with stream:
            assert [c.choices[0].delta.content async for c in stream if c.choices] == ["hi", None]
        await asyncio.sleep(0.2)
        await sc.stop()
        con = sqlite3.connect(tmp_path / "r.db")
        try:
            row = con.execute("SELECT error_kind, stream_done, total_tokens FROM responses")
            assert row.fetchone() == (None, 1, 2)
        finally:
            con.close()
    finally:
        release.set()
        await runner.cleanup()


async def test_a_malformed_upstream_answer_is_described_without_quoting_it(
    old, new, make_sidecar, sdk
) -> None:
    # The parser quotes the line it choked on; an upstream that echoes request headers would
    # put the sidecar's key into the app's error, the log and the record.
    async def echo_key(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readline() not in (b"\r\n", b""):
            pass
        writer.write(b"HTTP/1.1 200 OK\r\nX-Echo: " + OLD_KEY.encode() * 400 + b"\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo_key, "127.0.0.1", 0)
    try:
        cfg = base_config(old, new)
        cfg["upstreams"]["old"]["base_url"] = (
            f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        )
        sc = await make_sidecar(cfg)
        with pytest.raises(openai.APIStatusError) as e:
            await sdk(sc).with_options(max_retries=0).models.list()
        assert e.value.status_code == 502
        message = e.value.body["message"]  # type: ignore[index]
        assert message.endswith("sent a malformed response: Got more than 8190 bytes when reading")
        assert OLD_KEY not in message
    finally:
        server.close()
        await server.wait_closed()


async def test_a_key_an_upstream_quotes_in_its_error_reaches_neither_app_nor_record(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    # Some gateways answer a refused key with it whole. The sidecar put that key there; the app
    # never had it and must not get it in an exception it may log, nor may the record keep it.
    async def refuse(request: web.Request) -> web.Response:
        key = request.headers["authorization"].removeprefix("Bearer ")
        await request.read()
        error = {"message": f"Invalid API key: {key}. Check {key!r}.", "type": "auth"}
        return web.json_response({"error": error}, status=401)

    runner, port = await serve("/v1/chat/completions", refuse)
    try:
        cfg = base_config(old, new, split={"old": 1})
        for name in ("old", "new"):
            cfg["upstreams"][name]["base_url"] = f"http://127.0.0.1:{port}/v1"
        cfg["shadow"] = {"upstream": "new", "sample": 1.0}
        cfg["record"] = {"enabled": True, "path": str(tmp_path / "r.db")}
        sc = await make_sidecar(cfg)
        with pytest.raises(openai.AuthenticationError) as e:
            await (
                sdk(sc)
                .with_options(max_retries=0)
                .chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            )
        message = e.value.body["message"]  # type: ignore[index]
        assert message.startswith("Invalid API key: [key redacted by the sidecar]")
        assert OLD_KEY not in str(e.value.body) and OLD_KEY not in e.value.response.text
        for _ in range(250):
            if sc.counters.shadow_sent == 1 and sc.shadower.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        assert sc.counters.shadow_sent == 1
        await sc.stop()
        recorded = b"".join(p.read_bytes() for p in tmp_path.glob("r.db*"))
        assert b"key redacted by the sidecar" in recorded  # the bodies are there...
        assert OLD_KEY.encode() not in recorded and NEW_KEY.encode() not in recorded  # ...less keys
    finally:
        await runner.cleanup()


async def test_a_model_named_in_an_upload_form_is_mapped_for_each_upstream(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    # Audio transcription names its model in a multipart form field, not in JSON.
    seen: list[tuple[str, str, int]] = []

    async def transcribe(request: web.Request) -> web.Response:
        form = await request.post()
        audio = form["file"]
        assert isinstance(audio, web.FileField)
        seen.append((request.headers["authorization"], str(form["model"]), len(audio.file.read())))
        return web.json_response({"text": "hello"})

    runner, port = await serve("/v1/audio/transcriptions", transcribe)
    try:
        cfg = base_config(old, new, split={"new": 1})
        for name in ("old", "new"):
            cfg["upstreams"][name]["base_url"] = f"http://127.0.0.1:{port}/v1"
        cfg["upstreams"]["new"]["models"]["whisper-1"] = "prov/whisper-1"
        cfg["shadow"] = {"upstream": "old", "sample": 1.0}
        cfg["record"] = {"enabled": True, "path": str(tmp_path / "r.db")}
        sc = await make_sidecar(cfg)
        audio = b"RIFF" + bytes(range(256)) * 400
        got = await sdk(sc).audio.transcriptions.create(
            model="whisper-1", file=("a.wav", audio, "audio/wav"), language="en"
        )
        assert got.text == "hello"
        for _ in range(250):
            if len(seen) == 2 and sc.shadower.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        assert seen == [
            (f"Bearer {NEW_KEY}", "prov/whisper-1", len(audio)),  # the app's answer
            (f"Bearer {OLD_KEY}", "whisper-1", len(audio)),  # the shadow copy, unmapped
        ]
        await sc.stop()
        con = sqlite3.connect(tmp_path / "r.db")
        try:
            assert con.execute("SELECT model FROM exchanges").fetchall() == [("whisper-1",)]
            rows = con.execute("SELECT role, model_sent FROM responses ORDER BY role").fetchall()
            assert rows == [("primary", "prov/whisper-1"), ("shadow", "whisper-1")]
        finally:
            con.close()
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("framing", ["gzip", "chunked"])
async def test_an_answer_larger_than_it_said_is_piped_not_held(
    old, new, make_sidecar, tmp_path, monkeypatch, framing: str
) -> None:
    # A 3 KB gzip body may inflate to gigabytes, and chunked JSON may never end: both were read
    # whole into memory. Past the buffer limit the sidecar now pipes the rest as it comes.
    import proxy.serve.exchange

    monkeypatch.setattr(proxy.serve.exchange, "BUFFER_LIMIT", 1024 * 1024)
    big = b'{"data": "' + b"x" * (3 * 1024 * 1024) + b'"}'

    async def large(request: web.Request) -> web.StreamResponse:
        await request.read()
        if framing == "gzip":
            packed = gzip.compress(big)
            assert len(packed) < 64 * 1024
            headers = {"content-type": "application/json", "content-encoding": "gzip"}
            return web.Response(body=packed, headers=headers)
        return await send_in_pieces(request, big, "application/json", 65536)

    runner, port = await serve("/v1/embeddings", large)
    try:
        cfg = base_config(old, new)
        cfg["upstreams"]["old"]["base_url"] = f"http://127.0.0.1:{port}/v1"
        cfg["record"] = {"enabled": True, "path": str(tmp_path / "r.db")}
        sc = await make_sidecar(cfg)
        body = {"model": "text-embedding-3-small", "input": "x"}
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{sc.url}/embeddings", json=body) as r,
        ):
            assert r.status == 200
            assert await r.read() == big
        await sc.stop()
        con = sqlite3.connect(tmp_path / "r.db")
        try:
            row = con.execute("SELECT status, bytes, response_body, error_kind FROM responses")
            assert row.fetchone() == (200, len(big), None, None)
        finally:
            con.close()
    finally:
        await runner.cleanup()
