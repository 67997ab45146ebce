"""What a run will cost before it starts, and what it did cost: the judge's tokens priced by
`report.pricing` for the judge's upstream and model. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from proxy.judge.pairs import Pair
from proxy.judge.prompt import MAX_VERDICT_TOKENS, SYSTEM, user_message
from proxy.report.thresholds import Price

# English runs at about four characters a token; code, JSON and most other scripts at fewer.
# Three bytes of UTF-8 a token errs high on purpose: the estimate guards a budget.
BYTES_PER_TOKEN: Final = 3
MESSAGE_OVERHEAD_TOKENS: Final = 16  # roles and framing of the two messages of a call


@dataclass(frozen=True, slots=True)
class Estimate:
    pairs: int
    calls: int
    prompt_tokens: int  # an estimate, on the high side
    completion_tokens: int  # at most: every verdict at its token cap
    usd: float | None  # None: `report.pricing` has no token or request price for the judge


def price_of(
    pricing: dict[str, dict[str, Price]], upstream: str, model: str
) -> tuple[Price | None, str]:
    """The judge's price (an exact model name wins over "*") and the key it was looked up by."""
    table = pricing.get(upstream, {})
    if model in table:
        return table[model], f"report.pricing.{upstream}.{model}"
    return table.get("*"), f'report.pricing.{upstream}."*"'


def usd(
    price: Price | None, prompt_tokens: int, completion_tokens: int, calls: int
) -> float | None:
    """US dollars for this many tokens and calls; None when the price says nothing of them."""
    if price is None or (price.input is None and price.request is None):
        return None
    total = calls * (price.request or 0.0)
    if price.input is not None and price.output is not None:
        total += (prompt_tokens * price.input + completion_tokens * price.output) / 1e6
    return total


def prompt_tokens(pair: Pair) -> int:
    """The judge call's prompt, in tokens by `BYTES_PER_TOKEN`: the same in either order."""
    size = len(SYSTEM.encode()) + len(
        user_message(pair.conversation, pair.primary, pair.other).encode()
    )
    return math.ceil(size / BYTES_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS


def estimate(pairs: Sequence[Pair], price: Price | None) -> Estimate:
    calls = sum(len(p.candidate.todo) for p in pairs)
    prompt = sum(prompt_tokens(p) * len(p.candidate.todo) for p in pairs)
    completion = calls * MAX_VERDICT_TOKENS
    return Estimate(len(pairs), calls, prompt, completion, usd(price, prompt, completion, calls))
