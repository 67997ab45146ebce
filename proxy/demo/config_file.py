"""The sidecar config the demo writes, and the one edit the operator makes to it: the rollback
switch, saved the way an editor saves."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Final

import orjson

from proxy.demo.errors import DemoError
from proxy.demo.judge import JUDGE_KEY, JUDGE_MODEL
from proxy.demo.providers import CHAT_MODEL, EMBEDDING_MODEL, NEW, NEW_KEY, OLD_KEY

_ROLLBACK_LINE: Final = re.compile(r"^rollback:[ \t]*false\b", re.MULTILINE)


def _q(text: str) -> str:
    """A YAML scalar for any path: JSON strings are valid YAML double-quoted scalars."""
    return orjson.dumps(text).decode()


def _judge_upstream(judge_url: str | None) -> str:
    if judge_url is None:
        return ""
    return f"""
  judge:                   # the quality judge's provider: a fake judge in the demo's process
    base_url: {_q(judge_url)}
    api_key: {JUDGE_KEY}"""


def _judge_section(judge_url: str | None) -> str:
    if judge_url is None:
        return ""
    return f"""\
    judge:
      {JUDGE_MODEL}: {{input: 0.15, output: 0.60}}

judge:                     # python -m proxy judge: an LLM compares new's answers with old's
  upstream: judge
  model: {JUDGE_MODEL}
  sample: 200              # pairs judged per run, at most
  budget_usd: 2.0          # a run estimated above this refuses to start
"""


def demo_config(old_url: str, new_url: str, db_path: str, judge_url: str | None = None) -> str:
    """The config a user would write for this migration, commented so it can be read after;
    with `judge_url`, a judge upstream and the `judge` section too."""
    return f"""\
# Written by `python -m proxy demo`. The sidecar reloads this file when it changes:
# the demo flips `rollback` halfway, as you would in an editor.

listen:
  host: 127.0.0.1
  port: 0                  # any free port; the sidecar prints the one it got

upstreams:
  old:                     # the provider the app uses today
    base_url: {_q(old_url)}
    api_key: {OLD_KEY}     # sent instead of the app's own key
  new:                     # the gateway being tried: its own model ids
    base_url: {_q(new_url)}
    api_key: {NEW_KEY}
    models:
      {CHAT_MODEL}: {NEW.model_prefix}{CHAT_MODEL}
      {EMBEDDING_MODEL}: {NEW.model_prefix}{EMBEDDING_MODEL}{_judge_upstream(judge_url)}

primary: old               # where `rollback: true` sends everything
split:                     # the canary: one request in ten to the new gateway
  old: 90
  new: 10
rollback: false            # THE SWITCH: the demo sets it to true halfway

routes:
  - path: /v1/embeddings   # vectors from two models don't mix: embeddings stay on old
    split: {{old: 100}}
    shadow: false

shadow:
  upstream: new
  sample: 1.0              # copy every request old serves to new, answer never shown
  streams: true
  max_in_flight: 64
  noise_sample: 0.2        # and one in five to the serving provider again: the noise floor

record:
  path: {_q(db_path)}
  bodies: {{request: full, response: full}}

limits:
  shutdown_grace: 10
  shadow_grace: 5

log:
  level: info
  requests: true           # one JSON line per request, in logs/sidecar.log

report:
  pricing:                 # USD per million tokens, by upstream and requested model
    old:
      {CHAT_MODEL}: {{input: 0.15, output: 0.60}}
      {EMBEDDING_MODEL}: {{input: 0.02, output: 0}}
    new:
      {CHAT_MODEL}: {{input: 0.12, output: 0.48}}
      {EMBEDDING_MODEL}: {{input: 0.02, output: 0}}
{_judge_section(judge_url)}"""


def set_rollback(path: Path) -> float:
    """Flip the switch the way an editor saves: new text to a temp file, then rename over.
    Returns the moment of the rename (`time.perf_counter`)."""
    text = path.read_text()
    flipped, n = _ROLLBACK_LINE.subn("rollback: true", text, count=1)
    if n != 1:
        raise DemoError(f"no line `rollback: false` in {path} to flip")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(flipped)
    os.replace(tmp, path)
    return time.perf_counter()
