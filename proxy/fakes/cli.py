"""`python -m proxy fake`: one fake provider from the command line, until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable

from proxy.fakes.provider import APIS, FAULTS, Behaviour, FakeProvider

try:
    import uvloop
except ImportError:  # an optional speed-up; absent on Windows
    _LOOP_FACTORY: Callable[[], asyncio.AbstractEventLoop] | None = None
else:
    _LOOP_FACTORY = uvloop.new_event_loop


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proxy fake",
        description="Run a fake provider (OpenAI's, Anthropic's or Abstrakt's API) until SIGINT "
        "or SIGTERM.",
    )
    parser.add_argument("--name", default="fake")
    parser.add_argument("--api", choices=APIS, default="openai", help="the API's shape")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default=None, help="require the key, as the API sends it")
    parser.add_argument("--models", default=None, help="a,b,c (default: the API's usual ones)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds")
    parser.add_argument("--chunks", type=int, default=None)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--error-status", type=int, default=500)
    parser.add_argument("--fail", choices=FAULTS, default=None)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--variant", type=int, default=0)
    parser.add_argument("--latency-jitter", type=float, default=0.0, help="seconds, at most")
    parser.add_argument("--first-token-delay", type=float, default=0.0, help="seconds")
    parser.add_argument("--tool-json", choices=("valid", "broken"), default="valid")
    parser.add_argument("--refuse-tools", action="store_true")
    parser.add_argument("--embedding-dims", type=int, default=None)
    parser.add_argument("--quality", choices=("good", "worse"), default="good")
    parser.add_argument("--seed", type=int, default=0)
    return parser


async def _serve_until_signalled(provider: FakeProvider, host: str, port: int) -> None:
    url = await provider.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(url, flush=True)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await provider.close()


def main(argv: list[str] | None = None) -> int:
    """Run one fake provider; print its base URL on one line once it listens."""
    args = _parser().parse_args(argv)
    try:
        behaviour = Behaviour(
            latency=args.latency,
            chunk_delay=args.chunk_delay,
            chunks=args.chunks,
            error_rate=args.error_rate,
            error_status=args.error_status,
            fail=args.fail,
            gzip=args.gzip,
            variant=args.variant,
            latency_jitter=args.latency_jitter,
            first_token_delay=args.first_token_delay,
            tool_json=args.tool_json,
            refuse_tools=args.refuse_tools,
            embedding_dims=args.embedding_dims,
            quality=args.quality,
        )
        models = (
            None
            if args.models is None
            else [m.strip() for m in args.models.split(",") if m.strip()]
        )
        provider = FakeProvider(
            name=args.name,
            api=args.api,
            api_key=args.api_key,
            models=models,
            behaviour=behaviour,
            seed=args.seed,
            keep=0,  # nobody reads `received` from the command line
        )
    except ValueError as exc:
        print(f"fake: {exc}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=_LOOP_FACTORY) as runner:
            runner.run(_serve_until_signalled(provider, args.host, args.port))
    except OSError as exc:
        print(f"fake: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
