"""The config the demo writes, and its rollback switch, without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy import config as config_mod
from proxy.demo.config_file import demo_config, set_rollback
from proxy.demo.errors import DemoError


def write(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    db = str(tmp_path / "a dir with spaces" / "sidecar.db")
    path.write_text(demo_config("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1", db))
    return path


def test_the_demo_config_is_one_the_sidecar_accepts(tmp_path: Path) -> None:
    cfg = config_mod.parse(write(tmp_path).read_bytes(), "config.yaml")
    assert cfg.split == {"old": 90, "new": 10} and cfg.rollback is False


def test_set_rollback_flips_the_switch_and_nothing_else(tmp_path: Path) -> None:
    path = write(tmp_path)
    before = path.read_text()
    set_rollback(path)
    after = path.read_text()
    assert config_mod.parse(after.encode(), "config.yaml").rollback is True
    assert after == before.replace("rollback: false", "rollback: true", 1)
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["config.yaml"]


def test_set_rollback_refuses_a_config_without_the_switch(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("rollback: true\n")
    with pytest.raises(DemoError, match="no line `rollback: false`"):
        set_rollback(path)
