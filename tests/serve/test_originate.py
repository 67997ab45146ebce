"""Calls the sidecar makes itself go through the same exchange as an app's call."""

from __future__ import annotations

import orjson

from proxy import config as config_mod
from proxy.fakes.provider import FakeProvider
from proxy.serve.originate import attempt, send
from proxy.serve.runtime import Live

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def upstreams(text: str) -> Live:
    cfg = config_mod.parse(text.encode(), "c.yaml", env={})
    return Live(cfg, "d", "c.yaml")


async def test_a_call_of_its_own_uses_the_upstream_s_key_map_and_adapter() -> None:
    openai_fake = FakeProvider(name="o", api_key="sk-o-12345678", models=("prov/gpt-4o-mini",))
    claude = FakeProvider(name="c", api="anthropic", api_key="sk-c-12345678")
    await openai_fake.start()
    await claude.start()
    live = upstreams(f"""
upstreams:
  o: {{base_url: "{openai_fake.url}", api_key: sk-o-12345678, models: {{gpt-4o-mini: prov/gpt-4o-mini}}}}
  c: {{base_url: "{claude.url}", api: anthropic, api_key: sk-c-12345678, models: {{gpt-4o-mini: claude-haiku-4-5}}}}
primary: o
""")
    try:
        for name in ("o", "c"):
            up = live.current.upstreams[name]
            answer = await send(attempt(up, "POST", "/chat/completions", CHAT))
            assert answer.status == 200 and answer.error is None
            body = orjson.loads(answer.body)
            assert body["choices"][0]["message"]["content"]
            assert answer.meter.total_ms is not None and answer.meter.status == 200
        assert openai_fake.received[-1].json["model"] == "prov/gpt-4o-mini"
        assert claude.received[-1].path == "/v1/messages"
        streamed = await send(
            attempt(
                live.current.upstreams["c"], "POST", "/chat/completions", {**CHAT, "stream": True}
            )
        )
        assert streamed.status == 200 and streamed.body.endswith(b"data: [DONE]\n\n")
    finally:
        await live.close()
        await openai_fake.close()
        await claude.close()


async def test_an_unreachable_upstream_is_an_answer_with_an_error_not_an_exception() -> None:
    live = upstreams('upstreams: {o: {base_url: "http://127.0.0.1:1/v1"}}\nprimary: o\n')
    try:
        answer = await send(attempt(live.current.upstreams["o"], "POST", "/chat/completions", CHAT))
        assert answer.status == 502 and answer.meter.error_kind == "connection"
        assert answer.error and "unreachable" in answer.error
    finally:
        await live.close()
