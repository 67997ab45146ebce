"""YAML to a validated, immutable `Config`; every refusal names the file, the key path and why."""

from __future__ import annotations

import hashlib
import os
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from proxy.adapters.registry import Api, serves_path
from proxy.errors import ConfigError
from proxy.report.thresholds import ReportSettings


class _Strict(BaseModel):
    # `.inf` and `.nan` are YAML floats: a weight of .inf made every share NaN, and an infinite
    # timeout is no timeout. Both are refused as "Input should be a finite number".
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Weight = Annotated[float, Field(ge=0)]
Seconds = Annotated[float, Field(gt=0)]


class Listen(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    # The app's keys: when set, a call must carry one (its bearer token, or `x-api-key` /
    # `api-key`) or it gets a 401. Applies on reload, unlike host and port.
    keys: list[SecretStr] = []

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: list[SecretStr]) -> list[SecretStr]:
        if any(len(k.get_secret_value()) < 16 for k in v):
            raise ValueError(
                "each key must be at least 16 characters (a guessable key guards nothing)"
            )
        return v


class Quota(_Strict):
    """Per upstream; a served call that would pass one goes to the route's primary instead,
    a shadow copy is skipped."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    usd_per_day: float | None = Field(default=None, gt=0)  # costs from report.pricing


class Timeouts(_Strict):
    connect: Seconds = 10.0
    # Non-streaming LLM calls send headers only when the whole answer is ready.
    first_byte: Seconds = 300.0
    # Between two chunks of a stream.
    idle: Seconds = 120.0


class Pool(_Strict):
    size: int = Field(default=256, ge=1)  # open connections to this upstream at most
    keepalive: Seconds = 30.0


class UpstreamConfig(_Strict):
    base_url: str
    # The provider's API shape (see proxy/adapters): calls it does not speak are translated.
    api: Api = "openai"
    api_key: SecretStr | None = None
    # Header the key goes in; "authorization" sends "Bearer <key>", any other sends the bare key.
    # Unset: "authorization", or "x-api-key" for `api: anthropic`.
    auth_header: str | None = None
    models: dict[str, str] = {}
    headers: dict[str, str] = {}
    timeouts: Timeouts = Timeouts()
    pool: Pool = Pool()
    # Ask streams for usage (stream_options.include_usage) and strip the extra chunk again.
    inject_usage: bool = True
    # "env": HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY, as curl reads them (a loopback
    # host never goes through one); "none": always direct; or an http:// proxy URL.
    proxy: str = "env"
    quota: Quota | None = None
    smoke: SmokeSettings | None = None  # `python -m proxy smoke` (see docs/smoke.md)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query string or fragment")
        return v.rstrip("/")

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str) -> str:
        if v in ("env", "none"):
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError('must be "env", "none" or an http:// proxy URL with a host')
        return v

    @field_validator("auth_header")
    @classmethod
    def _lower(cls, v: str | None) -> str | None:
        return None if v is None else v.lower()

    @property
    def key_header(self) -> str:
        if self.auth_header is not None:
            return self.auth_header
        return "x-api-key" if self.api == "anthropic" else "authorization"


class Sticky(_Strict):
    """Where the sticky key comes from; the header wins when both are present."""

    header: str | None = None
    body_field: str | None = None

    @model_validator(mode="after")
    def _some(self) -> Sticky:
        if not self.header and not self.body_field:
            raise ValueError("set `header`, `body_field` or both")
        return self


class ShadowConfig(_Strict):
    upstream: str
    sample: float = Field(default=1.0, ge=0, le=1)
    streams: bool = True  # shadow streaming requests too (as streams)
    max_in_flight: int = Field(default=32, ge=1)
    during_rollback: bool = False
    # Share of the requests the primary served that it is sent a second time, to measure how
    # much its answers vary on their own (the noise floor the report subtracts).
    noise_sample: float = Field(default=0.0, ge=0, le=1)
    # Copies sent a minute at most, whatever the sample says: a free tier's rate limit is
    # for the app's calls, not for measuring.
    requests_per_minute: int | None = Field(default=None, ge=1)


FailureKind = Literal["connect", "timeout", "5xx", "429"]


class Failover(_Strict):
    """A call whose upstream fails before the app has a byte goes once to `to`."""

    to: str = "primary"  # "primary" (the route's) or an upstream name
    # Which failures move a call. Not `on:`: YAML reads that key as the boolean true.
    when: list[FailureKind] = ["connect", "timeout", "5xx", "429"]

    @field_validator("when", mode="before")
    @classmethod
    def _statuses(cls, v: Any) -> Any:
        # `[5xx, 429]` in YAML: 429 arrives as a number.
        return [str(x) if isinstance(x, int) else x for x in v] if isinstance(v, list) else v


class Guard(_Strict):
    """Automatic rollback of a failing canary: over the last `window` seconds, once an
    upstream other than the primary has served `min_requests`, it trips when its error rate
    or its time to first token is beyond the line on the evidence (see `serve/guard.py`)."""

    error_rate: float | None = Field(default=0.05, gt=0, lt=1)
    ttft_p90_ms: float | None = Field(default=None, gt=0)
    min_requests: int = Field(default=50, ge=1)
    window: Seconds = 120.0


class RouteConfig(_Strict):
    # "/v1/embeddings" matches it and everything below it. A path outside /v1/ (Gemini's
    # "/v1beta") is accepted only under such a route, and sent to the upstream's origin.
    path: str
    model: str | None = None  # glob on the requested model, e.g. "gpt-4o*"
    name: str | None = None
    # Where `rollback: true` sends this route (default: the top-level `primary`); also the
    # route's whole split when it has no `split`, and the upstream its noise copies go to.
    primary: str | None = None
    split: dict[str, Weight] | None = None
    shadow: ShadowConfig | Literal[False] | None = None  # None inherits; false turns it off

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with /")
        return v.rstrip("/") or "/"


BodyPolicy = Literal["full", "hash", "none"]


class Bodies(_Strict):
    request: BodyPolicy = "full"
    response: BodyPolicy = "full"


class RecordConfig(_Strict):
    enabled: bool = True
    path: str = "./sidecar.db"
    bodies: Bodies = Bodies()
    queue_size: int = Field(default=10_000, ge=1)
    batch_size: int = Field(default=256, ge=1)
    max_age_days: float | None = Field(default=None, gt=0)
    max_rows: int | None = Field(default=None, ge=1)
    # Bytes of pages in use plus the WAL (see record/retention.py): 2147483648, 500MB, 2GiB.
    max_size: int | None = None

    @field_validator("max_size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if v is None:
            return v
        why = "must be a number of bytes or a size with a unit, like 500MB or 2GiB"
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise ValueError(why)
        try:
            size = int(_BYTE_SIZE.validate_python(v))  # KB is 1000 bytes, KiB 1024
        except ValidationError:
            raise ValueError(why) from None
        if size < 1 << 20:
            raise ValueError("must be at least 1MiB: the recording's schema alone takes ~100 KB")
        return size


_BYTE_SIZE: TypeAdapter[ByteSize] = TypeAdapter(ByteSize)


class Limits(_Strict):
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    # Seconds a request body may go without a byte once its headers are in: an app that
    # stalls mid-body gets a 408 instead of holding a connection for ever.
    body_timeout: Seconds = 60.0
    # Seconds given to in-flight requests (and open streams) on SIGTERM.
    shutdown_grace: Seconds = 30.0
    shadow_grace: Seconds = 5.0


class Log(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    requests: bool = True  # one JSON line per request


class JudgeConfig(_Strict):
    """`python -m proxy judge`: which model grades the new gateway's answers against the old."""

    upstream: str  # any upstream under `upstreams` (it may be one of the two compared)
    model: str  # the judge model, as that upstream's `models:` map knows it
    sample: int = Field(default=200, ge=1)  # pairs judged at most per run
    budget_usd: float = Field(default=2.0, gt=0)  # a run estimated over this refuses to start


