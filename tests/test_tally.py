"""`tally`: what a stream said, in every dialect, read in full or for its counts only."""

from __future__ import annotations

from proxy.sse import Event
from proxy.tally import Kind, StreamTally, ToolCall
from tests.test_sse import decode


def tally_of(stream: bytes) -> tuple[StreamTally, list[Kind]]:
    tally = StreamTally()
    kinds = [tally.add(ev) for ev in decode(stream)]
    return tally, kinds


# --- Chat Completions streams (chunks as api.openai.com sends them) ------------------------

_HEAD = (
    b'{"id":"chatcmpl-AmQ1","object":"chat.completion.chunk","created":1736500000,'
    b'"model":"gpt-4o-mini-2024-07-18","service_tier":"default",'
    b'"system_fingerprint":"fp_0aa8d3e20b","choices":'
)

CHAT_TEXT = (
    b"data: " + _HEAD + b'[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
    b'"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    b"data: " + _HEAD + b'[{"index":0,"delta":{"content":"Hello"},"logprobs":null,'
    b'"finish_reason":null}],"usage":null}\n\n'
    b"data: " + _HEAD + b'[{"index":0,"delta":{"content":" there!"},"logprobs":null,'
    b'"finish_reason":null}],"usage":null}\n\n'
    b"data: " + _HEAD + b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":null}\n\n'
    b"data: " + _HEAD + b'[],"usage":{"prompt_tokens":19,"completion_tokens":3,'
    b'"total_tokens":22,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}\n\n'
    b"data: [DONE]\n\n"
)


def _tool_delta(body: bytes) -> bytes:
    return (
        b"data: " + _HEAD + b'[{"index":0,"delta":{"tool_calls":[' + body + b"]},"
        b'"logprobs":null,"finish_reason":null}]}\n\n'
    )


CHAT_TOOLS = (
    b"data: " + _HEAD + b'[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":'
    b'[{"index":0,"id":"call_Wq1","type":"function","function":{"name":"get_weather",'
    b'"arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}]}\n\n'
    + _tool_delta(b'{"index":0,"function":{"arguments":"{\\"ci"}}')
    + _tool_delta(
        b'{"index":1,"id":"call_Xz2","type":"function","function":{"name":"get_time",'
        b'"arguments":""}}'
    )
    + _tool_delta(b'{"index":0,"function":{"arguments":"ty\\": \\"Paris\\"}"}}')
    + _tool_delta(b'{"index":1,"function":{"arguments":"{\\"tz\\": \\"CET\\"}"}}')
    + b"data: "
    + _HEAD
    + b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]}\n\n'
    b"data: [DONE]\n\n"
)


def test_chat_text_stream_is_reassembled() -> None:
    tally, _ = tally_of(CHAT_TEXT)
    assert tally.text == "Hello there!"
    assert tally.finish_reason == "stop"
    assert (tally.prompt_tokens, tally.completion_tokens, tally.total_tokens) == (19, 3, 22)
    assert tally.done
    assert tally.error is None
    assert tally.events == 6
    assert tally.tool_calls == []


def test_chat_kinds_mark_content_usage_chunk_and_done() -> None:
    _, kinds = tally_of(CHAT_TEXT)
    assert kinds == [
        Kind.OTHER,  # role only, empty content: no token yet
        Kind.CONTENT,
        Kind.CONTENT,
        Kind.OTHER,
        Kind.USAGE_ONLY,
        Kind.DONE,
    ]


def test_missing_usage_leaves_token_counts_none() -> None:
    without_usage = CHAT_TEXT.replace(CHAT_TEXT.split(b"\n\n")[4] + b"\n\n", b"")
    tally, kinds = tally_of(without_usage)
    assert Kind.USAGE_ONLY not in kinds
    assert (tally.prompt_tokens, tally.completion_tokens, tally.total_tokens) == (None, None, None)


def test_empty_choices_without_usage_is_not_usage_only() -> None:
    tally, kinds = tally_of(b"data: " + _HEAD + b'[],"usage":null}\n\n')
    assert kinds == [Kind.OTHER]
    assert tally.total_tokens is None


def test_usage_on_a_content_chunk_is_recorded_and_still_content() -> None:
    chunk = (
        b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}\n\n'
    )
    tally, kinds = tally_of(chunk)
    assert kinds == [Kind.CONTENT]
    assert tally.total_tokens == 6


