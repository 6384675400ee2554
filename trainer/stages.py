"""The stages of `critic-rm train`, in order (PIPELINE); each reads earlier stages' files and
returns a summary. trainer.pipeline runs them."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.checkpoint.manifest import REWARD_HEAD_FILE, REWARD_HEAD_KEY, SamplingDefaults
from trainer.data.load import (
    load_pairs,
    read_json_lines,
    read_jsonl,
    write_json_lines,
    write_jsonl,
)
from trainer.data.pairs import PreferencePair
from trainer.run import Run, base_version, engine_config

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- helpers
def _counts(pairs: list[PreferencePair]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in pairs:
        out[p.category] = out.get(p.category, 0) + 1
    return dict(sorted(out.items()))


def trainer_info(run: Run) -> dict[str, Any]:
    t = run.cfg.train
    return {
        "mode": t.mode,
        "epochs": t.epochs,
        "beta": t.beta,
        "constant_lambda": t.constant_lambda,
        "lora": t.lora.model_dump() if t.lora.enabled else None,
        "trainable_layers": t.trainable_layers,
        "refine": run.cfg.refine.model_dump() if t.mode == "critic" else None,
        "reward_inputs": t.reward_inputs if t.mode == "critic" else ["plain"],
        "syncpl": run.cfg.syncpl.model_dump() if t.mode == "syncpl" else None,
        "reward_anchor": t.reward_anchor if t.mode == "critic" else None,
        "anchor_on": t.anchor_on if t.mode == "critic" and t.reward_anchor else None,
        "rotate_sampled": t.rotate_sampled if t.mode == "critic" else None,
        "grounded": run.cfg.sampling.grounded if t.mode == "critic" else None,
        "num_critiques_sampled": run.cfg.sampling.num_critiques if t.mode == "critic" else 0,
        "seed": run.cfg.seed,
    }


def eval_splits(run: Run) -> dict[str, list[PreferencePair]]:
    """The synthetic evaluation splits of `eval.splits`, made from the run's seed (and written
    beside the run's other splits), without any pair whose prompt or group (a code task, a
    safety request) training or validation has: such a pair would be partly a train pair."""
    from trainer.data import synthetic

    makers: dict[str, Callable[..., list[PreferencePair]]] = {
        "hard": synthetic.generate_hard,
        "length_bias": synthetic.generate_length_bias,
        "heldout_family": synthetic.generate_heldout,
        "unseen": synthetic.generate_unseen,
    }
    seen = [*read_jsonl(run.path("train.jsonl")), *read_jsonl(run.path("val.jsonl"))]
    keys = {p.prompt_key() for p in seen} | {synthetic.group_key(p) for p in seen}
    out: dict[str, list[PreferencePair]] = {}
    for name, size in run.cfg.eval.splits.items():
        made = makers[name](size, seed=run.cfg.seed)
        part = [
            p for p in made if p.prompt_key() not in keys and synthetic.group_key(p) not in keys
        ]
        write_jsonl(part, run.path(f"{name}.jsonl"))
        out[name] = part
    return out


# ---------------------------------------------------------------- stages
def stage_data(run: Run) -> dict[str, Any]:
    from trainer.data import synthetic

    d = run.cfg.data
    if d.source == "synthetic":
        pairs = synthetic.generate(d.per_category, seed=run.cfg.seed)
    else:
        pairs = load_pairs(Path(d.source))
    fractions = (1.0 - d.val_fraction - d.test_fraction, d.val_fraction, d.test_fraction)
    train, val, test = synthetic.split(pairs, fractions, seed=run.cfg.seed)
    if d.max_train_pairs is not None:
        train = train[: d.max_train_pairs]
    for name, part in (("train", train), ("val", val), ("test", test)):
        write_jsonl(part, run.path(f"{name}.jsonl"))
    return {
        "source": d.source,
        "train": _counts(train),
        "val": _counts(val),
        "test": _counts(test),
    }


def stage_base(run: Run) -> dict[str, Any]:
    from service.checkpoint.bootstrap import bootstrap

    root = run.path("base")
    if root.exists():
        shutil.rmtree(root)
    source = Path(run.cfg.base_model) if run.cfg.base_model else None
    version = bootstrap(root, source, seed=run.cfg.seed)
    return {"version": version.manifest.model_version, "base_model": version.manifest.base_model}


async def stage_judge(run: Run) -> dict[str, Any]:
    """SyncPL: /compare's judgment trajectories for every training pair, the label rules."""
    from trainer.syncpl import judge_stage

    return await judge_stage(run)


