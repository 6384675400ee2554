"""The layout's import rules, read from the source with `ast` (imports inside functions and
under TYPE_CHECKING count: a lazy import still couples two rooms), and the `critic-rm`
dispatcher's promise that a command imports only its own side.

Rules say which room may not import which: the gateway and the trainer are leaves under the
dispatcher; inside the gateway imports run downward (contract/checkpoint -> engines -> model ->
scoring -> api); the rollout-worker client stands alone on httpx."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from critic_rm.cli import COMMANDS, missing_extra

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("service", "trainer", "critic_rm", "critic_rm_client")
STDLIB = frozenset(sys.stdlib_module_names)


@dataclass(frozen=True)
class Import:
    """One imported module, where it is imported."""

    file: str
    line: int
    module: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} -> {self.module}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(
    source: str, module: str, *, is_package: bool = False, file: str = ""
) -> list[Import]:
    """Every module `source` imports, as absolute dotted names. `from a import b` yields a.b
    (b may be a submodule); importlib.import_module("x") with a literal name counts too."""
    package = module if is_package else module.rpartition(".")[0]
    out: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [Import(file, node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base == "__future__":
                continue
            out += [Import(file, node.lineno, f"{base}.{a.name}") for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and _call_name(node.func) in {"importlib.import_module", "import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append(Import(file, node.lineno, node.args[0].value))
    return out


def _call_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{func.value.id}.{func.attr}"
    return ""


def project_imports(package: str) -> Iterator[Import]:
    for path in sorted((REPO / package).rglob("*.py")):
        yield from imports_of(
            path.read_text(),
            module_name(path, REPO),
            is_package=path.name == "__init__.py",
            file=str(path.relative_to(REPO)),
        )


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@dataclass(frozen=True)
class Rule:
    """Modules under `scope` may not import anything under `forbidden` (but for what `except_`
    names); with `only`, they may import nothing but the stdlib, their own package and `only`."""

    scope: str
    why: str
    forbidden: tuple[str, ...] = ()
    except_: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None

    def broken_by(self, imp: Import) -> bool:
        m = imp.module
        if any(under(m, f) for f in self.forbidden):
            return not any(under(m, e) for e in self.except_)
        if self.only is None:
            return False
        top = m.partition(".")[0]
        own = under(m, self.scope.partition(".")[0])
        return not (top in STDLIB or own or any(under(m, o) for o in self.only))


RULES = (
    Rule("service", "service is a leaf: it never imports the trainer or the dispatcher",
         forbidden=("trainer", "critic_rm", "critic_rm_client")),
    Rule("trainer", "trainer is a leaf; of the service it shares only the checkpoint contract, "
         "the options/formatting contract and the engines",
         forbidden=("critic_rm", "critic_rm_client", "service"),
         except_=("service.checkpoint", "service.contract", "service.engines")),
    Rule("service.engines", "engines sit below the model, scoring, api and cache rooms",
         forbidden=("service.scoring", "service.model", "service.api", "service.cache")),
    Rule("service.contract", "the contract is the bottom room",
         forbidden=("service.engines", "service.model", "service.scoring", "service.api")),
    Rule("service.checkpoint", "the checkpoint contract is the bottom room",
         forbidden=("service.engines", "service.model", "service.scoring", "service.api")),
    Rule("service.model", "the model room sits below scoring and api",
         forbidden=("service.scoring", "service.api")),
    Rule("service.scoring", "scoring sits below the api",
         forbidden=("service.api",)),
    Rule("critic_rm_client", "the rollout-worker client installs with httpx alone",
         only=("httpx",)),
    Rule("critic_rm", "the dispatcher imports a side only by name, when its command runs",
         only=("service.cli", "trainer.cli")),
)  # fmt: skip


def offences(rule: Rule) -> list[Import]:
    package = rule.scope.partition(".")[0]
    found = []
    for imp in project_imports(package):
        if under(module_name(REPO / imp.file, REPO), rule.scope) and rule.broken_by(imp):
            found.append(imp)
    return found


@pytest.mark.parametrize("rule", RULES, ids=[r.scope for r in RULES])
def test_import_rule(rule: Rule) -> None:
    package = rule.scope.partition(".")[0]
    if not (REPO / package).is_dir():
        pytest.skip(f"{package}/ does not exist (yet)")
    found = offences(rule)
    listing = "\n".join(f"  {imp}" for imp in found)
    assert not found, f"{rule.scope}: {rule.why}; offending imports:\n{listing}"


def test_the_scan_sees_every_kind_of_import() -> None:
    source = textwrap.dedent(
        """
        from __future__ import annotations
        import json, service.api.routes
        from typing import TYPE_CHECKING
        from . import sibling
        from ..scoring import core
        if TYPE_CHECKING:
            from trainer.config import Config
        def lazy():
            import importlib
            from service.model.manager import ModelManager
            return importlib.import_module("trainer.cli")
        """
    )
    found = {i.module for i in imports_of(source, "service.engines.factory")}
    assert found == {
        "json",
        "service.api.routes",
        "typing.TYPE_CHECKING",
        "service.engines.sibling",
        "service.scoring.core",
        "trainer.config.Config",
        "importlib",
        "service.model.manager.ModelManager",
        "trainer.cli",
    }
    engines = next(r for r in RULES if r.scope == "service.engines")
    bad = [
        i
        for i in imports_of(source, "service.engines.factory", file="f.py")
        if engines.broken_by(i)
    ]
    assert [str(i) for i in bad] == [
        "f.py:3 -> service.api.routes",
        "f.py:6 -> service.scoring.core",
        "f.py:11 -> service.model.manager.ModelManager",
    ]
    client = next(r for r in RULES if r.scope == "critic_rm_client")
    assert not client.broken_by(Import("c.py", 1, "httpx.AsyncClient"))
    assert not client.broken_by(Import("c.py", 1, "critic_rm_client.core.build"))
    assert client.broken_by(Import("c.py", 1, "service.contract.options"))
    assert client.broken_by(Import("c.py", 1, "pydantic.BaseModel"))
    trainer = next(r for r in RULES if r.scope == "trainer")
    assert not trainer.broken_by(Import("t.py", 1, "service.engines.config.EngineConfig"))
    assert trainer.broken_by(Import("t.py", 1, "service.settings.Settings"))
    assert trainer.broken_by(Import("t.py", 1, "critic_rm.cli"))


# ---------------------------------------------------------------- the dispatcher at run time
def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("command", "absent"),
    [
        ("serve", "trainer"),
        ("versions", "trainer"),
        ("assemble", "service.cli"),
        ("train", "fastapi"),
    ],
)
def test_a_command_imports_only_its_side(command: str, absent: str) -> None:
    proc = _python(
        f"""
        import sys
        from critic_rm.cli import main
        try:
            main([{command!r}, "--help"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        loaded = sorted(m for m in sys.modules if m == {absent!r} or m.startswith({absent!r} + "."))
        print("LOADED", loaded)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert f"usage: critic-rm {command}" in proc.stdout
    assert "LOADED []" in proc.stdout, proc.stdout


def test_overview_lists_every_command() -> None:
    proc = _python("from critic_rm.cli import main; main(['--help'])")
    assert proc.returncode == 0, proc.stderr
    for name in COMMANDS:
        assert f"    {name}" in proc.stdout, name


@pytest.mark.parametrize(
    ("command", "blocked", "extra"),
    [("serve", ("fastapi", "uvicorn"), "serve"), ("train", ("yaml",), "train")],
)
def test_a_missing_extra_is_named_in_one_line(
    command: str, blocked: tuple[str, ...], extra: str
) -> None:
    # None in sys.modules makes `import name` raise ModuleNotFoundError, as if not installed.
    proc = _python(
        f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None
        from critic_rm.cli import main
        sys.exit(main([{command!r}]))
        """
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"critic-rm {command}: needs the '{extra}' extra (no module ")
    assert line.endswith(f"pip install 'critic-rm[{extra}]'")


def test_missing_extra_hints() -> None:
    vllm = missing_extra("serve", ModuleNotFoundError("no vllm", name="vllm.engine"))
    assert vllm is not None and "pip install 'critic-rm[serve,cpu]'" in vllm and "gpu" in vllm
    torch = missing_extra("eval", ModuleNotFoundError("no torch", name="torch"))
    assert torch is not None and torch.endswith("pip install 'critic-rm[train]'")
    # The project's own modules are never "an extra": such an error is a bug and is raised.
    assert missing_extra("serve", ModuleNotFoundError("x", name="service.nope")) is None
    assert missing_extra("train", ModuleNotFoundError("x", name=None)) is None
