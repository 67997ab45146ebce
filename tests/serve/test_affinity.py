"""A call that names a stored object goes to the upstream that made it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from proxy.serve.affinity import Affinity, answer_id, creates, stores_completion
from tests.conftest import base_config
from tests.serve.test_reload import write_rename


@pytest.mark.parametrize(
    ("method", "tail", "made"),
    [
        ("POST", "/responses", True),
        ("POST", "/files", True),
        ("POST", "/vector_stores/vs_1/files", True),
        ("POST", "/fine_tuning/jobs", True),
        ("POST", "/chat/completions", False),
        ("POST", "/embeddings", False),
        ("POST", "/responsesx", False),
        ("GET", "/responses/resp_1", False),
        ("DELETE", "/files/file-1", False),
    ],
)
def test_creates_names_the_calls_that_make_objects(method: str, tail: str, made: bool) -> None:
    assert creates(method, tail) is made


def test_answer_id_reads_plain_answers_and_stream_starts() -> None:
    assert answer_id(b'{"id": "resp_1", "object": "response"}') == "resp_1"
    assert answer_id(b'{"object": "file", "bytes": 3, "id": "file-9"}') == "file-9"
    created = (
        b"event: response.created\n"
        b'data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_7",'
    )
    assert answer_id(created) == "resp_7"
    chunk = b': hi\n\ndata: {"id":"chatcmpl-3","object":"chat.completion.chunk","choices":[]}\n\n'
    assert answer_id(chunk) == "chatcmpl-3"
    for nothing in (b"", b"[]", b'{"id": 5}', b"not json", b'{"object": "list"}'):
        assert answer_id(nothing) is None


def test_only_a_chat_completion_made_with_store_true_is_kept() -> None:
    stored = b'{"model": "m", "store": true, "messages": []}'
    assert stores_completion("/chat/completions", None, stored)
    assert stores_completion("/chat/completions", {"store": True}, stored)
    assert not stores_completion("/chat/completions", None, b'{"store": false}')
    assert not stores_completion("/chat/completions", None, b'{"messages": "\\"store\\""}')
    assert not stores_completion("/chat/completions", None, b'{"store": true')  # not JSON
    assert not stores_completion("/completions", None, stored)


def test_owner_is_found_in_the_path_and_in_referencing_fields() -> None:
    a = Affinity()
    a.learn("resp_1", "new")
    a.learn("file-1", "new")
    a.learn("conv_1", "old")
    assert a.owner("/responses/resp_1", b"") == "new"
    assert a.owner("/responses/resp_1/input_items", b"") == "new"
    assert a.owner("/files/file-1/content", b"") == "new"
    assert a.owner("/responses", b'{"previous_response_id": "resp_1", "input": "x"}') == "new"
    assert a.owner("/responses", b'{"conversation": {"id": "conv_1"}}') == "old"
    assert a.owner("/responses", b'{"conversation":"conv_1"}') == "old"
    assert a.owner("/batches", b'{"input_file_id": "file-1"}') == "new"
    assert a.owner("/vector_stores", b'{"file_ids": ["file-0", "file-1"]}') == "new"
    # Not a reference: a message that mentions an id, or an unknown one.
    assert a.owner("/chat/completions", b'{"messages": [{"content": "resp_1"}]}') is None
    assert a.owner("/responses", b'{"previous_response_id": "resp_2"}') is None
    assert a.owner("/files", b"--boundary\r\nfile-1") is None


def test_the_oldest_id_is_forgotten_first() -> None:
    a = Affinity(size=2)
    a.learn("a", "old")
    a.learn("b", "old")
    a.learn("a", "new")  # learnt again: now the newest
    a.learn("c", "new")
    assert len(a) == 2
    assert a.owner("/x/b", b"") is None
    assert a.owner("/x/a", b"") == "new"
    assert a.owner("/x/c", b"") == "new"


def test_a_full_memory_forgets_in_constant_time() -> None:
    # A dict that dropped its first key on every learn scanned the dead slots before it each
    # time: 400,000 learns into a full 100,000 took 37 s. A generous bound: it did not hang.
    a = Affinity()
    started = time.perf_counter()
    for i in range(300_000):
        a.learn(f"resp_{i:012x}", "new")
    assert time.perf_counter() - started < 10
    assert len(a) == 100_000
    assert a.owner("/responses/resp_000000000000", b"") is None
    assert a.owner(f"/responses/resp_{299_999:012x}", b"") == "new"


async def _get(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        await r.read()
        return r.status


@pytest.mark.parametrize("stream", [False, True])
async def test_a_chained_response_follows_its_first_across_a_split_change(
    old, new, make_sidecar, sdk, stream: bool
) -> None:
    cfg = base_config(old, new, split={"new": 1})
    sc = await make_sidecar(cfg)
    client = sdk(sc)
    if stream:
        events = [
            e
            async for e in await client.responses.create(
                model="gpt-4o-mini", input="hi", stream=True
            )
        ]
        first_id = next(e.response.id for e in events if e.type == "response.created")
    else:
        first_id = (await client.responses.create(model="gpt-4o-mini", input="hi")).id
    assert [r.path for r in new.received] == ["/v1/responses"]
    # The canary is dialled down: new conversations go to the old provider, a conversation
    # begun at the new one carries on there.
    write_rename(Path(sc.path), {**cfg, "split": {"old": 1}})
    assert await sc.reload("test")
    await client.responses.create(model="gpt-4o-mini", input="and?", previous_response_id=first_id)
    assert new.received[-1].json["previous_response_id"] == first_id
    await _get(f"{sc.url}/responses/{first_id}")
    assert new.received[-1].path == f"/v1/responses/{first_id}"
    await client.responses.create(model="gpt-4o-mini", input="a new one")
    assert old.received[-1].json["input"] == "a new one"
    assert sc.stats_view()["affinity"] == {"ids": 3, "routed": 2}  # each response is one
    # The rollback switch sends everything to the primary, chained calls included.
    write_rename(Path(sc.path), {**cfg, "split": {"old": 1}, "rollback": True})
    assert await sc.reload("test")
    # The old provider never had it, and says so as OpenAI does: that is what rollback costs.
    with pytest.raises(openai.NotFoundError, match="Previous response"):
        await client.responses.create(
            model="gpt-4o-mini", input="then?", previous_response_id=first_id
        )
    assert old.received[-1].json["previous_response_id"] == first_id


@pytest.mark.parametrize("stream", [False, True])
async def test_a_stored_chat_completion_is_fetched_where_it_was_made(
    old, new, make_sidecar, sdk, stream: bool
) -> None:
    cfg = base_config(old, new, split={"new": 1})
    sc = await make_sidecar(cfg)
    client = sdk(sc)
    ask: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    if stream:
        chunks = [
            c async for c in await client.chat.completions.create(**ask, stream=True, store=True)
        ]
        made = chunks[0].id
    else:
        made = (await client.chat.completions.create(**ask, store=True)).id
    await client.chat.completions.create(**ask)  # not stored: nothing to remember
    assert sc.stats_view()["affinity"] == {"ids": 1, "routed": 0}
    write_rename(Path(sc.path), {**cfg, "split": {"old": 1}})
    assert await sc.reload("test")
    await _get(f"{sc.url}/chat/completions/{made}/messages")
    assert new.received[-1].path == f"/v1/chat/completions/{made}/messages"
    assert sc.stats_view()["affinity"] == {"ids": 1, "routed": 1}


async def test_failed_creates_and_plain_calls_teach_nothing(old, new, make_sidecar, sdk) -> None:
    sc = await make_sidecar(base_config(old, new, split={"new": 1}))
    client = sdk(sc)
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    async with aiohttp.ClientSession() as s:
        body: dict[str, Any] = {"model": "no-such-model", "input": "hi"}
        async with s.post(f"{sc.url}/responses", data=orjson.dumps(body)) as r:
            assert r.status == 404
    assert sc.stats_view()["affinity"] == {"ids": 0, "routed": 0}


async def test_a_restart_remembers_where_objects_were_made(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    record = {"enabled": True, "path": str(tmp_path / "r.db")}
    first = await make_sidecar(base_config(old, new, split={"new": 1}, record=record))
    made = (await sdk(first).responses.create(model="gpt-4o-mini", input="hi")).id
    await first.stop()
    # A new process on the same record, with the canary dialled down to 0.
    second = await make_sidecar(
        base_config(old, new, split={"old": 1}, record=record), name="b.yaml"
    )
    assert second.stats_view()["affinity"]["ids"] == 1
    await sdk(second).responses.create(model="gpt-4o-mini", input="and?", previous_response_id=made)
    assert new.received[-1].json["previous_response_id"] == made
    assert second.stats_view()["affinity"]["routed"] == 1
