"""OpenTelemetry: a span per call and per upstream attempt, and the GenAI client metrics, over
OTLP/HTTP. An observer (see `observe`); imported only when the config has an `otel` section.

Observers hear of an attempt once it is complete, so spans are made after the fact from the
meter's timings (start = `meter.ts`, end = start + `total_ms`). The SDK's batching processor
and periodic reader export on their own threads: the request path only appends to a queue,
and a collector that is down costs a counted failure per batch, never a wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import orjson

from proxy.errors import ConfigError
from proxy.record import answers

try:  # the `otel` extra
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExportResult,
        MetricsData,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as e:
    MISSING: str | None = str(e)
else:
    MISSING = None
    _SAMPLED = TraceFlags(TraceFlags.SAMPLED)
    _OK = Status(StatusCode.UNSET)  # OK is for an operator to say; unset is "no error"

if TYPE_CHECKING:
    from multidict import CIMultiDict

    from proxy.config import Otel
    from proxy.errors import ErrorAnswer
    from proxy.record.meter import Meter
    from proxy.serve.call import Arrival, Call
    from proxy.serve.plan import Attempt
    from proxy.serve.runtime import Live

INSTALL: Final = "pip install 'llm-sidecar[otel]'"
# One export request's deadline, retries included: the SDK's default (10 s) would hold a
# shutdown that long when the collector is down. Tests shorten it.
EXPORT_TIMEOUT_S = 5.0
STOP_WAIT_S = 2.0  # on stop, what is queued gets this long to reach the collector
METRICS_EVERY_MS: Final = 10_000
SPAN_QUEUE: Final = 8192  # spans waiting for export; beyond it the processor drops them
PAIRS_KEPT: Final = 4096  # calls whose copies may still be running, found by traceparent
# A plain answer is parsed again for its usage; a larger one (images as base64, thousands of
# embeddings) would cost the request path milliseconds for two integers.
PARSE_AT_MOST: Final = 1 << 20

# The buckets the GenAI semantic conventions advise for these two histograms.
DURATION_BUCKETS: Final = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)  # fmt: skip
TOKEN_BUCKETS: Final = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)  # fmt: skip

# The path an OpenAI- or Anthropic-shaped call takes, as `gen_ai.operation.name`.
OPERATIONS: Final = {
    "/chat/completions": "chat",
    "/messages": "chat",
    "/responses": "chat",
    "/completions": "text_completion",
    "/embeddings": "embeddings",
    "/images/generations": "generate_content",
}


def operation(tail: str) -> str:
    """`gen_ai.operation.name` for a path after /v1: a known call, else its first segment
    (`audio`, `files`, `models`), so the value stays one of a few per API."""
    path = tail.split("?", 1)[0]
    known = OPERATIONS.get(path)
    if known is not None:
        return known
    return path.lstrip("/").split("/", 1)[0] or "other"


def server_of(host: str) -> tuple[str, int | None]:
    """`server.address` and `server.port` from an upstream's `host:port`."""
    parts = urlsplit(f"//{host}")
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname or host, port


class Tally:
    """What the export did since start, for `/_proxy/stats`: written from the SDK's threads."""

    __slots__ = ("batches", "failed", "last_error")

    def __init__(self) -> None:
        self.batches = {"traces": 0, "metrics": 0}
        self.failed = {"traces": 0, "metrics": 0}
        self.last_error: str | None = None

    def count(self, signal: str, ok: bool) -> None:
        self.batches[signal] += 1
        if not ok:
            self.failed[signal] += 1
            self.last_error = f"{signal}: the collector did not take a batch (see the log)"


