"""`critic-rm serve`, `critic-rm bootstrap` and `critic-rm versions` (critic_rm.cli dispatches
here; the trainer's subcommands live in trainer.cli, which this module never imports)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from service.settings import Settings

EXAMPLE = """\
critic-rm is starting on http://{host}:{port} (GET /ready turns 200 once the engines are warm).
Try:
  curl -s localhost:{port}/score -H 'content-type: application/json' -d '{{
    "items": [{{"prompt": "What is 17 * 3?", "response": "17 * 3 = 51."}}],
    "num_critiques": 2, "return_critiques": true}}'
"""


def _serve(args: argparse.Namespace) -> int:
    from service.server import serve

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if args.checkpoint_root:
        overrides["checkpoint_root"] = args.checkpoint_root
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(EXAMPLE.format(host=settings.host, port=settings.port), flush=True)
    return serve(settings)


def _bootstrap(args: argparse.Namespace) -> int:
    from service.checkpoint.bootstrap import bootstrap
    from service.checkpoint.store import CheckpointRoot

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = Path(args.checkpoint_root or Settings().checkpoint_root)
    if args.if_missing and CheckpointRoot(root).current_version():
        print(
            f"checkpoint root {root} already has current={CheckpointRoot(root).current_version()}"
        )
        return 0
    version = bootstrap(root, Path(args.source) if args.source else None, seed=args.seed)
    print(f"published {version.manifest.model_version} at {version.path}")
    return 0


def _versions(args: argparse.Namespace) -> int:
    from service.checkpoint.store import CheckpointError, CheckpointRoot, load_version

    root = CheckpointRoot(Path(args.checkpoint_root or Settings().checkpoint_root))
    current = root.current_version()
    rows = []
    for name in root.list_versions():
        try:
            m = load_version(root.version_path(name), verify_hashes=args.verify).manifest
            rows.append(
                {
                    "version": name,
                    "current": name == current,
                    "base_model": m.base_model,
                    "reward_head_trained": m.reward_head_trained,
                    "created_at": m.created_at,
                }
            )
        except CheckpointError as exc:
            rows.append({"version": name, "current": name == current, "error": str(exc)})
    print(json.dumps(rows, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="critic-rm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP gateway (settings from CRM_* env vars)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--checkpoint-root")
    serve.set_defaults(func=_serve)

    boot = sub.add_parser("bootstrap", help="publish a version with an untrained reward head")
    boot.add_argument(
        "--from", dest="source", help="HF causal-LM directory (default: SmolLM2 GGUF)"
    )
    boot.add_argument("--checkpoint-root")
    boot.add_argument("--seed", type=int, default=0, help="reward head initialisation seed")
    boot.add_argument("--if-missing", action="store_true", help="do nothing if `current` exists")
    boot.set_defaults(func=_bootstrap)

    versions = sub.add_parser("versions", help="list published versions")
    versions.add_argument("--checkpoint-root")
    versions.add_argument("--verify", action="store_true", help="also check weight hashes")
    versions.set_defaults(func=_versions)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
