"""`critic-rm train`, `critic-rm eval` and `critic-rm assemble` (critic_rm.cli dispatches here)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _train(args: argparse.Namespace) -> int:
    from service.engines.processes import reap_descendants
    from trainer.config import ConfigError, load_config
    from trainer.pipeline import StageError, run_pipeline

    _logging()
    # A stopped run must not leave its vLLM engine processes computing on (they are children
    # of this process, and survive it otherwise): SIGTERM unwinds like Ctrl-C, then they end.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cfg = load_config(Path(args.config) if args.config else None, args.set)
        markers = run_pipeline(cfg, from_stage=args.from_stage, until=args.until)
    except (ConfigError, StageError) as exc:
        print(f"critic-rm train: {exc}", file=sys.stderr)
        return 2
    finally:
        reap_descendants()
    summary = {s: {"seconds": round(m["seconds"], 1)} for s, m in markers.items()}
    print(json.dumps({"run": str(cfg.out), "stages": summary}, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from service.engines.config import EngineConfig
    from trainer.data.load import DataError, load_pairs
    from trainer.evaluate import evaluate, write_report

    _logging()
    labels = args.label or [Path(c).name for c in args.checkpoint]
    if len(labels) != len(args.checkpoint):
        print("critic-rm eval: give one --label per --checkpoint", file=sys.stderr)
        return 2
    try:
        ms = sorted({int(m) for m in args.ms.split(",")})
        pairs = load_pairs(Path(args.data))[: args.max_pairs]
    except (ValueError, DataError, OSError) as exc:
        print(f"critic-rm eval: {exc}", file=sys.stderr)
        return 2
    engine_cfg = EngineConfig(engine_layout=args.engine_layout, max_model_len=args.max_model_len)

    async def run() -> list[dict[str, object]]:
        return [await evaluate(Path(c), pairs, ms, engine_cfg) for c in args.checkpoint]

    results = asyncio.run(run())
    out = Path(args.out)
    write_report(results, labels, out)
    print((out / "eval.md").read_text())
    print(f"wrote {out / 'eval.json'}, {out / 'eval.md'} and {out / 'eval.png'}")
    return 0


def _assemble(args: argparse.Namespace) -> int:
    from service.checkpoint.store import CheckpointRoot
    from trainer.export import assemble, find_assembled

    _logging()
    delta = Path(args.delta)
    root = CheckpointRoot(Path(args.checkpoint_root))
    existing = find_assembled(root.root, delta) if args.if_missing else None
    if existing is not None:
        if root.current_version() is None:
            root.set_current(existing)
        print(f"{existing} (assembled from {delta}) is already in {root.root}")
        return 0
    version = assemble(delta, root.root)
    print(f"published {version.manifest.model_version} at {version.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from trainer.pipeline import STAGES

    parser = argparse.ArgumentParser(prog="critic-rm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run the Critic-RM training pipeline (resumable)")
    train.add_argument("--config", help="recipe YAML (e.g. trainer/configs/default.yaml)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. train.epochs=3",
    )
    train.add_argument("--from", dest="from_stage", choices=STAGES, help="rerun from this stage")
    train.add_argument("--until", choices=STAGES, help="stop after this stage")
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="pairwise accuracy against m, with the service's engines")
    ev.add_argument("--checkpoint", action="append", required=True, help="version directory")
    ev.add_argument("--label", action="append", help="name of each checkpoint in the report")
    ev.add_argument("--data", required=True, help="pairs: JSONL or a saved HF dataset")
    ev.add_argument("--ms", default="0,1,2,4,8", help="comma-separated m values")
    ev.add_argument("--max-pairs", type=int, default=None)
    ev.add_argument("--max-model-len", type=int, default=2048)
    ev.add_argument("--engine-layout", choices=["two", "one", "fused"], default="two")
    ev.add_argument("--out", default="eval-results")
    ev.set_defaults(func=_eval)

    asm = sub.add_parser("assemble", help="publish base model + trained delta as a version")
    asm.add_argument("--delta", required=True, help="delta directory (e.g. trainer/default)")
    asm.add_argument("--checkpoint-root", default="checkpoints")
    asm.add_argument(
        "--if-missing", action="store_true", help="do nothing if the delta's version exists"
    )
    asm.set_defaults(func=_assemble)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
