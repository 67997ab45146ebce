"""OpenAI's video jobs as a fake keeps them, as plain calls: the forms they are asked with, the
refusals, and the steps a job takes."""

from __future__ import annotations

import itertools

import orjson

from proxy.fakes.api import Ask, Body, Refusal
from proxy.fakes.replies import Invalid
from proxy.fakes.videos import Videos, form_fields


def videos(keep: int = 10) -> Videos:
    count = itertools.count(1)
    return Videos(next_id=lambda p: f"{p}{next(count)}", keep=keep)


def test_a_job_is_asked_as_json_a_urlencoded_or_a_multipart_form() -> None:
    multipart = (
        b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na cat\r\n'
        b'--b\r\nContent-Disposition: form-data; name="seconds"\r\n\r\n8\r\n--b--\r\n'
    )
    asks = [
        Ask("POST", "/v1/videos", {"prompt": "a cat", "seconds": "8"}, True),
        Ask("POST", "/v1/videos", None, False, b"prompt=a+cat&seconds=8",
            {"Content-Type": "application/x-www-form-urlencoded"}),
        Ask("POST", "/v1/videos", None, False, multipart,
            {"Content-Type": "multipart/form-data; boundary=b"}),
    ]  # fmt: skip
    for ask in asks:
        assert form_fields(ask) == {"prompt": "a cat", "seconds": "8"}
    assert form_fields(Ask("POST", "/v1/videos", None, False, b"x")) is None


def test_a_job_steps_from_queued_to_completed_once_per_look() -> None:
    jobs = videos()
    made = jobs.create({"prompt": "a cat"}, "sora-2", created=100)
    assert isinstance(made, bytes)
    job = orjson.loads(made)
    assert (job["status"], job["seconds"], job["size"]) == ("queued", "4", "720x1280")
    looks = [jobs.retrieve(job["id"]) for _ in range(3)]
    assert all(isinstance(look, Body) for look in looks)
    steps = [orjson.loads(look.data)["status"] for look in looks if isinstance(look, Body)]
    assert steps == ["in_progress", "completed", "completed"]
    assert [dict(look.headers) for look in looks if isinstance(look, Body)] == [
        {"openai-poll-after-ms": "20"},
        {},
        {},
    ]


def test_bad_settings_are_refused_and_old_jobs_forgotten() -> None:
    jobs = videos(keep=1)
    bad = [
        ({}, "prompt"),
        ({"prompt": "x", "seconds": "5"}, "seconds"),
        ({"prompt": "x", "size": "1x1"}, "size"),
    ]
    for fields, param in bad:
        refused = jobs.create(fields, "sora-2", created=0)
        assert isinstance(refused, Invalid) and refused.param == param
    first = orjson.loads(jobs.create({"prompt": "a"}, "sora-2", created=0))
    jobs.create({"prompt": "b"}, "sora-2", created=0)
    gone = jobs.retrieve(first["id"])
    assert isinstance(gone, Refusal) and gone.status == 404
