"""Trainer throughput: one process against `accelerate launch` with several, side by side.

    python -m loadtests.bench_train                   # SmolLM2-135M, 48 pairs, 2 epochs
    python -m loadtests.bench_train --dtype float32 --pairs 32

The same joint-loss training (ℓ_c on one critique per response, ℓ_r on [x; y] and [x; y; z])
of the default base model (the packaged SmolLM2-135M-Instruct, from the default checkpoint's
generator view) on the same synthetic pairs runs once as one process with every core, then
once per accelerate config (default: trainer/configs/accelerate/cpu_ddp.yaml, 2 processes of
one thread each). Reported per run: tokens forwarded per second over the training loop (model
load and start-up excluded), seconds per optimizer step, and the ratio to one process; the
final losses show that the runs trained the same thing. Run it with nothing else busy on the
machine; a table is printed and JSON written to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _records(n: int) -> list[dict[str, Any]]:
    from trainer.data import synthetic

    pairs = synthetic.generate(max(1, n // 4 + 1), seed=0)[:n]
    return [
        {
            "pair": p.to_json(),
            "chosen_train": [
                "Analysis: The response follows the request and its result checks out.\n"
                "Overall judgment: Correct"
            ],
            "rejected_train": [
                "Analysis: The response breaks the request; its result does not hold.\n"
                "Overall judgment: Incorrect"
            ],
            "chosen_plain": ["The response looks reasonable."],
            "rejected_plain": ["The response looks doubtful."],
        }
        for p in pairs
    ]


def worker(model: str, out: str, pairs: int, epochs: int, dtype: str) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from service.checkpoint.manifest import REWARD_HEAD_FILE, REWARD_HEAD_KEY
    from service.checkpoint.store import CheckpointRoot
    from service.engines.config import EngineConfig
    from service.engines.factory import load_formatter
    from trainer import distributed
    from trainer.config import LoraConfig, TrainConfig
    from trainer.examples import build_examples
    from trainer.model import build_policy
    from trainer.train import micro_steps, set_seed, train

    version = CheckpointRoot(Path(model)).resolve(verify_hashes=False)
    fmt = load_formatter(version, EngineConfig())
    examples = build_examples(
        fmt,
        _records(pairs),
        with_critiques=True,
        max_critique_tokens=64,
        max_len=1024,
        reward_inputs=["plain", "sampled"],
    )
    cfg = TrainConfig(
        epochs=epochs,
        pairs_per_step=8,
        micro_batch=4,
        constant_lambda=0.5,
        dtype=dtype,
        trainable_layers=10,
        lora=LoraConfig(r=8, alpha=16),
    )
    acc = distributed.accelerator(
        mixed_precision="no",
        log_with=[],
        project_dir=out,
        accumulation_steps=micro_steps(cfg, distributed.world_size()),
    )
    set_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(version.generator_path, dtype=torch.float32)
    head = load_file(str(version.scorer_path / REWARD_HEAD_FILE))[REWARD_HEAD_KEY]
    policy = build_policy(
        lm,
        head,
        lora=cfg.lora,
        trainable_layers=cfg.trainable_layers,
        dtype=getattr(torch, dtype),
        device=acc.device,
    )
    pad = fmt.tokenizer.pad_token_id
    pad_id = int(pad if pad is not None else fmt.tokenizer.eos_token_id)
    result = train(policy, examples, cfg, seed=0, pad_id=pad_id, progress=False, acc=acc)
    if acc.is_main_process:
        steps = [r["seconds"] for r in result.log]
        per_step = [b - a for a, b in zip([0.0, *steps[:-1]], steps, strict=True)]
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "result.json").write_text(
            json.dumps(
                {
                    "processes": acc.num_processes,
                    "distributed": distributed.kind(acc),
                    "torch_threads": torch.get_num_threads(),
                    "steps": result.steps,
                    "tokens": result.tokens,
                    "seconds": result.seconds,
                    "tokens_per_s": result.tokens / result.seconds,
                    "step_s_median": statistics.median(per_step),
                    "last_loss_c": result.log[-1]["loss_c"],
                    "last_loss_r": result.log[-1]["loss_r"],
                }
            )
        )


def _run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("w") as f:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}); see {log}")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtests.bench_train")
    ap.add_argument("--checkpoint-root", default="checkpoints")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument(
        "--configs",
        default=str(REPO / "trainer/configs/accelerate/cpu_ddp.yaml"),
        help="comma-separated accelerate configs to run beside one process",
    )
    ap.add_argument("--machine", default=_cpu_model())
    ap.add_argument("--out", default="bench-results/train")
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("dir")
    args = ap.parse_args()
    if args.cmd == "worker":
        worker(args.checkpoint_root, args.dir, args.pairs, args.epochs, args.dtype)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [
        "--checkpoint-root",
        str(args.checkpoint_root),
        "--pairs",
        str(args.pairs),
        "--epochs",
        str(args.epochs),
        "--dtype",
        args.dtype,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs: list[dict[str, Any]] = []
    single = out / "single"
    _run(
        [sys.executable, "-m", "loadtests.bench_train", *common, "worker", str(single)],
        env,
        out / "single.log",
    )
    runs.append({"run": "one process", **json.loads((single / "result.json").read_text())})
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    cores = os.cpu_count() or 1
    for config in args.configs.split(","):
        name = Path(config).stem
        launch = [accelerate, "launch", "--config_file", config, "-m", "loadtests.bench_train"]
        # The processes share the cores: each gets its share of threads.
        procs = int(_launch_processes(Path(config)))
        threads = {"OMP_NUM_THREADS": str(max(1, cores // procs))}
        _run([*launch, *common, "worker", str(out / name)], {**env, **threads}, out / f"{name}.log")
        runs.append({"run": name, **json.loads((out / name / "result.json").read_text())})
    base = runs[0]["tokens_per_s"]
    for r in runs:
        r["ratio"] = r["tokens_per_s"] / base
    print(f"\nTrainer throughput, {args.machine}, {cores} cores, {args.dtype}, {args.pairs} pairs")
    print(
        f"{'run':<14} {'procs':>5} {'thr/proc':>8} {'steps':>5} {'tokens':>7} "
        f"{'tokens/s':>9} {'s/step p50':>10} {'ratio':>6} {'last lc':>8} {'last lr':>8}"
    )
    for r in runs:
        print(
            f"{r['run']:<14} {r['processes']:>5} {r['torch_threads']:>8} {r['steps']:>5} "
            f"{r['tokens']:>7} {r['tokens_per_s']:>9.1f} {r['step_s_median']:>10.2f} "
            f"{r['ratio']:>6.2f} {r['last_loss_c']:>8.4f} {r['last_loss_r']:>8.4f}"
        )
    report = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": args.machine,
        "cores": cores,
        "platform": platform.platform(),
        "dtype": args.dtype,
        "pairs": args.pairs,
        "epochs": args.epochs,
        "runs": runs,
    }
    (out / "train.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'train.json'}")


def _cpu_model() -> str:
    """The CPU's model name and its bf16 features (the figures depend on them)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if "model name" in ln), "")
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    bf16 = [f for f in ("amx_bf16", "avx512_bf16", "avx2") if f in flags][:2]
    return f"{name or platform.machine()} ({', '.join(bf16) or 'no bf16 features'})"


def _launch_processes(config: Path) -> int:
    import yaml

    return int(yaml.safe_load(config.read_text()).get("num_processes", 1))


if __name__ == "__main__":
    main()
