"""What `Meter.record` makes of an answer: the columns added in schema version 3 and the
retry headers, read without sockets."""

from __future__ import annotations

import orjson
from multidict import CIMultiDict

from proxy.record.meter import Meter, refused, retry_of
from proxy.record.rows import Response
from proxy.sse import SSEDecoder

ANTHROPIC_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
    b'"content":[],"model":"claude-sonnet-4-5","stop_reason":null,"usage":{"input_tokens":25,'
    b'"cache_read_input_tokens":1000,"cache_creation_input_tokens":0,"output_tokens":1}}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n'
    b"event: content_block_stop\n"
    b'data: {"type":"content_block_stop","index":0}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    b'"usage":{"output_tokens":15}}\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n\n'
)


def plain(body: object) -> Response:
    meter = Meter("primary", "old", "m", json_mode=False)
    meter.headers(200, stream=False)
    meter.body = orjson.dumps(body)
    meter.done()
    return meter.record("x1", "full")


def test_a_chat_answer_records_its_cached_prompt_tokens() -> None:
    usage = {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
             "prompt_tokens_details": {"cached_tokens": 1920}}  # fmt: skip
    r = plain({"choices": [{"index": 0, "message": {"content": "hi"}}], "usage": usage})
    assert (r.prompt_tokens, r.cached_tokens, r.images, r.embedding_dims) == (
        2006,
        1920,
        None,
        None,
    )


def test_an_image_answer_records_how_many_images() -> None:
    r = plain({"created": 1, "data": [{"url": "https://a"}, {"url": "https://b"}]})
    assert (r.images, r.prompt_tokens) == (2, None)


def test_an_embeddings_answer_records_its_dimension() -> None:
    r = plain({"object": "list", "data": [{"object": "embedding", "embedding": [0.1] * 1024}]})
    assert r.embedding_dims == 1024


def test_an_anthropic_stream_records_usage_cache_text_and_its_end() -> None:
    meter = Meter("shadow", "claude", "m", json_mode=False)
    meter.headers(200, stream=True)
    assert meter.tally is not None
    for ev in SSEDecoder().feed(ANTHROPIC_STREAM):
        meter.event(meter.tally.add(ev))
    meter.done()
    r = meter.record("x1", "full")
    assert (r.prompt_tokens, r.completion_tokens, r.cached_tokens) == (1025, 15, 1000)
    assert (r.error_kind, r.stream_done, r.finish_reason) == (None, True, "end_turn")
    assert orjson.loads(r.response_body or b"")["text"] == "Hi"


def test_a_refused_request_leaves_the_new_columns_empty() -> None:
    r = refused("x1", 1.0, 413, "body too large", 2.0)
    assert (r.upstream, r.error_kind, r.cached_tokens, r.images, r.embedding_dims) == (
        "-", "proxy", None, None, None,
    )  # fmt: skip


def test_retry_of_links_attempts_by_a_hash_of_the_idempotency_key() -> None:
    first = CIMultiDict(
        {"Idempotency-Key": "stainless-python-retry-abc", "X-Stainless-Retry-Count": "0"}
    )
    again = CIMultiDict(
        {"idempotency-key": "stainless-python-retry-abc", "x-stainless-retry-count": "2"}
    )
    key, count = retry_of(first)
    assert key is not None and len(key) == 16 and "abc" not in key
    assert count == 0
    assert retry_of(again) == (key, 2)
    assert retry_of(CIMultiDict()) == (None, None)
    assert retry_of(CIMultiDict({"x-stainless-retry-count": "many"})) == (None, None)


def answer_meter(body: bytes) -> Meter:
    meter = Meter("primary", "old", None, json_mode=False)
    meter.headers(200, stream=False)
    meter.body = body
    meter.done()
    return meter


USAGES = [
    # OpenAI chat, as the API sends it: the pair first, details and more members after.
    b'{"id":"c","choices":[{"message":{"content":"prompt_tokens: 99"}}],"usage":{"prompt_tokens":12,'
    b'"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":3}},'
    b'"system_fingerprint":"fp_1"}',
    b'{"usage": {"prompt_tokens": 4, "completion_tokens": 6}}',  # spaced
    b'{"usage":{"completion_tokens":6,"prompt_tokens":4}}',  # the other order
    # Anthropic: the cache's tokens are prompt tokens too, as the record counts them.
    b'{"content":[],"usage":{"input_tokens":7,"cache_creation_input_tokens":100,"output_tokens":2}}',
    # The Responses API: details between the two, members after usage.
    b'{"output":[],"usage":{"input_tokens":9,"input_tokens_details":{"cached_tokens":0},'
    b'"output_tokens":3,"total_tokens":12},"user":null}',
    b'{"object":"list","data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}',  # embeddings
    b'{"data":[]}',
    b'{"usage":"nonsense"}',
    b'not json "usage" at all',
    b"",
]


def test_tokens_read_from_a_body_agree_with_the_record_for_every_shape() -> None:
    for body in USAGES:
        fast = answer_meter(body).tokens()  # read alone, as metrics and quotas read it
        meter = answer_meter(body)
        row = meter.record("x1", "full")
        assert fast == (row.prompt_tokens or 0, row.completion_tokens or 0), body
        assert meter.tokens() == fast  # and after the record, from what the record read
