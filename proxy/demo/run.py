"""The whole product in one command, on local fakes: a canary split with shadowing, a rollback
halfway through a few hundred requests from the official `openai` SDK, then the report.

Everything runs as separate processes on 127.0.0.1, as it would beside a real app: two fake
providers, the sidecar in front of them, and this process playing the app and the operator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

import aiohttp
import openai
import orjson
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
    ChatCompletionToolChoiceOptionParam,
)

from proxy import config as config_mod
from proxy.errors import ConfigError
from proxy.record.schema import StoreError
from proxy.report.build import ReportFilter, build_report
from proxy.report.html import write_html
from proxy.report.text import render_text

T = TypeVar("T")
U = TypeVar("U")

CHAT_MODEL: Final = "gpt-4o-mini"
EMBEDDING_MODEL: Final = "text-embedding-3-small"
# The app's own key: the sidecar drops it and sends each provider's key instead.
APP_KEY: Final = "sk-demo-no-key-needed"
OLD_KEY: Final = "sk-local-old"
NEW_KEY: Final = "sk-local-new"
DEFAULT_REQUESTS: Final = 400
QUICK_REQUESTS: Final = 80
CONCURRENCY: Final = 8
# Cold start of a Python process that imports aiohttp and pydantic takes about a second on a
# laptop; CI machines under load have been seen at five times that.
READY_TIMEOUT: Final = 30.0
RELOAD_TIMEOUT: Final = 10.0  # the sidecar polls its config four times a second
STOP_GRACE: Final = 20.0  # above the demo config's shutdown_grace + shadow_grace
LOG_TAIL_LINES: Final = 15

_FAKE_URL: Final = re.compile(r"^(http://127\.0\.0\.1:\d+/v1)$")
_SIDECAR_URL: Final = re.compile(r"listening on (http://127\.0\.0\.1:\d+/v1)")
_ROLLBACK_LINE: Final = re.compile(r"^rollback:[ \t]*false\b", re.MULTILINE)


def _say(text: str = "") -> None:
    """Progress on stdout, flushed per line so that a pipe sees it as it happens."""
    print(text, flush=True)


class DemoError(Exception):
    """A link in the chain failed; the message says which and what it last logged."""


# --- the cast -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FakeSpec:
    """How one fake provider is started (`python -m proxy fake`) and described."""

    name: str
    api_key: str
    model_prefix: str  # the provider's ids are this + the OpenAI id
    latency: float  # seconds to response headers, or to a stream's first event
    chunk_delay: float  # seconds between stream events
    error_rate: float  # share answered with a 500
    variant: int  # 0 answers like the old provider; others reword

    def args(self, seed: int) -> list[str]:
        models = f"{self.model_prefix}{CHAT_MODEL},{self.model_prefix}{EMBEDDING_MODEL}"
        return [
            "fake", "--name", self.name, "--api-key", self.api_key, "--models", models,
            "--latency", str(self.latency), "--chunk-delay", str(self.chunk_delay),
            "--error-rate", str(self.error_rate), "--variant", str(self.variant),
            "--seed", str(seed),
        ]  # fmt: skip

    def about(self) -> str:
        parts = [
            f"ids {self.model_prefix}{CHAT_MODEL}, {self.model_prefix}{EMBEDDING_MODEL}",
            f"{self.latency * 1000:.0f} ms to first token",
        ]
        if self.error_rate:
            parts.append(f"{self.error_rate:.0%} errors")
        if self.variant:
            parts.append("reworded answers")
        return "; ".join(parts)


# The old provider is the fast, boring one the app uses today. The new gateway differs the way
# gateways do: its own model ids, a slower first token, a few 500s, other wording. (The fakes
# have one fixed latency, no jitter: the report compares medians and p90s, so a constant 60 ms
# reads as a 4x slower first token all the same.)
OLD: Final = FakeSpec("old", OLD_KEY, "", 0.015, 0.002, 0.0, 0)
NEW: Final = FakeSpec("new", NEW_KEY, "acme/", 0.06, 0.003, 0.03, 1)


def _q(text: str) -> str:
    """A YAML scalar for any path: JSON strings are valid YAML double-quoted scalars."""
    return orjson.dumps(text).decode()


def demo_config(old_url: str, new_url: str, db_path: str) -> str:
    """The config a user would write for this migration, commented so it can be read after."""
    return f"""\
