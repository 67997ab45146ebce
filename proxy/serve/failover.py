"""Failover: where a call goes when its upstream failed before the app had a byte (pure).

Only a call that is safe to send twice moves, by the same rule as shadowing: an inference
call that creates nothing and names nothing stored. Uploads, batches, stored responses
(`store`, `POST /v1/responses`), calls naming an object and every object API stay with the
answer they got, as does a stream the app has begun to read.
"""

from __future__ import annotations

from proxy.config import Failover
from proxy.record.meter import Meter
from proxy.serve.call import Call
from proxy.serve.plan import Attempt
from proxy.serve.shadow import unrepeatable


def listed(cfg: Failover, meter: Meter) -> bool:
    """Whether the failure is one `failover.when` names."""
    kind, status = meter.error_kind, meter.status
    on = cfg.when
    if status is None:  # no HTTP answer at all
        return (kind == "connection" and "connect" in on) or (kind == "timeout" and "timeout" in on)
    return (status >= 500 and "5xx" in on) or (status == 429 and "429" in on)


def target(
    cfg: Failover | None, call: Call, attempt: Attempt, meter: Meter, began: bool
) -> str | None:
    """The upstream to send the call to once more, or None to keep the answer it got."""
    if cfg is None or began or attempt.role != "primary" or not listed(cfg, meter):
        return None
    if attempt.learn or unrepeatable(call.method, call.tail, call.body):
        return None
    to = call.route.primary if cfg.to == "primary" else cfg.to
    return None if to == attempt.upstream.name else to