def test_tool_calls_are_merged_by_index_across_chunks() -> None:
    tally, kinds = tally_of(CHAT_TOOLS)
    assert tally.tool_calls == [
        ToolCall("get_weather", '{"city": "Paris"}'),
        ToolCall("get_time", '{"tz": "CET"}'),
    ]
    assert tally.finish_reason == "tool_calls"
    assert tally.text == ""
    assert kinds[:5] == [Kind.CONTENT] * 5


def test_tool_call_name_is_set_once() -> None:
    stream = _tool_delta(b'{"index":0,"function":{"name":"a","arguments":"{"}}') + _tool_delta(
        b'{"index":0,"function":{"name":"a","arguments":"}"}}'
    )
    tally, _ = tally_of(stream)
    assert tally.tool_calls == [ToolCall("a", "{}")]


def test_tool_calls_without_index_start_a_new_call_at_each_id() -> None:
    stream = (
        _tool_delta(b'{"id":"c1","function":{"name":"a","arguments":"{\\"x\\""}}')
        + _tool_delta(b'{"function":{"arguments":":1}"}}')
        + _tool_delta(b'{"id":"c2","function":{"name":"b","arguments":"{}"}}')
    )
    tally, _ = tally_of(stream)
    assert tally.tool_calls == [ToolCall("a", '{"x":1}'), ToolCall("b", "{}")]


def test_only_choice_zero_is_reassembled_but_any_choice_counts_as_content() -> None:
    chunk = b'data: {"choices":[{"index":1,"delta":{"content":"other"}}]}\n\n'
    tally, kinds = tally_of(chunk)
    assert kinds == [Kind.CONTENT]
    assert tally.text == ""


def test_legacy_completions_text() -> None:
    stream = (
        b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"gpt-3.5-turbo-'
        b'instruct","choices":[{"text":"Hi","index":0,"logprobs":null,"finish_reason":null}]}\n\n'
        b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"gpt-3.5-turbo-'
        b'instruct","choices":[{"text":"!","index":0,"logprobs":null,"finish_reason":"length"}]}'
        b"\n\ndata: [DONE]\n\n"
    )
    tally, kinds = tally_of(stream)
    assert (tally.text, tally.finish_reason, tally.done) == ("Hi!", "length", True)
    assert kinds == [Kind.CONTENT, Kind.CONTENT, Kind.DONE]


def test_text_read_midway_keeps_accumulating() -> None:
    tally = StreamTally()
    tally.add(Event(b"", b'{"choices":[{"index":0,"delta":{"content":"a"}}]}', None))
    tally.add(Event(b"", b'{"choices":[{"index":0,"delta":{"content":"b"}}]}', None))
    assert tally.text == "ab"
    tally.add(Event(b"", b'{"choices":[{"index":0,"delta":{"content":"c"}}]}', None))
    assert tally.text == "abc"


def test_stream_without_done_is_not_done() -> None:
    tally, _ = tally_of(CHAT_TEXT.replace(b"data: [DONE]\n\n", b""))
    assert not tally.done


# --- errors and junk -----------------------------------------------------------------------


def test_error_object_in_a_chat_stream_is_an_error() -> None:
    stream = (
        b'data: {"error":{"message":"The server had an error while processing your request. '
        b'Sorry about that!","type":"server_error","param":null,"code":null}}\n\n'
    )
    tally, kinds = tally_of(stream)
    assert kinds == [Kind.ERROR]
    assert tally.error is not None
    assert tally.error.startswith("The server had an error")


def test_error_string_is_kept_as_the_message() -> None:
    tally, kinds = tally_of(b'data: {"error":"overloaded"}\n\n')
    assert (kinds, tally.error) == ([Kind.ERROR], "overloaded")


def test_null_error_field_is_not_an_error() -> None:
    tally, kinds = tally_of(
        b'data: {"error":null,"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
    )
    assert kinds == [Kind.CONTENT]
    assert tally.error is None


def test_the_first_error_is_kept() -> None:
    tally, _ = tally_of(b'data: {"error":"first"}\n\ndata: {"error":"second"}\n\n')
    assert tally.error == "first"


def test_long_error_messages_are_cut() -> None:
    tally, _ = tally_of(b'data: {"error":"' + b"x" * 5000 + b'"}\n\n')
    assert tally.error is not None
    assert len(tally.error) <= 300


