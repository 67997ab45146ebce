"""The plan step: a call as each upstream is to get it, without sockets."""

from __future__ import annotations

import orjson

from proxy.serve.plan import plan
from tests.serve.calls import CONFIG, make_call, runtime

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_the_app_s_bytes_go_unchanged_to_an_upstream_with_the_same_ids() -> None:
    rt = runtime()
    call = make_call(rt, body=CHAT)
    attempt = plan(call, rt.upstreams["old"], "primary", reading="all")
    assert attempt.body is call.body
    assert attempt.model_sent == "gpt-4o-mini" and attempt.unmap is None


def test_a_mapped_model_is_sent_as_the_upstream_s_id_and_put_back_in_the_answer() -> None:
    rt = runtime()
    attempt = plan(make_call(rt, body=CHAT), rt.upstreams["new"], "primary", reading="all")
    assert orjson.loads(attempt.body)["model"] == "prov/gpt-4o-mini"
    assert attempt.model_sent == "prov/gpt-4o-mini"
    assert attempt.unmap is not None
    assert attempt.unmap(b'{"model": "prov/gpt-4o-mini"}') == b'{"model": "gpt-4o-mini"}'


def test_the_upstream_s_key_replaces_nothing_of_the_call_and_each_attempt_has_its_own() -> None:
    rt = runtime()
    call = make_call(rt, body=CHAT, headers={"x-user": "u1"})
    old = plan(call, rt.upstreams["old"], "primary", reading="none")
    new = plan(call, rt.upstreams["new"], "shadow", reading="none")
    assert old.headers["authorization"] == "Bearer sk-old-provider-key-000"
    assert new.headers["authorization"] == "Bearer sk-new-provider-key-111"
    assert "authorization" not in call.headers  # the call stays as the app sent it
    assert old.headers["x-user"] == new.headers["x-user"] == "u1"


def test_a_measured_stream_asks_for_usage_and_hides_it_from_the_app() -> None:
    rt = runtime()
    call = make_call(rt, body={**CHAT, "stream": True})
    attempt = plan(call, rt.upstreams["old"], "primary", reading="all")
    assert orjson.loads(attempt.body)["stream_options"] == {"include_usage": True}
    assert attempt.strip_usage and attempt.parse_stream == "all"


def test_an_unmeasured_stream_goes_as_sent_and_is_not_parsed() -> None:
    rt = runtime()
    call = make_call(rt, body={**CHAT, "stream": True})
    attempt = plan(call, rt.upstreams["old"], "primary", reading="none")
    assert attempt.body is call.body
    assert not attempt.strip_usage and attempt.parse_stream == "none"


def test_a_shadow_copy_is_always_parsed_and_never_learns_objects() -> None:
    rt = runtime()
    call = make_call(rt, tail="/responses", body={"model": "gpt-4o-mini", "input": "x"})
    assert plan(call, rt.upstreams["old"], "primary", reading="none").learn
    shadow = plan(call, rt.upstreams["new"], "shadow", reading="none")
    assert shadow.parse_stream == "all" and not shadow.learn


def test_a_model_named_in_the_path_is_mapped_in_the_path() -> None:
    rt = runtime()
    call = make_call(
        rt, tail="/models/gpt-4o-mini/run", body=b"{}", model="gpt-4o-mini", model_at="path"
    )
    attempt = plan(call, rt.upstreams["new"], "primary", reading="none")
    assert attempt.tail == "/models/prov%2Fgpt-4o-mini/run"
    assert attempt.model_sent == "prov/gpt-4o-mini"


def test_the_model_list_of_an_upstream_with_its_own_ids_names_the_app_s_ids() -> None:
    rt = runtime()
    call = make_call(rt, method="GET", tail="/models")
    attempt = plan(call, rt.upstreams["new"], "primary", reading="none")
    assert attempt.unmap is not None
    listed = attempt.unmap(b'{"object": "list", "data": [{"id": "prov/gpt-4o-mini"}, {"id": "x"}]}')
    assert [m["id"] for m in orjson.loads(listed)["data"]] == ["gpt-4o-mini", "x"]


def test_a_many_to_one_map_lists_every_id_the_app_may_ask_for() -> None:
    many = b"""upstreams:
  many:
    base_url: "http://127.0.0.1:3/v1"
    models: {gpt-4: llama-3.3-70b, gpt-4-turbo: llama-3.3-70b}
"""
    rt = runtime(CONFIG.replace(b"upstreams:\n", many))
    attempt = plan(
        make_call(rt, method="GET", tail="/models"), rt.upstreams["many"], "primary", False
    )
    listed = attempt.unmap(
        b'{"object": "list", "data": [{"id": "llama-3.3-70b", "owned_by": "m"}]}'
    )  # type: ignore[misc]
    assert [m["id"] for m in orjson.loads(listed)["data"]] == ["gpt-4", "gpt-4-turbo"]
    one = make_call(
        rt, method="GET", tail="/models/gpt-4-turbo", model="gpt-4-turbo", model_at="path"
    )
    attempt = plan(one, rt.upstreams["many"], "primary", False)
    assert attempt.tail == "/models/llama-3.3-70b"
    assert attempt.unmap(b'{"id": "llama-3.3-70b"}') == b'{"id": "gpt-4-turbo"}'  # type: ignore[misc]
    chat = make_call(rt, body={"model": "gpt-4-turbo", "messages": []})
    attempt = plan(chat, rt.upstreams["many"], "primary", False)
    assert attempt.unmap(b'{"model": "llama-3.3-70b"}') == b'{"model": "gpt-4-turbo"}'  # type: ignore[misc]
