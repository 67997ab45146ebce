"""Fixtures the recorder's tests share: a database path and recorders closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.record.writer import Recorder, WriterSettings

FAST: dict[str, Any] = {"busy_timeout": 0.1, "retry_interval": 0.02, "linger": 0.0}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sidecar.db"


@pytest.fixture
async def recorders() -> AsyncIterator[Callable[..., Recorder]]:
    made: list[Recorder] = []

    def make(path: Path, **options: Any) -> Recorder:
        made.append(Recorder(str(path), WriterSettings(**{**FAST, **options})))
        return made[-1]

    yield make
    for recorder in made:
        await recorder.close(timeout=1.0)
