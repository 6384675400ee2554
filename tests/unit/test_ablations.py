"""The recipe ablation table reads validation runs only, from the runs' own files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from trainer.ablations import main, row


def _acc(value: float) -> dict[str, object]:
    return {"overall": value, "pairs": 90, "ci95": [value - 0.1, value + 0.1]}


def _run(root: Path, name: str, on: str, lam: float | None, accs: dict[str, float]) -> Path:
    d = root / name
    (d / "stages").mkdir(parents=True)
    (d / "eval").mkdir()
    cfg = {
        "train": {
            "mode": "critic",
            "constant_lambda": lam,
            "beta": 0.9,
            "epochs": 2,
            "reward_inputs": ["plain", "train"],
        },
        "sampling": {"teacher": True},
        "eval": {"on": on},
    }
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    train = {"steps": 170, "train_seconds": 900.0, "loss_r_first": 0.69, "loss_r_last": 0.41}
    (d / "stages" / "train.json").write_text(json.dumps(train))
    results = [
        {"label": "own", "splits": {"validation": {m: _acc(a) for m, a in accs.items()}}},
        {"label": "standard RM (bt)", "splits": {"validation": {"0": _acc(0.6)}}},
    ]
    (d / "eval" / "eval.json").write_text(json.dumps(results))
    return d


def test_the_table_has_every_run_and_the_baseline_once(tmp_path: Path) -> None:
    a = _run(tmp_path, "abl-const", "validation", 0.2, {"0": 0.7, "4": 0.75})
    b = _run(tmp_path, "abl-paper", "validation", None, {"0": 0.55, "4": 0.5})
    assert main([str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "ablations.md").read_text()
    assert "| abl-const | constant 0.2 |" in md and "| abl-paper | paper (beta 0.9) |" in md
    assert md.count("standard RM (bt)") == 1
    assert "0.750 [0.65, 0.85]" in md and "0.690 → 0.410" in md
    rows = json.loads((tmp_path / "out" / "ablations.json").read_text())
    assert [r["run"] for r in rows] == ["abl-const", "abl-paper"]


def test_a_run_evaluated_on_test_is_refused(tmp_path: Path) -> None:
    d = _run(tmp_path, "final", "test", 0.2, {"0": 0.7})
    with pytest.raises(ValueError, match="not validation"):
        row(d)
