"""Wiring: the sidecar's parts, its HTTP server, admin endpoints, reload, and orderly shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web

from proxy import config as config_mod
from proxy import logs
from proxy.config import Config, RecordConfig
from proxy.errors import ConfigError, ErrorAnswer
from proxy.record.schema import StoreError
from proxy.record.writer import Recorder, WriterSettings
from proxy.serve import admin, affinity
from proxy.serve.counters import Counters
from proxy.serve.metrics import Metrics
from proxy.serve.pipeline import Pipeline
from proxy.serve.protocol import Server
from proxy.serve.reload import ConfigWatcher
from proxy.serve.runtime import Live
from proxy.serve.shadow import Shadower

if TYPE_CHECKING:
    from proxy.serve.otel import Export

log = structlog.get_logger("proxy.app")


# Of `record`, these apply on reload; the rest names the database the recorder has open.
_RECORD_LIVE = {"enabled", "bodies"}


def _new_recorder(rec: RecordConfig) -> Recorder:
    settings = WriterSettings(
        queue_size=rec.queue_size,
        batch_size=rec.batch_size,
        max_age_days=rec.max_age_days,
        max_rows=rec.max_rows,
        max_size=rec.max_size,
        max_objects=affinity.MAX_IDS,
    )
    unbounded = rec.max_age_days is None and rec.max_rows is None and rec.max_size is None
    if unbounded and "full" in (rec.bodies.request, rec.bodies.response):
        # ~3.2 KB an exchange: issue 21's run of 435,140 real exchanges wrote 1.39 GB.
        log.warning(
            "recording grows without bound",
            path=rec.path,
            growth="about 3.2 KB an exchange with full bodies, 5.5 GB a day at 20 calls a second",
            fix="set record.max_size (e.g. 2GiB), record.max_age_days or record.max_rows",
        )
    return Recorder(rec.path, settings)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


class Sidecar:
    """One running sidecar. `start()` binds, `stop()` drains; usable in-process by tests."""

    def __init__(self, cfg: Config, text: bytes, path: str, *, watch: bool = True) -> None:
        self.path = path
        self.digest = config_mod.digest(text)
        self.live = Live(cfg, self.digest, path)
        self.counters = Counters()
        self.recorder = _new_recorder(cfg.record) if cfg.record.enabled else None
        self.shadower = Shadower(self.counters, self.recorder)
        self.pipeline = Pipeline(self.live, self.counters, self.recorder, self.shadower)
        self.shadower.quotas.configure(cfg)
        self.otel: Export | None = None
        if cfg.otel is not None:
            # An optional extra: its SDK is imported only when the config asks for export.
            from proxy.serve import otel

            self.otel = otel.start(cfg.otel, self.live, path)
            self.shadower.observers.add(self.otel)
        self.metrics: Metrics | None = None  # while metrics.enabled (see `_watch`)
        self._watch(cfg)
        self.watcher = ConfigWatcher(path, self._file_changed) if watch else None
        self._reload_lock = asyncio.Lock()
        self._runner: web.ServerRunner | None = None
        self.host = cfg.listen.host
        self.port = cfg.listen.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        if self.recorder is not None:
            await self.recorder.start()
        try:
            await self._start()
        except BaseException:
            # The port is taken, say: what did start is stopped, or the recorder's database
            # thread would keep the process alive after the error was printed.
            await self.stop()
            raise

    async def _start(self) -> None:
        if self.recorder is not None:
            self.recorder.submit(self.live.current.revision_record())
            # Calls naming objects made before a restart still go where those were made.
            for object_id, upstream in await self.recorder.objects():
                self.pipeline.affinity.learn(object_id, upstream)
        cfg = self.live.current.config
        server = Server(self.dispatch, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=cfg.limits.shutdown_grace)
        await self._runner.setup()
        # aiohttp's default backlog of 128 drops connects when an app opens streams in a burst.
        site = web.TCPSite(
            self._runner, cfg.listen.host, cfg.listen.port, reuse_address=True, backlog=1024
        )
        await site.start()
        addr = self._runner.addresses[0]
        self.host, self.port = addr[0], addr[1]
        if self.watcher is not None:
            self.watcher.start()
        log.info("listening", url=self.url, revision=self.live.current.revision, config=self.path)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (with a deadline), then shadows, then flush."""
        limits = self.live.current.config.limits
        if self.watcher is not None:
            await self.watcher.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.shadower.close(limits.shadow_grace)
        if self.otel is not None:
            await self.otel.stop()  # bounded: a dead collector is not waited on
        if self.recorder is not None:
            await self.recorder.close()
        await self.live.close()
        log.info("stopped")

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path.startswith("/_proxy/") or request.path == "/metrics":
            try:
                return await admin.answer(self, request)
            except ErrorAnswer as e:
                return e.response()
        try:
            return await self.pipeline.handle(request)
        except Exception:
            # A bug must still answer in the shape the app's SDK understands.
            log.exception("unhandled error", path=request.path)
            return ErrorAnswer("the sidecar failed on this request; see its log").response()

    def _watch(self, cfg: Config) -> None:
        """Metrics and the dashboard's window watch the traffic while `metrics.enabled`. Turned
        off and on again by reloads, they are the same objects: counters never go back."""
        observers = self.shadower.observers.all
        if cfg.metrics.enabled and self.metrics is None:
            self.metrics = Metrics(self)
        o = self.metrics
        if o is not None and cfg.metrics.enabled and o not in observers:
            observers.append(o)
        elif o is not None and not cfg.metrics.enabled and o in observers:
            observers.remove(o)
            o.flush()

    def health(self) -> dict[str, Any]:
        return admin.health(self.live, self.shadower.guard)

    def stats_view(self) -> dict[str, Any]:
        return admin.stats(self)

    async def _file_changed(self) -> None:
        await self.reload("file")

    def _refuse(self, source: str, reason: str) -> bool:
        self.live.refuse(reason)
        log.error(
            "config refused, keeping the running one",
            source=source,
            reason=reason,
            revision=self.live.current.revision,
        )
        return False

    async def reload(self, source: str) -> bool:
        """Validate the file completely, then swap; any problem keeps the running config."""
        async with self._reload_lock:
            try:
                cfg, text = await asyncio.to_thread(config_mod.load, self.path)
            except ConfigError as e:
                return self._refuse(source, str(e))
            if self.watcher is not None:
                self.watcher.seen()
            digest = config_mod.digest(text)
            if digest == self.digest and source == "file":
                return True  # touched, not changed
            old = self.live.current.config
            restart_only = {
                # The keys apply now; where it listens needs a new socket.
                "listen": ((cfg.listen.host, cfg.listen.port), (old.listen.host, old.listen.port)),
                "log.level": (cfg.log.level, old.log.level),
                "otel": (cfg.otel, old.otel),  # its exporters are built once
            }
            if self.recorder is not None:
                # The open database and its queue stay; `enabled` and `bodies` apply now.
                running = old.record.model_dump(exclude=_RECORD_LIVE)
                wanted = cfg.record.model_dump(exclude=_RECORD_LIVE)
                restart_only |= {f"record.{k}": (wanted[k], v) for k, v in running.items()}
                cfg = cfg.model_copy(update={"record": cfg.record.model_copy(update=running)})
            for key, (wanted_value, running_value) in restart_only.items():
                if wanted_value != running_value:
                    log.warning(
                        "this key changes only on restart; the running value is kept", key=key
                    )
            if cfg.record.enabled and self.recorder is None:
                recorder = _new_recorder(cfg.record)
                try:
                    await recorder.start()
                except StoreError as e:
                    return self._refuse(source, f"{self.path}: record.path: {e}")
                self.recorder = self.pipeline.recorder = self.shadower.recorder = recorder
                log.info("recording started", path=cfg.record.path)
            self.digest = digest
            rt = self.live.apply(cfg, digest, self.path)
            self.shadower.quotas.configure(cfg)  # what each upstream used is kept
            self._watch(cfg)
            # A new revision is the operator's word: tripped upstreams take traffic again.
            self.shadower.guard.reset(f"config revision {rt.revision}")
            if self.recorder is not None:
                self.recorder.submit(rt.revision_record())
            log.info(
                "config reloaded",
                source=source,
                revision=rt.revision,
                rollback=cfg.rollback,
                split=rt.effective_split(),
            )
            return True