SmokeCheck = Literal[
    "chat", "stream", "tools", "json", "structured", "embeddings", "models", "responses",
    "responses_stream", "images", "wrong_model", "wrong_key", "latency",
]  # fmt: skip


class SmokeSettings(_Strict):
    """`python -m proxy smoke` against one upstream: the checks of features it does not claim,
    the models the checks use (app ids, mapped as an app's are), and what its timings must meet."""

    skip: list[SmokeCheck] = []
    models: dict[Literal["chat", "embeddings", "images"], str] = {}
    embedding_dims: int | None = Field(default=None, ge=1)
    max_ttft_ms: float | None = Field(default=None, gt=0)
    max_total_ms: float | None = Field(default=None, gt=0)


class Metrics(_Strict):
    """`GET /metrics` in the Prometheus text format (see `serve/metrics.py`)."""

    enabled: bool = False
    # Model ids outside this list (and the models: maps) are labelled "other": labels stay bounded.
    models: list[str] = []


class Otel(_Strict):
    """OpenTelemetry export of spans and metrics (the `otel` extra: pip install llm-sidecar[otel])."""

    endpoint: str = "http://127.0.0.1:4318"
    protocol: Literal["http/protobuf"] = "http/protobuf"
    service_name: str = "llm-sidecar"
    headers: dict[str, str] = {}


