"""Counters since start, served at `GET /_proxy/stats`."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any


class Counters:
    __slots__ = (
        "errors",
        "failovers",
        "guard_rerouted",
        "proxy_errors",
        "requests",
        "shadow_failed",
        "shadow_sent",
        "shadow_skipped_cap",
        "shadow_skipped_guard",
        "shadow_skipped_same",
        "shadow_skipped_shape",
        "shadow_skipped_state",
        "started_at",
    )

    def __init__(self) -> None:
        self.started_at = time.time()
        self.requests: Counter[str] = Counter()  # served, per upstream
        self.errors: Counter[str] = Counter()  # non-2xx or failed, per upstream
        self.failovers: Counter[str] = Counter()  # calls moved off an upstream that failed
        self.guard_rerouted = 0  # calls sent to the primary as their pick was tripped
        self.proxy_errors = 0  # answered by the sidecar itself before any upstream
        self.shadow_sent = 0
        self.shadow_failed = 0
        self.shadow_skipped_cap = 0
        self.shadow_skipped_same = 0
        self.shadow_skipped_guard = 0  # not copied: the guard took the upstream out
        self.shadow_skipped_shape = 0  # not copied: the shadow's provider shape has no such call
        self.shadow_skipped_state = 0  # not copied: an object API, or names a stored object

    def as_dict(self) -> dict[str, Any]:
        return {
            "uptime_s": round(time.time() - self.started_at, 3),
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "proxy_errors": self.proxy_errors,
            "failovers": dict(self.failovers),
            "guard_rerouted": self.guard_rerouted,
            "shadow": {
                "sent": self.shadow_sent,
                "failed": self.shadow_failed,
                "skipped_in_flight_cap": self.shadow_skipped_cap,
                "skipped_same_upstream": self.shadow_skipped_same,
                "skipped_not_repeatable": self.shadow_skipped_state,
                "skipped_other_shape": self.shadow_skipped_shape,
                "skipped_guard": self.shadow_skipped_guard,
            },
        }