def raise_open_files(want: int = 65536) -> int:
    """The soft limit on open files, raised towards the hard one (at most `want`); returns it.

    Every open stream holds two sockets, the app's and the provider's. A shell's usual soft
    limit (1,024 on Linux, 256 on macOS) ran out at a few hundred concurrent streams, after
    which new connections waited in the kernel's backlog and upstream connects failed.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):  # e.g. macOS caps it below the hard one
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(path: str) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads. Returns the exit code."""
    open_files = raise_open_files()
    cfg, text = config_mod.load(path)
    sidecar = Sidecar(cfg, text, path)
    await sidecar.start()
    # Whatever goes wrong from here, the sidecar is stopped: the recorder's database thread
    # would otherwise keep the process alive after the loop has gone.
    try:
        if open_files < 4096:
            log.warning(
                "the open-file limit is low: about half of it in concurrent connections",
                limit=open_files,
                fix="raise the hard limit (ulimit -Hn, or LimitNOFILE= under systemd)",
            )
        # Everything imported and built so far lives as long as the process: moving it out of
        # the collector's sight cuts a full collection from ~50 ms to well under 1 ms.
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        reloads: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            task = loop.create_task(sidecar.reload("SIGHUP"))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            print(
                f"sidecar listening on {sidecar.url}  (config {path}, revision "
                f"{sidecar.live.current.revision})",
                flush=True,
            )
        except BrokenPipeError:  # stdout's reader has gone: serving goes on
            logs.gone(sys.stdout)
        await stop.wait()
        t = time.perf_counter()
        log.info(
            "shutting down",
            in_flight=sum(u.in_flight for u in sidecar.live.current.upstreams.values()),
        )
        loop.remove_signal_handler(signal.SIGHUP)

        def force() -> None:
            # Asked twice: stop now. SQLite's WAL keeps the file consistent; queued records are lost.
            log.warning("second signal: exiting without waiting for in-flight requests")
            os._exit(130)

        loop.add_signal_handler(signal.SIGTERM, force)
        loop.add_signal_handler(signal.SIGINT, force)
        await asyncio.gather(*reloads, return_exceptions=True)
    finally:
        await sidecar.stop()
    log.info("shutdown complete", seconds=round(time.perf_counter() - t, 3))
    return 0
