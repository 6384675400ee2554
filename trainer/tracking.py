"""The evaluation's accuracies into the run's experiment tracking (the train stage logs its own
scalars through Accelerate's trackers): TensorBoard under OUT/tb/<project>/eval, and a W&B run
named after the run directory when tracking.wandb is on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trainer.run import Run


def eval_scalars(results: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, float]:
    """eval/<label>/<split>/m<m>: accuracy, one scalar per checkpoint, split and m."""
    out = {}
    for label, result in zip(labels, results, strict=True):
        name = label.replace(" ", "_").replace("/", "_")
        for split, by_m in result.get("splits", {}).items():
            for m, acc in by_m.items():
                if acc["overall"] is not None:  # an empty split has no accuracy
                    out[f"eval/{name}/{split}/m{m}"] = float(acc["overall"])
    return out


def log_eval(run: Run, results: Sequence[dict[str, Any]], labels: Sequence[str]) -> None:
    scalars = eval_scalars(results, labels)
    t = run.cfg.tracking
    if t.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.path("tb") / t.project / "eval"))
        try:
            for key, value in scalars.items():
                writer.add_scalar(key, value, global_step=0)
        finally:
            writer.close()
    if t.wandb:
        import wandb

        wb = wandb.init(
            project=t.project, name=f"{run.dir.name}-eval", dir=str(run.dir), job_type="eval"
        )
        try:
            wb.log(scalars)
        finally:
            wb.finish()
            wandb.teardown()  # before the CLI reaps W&B's service process (see stage_train)


def train_trackers(run: Run) -> list[str]:
    t = run.cfg.tracking
    return [name for name, on in (("tensorboard", t.tensorboard), ("wandb", t.wandb)) if on]


def flat_hparams(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Hyperparameters as TensorBoard takes them: flat, scalars or strings."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_hparams(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[f"{prefix}{key}"] = "none" if value is None else value
        else:
            out[f"{prefix}{key}"] = str(value)
    return out
