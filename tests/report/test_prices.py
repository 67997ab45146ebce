"""What answers cost: token, cached-token, image and request prices, and the notes that say
why an answer has none."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.report.build import ReportFilter, build_report
from proxy.report.thresholds import Price, ReportSettings
from tests.report.test_build import T0, ex, resp, write


def test_cached_prompt_tokens_cost_the_cached_price(tmp_path: Path) -> None:
    x = ex("c0", T0)
    db = write(tmp_path / "c.db", [x], [resp(x, prompt=1000, completion=100, cached=800)])
    price = Price(input=1.0, output=2.0, cached_input=0.1)
    r = build_report(db, ReportFilter(), ReportSettings(pricing={"old": {"*": price}}))
    old = r.stats("old", "primary")
    assert old is not None and old.cached_tokens == 800
    # 200 uncached at $1, 800 cached at $0.10, 100 completion at $2, per million
    assert old.cost == pytest.approx((200 * 1 + 800 * 0.1 + 100 * 2) / 1e6)


def test_cached_tokens_without_a_cached_price_cost_the_input_price(tmp_path: Path) -> None:
    x = ex("c0", T0)
    db = write(tmp_path / "c.db", [x], [resp(x, prompt=1000, completion=0, cached=800)])
    r = build_report(db, ReportFilter(), ReportSettings(pricing={"old": {"*": Price(input=1, output=1)}}))  # fmt: skip
    old = r.stats("old", "primary")
    assert old is not None and old.cost == pytest.approx(1000 / 1e6)


def test_image_answers_cost_their_images_and_requests_their_request_price(tmp_path: Path) -> None:
    x, y = ex("i0", T0, model="flux"), ex("i1", T0 + 1, model="flux")
    db = write(
        tmp_path / "i.db",
        [x, y],
        [
            resp(x, prompt=None, completion=None, images=2),
            resp(y, prompt=None, completion=None, images=1),
        ],
    )
    pricing = {"old": {"flux": Price(image=0.04, request=0.001)}}
    r = build_report(db, ReportFilter(), ReportSettings(pricing=pricing))
    old = r.stats("old", "primary")
    assert old is not None
    assert (old.images, old.priced) == (3, 2)
    assert old.cost == pytest.approx(3 * 0.04 + 2 * 0.001)
    assert not any("No price" in n for n in r.notes)


def test_failed_answers_are_not_charged_a_request_price(tmp_path: Path) -> None:
    x = ex("f0", T0)
    db = write(tmp_path / "f.db", [x], [resp(x, status=500, error_kind="http_5xx", prompt=None)])
    r = build_report(db, ReportFilter(), ReportSettings(pricing={"old": {"*": Price(request=0.01)}}))  # fmt: skip
    old = r.stats("old", "primary")
    assert old is not None and (old.priced, old.cost) == (0, None)


def notes_for(tmp_path: Path, pricing: dict[str, dict[str, Price]]) -> list[str]:
    chat, image = ex("a", T0, model="gpt-4o-mini"), ex("b", T0 + 1, model="flux")
    db = write(
        tmp_path / f"n{len(pricing)}.db",
        [chat, image],
        [
            resp(chat),
            resp(chat, "shadow", "new"),
            resp(image, prompt=None, completion=None, images=1),
        ],
    )
    return [
        n
        for n in build_report(db, ReportFilter(), ReportSettings(pricing=pricing)).notes
        if "pric" in n
    ]


def test_the_no_price_note_names_the_cause_and_the_fix(tmp_path: Path) -> None:
    assert notes_for(tmp_path, {}) == [
        "No `report.pricing`: no answer has a cost. Add US$ per million tokens per upstream "
        "and model (see docs/report.md)."
    ]
    notes = notes_for(tmp_path, {"old": {"gpt-4o-mini": Price(input=1, output=1), "flux": Price(input=1, output=1)}})  # fmt: skip
    assert notes == [
        "No price for some answers, because `report.pricing` has no `new`: new (shadow, "
        "gpt-4o-mini): 1.",
        "No price for some answers, because image answers carry no token usage to price: give "
        "their model an `image` (per image) or `request` price: old (primary, flux): 1.",
    ]
    notes = notes_for(tmp_path, {"old": {"gpt-4o-mini": Price(input=1, output=1)}, "new": {"x": Price(input=1, output=1)}})  # fmt: skip
    assert any("`report.pricing.new` has no entry for the model" in n for n in notes)
    assert any('nor a `"*"`: old (primary, flux): 1' in n for n in notes)


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"input": 1}, "give both input and output"),
        ({}, "give input and output, image, or request"),
        ({"cached_input": 0.1, "image": 1}, "cached_input needs the input and output prices"),
        ({"image": -1}, "greater than or equal to 0"),
    ],
)
def test_a_price_that_cannot_be_applied_is_refused(given: dict[str, float], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Price(**given)
