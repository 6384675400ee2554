"""The checkpoint contract on a tiny random Llama: bootstrap --from, views, hashes, READY, current."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from service.checkpoint.bootstrap import bootstrap
from service.checkpoint.manifest import READY_FILE, REWARD_HEAD_FILE, REWARD_HEAD_KEY
from service.checkpoint.store import (
    CheckpointError,
    CheckpointRoot,
    CheckpointVersion,
    load_version,
)
from service.checkpoint.views import INDEX_FILE
from service.engines.torch_scorer import TorchRewardScorer


@pytest.fixture()
def published(tiny_llama: Path, tmp_path: Path) -> CheckpointVersion:
    return bootstrap(tmp_path / "root", tiny_llama)


def test_bootstrap_publishes_a_valid_version_and_points_current_at_it(
    published: CheckpointVersion,
) -> None:
    root = CheckpointRoot(published.path.parents[1])
    assert root.current_version() == published.manifest.model_version
    assert root.list_versions() == [published.manifest.model_version]
    m = published.manifest
    assert m.reward_head_trained is False and m.format_version == 1
    assert set(m.files) == {"generator/model.safetensors", f"scorer/{REWARD_HEAD_FILE}"}
    load_version(published.path, verify_hashes=True)
    assert not (published.path.parents[1] / ".staging").exists() or not any(
        (published.path.parents[1] / ".staging").iterdir()
    )


def test_scorer_view_shares_backbone_files_with_the_generator(published: CheckpointVersion) -> None:
    scorer = published.scorer_path
    link = scorer / "model.safetensors"
    assert link.is_symlink()
    assert link.resolve() == (published.generator_path / "model.safetensors").resolve()
    config = json.loads((scorer / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["num_labels"] == 1
    index = json.loads((scorer / INDEX_FILE).read_text())["weight_map"]
    assert index[REWARD_HEAD_KEY] == REWARD_HEAD_FILE
    assert index["model.norm.weight"] == "model.safetensors"


def test_bootstrap_is_deterministic(
    tiny_llama: Path, tmp_path: Path, published: CheckpointVersion
) -> None:
    again = bootstrap(tmp_path / "other-root", tiny_llama)
    assert again.manifest.model_version == published.manifest.model_version
    with (
        safe_open(str(again.scorer_path / REWARD_HEAD_FILE), "pt") as a,
        safe_open(str(published.scorer_path / REWARD_HEAD_FILE), "pt") as b,
    ):
        assert torch.equal(a.get_tensor(REWARD_HEAD_KEY), b.get_tensor(REWARD_HEAD_KEY))
    other_seed = bootstrap(tmp_path / "seed-root", tiny_llama, seed=1)
    assert other_seed.manifest.model_version != published.manifest.model_version


def test_torch_scorer_reads_backbone_and_head_at_the_last_token(
    published: CheckpointVersion,
) -> None:
    from transformers import LlamaModel

    scorer = TorchRewardScorer.load(published.scorer_path, "float32")
    seqs = [[5, 6, 7, 8, 9], [10, 11, 2]]  # the second ends with the pad/eos id on purpose
    got = scorer.score_sync(seqs)
    backbone = LlamaModel.from_pretrained(published.generator_path, dtype=torch.float32).eval()
    with safe_open(str(published.scorer_path / REWARD_HEAD_FILE), "pt") as fh:
        head = fh.get_tensor(REWARD_HEAD_KEY)
    with torch.no_grad():
        want = [float(backbone(torch.tensor([s])).last_hidden_state[0, -1] @ head[0]) for s in seqs]
    assert got == pytest.approx(want, abs=1e-5)


def test_a_version_without_ready_is_refused(published: CheckpointVersion) -> None:
    (published.path / READY_FILE).unlink()
    with pytest.raises(CheckpointError, match="READY"):
        load_version(published.path)


def test_a_tampered_weight_file_is_refused(published: CheckpointVersion) -> None:
    head = published.scorer_path / REWARD_HEAD_FILE
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_version(published.path)
    load_version(published.path, verify_hashes=False)  # hashes are the only thing wrong


def test_a_missing_weight_file_is_refused(published: CheckpointVersion) -> None:
    (published.scorer_path / REWARD_HEAD_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_version(published.path)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: m.update(format_version=99), "format_version"),
        (lambda m: m.pop("model_version"), "invalid manifest"),
        (lambda m: m.update(files={}), "no weight files"),
    ],
)
def test_a_bad_manifest_is_refused(published: CheckpointVersion, mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    path = published.path / "manifest.json"
    manifest = json.loads(path.read_text())
    mutate(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=match):
        load_version(published.path)


def test_unparseable_manifest_and_missing_views_are_refused(published: CheckpointVersion) -> None:
    (published.path / "manifest.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_version(published.path)


def test_missing_scorer_config_is_refused(published: CheckpointVersion) -> None:
    (published.scorer_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"scorer/config\.json"):
        load_version(published.path)


def test_current_pointer_switches_atomically_between_versions(
    published: CheckpointVersion, tiny_llama: Path
) -> None:
    root = CheckpointRoot(published.path.parents[1])
    second = bootstrap(root.root, tiny_llama, seed=7, make_current=False)
    assert root.current_version() == published.manifest.model_version
    root.set_current(second.manifest.model_version)
    assert root.current_version() == second.manifest.model_version
    assert os.readlink(root.root / "current") == f"versions/{second.manifest.model_version}"
    assert root.resolve().manifest.model_version == second.manifest.model_version
    with pytest.raises(CheckpointError, match="not published"):
        root.set_current("no-such-version")
    with pytest.raises(CheckpointError, match="invalid version"):
        root.version_path("../escape")


def test_an_empty_root_explains_how_to_get_a_version(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="bootstrap"):
        CheckpointRoot(tmp_path).resolve()
    shutil.rmtree(tmp_path)