async def stage_sample(run: Run) -> dict[str, Any]:
    from trainer.sampling import sample

    records, stats, replicas = await sample(run)
    write_json_lines(records, run.path("critiques.jsonl"))
    return {
        "pairs": len(records),
        "critiques": stats.critiques,
        "unparseable_dropped": stats.unparseable,
        "grounded_pairs": stats.grounded_pairs,
        "teacher_critiques": stats.teacher,
        "hint_echoes_dropped": stats.hint_echoes,
        "per_category": stats.per_category,
        **replicas,
    }


def stage_filter(run: Run) -> dict[str, Any]:
    from trainer.selection import filter_grounded

    records = read_json_lines(run.path("critiques.jsonl"))
    kept, report, agreement = filter_grounded(records)
    write_json_lines(kept, run.path("filtered.jsonl"))
    return {
        "kept": len(kept),
        "pairs": len(records),
        "grounded": sum("verifier" in r for r in records),
        "verdict_agreement": agreement,
        "report": report.to_json(),
    }


async def stage_refine(run: Run) -> dict[str, Any]:
    from service.engines.factory import load_formatter, load_generator
    from trainer.critiques import refine

    records = read_json_lines(run.path("filtered.jsonl"))
    if not records:
        raise RuntimeError("the instance filter kept no pair; nothing to refine or train on")
    engine_cfg = engine_config(run)
    version = base_version(run)
    fmt = load_formatter(version, engine_cfg)
    generator = None
    if run.cfg.refine.method != "none":  # none keeps the first K as sampled: no engine
        generator = await asyncio.to_thread(load_generator, version, engine_cfg)
    try:
        refined = await refine(
            generator, fmt, records, run.cfg.refine, run.cfg.sampling, run.cfg.seed
        )
    finally:
        if generator is not None:
            generator.shutdown()
    write_json_lines(refined, run.path("refined.jsonl"))
    per = [len(r["chosen_train"]) for r in refined] + [len(r["rejected_train"]) for r in refined]
    return {
        "method": run.cfg.refine.method,
        "pairs": len(refined),
        "critiques_per_response": per and min(per),
    }


