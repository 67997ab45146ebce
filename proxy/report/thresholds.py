"""Report settings that live in the config file: verdict thresholds and the pricing table."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Price(_Strict):
    """US dollars per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class Band(_Strict):
    """A measured value passes below `warn`, warns below `fail`, fails from `fail` on.

    For rates where higher is better (agreement, parse rates) the report compares
    the shortfall `1 - rate`, so every band reads the same way: smaller is better.
    """

    warn: float = Field(ge=0)
    fail: float = Field(ge=0)


class Thresholds(_Strict):
    # shadow minus primary upstream-error rate over shadow pairs (client disconnects and
    # the sidecar's own refusals are not upstream errors and are left out)
    errors: Band = Band(warn=0.01, fail=0.05)
    # shadow / primary, on p50 and p90 of time to first token (streams) or total (others)
    latency_ratio: Band = Band(warn=1.25, fail=1.6)
    # shadow / primary total tokens over shadow pairs
    token_ratio: Band = Band(warn=1.15, fail=1.4)
    # shadow / primary projected cost
    cost_ratio: Band = Band(warn=1.10, fail=1.5)
    # 1 - share of pairs with the same status class and response shape, minus the same
    # figure for noise pairs (primary vs primary) once there are min_pairs of those
    shape_mismatch: Band = Band(warn=0.01, fail=0.05)
    # 1 - share of shadow streams well formed ([DONE] seen, usage present)
    stream_broken: Band = Band(warn=0.01, fail=0.05)
    # 1 - share of pairs with the same tool names and argument keys
    tool_call_mismatch: Band = Band(warn=0.02, fail=0.10)
    # 1 - share of JSON-mode answers that parse
    json_invalid: Band = Band(warn=0.01, fail=0.05)
    # a check resting on fewer pairs (or answers) than this is "warn", whatever its figure
    min_pairs: int = Field(default=30, ge=0)


class ReportSettings(_Strict):
    thresholds: Thresholds = Thresholds()
    # upstream name -> requested model id -> price; "*" matches any model
    pricing: dict[str, dict[str, Price]] = {}
