"""Config validation: every refusal names the file, the key path and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy import config as config_mod
from proxy.errors import ConfigError

GOOD = """
upstreams:
  a: {base_url: "http://127.0.0.1:1/v1", api_key: "${KEY_A}"}
  b: {base_url: "https://gw.example/v1/", models: {gpt-4o: p/gpt-4o}}
primary: a
split: {a: 90, b: 10}
"""


def refused(text: str, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as e:
        config_mod.parse(text.encode(), "cfg.yaml", env={"KEY_A": "sk-a"} if env is None else env)
    assert str(e.value).startswith("cfg.yaml: ")
    return e.value.problems


def test_a_good_config_loads_with_env_interpolated() -> None:
    cfg = config_mod.parse(GOOD.encode(), "cfg.yaml", env={"KEY_A": "sk-a"})
    assert cfg.upstreams["a"].api_key is not None
    assert cfg.upstreams["a"].api_key.get_secret_value() == "sk-a"
    assert cfg.upstreams["b"].base_url == "https://gw.example/v1"
    assert cfg.default_split() == {"a": 90, "b": 10}


def test_missing_env_var_is_named() -> None:
    assert refused(GOOD, env={}) == [
        ("upstreams.a.api_key", "environment variable KEY_A is not set")
    ]


def test_env_default_is_used_when_unset() -> None:
    cfg = config_mod.parse(GOOD.replace("${KEY_A}", "${KEY_A:-fallback}").encode(), "c", env={})
    assert cfg.upstreams["a"].api_key is not None
    assert cfg.upstreams["a"].api_key.get_secret_value() == "fallback"


@pytest.mark.parametrize(
    ("edit", "key", "reason"),
    [
        (("primary: a", "primary: z"), "primary", "is not one of upstreams"),
        (("{a: 90, b: 10}", "{a: 90, c: 10}"), "split.c", "not one of upstreams"),
        (("{a: 90, b: 10}", "{a: -1, b: 10}"), "split.a", "greater than or equal to 0"),
        (("{a: 90, b: 10}", "{a: 0, b: 0}"), "split", "add up to 0"),
        (("{a: 90, b: 10}", "{a: .inf, b: 10}"), "split.a", "finite number"),
        (("{a: 90, b: 10}", "{a: .nan, b: 10}"), "split.a", "finite number"),
        (
            ("primary: a", "primary: a\nshadow: {upstream: b, sample: .nan}"),
            "shadow.sample",
            "finite number",
        ),
        (("models:", "timeouts: {idle: .inf}, models:"), "upstreams.b.timeouts.idle", "finite"),
        (("https://gw.example/v1/", "gw.example"), "upstreams.b.base_url", "http:// or https://"),
        (("primary: a", "primary: a\nspilt: {a: 1}"), "spilt", "unknown key"),
        (("models:", "modles:"), "upstreams.b.modles", "unknown key"),
    ],
)
def test_each_problem_names_key_and_reason(edit: tuple[str, str], key: str, reason: str) -> None:
    problems = refused(GOOD.replace(*edit))
    assert any(k == key and reason in r for k, r in problems), problems


def test_missing_primary_is_refused() -> None:
    problems = refused(GOOD.replace("primary: a\n", ""))
    assert ("primary", "Field required") in problems


def test_keys_never_appear_in_errors() -> None:
    text = GOOD.replace("split: {a: 90, b: 10}", "split: {a: '${KEY_A}'}")
    problems = refused(text, env={"KEY_A": "sk-secret-123"})
    assert "sk-secret-123" not in str(problems)


def test_invalid_yaml_says_where() -> None:
    problems = refused("upstreams: [\n  a: 1")
    assert problems[0][1].startswith("invalid YAML: line")


def test_a_key_given_twice_is_refused_with_both_lines() -> None:
    # The urgent edit: `rollback: true` put at the top while `rollback: false` is still below.
    # YAML keeps the last one, so the switch would silently stay off.
    problems = refused("rollback: true\n" + GOOD + "rollback: false\n")
    assert problems == [
        (
            "rollback",
            "given twice (lines 1 and 8); YAML would silently keep the last one, so say it once",
        )
    ]


def test_a_nested_key_given_twice_is_named_by_its_path() -> None:
    text = GOOD.replace("split: {a: 90, b: 10}", "split:\n  a: 90\n  b: 10\n  a: 0")
    assert [k for k, _ in refused(text)] == ["split.a"]
    text = GOOD.replace("{gpt-4o: p/gpt-4o}", "{gpt-4o: p/gpt-4o, gpt-4o: q/gpt-4o}")
    assert [k for k, _ in refused(text)] == ["upstreams.b.models.gpt-4o"]


def test_merge_keys_and_aliases_are_not_duplicates() -> None:
    text = """
base: &base {base_url: "http://127.0.0.1:1/v1", api_key: "k"}
upstreams:
  a: *base
  b: {<<: *base, base_url: "http://127.0.0.1:2/v1"}
