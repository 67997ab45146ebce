"""The processes the demo starts (`python -m proxy ...`): spawned in their own session, read for
the URL they listen on, watched while the story runs, stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from proxy.demo.errors import DemoError

T = TypeVar("T")

# Cold start of a Python process that imports aiohttp and pydantic takes about a second on a
# laptop; CI machines under load have been seen at five times that.
READY_TIMEOUT: Final = 30.0
STOP_GRACE: Final = 20.0  # above the demo config's shutdown_grace + shadow_grace
LOG_TAIL_LINES: Final = 15


class Child:
    """One process the demo started, its stderr in a log file; stopped by `stop`, always."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @classmethod
    async def spawn(cls, name: str, args: Sequence[str], log: Path) -> Child:
        """`python -m proxy ARGS` with stdout piped (for its URL line), stderr into `log`."""
        err = await asyncio.to_thread(log.open, "wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "proxy",
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                # Its own process group: a Ctrl-C in the terminal reaches the demo alone, which
                # then stops everyone in order (the sidecar first, so it can flush its records).
                start_new_session=True,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        finally:
            err.close()  # the child holds its own copy of the descriptor
        return cls(name, proc, log)

    async def ready(self, pattern: re.Pattern[str]) -> str:
        """The URL from the line the process prints once it listens."""
        out = self.proc.stdout
        if out is None:
            raise DemoError(f"the {self.name} has no stdout to read")
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                while line := await out.readline():
                    m = pattern.search(line.decode(errors="replace").strip())
                    if m:
                        return m.group(1)
                await self.proc.wait()
        except TimeoutError:
            raise DemoError(
                f"the {self.name} did not report listening within {READY_TIMEOUT:g} s"
                + await self.tail()
            ) from None
        raise DemoError(await self.died())

    async def died(self) -> str:
        return f"the {self.name} exited unexpectedly (code {self.proc.returncode})" + (
            await self.tail()
        )

    async def tail(self) -> str:
        lines = await asyncio.to_thread(_last_lines, self.log, LOG_TAIL_LINES)
        shown = "\n".join(f"    {line}" for line in lines) or "    (nothing)"
        return f"; the end of {self.log}:\n{shown}"

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def stop(self) -> int:
        """SIGTERM, the orderly way out; SIGKILL after `STOP_GRACE`."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                async with asyncio.timeout(STOP_GRACE):
                    await self.proc.wait()
            except TimeoutError:
                self.kill()
                await self.proc.wait()
        return self.proc.returncode if self.proc.returncode is not None else -1

    def kill(self) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


def _last_lines(path: Path, n: int) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError:
        return []
    return data.decode(errors="replace").splitlines()[-n:]


async def watching(children: Sequence[Child], coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro`, failing at once, with the culprit's last words, if a child process exits."""
    work = asyncio.ensure_future(coro)
    exits = [asyncio.ensure_future(c.proc.wait()) for c in children]
    try:
        await asyncio.wait([work, *exits], return_when=asyncio.FIRST_COMPLETED)
        for child in children:
            if not child.running:
                raise DemoError(await child.died())
        return work.result()
    finally:
        for task in (work, *exits):
            task.cancel()
        await asyncio.gather(work, *exits, return_exceptions=True)
