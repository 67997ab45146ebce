"""Bounded shadow copies: the same request to another upstream, measured, recorded, never shown."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

import structlog

from proxy.config import BodyPolicy, ShadowConfig
from proxy.errors import ErrorAnswer
from proxy.record.meter import Meter
from proxy.record.rows import Role
from proxy.serve.affinity import ID_FIELDS, ID_LIST_FIELDS, OBJECT_APIS, may_reference
from proxy.serve.call import Call
from proxy.serve.exchange import Failure, exchange
from proxy.serve.guard import Guard
from proxy.serve.observe import Observers
from proxy.serve.plan import Attempt, plan
from proxy.serve.quota import Quotas

if TYPE_CHECKING:
    from proxy.record.writer import Recorder
    from proxy.serve.counters import Counters

log = structlog.get_logger("proxy.shadow")

# Object APIs: a copy would create, change or delete something at the other upstream (upload a
# file, start a batch or a fine-tuning job, twice at the primary for a noise copy), or it
# names an object that lives only where it was made, and fails there for that reason alone.
_OBJECT_APIS: Final = (
    *OBJECT_APIS,
    "/organization",
    "/realtime",
    "/responses/",  # a stored response: cancel, input items, delete
    "/chat/completions/",  # a stored chat completion: update, delete
)
# A body field naming a stored object: a chained response, a conversation, a reusable prompt,
# an uploaded file, a vector store. Only a string, list or object value is a reference (a
# legacy completion's "prompt" is its text); quotes inside JSON strings are escaped, so a
# message that quotes such a name does not match. Also a background response: its answer is
# a queued stub, fetched later from the upstream that has it, so a copy measures nothing.
_REFERENCE: Final = re.compile(
    rb'"(?:' + "|".join((*ID_FIELDS, *ID_LIST_FIELDS)).encode() + rb')"\s*:\s*[\["{]'
    rb'|"prompt"\s*:\s*\{|"background"\s*:\s*true'
)


def unrepeatable(method: str, tail: str, body: bytes) -> bool:
    """Would a copy of this request change state, or fail only for naming a stored object?

    Shadowing measures inference calls: a POST that creates nothing lasting and names nothing
    stored. Everything else goes to the serving upstream only.
    """
    if method != "POST":
        return True
    for prefix in _OBJECT_APIS:
        if tail.startswith(prefix) and (
            prefix[-1] == "/" or len(tail) == len(prefix) or tail[len(prefix)] == "/"
        ):
            return True
    return may_reference(tail, body) and _REFERENCE.search(body) is not None


class _Measure:
    """The sink of a copy: its answer is measured, never shown to anyone."""

    __slots__ = ()

    relays = False
    stop_at_done = True  # complete at `[DONE]`: a lingering upstream is not a timeout

    def whole(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        pass

    async def begin(self, status: int, headers: Mapping[str, str], is_sse: bool) -> None:
        pass

    async def write(self, data: bytes) -> None:
        pass

    async def end(self) -> None:
        pass

    async def fail(self, failure: Failure) -> None:
        pass


_MEASURE = _Measure()


class Shadower:
    """Owns every shadow task; a full house skips the copy (counted) rather than queueing it."""

    def __init__(self, counters: Counters, recorder: Recorder | None) -> None:
        self.counters = counters
        self.recorder = recorder
        self.guard = Guard()  # a tripped upstream gets no copies
        self.quotas = Quotas()  # nor one whose quota the copy would eat into
        self.observers = Observers()  # metrics, traces, the dashboard (see `observe`)
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def offer(self, call: Call, serving: str) -> asyncio.Future[None] | None:
        """Start the copies this call gets, if any; they wait for the future returned.

        The request path resolves it once the app has its answer, so a copy's work never
        sits on the primary's own path. None: no copy was made.
        """
        cfg = call.route.shadow
        if cfg is None or not call.shadow or self._closed or (call.stream and not cfg.streams):
            return None
        if unrepeatable(call.method, call.tail, call.body):
            self.counters.shadow_skipped_state += 1
            return None
        after: asyncio.Future[None] | None = None
        for role, name in self._targets(call, cfg, serving):
            if self.in_flight >= cfg.max_in_flight:
                self.counters.shadow_skipped_cap += 1
                continue
            if name in self.guard.tripped:
                self.counters.shadow_skipped_guard += 1
                continue
            if not self.quotas.copy_allowed(name, cfg.requests_per_minute):
                continue  # counted by the quotas
            rt = call.arrival.runtime
            try:
                attempt = plan(call, rt.upstreams[name], role, rt.reading)
            except ErrorAnswer:  # a provider of another shape that cannot take this call
                self.counters.shadow_skipped_shape += 1
                continue
            if after is None:
                after = asyncio.get_running_loop().create_future()
            self.in_flight += 1
            policy = rt.record.bodies.response if rt.record.enabled else None
            task = asyncio.get_running_loop().create_task(
                self._run(attempt, call.id, policy, after)
            )
            self._tasks.add(task)
            task.add_done_callback(self._done)
        return after

    def _targets(self, call: Call, cfg: ShadowConfig, serving: str) -> list[tuple[Role, str]]:
        targets: list[tuple[Role, str]] = []
        if cfg.sample >= 1.0 or random.random() < cfg.sample:
            if cfg.upstream == serving:
                self.counters.shadow_skipped_same += 1
            else:
                targets.append(("shadow", cfg.upstream))
        # The noise floor is the primary disagreeing with itself: a canary's second answer
        # would measure the canary instead, so only requests the primary served get one.
        if (
            cfg.noise_sample
            and serving == call.route.primary
            and random.random() < cfg.noise_sample
        ):
            targets.append(("noise", serving))
        return targets

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("shadow task failed", exc_info=task.exception())

    async def _run(
        self,
        attempt: Attempt,
        call_id: str,
        policy: BodyPolicy | None,
        after: asyncio.Future[None],
    ) -> None:
        try:
            await asyncio.shield(after)
        except asyncio.CancelledError:
            self.in_flight -= 1  # stopped before it was sent: nothing to record
            raise
        self.counters.shadow_sent += 1
        up = attempt.upstream
        meter = Meter(attempt.role, up.name, attempt.model_sent, attempt.json_mode)
        up.enter()
        try:
            await exchange(attempt, meter, _MEASURE)
        except asyncio.CancelledError:
            meter.fail("timeout", "the sidecar stopped before the shadow answer was complete")
            raise
        finally:
            up.leave()
            self.in_flight -= 1
            meter.done()
            if meter.error_kind is not None:
                self.counters.shadow_failed += 1
            if self.recorder is not None and policy is not None:  # first: it reads the usage
                self.recorder.submit(meter.record(call_id, policy))
            self.quotas.used(up.name, None, meter)
            if self.observers.all:
                self.observers.copied(call_id, attempt, meter)

    async def close(self, grace: float) -> None:
        """Let copies in flight finish for `grace` seconds, then cancel the rest (and record them)."""
        self._closed = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
