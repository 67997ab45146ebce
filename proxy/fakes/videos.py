"""OpenAI's video jobs as one fake keeps them: made by `POST /v1/videos`, moved on by each
`GET /v1/videos/{id}` (queued, in progress, completed), their MP4 at `/content` once done.
An id this fake did not make is a 404, as another provider's id is at OpenAI."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from proxy.fakes.api import Ask, Body, Refusal
from proxy.fakes.replies import Invalid, error_body

DEFAULT_MODEL: Final = "sora-2"
_SECONDS: Final = ("4", "8", "12")
_SIZES: Final = ("720x1280", "1280x720", "1024x1792", "1792x1024")
_EXPIRY: Final = 24 * 3600  # OpenAI keeps a video's assets for a day
# The SDK's poll helper waits this long between polls when the answer says so (default 1 s).
_POLL_AFTER_MS: Final = "20"
# An MP4's first box, so that whatever sniffs the bytes sees a video; the rest names the job.
_FTYP: Final = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"


@dataclass(frozen=True, slots=True)
class _Job:
    video_id: str
    model: str
    prompt: str
    seconds: str
    size: str
    created: int


def form_fields(ask: Ask) -> dict[str, Any] | None:
    """The fields of a JSON object, a multipart form (the SDK's way) or a urlencoded form."""
    if isinstance(ask.json, dict):
        return ask.json
    content_type = ask.headers.get("Content-Type", "")
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        return dict(urllib.parse.parse_qsl(ask.body.decode("utf-8", "replace")))
    if kind != "multipart/form-data":
        return None
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + ask.body)
    if not message.is_multipart():
        return None
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return fields


def _not_found(video_id: str) -> Refusal:
    message = f"Video with id '{video_id}' not found."
    return Refusal(404, error_body(message, "invalid_request_error", "video_not_found", "id"))


class Videos:
    """The newest `keep` video jobs of one fake, and how often each was looked at."""

    def __init__(self, *, next_id: Callable[[str], str], keep: int = 1000) -> None:
        self._next_id = next_id
        self._keep = keep
        self._jobs: dict[str, _Job] = {}
        self._polls: dict[str, int] = {}

    def create(self, fields: Mapping[str, Any], model: str, created: int) -> bytes | Invalid:
        prompt = fields.get("prompt")
        seconds, size = str(fields.get("seconds", "4")), str(fields.get("size", "720x1280"))
        if not isinstance(prompt, str) or not prompt:
            return Invalid("prompt must be a non-empty string.", "prompt")
        if seconds not in _SECONDS:
            return Invalid(f"seconds must be one of {', '.join(_SECONDS)}.", "seconds")
        if size not in _SIZES:
            return Invalid(f"size must be one of {', '.join(_SIZES)}.", "size")
        if len(self._jobs) >= self._keep:
            oldest = next(iter(self._jobs))
            del self._jobs[oldest], self._polls[oldest]
        job = _Job(self._next_id("video_"), model, prompt, seconds, size, created)
        self._jobs[job.video_id] = job
        self._polls[job.video_id] = 0
        return orjson.dumps(_card(job, 0))

    def retrieve(self, video_id: str) -> Body | Refusal:
        """The job, one step further: queued, then in progress, then completed."""
        job = self._jobs.get(video_id)
        if job is None:
            return _not_found(video_id)
        polls = self._polls[video_id] = min(self._polls[video_id] + 1, 2)
        headers = {} if polls == 2 else {"openai-poll-after-ms": _POLL_AFTER_MS}
        return Body(orjson.dumps(_card(job, polls)), headers=headers)

    def content(self, video_id: str) -> Body | Refusal:
        job = self._jobs.get(video_id)
        if job is None:
            return _not_found(video_id)
        if self._polls[video_id] < 2:
            message = f"Video with id '{video_id}' is not ready yet; its status is not completed."
            return Refusal(400, error_body(message, "invalid_request_error", None, "id"))
        digest = hashlib.sha256(f"{job.model}\0{job.prompt}\0{job.size}".encode()).digest()
        return Body(_FTYP + b"\x00\x00\x00\x28mdat" + digest, "video/mp4")


def _card(job: _Job, polls: int) -> dict[str, Any]:
    status, progress = (("queued", 0), ("in_progress", 50), ("completed", 100))[polls]
    done = job.created if polls == 2 else None
    return {
        "id": job.video_id,
        "object": "video",
        "created_at": job.created,
        "completed_at": done,
        "expires_at": None if done is None else done + _EXPIRY,
        "error": None,
        "model": job.model,
        "progress": progress,
        "prompt": job.prompt,
        "remixed_from_video_id": None,
        "seconds": job.seconds,
        "size": job.size,
        "status": status,
    }
