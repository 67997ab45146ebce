"""Observers see every attempt, copy and refusal; a broken one never breaks a call."""

from __future__ import annotations

from typing import Any

import aiohttp
from structlog.testing import capture_logs

from tests.conftest import base_config

MESSAGES = [{"role": "user", "content": "hi"}]


class Seen:
    def __init__(self) -> None:
        self.notes: list[tuple[str, Any]] = []

    def served(self, call: Any, attempt: Any, meter: Any) -> None:
        self.notes.append(("served", (attempt.role, attempt.upstream.name, meter.status)))

    def copied(self, call_id: str, attempt: Any, meter: Any) -> None:
        self.notes.append(("copied", (attempt.role, attempt.upstream.name, meter.status)))

    def refused(self, arrival: Any, error: Any) -> None:
        self.notes.append(("refused", error.status))


class Broken(Seen):
    def served(self, call: Any, attempt: Any, meter: Any) -> None:
        raise RuntimeError("a bug in an observer")


async def test_observers_see_attempts_copies_and_refusals(old, new, make_sidecar, sdk) -> None:
    shadow = {"upstream": "new", "sample": 1.0}
    sc = await make_sidecar(base_config(old, new, shadow=shadow))
    seen, broken = Seen(), Broken()
    sc.shadower.observers.add(broken)
    sc.shadower.observers.add(seen)
    with capture_logs() as logs:
        for _ in range(2):
            await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as http, http.get(f"http://{sc.host}:{sc.port}/nope") as r:
        assert r.status == 404
    await sc.shadower.close(5)
    assert seen.notes.count(("served", ("primary", "old", 200))) == 2
    assert seen.notes.count(("copied", ("shadow", "new", 200))) == 2
    assert ("refused", 404) in seen.notes
    faults = [e for e in logs if e["event"].startswith("observer failed")]
    assert len(faults) == 1  # logged once, not once a call