def _exporters(cfg: Otel, tally: Tally) -> tuple[OTLPSpanExporter, OTLPMetricExporter]:
    """The SDK's OTLP/HTTP exporters, each batch's outcome counted in `tally`."""

    class Spans(OTLPSpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            result = super().export(spans)
            tally.count("traces", result is SpanExportResult.SUCCESS)
            return result

    class Metrics(OTLPMetricExporter):
        def export(
            self, metrics_data: MetricsData, timeout_millis: float | None = None, **kwargs: Any
        ) -> MetricExportResult:
            result = super().export(metrics_data, timeout_millis, **kwargs)
            tally.count("metrics", result is MetricExportResult.SUCCESS)
            return result

    base = cfg.endpoint.rstrip("/")
    headers = dict(cfg.headers)
    return (
        Spans(endpoint=f"{base}/v1/traces", headers=headers, timeout=EXPORT_TIMEOUT_S),
        Metrics(endpoint=f"{base}/v1/metrics", headers=headers, timeout=EXPORT_TIMEOUT_S),
    )


def start(cfg: Otel, live: Live, path: str) -> Export:
    """The observer for `cfg`; a `ConfigError` naming the extra when it is not installed."""
    if MISSING is not None:
        raise ConfigError(
            path,
            [
                (
                    "otel",
                    f"needs the OpenTelemetry SDK, which is not installed ({MISSING}): {INSTALL}",
                )
            ],
        )
    return Export(cfg, live)


class _OpenCall:
    """A call span while its attempts are told (one loop turn: see `Export.served`)."""

    __slots__ = ("attrs", "context", "end_ns", "last", "name", "parent", "start_ns")

    def __init__(
        self, name: str, context: SpanContext, parent: SpanContext | None, attrs: dict[str, Any]
    ) -> None:
        self.name = name
        self.context = context
        self.parent = parent
        self.attrs = attrs
        self.start_ns = 0
        self.end_ns = 0
        self.last: Meter | None = None  # the last attempt's: its answer is the app's


class Export:
    """The observer: spans and GenAI metrics of every attempt and copy, to the SDK's exporters.

    Spans are finished when they are made, so they go straight to the batching processor as
    `ReadableSpan`s, which is what the SDK's own spans become at their end. Going through
    `Tracer.start_span` instead cost about 50 us a span on the request path, most of it
    re-validating attributes this module writes itself.
    """

    def __init__(self, cfg: Otel, live: Live) -> None:
        self.endpoint = cfg.endpoint
        self.live = live
        self.tally = Tally()
        spans, metrics = _exporters(cfg, self.tally)
        self._resource = Resource.create({"service.name": cfg.service_name})
        self._scope = InstrumentationScope("llm-sidecar")
        self._ids = RandomIdGenerator()
        self._spans = BatchSpanProcessor(spans, max_queue_size=SPAN_QUEUE)
        reader = PeriodicExportingMetricReader(metrics, export_interval_millis=METRICS_EVERY_MS)
        # shutdown_on_exit=False: the SDK's atexit hook would wait on a dead collector; `stop`
        # shuts down with a bounded wait instead.
        self._metrics = MeterProvider([reader], resource=self._resource, shutdown_on_exit=False)
        meter = self._metrics.get_meter("llm-sidecar")
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration, per upstream attempt",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used, per upstream attempt",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self._propagator = TraceContextTextMapPropagator()
        self._open: dict[str, _OpenCall] = {}
        # The app's traceparent → (call id, call span): a shadow copy is told without its call,
        # but carries the app's headers, so this is how its span joins the call's trace.
        self._pairs: OrderedDict[str, tuple[str, SpanContext]] = OrderedDict()
        self._servers: dict[str, tuple[str, int | None]] = {}

    # -- the observer ------------------------------------------------------------------

    def served(self, call: Call, attempt: Attempt, meter: Meter) -> None:
        """The call span opens with its first attempt and closes in the next loop turn: the
        pipeline tells every attempt of a call (a failed one, then its failover) in one pass."""
        end_ns = _end_ns(meter)
        open_call = self._open.get(call.id)
        if open_call is None:
            open_call = self._open_call(call)
        open_call.end_ns = max(open_call.end_ns, end_ns)
        open_call.last = meter
        mine = {
            "llm_sidecar.revision": call.arrival.runtime.revision,
            "llm_sidecar.request_id": call.id,
        }
        self._attempt(attempt, meter, open_call.context, mine)

    def copied(self, call_id: str, attempt: Attempt, meter: Meter) -> None:
        parent: SpanContext | None = None
        pair: str | None = None
        traceparent = attempt.headers.get("traceparent")
        if traceparent is not None:
            found = self._pairs.get(traceparent)
            if found is not None:
                pair, parent = found
            else:
                parent = self._remote(attempt.headers)
        # The revision now: a copy is told without its call, which may have come under another.
        # The pair is the call the copy was made of, traced or not.
        mine = {
            "llm_sidecar.revision": self.live.current.revision,
            "llm_sidecar.pair_id": pair or call_id,
        }
        self._attempt(attempt, meter, parent, mine)

    def refused(self, arrival: Arrival, error: ErrorAnswer) -> None:
        attrs = {
            "http.response.status_code": error.status,
            "error.type": error.code,
            "llm_sidecar.request_id": arrival.id,
            "llm_sidecar.revision": arrival.runtime.revision,
        }
        context = self._context(None)
        status = Status(StatusCode.ERROR, error.code)
        start = int(arrival.ts * 1e9)
        self._emit("refused", context, None, SpanKind.SERVER, attrs, status, start, time.time_ns())

    # -- spans and metrics -------------------------------------------------------------

    def _remote(self, headers: CIMultiDict[str]) -> SpanContext | None:
        """The app's span, from its W3C `traceparent` (and `tracestate`); None if malformed."""
        parent = trace.get_current_span(self._propagator.extract(headers)).get_span_context()
        return parent if parent.is_valid else None

    def _context(self, parent: SpanContext | None) -> SpanContext:
        """A new span's own context: in its parent's trace, and as sampled as its parent."""
        if parent is None:
            return SpanContext(self._ids.generate_trace_id(), self._ids.generate_span_id(), False, _SAMPLED)  # fmt: skip
        return SpanContext(
            parent.trace_id, self._ids.generate_span_id(), False, parent.trace_flags, parent.trace_state
        )  # fmt: skip

    def _emit(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attrs: dict[str, Any],
        status: Status,
        start_ns: int,
        end_ns: int,
    ) -> None:
        span = ReadableSpan(
            name, context, parent, self._resource, attrs, kind=kind, status=status,
            start_time=start_ns, end_time=end_ns, instrumentation_scope=self._scope,
        )  # fmt: skip
        self._spans.on_end(span)  # drops an unsampled one; queues, never waits

    def _open_call(self, call: Call) -> _OpenCall:
        headers = call.headers
        parent = self._remote(headers) if "traceparent" in headers else None
        op = operation(call.tail)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": op,
            "http.request.method": call.method,
            "llm_sidecar.route": call.route.name,
            "llm_sidecar.revision": call.arrival.runtime.revision,
            "llm_sidecar.request_id": call.id,
        }
        if call.model is not None:
            attrs["gen_ai.request.model"] = call.model
        name = f"{op} {call.model}" if call.model else op
        open_call = _OpenCall(name, self._context(parent), parent, attrs)
        open_call.start_ns = int(call.arrival.ts * 1e9)
        self._open[call.id] = open_call
        asyncio.get_running_loop().call_soon(self._close, call.id)
        traceparent = headers.get("traceparent")
        if traceparent is not None and call.route.shadow is not None and call.shadow:
            pairs = self._pairs
            pairs[traceparent] = (call.id, open_call.context)
            pairs.move_to_end(traceparent)
            if len(pairs) > PAIRS_KEPT:
                pairs.popitem(last=False)
        return open_call

    def _close(self, call_id: str) -> None:
        open_call = self._open.pop(call_id, None)
        if open_call is None:
            return
        attrs = open_call.attrs
        status = _OK
        meter = open_call.last
        if meter is not None:
            attrs["llm_sidecar.upstream"] = meter.upstream
            if meter.status is not None:
                attrs["http.response.status_code"] = meter.status
            if meter.error_kind is not None:
                attrs["error.type"] = meter.error_kind
                status = Status(StatusCode.ERROR, meter.error_kind)
        # The sidecar's own time is in it: the call ends once the pipeline has settled.
        end_ns = max(open_call.end_ns, time.time_ns())
        self._emit(
            open_call.name, open_call.context, open_call.parent, SpanKind.SERVER, attrs, status,
            open_call.start_ns, end_ns,
        )  # fmt: skip

    def _attempt(
        self, attempt: Attempt, meter: Meter, parent: SpanContext | None, mine: dict[str, str]
    ) -> None:
        """The attempt's span, finished, and its metrics recorded; `mine`: span-only attributes."""
        up = attempt.upstream
        server = self._servers.get(up.host)
        if server is None:
            server = self._servers[up.host] = server_of(up.host)
        op = operation(attempt.tail)
        metric: dict[str, Any] = {
            "gen_ai.operation.name": op,
            "gen_ai.provider.name": up.api,
            "gen_ai.system": up.api,  # the older name, which some backends still read
            "server.address": server[0],
            "llm_sidecar.role": attempt.role,
            "llm_sidecar.upstream": up.name,
        }
        if server[1] is not None:
            metric["server.port"] = server[1]
        if attempt.model_sent is not None:
            metric["gen_ai.request.model"] = attempt.model_sent
        prompt, completion, model = usage_of(meter)
        if model is not None:
            metric["gen_ai.response.model"] = model
        status = _OK
        if meter.error_kind is not None:
            metric["error.type"] = meter.error_kind
            status = Status(StatusCode.ERROR, meter.error or meter.error_kind)
        attrs = metric | mine
        if meter.status is not None:
            attrs["http.response.status_code"] = meter.status
        if prompt is not None:
            attrs["gen_ai.usage.input_tokens"] = prompt
            self._tokens.record(prompt, {**metric, "gen_ai.token.type": "input"})
        if completion is not None:
            attrs["gen_ai.usage.output_tokens"] = completion
            self._tokens.record(completion, {**metric, "gen_ai.token.type": "output"})
        if meter.ttfb_ms is not None:
            attrs["llm_sidecar.ttfb_ms"] = meter.ttfb_ms
        if meter.ttft_ms is not None:
            attrs["llm_sidecar.ttft_ms"] = meter.ttft_ms
        name = f"{op} {attempt.model_sent}" if attempt.model_sent else op
        start_ns = int(meter.ts * 1e9)
        self._emit(name, self._context(parent), parent, SpanKind.CLIENT, attrs, status, start_ns, _end_ns(meter))  # fmt: skip
        self._duration.record((meter.total_ms or 0.0) / 1000.0, metric)

    # -- lifecycle ---------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        t = self.tally
        return {
            "endpoint": self.endpoint,
            "batches": dict(t.batches),
            "failed": dict(t.failed),
            "last_error": t.last_error,
        }

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Export what is queued now (blocking: for a thread, or a test)."""
        ms = int(timeout_s * 1000)
        spans = self._spans.force_flush(ms)
        metrics = self._metrics.force_flush(ms)
        return spans and metrics

    async def stop(self, wait_s: float | None = None) -> None:
        """Flush and shut the exporters down, waiting at most `wait_s` (`STOP_WAIT_S`).

        On a daemon thread: a collector that is down holds the SDK's shutdown for the export
        deadline, and neither the loop's executor nor the process's exit should wait on that.
        """
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def shut() -> None:
            try:
                self._spans.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated
                self._metrics.shutdown(timeout_millis=EXPORT_TIMEOUT_S * 1000)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop has gone: nobody waits
                    loop.call_soon_threadsafe(_settle, done)

        threading.Thread(target=shut, name="otel-shutdown", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), STOP_WAIT_S if wait_s is None else wait_s)


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _end_ns(meter: Meter) -> int:
    return int((meter.ts + (meter.total_ms or 0.0) / 1000.0) * 1e9)


def usage_of(meter: Meter) -> tuple[int | None, int | None, str | None]:
    """Input and output tokens, and the model that answered, as far as the answer says."""
    tally = meter.tally
    if tally is not None:
        usage = tally.usage
        return usage.prompt, usage.completion, None
    body = meter.body
    if not body or len(body) > PARSE_AT_MOST or body[:1] != b"{":
        return None, None, None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    usage = answers.usage_of(parsed)
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return usage.prompt, usage.completion, model if isinstance(model, str) else None
