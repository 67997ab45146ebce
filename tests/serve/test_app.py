"""The sidecar as a process: signals, graceful shutdown, nothing recorded lost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.fakes.provider import Behaviour, FakeProvider
from tests.conftest import base_config

MESSAGES: list[Any] = [{"role": "user", "content": "count slowly"}]


@contextlib.asynccontextmanager
async def reaped(proc: asyncio.subprocess.Process) -> AsyncIterator[asyncio.subprocess.Process]:
    """The process is killed on the way out if it has not ended (a failed assertion, say)."""
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def spawn(cfg: dict[str, Any], tmp_path: Path, **how: Any) -> asyncio.subprocess.Process:
    """`python -m proxy serve` on `cfg`; `how`: create_subprocess_exec's stdout, stderr, ..."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--config", str(path), **how
    )


async def start_process(
    cfg: dict[str, Any], tmp_path: Path
) -> tuple[asyncio.subprocess.Process, str]:
    pipe = asyncio.subprocess.PIPE
    proc = await spawn(cfg, tmp_path, stdout=pipe, stderr=pipe)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
    url = line.decode().split()[3]
    assert url.startswith("http://127.0.0.1:"), line
    return proc, url


async def sigterm_mid_streams(
    cfg: dict[str, Any],
    tmp_path: Path,
    upstream: FakeProvider,
    n: int,
    while_open: Callable[[], None] = lambda: None,
) -> None:
    """Start the sidecar, open `n` streams, SIGTERM it while `upstream` serves them all:
    every stream must still end with [DONE] and the process exit 0."""
    proc, url = await start_process(cfg, tmp_path)
    async with reaped(proc):
        async with aiohttp.ClientSession() as s:

            async def stream() -> bytes:
                body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
                async with s.post(f"{url}/chat/completions", json=body) as r:
                    return await r.read()

            tasks = [asyncio.create_task(stream()) for _ in range(n)]
            while upstream.active < n:
                await asyncio.sleep(0.01)
            while_open()
            proc.send_signal(signal.SIGTERM)
            bodies = await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)
        assert all(b.rstrip().endswith(b"data: [DONE]") for b in bodies)
        assert await asyncio.wait_for(proc.wait(), timeout=20) == 0


async def test_sigterm_finishes_in_flight_streams_and_flushes_records(old, new, tmp_path) -> None:
    old.behaviour = Behaviour(chunk_delay=0.05, chunks=20)
    db = tmp_path / "rec.db"
    cfg = base_config(
        old, new, record={"enabled": True, "path": str(db)}, listen={"host": "127.0.0.1", "port": 0}
    )
    await sigterm_mid_streams(cfg, tmp_path, old, 5)
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT count(*) FROM exchanges").fetchone()[0] == 5
        done = con.execute(
            "SELECT count(*) FROM responses WHERE stream_done = 1 AND error_kind IS NULL"
        )
        assert done.fetchone()[0] == 5
    finally:
        con.close()


async def test_sigterm_still_sends_and_records_copies_waiting_for_their_primary(
    old, new, tmp_path
) -> None:
    # Copies start once the app has its answer: a SIGTERM while the primaries stream must
    # neither drop them nor cut them short (limits.shadow_grace follows shutdown_grace).
    old.behaviour = Behaviour(chunk_delay=0.05, chunks=10)
    db = tmp_path / "rec.db"
    cfg = base_config(
        old,
        new,
        record={"enabled": True, "path": str(db)},
        shadow={"upstream": "new", "sample": 1.0},
        listen={"host": "127.0.0.1", "port": 0},
    )

    def no_copy_yet() -> None:
        assert not new.received  # the copies wait for their primaries

    await sigterm_mid_streams(cfg, tmp_path, old, 3, no_copy_yet)
    assert len(new.received) == 3
    con = sqlite3.connect(db)
    try:
        roles = con.execute(
            "SELECT role, count(*) FROM responses WHERE error_kind IS NULL GROUP BY role"
        ).fetchall()
        assert sorted(roles) == [("primary", 3), ("shadow", 3)]
    finally:
        con.close()


