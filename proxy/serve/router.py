"""Which upstream serves a call: routes compiled at load time, and the pure choice over them."""

from __future__ import annotations

import hashlib
import math
import re
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import translate
from typing import TYPE_CHECKING, Literal, NamedTuple

from proxy.config import Config, ShadowConfig, Sticky

if TYPE_CHECKING:
    from proxy.serve.affinity import Affinity
    from proxy.serve.call import Call


@dataclass(frozen=True, slots=True)
class Split:
    """Weights as a cumulative table; `pick(u)` maps a point in [0, 1) onto an upstream."""

    names: tuple[str, ...]
    bounds: tuple[float, ...]  # upper bound of each name's share, the last is 1.0
    weights: tuple[float, ...]

    def pick(self, u: float) -> str:
        # bisect_right: a point exactly on a bound belongs to the next upstream, so
        # shares are [0, b0), [b0, b1), ... and u < 1.0 never falls off the end.
        return self.names[min(bisect_right(self.bounds, u), len(self.names) - 1)]

    def shares(self) -> dict[str, float]:
        scale = _scale(self.weights)
        total = sum(w / scale for w in self.weights)
        return {n: w / scale / total for n, w in zip(self.names, self.weights, strict=True)}


def _scale(weights: Sequence[float]) -> float:
    """What to divide weights by before adding them up: 1, unless their sum overflows."""
    return 1.0 if sum(weights) < math.inf else max(weights)


def split_of(weights: Mapping[str, float]) -> Split:
    """Zero weights are dropped: a weight of 0 must send nothing, not "almost nothing"."""
    items = [(n, float(w)) for n, w in weights.items() if w > 0]
    # Weights near the float maximum sum to infinity: then they are added up scaled down.
    scale = _scale([w for _, w in items])
    total = sum(w / scale for _, w in items)
    bounds: list[float] = []
    acc = 0.0
    for _, w in items:
        acc += w / scale
        bounds.append(acc / total)
    bounds[-1] = 1.0
    return Split(tuple(n for n, _ in items), tuple(bounds), tuple(w for _, w in items))


def sticky_point(key: str) -> float:
    """The same key always maps to the same point, so it lands on the same share of a split.

    Shares are laid out in config order, so raising the canary's weight only moves keys
    *into* the canary: those already there stay.
    """
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    prefix: str  # "" for the catch-all
    model: re.Pattern[str] | None
    split: Split
    shadow: ShadowConfig | None  # already resolved for rollback
    primary: str  # where rollback sends it; its noise copies' upstream

    def matches(self, path: str, model: str | None) -> bool:
        if self.prefix and not (
            path == self.prefix or (path.startswith(self.prefix) and path[len(self.prefix)] == "/")
        ):
            return False
        return self.model is None or (model is not None and self.model.match(model) is not None)


@dataclass(frozen=True, slots=True)
class Table:
    routes: tuple[Route, ...]  # first match wins; the last is the catch-all
    sticky: Sticky | None
    outside: tuple[str, ...] = ()  # route prefixes outside /v1/, accepted as they are

    def accepts(self, path: str) -> bool:
        """Whether the sidecar takes a request for `path` at all."""
        if path.startswith("/v1/"):
            return True
        return any(path == p or path.startswith(p + "/") for p in self.outside)

    def match(self, path: str, model: str | None) -> Route:
        for route in self.routes:
            if route.matches(path, model):
                return route
        return self.routes[-1]


def build_table(cfg: Config) -> Table:
    """Compile routes once per config; under rollback each route serves its primary only."""

    def shadow_for(shadow: ShadowConfig | None) -> ShadowConfig | None:
        if shadow is None or (cfg.rollback and not shadow.during_rollback):
            return None
        return shadow

    routes: list[Route] = []
    for rc in cfg.routes:
        primary = rc.primary or cfg.primary
        if rc.split is not None:
            weights = rc.split
        else:
            weights = {primary: 1.0} if rc.primary else cfg.default_split()
        shadow = cfg.shadow if rc.shadow is None else (rc.shadow or None)
        routes.append(
            Route(
                name=rc.name or (rc.path + (f"[{rc.model}]" if rc.model else "")),
                prefix=rc.path if rc.path != "/" else "",
                model=re.compile(translate(rc.model)) if rc.model else None,
                split=split_of({primary: 1.0}) if cfg.rollback else split_of(weights),
                shadow=shadow_for(shadow),
                primary=primary,
            )
        )
    routes.append(
        Route(
            name="default",
            prefix="",
            model=None,
            split=split_of({cfg.primary: 1.0} if cfg.rollback else cfg.default_split()),
            shadow=shadow_for(cfg.shadow),
            primary=cfg.primary,
        )
    )
    # Paths outside /v1/ that a route accepts (Gemini's /v1beta): refused everywhere else.
    outside = tuple(r.prefix for r in routes if r.prefix and not r.prefix.startswith("/v1/"))
    return Table(tuple(routes), cfg.sticky, outside)


Why = Literal["weight", "sticky", "object", "guarded"]


class Choice(NamedTuple):
    """Which upstream serves a call, and why."""

    upstream: str
    # by weight, by the sticky key's point, where the object it names was made, or the
    # route's primary because the pick is out of rotation (tripped by the guard, over quota)
    why: Why
    instead_of: str | None = None  # "guarded": the upstream the split picked


def choose(call: Call, affinity: Affinity, u: float, out: frozenset[str] = frozenset()) -> Choice:
    """Route: a pure choice from the call, the config it arrived under, the objects the
    upstreams made, a random point `u` in [0, 1), and the upstreams out of rotation.

    A call naming an object goes where the object was made, whatever the weights or its
    sticky key say; only the rollback switch sends it to the primary regardless (and it
    fails there). Under rollback every route's split is the primary alone (`build_table`).
    An upstream out of rotation gets no new calls: its share goes to the route's primary, as
    if its weight were 0 (objects it made still go there).
    """
    owner = affinity.owner(call.tail, call.body)
    if owner is not None:
        rt = call.arrival.runtime
        if owner in rt.upstreams and not rt.config.rollback:
            return Choice(owner, "object")
    split = call.route.split
    if call.sticky is not None:
        picked = Choice(split.pick(sticky_point(call.sticky)), "sticky")
    else:
        picked = Choice(split.pick(u), "weight")
    if out and picked.upstream in out and picked.upstream != call.route.primary:
        return Choice(call.route.primary, "guarded", picked.upstream)
    return picked
