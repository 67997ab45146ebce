"""Labelled recordings made through the real sidecar and the official SDK: a new gateway that
is a copy of the old one earns no warn or fail, and each fault injected into it is flagged
in the check it belongs to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, Final

import openai
import pytest

from proxy.fakes.provider import Behaviour, FakeProvider
from proxy.report.build import ReportFilter, build_report
from proxy.report.data import Report
from proxy.report.thresholds import ReportSettings
from tests.conftest import NEW_KEY, base_config

Kind = str  # "chat", "stream", "tools", "json", "embeddings"
EVERY_KIND: Final[tuple[Kind, ...]] = ("chat", "stream", "tools", "json", "embeddings")
TOOLS: Final[list[Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
TOPICS: Final = ("a lighthouse", "rice", "TCP and UDP", "a marathon", "Hamlet", "refunds")


@pytest.fixture
async def twin() -> AsyncIterator[FakeProvider]:
    """conftest's `new`, with a seed of its own: with the same seed as `old`, the n-th request
    to each would draw the same latency, and their differences would be all zero."""
    fake = FakeProvider(
        name="new",
        api_key=NEW_KEY,
        models=("prov/gpt-4o-mini", "prov/text-embedding-3-small", "black-forest/flux"),
        seed=7,
    )
    await fake.start()
    yield fake
    await fake.close()


async def call(client: openai.AsyncOpenAI, kind: Kind, i: int) -> None:
    topic = TOPICS[i % len(TOPICS)]
    messages: Any = [{"role": "user", "content": f"Tell me about {topic}, take {i}"}]
    if kind == "embeddings":
        await client.embeddings.create(model="text-embedding-3-small", input=f"{topic} {i}")
    elif kind == "stream":
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True
        )
        async for _ in stream:
            pass
    else:
        extra: dict[str, Any] = {}
        if kind == "tools":
            extra["tools"] = TOOLS
            messages = [{"role": "user", "content": f"What is the weather in Lisbon? ({i})"}]
        elif kind == "json":
            extra["response_format"] = {"type": "json_object"}
            messages[0]["content"] += ", as JSON"
        # The app is served by the old gateway, which never fails here: faults are the shadow's.
        await client.chat.completions.create(model="gpt-4o-mini", messages=messages, **extra)


async def record(
    old: FakeProvider,
    new: FakeProvider,
    make_sidecar: Callable[..., Any],
    sdk: Callable[..., openai.AsyncOpenAI],
    db: Path,
    calls: Iterable[Kind],
    noise: float = 0.0,
) -> Report:
    """Drive `calls` through a sidecar that serves every request from `old` and shadows it to
    `new`; then the report on what it recorded."""
    cfg = base_config(
        old,
        new,
        shadow={"upstream": "new", "sample": 1.0, "noise_sample": noise, "max_in_flight": 512},
        record={"enabled": True, "path": str(db)},
    )
    sidecar = await make_sidecar(cfg)
    client = sdk(sidecar)
    gate = asyncio.Semaphore(8)

    async def one(kind: Kind, i: int) -> None:
        async with gate:
            await call(client, kind, i)

    await asyncio.gather(*(one(kind, i) for i, kind in enumerate(calls)))
    await sidecar.stop()  # waits for the shadow copies and flushes the recording
    return build_report(str(db), ReportFilter(), ReportSettings())


def mix(n: int, kinds: tuple[Kind, ...] = EVERY_KIND) -> list[Kind]:
    return [kinds[i % len(kinds)] for i in range(n)]


def graded(report: Report) -> dict[str, str]:
    (verdict,) = report.verdicts
    return {c.name: c.status for c in verdict.checks}


REALISTIC: Final = Behaviour(latency=0.002, latency_jitter=0.02)


async def test_a_copy_of_the_old_gateway_gets_no_warn_or_fail_at_a_few_hundred_pairs(
    old: FakeProvider, twin: FakeProvider, make_sidecar: Any, sdk: Any, tmp_path: Path
) -> None:
    old.behaviour = twin.behaviour = REALISTIC
    report = await record(old, twin, make_sidecar, sdk, tmp_path / "same.db", mix(400), 0.5)
    checks = graded(report)
    assert not {name for name, status in checks.items() if status in ("warn", "fail")}, checks
    assert checks["latency"] == "pass"  # copies of one gateway: never slower beyond doubt
    for name in ("errors", "tokens", "output shape", "text agreement"):
        assert checks[name] == "pass", (name, checks)
    assert report.verdict in ("pass", "inconclusive")


async def test_a_copy_at_a_few_dozen_pairs_is_inconclusive_not_failed(
    old: FakeProvider, twin: FakeProvider, make_sidecar: Any, sdk: Any, tmp_path: Path
) -> None:
    old.behaviour = twin.behaviour = REALISTIC
    report = await record(old, twin, make_sidecar, sdk, tmp_path / "few.db", mix(40), 0.5)
    checks = graded(report)
    assert not {name for name, status in checks.items() if status in ("warn", "fail")}, checks
    assert report.verdict == "inconclusive"
    errors = next(c for c in report.verdicts[0].checks if c.name == "errors")
    assert errors.more is not None and errors.more > 0


FAULTS: Final = [
    pytest.param(Behaviour(first_token_delay=0.25), ("stream",), "latency", id="slow-first-token"),
    pytest.param(Behaviour(error_rate=0.4, error_status=502), ("chat",), "errors", id="5xx"),
    pytest.param(Behaviour(tool_json="broken"), ("tools",), "tool calls", id="broken-tool-json"),
    pytest.param(Behaviour(refuse_tools=True), ("tools",), "tool calls", id="tools-refused"),
    pytest.param(Behaviour(usage=False), ("stream",), "streaming", id="streams-without-usage"),
    pytest.param(Behaviour(embedding_dims=1024), ("embeddings",), "output shape", id="dims"),
]


@pytest.mark.parametrize(("fault", "kinds", "flagged"), FAULTS)
async def test_each_fault_is_flagged_in_its_check(
    old: FakeProvider,
    new: FakeProvider,
    make_sidecar: Any,
    sdk: Any,
    tmp_path: Path,
    fault: Behaviour,
    kinds: tuple[Kind, ...],
    flagged: str,
) -> None:
    new.behaviour = fault
    report = await record(old, new, make_sidecar, sdk, tmp_path / "fault.db", mix(48, kinds))
    checks = graded(report)
    assert checks[flagged] == "fail", checks
    assert report.verdict == "fail"


async def test_embeddings_of_another_dimension_flag_the_route_too(
    old: FakeProvider, new: FakeProvider, make_sidecar: Any, sdk: Any, tmp_path: Path
) -> None:
    new.behaviour = Behaviour(embedding_dims=1024)
    report = await record(old, new, make_sidecar, sdk, tmp_path / "d.db", mix(12, ("embeddings",)))
    (route,) = report.embeddings
    assert route.mixed
    assert {(d.role, d.dims) for d in route.seen} == {("primary", 8), ("shadow", 1024)}
    shape = next(e for e in report.examples if e.reason == "shape")
    assert any(p.startswith("data[].embedding: [b64;8] in the primary") for p in shape.paths)
