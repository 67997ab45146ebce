"""`python -m proxy fake`, run in a subprocess as the benchmark and the demo run it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp

KEY = "sk-fake-test-key-0123456789"


async def test_cli_prints_its_url_and_exits_0_on_sigterm() -> None:
    code = "import sys; from proxy.fakes.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["--name", "cli", "--api-key", KEY, "--models", "m1,m2", "--variant", "1"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *argv, stdout=asyncio.subprocess.PIPE, env=os.environ.copy()
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http,
            http.get(f"{url}/models") as resp,
        ):
            assert [m["id"] for m in (await resp.json())["data"]] == ["m1", "m2"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cli_serves_the_api_shape_it_is_asked_for() -> None:
    code = "import sys; from proxy.fakes.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["--api", "anthropic", "--api-key", KEY, "--quality", "worse"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *argv, stdout=asyncio.subprocess.PIPE, env=os.environ.copy()
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        messages = [{"role": "user", "content": "hi"}]
        body = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": messages}
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.post(f"{url}/messages", json=body) as resp,
        ):
            answer = await resp.json()
        assert answer["type"] == "message" and "weather" in answer["content"][0]["text"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
