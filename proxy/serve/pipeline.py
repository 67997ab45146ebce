"""The request path, as named steps: read → route → plan → exchange (relayed) → record.

Each step is a function of its own module, testable alone: `call.read_call`,
`router.choose`, `plan.plan`, `exchange.exchange` with the `relay.Relay` sink, and
`settle` here, which records what happened. Shadow copies are offered between route and
exchange and sent once the app has its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import zlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Final

from aiohttp import web

from proxy import logs
from proxy.errors import BadRequest, BodyTimeout, BodyTooLarge, ErrorAnswer
from proxy.record import answers
from proxy.record.meter import Meter, refused, retry_of
from proxy.record.rows import Exchange, StoredObject
from proxy.serve.affinity import Affinity, answer_id
from proxy.serve.call import Arrival, Call, hash_key, new_request_id, read_call
from proxy.serve.exchange import exchange
from proxy.serve.plan import Attempt, plan
from proxy.serve.relay import Relay
from proxy.serve.router import Choice, choose

if TYPE_CHECKING:
    from proxy.record.writer import Recorder
    from proxy.serve.counters import Counters
    from proxy.serve.runtime import Live, Runtime
    from proxy.serve.shadow import Shadower


class Pipeline:
    """Holds what every request needs; `handle` is the aiohttp request handler for `/v1/...`."""

    def __init__(
        self, live: Live, counters: Counters, recorder: Recorder | None, shadower: Shadower
    ) -> None:
        self.live = live
        self.counters = counters
        self.recorder = recorder
        self.shadower = shadower
        self.affinity = Affinity()
        self.retries = RetryChains()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        arrival = Arrival(new_request_id(), time.time(), time.perf_counter(), self.live.current)
        try:
            call = await read_call(request, arrival)
        except ErrorAnswer as e:
            return await self.refuse(request, arrival, e)
        choice = choose(call, self.affinity, random.random())
        if choice.why == "object":
            self.affinity.routed += 1
        rt = arrival.runtime
        try:
            attempt = plan(
                call, rt.upstreams[choice.upstream], "primary", self._recorder(rt) is not None
            )
        except ErrorAnswer as e:
            return await self.refuse(request, arrival, e)
        answered = (
            self.shadower.offer(call, choice.upstream) if call.route.shadow is not None else None
        )
        up = attempt.upstream
        meter = Meter(attempt.role, up.name, attempt.model_sent, attempt.json_mode)
        if attempt.learn:
            meter.head = bytearray()  # a streamed answer names its object in its first event
        relay = Relay(request, arrival.id, attempt)
        up.enter()
        try:
            await exchange(attempt, meter, relay)
        except asyncio.CancelledError:
            meter.fail("client_disconnect", "the app closed the connection")
            raise
        finally:
            if answered is not None:
                # The copies go now: after a stream's end, or (a plain answer) in the loop
                # turn after aiohttp has written this return value to the socket.
                answered.set_result(None)
            up.leave()
            meter.done()
            self.settle(call, choice, attempt, meter, answered is not None)
        return relay.answer()

    def _recorder(self, rt: Runtime) -> Recorder | None:
        """The recorder, while this revision of the config records."""
        return self.recorder if rt.record.enabled else None

    def settle(
        self, call: Call, choice: Choice, attempt: Attempt, meter: Meter, paired: bool
    ) -> None:
        """Record: what the call learnt (an object's home), counted, logged and recorded."""
        name = choice.upstream
        rt = call.arrival.runtime
        recorder = self._recorder(rt)
        if attempt.learn and meter.error_kind is None:
            made = answer_id(meter.body if meter.body is not None else bytes(meter.head or b""))
            if made is not None:
                self.affinity.learn(made, name)
                if recorder is not None:
                    recorder.submit(StoredObject(made, name, time.time()))
        self.counters.requests[name] += 1
        if meter.error_kind is not None:
            self.counters.errors[name] += 1
        self._log(call.arrival, call.route.name, name, call.model, meter.status)
        if recorder is not None:
            policy = rt.record.bodies
            recorder.submit(exchange_row(call, policy.request, self.retries.key(call)))
            recorder.submit(meter.record(call.id, policy.response, paired))

    async def refuse(
        self, request: web.BaseRequest, arrival: Arrival, e: ErrorAnswer
    ) -> web.StreamResponse:
        """A request the sidecar answers itself: counted, logged, recorded, then answered."""
        self.counters.proxy_errors += 1
        self._log(arrival, "-", "-", None, e.status)
        recorder = self._recorder(arrival.runtime)
        if recorder is not None:
            # Refused requests are traffic too: the report counts them as "proxy" errors.
            rid, ts = arrival.id, arrival.ts
            recorder.submit(
                Exchange(rid, ts, "-", request.method, request.path, None, False,
                         arrival.runtime.revision, None, None, None)
            )  # fmt: skip
            ms = (time.perf_counter() - arrival.t0) * 1000.0
            recorder.submit(refused(rid, ts, e.status, e.message, ms))
        resp = e.response(arrival.id)
        if isinstance(e, BodyTooLarge):
            resp.force_close()  # the rest of the body is not worth reading
        elif isinstance(e, BodyTimeout | BadRequest):
            # Answer, then close: aiohttp would wait up to 10 s more for the rest of the
            # body, or read on in a body whose framing is broken.
            resp.force_close()
            with contextlib.suppress(ConnectionError):
                await resp.prepare(request)
                await resp.write_eof()
            request.protocol.force_close()
        return resp

    def _log(
        self, arrival: Arrival, route: str, upstream: str, model: str | None, status: int | None
    ) -> None:
        if arrival.runtime.log_requests:
            ms = round((time.perf_counter() - arrival.t0) * 1000.0, 2)
            logs.request(arrival.id, route, upstream, model, status, ms)


def exchange_row(call: Call, request_policy: str, retry: tuple[str | None, int | None]) -> Exchange:
    """The record of the call as the app sent it (its body as the policy says)."""
    arrival = call.arrival
    body = call.body
    return Exchange(  # positional, in field order: keywords cost twice as much
        arrival.id,
        arrival.ts,
        call.route.name,
        call.method,
        call.path,
        call.model,
        call.stream,
        arrival.runtime.revision,
        hash_key(call.sticky) if call.sticky is not None else None,
        body if request_policy == "full" else None,
        answers.sha256_hex(body) if request_policy == "hash" else None,
        *retry,
    )


class RetryChains:
    """Links an SDK's attempts of one call under one key, for the record.

    Where the SDK sends an `Idempotency-Key` (the same on every attempt), that is the key.
    The openai SDK sends only `x-stainless-retry-count`: then a first attempt starts a chain
    under its own request id, and a retry joins the newest chain whose first attempt had the
    same body (same length and CRC-32), so two calls with one body are two calls, not one.
    """

    __slots__ = ("_newest",)

    MAX: Final = 10_000  # chains remembered; a retry comes within seconds of its first try

    def __init__(self) -> None:
        self._newest: OrderedDict[tuple[int, int], str] = OrderedDict()

    def key(self, call: Call) -> tuple[str | None, int | None]:
        key, count = retry_of(call.headers)
        if key is not None or count is None:
            return key, count
        body = call.body
        fingerprint = (len(body), zlib.crc32(body))
        chains = self._newest
        if count > 0:
            chain = chains.get(fingerprint)
            if chain is not None:
                return chain, count
        chains[fingerprint] = call.arrival.id
        chains.move_to_end(fingerprint)
        if len(chains) > self.MAX:
            chains.popitem(last=False)
        return call.arrival.id, count