class Config(_Strict):
    listen: Listen = Listen()
    upstreams: dict[str, UpstreamConfig] = Field(min_length=1)
    primary: str
    split: dict[str, Weight] | None = None  # default: everything to the primary
    rollback: bool = False
    sticky: Sticky | None = None
    routes: list[RouteConfig] = []
    shadow: ShadowConfig | None = None
    record: RecordConfig = RecordConfig()
    limits: Limits = Limits()
    log: Log = Log()
    report: ReportSettings = ReportSettings()
    judge: JudgeConfig | None = None
    failover: Failover | None = None
    guard: Guard | None = None
    metrics: Metrics = Metrics()
    otel: Otel | None = None

    def default_split(self) -> dict[str, float]:
        return dict(self.split) if self.split else {self.primary: 100.0}


def _references(cfg: Config) -> list[tuple[str, str]]:
    """Checks across keys, which pydantic would report as one joined message."""
    problems: list[tuple[str, str]] = []
    names = cfg.upstreams
    if cfg.primary not in names:
        problems.append(("primary", f"{cfg.primary!r} is not one of upstreams {sorted(names)}"))
    _check_split(cfg.split, "split", names, problems)
    if cfg.failover and cfg.failover.to != "primary" and cfg.failover.to not in names:
        problems.append(
            (
                "failover.to",
                f"{cfg.failover.to!r} is not 'primary' nor one of upstreams {sorted(names)}",
            )
        )
    if cfg.judge and cfg.judge.upstream not in names:
        problems.append(
            ("judge.upstream", f"{cfg.judge.upstream!r} is not one of upstreams {sorted(names)}")
        )
    if cfg.shadow and cfg.shadow.upstream not in names:
        problems.append(("shadow.upstream", f"{cfg.shadow.upstream!r} is not an upstream"))
    for i, route in enumerate(cfg.routes):
        _check_split(route.split, f"routes.{i}.split", names, problems)
        if route.shadow and route.shadow.upstream not in names:
            problems.append(
                (f"routes.{i}.shadow.upstream", f"{route.shadow.upstream!r} is not an upstream")
            )
        if route.primary is not None and route.primary not in names:
            problems.append(
                (
                    f"routes.{i}.primary",
                    f"{route.primary!r} is not one of upstreams {sorted(names)}",
                )
            )
    if not problems:
        problems += _route_shapes(cfg)
    return problems


def _route_shapes(cfg: Config) -> list[tuple[str, str]]:
    """Every upstream a route with a path may send to can serve that path, the rollback
    target above all: a switch that should make things safe must not break a route."""
    problems: list[tuple[str, str]] = []
    for i, route in enumerate(cfg.routes):
        if route.path == "/":
            continue
        target = route.primary or cfg.primary
        uses: list[tuple[str, str]] = []
        weights = (
            route.split
            if route.split is not None
            else ({target: 1.0} if route.primary else cfg.default_split())
        )
        uses += [(f"split.{n}", n) for n, w in weights.items() if w > 0]
        shadow = cfg.shadow if route.shadow is None else (route.shadow or None)
        if shadow is not None:
            uses.append(("shadow.upstream", shadow.upstream))
        for key, name in uses:
            api = cfg.upstreams[name].api
            if not serves_path(api, route.path):
                problems.append(
                    (f"routes.{i}.{key}", f"{name!r} (api: {api}) cannot serve {route.path}")
                )
        api = cfg.upstreams[target].api
        if not serves_path(api, route.path):
            why = f"under rollback this route goes to {target!r} (api: {api}), which cannot serve {route.path}: give the route a `primary` that can"
            problems.append((f"routes.{i}", why))
    return problems


_EMBEDDING = re.compile(r"embed|bge|(^|[/-])e5|gte-", re.IGNORECASE)


def cautions(cfg: Config) -> list[str]:
    """What a valid config may still get wrong, as far as the config can tell: an embedding
    model the split or the shadow sends to different models (say `text-embedding-3-large`
    to `bge-large`), whose vectors may differ in dimension and cannot share one index."""
    out: list[str] = []
    routes = [(r.name or r.path, r.path, r.split, r.shadow) for r in cfg.routes]
    # A route for every embeddings call leaves none to the catch-alls after it.
    own = any(r.path == "/v1/embeddings" and r.model is None for r in cfg.routes)
    for name, path, split, shadow in [*routes, ("default", "/", cfg.split, cfg.shadow)]:
        if path not in ("/", "/v1", "/v1/embeddings") or (own and path != "/v1/embeddings"):
            continue
        weights = split if split is not None else cfg.default_split()
        names = {n for n, w in weights.items() if w > 0}
        copy = cfg.shadow if shadow is None else (shadow or None)
        if copy is not None:
            names.add(copy.upstream)
        asked = {m for n in names for m in cfg.upstreams[n].models if _EMBEDDING.search(m)}
        for model in sorted(asked):
            served = {n: cfg.upstreams[n].models.get(model, model) for n in sorted(names)}
            if len({m.rsplit("/", 1)[-1] for m in served.values()}) > 1:
                seen = ", ".join(f"{n}: {m}" for n, m in served.items())
                out.append(
                    f"route {name!r}: embeddings of {model} come from different models "
                    f"({seen}); their vectors may differ in dimension and cannot share an index"
                )
    return out


