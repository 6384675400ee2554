"""Path b, the naive two-pass reference most research code uses: transformers `generate` for the
m critiques (num_return_sequences = m), then a second full forward over prompt + response +
critique + reward token for each reward, `batch` pairs at a time."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from loadtests.bench.measure import Meter, PathRun
from loadtests.bench.workload import Pair, Workload
from service.checkpoint.store import CheckpointRoot
from service.engines.factory import load_formatter
from service.engines.torch_scorer import load_scorer_model, pad_right, rewards_at_last_token
from service.settings import Settings


def _pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[row, width - len(s) :] = 1
    return ids, mask


def run(
    checkpoint_root: Path, w: Workload, warm: Workload, dtype: str, batch: int
) -> tuple[PathRun, list[dict[str, Any]]]:
    from transformers import AutoModelForCausalLM

    s = Settings(checkpoint_root=checkpoint_root)
    version = CheckpointRoot(checkpoint_root).resolve(None, verify_hashes=False)
    fmt = load_formatter(version, s.engine_config())
    tok = fmt.tokenizer
    pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
    torch_dtype = getattr(torch, dtype)
    lm = AutoModelForCausalLM.from_pretrained(version.generator_path, dtype=torch_dtype).eval()
    rm = load_scorer_model(version.scorer_path, dtype)
    torch.manual_seed(0)
    m = w.m
    stages = {"tokenize": 0.0, "generate": 0.0, "score_inputs": 0.0, "score": 0.0}

    def two_pass(chunk: list[Pair]) -> tuple[list[dict[str, Any]], int]:
        """Both passes over a batch of pairs; returns per-pair results and prompt tokens run."""
        t0 = time.perf_counter()
        enc = [fmt.encode_item(p.prompt, p.response, w.max_tokens, m) for p in chunk]
        stages["tokenize"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        ids, mask = _pad_left([e.critique_prompt for e in enc], pad_id)
        out = lm.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=w.temperature,
            top_p=w.top_p,
            max_new_tokens=w.max_tokens,
            num_return_sequences=m,
            pad_token_id=pad_id,
        )
        stages["generate"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        texts = [
            t.strip() for t in tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        ]
        seqs = [
            fmt.score_ids(e.score_prefix, texts[i * m + j])
            for i, e in enumerate(enc)
            for j in range(m)
        ]
        stages["score_inputs"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        sids, smask = pad_right(seqs, pad_id)
        rewards = rewards_at_last_token(rm, sids, smask).float().tolist()
        stages["score"] += time.perf_counter() - t0
        tokens = m * sum(len(e.critique_prompt) for e in enc) + sum(len(q) for q in seqs)
        results = [
            {
                "reward": statistics.fmean(rewards[i * m : (i + 1) * m]),
                "critique_rewards": rewards[i * m : (i + 1) * m],
                "critiques": texts[i * m : (i + 1) * m],
            }
            for i in range(len(enc))
        ]
        return results, tokens

    results: list[dict[str, Any]] = []
    latencies: list[float] = []
    prompt_tokens = 0
    with torch.inference_mode():
        two_pass(warm.pairs)  # untimed: oneDNN picks and JITs its kernels on first use
        stages = dict.fromkeys(stages, 0.0)
        with Meter() as meter:
            for start in range(0, w.n, batch):
                t0 = time.perf_counter()
                res, tokens = two_pass(w.pairs[start : start + batch])
                latencies.append(time.perf_counter() - t0)
                results += res
                prompt_tokens += tokens
    run_ = PathRun(
        path=f"b:naive-{dtype}",
        label=f"transformers generate + second forward, {dtype}, {batch} pairs per batch, m={m}",
        pairs=w.n,
        wall_s=meter.wall_s,
        cpu_s=meter.cpu_s,
        latencies_s=latencies,
        prompt_tokens=prompt_tokens,
        computed_tokens=prompt_tokens,  # no prefix cache: every prompt token is computed
        rewards=[r["reward"] for r in results],
        breakdown_s=stages,
        notes=["latency is per batch of pairs"],
        float32=dtype == "float32",
    )
    return run_, results