def stage_train(run: Run) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from service.engines.factory import load_formatter
    from trainer import distributed
    from trainer.examples import build_examples
    from trainer.model import build_policy, resolve_device, resolve_dtype, save_delta
    from trainer.preference import after_joint_training
    from trainer.syncpl import rsft_examples
    from trainer.tracking import flat_hparams, train_trackers
    from trainer.train import Checkpointing, micro_steps, set_seed, train
    from trainer.train_state import clear as clear_state

    cfg, t = run.cfg, run.cfg.train
    version = base_version(run)
    fmt = load_formatter(version, engine_config(run), fused=t.format_version == 2)
    critic = t.mode == "critic"
    if critic:
        records = read_json_lines(run.path("refined.jsonl"))
    else:
        records = [{"pair": p.to_json()} for p in read_jsonl(run.path("train.jsonl"))]
    examples = build_examples(
        fmt,
        records,
        with_critiques=critic,
        max_critique_tokens=cfg.sampling.max_tokens,
        max_len=t.max_len,
        reward_inputs=t.reward_inputs,
        anchored=t.reward_anchor > 0,
        rotate_sampled=t.rotate_sampled,
    )
    if t.mode == "syncpl":  # the reward head on every pair, the judge on the kept trajectories
        records = read_json_lines(run.path("judged.jsonl"))
        examples += rsft_examples(fmt, records, t.max_len)
    set_seed(cfg.seed)
    acc = distributed.accelerator(
        mixed_precision=t.mixed_precision,
        log_with=train_trackers(run),
        project_dir=str(run.path("tb")),
        accumulation_steps=micro_steps(t, distributed.world_size()),
    )
    device = acc.device if distributed.launched() else resolve_device(t.device)
    dtype = resolve_dtype(t.dtype, device, fsdp=distributed.kind(acc) == "fsdp")
    lm = AutoModelForCausalLM.from_pretrained(version.generator_path, dtype=torch.float32)
    head = load_file(str(version.scorer_path / REWARD_HEAD_FILE))[REWARD_HEAD_KEY]
    policy = build_policy(
        lm,
        head,
        lora=t.lora if t.lora.enabled else None,
        trainable_layers=t.trainable_layers,
        dtype=dtype,
        device=device,
    )
    trainable = sum(p.numel() for p in policy.trainable_named().values())
    pad = fmt.tokenizer.pad_token_id
    pad_id = int(pad if pad is not None else fmt.tokenizer.eos_token_id)
    if acc.trackers == [] and train_trackers(run):
        acc.init_trackers(
            run.cfg.tracking.project,
            config=flat_hparams(run.cfg.train.model_dump()),
            init_kwargs={"wandb": {"dir": str(run.dir)}},
        )
    checkpoints = Checkpointing(
        run.path("train_state"), run.digests["train"], run.cfg.checkpointing.every_steps
    )
    result = train(
        policy,
        examples,
        t,
        seed=cfg.seed,
        pad_id=pad_id,
        log_path=run.path("train_log.jsonl"),
        acc=acc,
        checkpoints=checkpoints,
    )
    acc.end_training()
    preference = after_joint_training(run, policy, records if t.mode != "bt" else [], fmt, pad_id)
    if run.cfg.tracking.wandb and acc.is_main_process:
        import wandb

        # Stop W&B's service process now: the CLI reaps its children on exit, and W&B's own
        # exit hook would then find it gone.
        wandb.teardown()
    if not acc.is_main_process:
        return {}
    manifest = version.manifest
    save_delta(
        policy,
        run.path("delta"),
        {
            "name": cfg.export.name,
            "base_model": cfg.base_model,
            "templates": manifest.templates.model_dump(),
            "reward_token": manifest.reward_token,
            "format_version": t.format_version,
            "sampling": SamplingDefaults(
                max_critique_tokens=cfg.sampling.max_tokens,
                temperature=cfg.sampling.temperature,
                top_p=cfg.sampling.top_p,
            ).model_dump(),
            "metrics": {"trainer": trainer_info(run)},
        },
        full_state=result.full_state,
    )
    clear_state(checkpoints.directory)  # the delta is written: nothing left to resume
    return {
        "examples": len(examples),
        "steps": result.steps,
        "resumed_from_step": result.resumed_from,
        "train_seconds": result.seconds,
        "tokens": result.tokens,
        "tokens_per_s": result.tokens / result.seconds if result.seconds > 0 else None,
        "processes": acc.num_processes,
        "distributed": distributed.kind(acc),
        "device": str(device),
        "trainable_params": trainable,
        **preference,
        "loss_c_first": result.mean("loss_c", first=True),
        "loss_c_last": result.mean("loss_c", first=False),
        "loss_r_first": result.mean("loss_r", first=True),
        "loss_r_last": result.mean("loss_r", first=False),
    }


def stage_export(run: Run) -> dict[str, Any]:
    from trainer.export import assemble

    root = run.path("checkpoints")
    if root.exists():
        shutil.rmtree(root)
    version = assemble(run.path("delta"), root)
    return {"version": version.manifest.model_version, "path": str(version.path)}


async def stage_eval(run: Run) -> dict[str, Any]:
    from service.checkpoint.store import CheckpointError
    from trainer import critic_eval, syncpl
    from trainer.evaluate import evaluate, resolve_checkpoint, write_report
    from trainer.tracking import log_eval

    e = run.cfg.eval
    engine_cfg = engine_config(run)
    val = read_jsonl(run.path("val.jsonl"))
    splits: dict[str, Sequence[PreferencePair]]
    if e.on == "validation":  # recipes are chosen here, never on test
        splits = {"validation": val[: e.max_pairs]}
    else:
        splits = {"test": read_jsonl(run.path("test.jsonl"))[: e.max_pairs]}
        for name, part in eval_splits(run).items():
            splits[name] = part[: e.max_pairs]
    val = val[: e.stats_pairs]
    own = Path(run.summary("export")["path"])
    results = [await evaluate(own, splits, e.ms, engine_cfg, stats_pairs=val)]
    labels = [f"{run.cfg.export.name} ({run.cfg.train.mode})"]
    skipped = []
    for label, path in e.compare.items():
        try:
            other = resolve_checkpoint(Path(path))
        except (CheckpointError, OSError) as exc:
            log.warning("eval.compare %s: %s; not compared", label, exc)
            skipped.append({"label": label, "path": path, "error": str(exc)})
            continue
        results.append(await evaluate(other.path, splits, e.ms, engine_cfg))
        labels.append(label)
    write_report(results, labels, run.path("eval"))
    log_eval(run, results, labels)
    beside: dict[str, Any] = {}  # what a critic and a judge are for, before and after
    if e.critic:
        beside["critic"] = await critic_eval.critic_report(run, own, splits)
    if run.cfg.train.mode == "syncpl":
        beside["compare"] = await syncpl.compare_report(run, own, splits)
    return {
        "results": [{"label": lbl, **r} for lbl, r in zip(labels, results, strict=True)],
        "not_compared": skipped,
        **beside,
    }


