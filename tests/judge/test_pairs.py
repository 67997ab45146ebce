"""Which pairs a run judges: what can be judged and why not, spread over routes and models,
and the same order again after an interruption. No sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.judge import pairs, store
from proxy.judge.pairs import Candidate, select, spread
from proxy.record.schema import StoreError
from tests.judge.recordings import exchange, pair, response, write


def cand(i: int, route: str = "a", model: str = "m", role: str = "shadow") -> Candidate:
    return Candidate(f"x{i:03d}", role, "new", route, model, ("primary", "candidate"))


def test_spread_takes_in_turn_from_every_route_and_model() -> None:
    many = [cand(i, "big") for i in range(50)]
    few = [cand(100 + i, "small", "other") for i in range(3)]
    chosen = spread(many + few, 10)
    assert len(chosen) == 10
    assert sum(c.route == "small" for c in chosen) == 3  # all of the small route's pairs
    assert len(set(chosen)) == 10


def test_spread_keeps_its_order_whatever_was_judged_since() -> None:
    everyone = [cand(i) for i in range(40)]
    first = spread(everyone, 10)
    judged = set(first[:4])  # an interrupted run judged four of its ten
    again = spread([c for c in everyone if c not in judged], 6)
    assert again == first[4:]


def test_select_gives_noise_pairs_a_quarter_and_either_role_the_places_the_other_leaves() -> None:
    shadow = [cand(i) for i in range(100)]
    noise = [cand(200 + i, role="noise") for i in range(100)]
    chosen = select(shadow + noise, 20)
    assert sum(c.role == "noise" for c in chosen) == 5
    assert sum(c.role == "shadow" for c in select(shadow[:3] + noise, 20)) == 3
    assert len(select(shadow[:3] + noise, 20)) == 20
    assert sum(c.role == "noise" for c in select(shadow + noise[:2], 20)) == 2


async def test_pairs_that_cannot_be_judged_are_counted_by_why(tmp_path: Path) -> None:
    good, good_rows = pair("x1")
    noise, noise_rows = pair("x2", "noise")
    embedding, embedding_rows = pair("x3", path="/v1/embeddings")
    no_request, no_request_rows = pair("x4", body=b"")
    failed = exchange("x5")
    no_answer = exchange("x6")
    db = write(
        tmp_path / "rec.db",
        [good, noise, embedding, no_request, failed, no_answer, exchange("x7")],
        [
            *good_rows, *noise_rows, *embedding_rows, *no_request_rows,
            response("x5"), response("x5", "shadow", "new", status=500),
            response("x6"), response("x6", "shadow", "new", body=b""),
            response("x7"),  # no copy: not a pair
        ],
    )  # fmt: skip
    con = await store.open_recording(str(db))
    try:
        seen = await pairs.found(con, "judge-1", None, retry_failed=False)
        await con.execute(
            "INSERT INTO judgments VALUES ('x1', 'shadow', 'judge-1', 'primary', 'j', 'new', 0, "
            "'A', '', NULL, 1, 1)"
        )
        await con.execute(
            "INSERT INTO judgments VALUES ('x1', 'shadow', 'judge-1', 'candidate', 'j', 'new', 0, "
            "NULL, NULL, 'not JSON', 1, 1)"
        )
        await con.commit()
        after = await pairs.found(con, "judge-1", None, retry_failed=False)
        retry = await pairs.found(con, "judge-1", None, retry_failed=True)
        other_judge = await pairs.found(con, "judge-2", None, retry_failed=False)
    finally:
        await store.close(con)

    assert {(c.exchange_id, c.role) for c in seen.candidates} == {("x1", "shadow"), ("x2", "noise")}
    assert seen.skipped == {
        pairs.NOT_TEXT: 1,
        pairs.NO_REQUEST: 1,
        pairs.FAILED: 1,
        pairs.NO_ANSWER: 1,
    }
    assert after.judged == 1 and [c.exchange_id for c in after.candidates] == ["x2"]
    (again,) = [c for c in retry.candidates if c.exchange_id == "x1"]
    assert again.todo == ("candidate",) and again.known == (("primary", "A"),)
    assert len(other_judge.candidates) == 2


async def test_the_chosen_pairs_are_shown_as_the_judge_will_see_them(tmp_path: Path) -> None:
    x, rows = pair("x1")
    db = write(tmp_path / "rec.db", [x], rows)
    con = await store.open_recording(str(db))
    try:
        seen = await pairs.found(con, "judge-1", None, retry_failed=False)
        ready, unreadable = await pairs.prepared(con, seen.candidates)
    finally:
        await store.close(con)
    assert unreadable == 0
    (p,) = ready
    assert "question x1" in p.conversation
    assert p.primary == p.other == "answer to x1"


async def test_a_file_that_is_not_there_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    with pytest.raises(StoreError, match="no recording at"):
        await store.open_recording(str(missing))
    assert not missing.exists()