def test_unparseable_or_non_object_data_is_other_and_never_raises() -> None:
    stream = b"data: {not json\n\ndata: hello\n\ndata: [1,2]\n\ndata: \xff\xfe\n\ndata:\n\n"
    tally, kinds = tally_of(stream)
    assert kinds == [Kind.OTHER] * 5
    assert tally.events == 5
    assert (tally.text, tally.error, tally.done) == ("", None, False)


def test_events_without_data_are_other_and_not_counted() -> None:
    tally, kinds = tally_of(b": ping\n\n\nevent: x\n\n")
    assert kinds == [Kind.OTHER] * 3
    assert tally.events == 0


def test_non_json_data_on_an_error_event_is_an_error() -> None:
    tally, kinds = tally_of(b"event: error\ndata: upstream timed out\n\n")
    assert kinds == [Kind.ERROR]
    assert tally.error == "upstream timed out"


def test_done_with_stray_whitespace_still_ends_the_stream() -> None:
    tally, kinds = tally_of(b"data:  [DONE] \n\n")
    assert kinds == [Kind.DONE]
    assert tally.done


# --- Responses API streams -----------------------------------------------------------------


def _ev(kind: str, body: str) -> bytes:
    return f'event: {kind}\ndata: {{"type":"{kind}",{body}}}\n\n'.encode()


_RESPONSE = (
    '"id":"resp_67c9fdcecf","object":"response","created_at":1741290958,"status":"{status}",'
    '"error":null,"incomplete_details":null,"model":"gpt-4.1-2025-04-14","output":[],'
    '"parallel_tool_calls":true,"temperature":1.0,"text":{{"format":{{"type":"text"}}}},'
    '"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{usage},'
    '"metadata":{{}}'
)
_USAGE = (
    '{"input_tokens":37,"input_tokens_details":{"cached_tokens":0},"output_tokens":11,'
    '"output_tokens_details":{"reasoning_tokens":0},"total_tokens":48}'
)


def _response(status: str, usage: str = "null") -> str:
    return '"response":{' + _RESPONSE.format(status=status, usage=usage) + "}"


RESPONSES_TEXT = (
    _ev("response.created", '"sequence_number":0,' + _response("in_progress"))
    + _ev("response.in_progress", '"sequence_number":1,' + _response("in_progress"))
    + _ev(
        "response.output_item.added",
        '"sequence_number":2,"output_index":0,"item":{"id":"msg_67c9fdcf","type":"message",'
        '"status":"in_progress","role":"assistant","content":[]}',
    )
    + _ev(
        "response.content_part.added",
        '"sequence_number":3,"item_id":"msg_67c9fdcf","output_index":0,"content_index":0,'
        '"part":{"type":"output_text","text":"","annotations":[]}',
    )
    + _ev(
        "response.output_text.delta",
        '"sequence_number":4,"item_id":"msg_67c9fdcf","output_index":0,"content_index":0,'
        '"delta":"Hi"',
    )
    + _ev(
        "response.output_text.delta",
        '"sequence_number":5,"item_id":"msg_67c9fdcf","output_index":0,"content_index":0,'
        '"delta":" there"',
    )
    + _ev(
        "response.output_text.done",
        '"sequence_number":6,"item_id":"msg_67c9fdcf","output_index":0,"content_index":0,'
        '"text":"Hi there"',
    )
    + _ev("response.completed", '"sequence_number":7,' + _response("completed", _USAGE))
)

RESPONSES_TOOL = (
    _ev("response.created", '"sequence_number":0,' + _response("in_progress"))
    + _ev(
        "response.output_item.added",
        '"sequence_number":1,"output_index":0,"item":{"id":"fc_12345","type":"function_call",'
        '"status":"in_progress","arguments":"","call_id":"call_12345","name":"get_weather"}',
    )
    + _ev(
        "response.function_call_arguments.delta",
        '"sequence_number":2,"item_id":"fc_12345","output_index":0,"delta":"{\\"location\\":"',
    )
    + _ev(
        "response.function_call_arguments.delta",
        '"sequence_number":3,"item_id":"fc_12345","output_index":0,"delta":"\\"Paris\\"}"',
    )
    + _ev(
        "response.function_call_arguments.done",
        '"sequence_number":4,"item_id":"fc_12345","output_index":0,'
        '"arguments":"{\\"location\\":\\"Paris\\"}"',
    )
    + _ev(
        "response.output_item.done",
        '"sequence_number":5,"output_index":0,"item":{"id":"fc_12345","type":"function_call",'
        '"status":"completed","arguments":"{\\"location\\":\\"Paris\\"}","call_id":"call_12345",'
        '"name":"get_weather"}',
    )
    + _ev("response.completed", '"sequence_number":6,' + _response("completed", _USAGE))
)


