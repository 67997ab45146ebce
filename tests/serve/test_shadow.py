"""Shadow copies and the record of every exchange, end to end through the SDK."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from proxy.fakes.provider import Behaviour
from proxy.serve.app import Sidecar
from tests.conftest import CLIENT_KEY, NEW_KEY, OLD_KEY, base_config, serve

MESSAGES: list[Any] = [{"role": "user", "content": "Tell me about sidecars"}]


def recording(tmp_path: Path, **bodies: str) -> dict[str, Any]:
    return {
        "enabled": True,
        "path": str(tmp_path / "rec.db"),
        "bodies": bodies or {"request": "full", "response": "full"},
    }


def shadowing(**kw: Any) -> dict[str, Any]:
    return {"upstream": "new", "sample": 1.0, **kw}


def rows(db: str, sql: str, *args: Any) -> list[sqlite3.Row]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


async def settled(
    sc: Sidecar, db: str, exchanges: int, responses: int, timeout: float = 5.0
) -> None:
    """Wait until the writer has put the expected rows in the file."""
    t0 = time.monotonic()
    while True:
        if Path(db).exists():
            try:
                e = rows(db, "SELECT count(*) AS n FROM exchanges")[0]["n"]
                r = rows(db, "SELECT count(*) AS n FROM responses")[0]["n"]
                if e >= exchanges and r >= responses:
                    return
            except sqlite3.OperationalError:
                pass
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"records not written: {sc.stats_view()}")
        await asyncio.sleep(0.02)


async def test_shadowed_call_records_both_sides(old, new, make_sidecar, sdk, tmp_path) -> None:
    sc = await make_sidecar(base_config(old, new, shadow=shadowing(), record=recording(tmp_path)))
    reply = await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 1, 2)
    ex = rows(db, "SELECT * FROM exchanges")[0]
    assert (
        ex["model"] == "gpt-4o-mini"
        and ex["stream"] == 0
        and ex["revision"] == sc.live.current.revision
    )
    by_role = {r["role"]: r for r in rows(db, "SELECT * FROM responses")}
    p, s = by_role["primary"], by_role["shadow"]
    assert p["upstream"] == "old" and s["upstream"] == "new"
    assert s["model_sent"] == "prov/gpt-4o-mini"
    assert p["status"] == s["status"] == 200
    assert reply.usage is not None and p["total_tokens"] == reply.usage.total_tokens
    assert p["shape"] is not None and p["shape"] == s["shape"]  # same structure, other words
    shadow_body = orjson.loads(s["response_body"])
    assert s["total_tokens"] == shadow_body["usage"]["total_tokens"]
    assert (
        orjson.loads(p["response_body"])["choices"][0]["message"]["content"]
        == reply.choices[0].message.content
    )
    # The shadow got the shadow upstream's key and model, the app its own answer only.
    assert new.received[-1].headers["authorization"] == f"Bearer {NEW_KEY}"
    assert new.received[-1].json["model"] == "prov/gpt-4o-mini"


async def test_shadowed_stream_is_consumed_and_measured(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    sc = await make_sidecar(base_config(old, new, shadow=shadowing(), record=recording(tmp_path)))
    stream = await sdk(sc).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 1, 2)
    by_role = {r["role"]: r for r in rows(db, "SELECT * FROM responses")}
    p, s = by_role["primary"], by_role["shadow"]
    assert orjson.loads(p["response_body"])["text"] == text
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{new.url}/chat/completions",
            json={"model": "prov/gpt-4o-mini", "messages": MESSAGES},
            headers={"authorization": f"Bearer {NEW_KEY}"},
        ) as r,
    ):
        direct = await r.json()
    assert orjson.loads(s["response_body"])["text"] == direct["choices"][0]["message"]["content"]
    for row in (p, s):
        assert row["stream_done"] == 1 and row["error_kind"] is None
        assert row["completion_tokens"] and row["prompt_tokens"]
        assert row["ttft_ms"] is not None and row["ttft_ms"] <= row["total_ms"]
    assert new.received[0].json["stream"] is True


async def test_usage_requested_by_the_app_is_recorded_too(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    sc = await make_sidecar(base_config(old, new, record=recording(tmp_path)))
    stream = await sdk(sc).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 1, 1)
    assert rows(db, "SELECT total_tokens FROM responses")[0][0] == chunks[-1].usage.total_tokens


async def test_missing_usage_is_recorded_as_null(old, new, make_sidecar, sdk, tmp_path) -> None:
    old.behaviour = Behaviour(usage=False)
    sc = await make_sidecar(base_config(old, new, record=recording(tmp_path)))
    await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 1, 1)
    row = rows(db, "SELECT prompt_tokens, completion_tokens, total_tokens FROM responses")[0]
    assert tuple(row) == (None, None, None)


async def test_slow_shadow_does_not_delay_the_primary(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    new.behaviour = Behaviour(fail="hang")
    cfg = base_config(old, new, shadow=shadowing(), record=recording(tmp_path))
    cfg["upstreams"]["new"]["timeouts"] = {"first_byte": 1.0}
    sc = await make_sidecar(cfg)
    client = sdk(sc)
    t0 = time.monotonic()
    for _ in range(3):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert time.monotonic() - t0 < 0.5 * 3  # generous: the shadow hangs for a full second
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 3, 6)
    shadow = rows(db, "SELECT error_kind, status FROM responses WHERE role='shadow'")
    assert [tuple(r) for r in shadow] == [("timeout", None)] * 3


@pytest.mark.parametrize("fault", ["500", "reset", "die_mid_stream", "broken_stream"])
async def test_failing_shadow_never_changes_the_answer(
    old, new, make_sidecar, sdk, tmp_path, fault
) -> None:
    new.behaviour = Behaviour(fail=fault)
    sc = await make_sidecar(base_config(old, new, shadow=shadowing(), record=recording(tmp_path)))
    client = sdk(sc)
    plain = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == plain.choices[0].message.content
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 2, 4)
    sql = "SELECT e.stream, r.error_kind FROM responses r JOIN exchanges e ON e.id = r.exchange_id WHERE role = ?"
    shadow = {r[0]: r[1] for r in rows(db, sql, "shadow")}
    assert shadow[1] is not None  # the streamed copy failed, and was recorded as failed
    if fault != "broken_stream":  # that fault only breaks streams
        assert shadow[0] is not None
    assert {r[1] for r in rows(db, sql, "primary")} == {None}
    assert sc.counters.shadow_failed == sum(v is not None for v in shadow.values())


async def test_in_flight_cap_skips_and_counts(old, new, make_sidecar, tmp_path) -> None:
    new.behaviour = Behaviour(latency=1.0)
    sc = await make_sidecar(base_config(old, new, shadow=shadowing(max_in_flight=2)))
    async with aiohttp.ClientSession() as s:

        async def one() -> None:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(f"{sc.url}/chat/completions", json=body) as r:
                assert r.status == 200

        await asyncio.gather(*(one() for _ in range(3)))
    assert sc.counters.shadow_sent == 2
    assert sc.counters.shadow_skipped_cap == 1


async def test_shadow_to_the_serving_upstream_is_skipped(old, new, make_sidecar, sdk) -> None:
    sc = await make_sidecar(base_config(old, new, split={"new": 1}, shadow=shadowing()))
    await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert sc.counters.shadow_skipped_same == 1 and len(new.received) == 1


async def test_x_shadow_off_opts_a_call_out(old, new, make_sidecar, sdk) -> None:
    sc = await make_sidecar(base_config(old, new, shadow=shadowing()))
    await sdk(sc).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-shadow": "off"}
    )
    await asyncio.sleep(0.1)
    assert not new.received and sc.counters.shadow_sent == 0


async def test_noise_copies_go_to_the_serving_upstream(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    sc = await make_sidecar(
        base_config(old, new, shadow=shadowing(noise_sample=1.0), record=recording(tmp_path))
    )
    await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 1, 3)
    roles = {r["role"]: r["upstream"] for r in rows(db, "SELECT role, upstream FROM responses")}
    assert roles == {"primary": "old", "shadow": "new", "noise": "old"}


@pytest.mark.parametrize("policy", ["hash", "none"])
async def test_body_policy_keeps_prompts_out(old, new, make_sidecar, sdk, tmp_path, policy) -> None:
    sc = await make_sidecar(
        base_config(
            old,
            new,
            shadow=shadowing(),
            record=recording(tmp_path, request=policy, response=policy),
        )
    )
    client = sdk(sc)
    await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    async for _ in stream:
        pass
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 2, 4)
    await sc.stop()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("rec.db*"))
    assert b"sidecars" not in raw  # the prompt's text
    for key in (CLIENT_KEY, OLD_KEY, NEW_KEY):
        assert key.encode() not in raw
    hashes = rows(db, "SELECT request_sha256 FROM exchanges")
    assert all((h[0] is not None) == (policy == "hash") for h in hashes)
    answers = rows(db, "SELECT response_sha256, response_body FROM responses")
    assert len(answers) == 4
    assert all((a[0] is not None) == (policy == "hash") and a[1] is None for a in answers)


async def test_no_key_reaches_the_database_under_full_policy(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    sc = await make_sidecar(base_config(old, new, shadow=shadowing(), record=recording(tmp_path)))
    await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await settled(sc, str(tmp_path / "rec.db"), 1, 2)
    await sc.stop()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("rec.db*"))
    assert b"sidecars" in raw
    for key in (CLIENT_KEY, OLD_KEY, NEW_KEY):
        assert key.encode() not in raw


async def test_locked_database_drops_records_not_requests(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    sc = await make_sidecar(base_config(old, new, record=recording(tmp_path)))
    client = sdk(sc)
    db = str(tmp_path / "rec.db")
    await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await settled(sc, db, 1, 1)
    locker = sqlite3.connect(db, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        for _ in range(5):
            reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert reply.choices[0].message.content
        t0 = time.monotonic()
        while sc.stats_view()["records"]["errors"] == 0 and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.05)
        assert sc.stats_view()["records"]["errors"] > 0
    finally:
        locker.rollback()
        locker.close()
    await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        if rows(db, "SELECT count(*) FROM exchanges")[0][0] >= 2:
            break
        await asyncio.sleep(0.05)
    assert rows(db, "SELECT count(*) FROM exchanges")[0][0] >= 2  # the writer recovered


async def test_stats_endpoint_counts_since_start(old, new, make_sidecar, sdk, tmp_path) -> None:
    sc = await make_sidecar(base_config(old, new, shadow=shadowing(), record=recording(tmp_path)))
    await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await settled(sc, str(tmp_path / "rec.db"), 1, 2)
    async with (
        aiohttp.ClientSession() as s,
        s.get(sc.url.removesuffix("/v1") + "/_proxy/stats") as r,
    ):
        stats = await r.json()
    assert stats["requests"] == {"old": 1}
    assert stats["shadow"]["sent"] == 1
    assert stats["records"]["written"] >= 3 and stats["records"]["dropped"] == 0
    assert "queue_depth" in stats["records"]


async def test_recorded_error_kinds(old, new, make_sidecar, sdk, tmp_path) -> None:
    old.behaviour = Behaviour(fail="429")
    sc = await make_sidecar(base_config(old, new, record=recording(tmp_path)))
    client = sdk(sc)
    with pytest.raises(openai.APIError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    old.behaviour = Behaviour(fail="die_mid_stream")
    with pytest.raises(openai.APIError):
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        async for _ in stream:
            pass
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 2, 2)
    kinds = [r[0] for r in rows(db, "SELECT error_kind FROM responses ORDER BY ts")]
    assert kinds == ["rate_limit", "broken_stream"]


async def test_unpaired_answers_skip_the_comparison_fields(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    """Also: under `full` the bytes are the record, and no SHA-256 of them is written."""
    sc = await make_sidecar(base_config(old, new, record=recording(tmp_path)))
    await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 1, 1)
    row = rows(db, "SELECT * FROM responses")[0]
    assert row["shape"] is None and row["text_sha256"] is None  # nothing to compare with
    assert row["total_tokens"] and row["finish_reason"] == "stop"
    assert orjson.loads(row["response_body"])["choices"][0]["finish_reason"] == "stop"
    assert row["response_sha256"] is None
    ((body, digest),) = rows(db, "SELECT request_body, request_sha256 FROM exchanges")
    assert b"sidecars" in body and digest is None


async def test_noise_copies_only_for_requests_the_primary_served(
    old, new, make_sidecar, sdk
) -> None:
    cfg = base_config(
        old, new, split={"new": 1}, shadow=shadowing(upstream="old", noise_sample=1.0)
    )
    sc = await make_sidecar(cfg)
    await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await asyncio.sleep(0.1)
    assert len(new.received) == 1  # served by the canary: no second answer from it


async def test_refused_requests_are_recorded_as_proxy_errors(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    cfg = base_config(old, new, record=recording(tmp_path), limits={"max_body_bytes": 100})
    sc = await make_sidecar(cfg)
    with pytest.raises(openai.APIStatusError):
        await sdk(sc).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 200}]
        )
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 1, 1)
    row = rows(db, "SELECT status, error_kind, upstream FROM responses")[0]
    assert tuple(row) == (413, "proxy", "-")


async def test_copy_is_sent_once_the_app_has_its_answer(old, new, make_sidecar, sdk) -> None:
    # The copy's work never shares the primary's path: it waits for the answer to be out.
    old.behaviour = Behaviour(latency=0.5)
    sc = await make_sidecar(base_config(old, new, shadow=shadowing()))
    call = asyncio.create_task(
        sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    )
    await asyncio.sleep(0.25)
    assert len(old.received) == 1 and not new.received  # primary asked, no copy yet
    await call
    for _ in range(250):
        if new.received and sc.shadower.in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert len(new.received) == 1 and sc.stats_view()["shadow"]["sent"] == 1


@pytest.mark.parametrize(
    ("method", "tail", "body", "copied"),
    [
        ("POST", "/chat/completions", b'{"model": "m", "messages": []}', True),
        ("POST", "/responses", b'{"model": "m", "input": "hi"}', True),
        ("POST", "/embeddings", b'{"model": "m", "input": "x"}', True),
        ("POST", "/models/flux/run", b'{"prompt": "a cat"}', True),
        ("POST", "/completions", b'{"model": "m", "prompt": "Once upon"}', True),
        # A message that quotes a field name is text, not a reference.
        ("POST", "/chat/completions", b'{"messages": [{"content": "\\"file_id\\": 3"}]}', True),
        ("POST", "/responses", b'{"previous_response_id": null, "input": "hi"}', True),
        ("POST", "/filesystem/search", b"{}", True),  # a prefix of an object API is not one
        ("GET", "/models", b"", False),
        ("DELETE", "/responses/resp_1", b"", False),
        ("POST", "/files", b"--boundary\r\n...", False),
        ("POST", "/batches", b'{"input_file_id": "file-1"}', False),
        ("POST", "/fine_tuning/jobs", b'{"training_file": "file-1"}', False),
        ("POST", "/vector_stores/vs_1/files", b"{}", False),
        ("POST", "/responses/resp_1/cancel", b"", False),
        ("POST", "/chat/completions/chatcmpl-1", b'{"metadata": {}}', False),
        ("POST", "/responses", b'{"previous_response_id": "resp_1", "input": "and?"}', False),
        ("POST", "/responses", b'{"conversation": {"id": "conv_1"}, "input": "hi"}', False),
        ("POST", "/responses", b'{"prompt": {"id": "pmpt_1"}, "input": "hi"}', False),
        ("POST", "/responses", b'{"background": true, "input": "hi"}', False),
        ("POST", "/responses", b'{"background": false, "input": "hi"}', True),
        ("POST", "/responses", b'{"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}', False),
        ("POST", "/chat/completions", b'{"messages": [{"content": [{"type": "file", "file": {"file_id": "file-1"}}]}]}', False),
    ],
)  # fmt: skip
def test_only_inference_calls_that_name_nothing_stored_are_copied(
    method: str, tail: str, body: bytes, copied: bool
) -> None:
    from proxy.serve.shadow import unrepeatable

    assert unrepeatable(method, tail, body) is not copied


async def test_object_apis_and_chained_calls_are_not_copied(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    # A copy of a file upload or a batch would create it at the shadow upstream as well, and a
    # chained response names one that exists only at the primary: that copy could only fail,
    # and the report would blame the new gateway for it.
    sc = await make_sidecar(base_config(old, new, shadow=shadowing(noise_sample=1.0)))
    client = sdk(sc)
    first = await client.responses.create(model="gpt-4o-mini", input="hi")
    assert sc.counters.shadow_sent == 2  # a plain call: its shadow and its noise copy
    await client.responses.create(model="gpt-4o-mini", input="and?", previous_response_id=first.id)
    async with aiohttp.ClientSession() as s:
        for path, data in (("/files", b"--x\r\n"), ("/batches", b'{"input_file_id": "f"}')):
            async with s.post(f"{sc.url}{path}", data=data) as r:
                await r.read()
        async with s.get(f"{sc.url}/models") as r:
            await r.read()
    await asyncio.sleep(0.2)
    assert sc.counters.shadow_sent == 2
    assert sc.stats_view()["shadow"]["skipped_not_repeatable"] == 4
    assert [r.path for r in new.received] == ["/v1/responses"]  # the first call's copy only


async def test_a_shadow_stream_is_complete_at_done_even_if_the_upstream_lingers(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    from aiohttp import web

    release = asyncio.Event()

    async def lingering(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {"id": "c", "object": "chat.completion.chunk", "model": "prov/gpt-4o-mini",
                 "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}  # fmt: skip
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n")
        await release.wait()  # and the response never ends while the test runs
        return resp

    runner, port = await serve("/v1/chat/completions", lingering)
    try:
        cfg = base_config(old, new, shadow=shadowing(), record=recording(tmp_path))
        cfg["upstreams"]["new"]["base_url"] = f"http://127.0.0.1:{port}/v1"
        cfg["upstreams"]["new"]["timeouts"] = {"idle": 30}
        sc = await make_sidecar(cfg)
        stream = await sdk(sc).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        assert [c async for c in stream]
        db = str(tmp_path / "rec.db")
        await settled(sc, db, 1, 2)
        shadow = rows(db, "SELECT error_kind, stream_done FROM responses WHERE role = 'shadow'")
        assert tuple(shadow[0]) == (None, 1)
    finally:
        release.set()
        await runner.cleanup()


async def test_the_sdk_s_retries_of_one_call_are_recorded_as_linked_attempts(
    old, new, make_sidecar, tmp_path
) -> None:
    old.behaviour = Behaviour(error_rate=1.0, error_status=503)
    sc = await make_sidecar(base_config(old, new, record=recording(tmp_path)))
    client = openai.AsyncOpenAI(base_url=sc.url, api_key="sk-app", max_retries=2, timeout=20)
    try:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        await client.close()
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 3, 3)
    attempts = rows(db, "SELECT retry_key, retry_count FROM exchanges ORDER BY ts")
    assert [a["retry_count"] for a in attempts] == [0, 1, 2]
    assert {a["retry_key"] for a in attempts} == {attempts[0]["retry_key"]} != {None}
