"""The client as a rollout worker gets it: `pip install` of the package into a clean virtualenv
pulls httpx and nothing heavy (no torch), and the installed client scores against the real
service."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[2]
# What a wheel of the project is built from; copied so the build leaves nothing in the checkout.
SOURCES = ("pyproject.toml", "README.md", "critic_rm", "critic_rm_client", "service", "trainer")
HEAVY = ("torch", "transformers", "fastapi", "vllm", "numpy", "peft")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from critic_rm_client import RewardClient

    with RewardClient(sys.argv[1], max_retries=2, deadline_s=120) as rm:
        result = rm.score(
            [("What is 17 * 3?", "17 * 3 = 51."), ("Name a primary colour.", "Blue.")],
            num_critiques=2,
            max_critique_tokens=16,
        )
    print(json.dumps({"model_version": result.model_version, "rewards": result.rewards}))
    """
)


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, cwd=cwd)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv (no system site-packages) with the base install of the package."""
    tmp = tmp_path_factory.mktemp("client-install")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    venv = tmp / "venv"
    made = run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(src)]
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


def test_the_base_install_is_the_client_without_torch(client_venv: Path) -> None:
    listed = run([str(client_venv), "-m", "pip", "list", "--format=json"])
    names = {d["name"].lower() for d in json.loads(listed.stdout)}
    assert {"critic-rm", "httpx"} <= names
    assert not names & set(HEAVY), f"the base install pulled {sorted(names & set(HEAVY))}"
    no_torch = run([str(client_venv), "-c", "import torch"])
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    client = run([str(client_venv), "-c", "import critic_rm_client, critic_rm_client.adapters"])
    assert client.returncode == 0, client.stderr


def test_the_installed_client_scores_against_the_service(
    client_venv: Path, live_server: LiveServer, tmp_path: Path
) -> None:
    script = tmp_path / "score.py"
    script.write_text(SCRIPT)
    # Outside the checkout, so `critic_rm_client` can only come from the virtualenv.
    scored = run([str(client_venv), str(script), live_server.url], cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr + live_server.log_tail()
    out = json.loads(scored.stdout.strip().splitlines()[-1])
    assert isinstance(out["model_version"], str) and out["model_version"]
    assert len(out["rewards"]) == 2
    assert all(isinstance(r, float) and math.isfinite(r) for r in out["rewards"])
