"""Observers: what watches the traffic as it goes (metrics, traces, the live dashboard).

Each observer is told of every upstream attempt of an app's call once it is complete (the
serving one, and a failed one before its failover), of every shadow or noise copy once done,
and of every request the sidecar refused itself. Observers run on the request path, after the
app has its answer: they must be quick and must not raise (a bug in one is logged, once per
kind, and the call goes on).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import structlog

if TYPE_CHECKING:
    from proxy.errors import ErrorAnswer
    from proxy.record.meter import Meter
    from proxy.serve.call import Arrival, Call
    from proxy.serve.plan import Attempt

log = structlog.get_logger("proxy.observe")


class Observer(Protocol):
    def served(self, call: Call, attempt: Attempt, meter: Meter) -> None:
        """An attempt of an app's call is complete (role primary or failover)."""

    def copied(self, call_id: str, attempt: Attempt, meter: Meter) -> None:
        """A shadow or noise copy of the call `call_id` is complete."""

    def refused(self, arrival: Arrival, error: ErrorAnswer) -> None:
        """The sidecar answered a request itself."""


class Observers:
    """The observers in force; with none, each notice costs one attribute read."""

    __slots__ = ("_failed", "all")

    def __init__(self) -> None:
        self.all: list[Observer] = []
        self._failed: set[str] = set()

    def add(self, observer: Observer) -> None:
        self.all.append(observer)

    def served(self, call: Call, attempt: Attempt, meter: Meter) -> None:
        for o in self.all:
            try:
                o.served(call, attempt, meter)
            except Exception:
                self._fault(o, "served")

    def copied(self, call_id: str, attempt: Attempt, meter: Meter) -> None:
        for o in self.all:
            try:
                o.copied(call_id, attempt, meter)
            except Exception:
                self._fault(o, "copied")

    def refused(self, arrival: Arrival, error: ErrorAnswer) -> None:
        for o in self.all:
            try:
                o.refused(arrival, error)
            except Exception:
                self._fault(o, "refused")

    def _fault(self, observer: Observer, what: str) -> None:
        key = f"{type(observer).__name__}.{what}"
        if key not in self._failed:
            self._failed.add(key)
            log.exception("observer failed; its later failures are not logged", observer=key)
