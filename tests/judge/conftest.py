"""Fixtures for the judge: real recordings made through the real sidecar, a fake judge, and a
judge run in this process with a stop the test controls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from proxy import config as config_mod
from proxy.fakes.provider import FakeProvider
from proxy.judge import store
from proxy.judge.command import plan
from proxy.judge.cost import price_of
from proxy.judge.run import Judge, Progress, judge_pairs
from proxy.serve.app import Sidecar
from proxy.serve.runtime import Live
from tests.conftest import SidecarFactory, base_config
from tests.judge.fake_judge import KEY, FakeJudge

JUDGE_MODEL = "judge-1"
TOPICS = ("why the sky is blue", "rotating an API key", "cooking rice", "the plot of Hamlet")
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.fixture
async def judge() -> AsyncIterator[FakeJudge]:
    fake = FakeJudge()
    await fake.start()
    yield fake
    await fake.close()


async def one_call(client: openai.AsyncOpenAI, i: int, kind: str) -> None:
    messages: Any = [
        {"role": "system", "content": "You are the helpful assistant of a small shop."},
        {"role": "user", "content": f"Explain {TOPICS[i % len(TOPICS)]} (ticket {i})"},
    ]
    if kind == "tools":
        messages[-1]["content"] = f"What is the weather in Lisbon? (ticket {i})"
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=TOOLS, tool_choice="auto"
        )
    elif kind == "stream":
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True
        )
        async for _ in stream:
            pass
    else:
        await client.chat.completions.create(model="gpt-4o-mini", messages=messages)


async def record(
    make_sidecar: SidecarFactory,
    sdk: Callable[[Sidecar], openai.AsyncOpenAI],
    cfg: dict[str, Any],
    kinds: list[str],
) -> None:
    """Send one call per kind through a recording sidecar, then stop it: its shadow copies
    are awaited and its records flushed."""
    sc = await make_sidecar(cfg)
    client = sdk(sc)
    for i, kind in enumerate(kinds):
        await one_call(client, i, kind)
    await sc.stop()


def recording_config(
    old: FakeProvider, new: FakeProvider, db: Path, noise: float = 1.0, **bodies: str
) -> dict[str, Any]:
    return base_config(
        old,
        new,
        shadow={"upstream": "new", "sample": 1.0, "noise_sample": noise},
        record={
            "enabled": True,
            "path": str(db),
            "bodies": bodies or {"request": "full", "response": "full"},
        },
    )


def write_judge_config(
    tmp_path: Path,
    old: FakeProvider,
    new: FakeProvider,
    judge: FakeJudge,
    db: Path,
    **judge_section: Any,
) -> Path:
    cfg = recording_config(old, new, db)
    cfg["upstreams"]["judge"] = {"base_url": judge.url, "api_key": KEY}
    cfg["judge"] = {"upstream": "judge", "model": JUDGE_MODEL, **judge_section}
    cfg["report"] = {"pricing": {"judge": {JUDGE_MODEL: {"input": 1.0, "output": 4.0}}}}
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def judge_in_process(
    config_path: Path, stop: asyncio.Event | None = None, retry_failed: bool = False
) -> Progress:
    """What `python -m proxy judge --yes` does, in this process, with a stop the test sets."""
    cfg, text = config_mod.load(str(config_path))
    assert cfg.judge is not None
    chosen = await plan(cfg.record.path, cfg.judge, None, retry_failed)
    live = Live(cfg, config_mod.digest(text), str(config_path))
    db = await store.open_recording(cfg.record.path)
    price, _ = price_of(cfg.report.pricing, cfg.judge.upstream, cfg.judge.model)
    j = Judge(live.current.upstreams["judge"], cfg.judge.model, price, cfg.judge.budget_usd)
    try:
        return await judge_pairs(j, db, chosen.pairs, stop or asyncio.Event())
    finally:
        await live.close()
        await store.close(db)
