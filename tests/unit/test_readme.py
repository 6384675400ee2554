"""The README is the user's manual and docs/ holds the rest: the commands, the settings table, the
links and the paths they name must match the code. (The curl examples are sent to a real gateway
by tests/integration/test_readme_examples.py; here they are only checked to be well-formed.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = {"README.md": README, **{f"docs/{p.name}": p.read_text() for p in DOCS}}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Paths the pages name in backticks; each must exist (a module attribute after the file is fine).
REPO_PATH = re.compile(
    r"`((?:service|trainer|critic_rm|critic_rm_client|tests|loadtests|docker|k8s|docs)/[\w./-]*)`"
)


def test_readme_starts_with_the_two_commands() -> None:
    head = README.split("## ", 1)[0]
    first_block = FENCE.search(head)
    assert first_block is not None, "the README must open with the two commands"
    commands = [line.split("#")[0].strip() for line in first_block.group(2).splitlines()]
    assert commands == ["make serve", "make test"]


def test_every_setting_is_documented_in_the_readme() -> None:
    missing = [
        f"CRM_{name.upper()}"
        for name in Settings.model_fields
        if f"`CRM_{name.upper()}`" not in README
    ]
    assert not missing, f"settings missing from README.md: {missing}"


def _shown_default(value: Any) -> str | None:
    """How the settings table writes a default (None: not a literal, e.g. a computed one)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (int, float, str, Path)):
        return f"`{value}`"
    return None


def test_the_settings_table_shows_the_real_defaults() -> None:
    rows = dict(re.findall(r"^\| `CRM_(\w+)` \| ([^|]+?) \|", README, re.MULTILINE))
    wrong = {}
    for name, field in Settings.model_fields.items():
        default = "unset" if field.default_factory is list else _shown_default(field.default)
        if field.default_factory is not None and field.default_factory is not list:
            continue  # computed at start (the cores this process may use)
        shown = rows.get(name.upper())
        if shown != default:
            wrong[f"CRM_{name.upper()}"] = (shown, default)
    assert not wrong, f"README settings defaults (shown, real): {wrong}"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci


def test_the_readme_links_the_docs_pages() -> None:
    for page in ("architecture", "deployment", "performance", "training", "checks", "clients"):
        assert f"](docs/{page}.md" in README, f"README.md does not link docs/{page}.md"


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", text), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_relative_link_resolves(page: str) -> None:
    base = (REPO / page).parent
    broken = []
    for target in LINK.findall(PAGES[page]):
        if re.match(r"[a-z]+:", target):
            continue  # an external URL
        path, _, anchor = target.partition("#")
        file = (base / path).resolve() if path else REPO / page
        if not file.exists():
            broken.append(target)
            continue
        if anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
            broken.append(target)
    assert not broken, f"{page}: links to nothing: {broken}"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_path_named_exists(page: str) -> None:
    missing = []
    for name in REPO_PATH.findall(PAGES[page]):
        path = REPO / name.rstrip("/")
        attribute_of_module = REPO / re.sub(r"\.\w+$", ".py", name)
        if not path.exists() and not attribute_of_module.exists():
            missing.append(name)
    assert not missing, f"{page} names paths that do not exist: {missing}"


def test_no_page_names_the_old_modules() -> None:
    old = (
        "service/core",
        "service.core",
        "service/client.py",
        "service.client",
        "service.reward_fn",
    )
    found = [(page, name) for page, text in PAGES.items() for name in old if name in text]
    assert not found, f"pages naming modules that are gone: {found}"


def test_every_curl_example_shows_its_output() -> None:
    blocks = list(FENCE.finditer(README))
    examples = 0
    for i, block in enumerate(blocks):
        if block.group(1) != "bash" or not re.search(r"^curl ", block.group(2), re.MULTILINE):
            continue
        examples += 1
        line = README.count("\n", 0, block.start()) + 1
        assert "localhost:8000" in block.group(2), f"README.md:{line}: not on localhost:8000"
        shown = blocks[i + 1] if i + 1 < len(blocks) else None
        assert shown is not None and shown.group(1) in ("json", "text"), (
            f"README.md:{line}: a curl example without its output (```json or ```text) under it"
        )
        if shown.group(1) == "json":
            json.loads(shown.group(2))
    assert examples >= 8
