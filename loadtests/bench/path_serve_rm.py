"""Path e (standard RM): OpenRLHF's `serve_rm` on critic-rm's scorer view, run from an OpenRLHF
source checkout given by path (nothing of it is copied here). It scores [x; y; reward token] at
the last token, like critic-rm at m = 0: the client sends the exact text of critic-rm's m = 0
sequence, which serve_rm tokenises without adding special tokens and reads at the last token.

serve_rm imports deepspeed, peft and flash_attn at start-up; put an environment providing them
on --openrlhf-pythonpath (see docs/performance.md, path e). It serves in bf16 or fp16 only
(`--ds.param_dtype`), one request at a time; critic-rm's scorer runs in float32, so its rewards
differ from critic-rm's by bf16 rounding.

Like transformers, serve_rm reads only `model.safetensors` when that file exists and ignores the
index, so on the scorer view itself it would serve a freshly initialised head ("score.weight |
MISSING"). It is therefore given a one-file copy of the same scorer: backbone + head merged."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench.measure import Meter, PathRun
from loadtests.bench.procs import free_port, server_process
from loadtests.bench.workload import Workload
from service.checkpoint.manifest import REWARD_HEAD_FILE
from service.checkpoint.store import CheckpointRoot
from service.engines.factory import load_formatter
from service.settings import Settings


def _flags(src: Path, model: Path, port: int, max_len: int) -> list[str]:
    """serve_rm's flag names changed in 2026-04 (dotted config groups)."""
    code = (src / "openrlhf" / "cli" / "serve_rm.py").read_text()
    if "reward.model_name_or_path" in code:
        return [
            "--reward.model_name_or_path", str(model),
            "--ds.attn_implementation", "sdpa",
            "--data.max_len", str(max_len),
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
    return [
        "--reward_pretrain", str(model),
        "--attn_implementation", "sdpa",
        "--max_len", str(max_len),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def merged_scorer(scorer: Path, out: Path) -> Path:
    """A copy of the scorer view with backbone and reward head in one model.safetensors."""
    import shutil

    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Any] = {}
    for shard in sorted(scorer.glob("*.safetensors")):
        if shard.name != REWARD_HEAD_FILE:
            tensors.update(load_file(str(shard)))
    tensors.update(load_file(str(scorer / REWARD_HEAD_FILE)))
    save_file(tensors, str(out / "model.safetensors"))
    for file in scorer.iterdir():
        if file.is_file() and not file.name.endswith((".safetensors", ".index.json")):
            shutil.copy2(file, out / file.name)
    return out


def run(
    checkpoint_root: Path,
    w: Workload,
    src: Path,
    pythonpath: str,
    logs: Path,
    batch: int,
) -> tuple[PathRun, list[dict[str, Any]]]:
    s = Settings(checkpoint_root=checkpoint_root)
    version = CheckpointRoot(checkpoint_root).resolve(None, verify_hashes=False)
    fmt = load_formatter(version, s.engine_config())
    texts = []
    tokens = 0
    for p in w.pairs:
        ids = fmt.score_ids(
            fmt.encode_item(p.prompt, p.response, w.max_tokens, 0).score_prefix, None
        )
        tokens += len(ids)
        texts.append(fmt.tokenizer.decode(ids, skip_special_tokens=False))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "openrlhf.cli.serve_rm",
        *_flags(
            src, merged_scorer(version.scorer_path, logs / "serve-rm-scorer"), port, s.max_model_len
        ),
    ]
    env = {
        "PYTHONPATH": ":".join(x for x in [str(src), pythonpath] if x),
        "DS_ACCELERATOR": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
    }
    # serve_rm has no health route; FastAPI's /docs answers once uvicorn listens.
    probe_url = f"{url}/docs"
    latencies: list[float] = []
    rewards: list[float] = []
    log = logs / "openrlhf-serve-rm.log"
    with server_process(cmd, probe_url, log, env, timeout_s=600), httpx.Client(timeout=3600) as c:
        c.post(f"{url}/get_reward", json={"query": texts[:2]}).raise_for_status()  # warm
        with Meter() as meter:
            for i in range(0, len(texts), batch):
                t0 = time.perf_counter()
                r = c.post(f"{url}/get_reward", json={"query": texts[i : i + batch]})
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)
                rewards += [float(x) for x in r.json()["rewards"]]
    run_ = PathRun(
        path="e:openrlhf-serve_rm",
        label=f"OpenRLHF serve_rm (bf16, sdpa), {batch} queries per request, m=0",
        pairs=w.n,
        wall_s=meter.wall_s,
        cpu_s=meter.cpu_s,
        latencies_s=latencies,
        prompt_tokens=tokens,
        computed_tokens=tokens,
        rewards=rewards,
        notes=["bf16: rewards differ from the float32 scorer by bf16 rounding"],
        float32=False,
    )
    return run_, [{"reward": r, "critique_rewards": [], "critiques": []} for r in rewards]