async def test_sighup_reloads_the_config(old, new, tmp_path) -> None:
    cfg = base_config(old, new, split={"old": 1}, listen={"host": "127.0.0.1", "port": 0})
    proc, url = await start_process(cfg, tmp_path)
    async with reaped(proc):
        async with aiohttp.ClientSession() as s:
            (tmp_path / "config.yaml").write_text(yaml.safe_dump({**cfg, "split": {"new": 1}}))
            os.kill(proc.pid, signal.SIGHUP)
            for _ in range(200):
                async with s.get(f"{url}/models") as r:
                    if r.headers["x-sidecar-upstream"] == "new":
                        break
                await asyncio.sleep(0.02)
            assert r.headers["x-sidecar-upstream"] == "new"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), timeout=20) == 0


async def test_broken_config_at_startup_exits_non_zero_with_reason(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("upstreams: {a: {base_url: 'nope'}}\nprimary: a\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 2
    assert f"{path}: upstreams.a.base_url:" in err.decode()


async def test_a_port_in_use_exits_with_the_reason_and_does_not_hang(old, new, tmp_path) -> None:
    # With recording on, the recorder's database thread kept the process alive after the
    # error was printed: a service manager saw a process that never ended.
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = base_config(old, new, listen={"host": "127.0.0.1", "port": port})
        cfg["record"] = {"enabled": True, "path": str(tmp_path / "r.db")}
        pipe = asyncio.subprocess.PIPE
        proc = await spawn(cfg, tmp_path, stdout=pipe, stderr=pipe)
        async with reaped(proc):
            _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err.decode()


async def test_one_json_log_line_per_request_and_no_key(old, new, tmp_path) -> None:
    import orjson

    from tests.conftest import CLIENT_KEY, NEW_KEY, OLD_KEY

    cfg = base_config(old, new, listen={"host": "127.0.0.1", "port": 0}, log={"requests": True})
    proc, url = await start_process(cfg, tmp_path)
    async with reaped(proc):
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                body = {"model": "gpt-4o-mini", "messages": MESSAGES}
                headers = {"authorization": f"Bearer {CLIENT_KEY}"}
                async with s.post(f"{url}/chat/completions", json=body, headers=headers) as r:
                    assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=20)
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith(b"{")]
    requests = [line for line in lines if line["event"] == "request"]
    assert len(requests) == 3
    for line in requests:
        assert {"request_id", "route", "upstream", "model", "status", "ms"} <= set(line)
        assert line["status"] == 200 and line["upstream"] == "old"
    for key in (CLIENT_KEY, OLD_KEY, NEW_KEY):
        assert key.encode() not in err


async def test_a_log_reader_that_went_away_breaks_no_request(old, new, tmp_path) -> None:
    # `serve 2>&1 | head`, or a log collector that died: every log line then fails with EPIPE.
    # Raised from the request's own log call, that failed every request after the first.
    import openai

    read, write = os.pipe()
    cfg = base_config(old, new, log={"requests": True})
    proc = await spawn(cfg, tmp_path, stdout=asyncio.subprocess.PIPE, stderr=write)
    os.close(write)
    os.close(read)  # the reader is gone before the first line
    async with reaped(proc):
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        client = openai.AsyncOpenAI(base_url=line.decode().split()[3], api_key="k", max_retries=0)
        for _ in range(3):
            got = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert got.choices[0].message.content
        await client.close()
        stats = f"{client.base_url}".replace("/v1/", "/_proxy/stats")
        async with aiohttp.ClientSession() as s, s.get(stats) as r:
            assert (await r.json())["log_lines_dropped"] >= 3
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=20) == 0


