"""`GET /metrics`, read back with prometheus_client's own parser: what moved is what was sent."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.fakes.provider import Behaviour
from proxy.serve.app import Sidecar
from tests.conftest import CLIENT_KEY, base_config

MESSAGES = [{"role": "user", "content": "hi"}]


class Scrape:
    """The samples of one scrape; `value` sums those whose labels include the ones given."""

    def __init__(self, text: str) -> None:
        self.samples = [
            (s.name, s.labels, s.value)
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        return sum(v for n, got, v in self.samples if n == name and labels.items() <= got.items())

    def labels(self, name: str, label: str) -> set[str]:
        return {got[label] for n, got, _ in self.samples if n == name and label in got}


async def scrape(sc: Sidecar, key: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{sc.host}:{sc.port}/metrics", headers=headers) as r,
    ):
        return r.status, await r.text()


async def metrics(sc: Sidecar) -> Scrape:
    status, text = await scrape(sc)
    assert status == 200, text
    return Scrape(text)


def on(**overrides: Any) -> dict[str, Any]:
    return {"metrics": {"enabled": True}, **overrides}


async def test_counters_per_upstream_move_by_exactly_what_was_sent(
    old, new, make_sidecar, sdk
) -> None:
    sc = await make_sidecar(base_config(old, new, **on(split={"old": 50, "new": 50})))
    n = 40
    for _ in range(n):
        await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    m = await metrics(sc)
    sent = {"old": len(old.received), "new": len(new.received)}
    assert sent["old"] + sent["new"] == n and min(sent.values()) > 0
    for up, count in sent.items():
        assert m.value("llm_sidecar_calls_total", upstream=up, role="primary") == count
        assert m.value("llm_sidecar_calls_total", upstream=up, status_class="2xx") == count
        assert m.value("llm_sidecar_upstream_duration_seconds_count", upstream=up) == count
        assert m.value("llm_sidecar_time_to_first_byte_seconds_count", upstream=up) == count
        le_inf = m.value("llm_sidecar_upstream_duration_seconds_bucket", upstream=up, le="+Inf")
        assert le_inf == count
    assert m.value("llm_sidecar_overhead_seconds_count") == n
    assert m.value("llm_sidecar_errors_total") == 0
    # The model label names the id each upstream was sent, both of them configured.
    assert m.labels("llm_sidecar_calls_total", "model") == {"gpt-4o-mini", "prov/gpt-4o-mini"}
    assert m.labels("llm_sidecar_calls_total", "route") == {"default"}


@pytest.mark.parametrize("recording", [True, False])
async def test_streams_count_time_to_first_token_and_tokens_by_kind(
    old, new, make_sidecar, sdk, tmp_path, recording
) -> None:
    # With metrics on, a stream is parsed (its first token seen, its usage read) whether or
    # not it is recorded.
    record = {"enabled": recording, "path": str(tmp_path / "rec.db")}
    sc = await make_sidecar(base_config(old, new, **on(record=record)))
    used = [0, 0]
    for _ in range(3):
        stream = await sdk(sc).chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.usage is not None:
                used[0] += chunk.usage.prompt_tokens
                used[1] += chunk.usage.completion_tokens
    plain = await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert plain.usage is not None and used[1] > 0
    m = await metrics(sc)
    assert m.value("llm_sidecar_time_to_first_token_seconds_count", upstream="old") == 3
    assert m.value("llm_sidecar_tokens_total", upstream="old", kind="input") == (
        used[0] + plain.usage.prompt_tokens
    )
    assert m.value("llm_sidecar_tokens_total", upstream="old", kind="output") == (
        used[1] + plain.usage.completion_tokens
    )


async def test_a_stream_that_did_not_ask_for_usage_is_counted_and_gets_none(
    old, new, make_sidecar, sdk
) -> None:
    sc = await make_sidecar(base_config(old, new, **on()))
    stream = await sdk(sc).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    assert chunks and all(c.usage is None for c in chunks)  # as if sent straight upstream
    m = await metrics(sc)
    assert m.value("llm_sidecar_time_to_first_token_seconds_count", upstream="old") == 1
    assert m.value("llm_sidecar_tokens_total", upstream="old", kind="output") > 0


async def test_shadow_copies_are_counted_under_their_role_and_as_sent(
    old, new, make_sidecar, sdk
) -> None:
    sc = await make_sidecar(base_config(old, new, **on(shadow={"upstream": "new", "sample": 1.0})))
    for _ in range(5):
        await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    await sc.shadower.close(5)
    m = await metrics(sc)
    assert m.value("llm_sidecar_calls_total", upstream="new", role="shadow", route="-") == 5
    assert m.value("llm_sidecar_shadow_copies_sent_total") == 5
    assert m.value("llm_sidecar_shadow_copies_failed_total") == 0
    assert m.value("llm_sidecar_overhead_seconds_count") == 5  # app calls only, not copies


async def test_errors_are_counted_by_kind_and_refusals_apart(old, new, make_sidecar) -> None:
    sc = await make_sidecar(base_config(old, new, **on()))
    base = f"http://{sc.host}:{sc.port}"
    async with aiohttp.ClientSession() as http:
        body = {"model": "gpt-4o-mini", "messages": MESSAGES}
        async with http.post(f"{base}/v1/chat/completions", json=body) as r:
            assert r.status == 200
        old.behaviour = Behaviour(fail="500")
        async with http.post(f"{base}/v1/chat/completions", json=body) as r:
            assert r.status == 500
        async with http.get(f"{base}/elsewhere") as r:
            assert r.status == 404
    m = await metrics(sc)
    assert m.value("llm_sidecar_errors_total", upstream="old", kind="http_5xx") == 1
    assert m.value("llm_sidecar_calls_total", upstream="old", status_class="5xx") == 1
    assert m.value("llm_sidecar_refused_total", status_class="4xx") == 1


async def test_a_model_nobody_configured_is_labelled_other(old, new, make_sidecar, sdk) -> None:
    sc = await make_sidecar(base_config(old, new, **on()))
    for model in ("gpt-4o-mini", "request-id-like-9f8e7d", "another-free-form-id"):
        # The fake refuses a model it does not serve: the label is what matters.
        with contextlib.suppress(openai.NotFoundError, openai.BadRequestError):
            await sdk(sc).chat.completions.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]
    m = await metrics(sc)
    assert m.labels("llm_sidecar_calls_total", "model") == {"gpt-4o-mini", "other"}


async def test_where_nothing_else_reads_request_bodies_the_model_is_labelled_unread(
    old, new, make_sidecar, sdk
) -> None:
    cfg = base_config(old, new, **on())
    cfg["upstreams"] = {"old": cfg["upstreams"]["old"]}  # no model map: bodies go unread
    cfg["split"] = {"old": 100}
    sc = await make_sidecar(cfg)
    await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    m = await metrics(sc)
    assert m.labels("llm_sidecar_calls_total", "model") == {"unread"}
    assert m.value("llm_sidecar_tokens_total", upstream="old", kind="input") > 0  # answers are


async def test_state_shows_revision_rollback_split_and_the_guard(old, new, make_sidecar) -> None:
    guard = {"min_requests": 20}
    cfg = base_config(old, new, **on(split={"old": 90, "new": 10}, guard=guard))
    sc = await make_sidecar(cfg)
    m = await metrics(sc)
    assert m.value("llm_sidecar_config_info", revision=sc.live.current.revision) == 1
    assert m.value("llm_sidecar_rollback") == 0
    assert m.value("llm_sidecar_split_share", route="default", upstream="new") == 0.1
    assert m.value("llm_sidecar_guard_tripped", upstream="new") == 0
    cfg["rollback"] = True
    with open(sc.path, "w") as f:
        yaml.safe_dump(cfg, f)
    assert await sc.reload("test")
    m = await metrics(sc)
    assert m.value("llm_sidecar_rollback") == 1
    assert m.value("llm_sidecar_config_reloads_total") == 1
    assert m.value("llm_sidecar_config_info", revision=sc.live.current.revision) == 1


async def test_records_written_and_the_queue_are_exported(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    record = {"enabled": True, "path": str(tmp_path / "rec.db")}
    sc = await make_sidecar(base_config(old, new, **on(record=record)))
    await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert sc.recorder is not None
    for _ in range(200):
        if sc.recorder.stats().written >= 3:  # the revision, the exchange, the response
            break
        await asyncio.sleep(0.02)
    m = await metrics(sc)
    assert m.value("llm_sidecar_records_written_total") == sc.recorder.stats().written >= 3
    assert m.value("llm_sidecar_records_dropped_total") == 0
    assert ("llm_sidecar_record_queue_depth", {}) in [(n, lb) for n, lb, _ in m.samples]


async def test_metrics_are_off_by_default_and_a_reload_turns_them_on(
    old, new, make_sidecar, sdk
) -> None:
    cfg = base_config(old, new)
    sc = await make_sidecar(cfg)
    assert (await scrape(sc))[0] == 404
    await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    cfg.update(on())
    with open(sc.path, "w") as f:
        yaml.safe_dump(cfg, f)
    assert await sc.reload("test")
    await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    m = await metrics(sc)
    assert m.value("llm_sidecar_calls_total", upstream="old") == 1  # counted from when on


async def test_with_keys_metrics_need_one(old, new, make_sidecar) -> None:
    key = "sk-sidecar-admin-key-000000"
    sc = await make_sidecar(base_config(old, new, **on(listen={"host": "127.0.0.1", "port": 0, "keys": [key]})))  # fmt: skip
    assert (await scrape(sc))[0] == 401
    assert (await scrape(sc, CLIENT_KEY))[0] == 401
    status, text = await scrape(sc, key)
    assert status == 200 and "llm_sidecar_rollback" in text


async def test_two_sidecars_in_one_process_keep_their_own_series(
    old, new, make_sidecar, sdk
) -> None:
    one = await make_sidecar(base_config(old, new, **on()), name="one.yaml")
    two = await make_sidecar(base_config(old, new, **on()), name="two.yaml")
    for _ in range(3):
        await sdk(one).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert (await metrics(one)).value("llm_sidecar_calls_total") == 3
    assert (await metrics(two)).value("llm_sidecar_calls_total") == 0
