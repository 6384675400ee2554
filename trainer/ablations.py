"""The recipe ablation table: each validation run's recipe, training losses and accuracy at
every m, side by side, from the run directories' own files (config.yaml, stages/train.json,
eval/eval.json). Recipes are chosen from this table, on validation only.

    python -m trainer.ablations runs/abl-a runs/abl-b --out trainer/default/ablations
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


def recipe(cfg: dict[str, Any]) -> dict[str, Any]:
    """What distinguishes one recipe from another."""
    t, s = cfg["train"], cfg.get("sampling", {})
    lam = t.get("constant_lambda")
    return {
        "mode": t["mode"],
        "lambda": f"constant {lam}" if lam is not None else f"paper (beta {t.get('beta')})",
        "epochs": t["epochs"],
        "reward_inputs": t.get("reward_inputs"),
        "reward_anchor": t.get("reward_anchor") or 0.0,
        "anchor_on": t.get("anchor_on", "rewards"),
        "rotate_sampled": bool(t.get("rotate_sampled")),
        "teacher": s.get("teacher", False),
        "lr": t.get("lr"),
        "head_lr": t.get("head_lr"),
        "trainable_layers": t.get("trainable_layers"),
    }


def row(run_dir: Path) -> dict[str, Any]:
    """One validation run: its recipe, its training summary and its own evaluation (the first
    result of eval.json); the runs it was compared with come along in `compared`."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    if cfg["eval"].get("on") != "validation":
        raise ValueError(f"{run_dir}: evaluated on {cfg['eval'].get('on')}, not validation")
    train = json.loads((run_dir / "stages" / "train.json").read_text())
    results = json.loads((run_dir / "eval" / "eval.json").read_text())
    return {
        "run": run_dir.name,
        "recipe": recipe(cfg),
        "train": {
            k: train.get(k)
            for k in ("steps", "train_seconds", "loss_r_first", "loss_r_last", "loss_c_last")
        },
        "validation": results[0]["splits"]["validation"],
        "compared": {r["label"]: r["splits"]["validation"] for r in results[1:]},
    }


def _acc(a: dict[str, Any]) -> str:
    lo, hi = a["ci95"]
    return f"{a['overall']:.3f} [{lo:.2f}, {hi:.2f}]"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    ms = sorted({m for r in rows for m in r["validation"]}, key=int)
    head = "| run | λ | reward inputs | steps | ℓr first → last | " + " | ".join(
        f"m = {m}" for m in ms
    )
    lines = [head + " |", "|---|---|---|---:|---|" + "---:|" * len(ms)]
    for r in rows:
        t, rc = r["train"], r["recipe"]
        loss = (
            f"{t['loss_r_first']:.3f} → {t['loss_r_last']:.3f}"
            if t.get("loss_r_first") is not None and t.get("loss_r_last") is not None
            else "-"
        )
        cells = [_acc(r["validation"][m]) if m in r["validation"] else "-" for m in ms]
        inputs = ", ".join(rc["reward_inputs"] or [])
        if rc.get("reward_anchor"):
            inputs += f"; {rc.get('anchor_on', 'rewards')} anchored ({rc['reward_anchor']})"
        if rc.get("rotate_sampled"):
            inputs += "; one critique per epoch"
        lines.append(
            f"| {r['run']} | {rc['lambda']} | {inputs} | {t['steps']} | {loss} | "
            + " | ".join(cells)
            + " |"
        )
    seen: set[str] = set()
    for r in rows:  # the baselines each run was compared with, once
        for label, by_m in r["compared"].items():
            if label in seen:
                continue
            seen.add(label)
            cells = [_acc(by_m[m]) if m in by_m else "-" for m in ms]
            lines.append(f"| {label} | - | plain | - | - | " + " | ".join(cells) + " |")
    pairs = next(iter(rows[0]["validation"].values()))["pairs"] if rows else 0
    return (
        f"Validation split, {pairs} pairs; accuracy [95% Wilson interval].\n\n"
        + "\n".join(lines)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="validation run directories")
    parser.add_argument("--out", type=Path, required=True, help="writes ablations.{json,md}")
    args = parser.parse_args(argv)
    rows = [row(d) for d in args.runs]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablations.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "ablations.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
