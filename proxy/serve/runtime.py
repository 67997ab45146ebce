"""The config in force: a compiled `Runtime` behind one reference that a reload swaps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
import structlog

from proxy.config import Config, RecordConfig
from proxy.record.rows import Reading, Revision
from proxy.serve.router import Table, build_table
from proxy.serve.upstream import UpstreamClient

log = structlog.get_logger("proxy.runtime")


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything the request path reads, built once per config revision."""

    config: Config
    revision: str
    path: str
    loaded_at: float
    table: Table
    upstreams: Mapping[str, UpstreamClient]
    max_body: int
    body_timeout: float
    record: RecordConfig
    log_requests: bool
    # Whether anything reads a request's JSON (model, stream, sticky field): routes by model,
    # model maps, a body sticky key, shadowing, recording or the request log. If not, the
    # body is forwarded without being parsed.
    inspect_bodies: bool
    # How much of an answer is read (see `rows.Reading`): all when recorded; the counts when
    # metrics, OpenTelemetry, the guard or a token/dollar quota watch it; else none.
    reading: Reading
    keys: tuple[bytes, ...]  # the app's keys (`listen.keys`); empty: calls need none

    def effective_split(self) -> dict[str, float]:
        return self.table.routes[-1].split.shares()

    def revision_record(self) -> Revision:
        return Revision(
            revision=self.revision,
            ts=self.loaded_at,
            rollback=self.config.rollback,
            split=orjson.dumps(self.effective_split()).decode(),
            path=self.path,
        )


class Live:
    """Holds the current `Runtime`; `apply` swaps it and hands old upstream pools their exit.

    Requests read `live.current` once, at arrival, so a swap never changes a request's
    upstream halfway through: in-flight requests finish where they started.
    """

    def __init__(self, cfg: Config, digest: str, path: str) -> None:
        self._counter = 0
        self._closing: set[asyncio.Task[None]] = set()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.reloads = 0
        self.current = self._build(cfg, digest, path, {})

    def _build(
        self, cfg: Config, digest: str, path: str, old: Mapping[str, UpstreamClient]
    ) -> Runtime:
        self._counter += 1
        upstreams: dict[str, UpstreamClient] = {}
        for name, ucfg in cfg.upstreams.items():
            prev = old.get(name)
            # Same settings, same pool: connections survive the reload.
            upstreams[name] = (
                prev if prev is not None and prev.cfg == ucfg else UpstreamClient(name, ucfg)
            )
        table = build_table(cfg)
        counted = (
            cfg.metrics.enabled
            or cfg.otel is not None
            or cfg.guard is not None
            or any(
                u.quota is not None and (u.quota.tokens_per_minute or u.quota.usd_per_day)
                for u in cfg.upstreams.values()
            )
        )
        reading: Reading = "all" if cfg.record.enabled else "counts" if counted else "none"
        # Metrics and OpenTelemetry read answers, not requests: a call's model is labelled
        # only where something else reads the body anyway (parsing it costs more than both).
        inspect = (
            cfg.record.enabled
            or cfg.log.requests
            or any(r.model is not None or r.shadow is not None for r in table.routes)
            or (table.sticky is not None and table.sticky.body_field is not None)
            or any(u.models for u in upstreams.values())
        )
        return Runtime(
            config=cfg,
            revision=f"{self._counter}-{digest}",
            path=path,
            loaded_at=time.time(),
            table=table,
            upstreams=upstreams,
            max_body=cfg.limits.max_body_bytes,
            body_timeout=cfg.limits.body_timeout,
            record=cfg.record,
            log_requests=cfg.log.requests,
            inspect_bodies=inspect,
            reading=reading,
            keys=tuple(k.get_secret_value().encode() for k in cfg.listen.keys),
        )

    def apply(self, cfg: Config, digest: str, path: str) -> Runtime:
        old = self.current
        new = self._build(cfg, digest, path, old.upstreams)
        self.current = new
        self.reloads += 1
        self.last_error = None
        kept = {id(c) for c in new.upstreams.values()}
        grace = cfg.limits.shutdown_grace
        for client in old.upstreams.values():
            if id(client) not in kept:
                task = asyncio.get_running_loop().create_task(client.close(grace))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        return new

    def refuse(self, reason: str) -> None:
        self.last_error = reason
        self.last_error_at = time.time()

    async def close(self) -> None:
        for client in self.current.upstreams.values():
            await client.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