primary: a
"""
    # `base` is an unknown key, refused for that alone; a merge overridden is no duplicate.
    assert refused(text) == [("base", "unknown key")]
    assert [k for k, _ in refused("a: &x [*x]\na: 1\n")] == ["a"]  # a recursive alias ends


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        config_mod.load(str(tmp_path / "nope.yaml"))
    assert "cannot read" in str(e.value)


def test_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    cfg, _ = config_mod.load(str(root / "config.example.yaml"))
    assert cfg.primary in cfg.upstreams


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=10,
    )
)
def test_arbitrary_yaml_is_refused_cleanly_or_accepted(doc: object) -> None:
    import yaml

    try:
        config_mod.parse(yaml.safe_dump(doc).encode(), "fuzz.yaml", env={})
    except ConfigError as e:
        assert str(e).startswith("fuzz.yaml")


@given(
    st.lists(
        st.sampled_from(
            [
                *("a:", " b:", "  - x", "&n ", "*n", "<<: *n", "? k", ": v", "{", "}", "[", "]"),
                *("rollback: true", "rollback: false", "'q'", '"q"', "\t", "#c", "---", "1: 2"),
                *(",", "!!str"),
            ]
        ),
        max_size=12,
    ).map(lambda parts: "\n".join(parts))
)
def test_arbitrary_text_is_refused_with_a_config_error_or_accepted(text: str) -> None:
    # Anchors, aliases, merges, complex keys and broken syntax: the duplicate-key walk and the
    # YAML reader end in a ConfigError naming the file, never another exception.
    try:
        config_mod.parse(text.encode(), "fuzz.yaml", env={})
    except ConfigError as e:
        assert str(e).startswith("fuzz.yaml")


# -- provider shapes and routes ------------------------------------------------------------

SHAPES = """
upstreams:
  openai: {base_url: "http://127.0.0.1:1/v1"}
  claude_old: {base_url: "http://127.0.0.1:2/v1", api: anthropic}
  claude_new: {base_url: "http://127.0.0.1:3/v1", api: anthropic, auth_header: Authorization}
primary: openai
routes:
  - {path: /v1/messages, primary: claude_old, split: {claude_old: 90, claude_new: 10}}
"""


def test_an_anthropic_upstream_sends_its_key_as_x_api_key_unless_told_otherwise() -> None:
    cfg = config_mod.parse(SHAPES.encode(), "cfg.yaml", env={})
    assert cfg.upstreams["openai"].key_header == "authorization"
    assert cfg.upstreams["claude_old"].key_header == "x-api-key"
    assert cfg.upstreams["claude_new"].key_header == "authorization"


def test_a_route_whose_rollback_cannot_serve_it_is_refused_naming_it() -> None:
    text = SHAPES.replace("primary: claude_old, ", "")
    assert refused(text) == [
        (
            "routes.0",
            "under rollback this route goes to 'openai' (api: openai), which cannot serve "
            "/v1/messages: give the route a `primary` that can",
        )
    ]


def test_a_route_that_splits_to_an_upstream_that_cannot_serve_it_is_refused() -> None:
    text = SHAPES.replace("claude_new: 10", "openai: 10")
    assert refused(text) == [
        ("routes.0.split.openai", "'openai' (api: openai) cannot serve /v1/messages")
    ]


def test_a_route_primary_must_be_an_upstream() -> None:
    assert refused(SHAPES.replace("primary: claude_old", "primary: claude")) == [
        (
            "routes.0.primary",
            "'claude' is not one of upstreams ['claude_new', 'claude_old', 'openai']",
        )
    ]


def test_an_unknown_api_is_refused() -> None:
    problems = refused(SHAPES.replace("api: anthropic}", "api: gemini}", 1))
    assert problems[0][0] == "upstreams.claude_old.api"


def test_check_flags_embeddings_the_split_sends_to_different_models() -> None:
    text = """
upstreams:
  openai: {base_url: "http://127.0.0.1:1/v1"}
  assisters:
    base_url: "http://127.0.0.1:2/v1"
    models: {text-embedding-3-large: bge-large, text-embedding-3-small: openai/text-embedding-3-small}
primary: openai
split: {openai: 90, assisters: 10}
"""
    cfg = config_mod.parse(text.encode(), "cfg.yaml", env={})
    [caution] = config_mod.cautions(cfg)
    assert "text-embedding-3-large" in caution and "bge-large" in caution
    # A provider's prefix on the same model is the same model; a route off embeddings is fine.
    routed = text + "routes:\n  - {path: /v1/embeddings, split: {openai: 1}}\n"
    assert config_mod.cautions(config_mod.parse(routed.encode(), "cfg.yaml", env={})) == []


def test_failover_reads_statuses_as_yaml_writes_them() -> None:
    text = GOOD + "failover: {to: primary, when: [connect, 5xx, 429]}\n"
    cfg = config_mod.parse(text.encode(), "cfg.yaml", env={"KEY_A": "sk-a"})
    assert cfg.failover is not None and cfg.failover.when == ["connect", "5xx", "429"]
    assert refused(GOOD + "failover: {to: nowhere}\n")[0][0] == "failover.to"


def test_an_app_key_too_short_to_guard_anything_is_refused() -> None:
    text = GOOD.replace("upstreams:", "listen: {keys: [short]}\nupstreams:")
    assert refused(text)[0][0] == "listen.keys"
