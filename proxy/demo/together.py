"""Coroutines run together in a task group that owns them; the first failure cancels the rest
and is raised as itself, so callers see a `DemoError`, not an exception group."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
U = TypeVar("U")


async def all_of(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Their results, in order."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(c) for c in coros]
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return [t.result() for t in tasks]


async def both(a: Coroutine[Any, Any, T], b: Coroutine[Any, Any, U]) -> tuple[T, U]:
    """`all_of` for two coroutines of different types."""
    try:
        async with asyncio.TaskGroup() as tg:
            ta, tb = tg.create_task(a), tg.create_task(b)
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return ta.result(), tb.result()