# Written by `python -m proxy demo`. The sidecar reloads this file when it changes:
# the demo flips `rollback` halfway, as you would in an editor.

listen:
  host: 127.0.0.1
  port: 0                  # any free port; the sidecar prints the one it got

upstreams:
  old:                     # the provider the app uses today
    base_url: {_q(old_url)}
    api_key: {OLD_KEY}     # sent instead of the app's own key
  new:                     # the gateway being tried: its own model ids
    base_url: {_q(new_url)}
    api_key: {NEW_KEY}
    models:
      {CHAT_MODEL}: {NEW.model_prefix}{CHAT_MODEL}
      {EMBEDDING_MODEL}: {NEW.model_prefix}{EMBEDDING_MODEL}

primary: old               # where `rollback: true` sends everything
split:                     # the canary: one request in ten to the new gateway
  old: 90
  new: 10
rollback: false            # THE SWITCH: the demo sets it to true halfway

routes:
  - path: /v1/embeddings   # vectors from two models don't mix: embeddings stay on old
    split: {{old: 100}}
    shadow: false

shadow:
  upstream: new
  sample: 1.0              # copy every request old serves to new, answer never shown
  streams: true
  max_in_flight: 64
  noise_sample: 0.2        # and one in five to the serving provider again: the noise floor

record:
  path: {_q(db_path)}
  bodies: {{request: full, response: full}}

limits:
  shutdown_grace: 10
  shadow_grace: 5

log:
  level: info
  requests: true           # one JSON line per request, in logs/sidecar.log

report:
  pricing:                 # USD per million tokens, by upstream and requested model
    old:
      {CHAT_MODEL}: {{input: 0.15, output: 0.60}}
      {EMBEDDING_MODEL}: {{input: 0.02, output: 0}}
    new:
      {CHAT_MODEL}: {{input: 0.12, output: 0.48}}
      {EMBEDDING_MODEL}: {{input: 0.02, output: 0}}
