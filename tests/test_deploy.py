"""The container image and the Kubernetes manifests (Dockerfile, deploy/kubernetes/).

No Docker daemon and no cluster are needed: the Dockerfile is read and checked instruction by
instruction (and built only where a daemon answers), the manifests are validated against the
Kubernetes JSON schemas that `kubernetes-validate` bundles, and what the image would run
(`serve` without the report and demo extras) is run here with those packages made
unimportable.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from proxy import config as config_mod

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"  # native sidecar containers are GA from 1.33
FLEET_ENV = {
    "SIDECAR_KEY": "sk-fleet-sidecar-key-0000",
    "OPENAI_API_KEY": "sk-fleet-openai-key",
    "NEWGW_API_KEY": "sk-fleet-newgw-key",
    "NEWGW_URL": "https://gateway.example.com/v1",
}

# --- the Dockerfile, read by hand -------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    logical = ""
    for line in text.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        word, _, rest = logical.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        logical = ""
    return out


def stages(steps: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for step in steps:
        if step[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(step)
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions((ROOT / "Dockerfile").read_text())


def one(steps: list[tuple[str, str]], word: str) -> str:
    [args] = [a for w, a in steps if w == word]
    return args


def exec_form(args: str) -> list[str]:
    value = json.loads(args)  # the shell form is not JSON: a shell would be PID 1
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_the_final_image_is_the_slim_base_with_a_venv_and_no_build_step(
    dockerfile: list[tuple[str, str]],
) -> None:
    args = dict(a.split("=", 1) for w, a in dockerfile if w == "ARG" and "=" in a)
    build, final = stages(dockerfile)
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], s[0][1].split()[0]) for s in (build, final)
    ]
    assert all(re.fullmatch(r"python:3\.\d+-slim(-\w+)?", b) for b in bases), bases
    assert "AS build" in build[0][1]
    final_runs = " ".join(a for w, a in final if w == "RUN")
    # Nothing is compiled or installed in the final stage: it copies the build stage's venv.
    for tool in ("pip", "apt-get", "gcc", "build-essential"):
        assert tool not in final_runs, tool
    assert ("COPY", "--from=build /opt/sidecar /opt/sidecar") in final
    install = one(build, "RUN")
    assert "install ." in install and "[" not in install  # no extras in the image


def test_the_sidecar_runs_as_a_non_root_user_from_exec_form_and_gets_sigterm(
    dockerfile: list[tuple[str, str]],
) -> None:
    final = stages(dockerfile)[-1]
    user = one(final, "USER").split(":")[0]
    assert user not in ("root", "0")
    assert one(final, "STOPSIGNAL") == "SIGTERM"
    assert exec_form(one(final, "ENTRYPOINT")) == ["python", "-m", "proxy"]
    assert exec_form(one(final, "CMD")) == ["serve", "--config", "/etc/llm-sidecar/config.yaml"]
    assert one(final, "EXPOSE") == "8787"
    assert exec_form(one(final, "VOLUME")) == ["/var/lib/llm-sidecar"]
    assert one(final, "WORKDIR") == "/var/lib/llm-sidecar"  # ./sidecar.db lands on the volume


def healthcheck(dockerfile: list[tuple[str, str]]) -> tuple[list[str], str]:
    final = stages(dockerfile)[-1]
    check = one(final, "HEALTHCHECK")
    command = exec_form(check.split(" CMD ", 1)[1])
    env = dict(re.findall(r"(\w+)=(\S+)", one(final, "ENV")))
    return command, env["SIDECAR_HEALTH_URL"]


def test_the_healthcheck_asks_proxy_health_with_python_not_curl(
    dockerfile: list[tuple[str, str]],
) -> None:
    command, url = healthcheck(dockerfile)
    assert command[:2] == ["python", "-c"] and "urllib.request" in command[2]
    assert url == "http://127.0.0.1:8787/_proxy/health"


def test_the_build_context_holds_only_the_package(tmp_path: Path) -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    assert {ln for ln in lines if ln.startswith("!")} == {
        "!pyproject.toml",
        "!README.md",
        "!proxy/",
    }


def _docker_daemon() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    probe = subprocess.run([docker, "info"], capture_output=True, timeout=20, check=False)
    return probe.returncode == 0


@pytest.mark.timeout(900)
def test_the_image_builds_where_docker_is_available() -> None:
    if not _docker_daemon():
        pytest.skip("no Docker daemon answers here (`docker info` fails); the image is not built")
    tag = "llm-sidecar:test-deploy"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=880)
    user = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Config.User}}", tag],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert user == "10001:10001"


# --- what the image runs: serve without the report and demo extras ---------------------------

# Makes plotly and openai unimportable, as in the image, and names any import that was tried.
BLOCK_EXTRAS = """
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("plotly", "openai"):
            print(f"blocked import: {name}", file=sys.stderr, flush=True)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Blocked())
