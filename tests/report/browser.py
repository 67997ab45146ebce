"""Headless Chromium over the DevTools protocol, for tests that must see a page render.

`--dump-dom` prints the page but not the console's levels (current Chromium logs nothing
useful to stderr), so a page whose script throws still passes. Here the test talks to the
browser on a websocket instead: it opens a tab, enables `Runtime` and `Log`, navigates,
and every console error, failed assertion and uncaught exception lands in `Page.errors`.

    async with chromium(tmp_path) as browser:
        page = await browser.open(path.as_uri())
        assert page.errors == []
        assert await page.evaluate("document.title") == "..."

The DevTools port is chosen by Chromium (port 0) on 127.0.0.1 and read from the profile's
DevToolsActivePort file; the browser runs in a process group of its own, killed on the way
out, and every wait is bounded, so a test can fail but never hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

INSTALL = (
    "headless Chromium is needed to render the page and is not installed: "
    "apt-get install chromium (Debian; scripts/test installs it when run as root)"
)
FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium refuses its sandbox
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    # Nothing but the page under test may touch the network.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
WAIT = 30.0  # seconds, for any one step: starting, a command's answer, a page's load event


def chromium_path() -> str:
    """Where Debian's (or Ubuntu's) Chromium is; the test fails, not skips, without it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(INSTALL, pytrace=False)
    return found


class BrowserError(Exception):
    """Chromium did not start, answered a command with an error, or went away."""


@dataclass(frozen=True, slots=True)
class ConsoleError:
    kind: str  # "exception", "console.error", "console.assert" or "log" (the browser's own)
    text: str
    url: str = ""


class _Connection:
    """One DevTools websocket: answers matched to commands by id, events routed by session."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.create_task(self._read())

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        key = next(self._ids)
        message: dict[str, Any] = {"id": key, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        answer = asyncio.get_running_loop().create_future()
        self._answers[key] = answer
        try:
            await self._ws.send_str(orjson.dumps(message).decode())
            async with asyncio.timeout(WAIT):
                return await answer
        finally:
            self._answers.pop(key, None)

    def route(self, session: str, page: Page) -> None:
        self._pages[session] = page

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                data = orjson.loads(msg.data)
                if "id" in data:
                    self._answer(data)
                elif (page := self._pages.get(data.get("sessionId", ""))) is not None:
                    page.on_event(data["method"], data.get("params", {}))
        finally:
            gone = BrowserError("Chromium closed the DevTools connection")
            for answer in self._answers.values():
                if not answer.done():
                    answer.set_exception(gone)

    def _answer(self, data: dict[str, Any]) -> None:
        answer = self._answers.get(data["id"])
        if answer is None or answer.done():
            return
        if "error" in data:
            answer.set_exception(BrowserError(f"DevTools said {data['error']}"))
        else:
            answer.set_result(data.get("result", {}))


class Page:
    """One tab. `errors` gathers what the console would show in red; `requests`, every URL
    the page asked for."""

    def __init__(self, connection: _Connection, session: str) -> None:
        self._connection = connection
        self._session = session
        self._loaded = asyncio.Event()
        self.errors: list[ConsoleError] = []
        self.requests: list[str] = []

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._connection.send(method, params, self._session)

    async def goto(self, url: str) -> None:
        """Navigate and wait for the load event (scripts in the page have run by then)."""
        self._loaded.clear()
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        async with asyncio.timeout(WAIT):
            await self._loaded.wait()

    async def evaluate(self, expression: str) -> Any:
        """The expression's value (awaited if a promise), as JSON would carry it."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise BrowserError(
                f"{expression!r} threw: {_exception_text(result['exceptionDetails'])}"
            )
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll until the expression is truthy; its last value either way (charts draw late)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (value := await self.evaluate(expression)) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return value

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append(
                ConsoleError("exception", _exception_text(details), details.get("url", ""))
            )
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(_remote_text(arg) for arg in params.get("args", []))
            self.errors.append(ConsoleError(f"console.{params['type']}", text))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(ConsoleError("log", entry.get("text", ""), entry.get("url", "")))
        elif method == "Network.requestWillBeSent":
            self.requests.append(params.get("request", {}).get("url", ""))


def _exception_text(details: dict[str, Any]) -> str:
    exception = details.get("exception") or {}
    return str(exception.get("description") or details.get("text", "exception"))


def _remote_text(arg: dict[str, Any]) -> str:
    if "value" in arg:
        return str(arg["value"])
    return str(arg.get("description") or arg.get("type", ""))


class Browser:
    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    async def open(self, url: str) -> Page:
        """A new tab, listening before it loads anything, then navigated to `url`."""
        target = await self._connection.send("Target.createTarget", {"url": "about:blank"})
        attached = await self._connection.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self._connection, attached["sessionId"])
        self._connection.route(attached["sessionId"], page)
        for domain in ("Page", "Runtime", "Log", "Network"):
            await page.send(f"{domain}.enable")
        await page.goto(url)
        return page


@contextlib.asynccontextmanager
async def chromium(workdir: Path) -> AsyncIterator[Browser]:
    """A headless Chromium with a fresh profile under `workdir`, killed on the way out."""
    profile = workdir / "chromium-profile"
    log = workdir / "chromium.log"
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            chromium_path(),
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,  # its own group: the renderers and zygote die with it
        )
    try:
        endpoint = await _devtools_endpoint(profile, proc, log)
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(WAIT):
                ws = await http.ws_connect(endpoint, max_msg_size=16 * 2**20)
            connection = _Connection(ws)
            try:
                yield Browser(connection)
            finally:
                await connection.close()
    finally:
        await _kill(proc)


async def _devtools_endpoint(profile: Path, proc: asyncio.subprocess.Process, log: Path) -> str:
    """ws://127.0.0.1:<port>/devtools/browser/<id>, once Chromium has written it down."""
    port_file = profile / "DevToolsActivePort"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while loop.time() < deadline:
        lines = port_file.read_text().split() if port_file.exists() else []
        if len(lines) >= 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:]
    raise BrowserError(f"Chromium did not open its DevTools port (exit {proc.returncode}):\n{tail}")


async def _kill(proc: asyncio.subprocess.Process) -> None:
    # The whole group, even if the browser itself has exited: its renderers may not have.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    # A browser that ignores SIGKILL is a broken machine; say so rather than wait forever.
    async with asyncio.timeout(WAIT):
        await proc.wait()
