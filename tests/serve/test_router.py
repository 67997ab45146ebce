"""The pure routing decisions: weights, zero weights, sticky points, route matching, rollback."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from proxy import config as config_mod
from proxy.serve.affinity import Affinity
from proxy.serve.router import Choice, build_table, choose, split_of, sticky_point
from tests.serve.calls import CONFIG as CONFIG_TEXT
from tests.serve.calls import make_call, runtime

CFG = b"""
upstreams:
  a: {base_url: http://127.0.0.1:1/v1}
  b: {base_url: http://127.0.0.1:2/v1}
primary: a
split: {a: 90, b: 10}
shadow: {upstream: b, sample: 0.5}
routes:
  - {path: /v1/embeddings, split: {a: 1}, shadow: false}
  - {path: /v1/chat/completions, model: "gpt-4o*", split: {b: 1}}
"""


def test_pick_follows_the_cumulative_table() -> None:
    s = split_of({"a": 90, "b": 10})
    assert s.pick(0.0) == "a" and s.pick(0.899) == "a"
    assert s.pick(0.9) == "b" and s.pick(0.999999) == "b"


@given(
    st.dictionaries(st.sampled_from("abcdef"), st.floats(0, 1000), min_size=1).filter(
        lambda d: sum(d.values()) > 0
    )
)
def test_zero_weights_are_never_picked(weights: dict[str, float]) -> None:
    s = split_of(weights)
    picked = {s.pick(i / 1000) for i in range(1000)}
    assert all(weights[n] > 0 for n in picked)


@given(
    st.dictionaries(
        st.sampled_from("abcdef"), st.floats(0, allow_infinity=False, allow_nan=False), min_size=1
    ).filter(lambda d: max(d.values()) > 0)
)
def test_shares_follow_the_weights_up_to_the_float_maximum(weights: dict[str, float]) -> None:
    # 1e308 + 1e308 is infinity: added up unscaled, every share was 0 and bounds were NaN.
    s = split_of(weights)
    shares = s.shares()
    assert abs(sum(shares.values()) - 1.0) < 1e-9
    assert all(0.0 <= v <= 1.0 for v in shares.values())  # 1e-300 next to 1e300 rounds to 0
    assert list(s.bounds) == sorted(s.bounds) and s.bounds[-1] == 1.0
    assert split_of({"a": 1e308, "b": 1e308}).shares() == {"a": 0.5, "b": 0.5}


@given(st.floats(0, 1, exclude_max=True))
def test_every_point_lands_on_a_listed_upstream(u: float) -> None:
    assert split_of({"a": 1, "b": 2, "c": 0}).pick(u) in {"a", "b"}


def test_sticky_points_are_stable_and_spread() -> None:
    assert sticky_point("alice") == sticky_point("alice")
    s = split_of({"a": 50, "b": 50})
    counts = Counter(s.pick(sticky_point(f"user-{i}")) for i in range(4000))
    assert 1800 < counts["a"] < 2200


def test_raising_the_canary_keeps_its_users() -> None:
    before, after = split_of({"a": 90, "b": 10}), split_of({"a": 80, "b": 20})
    users = [f"u{i}" for i in range(2000)]
    in_canary = {u for u in users if before.pick(sticky_point(u)) == "b"}
    assert in_canary and all(after.pick(sticky_point(u)) == "b" for u in in_canary)


def test_routes_match_by_path_prefix_and_model_glob() -> None:
    table = build_table(config_mod.parse(CFG, "t.yaml"))
    assert table.match("/v1/embeddings", "x").name == "/v1/embeddings"
    assert table.match("/v1/embeddingsX", None).name == "default"
    assert table.match("/v1/chat/completions", "gpt-4o-mini").split.names == ("b",)
    assert table.match("/v1/chat/completions", "o3").name == "default"
    assert table.match("/v1/embeddings", None).shadow is None
    assert table.match("/v1/chat/completions", "gpt-4o").shadow is not None


def test_rollback_sends_every_route_to_the_primary_and_stops_shadows() -> None:
    cfg = config_mod.parse(CFG + b"rollback: true\n", "t.yaml")
    table = build_table(cfg)
    for route in table.routes:
        assert route.split.names == ("a",)
        assert route.shadow is None


def test_shadow_can_be_kept_during_rollback() -> None:
    text = (
        CFG.replace(b"sample: 0.5}", b"sample: 0.5, during_rollback: true}") + b"rollback: true\n"
    )
    table = build_table(config_mod.parse(text, "t.yaml"))
    assert table.routes[-1].shadow is not None


# -- choose: the route step, over a whole call -------------------------------------------


def test_a_call_naming_an_object_goes_where_it_was_made_over_its_sticky_key() -> None:
    rt = runtime()
    affinity = Affinity()
    affinity.learn("resp_1", "new")
    # This user's point lands on "old"; the response it continues lives at "new".
    user = next(u for u in (f"user-{i}" for i in range(100)) if rt.table.routes[-1].split.pick(sticky_point(u)) == "old")  # fmt: skip
    body = {"model": "gpt-4o-mini", "previous_response_id": "resp_1", "input": "more"}
    call = make_call(rt, tail="/responses", body=body, sticky=user)
    assert choose(call, affinity, 0.0) == Choice("new", "object")
    assert choose(make_call(rt, tail="/responses", sticky=user), affinity, 0.0) == Choice("old", "sticky")  # fmt: skip


def test_a_call_naming_an_object_in_its_path_goes_where_it_was_made() -> None:
    rt = runtime()
    affinity = Affinity()
    affinity.learn("file_9", "new")
    call = make_call(rt, method="GET", tail="/files/file_9/content")
    assert choose(call, affinity, 0.0) == Choice("new", "object")


def test_rollback_sends_even_an_objects_calls_to_the_primary() -> None:
    rt = runtime(CONFIG_TEXT + b"rollback: true\n")
    affinity = Affinity()
    affinity.learn("resp_1", "new")
    call = make_call(rt, tail="/responses", body={"previous_response_id": "resp_1"}, sticky="u")
    assert choose(call, affinity, 0.99) == Choice("old", "sticky")
    assert choose(make_call(rt), affinity, 0.99) == Choice("old", "weight")


def test_an_object_of_an_upstream_no_longer_configured_is_routed_by_weight() -> None:
    rt = runtime()
    affinity = Affinity()
    affinity.learn("resp_1", "gone")
    call = make_call(rt, tail="/responses", body={"previous_response_id": "resp_1"})
    assert choose(call, affinity, 0.99) == Choice("new", "weight")


def test_the_same_sticky_key_always_gets_the_same_upstream_whatever_the_draw() -> None:
    rt = runtime()
    picks = {
        choose(make_call(rt, sticky="user-42"), Affinity(), u / 10).upstream for u in range(10)
    }
    assert len(picks) == 1


def test_without_a_sticky_key_the_draw_decides_by_weight() -> None:
    rt = runtime()
    assert choose(make_call(rt), Affinity(), 0.49) == Choice("old", "weight")
    assert choose(make_call(rt), Affinity(), 0.5) == Choice("new", "weight")


def test_the_route_a_call_matched_gives_its_split() -> None:
    rt = runtime(CONFIG_TEXT + b"routes:\n  - {path: /v1/embeddings, split: {new: 1}}\n")
    call = make_call(rt, tail="/embeddings", body={"model": "m", "input": "x"})
    assert call.route.name == "/v1/embeddings"
    assert choose(call, Affinity(), 0.0) == Choice("new", "weight")