"""


class Child:
    """One process the demo started, its stderr in a log file; stopped by `stop`, always."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @classmethod
    async def spawn(cls, name: str, args: Sequence[str], log: Path) -> Child:
        """`python -m proxy ARGS` with stdout piped (for its URL line), stderr into `log`."""
        err = await asyncio.to_thread(log.open, "wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "proxy",
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                # Its own process group: a Ctrl-C in the terminal reaches the demo alone, which
                # then stops everyone in order (the sidecar first, so it can flush its records).
                start_new_session=True,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        finally:
            err.close()  # the child holds its own copy of the descriptor
        return cls(name, proc, log)

    async def ready(self, pattern: re.Pattern[str]) -> str:
        """The URL from the line the process prints once it listens."""
        out = self.proc.stdout
        if out is None:
            raise DemoError(f"the {self.name} has no stdout to read")
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                while line := await out.readline():
                    m = pattern.search(line.decode(errors="replace").strip())
                    if m:
                        return m.group(1)
                await self.proc.wait()
        except TimeoutError:
            raise DemoError(
                f"the {self.name} did not report listening within {READY_TIMEOUT:g} s"
                + await self.tail()
            ) from None
        raise DemoError(await self.died())

    async def died(self) -> str:
        return f"the {self.name} exited unexpectedly (code {self.proc.returncode})" + (
            await self.tail()
        )

    async def tail(self) -> str:
        lines = await asyncio.to_thread(_last_lines, self.log, LOG_TAIL_LINES)
        shown = "\n".join(f"    {line}" for line in lines) or "    (nothing)"
        return f"; the end of {self.log}:\n{shown}"

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def stop(self) -> int:
        """SIGTERM, the orderly way out; SIGKILL after `STOP_GRACE`."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                async with asyncio.timeout(STOP_GRACE):
                    await self.proc.wait()
            except TimeoutError:
                self.kill()
                await self.proc.wait()
        return self.proc.returncode if self.proc.returncode is not None else -1

    def kill(self) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


def _last_lines(path: Path, n: int) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError:
        return []
    return data.decode(errors="replace").splitlines()[-n:]


# --- the app's traffic --------------------------------------------------------------------------

Kind = Literal["chat", "stream", "tools", "json", "embeddings"]
_KINDS: Final[tuple[Kind, ...]] = ("chat", "stream", "tools", "json", "embeddings")
# Per 100 calls. Enough tool calls and JSON-mode answers that the default run clears the
# report's min_pairs (30) for those checks too, rather than capping them at "warn".
_KIND_WEIGHTS: Final = (22, 22, 20, 20, 16)

_ASKS: Final = (
    "Explain",
    "Write a short note on",
    "Tell me about",
    "In two sentences, describe",
    "Give three tips on",
    "Summarise",
)
_TOPICS: Final = (
    "our refund policy for parcels that arrive damaged",
    "rotating an API key without downtime",
    "why the sky is blue",
    "cooking rice without a rice cooker",
    "the difference between TCP and UDP",
    "a polite reply to a late invoice",
    "this week's sales numbers for the Berlin store",
    "the plot of Hamlet",
    "a SQL query for monthly active users",
    "training for a first marathon",
    "choosing a name for a coffee shop",
    "what changed in the last release",
)
_CITIES: Final = ("Lisbon", "Osaka", "Nairobi", "Toronto", "Berlin", "Lima", "Perth")
_SYSTEM: Final = "You are the helpful assistant of a small online shop."

_TOOLS: Final[list[ChatCompletionFunctionToolParam]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_orders",
            "description": "A customer's most recent orders.",
            "parameters": {
                "type": "object",
                "properties": {
                    "customer_id": {"type": "string"},
                    "limit": {"type": "integer", "minimum": 1},
                },
                "required": ["customer_id"],
            },
        },
    },
]


@dataclass(frozen=True, slots=True)
class Call:
    """One request the app will make."""

    kind: Kind
    prompt: str
    user: str
    stream: bool  # tools: stream the tool call; stream: ask for usage
    named_tool: bool  # tools: force `search_orders` rather than let the model pick


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the app saw: who served it (the `x-sidecar-upstream` header) and any error."""

    kind: Kind
    upstream: str  # "?" when the answer named none (the sidecar unreachable, say)
    error: str | None


def plan(n: int, seed: int) -> list[Call]:
    """A realistic, reproducible mix: plain and streamed chat, tool calls, JSON mode, embeddings."""
    rng = random.Random(seed)
    calls = []
    deck: list[Kind] = []
    for i in range(n):
        if not deck:  # dealt from a shuffled deck, so every 100 calls hold the mix exactly
            deck = [kind for kind, w in zip(_KINDS, _KIND_WEIGHTS, strict=True) for _ in range(w)]
            rng.shuffle(deck)
        kind = deck.pop()
        user = f"user-{rng.randrange(1, 41):03d}"
        named = rng.random() < 0.4
        if kind == "tools":
            prompt = (
                f"Show the last orders of customer C-{rng.randrange(1000, 9999)}"
                if named
                else f"What's the weather in {rng.choice(_CITIES)} right now?"
            )
        elif kind == "json":
            prompt = f"As JSON: {rng.choice(_ASKS).lower()} {rng.choice(_TOPICS)} (ticket {i})"
        else:
            prompt = f"{rng.choice(_ASKS)} {rng.choice(_TOPICS)} (ticket {i})"
        calls.append(Call(kind, prompt, user, rng.random() < 0.5, named))
    return calls


def _messages(call: Call) -> list[ChatCompletionMessageParam]:
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": call.prompt}]


class _RawResponse(Protocol):
    """What the SDK's `with_raw_response` gives back, whichever overload of `create` answered."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    def parse(self) -> object: ...


def _served_by(headers: Mapping[str, str]) -> str:
    return headers.get("x-sidecar-upstream", "?")


async def send(client: openai.AsyncOpenAI, call: Call) -> Outcome:
    """One request as an app makes it; the SDK's errors are outcomes, not failures of the demo."""
    upstream = "?"
    try:
        if call.kind == "embeddings":
            text = call.prompt
            raw_e = await client.embeddings.with_raw_response.create(
                model=EMBEDDING_MODEL,
                input=[text, text.upper()] if call.stream else text,
                user=call.user,
            )
            upstream = _served_by(raw_e.headers)
            raw_e.parse()
            return Outcome(call.kind, upstream, None)
        chat = client.chat.completions.with_raw_response
        raw: _RawResponse
        if call.kind == "chat":
            raw = await chat.create(
                model=CHAT_MODEL, messages=_messages(call), user=call.user, temperature=0.3
            )
        elif call.kind == "json":
            raw = await chat.create(
                model=CHAT_MODEL,
                messages=_messages(call),
                user=call.user,
                response_format={"type": "json_object"},
            )
        elif call.kind == "stream":
            raw = await chat.create(
                model=CHAT_MODEL,
                messages=_messages(call),
                user=call.user,
                stream=True,
                stream_options={"include_usage": call.stream},
            )
        else:
            choice: ChatCompletionToolChoiceOptionParam = (
                {"type": "function", "function": {"name": "search_orders"}}
                if call.named_tool
                else "auto"
            )
            raw = await chat.create(
                model=CHAT_MODEL,
                messages=_messages(call),
                user=call.user,
                tools=_TOOLS,
                tool_choice=choice,
                stream=call.stream,
            )
        upstream = _served_by(raw.headers)
        parsed = raw.parse()
        if isinstance(parsed, openai.AsyncStream):
            async with parsed as chunks:
                async for _ in chunks:
                    pass
        return Outcome(call.kind, upstream, None)
    except openai.APIStatusError as e:
        return Outcome(call.kind, _served_by(e.response.headers), f"HTTP {e.status_code}")
    except openai.APIError as e:
        # Connection failures, and errors that arrive inside a stream after it started.
        return Outcome(call.kind, upstream, type(e).__name__)


class Traffic:
    """Sends calls with a fixed number of concurrent workers, like a small app would."""

    def __init__(self, client: openai.AsyncOpenAI, concurrency: int) -> None:
        self.client = client
        self.concurrency = concurrency
        self.in_flight = 0

    async def run(self, calls: Sequence[Call], handed_out: asyncio.Event) -> list[Outcome]:
        """All outcomes; `handed_out` is set once the last call has started."""
        outcomes: list[Outcome] = []
        pending = iter(calls)

        async def worker() -> None:
            for call in pending:
                self.in_flight += 1
                try:
                    outcomes.append(await send(self.client, call))
                finally:
                    self.in_flight -= 1
            handed_out.set()

        await _all([worker() for _ in range(self.concurrency)])
        handed_out.set()
        return outcomes


async def _all(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run together, owned by a task group; the first failure cancels the rest and is re-raised
    as itself, so callers see a `DemoError` rather than a group."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(c) for c in coros]
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return [t.result() for t in tasks]


async def _both(a: Coroutine[Any, Any, T], b: Coroutine[Any, Any, U]) -> tuple[T, U]:
    """`_all` for two coroutines of different types."""
    try:
        async with asyncio.TaskGroup() as tg:
            ta, tb = tg.create_task(a), tg.create_task(b)
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return ta.result(), tb.result()


# --- the operator's side: health, stats, the rollback switch ------------------------------------


@dataclass(frozen=True, slots=True)
class Health:
    """The parts of `GET /_proxy/health` the story tells."""

    revision: str
    rollback: bool
    split: str  # "old 90% / new 10%"
    reload_error: str | None


@dataclass(frozen=True, slots=True)
class Counts:
    """The parts of `GET /_proxy/stats` the story tells; counters since the sidecar started."""

    shadow_sent: int  # shadow and noise copies
    shadow_failed: int
    records_written: int
    records_dropped: int


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        if resp.status != 200:
            raise DemoError(f"GET {url} answered {resp.status}: {(await resp.text())[:200]}")
        return orjson.loads(await resp.read())


async def health(session: aiohttp.ClientSession, admin: str) -> Health:
    h = await _get(session, f"{admin}/_proxy/health")
    split = " / ".join(f"{name} {share:.0%}" for name, share in h["split"].items())
    err = h.get("last_reload_error")
    return Health(h["revision"], bool(h["rollback"]), split, err["message"] if err else None)


async def counts(session: aiohttp.ClientSession, admin: str) -> Counts:
    s = await _get(session, f"{admin}/_proxy/stats")
    records = s.get("records") or {}
    return Counts(
        shadow_sent=int(s["shadow"]["sent"]),
        shadow_failed=int(s["shadow"]["failed"]),
        records_written=int(records.get("written", 0)),
        records_dropped=int(records.get("dropped", 0)),
    )


def set_rollback(path: Path) -> float:
    """Flip the switch the way an editor saves: new text to a temp file, then rename over.
    Returns the moment of the rename (`time.perf_counter`)."""
    text = path.read_text()
    flipped, n = _ROLLBACK_LINE.subn("rollback: true", text, count=1)
    if n != 1:
        raise DemoError(f"no line `rollback: false` in {path} to flip")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(flipped)
    os.replace(tmp, path)
    return time.perf_counter()


@dataclass(frozen=True, slots=True)
class Flip:
    """The rollback as the operator saw it."""

    seconds: float  # from the rename until /_proxy/health showed the new revision
    in_flight: int  # requests running at the moment of the write
    health: Health


async def flip_when(
    handed_out: asyncio.Event,
    traffic: Traffic,
    session: aiohttp.ClientSession,
    admin: str,
    config_path: Path,
    before: Health,
) -> Flip:
    """Once the canary's last request has started, roll back and wait until the sidecar says so."""
    await handed_out.wait()
    in_flight = traffic.in_flight
    written = await asyncio.to_thread(set_rollback, config_path)
    while True:
        h = await health(session, admin)
        if h.revision != before.revision and h.rollback:
            return Flip(time.perf_counter() - written, in_flight, h)
        if h.reload_error:
            raise DemoError(f"the sidecar refused the edited config: {h.reload_error}")
        if time.perf_counter() - written > RELOAD_TIMEOUT:
            raise DemoError(f"the sidecar did not apply rollback within {RELOAD_TIMEOUT:g} s")
        await asyncio.sleep(0.02)


# --- the story ----------------------------------------------------------------------------------


def _served(outcomes: Sequence[Outcome]) -> str:
    by = Counter(o.upstream for o in outcomes)
    return ", ".join(
        f"{name} {by[name]}" for name in ("old", "new", *sorted(set(by) - {"old", "new"}))
    )


def _errors(outcomes: Sequence[Outcome]) -> str:
    errs = Counter(f"{o.upstream}: {o.error}" for o in outcomes if o.error)
    if not errs:
        return "no errors"
    listed = ", ".join(f"{n} x {what}" for what, n in sorted(errs.items()))
    return f"{sum(errs.values())} error(s) reached the app ({listed})"


def _kinds(outcomes: Sequence[Outcome]) -> str:
    by = Counter(o.kind for o in outcomes)
    return ", ".join(f"{by[k]} {k}" for k in _KINDS if by[k])


async def scenario(sidecar_url: str, config_path: Path, calls: list[Call]) -> list[str]:
    """The app's traffic and the operator's rollback, told as it happens; returns the problems
    seen (a product bug, not bad luck: the demo then exits non-zero)."""
    admin = sidecar_url.removesuffix("/v1")
    half = len(calls) // 2
    problems: list[str] = []
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        openai.AsyncOpenAI(
            base_url=sidecar_url, api_key=APP_KEY, max_retries=0, timeout=30
        ) as client,
    ):
        first = await health(session, admin)
        traffic = Traffic(client, CONCURRENCY)

        _say(
            f"\nPhase 1, canary (split {first.split}, every old request shadowed to new): "
            f"{half} requests, {CONCURRENCY} at a time"
        )
        handed_out = asyncio.Event()
        canary, flip = await _both(
            traffic.run(calls[:half], handed_out),
            flip_when(handed_out, traffic, session, admin, config_path, first),
        )
        after_canary = await counts(session, admin)
        _say(f"  sent {_kinds(canary)}")
        _say(f"  served by {_served(canary)}; {_errors(canary)}")
        _say(
            f"  shadow and noise copies sent: {after_canary.shadow_sent}, of which "
            f"{after_canary.shadow_failed} failed (recorded for the report, never seen by the app)"
        )

        _say(
            f"\nRollback: wrote `rollback: true` into {config_path.name} "
            f"with {flip.in_flight} request(s) in flight"
        )
        _say(
            f"  /_proxy/health showed revision {flip.health.revision} (rollback, split "
            f"{flip.health.split}) {flip.seconds:.2f} s after the write"
        )

        rest = len(calls) - half
        _say(f"\nPhase 2, rolled back: {rest} requests")
        back = await traffic.run(calls[half:], asyncio.Event())
        after = await counts(session, admin)
        _say(f"  served by {_served(back)}; {_errors(back)}")
        copies = after.shadow_sent - after_canary.shadow_sent
        _say(f"  shadow and noise copies sent: {copies} (shadowing pauses while rolled back)")
        strays = [o for o in back if o.upstream != "old"]
        if strays:
            problems.append(f"{len(strays)} request(s) after the rollback were not served by old")
        else:
            _say("  every request after the flip went to old")
        if after.records_dropped:
            problems.append(f"the sidecar dropped {after.records_dropped} record(s)")
    return problems


async def _watching(children: Sequence[Child], coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro`, failing at once, with the culprit's last words, if a child process exits."""
    work = asyncio.ensure_future(coro)
    exits = [asyncio.ensure_future(c.proc.wait()) for c in children]
    try:
        await asyncio.wait([work, *exits], return_when=asyncio.FIRST_COMPLETED)
        for child in children:
            if not child.running:
                raise DemoError(await child.died())
        return work.result()
    finally:
        for task in (work, *exits):
            task.cancel()
        await asyncio.gather(work, *exits, return_exceptions=True)


_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def live(workdir: Path, calls: list[Call], seed: int, caught: list[int]) -> list[str]:
    """Start everything, run the story, stop everything (whatever happens) in reverse order.

    SIGINT, SIGTERM and SIGHUP cancel the story (a second one cuts the cleanup short to SIGKILL);
    `caught` gets the signal's number."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def interrupted(signum: int) -> None:
        caught.append(signum)
        if task is not None:
            task.cancel()

    for signum in _STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError):  # Windows has no loop signal handlers
            loop.add_signal_handler(signum, interrupted, signum)
    logs = workdir / "logs"
    await asyncio.to_thread(logs.mkdir, exist_ok=True)
    config_path = workdir / "config.yaml"
    children: list[Child] = []
    try:
        _say("Starting")
        for spec in (OLD, NEW):
            children.append(
                await Child.spawn(
                    f"{spec.name} provider", spec.args(seed), logs / f"{spec.name}.log"
                )
            )
        urls = []
        for spec, child in zip((OLD, NEW), children, strict=True):
            urls.append(await child.ready(_FAKE_URL))
            _say(f"  {spec.name} provider  {urls[-1]}  pid {child.proc.pid}  {spec.about()}")
        old_url, new_url = urls
        text = demo_config(old_url, new_url, str(workdir / "sidecar.db"))
        await asyncio.to_thread(config_path.write_text, text)
        sidecar = await Child.spawn(
            "sidecar", ["serve", "--config", str(config_path)], logs / "sidecar.log"
        )
        children.append(sidecar)
        sidecar_url = await sidecar.ready(_SIDECAR_URL)
        _say(f"  sidecar       {sidecar_url}  pid {sidecar.proc.pid}  config {config_path}")

        problems = await _watching(children, scenario(sidecar_url, config_path, calls))

        _say(
            "\nStopping: SIGTERM to the sidecar (it drains and flushes its records), then the providers"
        )
        for child in reversed(children):
            code = await child.stop()
            if code != 0:
                raise DemoError(f"the {child.name} stopped with code {code}" + await child.tail())
        _say("  all stopped: pids " + ", ".join(str(c.proc.pid) for c in children))
        return problems
    finally:
        try:
            for child in reversed(children):
                await child.stop()
        finally:
            for child in children:
                child.kill()
            for signum in _STOP_SIGNALS:
                with contextlib.suppress(NotImplementedError):
                    loop.remove_signal_handler(signum)


# --- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m proxy demo",
        description=(
            "The whole product on local fakes, in under a minute: two fake providers, the sidecar "
            "splitting 90/10 and shadowing, a few hundred requests through the openai SDK, "
            "a rollback halfway, then the report. No keys, no internet, 127.0.0.1 only."
        ),
    )
    p.add_argument(
        "--requests", type=int, default=None, help=f"requests to send (default {DEFAULT_REQUESTS})"
    )
    p.add_argument(
        "--quick", action="store_true", help=f"{QUICK_REQUESTS} requests, for tests and a peek"
    )
    p.add_argument(
        "--dir", help="work dir for config, database, logs and report (default: a new temp dir)"
    )
    p.add_argument("--seed", type=int, default=3, help="seed for the traffic and the fakes")
    return p


def _workdir(arg: str | None) -> Path:
    if arg is None:
        return Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    path = Path(arg).resolve()
    path.mkdir(parents=True, exist_ok=True)
    if (path / "sidecar.db").exists():
        raise DemoError(
            f"{path} already holds a sidecar.db from an earlier run; "
            "choose another --dir or delete it, so the report shows this run only"
        )
    return path


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    n = args.requests
    if n is None:
        n = QUICK_REQUESTS if args.quick else DEFAULT_REQUESTS
    if n < 10:
        print("error: --requests must be at least 10", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        workdir = _workdir(args.dir)
    except (DemoError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _say(
        f"llm-sidecar demo: {n} requests from the openai SDK through the sidecar to two local "
        "fake providers.\n"
        f"Work dir (kept): {workdir}"
    )
    caught: list[int] = []
    try:
        with asyncio.Runner() as runner:
            problems = runner.run(live(workdir, plan(n, args.seed), args.seed, caught))
    except DemoError as e:
        print(
            f"\ndemo failed: {e}\n(every process the demo started is stopped; "
            f"work dir kept: {workdir})",
            file=sys.stderr,
        )
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        name = signal.Signals(caught[0]).name if caught else "interrupt"
        print(
            f"\nstopped by {name}; every process the demo started is stopped too. "
            f"Work dir: {workdir}",
            file=sys.stderr,
        )
        return 128 + (caught[0] if caught else signal.SIGINT)

    config_path = workdir / "config.yaml"
    db = workdir / "sidecar.db"
    html = workdir / "report.html"
    try:
        cfg, _ = config_mod.load(str(config_path))
        flt = ReportFilter(since=None, until=None, route=None, model=None, revision=None)
        rep = build_report(str(db), flt, cfg.report)
        _say("\n" + render_text(rep))
        write_html(rep, str(html))
    except (ConfigError, StoreError, OSError) as e:
        print(f"\ndemo failed while building the report: {e}", file=sys.stderr)
        return 1
    _say(f"\nHTML report: {html}")
    _say(f"Database:    {db}")
    _say(f"Again:       python -m proxy report --db {db} --config {config_path}")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    _say(f"Done in {time.perf_counter() - t0:.1f} s.")
    return 1 if problems else 0
