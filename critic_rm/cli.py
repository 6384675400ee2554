"""`critic-rm`: one command over two leaves. serve, bootstrap and versions run service.cli;
train, eval and assemble run trainer.cli. Only the chosen side is imported, so a serving image
never loads the trainer (and its extra) and a training run never loads the gateway; a side whose
extra is not installed says which one to install."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """Where a subcommand lives and what it needs installed."""

    module: str
    extra: str
    help: str


COMMANDS: dict[str, Command] = {
    "serve": Command("service.cli", "serve", "run the HTTP gateway (settings from CRM_* env vars)"),
    "bootstrap": Command("service.cli", "serve", "publish a version with an untrained reward head"),
    "versions": Command("service.cli", "serve", "list published versions"),
    "train": Command("trainer.cli", "train", "run the Critic-RM training pipeline (resumable)"),
    "eval": Command(
        "trainer.cli", "train", "pairwise accuracy against m, with the service's engines"
    ),
    "assemble": Command("trainer.cli", "train", "publish base model + trained delta as a version"),
}

# A missing module of one of these is a bug, not a missing extra: let its traceback through.
OWN_PACKAGES = frozenset({"critic_rm", "critic_rm_client", "service", "trainer"})
# The engines' package comes from an extra of its own, one per device.
ENGINE_MODULES = frozenset({"vllm"})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="critic-rm",
        description="Critic-RM: serve the reward model and train it.",
        epilog="`critic-rm COMMAND --help` shows the options of COMMAND.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        sub.add_parser(name, help=cmd.help, add_help=False)
    return parser


def missing_extra(command: str, exc: ModuleNotFoundError) -> str | None:
    """The one-line hint for a module that an extra would have installed, or None when the
    missing module is the project's own (a bug, to be raised)."""
    top = (exc.name or "").partition(".")[0]
    if not top or top in OWN_PACKAGES:
        return None
    extra = COMMANDS[command].extra
    if top in ENGINE_MODULES:
        install = f"pip install 'critic-rm[{extra},cpu]' (or '[{extra},gpu]' on CUDA)"
    else:
        install = f"pip install 'critic-rm[{extra}]'"
    return f"critic-rm {command}: needs the {extra!r} extra (no module {top!r}): {install}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        _parser().parse_args(args)  # prints the overview for -h, or the usage error
        return 2  # not reached: parse_args exits on anything that is not a command
    command = args[0]
    try:
        module = importlib.import_module(COMMANDS[command].module)
        run: Callable[[list[str]], int] = module.main
        return run(args)
    except ModuleNotFoundError as exc:
        hint = missing_extra(command, exc)
        if hint is None:
            raise
        print(hint, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
