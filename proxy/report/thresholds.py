"""Report settings that live in the config file: verdict thresholds and the pricing table."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Price(_Strict):
    """What a provider charges for one model, in US dollars: per million tokens (`input`,
    `output`, and `cached_input` for prompt tokens read from its cache), per image in an
    answer (`image`), and per successful answer (`request`). Give what applies."""

    input: float | None = Field(default=None, ge=0)
    output: float | None = Field(default=None, ge=0)
    cached_input: float | None = Field(default=None, ge=0)  # default: the input price
    image: float | None = Field(default=None, ge=0)
    request: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if (self.input is None) != (self.output is None):
            raise ValueError("give both input and output, the token prices go together")
        if self.cached_input is not None and self.input is None:
            raise ValueError("cached_input needs the input and output prices too")
        if self.input is None and self.image is None and self.request is None:
            raise ValueError("give input and output, image, or request")
        return self

    @property
    def per_token(self) -> bool:
        return self.input is not None


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
    # shadow / primary on the same request, the typical (median) ratio: time to first token
    # for streams, total time for the rest
    latency_ratio: Band = Band(warn=1.25, fail=1.6)
    # ... and a slowdown only counts once it is this large, in both senses: a user feels
    # neither 4 ms more on an 8 ms answer, nor 60 ms more on a 10 s one
    latency_min_ms: float = Field(default=50.0, ge=0)
    latency_min_share: float = Field(default=0.10, ge=0)
    # shadow / primary total tokens over shadow pairs
    token_ratio: Band = Band(warn=1.15, fail=1.4)
    # shadow / primary projected cost
    cost_ratio: Band = Band(warn=1.10, fail=1.5)
    # share of pairs without the same status class and response shape, minus the same
    # share of noise pairs (primary vs primary), as every output comparison below
    shape_mismatch: Band = Band(warn=0.01, fail=0.05)
    # share of pairs whose normalised answer text differs, beyond the noise floor; it warns
    # at most (see `verdict._text`), so its `fail` only marks where the interval is read
    text_mismatch: Band = Band(warn=0.05, fail=0.20)
    # 1 - share of shadow streams well formed ([DONE] seen, usage present)
    stream_broken: Band = Band(warn=0.01, fail=0.05)
    # share of pairs with tool calls that differ in names or argument keys, carry invalid
    # arguments, or that the shadow refused (a 4xx)
    tool_call_mismatch: Band = Band(warn=0.02, fail=0.10)
    # share of JSON-mode answers that don't parse
    json_invalid: Band = Band(warn=0.01, fail=0.05)
    # share of judged shadow pairs the shadow lost (worse in both orders, `python -m proxy
    # judge`), less the share of noise pairs the primary lost to itself (see `judge/grade.py`)
    quality: Band = Band(warn=0.05, fail=0.15)
    # a check resting on fewer pairs (or answers) is inconclusive, unless it already fails
    min_pairs: int = Field(default=30, ge=0)


class ReportSettings(_Strict):
    thresholds: Thresholds = Thresholds()
    # upstream name -> requested model id -> price; "*" matches any model
    pricing: dict[str, dict[str, Price]] = {}
