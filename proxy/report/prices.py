"""What an answer cost: `report.pricing` as SQL over a response row, and why some answers
have no price, in words that name the fix."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

from proxy.report.thresholds import Price

_FIELDS: Final = ("input", "output", "cached_input", "image", "request")


class PriceSql(NamedTuple):
    """SQL for each price of the response row's model, NULL where `report.pricing` has none."""

    input: str
    output: str
    cached_input: str
    image: str
    request: str


_UNPRICED: Final = PriceSql("NULL", "NULL", "NULL", "NULL", "NULL")


def price_sql(
    pricing: dict[str, dict[str, Price]], a: str, upstream: str | None, params: dict[str, Any]
) -> PriceSql:
    """The prices of response row `a` by its upstream and the model the app asked for (an
    exact name wins over "*"); with `upstream` known, only that upstream's table is read.
    Each price of an entry stands alone: an exact entry without `image` is no image price,
    whatever "*" says."""
    tables = {upstream: pricing.get(upstream, {})} if upstream is not None else pricing
    by_upstream: list[list[str]] = [[] for _ in _FIELDS]
    for i, (name, models) in enumerate(tables.items()):
        if not models:
            continue
        cases: list[list[str]] = [[] for _ in _FIELDS]
        wild: list[str] = ["NULL"] * len(_FIELDS)
        for j, (model, price) in enumerate(models.items()):
            if model != "*":
                params[f"{a}{i}_{j}m"] = model
            for k, field in enumerate(_FIELDS):
                value = getattr(price, field)
                key = f"{a}{i}_{j}_{k}"
                if value is not None:
                    params[key] = value
                sql = f":{key}" if value is not None else "NULL"
                if model == "*":
                    wild[k] = sql
                else:
                    cases[k].append(f"WHEN :{a}{i}_{j}m THEN {sql}")
        params[f"{a}{i}u"] = name
        for k in range(len(_FIELDS)):
            by_model = (
                f"CASE e.model {' '.join(cases[k])} ELSE {wild[k]} END" if cases[k] else wild[k]
            )
            by_upstream[k].append(
                by_model if upstream is not None else f"WHEN :{a}{i}u THEN {by_model}"
            )
    if not by_upstream[0]:
        return _UNPRICED
    if upstream is not None:
        return PriceSql(*(sql[0] for sql in by_upstream))
    return PriceSql(*(f"(CASE {a}.upstream {' '.join(sql)} END)" for sql in by_upstream))


def cost_sql(a: str, price: PriceSql) -> str:
    """The cost of response row `a` in US dollars times a million; NULL when it has no price,
    when tokens are priced but it reported no usage, or when it failed with nothing to charge.
    Cached prompt tokens cost `cached_input` (else `input`); images and requests are per item.
    """
    if price == _UNPRICED:
        return "NULL"
    i, o, c, img, req = price
    cached = f"coalesce({a}.cached_tokens, 0)"
    tokens = (
        f"({a}.prompt_tokens - {cached}) * {i} + {cached} * coalesce({c}, {i}) "
        f"+ coalesce({a}.completion_tokens, 0) * {o}"
    )
    # Without usage, a token price can't apply: unless the answer is images with an image
    # price (image models often report no tokens), it has no price at all.
    by_image = f"coalesce({a}.images, 0) > 0 AND {img} IS NOT NULL"
    return (
        f"(CASE WHEN coalesce({i}, {img}, {req}) IS NULL THEN NULL "
        f"WHEN {a}.prompt_tokens IS NULL AND ({a}.error_kind IS NOT NULL "
        f"OR ({i} IS NOT NULL AND NOT ({by_image}))) THEN NULL "
        f"ELSE coalesce({tokens}, 0) "
        f"+ (coalesce({a}.images, 0) * coalesce({img}, 0) + coalesce({req}, 0)) * 1e6 END)"
    )


def unpriced_sql(where: str, cost: str) -> str:
    """Successful answers per upstream, role and requested model: how many, how many with
    usage and with images, and how many priced. Only the groups with unpriced answers."""
    return f"""
SELECT r.upstream, r.role, e.model, count(*), count(r.prompt_tokens),
  sum(coalesce(r.images, 0) > 0), count({cost})
FROM responses r CROSS JOIN exchanges e ON e.id = r.exchange_id
WHERE r.error_kind IS NULL AND r.upstream != '-'{where}
GROUP BY r.upstream, r.role, e.model HAVING count({cost}) < count(*)
ORDER BY r.upstream, r.role, e.model"""


def unpriced_notes(
    rows: Iterable[Sequence[Any]], pricing: dict[str, dict[str, Price]]
) -> list[str]:
    """One note per cause, each naming the answers it leaves without a price and the fix."""
    if not pricing:
        return ["No `report.pricing`: no answer has a cost. Add US$ per million tokens per "
                "upstream and model (see docs/report.md)."]  # fmt: skip
    causes: dict[str, list[str]] = {}
    for upstream, role, model, answers, with_usage, images, priced in rows:
        who = f"{upstream} ({role}, {model or 'no model'}): {answers - priced:,}"
        table = pricing.get(upstream)
        price = None if table is None else table.get(model or "", table.get("*"))
        if table is None:
            cause = f"`report.pricing` has no `{upstream}`"
        elif price is None:
            cause = f'`report.pricing.{upstream}` has no entry for the model, nor a `"*"`'
        elif images and price.image is None:
            cause = ("image answers carry no token usage to price: give their model an "
                     "`image` (per image) or `request` price")  # fmt: skip
        elif price.per_token and with_usage < answers:
            cause = "the answers carried no token usage, so a token price cannot apply"
        else:
            cause = "priced only in part"
        causes.setdefault(cause, []).append(who)
    return [
        f"No price for some answers, because {cause}: " + "; ".join(who) + "."
        for cause, who in causes.items()
    ]
