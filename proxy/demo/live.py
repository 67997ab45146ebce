"""The demo's processes live: the two fakes and the sidecar started in order, the scenario run
while they are watched, all of them stopped in reverse order whatever happens."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from pathlib import Path
from typing import Final

from proxy.demo.config_file import demo_config
from proxy.demo.errors import DemoError
from proxy.demo.judge import DemoJudge, judge_recording
from proxy.demo.processes import Child, watching
from proxy.demo.providers import NEW, OLD
from proxy.demo.scenario import say, scenario
from proxy.demo.traffic import Call

_FAKE_URL: Final = re.compile(r"^(http://127\.0\.0\.1:\d+/v1)$")
_SIDECAR_URL: Final = re.compile(r"listening on (http://127\.0\.0\.1:\d+/v1)")
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def live(workdir: Path, calls: list[Call], seed: int, caught: list[int]) -> list[str]:
    """Start everything, run the story, stop everything (whatever happens) in reverse order.

    SIGINT, SIGTERM and SIGHUP cancel the story (a second one cuts the cleanup short to SIGKILL);
    `caught` gets the signal's number."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def interrupted(signum: int) -> None:
        caught.append(signum)
        if task is not None:
            task.cancel()

    for signum in _STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError):  # Windows has no loop signal handlers
            loop.add_signal_handler(signum, interrupted, signum)
    logs = workdir / "logs"
    await asyncio.to_thread(logs.mkdir, exist_ok=True)
    config_path = workdir / "config.yaml"
    children: list[Child] = []
    judge = DemoJudge()
    try:
        say("Starting")
        for spec in (OLD, NEW):
            children.append(
                await Child.spawn(
                    f"{spec.name} provider", spec.args(seed), logs / f"{spec.name}.log"
                )
            )
        urls = []
        for spec, child in zip((OLD, NEW), children, strict=True):
            urls.append(await child.ready(_FAKE_URL))
            say(f"  {spec.name} provider  {urls[-1]}  pid {child.proc.pid}  {spec.about()}")
        old_url, new_url = urls
        judge_url = await judge.start()
        say(f"  judge         {judge.url}  in this process  a fake LLM judge for the quality row")
        text = demo_config(old_url, new_url, str(workdir / "sidecar.db"), judge_url)
        await asyncio.to_thread(config_path.write_text, text)
        sidecar = await Child.spawn(
            "sidecar", ["serve", "--config", str(config_path)], logs / "sidecar.log"
        )
        children.append(sidecar)
        sidecar_url = await sidecar.ready(_SIDECAR_URL)
        say(f"  sidecar       {sidecar_url}  pid {sidecar.proc.pid}  config {config_path}")

        problems = await watching(children, scenario(sidecar_url, config_path, calls))

        say(
            "\nStopping: SIGTERM to the sidecar (it drains and flushes its records), then the providers"
        )
        for child in reversed(children):
            code = await child.stop()
            if code != 0:
                raise DemoError(f"the {child.name} stopped with code {code}" + await child.tail())
        say("  all stopped: pids " + ", ".join(str(c.proc.pid) for c in children))
        await judge_recording(config_path, say)
        return problems
    finally:
        try:
            for child in reversed(children):
                await child.stop()
            await judge.close()
        finally:
            for child in children:
                child.kill()
            for signum in _STOP_SIGNALS:
                with contextlib.suppress(NotImplementedError):
                    loop.remove_signal_handler(signum)