"""


def run_without_extras(*argv: str) -> str:
    return BLOCK_EXTRAS + (
        f"import runpy; sys.argv = ['proxy', *{list(argv)!r}]; "
        "runpy.run_module('proxy', run_name='__main__')"
    )


def sidecar_config(tmp_path: Path) -> Path:
    cfg = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstreams": {
            "old": {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-old"},
            "new": {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-new"},
        },
        "primary": "old",
        "split": {"old": 90, "new": 10},
        "shadow": {"upstream": "new", "sample": 0.5},
        "metrics": {"enabled": True},
        "record": {"path": str(tmp_path / "sidecar.db"), "max_size": "100MB"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def test_serve_starts_and_answers_health_without_plotly_or_openai(tmp_path: Path) -> None:
    config = sidecar_config(tmp_path)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", run_without_extras("serve", "--config", str(config)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = (await asyncio.wait_for(child.stdout.readline(), 30)).decode()
        url = re.search(r"listening on (http://\S+)/v1", line)
        assert url, line or (await child.stderr.read()).decode()  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as s, s.get(f"{url[1]}/_proxy/health") as r:
            assert r.status == 200
            assert (await r.json())["status"] == "ok"
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(child.communicate(), 30)
    assert child.returncode == 0, err.decode()
    assert "blocked import" not in err.decode()


@pytest.mark.parametrize(
    ("argv", "extra"),
    [(("report", "--db", "x.db", "--html", "out.html"), "report"), (("demo", "--quick"), "demo")],
)
def test_a_command_without_its_extra_names_the_pip_install(
    tmp_path: Path, argv: tuple[str, ...], extra: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", run_without_extras(*argv)],
        capture_output=True, text=True, cwd=tmp_path, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"pip install 'llm-sidecar[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr


async def test_the_images_healthcheck_command_passes_on_a_live_sidecar_only(
    dockerfile: list[tuple[str, str]], tmp_path: Path
) -> None:
    command, _ = healthcheck(dockerfile)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/_proxy/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]

    async def check(url: str) -> int:
        env = {**os.environ, "SIDECAR_HEALTH_URL": url}
        argv = [sys.executable if a == "python" else a for a in command]
        child = await asyncio.create_subprocess_exec(*argv, env=env, stderr=subprocess.DEVNULL)
        return await asyncio.wait_for(child.wait(), 20)

    try:
        assert await check(f"http://127.0.0.1:{port}/_proxy/health") == 0
        assert await check(f"http://127.0.0.1:{port}/_proxy/nothing") != 0
    finally:
        await runner.cleanup()


# --- the Kubernetes manifests ------------------------------------------------------------------


def kustomize_rendered() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/kubernetes/` applies, rendered by hand: its resources, and
    the ConfigMap its generator makes from files (named as is: disableNameSuffixHash)."""
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((KUBE / resource).read_text()) if d]
    for gen in kustomization["configMapGenerator"]:
        assert gen["options"]["disableNameSuffixHash"] is True  # edits in place, no restarts
        data = {f: (KUBE / f).read_text() for f in gen["files"]}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})  # fmt: skip
    return docs


