"""A smoke run: the checklist planned for one upstream (which checks call, which are skipped and
why), then sent one call at a time through `serve.originate`, as an app's calls would be: the
upstream's key, model map, adapter, deadlines and error kinds.

Calls go one at a time so that no check's timing includes another's.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from proxy.adapters.anthropic import VERSION as ANTHROPIC_VERSION
from proxy.config import SmokeSettings, UpstreamConfig
from proxy.errors import BadRequest, NotImplementedHere
from proxy.serve.originate import attempt, send
from proxy.serve.plan import Attempt
from proxy.serve.upstream import REDACTED, UpstreamClient
from proxy.smoke import checks
from proxy.smoke.checks import CHECKS, LATENCY, Evidence, Expect, Failed, Kind, Reply, Row, Spec

# Words in a model id that say what it is for, when nothing else says (`--model ID` alone).
_EMBEDDING_WORDS = ("embed", "bge-", "e5-")
_IMAGE_WORDS = ("dall-e", "image", "flux", "sdxl", "stable-diffusion", "imagen")


def kind_of(model: str) -> Kind:
    """The check kind a bare model id is most likely for."""
    low = model.lower()
    if any(w in low for w in _EMBEDDING_WORDS):
        return "embeddings"
    if any(w in low for w in _IMAGE_WORDS):
        return "images"
    return "chat"


@dataclass(frozen=True, slots=True)
class Target:
    """The upstream under test, and what its checks use."""

    name: str
    cfg: UpstreamConfig
    models: Mapping[Kind, str]  # app ids, one per kind named
    settings: SmokeSettings = field(default_factory=SmokeSettings)

    @property
    def shown_url(self) -> str:
        """The base URL without any credentials in it."""
        parts = urlsplit(self.cfg.base_url)
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def sent(self, kind: Kind | None) -> str | None:
        """The id an app's call of this kind sends the upstream, after its `models:` map."""
        model = self.models.get(kind) if kind is not None else None
        return None if model is None else self.cfg.models.get(model, model)

    def listed(self) -> tuple[str, ...]:
        """Ids the model list must include: those the config maps to, else those named."""
        ids = set(self.cfg.models.values()) or {m for k in self.models if (m := self.sent(k))}
        return tuple(sorted(ids))


def models_for(
    cfg: UpstreamConfig, settings: SmokeSettings, named: Collection[str]
) -> dict[Kind, str]:
    """The model of each kind: `--model [KIND=]ID`, then `smoke.models`, then the upstream's
    `models:` map (its first chat, embedding and image ids, by name)."""
    chosen: dict[Kind, str] = {}
    for spec in named:
        kind, eq, model = spec.partition("=")
        if eq and kind in checks.KINDS:
            chosen[kind] = model
        else:
            chosen.setdefault(kind_of(spec), spec)
    for kind, model in settings.models.items():
        chosen.setdefault(kind, model)
    for model in cfg.models:
        chosen.setdefault(kind_of(model), model)
    return chosen


@dataclass(frozen=True, slots=True)
class Planned:
    spec: Spec | None  # None: the latency row
    attempt: Attempt | None  # None: not sent
    skip: str | None = None  # why it is skipped
    refused: str | None = None  # why it fails unsent: the app's call would be refused too


@dataclass(slots=True)
class Plan:
    target: Target
    client: UpstreamClient
    wrong: UpstreamClient  # the same upstream with a wrong key
    wrong_key: str
    rows: list[Planned]

    @property
    def calls(self) -> int:
        return sum(p.attempt is not None for p in self.rows)

    async def close(self) -> None:
        await self.client.close()
        await self.wrong.close()


def _attempt(spec: Spec, up: UpstreamClient, model: str | None) -> Attempt:
    at = attempt(up, spec.method, spec.tail, spec.body(model or ""))
    if spec.method == "GET":  # a GET carries no body, nor its type
        headers = at.headers.copy()
        headers.popall("content-type", None)
        if up.api == "anthropic":  # its SDK's own call, which names the API version
            headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
        at = at._replace(body=b"", headers=headers)
    return at


def _planned(spec: Spec, target: Target, up: UpstreamClient, only: Collection[str]) -> Planned:
    if only and spec.name not in only:
        return Planned(spec, None, "not asked for (--only)")
    if spec.name in target.settings.skip:
        return Planned(
            spec, None, f"skipped for this upstream (upstreams.{target.name}.smoke.skip)"
        )
    model = target.models.get(spec.kind) if spec.kind is not None else None
    if spec.kind is not None and model is None:
        return Planned(spec, None, f"no {spec.kind} model named (--model {spec.kind}=ID)")
    try:
        return Planned(spec, _attempt(spec, up, model), None)
    except NotImplementedHere as e:  # the provider's shape has no such call at all
        return Planned(spec, None, e.message)
    except BadRequest as e:  # the adapter cannot say it: the app's call would fail too
        return Planned(spec, None, refused=e.message)


def plan(target: Target, only: Collection[str] = ()) -> Plan:
    """What the run will send. Opens no connection yet; `Plan.close` releases the clients."""
    client = UpstreamClient(target.name, target.cfg)
    wrong_key = "sk-smoke-wrong-" + secrets.token_hex(16)
    wrong = UpstreamClient(
        target.name, target.cfg.model_copy(update={"api_key": SecretStr(wrong_key)})
    )
    rows = []
    for spec in CHECKS:
        rows.append(_planned(spec, target, wrong if spec.name == "wrong_key" else client, only))
    skip_latency = (
        "not asked for (--only)"
        if only and LATENCY not in only
        else f"skipped for this upstream (upstreams.{target.name}.smoke.skip)"
        if LATENCY in target.settings.skip
        else None
    )
    rows.append(Planned(None, None, skip_latency))
    return Plan(target, client, wrong, wrong_key, rows)


async def _call(p: Planned, expect: Expect, plan_: Plan) -> tuple[Row, Reply | None]:
    spec = p.spec
    if spec is None:  # the latency row is made by `run`
        raise ValueError("the latency row makes no call")
    if p.attempt is None:
        if p.refused is not None:
            return Row(spec.name, "fail", p.refused), None
        return Row(spec.name, "skip", p.skip or "skipped"), None
    answer = await send(p.attempt)
    m = answer.meter
    reply = Reply(
        answer.status, answer.body, answer.error, m.tally is not None, m.ttft_ms, m.total_ms
    )
    grade = spec.grade or checks.wrong_key_check(plan_.wrong_key, REDACTED)
    try:
        said = grade(reply, expect)
    except Failed as f:
        evidence = Evidence(reply.status, f.field, f.excerpt)
        return Row(spec.name, "fail", f.reason, evidence, m.total_ms), reply
    return Row(spec.name, "pass", said, Evidence(reply.status), m.total_ms), reply


async def run(p: Plan) -> list[Row]:
    """Every planned row, in the checklist's order; never raises for an upstream's failure."""
    t = p.target
    rows: list[Row] = []
    replies: dict[str, Reply] = {}
    for planned in p.rows:
        if planned.spec is None:
            if planned.skip:
                rows.append(Row(LATENCY, "skip", planned.skip))
                continue
            s = t.settings
            rows.append(
                checks.latency(
                    replies.get("chat"), replies.get("stream"), s.max_ttft_ms, s.max_total_ms
                )
            )
            continue
        expect = Expect(t.sent(planned.spec.kind), t.listed(), t.settings.embedding_dims)
        row, reply = await _call(planned, expect, p)
        rows.append(row)
        if reply is not None:
            replies[planned.spec.name] = reply
    return rows
