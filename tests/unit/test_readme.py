"""The README is the user's manual: its commands and settings table must match the code."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    head = README.split("## ", 1)[0]
    assert "make serve" in head and "make test" in head


def test_every_setting_is_documented_in_the_readme() -> None:
    missing = [
        f"CRM_{name.upper()}"
        for name in Settings.model_fields
        if f"`CRM_{name.upper()}`" not in README
    ]
    assert not missing, f"settings missing from README.md: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "make test" in ci
