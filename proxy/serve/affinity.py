"""Objects live where they were made: a call that names one goes to the upstream that made it.

A split sends each request wherever its weights say. That is right for a chat completion and
wrong for a call that continues one made earlier: `previous_response_id` names a response
stored at one provider only, `GET /v1/responses/{id}` and `/v1/files/{id}/content` fetch it,
a batch reads an `input_file_id` uploaded there. Sent to the other upstream, each fails with
a "not found" that neither the app nor the report can tell from a real fault.

`Affinity` remembers the id of every object an upstream answered a create call with (the
object APIs, `POST /v1/responses` and chat completions made with `store: true`, streamed or
not), the most recent `MAX_IDS`, in memory.
A later call naming one, in its path or in a referencing body field, goes to that upstream.
Pure: no I/O; the request path asks and tells it.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Final

import orjson

MAX_IDS: Final = 100_000  # ~15 MB at most; the oldest is forgotten first

# The object APIs: files, batches, vector stores and the like, made, read and deleted by id.
OBJECT_APIS: Final = (
    "/files",
    "/uploads",
    "/batches",
    "/fine_tuning",
    "/vector_stores",
    "/assistants",
    "/threads",
    "/conversations",
    "/containers",
    "/evals",
    "/videos",  # a video job: made by a POST, polled and downloaded by its id
)
# POST to these (or below them) creates an object whose id the answer carries at the top.
CREATES: Final = ("/responses", *OBJECT_APIS)
# Body fields holding one id: a string, or an object with an "id" (a conversation).
ID_FIELDS: Final = (
    "previous_response_id",
    "conversation",
    "file_id",
    "input_file_id",
    "training_file",
    "validation_file",
    "vector_store_id",
    "assistant_id",
    "thread_id",
)
ID_LIST_FIELDS: Final = ("file_ids", "vector_store_ids")  # body fields holding a list of ids
_REFERENCE: Final = re.compile(
    rb'"(?:' + "|".join(ID_FIELDS).encode() + rb')"\s*:\s*(?:\{\s*"id"\s*:\s*)?"([^"\\]{1,256})"'
)
_REFERENCES: Final = re.compile(
    rb'"(?:' + "|".join(ID_LIST_FIELDS).encode() + rb')"\s*:\s*\[([^\]]{0,65536})\]'
)
_STRING: Final = re.compile(rb'"([^"\\]{1,256})"')
# The id of a plain answer is its first member in every OpenAI-style API; a streamed
# response names it in its first event, `response.created`.
_FIRST_ID: Final = re.compile(rb'\A\s*\{\s*"id"\s*:\s*"([^"\\]{1,256})"')
_STREAMED_ID: Final = re.compile(rb'"response"\s*:\s*\{\s*"id"\s*:\s*"([^"\\]{1,256})"')
# A streamed chat completion names it first in every chunk.
_CHUNK_ID: Final = re.compile(rb'^data:[ \t]*\{\s*"id"\s*:\s*"([^"\\]{1,256})"', re.MULTILINE)
HEAD_BYTES: Final = 16384  # how much of a streamed answer is searched for its id
_PARSE_LIMIT: Final = 1024 * 1024  # a plain answer whose id is not first is parsed up to this


_CREATE_ROOTS: Final = frozenset(prefix[1:] for prefix in CREATES)


def creates(method: str, tail: str) -> bool:
    """Does this call make an object whose id the app will name again?"""
    return method == "POST" and tail[1:].partition("/")[0] in _CREATE_ROOTS


def stores_completion(tail: str, obj: dict[str, Any] | None, body: bytes) -> bool:
    """A chat completion made with `store: true`: the app may fetch, list, update or delete it
    later under `/chat/completions/{id}`. `obj` is the body already parsed, if it was."""
    if tail != "/chat/completions" or b'"store"' not in body:  # a plain chat call: no parse
        return False
    if obj is None:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
    return isinstance(obj, dict) and obj.get("store") is True


def may_reference(tail: str, body: bytes) -> bool:
    """Can this call's body name a stored object? Only the object APIs' and the Responses
    API's bodies do, and a chat message's file part (`"file_id"`).

    The patterns cost ~2 us per KB of body: embeddings, images, audio and plain chat are
    not scanned at all.
    """
    root = tail[1:].partition("/")[0]
    if root == "chat":
        return b'"file_id"' in body  # a long needle: a fast search
    return root in _CREATE_ROOTS


def answer_id(body: bytes) -> str | None:
    """The id of the object a create call answered with, from its body or a stream's start."""
    m = (
        _FIRST_ID.match(body)
        or _STREAMED_ID.search(body, 0, HEAD_BYTES)
        or _CHUNK_ID.search(body, 0, HEAD_BYTES)
    )
    if m is not None:
        return m.group(1).decode("utf-8", "replace")
    if body[:1] != b"{" or len(body) > _PARSE_LIMIT:
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) and value else None


class Affinity:
    """Object id -> the upstream that made it, for the most recent `size` ids."""

    __slots__ = ("_owner", "_size", "routed")

    def __init__(self, size: int = MAX_IDS) -> None:
        # Order is age, the first key the oldest. An OrderedDict, not a dict: a dict that
        # drops its first key again and again scans the dead slots before it each time.
        self._owner: OrderedDict[str, str] = OrderedDict()
        self._size = size
        self.routed = 0  # calls sent to an object's upstream instead of by weight

    def __len__(self) -> int:
        return len(self._owner)

    def learn(self, object_id: str, upstream: str) -> None:
        owner = self._owner
        owner[object_id] = upstream
        owner.move_to_end(object_id)
        if len(owner) > self._size:
            owner.popitem(last=False)

    def owner(self, tail: str, body: bytes) -> str | None:
        """The upstream that made an object this call names, if any: path first, then body."""
        owner = self._owner
        if not owner:
            return None
        # "/responses/resp_1/input_items" -> "resp_1", "input_items"
        for segment in tail.split("/")[2:]:
            upstream = owner.get(segment)
            if upstream is not None:
                return upstream
        if not body or body[:1] not in b"{ \t\r\n" or not may_reference(tail, body):
            return None
        for m in _REFERENCE.finditer(body):
            upstream = owner.get(m.group(1).decode("utf-8", "replace"))
            if upstream is not None:
                return upstream
        for m in _REFERENCES.finditer(body):
            for item in _STRING.finditer(m.group(1)):
                upstream = owner.get(item.group(1).decode("utf-8", "replace"))
                if upstream is not None:
                    return upstream
        return None
