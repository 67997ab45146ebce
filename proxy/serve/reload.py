"""Watch the config file and call back on change; polling stat survives every way of saving.

Editors that write a temp file and rename it, in-place writes, and a Kubernetes ConfigMap
(a symlink whose target directory is swapped) all change the stat of the resolved file:
inode, size or mtime. Polling four times a second costs a stat call and no dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("proxy.reload")

Signature = tuple[str, int, int, int, int] | None


def signature(path: str) -> Signature:
    try:
        st = os.stat(path)  # follows symlinks, so a swapped ConfigMap target shows up
    except OSError:
        return None
    return (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ConfigWatcher:
    def __init__(
        self, path: str, on_change: Callable[[], Awaitable[object]], interval: float = 0.25
    ) -> None:
        self.path = path
        self.interval = interval
        self._on_change = on_change
        self._last: Signature = signature(path)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                sig = await asyncio.to_thread(signature, self.path)
                if sig != self._last and sig is not None:
                    self._last = sig
                    await self._on_change()
            except Exception:  # a watcher that dies silently is worse than a logged error
                log.exception("config watch failed")

    def seen(self) -> None:
        """Take the file as it is now as known (after a reload triggered elsewhere)."""
        self._last = signature(self.path)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
