"""Quotas and rate caps per upstream: requests and tokens a minute, US dollars a day.

A served call that would pass a quota goes to the route's primary instead (see
`router.choose`); a shadow copy is skipped, and copies stop first: they may use a quota only
while a tenth of it (at least one request) is left for the app's calls, and at most
`shadow.requests_per_minute` of them go out a minute. The state lives as long as the process,
so a reload keeps an upstream's windows (same name, same window).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from proxy.config import Config, Quota
from proxy.record.meter import Meter
from proxy.report.thresholds import Price

MINUTE = 60.0
_NONE: frozenset[str] = frozenset()
DAY = 86_400.0


@dataclass(slots=True)
class _Use:
    """What one upstream used: request times and token counts of the last minute, dollars of
    the current UTC day, and the times of the copies sent to it."""

    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    copies: deque[float] = field(default_factory=deque)
    day: int = 0
    usd: float = 0.0

    def prune(self, now: float) -> None:
        for times in (self.requests, self.copies):
            while times and times[0] <= now - MINUTE:
                times.popleft()
        while self.tokens and self.tokens[0][0] <= now - MINUTE:
            self.tokens.popleft()
        today = int(now // DAY)
        if today != self.day:
            self.day, self.usd = today, 0.0

    def fraction(self, quota: Quota) -> float:
        """The largest share of any of its quotas used (1.0: spent)."""
        shares = [0.0]
        if quota.requests_per_minute:
            shares.append(len(self.requests) / quota.requests_per_minute)
        if quota.tokens_per_minute:
            shares.append(sum(n for _, n in self.tokens) / quota.tokens_per_minute)
        if quota.usd_per_day:
            shares.append(self.usd / quota.usd_per_day)
        return max(shares)


class Quotas:
    """The quotas of the config in force, and what each upstream used."""

    def __init__(self) -> None:
        self._limits: dict[str, Quota] = {}
        self._prices: dict[str, dict[str, Price]] = {}
        self._use: dict[str, _Use] = {}
        self.rerouted = 0  # served calls sent to the primary for a quota
        self.skipped = 0  # shadow copies not sent for a quota or their cap

    def configure(self, cfg: Config) -> None:
        """Take a config's quotas; what was used is kept."""
        self._limits = {n: u.quota for n, u in cfg.upstreams.items() if u.quota is not None}
        self._prices = {n: dict(models) for n, models in cfg.report.pricing.items()}

    def spent(self, now: float | None = None) -> frozenset[str]:
        """Upstreams whose next call would pass one of their quotas."""
        if not self._limits:
            return _NONE
        now = time.time() if now is None else now
        out = set()
        for name, quota in self._limits.items():
            use = self._use.get(name)
            if use is None:
                continue
            use.prune(now)
            head = 1 / quota.requests_per_minute if quota.requests_per_minute else 0.0
            if use.fraction(quota) + head > 1.0 + 1e-9:
                out.add(name)
        return frozenset(out)

    def take(self, name: str, now: float | None = None) -> None:
        """A call is sent to `name`."""
        if name in self._limits:
            self._use.setdefault(name, _Use()).requests.append(time.time() if now is None else now)

    def copy_allowed(self, name: str, cap: int | None, now: float | None = None) -> bool:
        """Whether a shadow copy may go to `name` now; if so, it is counted as sent."""
        now = time.time() if now is None else now
        use = self._use.setdefault(name, _Use())
        use.prune(now)
        quota = self._limits.get(name)
        if cap is not None and len(use.copies) >= cap:
            self.skipped += 1
            return False
        if quota is not None:
            reserve = max(1, (quota.requests_per_minute or 0) // 10)
            room = (
                quota.requests_per_minute is None
                or len(use.requests) + 1 + reserve <= quota.requests_per_minute
            )
            if not room or use.fraction(quota) >= 0.9:
                self.skipped += 1
                return False
            use.requests.append(now)
        use.copies.append(now)
        return True

    def used(self, name: str, model: str | None, meter: Meter, now: float | None = None) -> None:
        """What an answer from `name` cost, once it is complete."""
        quota = self._limits.get(name)
        if quota is None or not (quota.tokens_per_minute or quota.usd_per_day):
            return
        now = time.time() if now is None else now
        use = self._use.setdefault(name, _Use())
        use.prune(now)
        prompt, completion = meter.tokens()
        use.tokens.append((now, prompt + completion))
        price = self._price(name, model)
        if price is not None and meter.error_kind is None:
            use.usd += _cost(price, prompt, completion)

    def _price(self, name: str, model: str | None) -> Price | None:
        models = self._prices.get(name, {})
        return models.get(model or "") or models.get("*")

    def view(self, now: float | None = None) -> dict[str, Any]:
        """For `/_proxy/stats`: each quota's use now."""
        now = time.time() if now is None else now
        out: dict[str, Any] = {}
        for name, quota in self._limits.items():
            use = self._use.setdefault(name, _Use())
            use.prune(now)
            out[name] = {
                "requests_last_minute": len(use.requests),
                "tokens_last_minute": sum(n for _, n in use.tokens),
                "usd_today": round(use.usd, 6),
                "quota": quota.model_dump(exclude_none=True),
                "spent": name in self.spent(now),
            }
        return {"upstreams": out, "rerouted": self.rerouted, "copies_skipped": self.skipped}


def _cost(price: Price, prompt: int, completion: int) -> float:
    usd = price.request or 0.0
    if price.input is not None and price.output is not None:
        usd += (prompt * price.input + completion * price.output) / 1e6
    return usd
