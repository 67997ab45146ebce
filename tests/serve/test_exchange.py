"""The exchange step fed with canned failures: each maps to one error kind, in one place."""

from __future__ import annotations

import aiohttp
import pytest

from proxy.errors import ErrorAnswer, UpstreamTimeout, UpstreamUnreachable
from proxy.record.meter import Meter
from proxy.serve.exchange import Failure, _failure, exchange
from proxy.serve.plan import Attempt, plan
from tests.serve.calls import make_call, runtime


def attempt() -> Attempt:
    rt = runtime()
    return plan(make_call(rt, body={"model": "m"}), rt.upstreams["old"], "primary", False)


@pytest.mark.parametrize(
    ("exc", "began", "is_sse", "kind", "status"),
    [
        (TimeoutError(), False, False, "timeout", 504),
        (TimeoutError(), True, True, "timeout", 504),
        (UpstreamUnreachable("refused"), False, False, "connection", 502),
        (UpstreamTimeout("connect timed out"), False, False, "timeout", 504),
        (aiohttp.ServerDisconnectedError(), False, False, "connection", 502),
        (aiohttp.ClientPayloadError("cut"), True, True, "broken_stream", 502),
        (aiohttp.ClientPayloadError("cut"), True, False, "connection", 502),
    ],
)
def test_each_failure_maps_to_one_kind(
    exc: BaseException, began: bool, is_sse: bool, kind: str, status: int
) -> None:
    failure = _failure(exc, attempt(), began, is_sse)
    assert (failure.kind, failure.error.status, failure.midway) == (kind, status, began)


def test_a_timeout_says_which_deadline_passed() -> None:
    a = attempt()
    assert "sent no answer within" in _failure(TimeoutError(), a, False, False).error.message
    assert "mid-stream" in _failure(TimeoutError(), a, True, True).error.message


class Sink:
    """Remembers what an exchange handed it."""

    relays = True
    stop_at_done = False

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    def whole(self, status: int, headers: object, body: bytes) -> None:
        raise AssertionError("no answer was expected")

    async def begin(self, status: int, headers: object, is_sse: bool) -> None:
        raise AssertionError("no answer was expected")

    async def write(self, data: bytes) -> None:
        raise AssertionError("no answer was expected")

    async def end(self) -> None:
        raise AssertionError("no answer was expected")

    async def fail(self, failure: Failure) -> None:
        self.failures.append(failure)


@pytest.mark.parametrize(
    "raised",
    [UpstreamUnreachable("upstream 'old' is unreachable: refused"), aiohttp.ClientOSError()],
)
async def test_a_failed_send_is_measured_and_handed_to_the_sink(
    raised: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = attempt()

    async def send(*args: object) -> None:
        raise raised

    monkeypatch.setattr(a.upstream, "send", send)
    meter = Meter("primary", "old", None, False)
    sink = Sink()
    await exchange(a, meter, sink)  # type: ignore[arg-type]
    assert meter.error_kind == "connection" and meter.status is None
    [failure] = sink.failures
    assert isinstance(failure.error, ErrorAnswer) and failure.error.status == 502
    assert not failure.midway
