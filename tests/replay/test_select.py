"""What may be replayed, how it is sent, and what it costs: pure, no sockets."""

from __future__ import annotations

import orjson
import pytest

from proxy.config import UpstreamConfig
from proxy.record.rows import Response
from proxy.replay import select
from proxy.replay.run import Costs, parse_rate
from proxy.replay.select import Candidate, prepare
from proxy.report.thresholds import Price
from proxy.serve.upstream import UpstreamClient

UP = UpstreamClient(
    "new", UpstreamConfig(base_url="http://127.0.0.1:9/v1", models={"gpt-4o-mini": "prov/mini"})
)
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_a_recorded_stream_asks_for_usage_and_is_sent_mapped() -> None:
    at = prepare(UP, "POST", "/v1/chat/completions", orjson.dumps({**CHAT, "stream": True}))
    assert not isinstance(at, str)
    sent = orjson.loads(at.body)
    assert sent["model"] == "prov/mini" and sent["stream_options"] == {"include_usage": True}
    assert at.role == "replay" and at.tail == "/chat/completions"


@pytest.mark.parametrize(
    ("method", "path", "body", "why"),
    [
        ("POST", "/v1/files", b'{"purpose": "batch"}', select.UNSAFE),
        ("GET", "/v1/models", b"{}", select.UNSAFE),
        ("POST", "/v1/responses", b'{"model": "m", "previous_response_id": "resp_1"}', select.UNSAFE),
        ("POST", "/v1/audio/transcriptions", b"--boundary\r\n", select.NOT_JSON),
        ("POST", "/v1beta/models/x:generate", b"{}", select.OUTSIDE),
        ("POST", "/v1/chat/completions", None, select.NO_BODY),
        ("POST", "/v1/messages", orjson.dumps(CHAT), select.CANNOT),
    ],
)  # fmt: skip
def test_what_must_not_be_sent_twice_or_cannot_be_is_skipped_with_why(
    method: str, path: str, body: bytes | None, why: str
) -> None:
    assert prepare(UP, method, path, body) == why


def test_rates_read_per_second_minute_or_hour() -> None:
    assert parse_rate("5/s") == 5 and parse_rate("300/m") == 5 and parse_rate("2") == 2
    for bad in ("0/s", "fast", "5/d", "-1"):
        with pytest.raises(ValueError, match="not a rate"):
            parse_rate(bad)


def test_a_call_costs_its_usage_the_estimate_standing_in_and_nothing_when_it_failed() -> None:
    costs = Costs({"*": Price(input=1.0, output=2.0)})
    c = Candidate("x1", 0.0, "default", "gpt-4o-mini", 1000, 500, 0)
    assert costs.estimate(c) == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    fields = dict.fromkeys(Response._fields)
    ok = Response(**{**fields, "prompt_tokens": 10, "completion_tokens": None, "bytes": 1})
    assert costs.actual(c, ok) == pytest.approx((10 * 1.0 + 500 * 2.0) / 1e6)
    failed = Response(**{**fields, "error_kind": "http_5xx", "bytes": 1})
    assert costs.actual(c, failed) == 0.0
    assert Costs({}).estimate(c) is None