def stage_publish(run: Run) -> dict[str, Any]:
    from trainer.export import assemble
    from trainer.model import DELTA_FILE, read_delta

    if run.cfg.eval.on != "test":
        # Test metrics go into the manifest; a validation run is for choosing a recipe.
        log.warning("publish: skipped, this run was evaluated on validation (eval.on)")
        return {"skipped": "eval.on=validation: a run for choosing a recipe is not published"}
    own = run.summary("eval")["results"][0]
    metrics: dict[str, Any] = {
        "trainer": trainer_info(run),
        "eval": {
            "test_pairs": own["by_m"][next(iter(own["by_m"]))]["pairs"],
            "by_m": own["by_m"],
            "splits": {
                name: {m: {"overall": a["overall"], "pairs": a["pairs"]} for m, a in by.items()}
                for name, by in own.get("splits", {}).items()
            },
        },
        "train": run.result("train"),
    }
    if run.cfg.train.mode == "critic":
        metrics["filter"] = run.summary("filter")["report"]
    if run.cfg.train.mode == "syncpl":
        metrics["judge"], metrics["compare"] = run.result("judge"), run.summary("eval")["compare"]
    stats = own.get("reward_stats")
    root = Path(run.cfg.export.checkpoint_root)
    version = assemble(
        run.path("delta"),
        root,
        make_current=run.cfg.export.make_current,
        metrics=metrics,
        reward_stats=stats,
    )
    if run.cfg.export.delta_dir:
        out = Path(run.cfg.export.delta_dir)
        out.mkdir(parents=True, exist_ok=True)
        for file in run.path("delta").iterdir():
            if file.is_file() and file.name != DELTA_FILE:
                shutil.copy2(file, out / file.name)
        meta = read_delta(run.path("delta"))
        meta.update(
            metrics=metrics, reward_stats=stats, model_version=version.manifest.model_version
        )
        (out / DELTA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for file in run.path("eval").iterdir():
            shutil.copy2(file, out / file.name)
    return {"version": version.manifest.model_version, "root": str(root)}


# ---------------------------------------------------------------- the pipeline
StageResult = dict[str, Any] | Coroutine[Any, Any, dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: what it runs, and which config sections its output depends on
    (dotted paths; they make its digest, so changing one reruns it and every later stage)."""

    name: str
    func: Callable[[Run], StageResult]
    sections: tuple[str, ...]
    modes: tuple[str, ...] = ("critic", "bt", "syncpl")  # the train.mode values that run it


CRITIC = ("critic",)
PIPELINE: tuple[Stage, ...] = (
    Stage("data", stage_data, ("seed", "data")),
    Stage("base", stage_base, ("base_model",)),
    Stage(
        "judge",
        stage_judge,
        ("syncpl", "sampling.temperature", "sampling.top_p", "engine"),
        ("syncpl",),
    ),
    Stage("sample", stage_sample, ("sampling", "engine"), CRITIC),
    Stage("filter", stage_filter, (), CRITIC),
    Stage("refine", stage_refine, ("refine", "seed"), CRITIC),
    Stage("train", stage_train, ("train", "seed")),
    Stage("export", stage_export, ("export.name", "sampling")),
    Stage("eval", stage_eval, ("eval",)),
    Stage("publish", stage_publish, ("export",)),
)