def test_responses_text_stream_is_reassembled() -> None:
    tally, kinds = tally_of(RESPONSES_TEXT)
    assert tally.text == "Hi there"
    assert (tally.prompt_tokens, tally.completion_tokens, tally.total_tokens) == (37, 11, 48)
    assert tally.finish_reason == "completed"
    assert tally.done
    assert kinds == [Kind.OTHER] * 4 + [Kind.CONTENT] * 2 + [Kind.OTHER, Kind.DONE]


def test_responses_function_call_from_deltas_and_done_item() -> None:
    tally, kinds = tally_of(RESPONSES_TOOL)
    assert tally.tool_calls == [ToolCall("get_weather", '{"location":"Paris"}')]
    assert kinds[2:4] == [Kind.CONTENT, Kind.CONTENT]
    assert tally.done


def test_responses_function_call_cut_short_keeps_partial_arguments() -> None:
    cut = RESPONSES_TOOL[: RESPONSES_TOOL.index(b"event: response.function_call_arguments.done")]
    tally, _ = tally_of(cut)
    assert tally.tool_calls == [ToolCall("get_weather", '{"location":"Paris"}')]
    assert not tally.done
    assert tally.total_tokens is None


def test_responses_done_item_replaces_the_deltas() -> None:
    stream = _ev(
        "response.function_call_arguments.delta", '"output_index":0,"delta":"{\\"garbled"'
    ) + _ev(
        "response.output_item.done",
        '"output_index":0,"item":{"type":"function_call","name":"f","arguments":"{}"}',
    )
    tally, _ = tally_of(stream)
    assert tally.tool_calls == [ToolCall("f", "{}")]


def test_responses_error_event_is_an_error() -> None:
    stream = _ev(
        "error",
        '"code":"ERR_SOMETHING","message":"Something went wrong","param":null,"sequence_number":1',
    )
    tally, kinds = tally_of(stream)
    assert kinds == [Kind.ERROR]
    assert tally.error == "Something went wrong"
    assert not tally.done


def test_responses_failed_is_an_error_with_its_message() -> None:
    stream = _ev(
        "response.failed",
        '"sequence_number":3,"response":{"id":"resp_1","object":"response","status":"failed",'
        '"error":{"code":"server_error","message":"The model failed to generate a response."},'
        '"output":[],"usage":null}',
    )
    tally, kinds = tally_of(stream)
    assert kinds == [Kind.ERROR]
    assert tally.error == "The model failed to generate a response."
    assert tally.finish_reason == "failed"
    assert not tally.done


def test_responses_incomplete_ends_the_stream_with_its_status() -> None:
    tally, kinds = tally_of(_ev("response.incomplete", _response("incomplete", _USAGE)))
    assert kinds == [Kind.DONE]
    assert (tally.done, tally.finish_reason, tally.total_tokens) == (True, "incomplete", 48)


def test_responses_type_from_the_event_line_when_data_has_none() -> None:
    stream = b'event: response.output_text.delta\ndata: {"delta":"x"}\n\n'
    tally, kinds = tally_of(stream)
    assert (kinds, tally.text) == ([Kind.CONTENT], "x")


def test_chat_usage_chunk_carries_the_cached_prompt_tokens() -> None:
    chunk = (
        b"data: " + _HEAD + b'[],"usage":{"prompt_tokens":2006,"completion_tokens":3,'
        b'"total_tokens":2009,"prompt_tokens_details":{"cached_tokens":1920}}}\n\n'
    )
    tally, _ = tally_of(chunk)
    assert tally.usage == (2006, 3, 2009, 1920)
    assert tally.cached_tokens == 1920


# --- Anthropic Messages streams (events as api.anthropic.com sends them) -------------------


def _msg(kind: str, body: str) -> bytes:
    return f'event: {kind}\ndata: {{"type":"{kind}"{body}}}\n\n'.encode()


