"""The replay's rows in the recording: the run, and each answer with the link to its run.

An answer is written with its link in one transaction as soon as it is in, so an interrupted
run resumes without sending a written one again; a call in flight when the run stopped at
once is sent again by the next run.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import aiosqlite

from proxy.record.rows import Response


class Run(NamedTuple):
    """The `replay_runs` row, its fields in column order."""

    run: str
    ts: float
    upstream: str
    selection: str  # the command's filters, as JSON


_RUN: Final = "INSERT OR IGNORE INTO replay_runs VALUES (?, ?, ?, ?)"
_ANSWER: Final = (
    f"INSERT OR REPLACE INTO responses VALUES ({', '.join('?' * len(Response._fields))})"
)
_LINK: Final = "INSERT OR REPLACE INTO replays VALUES (?, ?, ?)"


async def begin(db: aiosqlite.Connection, run: Run) -> Run:
    """The run's row; a run named again (resumed) keeps its first row, which is returned."""
    await db.execute(_RUN, run)
    await db.commit()
    async with db.execute("SELECT * FROM replay_runs WHERE run = ?", (run.run,)) as cursor:
        row = await cursor.fetchone()
    return run if row is None else Run(*row)


async def add(db: aiosqlite.Connection, run: str, answer: Response) -> None:
    await db.execute(_ANSWER, answer)
    await db.execute(_LINK, (answer.exchange_id, run, answer.ts))
    await db.commit()