def test_every_manifest_validates_against_the_kubernetes_schemas() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is missing: pip install -e '.[dev]'")
    docs = kustomize_rendered()
    assert {d["kind"] for d in docs} == {"Deployment", "ConfigMap"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    [deployment] = [d for d in kustomize_rendered() if d["kind"] == "Deployment"]
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def fleet_config() -> config_mod.Config:
    saved = {k: os.environ.get(k) for k in FLEET_ENV}
    os.environ.update(FLEET_ENV)
    try:
        cfg, _ = config_mod.load(str(KUBE / "config.yaml"))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    return cfg


def sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    [container] = [c for c in pod["initContainers"] if c["name"] == "llm-sidecar"]
    return container


def test_the_sidecar_is_a_native_sidecar_with_the_configmap_as_a_directory(
    pod: dict[str, Any],
) -> None:
    side = sidecar(pod)
    assert side["restartPolicy"] == "Always"
    mounts = {m["name"]: m for c in pod["initContainers"] + pod["containers"] for m in c.get("volumeMounts", [])}  # fmt: skip
    assert not any("subPath" in m or "subPathExpr" in m for m in mounts.values())
    config_file = side["args"][side["args"].index("--config") + 1]
    assert mounts["config"]["mountPath"] == os.path.dirname(config_file)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "llm-sidecar-config"
    assert os.path.basename(config_file) in kustomize_rendered()[-1]["data"]


def test_probes_grace_resources_and_the_recording_volume_match_the_config(
    pod: dict[str, Any], fleet_config: config_mod.Config
) -> None:
    side = sidecar(pod)
    port = {p["name"]: p["containerPort"] for p in side["ports"]}
    assert port["sidecar"] == fleet_config.listen.port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert side[probe]["httpGet"] == {"path": "/_proxy/health", "port": "sidecar"}
    limits = fleet_config.limits
    drain = limits.shutdown_grace + limits.shadow_grace
    assert drain + 5 <= pod["terminationGracePeriodSeconds"] <= drain + 30
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(side["resources"][kind])
    mounts = {m["name"]: m["mountPath"] for m in side["volumeMounts"]}
    assert os.path.dirname(fleet_config.record.path) == mounts["recording"]
    assert {v["name"]: v for v in pod["volumes"]}["recording"]["emptyDir"]["sizeLimit"] == "5Gi"
    app_env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert app_env["OPENAI_BASE_URL"]["value"] == f"http://127.0.0.1:{fleet_config.listen.port}/v1"


def test_the_fleet_config_passes_check_and_bounds_the_recording(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(KUBE / "config.yaml")],
        capture_output=True, text=True, env={**os.environ, **FLEET_ENV}, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    cfg = yaml.safe_load((KUBE / "config.yaml").read_text())["record"]
    assert cfg["max_age_days"] == 7 and cfg["max_size"] == "2GiB"
    assert cfg["bodies"] == {"request": "hash", "response": "full"}
    for key in FLEET_ENV.values():
        assert key not in (KUBE / "config.yaml").read_text()


ROLLBACK = "sed 's/^rollback: false/rollback: true/' deploy/kubernetes/config.yaml"


def test_the_documented_steps_each_give_a_config_that_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/fleet.md: the split at 1, 10 and 50, and rollback by one patched key."""
    text = (KUBE / "config.yaml").read_text()
    fleet = (ROOT / "docs" / "fleet.md").read_text()
    assert ROLLBACK in fleet
    steps = {f"{n}%": text.replace("openai: 99\n  newgw: 1\n", f"openai: {100 - n}\n  newgw: {n}\n") for n in (1, 10, 50)}  # fmt: skip
    done = subprocess.run(
        shlex.split(ROLLBACK), capture_output=True, text=True, cwd=ROOT, check=True
    )
    steps["rollback"] = done.stdout
    for k, v in FLEET_ENV.items():
        monkeypatch.setenv(k, v)
    for name, step in steps.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(step)
        cfg, _ = config_mod.load(str(path))
        split = cfg.default_split()
        if name == "rollback":
            assert cfg.rollback is True and step.count("\n") == text.count("\n")
        else:
            assert split["newgw"] / sum(split.values()) == int(name[:-1]) / 100
