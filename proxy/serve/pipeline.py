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
from proxy.record.rows import Exchange, GuardTrip, Role, StoredObject
from proxy.serve import failover
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
        # Shared with the shadow: copies skip what is tripped or spent.
        self.guard = shadower.guard
        self.quotas = shadower.quotas
        self.observers = shadower.observers

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        arrival = Arrival(new_request_id(), time.time(), time.perf_counter(), self.live.current)
        try:
            call = await read_call(request, arrival)
            choice = choose(call, self.affinity, random.random(), self.out_of_rotation())
            attempt = self._plan(call, choice.upstream, "primary")
        except ErrorAnswer as e:
            return await self.refuse(request, arrival, e)
        self._counted(choice)
        answered = (
            self.shadower.offer(call, choice.upstream) if call.route.shadow is not None else None
        )
        tries: list[tuple[Attempt, Meter]] = []
        relay = Relay(request, arrival.id, attempt)
        try:
            await self._try(attempt, relay, tries)
            to = failover.target(arrival.runtime.config.failover, call, attempt, tries[-1][1], relay.began)  # fmt: skip
            if to is not None:
                relay = await self._fail_over(call, to, request, tries) or relay
        finally:
            if answered is not None:
                # The copies go now: after a stream's end, or (a plain answer) in the loop
                # turn after aiohttp has written this return value to the socket.
                answered.set_result(None)
            self.settle(call, tries, answered is not None)
        return relay.answer()

    def out_of_rotation(self) -> frozenset[str]:
        """Upstreams that get no new calls now: tripped by the guard, or over a quota."""
        tripped = self.guard.tripped
        spent = self.quotas.spent()
        return spent if not tripped else frozenset(tripped) | spent

    def _counted(self, choice: Choice) -> None:
        if choice.why == "object":
            self.affinity.routed += 1
        elif choice.instead_of is not None:
            if choice.instead_of in self.guard.tripped:
                self.counters.guard_rerouted += 1
            else:
                self.quotas.rerouted += 1

    def _plan(self, call: Call, name: str, role: Role) -> Attempt:
        rt = call.arrival.runtime
        return plan(call, rt.upstreams[name], role, rt.reading)

    async def _try(
        self, attempt: Attempt, relay: Relay, tries: list[tuple[Attempt, Meter]]
    ) -> None:
        """One attempt of the call, relayed; its meter joins `tries` before anything is sent."""
        up = attempt.upstream
        meter = Meter(attempt.role, up.name, attempt.model_sent, attempt.json_mode)
        if attempt.learn:
            meter.head = bytearray()  # a streamed answer names its object in its first event
        tries.append((attempt, meter))
        self.quotas.take(up.name)
        up.enter()
        try:
            await exchange(attempt, meter, relay)
        except asyncio.CancelledError:
            meter.fail("client_disconnect", "the app closed the connection")
            raise
        finally:
            up.leave()
            meter.done()

    async def _fail_over(
        self, call: Call, to: str, request: web.BaseRequest, tries: list[tuple[Attempt, Meter]]
    ) -> Relay | None:
        """The call once more, to `to`: its answer is the app's. None: it cannot go there."""
        try:
            attempt = self._plan(call, to, "failover")
        except ErrorAnswer:
            return None  # a provider of another shape: the first answer stands
        self.counters.failovers[tries[-1][0].upstream.name] += 1
        relay = Relay(request, call.arrival.id, attempt)
        await self._try(attempt, relay, tries)
        return relay

    def _recorder(self, rt: Runtime) -> Recorder | None:
        """The recorder, while this revision of the config records."""
        return self.recorder if rt.record.enabled else None

    def settle(self, call: Call, tries: list[tuple[Attempt, Meter]], paired: bool) -> None:
        """Record: what the call learnt (an object's home), counted, watched by the guard and
        the quotas, logged and recorded; every attempt, a failed one before its failover too."""
        rt = call.arrival.runtime
        recorder = self._recorder(rt)
        if recorder is not None:
            retry = self.retries.key(call)
            recorder.submit(exchange_row(call, rt.record.bodies.request, retry))
        for attempt, meter in tries:
            name = attempt.upstream.name
            self.counters.requests[name] += 1
            if meter.error_kind is not None:
                self.counters.errors[name] += 1
            if recorder is not None:  # first: its parse of the answer gives the rest its usage
                policy = rt.record.bodies.response
                recorder.submit(meter.record(call.id, policy, paired and attempt.role == "primary"))
            self._watch(call, name, meter)
            if self.observers.all:
                self.observers.served(call, attempt, meter)
        attempt, meter = tries[-1]
        if attempt.learn and meter.error_kind is None:
            self._learn(attempt.upstream.name, meter, recorder)
        self._log(call.arrival, call.route.name, attempt.upstream.name, call.model, meter.status)

    def _learn(self, name: str, meter: Meter, recorder: Recorder | None) -> None:
        made = answer_id(meter.body if meter.body is not None else bytes(meter.head or b""))
        if made is not None:
            self.affinity.learn(made, name)
            if recorder is not None:
                recorder.submit(StoredObject(made, name, time.time()))

    def _watch(self, call: Call, name: str, meter: Meter) -> None:
        """What the guard and the quotas learn from a served call."""
        rt = call.arrival.runtime
        self.quotas.used(name, call.model, meter)
        cfg = rt.config.guard
        if cfg is None or name == call.route.primary or rt.config.rollback:
            return
        trip = self.guard.observe(cfg, name, meter, time.time(), rt.revision)
        recorder = self._recorder(rt)
        if trip is not None and recorder is not None:
            recorder.submit(
                GuardTrip(trip.upstream, trip.rule, trip.figures, trip.since, trip.revision)
            )

    async def refuse(
        self, request: web.BaseRequest, arrival: Arrival, e: ErrorAnswer
    ) -> web.StreamResponse:
        """A request the sidecar answers itself: counted, logged, recorded, then answered."""
        self.counters.proxy_errors += 1
        if self.observers.all:
            self.observers.refused(arrival, e)
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
