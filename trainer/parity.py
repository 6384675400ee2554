"""Distributed parity: the same training under one process and under `accelerate launch`
configs must reach the same losses and weights.

    python -m trainer.parity worker MODEL_DIR OUT_DIR lora|full     # under any launcher
    python -m trainer.parity check --model MODEL_DIR --configs A.yaml,B.yaml --out DIR

`worker` trains MODEL_DIR (a small HF Llama) with trainer.train on fixed pairs with both
losses; the main process writes the per-step losses and the trained delta. `check` runs it
once as one process and once per accelerate config, prints a table, writes parity.json, and
exits 1 on a mismatch. tests/integration/test_distributed_train.py runs the CPU configs (gloo);
on a GPU node, trainer/configs/accelerate/check_gpu.sh runs the NCCL, FSDP and DeepSpeed ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch


def records() -> list[dict[str, Any]]:
    out = []
    for i in range(8):
        pair = {
            "prompt": f"What is {i} + {i}?",
            "chosen": f"{i} + {i} = {2 * i}.",
            "rejected": f"{i} + {i} = {2 * i + 1}.",
            "category": "reasoning",
        }
        out.append(
            {
                "pair": pair,
                "chosen_train": [f"The sum {2 * i} is right. Good."],
                "rejected_train": [f"The sum {2 * i + 1} is wrong by one. Bad."],
                "chosen_plain": ["Looks fine."],
                "rejected_plain": ["Looks off."],
            }
        )
    return out


def main(
    model_dir: str,
    out_dir: str,
    kind: str,
    mixed_precision: str = "no",
    gradient_checkpointing: bool = False,
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from service.checkpoint.manifest import Templates
    from service.contract.formatting import PromptFormatter
    from trainer import distributed
    from trainer.config import LoraConfig, TrainConfig
    from trainer.examples import build_examples
    from trainer.model import build_policy, save_delta
    from trainer.train import micro_steps, set_seed, train

    out = Path(out_dir)
    fmt = PromptFormatter(
        AutoTokenizer.from_pretrained(model_dir), Templates(), "<|endoftext|>", 512
    )
    examples = build_examples(
        fmt,
        records(),
        with_critiques=True,
        max_critique_tokens=32,
        max_len=512,
        reward_inputs=["plain", "sampled"],
    )
    cfg = TrainConfig(
        epochs=2,
        pairs_per_step=4,
        micro_batch=1,  # one pair per forward: every launch mode pads the same sequences
        # Full fine-tuning moves every weight: a smaller step keeps the float rounding of a
        # different reduction order from growing over the steps.
        lr=1e-2 if kind == "lora" else 1e-3,
        head_lr=5e-2,
        constant_lambda=0.5,
        lora=LoraConfig(enabled=kind == "lora", r=4, alpha=8),
        mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing,
    )
    acc = distributed.accelerator(
        mixed_precision=mixed_precision,
        log_with=[],
        project_dir=str(out),
        accumulation_steps=micro_steps(cfg, distributed.world_size()),
    )
    set_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    policy = build_policy(
        lm,
        torch.randn(1, lm.config.hidden_size) * 0.02,
        lora=cfg.lora if cfg.lora.enabled else None,
        trainable_layers=None,
        dtype=torch.float32,
        device=acc.device,
    )
    result = train(policy, examples, cfg, seed=0, pad_id=2, progress=False, acc=acc)
    if acc.is_main_process:
        save_delta(policy, out / "delta", {"name": "tiny"}, full_state=result.full_state)
        (out / "result.json").write_text(
            json.dumps(
                {
                    "processes": acc.num_processes,
                    "distributed": distributed.kind(acc),
                    "losses": [[r["loss_c"], r["loss_r"]] for r in result.log],
                    "tokens": result.tokens,
                }
            )
        )


def delta_tensors(delta: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = load_file(str(delta / "reward_head.safetensors"))
    weights = delta / "weights" / "model.safetensors"
    out.update(load_file(str(weights if weights.exists() else delta / "adapter.safetensors")))
    return out


def compare(reference: Path, other: Path, rel: float = 1e-4) -> dict[str, Any]:
    """Largest relative loss difference and weight difference of two worker outputs."""
    a = json.loads((reference / "result.json").read_text())
    b = json.loads((other / "result.json").read_text())
    worst = 0.0
    for pa, pb in zip(a["losses"], b["losses"], strict=True):
        for x, y in zip(pa, pb, strict=True):
            if (x is None) != (y is None):
                worst = float("inf")
            elif x is not None:
                worst = max(worst, abs(x - y) / max(abs(x), 1e-3))
    ta, tb = delta_tensors(reference / "delta"), delta_tensors(other / "delta")
    weights = (
        max(float((ta[k] - tb[k]).abs().max()) for k in ta)
        if ta.keys() == tb.keys()
        else float("inf")
    )
    return {
        "processes": b["processes"],
        "distributed": b["distributed"],
        "max_rel_loss_diff": worst,
        "max_abs_weight_diff": weights,
        "ok": worst <= rel and weights <= 10 * rel,
    }


def check(model: str, configs: list[str], kind: str, out: Path) -> int:
    import subprocess

    out.mkdir(parents=True, exist_ok=True)
    worker = ["-m", "trainer.parity", "worker", model]
    subprocess.run([sys.executable, *worker, str(out / "single"), kind], check=True)
    accelerate = Path(sys.executable).with_name("accelerate")
    rows = []
    for config in configs:
        name = Path(config).stem
        launch = [str(accelerate), "launch", "--config_file", config]
        subprocess.run([*launch, *worker, str(out / name), kind], check=True)
        rows.append({"config": config, **compare(out / "single", out / name)})
    print(f"{'config':<40} {'procs':>5} {'mode':<10} {'loss rel diff':>14} {'weight diff':>12}")
    for r in rows:
        print(
            f"{r['config']:<40} {r['processes']:>5} {r['distributed']:<10} "
            f"{r['max_rel_loss_diff']:>14.2e} {r['max_abs_weight_diff']:>12.2e}"
            f"{'' if r['ok'] else '  MISMATCH'}"
        )
    (out / "parity.json").write_text(json.dumps({"kind": kind, "runs": rows}, indent=2) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trainer.parity")
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker")
    w.add_argument("model")
    w.add_argument("out")
    w.add_argument("kind", choices=["lora", "full"])
    w.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    w.add_argument("--gradient-checkpointing", action="store_true")
    c = sub.add_parser("check")
    c.add_argument("--model", required=True)
    c.add_argument("--configs", required=True, help="comma-separated accelerate configs")
    c.add_argument("--kind", choices=["lora", "full"], default="lora")
    c.add_argument("--out", default="parity-results")
    args = parser.parse_args()
    if args.cmd == "worker":
        main(args.model, args.out, args.kind, args.mixed_precision, args.gradient_checkpointing)
    else:
        sys.exit(check(args.model, args.configs.split(","), args.kind, Path(args.out)))
