"""Bounded shadow copies: the same request to another upstream, measured, recorded, never shown."""

from __future__ import annotations

import asyncio
import random
import re
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import structlog
from multidict import CIMultiDict

from proxy.config import ShadowConfig
from proxy.errors import UpstreamTimeout, UpstreamUnreachable
from proxy.record.meter import Meter
from proxy.record.rows import Role
from proxy.serve.affinity import ID_FIELDS, ID_LIST_FIELDS, OBJECT_APIS, may_reference
from proxy.serve.rewrite import ModelAt, for_upstream
from proxy.serve.upstream import BUFFER_LIMIT, push_deadline, read_upto
from proxy.sse import SSEDecoder

if TYPE_CHECKING:
    from proxy.record.writer import Recorder
    from proxy.serve.runtime import Runtime
    from proxy.serve.stats import Stats
    from proxy.serve.upstream import UpstreamClient

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


class Shadower:
    """Owns every shadow task; a full house skips the copy (counted) rather than queueing it."""

    def __init__(self, stats: Stats, recorder: Recorder | None) -> None:
        self.stats = stats
        self.recorder = recorder
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def offer(
        self,
        rt: Runtime,
        cfg: ShadowConfig,
        serving: str,
        rid: str,
        method: str,
        tail: str,
        query: str,
        headers: CIMultiDict[str],
        obj: dict[str, Any] | None,
        body: bytes,
        model: str | None,
        at: ModelAt,
        stream: bool,
        want_usage: bool,
        json_mode: bool,
        after: asyncio.Future[None] | None = None,
    ) -> bool:
        """Start the copies this request gets; True when at least one was sent.

        `after`: the copies wait for it before they are sent. The request path resolves it
        once the app has its answer, so a copy's work never sits on the primary's own path.
        """
        if self._closed or (stream and not cfg.streams):
            return False
        if unrepeatable(method, tail, body):
            self.stats.shadow_skipped_state += 1
            return False
        targets: list[tuple[Role, str]] = []
        if cfg.sample >= 1.0 or random.random() < cfg.sample:
            if cfg.upstream == serving:
                self.stats.shadow_skipped_same += 1
            else:
                targets.append(("shadow", cfg.upstream))
        # The noise floor is the primary disagreeing with itself: a canary's second answer
        # would measure the canary instead, so only requests the primary served get one.
        if cfg.noise_sample and serving == rt.config.primary and random.random() < cfg.noise_sample:
            targets.append(("noise", serving))
        started = False
        for role, name in targets:
            if self.in_flight >= cfg.max_in_flight:
                self.stats.shadow_skipped_cap += 1
                continue
            up = rt.upstreams[name]
            send_tail, send_body, sent, _ = for_upstream(up, tail, obj, body, model, at, want_usage)
            self.in_flight += 1
            task = asyncio.get_running_loop().create_task(
                self._run(
                    role,
                    up,
                    rid,
                    method,
                    send_tail,
                    query,
                    CIMultiDict(headers),
                    send_body,
                    sent,
                    json_mode,
                    rt.record.bodies.response if rt.record.enabled else None,
                    after,
                )
            )
            self._tasks.add(task)
            task.add_done_callback(self._done)
            started = True
        return started

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("shadow task failed", exc_info=task.exception())

    async def _run(
        self,
        role: Role,
        up: UpstreamClient,
        rid: str,
        method: str,
        tail: str,
        query: str,
        headers: CIMultiDict[str],
        body: bytes,
        model_sent: str | None,
        json_mode: bool,
        policy: Any,
        after: asyncio.Future[None] | None,
    ) -> None:
        if after is not None:
            try:
                await asyncio.shield(after)
            except asyncio.CancelledError:
                self.in_flight -= 1  # stopped before it was sent: nothing to record
                raise
        self.stats.shadow_sent += 1
        meter = Meter(role, up.name, model_sent, json_mode)
        up.enter()
        try:
            await self._exchange(up, meter, method, tail, query, headers, body)
        except asyncio.CancelledError:
            meter.fail("timeout", "the sidecar stopped before the shadow answer was complete")
            raise
        finally:
            up.leave()
            self.in_flight -= 1
            meter.done()
            if meter.error_kind is not None:
                self.stats.shadow_failed += 1
            if self.recorder is not None and policy is not None:
                self.recorder.submit(meter.record(rid, policy))

    async def _exchange(
        self,
        up: UpstreamClient,
        meter: Meter,
        method: str,
        tail: str,
        query: str,
        headers: CIMultiDict[str],
        body: bytes,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(up.first_byte) as deadline:
                upr = await up.send(method, tail, query, headers, body)
                try:
                    is_sse = upr.headers.get("content-type", "").startswith("text/event-stream")
                    meter.headers(upr.status, is_sse)
                    tally = meter.tally
                    if not is_sse or tally is None:
                        data, whole = await read_upto(upr.content, BUFFER_LIMIT)
                        meter.bytes = len(data)
                        if not whole:  # too large to keep: counted to the end, not held
                            while chunk := await upr.content.readany():
                                meter.bytes += len(chunk)
                            return
                        meter.body = up.scrub(upr.status, data)
                        return
                    decoder = SSEDecoder()
                    content = upr.content
                    armed = -up.idle
                    while True:
                        armed = push_deadline(deadline, armed, loop.time(), up.idle)
                        chunk = await content.readany()
                        if not chunk:
                            break
                        meter.bytes += len(chunk)
                        for ev in decoder.feed(chunk):
                            meter.event(tally.add(ev))
                        if tally.done:
                            # Complete: an upstream slow to end its response after `[DONE]`
                            # (or `response.completed`) must not make this copy a timeout.
                            upr.close()
                            break
                    for ev in decoder.flush():
                        tally.add(ev)
                finally:
                    upr.release()
        except TimeoutError:
            meter.fail("timeout", f"shadow upstream {up.name!r} timed out")
        except UpstreamUnreachable as e:
            meter.fail("connection", e.message)
        except UpstreamTimeout as e:
            meter.fail("timeout", e.message)
        except aiohttp.ClientError as e:
            meter.fail(
                "broken_stream" if meter.tally is not None else "connection",
                f"shadow upstream {up.name!r} broke off: {type(e).__name__}",
            )

    async def close(self, grace: float) -> None:
        """Let copies in flight finish for `grace` seconds, then cancel the rest (and record them)."""
        self._closed = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
