"""The cost estimate and the judge's price. No sockets."""

from __future__ import annotations

import pytest

from proxy.judge.cost import BYTES_PER_TOKEN, estimate, price_of, prompt_tokens, usd
from proxy.judge.pairs import Candidate, Pair
from proxy.judge.prompt import MAX_VERDICT_TOKENS
from proxy.report.thresholds import Price


def pair(size: int, todo: tuple[str, ...] = ("primary", "candidate")) -> Pair:
    c = Candidate("x", "shadow", "new", "default", "m", todo)  # type: ignore[arg-type]
    return Pair(c, "q" * size, "a" * size, "b" * size)


def test_the_estimate_counts_both_orders_and_every_verdict_at_its_cap() -> None:
    small, big = pair(300), pair(30_000, ("candidate",))
    est = estimate([small, big], Price(input=2.0, output=8.0))
    assert est.pairs == 2 and est.calls == 3
    assert est.prompt_tokens == 2 * prompt_tokens(small) + prompt_tokens(big)
    assert est.completion_tokens == 3 * MAX_VERDICT_TOKENS
    assert est.usd == pytest.approx((est.prompt_tokens * 2 + est.completion_tokens * 8) / 1e6)


def test_a_prompt_s_tokens_err_high_for_a_budget() -> None:
    p = pair(3000)
    assert prompt_tokens(p) >= 3 * 3000 / BYTES_PER_TOKEN
    assert prompt_tokens(p) > 3 * 3000 / 4  # OpenAI's four characters a token


def test_the_judge_s_price_is_its_model_s_or_the_upstream_s_star() -> None:
    exact, star = Price(input=1, output=2), Price(input=3, output=4)
    pricing = {"judge": {"judge-1": exact, "*": star}}
    assert price_of(pricing, "judge", "judge-1") == (exact, "report.pricing.judge.judge-1")
    assert price_of(pricing, "judge", "other") == (star, 'report.pricing.judge."*"')
    assert price_of(pricing, "elsewhere", "judge-1")[0] is None


def test_without_a_token_or_request_price_the_cost_is_unknown_not_zero() -> None:
    assert usd(None, 100, 10, 1) is None
    assert usd(Price(image=0.04), 100, 10, 1) is None
    assert usd(Price(request=0.01), 100, 10, 3) == pytest.approx(0.03)
    assert estimate([pair(10)], None).usd is None