async def test_started_with_stdout_and_stderr_closed_it_serves_and_exits_cleanly(
    old, new, tmp_path
) -> None:
    # The next file opened took fd 1 (the event loop's epoll fd): the exit aborted (SIGABRT).
    import socket

    import openai

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = base_config(old, new, listen={"host": "127.0.0.1", "port": port}, log={"requests": True})
    cfg["record"] = {"enabled": True, "path": str(tmp_path / "r.db")}

    def close_output() -> None:
        os.close(1)
        os.close(2)

    proc = await spawn(cfg, tmp_path, preexec_fn=close_output)
    async with reaped(proc):
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
        for _ in range(150):  # up to ~30 s to start
            try:
                got = await client.with_options(max_retries=0).chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES
                )
                break
            except openai.APIConnectionError:
                await asyncio.sleep(0.2)
        else:
            raise AssertionError("the sidecar did not start")
        assert got.choices[0].message.content
        await client.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=20) == 0
    con = sqlite3.connect(tmp_path / "r.db")
    try:
        assert con.execute("SELECT count(*) FROM exchanges").fetchone() == (1,)
    finally:
        con.close()


async def raw_exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_malformed_http_gets_an_openai_shaped_400(old, new, make_sidecar, capfd) -> None:
    import orjson

    sc = await make_sidecar(base_config(old, new))
    quirks = [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header Line sk-secret\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ]
    for data in quirks:
        raw = await raw_exchange(sc.port, data)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.split()[1] == b"400", raw[:200]
        assert b"application/json" in head
        error = orjson.loads(body)["error"]
        assert error["code"] == "bad_request" and "sk-secret" not in error["message"]
    captured = capfd.readouterr()
    assert "sk-secret" not in captured.out + captured.err
    # The sidecar still serves well-formed requests afterwards.
    raw = await raw_exchange(
        sc.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 200")


async def test_a_broken_chunk_in_a_body_being_read_is_a_400_at_once(
    old, new, make_sidecar, capfd
) -> None:
    import orjson

    # aiohttp's parser drops a body it is reading on a framing error and queues its own 400
    # for later: the handler waited for limits.body_timeout (60 s) before this was fixed.
    sc = await make_sidecar(base_config(old, new))
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.port)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"mod\r\n'
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is reading the body now
        writer.write(b"ZZ\r\nxx\r\n0\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)  # read() ends: it closed
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split()[1] == b"400", raw[:200]
    error = orjson.loads(body)["error"]
    assert error["message"] == "could not read the request body: Invalid character in chunk size"
    assert not old.received
    assert "Traceback" not in "".join(capfd.readouterr())


async def test_a_content_coding_without_a_decoder_is_a_415_naming_it(
    old, new, make_sidecar
) -> None:
    import importlib.util

    import orjson

    if importlib.util.find_spec("brotli") or importlib.util.find_spec("brotlicffi"):
        pytest.skip("Brotli is installed here: br request bodies are decoded")
    sc = await make_sidecar(base_config(old, new))
    raw = await raw_exchange(
        sc.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\n"
        b"Content-Length: 2\r\n\r\n\x1b\x00",
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split()[1] == b"415", raw[:200]
    assert b"accept-encoding: gzip, deflate" in head.lower()
    error = orjson.loads(body)["error"]
    assert error["code"] == "unsupported_content_encoding" and "br" in error["message"]
    assert not old.received


async def test_second_signal_exits_at_once(old, new, tmp_path) -> None:
    old.behaviour = Behaviour(fail="hang")
    cfg = base_config(old, new, listen={"host": "127.0.0.1", "port": 0})
    proc, url = await start_process(cfg, tmp_path)
    async with reaped(proc), aiohttp.ClientSession() as s:
        body = {"model": "gpt-4o-mini", "messages": MESSAGES}
        pending = asyncio.create_task(s.post(f"{url}/chat/completions", json=body))
        while old.active < 1:
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGTERM)  # would wait 30 s for the hanging request
        await asyncio.sleep(0.3)
        assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 130
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)


async def test_serve_raises_a_low_open_file_limit(old, new, tmp_path) -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard limit here is {hard}: nothing to raise to")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(old, new)))

    def low() -> None:  # a shell's usual 1,024, in the child only
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, preexec_fn=low,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), timeout=30)  # listening
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert int(line.split()[3]) > 1024, line
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=30)