_MESSAGE_START = _msg(
    "message_start",
    ',"message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message",'
    '"role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,'
    '"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":0,'
    '"cache_read_input_tokens":2048,"output_tokens":2}}',
)

ANTHROPIC_TOOL = (
    _MESSAGE_START
    + _msg("content_block_start", ',"index":0,"content_block":{"type":"text","text":""}')
    + _msg("ping", "")
    + _msg(
        "content_block_delta",
        ',"index":0,"delta":{"type":"text_delta","text":"Okay, let me check"}',
    )
    + _msg("content_block_delta", ',"index":0,"delta":{"type":"text_delta","text":" the weather."}')
    + _msg("content_block_stop", ',"index":0')
    + _msg(
        "content_block_start",
        ',"index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6",'
        '"name":"get_weather","input":{}}',
    )
    + _msg(
        "content_block_delta", ',"index":1,"delta":{"type":"input_json_delta","partial_json":""}'
    )
    + _msg(
        "content_block_delta",
        ',"index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\":"}',
    )
    + _msg(
        "content_block_delta",
        ',"index":1,"delta":{"type":"input_json_delta","partial_json":" \\"Paris\\"}"}',
    )
    + _msg("content_block_stop", ',"index":1')
    + _msg(
        "message_delta",
        ',"delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}',
    )
    + _msg("message_stop", "")
)


def test_anthropic_stream_is_reassembled_with_its_tool_call_and_usage() -> None:
    tally, kinds = tally_of(ANTHROPIC_TOOL)
    assert tally.text == "Okay, let me check the weather."
    assert tally.tool_calls == [ToolCall("get_weather", '{"location": "Paris"}')]
    assert tally.finish_reason == "tool_use"
    # The prompt counts the cache read too, as OpenAI's prompt_tokens does.
    assert tally.usage == (472 + 2048, 89, None, 2048)
    assert tally.done and tally.error is None
    assert kinds[0] == Kind.OTHER  # message_start: no content yet
    assert kinds[3] == Kind.CONTENT  # the first text_delta: time to first token
    assert kinds[-1] == Kind.DONE


def test_anthropic_stream_without_message_stop_is_not_done() -> None:
    tally, _ = tally_of(ANTHROPIC_TOOL.rsplit(b"event: message_stop", 1)[0])
    assert not tally.done
    assert tally.tool_calls[0].arguments == '{"location": "Paris"}'


def test_anthropic_error_event_breaks_the_stream() -> None:
    stream = _MESSAGE_START + (
        b"event: error\n"
        b'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    tally, kinds = tally_of(stream)
    assert kinds == [Kind.OTHER, Kind.ERROR]
    assert tally.error == "Overloaded"
    assert not tally.done


def test_anthropic_usage_in_message_delta_updates_what_it_states() -> None:
    stream = _MESSAGE_START + _msg(
        "message_delta",
        ',"delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":500,"output_tokens":7}',
    )
    tally, _ = tally_of(stream)
    assert tally.usage == (500 + 2048, 7, None, 2048)


# --- the light tally: counts only ------------------------------------------------------------


def test_a_light_tally_counts_as_the_full_one_does_in_every_dialect() -> None:
    # Metrics read only the first token, the usage, the end and errors: the light tally
    # leaves the later deltas unparsed, and must agree with the full one on all four.
    error_midway = CHAT_TEXT.replace(
        b"data: [DONE]", b'data: {"error":{"message":"overloaded"}}\n\ndata: [DONE]'
    )
    streams = [CHAT_TEXT, CHAT_TOOLS, RESPONSES_TEXT, RESPONSES_TOOL, ANTHROPIC_TOOL, error_midway]
    for stream in streams:
        full, light = StreamTally(), StreamTally(light=True)
        events = decode(stream)
        full_kinds = [full.add(ev) for ev in events]
        light_kinds = [light.add(ev) for ev in events]
        first = full_kinds.index(Kind.CONTENT)
        assert light_kinds.index(Kind.CONTENT) == first, stream
        ends = (Kind.USAGE_ONLY, Kind.DONE, Kind.ERROR)  # a usage chunk is held back by them
        assert [k for k in light_kinds if k in ends] == [k for k in full_kinds if k in ends]
        assert (light.usage, light.done, light.error, light.events) == (
            full.usage,
            full.done,
            full.error,
            full.events,
        ), stream
