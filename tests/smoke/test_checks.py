"""The grades, on answers written by hand: each failure names its field."""

from __future__ import annotations

import orjson
import pytest

from proxy.config import SmokeCheck
from proxy.smoke import checks
from proxy.smoke.checks import NAMES, Expect, Failed, Reply
from proxy.smoke.schema import mismatch

EXPECT = Expect("gpt-4o-mini", ("gpt-4o-mini",), None)


def sse(*events: object) -> Reply:
    body = b"".join(
        b"data: " + (e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n\n" for e in events
    )
    return Reply(200, body, None, True, 5.0, 9.0)


def chunk(content: str | None = None, finish: str | None = None) -> dict[str, object]:
    delta = {} if content is None else {"content": content}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


def test_the_config_s_check_names_are_the_checklist_s() -> None:
    from typing import get_args

    assert get_args(SmokeCheck) == NAMES


def test_a_stream_in_order_passes() -> None:
    said = checks.stream(
        sse(chunk("po"), chunk("ng"), chunk(finish="stop"), USAGE, b"[DONE]"), EXPECT
    )
    assert "[DONE]" in said and "3 + 1" in said


@pytest.mark.parametrize(
    ("events", "field", "why"),
    [
        ((chunk("a"), chunk(finish="stop"), chunk("b"), USAGE, b"[DONE]"), "event 2", "after the finish"),
        ((chunk("a"), chunk(finish="stop"), USAGE), "[DONE]", "without data: [DONE]"),
        ((chunk("a"), chunk(finish="stop"), b"[DONE]", USAGE), "event 3", "after data: [DONE]"),
        ((chunk("a"), chunk(finish="stop"), b"[DONE]"), "usage", "no usage chunk"),
        ((chunk("a"), {"error": {"message": "overloaded"}}), "event 1.error", "error event"),
    ],
)  # fmt: skip
def test_a_stream_out_of_order_fails_naming_where(
    events: tuple[object, ...], field: str, why: str
) -> None:
    with pytest.raises(Failed) as e:
        checks.stream(sse(*events), EXPECT)
    assert e.value.field == field and why in e.value.reason


def test_an_answer_from_another_model_fails_but_a_dated_version_passes() -> None:
    def answer(model: str) -> Reply:
        body = {
            "model": model,
            "choices": [{"message": {"role": "assistant", "content": "pong"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
        return Reply(200, orjson.dumps(body), None, False, None, 4.0)

    assert "gpt-4o-mini-2024-07-18" in checks.chat(answer("gpt-4o-mini-2024-07-18"), EXPECT)
    with pytest.raises(Failed) as e:
        checks.chat(answer("llama-3-8b"), EXPECT)
    assert e.value.field == "model"


def test_an_html_page_is_no_readable_error_message() -> None:
    assert checks.readable(b'{"error": {"message": "The model does not exist"}}')
    assert checks.readable(b"<html><body>500</body></html>") is None
    assert checks.readable(b'{"error": {"message": ""}}') is None


def test_schema_mismatches_say_where() -> None:
    assert mismatch({"city": 3}, checks.WEATHER) == "city is a number, not string"
    assert mismatch({}, checks.WEATHER) == "the value lacks required 'city'"
    assert "'units'" in (mismatch({"city": "Paris", "units": "C"}, checks.WEATHER) or "")
    assert mismatch({"city": "Paris"}, checks.WEATHER) is None
