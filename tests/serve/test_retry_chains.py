"""Linking an SDK's attempts of one call for the record, without sockets."""

from __future__ import annotations

from proxy.serve.call import Arrival
from proxy.serve.pipeline import RetryChains
from tests.serve.calls import make_call, runtime

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def attempt(rt, n: int, rid: str, body=BODY, **headers: str):  # type: ignore[no-untyped-def]
    call = make_call(rt, body=body, headers={"x-stainless-retry-count": str(n), **headers})
    return call._replace(arrival=Arrival(rid, 0.0, 0.0, rt))


def test_retries_join_the_chain_their_first_attempt_started() -> None:
    rt, chains = runtime(), RetryChains()
    assert chains.key(attempt(rt, 0, "req_a")) == ("req_a", 0)
    assert chains.key(attempt(rt, 1, "req_b")) == ("req_a", 1)
    assert chains.key(attempt(rt, 2, "req_c")) == ("req_a", 2)


def test_two_calls_with_one_body_are_two_calls() -> None:
    rt, chains = runtime(), RetryChains()
    assert chains.key(attempt(rt, 0, "req_a"))[0] == "req_a"
    assert chains.key(attempt(rt, 0, "req_b"))[0] == "req_b"
    assert chains.key(attempt(rt, 1, "req_c"))[0] == "req_b"  # the newest one is retried


def test_a_retry_of_another_body_does_not_join() -> None:
    rt, chains = runtime(), RetryChains()
    chains.key(attempt(rt, 0, "req_a"))
    other = {**BODY, "messages": [{"role": "user", "content": "bye"}]}
    assert chains.key(attempt(rt, 1, "req_b", body=other))[0] == "req_b"


def test_an_idempotency_key_is_the_chain_and_calls_without_sdk_headers_have_none() -> None:
    rt, chains = runtime(), RetryChains()
    key, count = chains.key(attempt(rt, 1, "req_a", **{"Idempotency-Key": "stainless-1"}))
    assert count == 1 and key is not None and len(key) == 16
    assert chains.key(make_call(rt, body=BODY)) == (None, None)
