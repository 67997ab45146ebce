"""The admin endpoints under /_proxy/: health, stats, reload, the dashboard; and /metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from proxy import logs
from proxy.errors import BadRequest, NotFound, Unauthorized, error_body
from proxy.serve import dashboard, live, snapshot
from proxy.serve.call import authorized
from proxy.serve.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from proxy.serve.app import Sidecar
    from proxy.serve.guard import Guard
    from proxy.serve.runtime import Live

ENDPOINTS = (
    "/_proxy/health",
    "/_proxy/stats",
    "/_proxy/reload",
    "/_proxy/guard/reset",
    "/_proxy/",
    "/_proxy/live",
    "/_proxy/recording",
    "/metrics",
)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def answer(sidecar: Sidecar, request: web.BaseRequest) -> web.StreamResponse:
    """The answer to an admin request; raises `ErrorAnswer` for a path that is not one."""
    path, method = request.path, request.method
    if path == "/_proxy/health" and method == "GET":
        return _json(health(sidecar.live, sidecar.shadower.guard))
    if path == "/_proxy/" and method == "GET":
        # The page holds no data: it fetches /_proxy/live, with a key when one is needed.
        return web.Response(body=dashboard.PAGE, content_type="text/html", charset="utf-8")
    keys = sidecar.live.current.keys
    if keys and not authorized(request.headers, keys):
        raise Unauthorized("the admin endpoints other than health take one of listen.keys")
    if path == "/_proxy/stats" and method == "GET":
        return _json(stats(sidecar))
    if path == "/_proxy/live" and method == "GET":
        state = health(sidecar.live, sidecar.shadower.guard)
        return _json(live.live_view(sidecar, sidecar.metrics, state))
    if path == "/metrics" and method == "GET":
        if sidecar.metrics is None or not sidecar.live.current.config.metrics.enabled:
            raise NotFound("metrics are off; set metrics.enabled: true in the config")
        return web.Response(body=sidecar.metrics.text(), headers={"Content-Type": CONTENT_TYPE})
    if path == "/_proxy/recording" and method == "GET":
        # The running record.path: a reload keeps it until a restart.
        rec = sidecar.live.current.config.record.path if sidecar.recorder is not None else None
        return await snapshot.send_recording(request, rec)
    if path == "/_proxy/reload" and method == "POST":
        ok = await sidecar.reload("admin")
        if not ok:
            raise BadRequest(
                f"config refused, the running config is kept: {sidecar.live.last_error}"
            )
        return _json({"applied": True, "revision": sidecar.live.current.revision})
    if path == "/_proxy/guard/reset" and method == "POST":
        guard = sidecar.shadower.guard
        was = sorted(guard.tripped)
        guard.reset("POST /_proxy/guard/reset")
        return _json({"reset": was})
    if path in ENDPOINTS:
        return web.Response(
            status=405,
            body=error_body(
                f"{method} is not allowed on {path}", "invalid_request_error", "method_not_allowed"
            ),
            content_type="application/json",
        )
    raise NotFound(f"no admin endpoint {path!r}; try {', '.join(ENDPOINTS)}")


def health(live: Live, guard: Guard | None = None) -> dict[str, Any]:
    """The config in force: revision, rollback, splits per route, the last refused reload, and
    the upstreams the guard took out of rotation."""
    rt = live.current
    tripped = [
        {"upstream": t.upstream, "rule": t.rule, "figures": t.figures, "since": t.since}
        for t in (guard.tripped.values() if guard is not None else ())
    ]
    return {
        "guard": {"tripped": tripped} if rt.config.guard is not None or tripped else None,
        "status": "ok",
        "revision": rt.revision,
        "config": rt.path,
        "loaded_at": rt.loaded_at,
        "rollback": rt.config.rollback,
        "primary": rt.config.primary,
        "split": rt.effective_split(),
        "routes": [
            {
                "name": r.name,
                "split": r.split.shares(),
                "shadow": r.shadow.upstream if r.shadow else None,
            }
            for r in rt.table.routes
        ],
        "reloads": live.reloads,
        "last_reload_error": (
            {"message": live.last_error, "at": live.last_error_at} if live.last_error else None
        ),
    }


def stats(sidecar: Sidecar) -> dict[str, Any]:
    """Counters since start: requests and errors per upstream, shadow copies, the recorder."""
    out = sidecar.counters.as_dict()
    out["shadow"]["in_flight"] = sidecar.shadower.in_flight
    affinity = sidecar.pipeline.affinity
    out["affinity"] = {"ids": len(affinity), "routed": affinity.routed}
    out["upstreams_in_flight"] = {n: u.in_flight for n, u in sidecar.live.current.upstreams.items()}
    out["records"] = None
    if sidecar.recorder is not None:
        s = sidecar.recorder.stats()
        out["records"] = {
            "written": s.written,
            "dropped": s.dropped,
            "queue_depth": s.queue_depth,
            "batches": s.batches,
            "errors": s.errors,
            "last_error": s.last_error,
        }
    out["quotas"] = sidecar.shadower.quotas.view()
    out["log_lines_dropped"] = logs.SINK.dropped
    out["revision"] = sidecar.live.current.revision
    out["otel"] = sidecar.otel.stats() if sidecar.otel is not None else None
    return out
