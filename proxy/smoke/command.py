"""`python -m proxy smoke`: the target from the config or the command line, the number of calls
said before any is made, then a row per check, as text or JSON; non-zero when a row fails.

The key is read from the config (its `${VAR}`), `--api-key-env VAR` or `--api-key`, and never
printed: rows quote answers, and an answer that quoted it has it replaced first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import asdict

import orjson
from pydantic import SecretStr, ValidationError

from proxy import config as config_mod
from proxy.config import SmokeSettings, UpstreamConfig
from proxy.smoke.checks import LATENCY, NAMES, Row
from proxy.smoke.run import Plan, Target, models_for, plan, run

_MARK = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}


class UsageError(Exception):
    """The command line or config cannot name a target: exit 2."""


def _only(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise UsageError(f"--only: no check {unknown[0]!r}; the checks are {', '.join(NAMES)}")
    return names


def _from_url(args: argparse.Namespace) -> Target:
    if args.config or args.upstream:
        raise UsageError("give --config and --upstream, or --base-url, not both")
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise UsageError(f"--api-key-env: {args.api_key_env} is not set")
    elif args.api_key:
        key = args.api_key
    else:
        raise UsageError("--base-url needs a key: --api-key-env VAR (or --api-key KEY)")
    if not args.model:
        raise UsageError("--base-url needs --model ID (the model to test with)")
    try:
        cfg = UpstreamConfig(base_url=args.base_url, api=args.api, api_key=SecretStr(key))
    except ValidationError as e:
        raise UsageError(f"--base-url: {e.errors()[0]['msg']}") from None
    return Target("gateway", cfg, models_for(cfg, SmokeSettings(), args.model))


def target(args: argparse.Namespace) -> Target:
    """The upstream the command names; raises `UsageError` (and `ConfigError` for the file)."""
    if args.base_url:
        return _from_url(args)
    if not args.config or not args.upstream:
        raise UsageError("name the target: --config PATH --upstream NAME, or --base-url URL")
    cfg, _ = config_mod.load(args.config)
    up = cfg.upstreams.get(args.upstream)
    if up is None:
        raise UsageError(f"--upstream: {args.upstream!r} is not one of {sorted(cfg.upstreams)}")
    settings = up.smoke or SmokeSettings()
    return Target(args.upstream, up, models_for(up, settings, args.model), settings)


def _intro(p: Plan) -> str:
    t = p.target
    models = ", ".join(f"{k} {m}" for k, m in t.models.items()) or "none"
    sent = [r for r in p.rows if r.attempt is not None]
    extra = [
        what
        for name, what in (
            ("wrong_key", "1 with a wrong key"),
            ("wrong_model", "1 naming a model that does not exist"),
        )
        if any(r.spec is not None and r.spec.name == name for r in sent)
    ]
    skipped = [r.spec.name if r.spec else LATENCY for r in p.rows if r.attempt is None and r.skip]
    return (
        f"Smoke test of upstream {t.name} at {t.shown_url} (api: {t.cfg.api}); models: {models}.\n"
        f"{p.calls} calls" + (f" ({', '.join(extra)})" if extra else "")
        + (f"; skipped: {', '.join(skipped)}." if skipped else ".")
    )  # fmt: skip


def render_text(rows: list[Row]) -> str:
    out = []
    for r in rows:
        out.append(f"  {_MARK[r.status]}  {r.check:<17} {r.reason}")
        e = r.evidence
        if r.status == "fail" and (e.status is not None or e.field or e.excerpt):
            said = [f"HTTP {e.status}" if e.status is not None else "no answer"]
            if e.field:
                said.append(f"field {e.field}")
            if e.excerpt:
                said.append(repr(e.excerpt))
            out.append(f"  {'':4}  {'':<17} {'; '.join(said)}")
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "fail", "skip")}
    out.append(
        f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped: "
        + ("FAIL" if counts["fail"] else "PASS")
    )
    return "\n".join(out)


def render_json(p: Plan, rows: list[Row]) -> bytes:
    t = p.target
    return orjson.dumps(
        {
            "upstream": t.name,
            "base_url": t.shown_url,
            "api": t.cfg.api,
            "models": dict(t.models),
            "calls": p.calls,
            "ok": not any(r.status == "fail" for r in rows),
            "rows": [asdict(r) for r in rows],
        },
        option=orjson.OPT_INDENT_2,
    )


async def _run(p: Plan) -> list[Row]:
    try:
        return await run(p)
    finally:
        await p.close()


def main(args: argparse.Namespace) -> int:
    try:
        only = _only(args.only)
        t = target(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "chat" not in t.models:
        print("error: no chat model to test with: name one with --model ID", file=sys.stderr)
        return 2
    chosen = plan(t, only)
    print(_intro(chosen), file=sys.stderr if args.json else sys.stdout, flush=True)
    rows = asyncio.run(_run(chosen))
    if args.json:
        sys.stdout.buffer.write(render_json(chosen, rows) + b"\n")
    else:
        print(render_text(rows))
    return 1 if any(r.status == "fail" for r in rows) else 0