def _check_split(
    split: dict[str, float] | None, key: str, names: dict[str, Any], out: list[tuple[str, str]]
) -> None:
    if split is None:
        return
    for name in split:
        if name not in names:
            out.append((f"{key}.{name}", f"not one of upstreams {sorted(names)}"))
    if split and sum(split.values()) <= 0:
        out.append((key, "weights add up to 0: nothing could be served"))


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(
    node: Any, key: str, env: os._Environ[str] | dict[str, str], out: list[tuple[str, str]]
) -> Any:
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            value = env.get(m.group(1))
            if value is None:
                if m.group(2) is not None:
                    return m.group(2)
                out.append((key, f"environment variable {m.group(1)} is not set"))
                return ""
            return value

        return _ENV.sub(sub, node) if "${" in node else node
    if isinstance(node, dict):
        return {
            k: _interpolate(v, f"{key}.{k}" if key else str(k), env, out) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(v, f"{key}.{i}", env, out) for i, v in enumerate(node)]
    return node


_MERGE = "tag:yaml.org,2002:merge"


def _duplicates(node: yaml.Node, key: str, seen: set[int], out: list[tuple[str, str]]) -> None:
    """Keys given twice in one mapping. YAML keeps the last silently: `rollback: true` added at
    the top of a file that still says `rollback: false` below would change nothing."""
    if id(node) in seen:  # an alias: checked where its anchor is (and it may be recursive)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, str], int] = {}
        for k, v in node.value:
            if k.tag == _MERGE or not isinstance(k, yaml.ScalarNode):
                continue  # `<<: *base` is meant to be overridden; complex keys fail validation
            name = f"{key}.{k.value}" if key else str(k.value)
            line = k.start_mark.line + 1
            first = lines.get((k.tag, k.value))
            if first is None:
                lines[(k.tag, k.value)] = line
            else:
                at = f"lines {first} and {line}" if first != line else f"line {line}"
                why = f"given twice ({at}); YAML would silently keep the last one, so say it once"
                out.append((name, why))
            _duplicates(v, name, seen, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _duplicates(v, f"{key}.{i}", seen, out)


def _load_yaml(text: bytes, path: str) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problems: list[tuple[str, str]] = []
        _duplicates(node, "", set(), problems)
        if problems:
            raise ConfigError(path, problems)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse(text: bytes, path: str, env: dict[str, str] | None = None) -> Config:
    """Validate a config file's bytes; raises ConfigError listing every problem found."""
    raw = _mapping(text, path)
    problems: list[tuple[str, str]] = []
    raw = _interpolate(raw, "", os.environ if env is None else env, problems)
    if problems:
        raise ConfigError(path, problems)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(path, _problems(e)) from None
    problems = _references(cfg)
    if problems:
        raise ConfigError(path, problems)
    return cfg


def _problems(e: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    # include_input=False: values may be API keys; the reason and key path are enough.
    for err in e.errors(include_url=False, include_input=False):
        loc = ".".join([prefix, *map(str, err["loc"])] if prefix else map(str, err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append((loc, msg))
    return out


def load_for_report(path: str) -> tuple[ReportSettings, RecordConfig]:
    """Only what the report reads (`report`, `record`) from the sidecar's config file.

    The report runs where the sidecar's secrets may not be set (a shell, not the service),
    and needs neither the keys nor the upstreams, so the rest of the file is not checked.
    """
    raw = _mapping(_read(path), path)
    problems: list[tuple[str, str]] = []
    parts = {
        k: _interpolate(raw.get(k) or {}, k, os.environ, problems) for k in ("report", "record")
    }
    if problems:
        raise ConfigError(path, problems)
    try:
        report = ReportSettings.model_validate(parts["report"])
    except ValidationError as e:
        problems += _problems(e, "report")
    try:
        record = RecordConfig.model_validate(parts["record"])
    except ValidationError as e:
        problems += _problems(e, "record")
    if problems:
        raise ConfigError(path, problems)
    return report, record


def load(path: str) -> tuple[Config, bytes]:
    """Read and validate a file (blocking: call from a thread when a loop is running)."""
    text = _read(path)
    return parse(text, path), text


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(path, [("", f"cannot read: {e.strerror}")]) from None


def _mapping(text: bytes, path: str) -> dict[Any, Any]:
    """The file's top-level mapping, or ConfigError saying where the YAML broke."""
    try:
        raw = _load_yaml(text, path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(e, "problem", None) or str(e)
        raise ConfigError(path, [("", f"invalid YAML: {where}{reason}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            path, [("", "the file must hold a mapping of keys (upstreams, primary, ...)")]
        )
    return raw


def digest(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()[:8]
