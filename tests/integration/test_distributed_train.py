"""The trainer under `accelerate launch --num_processes 2` (gloo on this CPU machine): DDP and
FSDP reach the one-process losses and weights, the CLI runs the whole pipeline with only the
main process writing, TensorBoard gets the scalars, and a run stopped by SIGTERM mid-train
resumes to the same weights as a run that was never stopped. No vLLM engine: bt mode, and the
loop itself for the critique loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer.parity import delta_tensors

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = Path(sys.executable).with_name("accelerate")
CONFIGS = REPO / "trainer" / "configs" / "accelerate"
WORKER = ["-m", "trainer.parity", "worker"]
TIMEOUT = 300


def _env() -> dict[str, str]:
    # One thread per process: two processes share this machine's 2 cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _launch(args: list[str], config: str | None, log: Path) -> None:
    if config is None:
        cmd = [sys.executable, *args]
    else:
        cmd = [str(ACCELERATE), "launch", "--config_file", str(CONFIGS / config), *args]
    with log.open("w") as out:
        rc = subprocess.run(
            cmd, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT
        ).returncode
    assert rc == 0, log.read_text()[-3000:]


def _assert_same_weights(a: Path, b: Path, atol: float) -> None:
    ta, tb = delta_tensors(a), delta_tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(tb[key], ta[key], atol=atol, rtol=0, msg=key)


@pytest.mark.parametrize(
    ("kind", "configs"),
    [("lora", ["cpu_ddp.yaml", "cpu_fsdp.yaml"]), ("full", ["cpu_fsdp.yaml"])],
)
def test_two_processes_reach_the_one_process_losses_and_weights(
    tiny_llama: Path, tmp_path: Path, kind: str, configs: list[str]
) -> None:
    single = tmp_path / "single"
    _launch([*WORKER, str(tiny_llama), str(single), kind], None, tmp_path / "single.log")
    ref = json.loads((single / "result.json").read_text())
    assert ref["processes"] == 1 and any(c is not None for c, _ in ref["losses"])
    for config in configs:
        out = tmp_path / config.removesuffix(".yaml")
        _launch([*WORKER, str(tiny_llama), str(out), kind], config, tmp_path / "run.log")
        got = json.loads((out / "result.json").read_text())
        assert got["processes"] == 2
        assert got["distributed"] == ("fsdp" if "fsdp" in config else "ddp")
        assert got["tokens"] == ref["tokens"]  # the same sequences, split between the two
        for (c1, r1), (c2, r2) in zip(ref["losses"], got["losses"], strict=True):
            assert (c1 is None) == (c2 is None)
            if c1 is not None:
                assert c2 == pytest.approx(c1, rel=1e-4)
            assert r2 == pytest.approx(r1, rel=1e-4, abs=1e-5)
        _assert_same_weights(single / "delta", out / "delta", atol=1e-4)


def test_mixed_precision_and_gradient_checkpointing_train_the_same_model(
    tiny_llama: Path, tmp_path: Path
) -> None:
    runs = {}
    for name, flags in (
        ("plain", []),
        ("checkpointed", ["--gradient-checkpointing"]),
        ("bf16", ["--mixed-precision", "bf16"]),
    ):
        out = tmp_path / name
        _launch([*WORKER, str(tiny_llama), str(out), "lora", *flags], None, tmp_path / "w.log")
        runs[name] = json.loads((out / "result.json").read_text())["losses"]
    # Recomputing activations changes no number; bf16 autocast changes them a little.
    for other, rel, abs_ in (("checkpointed", 1e-5, 1e-6), ("bf16", 0.05, 0.03)):
        for (c1, r1), (c2, r2) in zip(runs["plain"], runs[other], strict=True):
            assert r2 == pytest.approx(r1, rel=rel, abs=abs_), other
            assert (c1 is None and c2 is None) or c2 == pytest.approx(c1, rel=rel), other
    assert runs["bf16"] != runs["plain"]  # autocast did run in bf16


def _bt_args(tiny_llama: Path, out: Path, *extra: str) -> list[str]:
    sets = [
        f"out_dir={out}",
        f"base_model={tiny_llama}",
        f"export.checkpoint_root={out / 'published'}",
        "export.name=tiny-bt",
        "data.per_category=8",
        "train.pairs_per_step=2",
        "train.micro_batch=1",
        "train.dtype=float32",
        "train.lr=0.002",
        "train.head_lr=0.01",
        "train.lora.r=4",
        "train.lora.alpha=8",
        *extra,
    ]
    args = ["-m", "critic_rm.cli", "train", "--config", str(REPO / "trainer/configs/bt.yaml")]
    return [*args, *(a for s in sets for a in ("--set", s))]


def test_the_cli_under_ddp_trains_exports_and_logs_like_one_process(
    tiny_llama: Path, tmp_path: Path
) -> None:
    runs = {}
    for name, config in (("single", None), ("ddp", "cpu_ddp.yaml")):
        out = tmp_path / name
        args = _bt_args(tiny_llama, out, "train.epochs=2")
        _launch([*args, "--until", "export"], config, tmp_path / f"{name}.log")
        runs[name] = json.loads((out / "stages" / "train.json").read_text())
        assert (out / "stages" / "export.json").is_file()  # the main process exported
    assert runs["single"]["processes"] == 1 and runs["ddp"]["processes"] == 2
    assert runs["ddp"]["distributed"] == "ddp" and runs["ddp"]["tokens_per_s"] > 0
    assert runs["ddp"]["loss_r_last"] == pytest.approx(runs["single"]["loss_r_last"], rel=1e-4)
    _assert_same_weights(tmp_path / "single" / "delta", tmp_path / "ddp" / "delta", atol=1e-4)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tmp_path / "ddp" / "tb").rglob("events.out.tfevents.*"))
    scalars: set[str] = set()
    for file in events:
        acc = EventAccumulator(str(file))
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
    assert {"train/loss_r", "train/lambda", "train/lr", "train/tokens_per_s"} <= scalars
    steps = runs["ddp"]["steps"]
    loss = [e for file in events for e in _scalar(file, "train/loss_r")]
    assert len(loss) == steps  # one scalar per optimizer step, from the main process only


def test_weights_and_biases_tracks_offline(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = _bt_args(tiny_llama, out, "train.epochs=1", "tracking.wandb=true")
    env = {**_env(), "WANDB_MODE": "offline"}
    log = tmp_path / "wandb.log"
    with log.open("w") as f:
        cmd = [sys.executable, *args, "--until", "train"]
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    assert rc == 0 and "Traceback" not in log.read_text(), log.read_text()[-3000:]
    steps = json.loads((out / "stages" / "train.json").read_text())["steps"]
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    body = run_file.read_bytes()
    for key in (b"train/loss_r", b"train/lambda", b"train/lr", b"train/tokens_per_s"):
        assert body.count(key) >= steps, key  # one history row per optimizer step


def _scalar(file: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(file))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def test_a_run_stopped_mid_train_resumes_to_the_uninterrupted_weights(
    tiny_llama: Path, tmp_path: Path
) -> None:
    extra = ("train.epochs=12", "checkpointing.every_steps=5")
    whole = tmp_path / "whole"
    _launch([*_bt_args(tiny_llama, whole, *extra), "--until", "train"], None, tmp_path / "w.log")
    steps = json.loads((whole / "stages" / "train.json").read_text())["steps"]
    assert not (whole / "train_state").exists()  # removed once the delta is written

    stopped = tmp_path / "stopped"
    cmd = [sys.executable, *_bt_args(tiny_llama, stopped, *extra), "--until", "train"]
    log = stopped.with_suffix(".log")
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT)
        train_log = stopped / "train_log.jsonl"
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if train_log.is_file() and len(train_log.read_text().splitlines()) >= steps // 3:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 143, log.read_text()[-3000:]
    loop = json.loads((stopped / "train_state" / "loop.json").read_text())
    assert steps // 3 <= loop["step"] < steps
    assert not (stopped / "stages" / "train.json").exists()
    # An adapter-sized checkpoint: the trainable weights only, not the base model.
    assert (stopped / "train_state" / "model.safetensors").stat().st_size < 1_000_000

    _launch([*_bt_args(tiny_llama, stopped, *extra), "--until", "train"], None, log)
    summary = json.loads((stopped / "stages" / "train.json").read_text())
    assert summary["resumed_from_step"] == loop["step"]
    rows = [json.loads(line) for line in (stopped / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(steps))
    _assert_same_weights(whole / "delta", stopped / "delta", atol=0.0)
