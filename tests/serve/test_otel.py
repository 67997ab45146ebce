"""OpenTelemetry export: spans and GenAI metrics reach an OTLP/HTTP receiver; a dead one costs
nothing but a count; a config asking for it without the extra is refused by name."""

from __future__ import annotations

import asyncio
import importlib
import secrets
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml
from aiohttp import web

import proxy.serve
from proxy import config as config_mod
from proxy.errors import ConfigError
from proxy.serve import otel
from proxy.serve.app import Sidecar
from tests.conftest import base_config

try:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
        ExportMetricsServiceResponse,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue
except ImportError as e:  # pragma: no cover - a test environment without the dev extra
    raise ImportError(f"{e}: these tests need the otel packages: pip install -e '.[dev]'") from e

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind is not None else None


class Receiver:
    """An OTLP/HTTP collector on 127.0.0.1: it decodes what it is sent and keeps it."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.points: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self.traces)
        app.router.add_post("/v1/metrics", self.metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def traces(self, request: web.Request) -> web.Response:
        req = ExportTraceServiceRequest.FromString(await request.read())
        for rs in req.resource_spans:
            service = {a.key: _value(a.value) for a in rs.resource.attributes}["service.name"]
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        {
                            "service": service,
                            "name": s.name,
                            "kind": s.kind,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(),
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "attrs": {a.key: _value(a.value) for a in s.attributes},
                        }
                    )
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    async def metrics(self, request: web.Request) -> web.Response:
        req = ExportMetricsServiceRequest.FromString(await request.read())
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.histogram.data_points:
                        attrs = {a.key: _value(a.value) for a in p.attributes}
                        self.points.setdefault(m.name, []).append((attrs, p))
        body = ExportMetricsServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    def span(self, kind: int, **attrs: Any) -> dict[str, Any] | None:
        for s in self.spans:
            if s["kind"] == kind and all(s["attrs"].get(k) == v for k, v in attrs.items()):
                return s
        return None


SERVER, CLIENT = 2, 3  # OTLP's SpanKind numbers


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    if r.runner is not None:
        await r.runner.cleanup()


async def _flushed(sc: Sidecar, until: Any) -> None:
    """Flush the exporters (off the loop: it blocks) until `until()` holds."""
    exporter = sc.otel
    assert exporter is not None
    for _ in range(50):
        await asyncio.to_thread(exporter.flush, 5.0)
        if until():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the receiver never got what was expected")


async def test_a_call_exports_genai_spans_and_metrics_continuing_the_apps_trace(
    receiver, old, new, make_sidecar, sdk
) -> None:
    cfg = base_config(
        old,
        new,
        shadow={"upstream": "new", "sample": 1.0},
        otel={"endpoint": receiver.url, "service_name": "checkout-sidecar"},
    )
    sc = await make_sidecar(cfg)
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    answer = await sdk(sc).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
    )
    assert answer.usage is not None
    await _flushed(sc, lambda: receiver.span(CLIENT, **{"llm_sidecar.role": "shadow"}))

    call = receiver.span(SERVER)
    assert call is not None
    assert call["service"] == "checkout-sidecar"
    assert (call["trace_id"], call["parent"]) == (trace_id, parent_id)  # the app's trace goes on
    assert call["name"] == "chat gpt-4o-mini"
    assert call["attrs"]["gen_ai.operation.name"] == "chat"
    assert call["attrs"]["gen_ai.request.model"] == "gpt-4o-mini"
    assert call["attrs"]["llm_sidecar.revision"] == sc.live.current.revision
    assert call["attrs"]["llm_sidecar.upstream"] == "old"
    assert call["attrs"]["http.response.status_code"] == 200
    request_id = call["attrs"]["llm_sidecar.request_id"]

    primary = receiver.span(CLIENT, **{"llm_sidecar.role": "primary"})
    assert primary is not None
    assert (primary["trace_id"], primary["parent"]) == (trace_id, call["span_id"])
    assert primary["start"] >= call["start"] and primary["end"] <= call["end"]
    assert (
        primary["attrs"].items()
        >= {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.response.model": answer.model,
            "gen_ai.usage.input_tokens": answer.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": answer.usage.completion_tokens,
            "server.address": "127.0.0.1",
            "server.port": urlsplit(old.url).port,
            "llm_sidecar.upstream": "old",
            "llm_sidecar.request_id": request_id,
        }.items()
    )

    # The shadow copy: the other upstream, with the model id it was sent, in the same trace.
    copy = receiver.span(CLIENT, **{"llm_sidecar.role": "shadow"})
    assert copy is not None
    assert (copy["trace_id"], copy["parent"]) == (trace_id, call["span_id"])
    assert copy["attrs"]["llm_sidecar.pair_id"] == request_id
    assert copy["attrs"]["llm_sidecar.upstream"] == "new"
    assert copy["attrs"]["gen_ai.request.model"] == "prov/gpt-4o-mini"
    assert copy["attrs"]["server.port"] == urlsplit(new.url).port

    await _flushed(sc, lambda: "gen_ai.client.operation.duration" in receiver.points)
    tokens = {
        (a["llm_sidecar.role"], a["gen_ai.token.type"]): p.sum
        for a, p in receiver.points["gen_ai.client.token.usage"]
    }
    assert tokens[("primary", "input")] == answer.usage.prompt_tokens
    assert tokens[("primary", "output")] == answer.usage.completion_tokens
    durations = {
        a["llm_sidecar.role"]: p for a, p in receiver.points["gen_ai.client.operation.duration"]
    }
    assert durations["primary"].count == 1
    assert durations["primary"].sum > 0
    assert durations["primary"].explicit_bounds[0] == otel.DURATION_BUCKETS[0]


async def test_a_call_without_traceparent_starts_its_own_trace(
    receiver, old, new, make_sidecar, sdk
) -> None:
    sc = await make_sidecar(base_config(old, new, otel={"endpoint": receiver.url}))
    await sdk(sc).embeddings.create(model="text-embedding-3-small", input="hello")
    await _flushed(sc, lambda: receiver.span(CLIENT) is not None)
    call, attempt = receiver.span(SERVER), receiver.span(CLIENT)
    assert call is not None and attempt is not None
    assert call["parent"] == ""
    assert (attempt["trace_id"], attempt["parent"]) == (call["trace_id"], call["span_id"])
    assert attempt["attrs"]["gen_ai.operation.name"] == "embeddings"
    assert attempt["attrs"]["gen_ai.usage.input_tokens"] > 0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_dead_collector_neither_breaks_nor_holds_calls_and_is_counted(
    old, new, make_sidecar, sdk, monkeypatch
) -> None:
    monkeypatch.setattr(otel, "EXPORT_TIMEOUT_S", 0.5)
    dead = f"http://127.0.0.1:{_closed_port()}"
    sc = await make_sidecar(base_config(old, new, otel={"endpoint": dead}))
    client = sdk(sc)
    answers = await asyncio.wait_for(  # a generous "did not hang": each call takes milliseconds
        asyncio.gather(
            *(
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                for _ in range(20)
            )
        ),
        timeout=15,
    )
    assert all(a.choices[0].message.content for a in answers)

    async def failed() -> dict[str, int]:
        url = f"http://{sc.host}:{sc.port}/_proxy/stats"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            return (await r.json())["otel"]["failed"]  # type: ignore[no-any-return]

    assert sc.otel is not None
    await asyncio.to_thread(sc.otel.flush, 5.0)
    for _ in range(100):
        counts = await failed()
        if counts["traces"] >= 1 and counts["metrics"] >= 1:
            break
        await asyncio.sleep(0.05)
    assert counts["traces"] >= 1 and counts["metrics"] >= 1


async def test_stop_does_not_wait_out_a_dead_collector(old, new, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(otel, "EXPORT_TIMEOUT_S", 60.0)  # an export would hold a minute
    monkeypatch.setattr(otel, "STOP_WAIT_S", 0.2)
    sc = await _sidecar(
        tmp_path, base_config(old, new, otel={"endpoint": f"http://127.0.0.1:{_closed_port()}"})
    )
    async with aiohttp.ClientSession() as http:
        body = {"model": "gpt-4o-mini", "messages": MESSAGES}
        async with http.post(f"{sc.url}/chat/completions", json=body) as r:
            assert r.status == 200
    await asyncio.wait_for(sc.stop(), timeout=10)  # a generous "did not hang"


async def _sidecar(tmp_path: Path, cfg: dict[str, Any]) -> Sidecar:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    parsed, text = config_mod.load(str(path))
    sc = Sidecar(parsed, text, str(path), watch=False)
    await sc.start()
    return sc


async def test_otel_without_the_extra_is_refused_naming_the_install(
    old, new, tmp_path, monkeypatch
) -> None:
    # The SDK made unimportable, as in an install without the extra.
    monkeypatch.setattr(proxy.serve, "otel", otel)  # restored after the fresh import below
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "proxy.serve.otel")
    fresh = importlib.import_module("proxy.serve.otel")
    assert fresh.MISSING is not None
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(old, new, otel={})))
    parsed, text = config_mod.load(str(path))
    with pytest.raises(ConfigError) as refused:
        Sidecar(parsed, text, str(path), watch=False)
    assert "otel" in str(refused.value)
    assert "pip install 'llm-sidecar[otel]'" in str(refused.value)


def test_operation_names_stay_few() -> None:
    assert otel.operation("/chat/completions") == "chat"
    assert otel.operation("/messages") == "chat"
    assert otel.operation("/embeddings") == "embeddings"
    assert otel.operation("/audio/transcriptions") == "audio"
    assert otel.operation("/models/gpt-4o") == "models"
    assert otel.server_of("api.example.com") == ("api.example.com", None)
    assert otel.server_of("127.0.0.1:8080") == ("127.0.0.1", 8080)


def test_the_collector_example_wires_each_pipeline_to_components_it_defines() -> None:
    doc = yaml.safe_load((Path(__file__).parents[2] / "docs" / "otel-collector.yaml").read_text())
    pipelines = doc["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics"}
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline[kind]) <= set(doc[kind])
    # It listens where the sidecar sends by default.
    default = config_mod.Otel().endpoint
    assert default.endswith(
        doc["receivers"]["otlp"]["protocols"]["http"]["endpoint"].split(":")[-1]
    )
