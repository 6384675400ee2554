"""The reward-quality targets read off an evaluation report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.evaluate import write_report
from trainer.targets import check, markdown


def _by_m(accs: dict[int, float]) -> dict[str, Any]:
    return {
        str(m): {
            "overall": a,
            "pairs": 40,
            "ci95": [a - 0.1, a + 0.1],
            "per_category": {"code": a},
            "per_category_pairs": {"code": 40},
        }
        for m, a in accs.items()
    }


OWN: dict[str, Any] = {
    "mode": "critic",
    "splits": {
        "test": _by_m({0: 0.6, 1: 0.62, 2: 0.64, 4: 0.645, 8: 0.66}),
        "length_bias": _by_m({0: 0.8, 1: 0.85, 2: 0.80, 4: 0.82, 8: 0.83}),
    },
}
BT: dict[str, Any] = {
    "mode": "bt",
    "splits": {"test": _by_m({0: 0.65}), "length_bias": _by_m({0: 0.85})},
}
OWN["by_m"], BT["by_m"] = OWN["splits"]["test"], BT["splits"]["test"]


def test_each_target_is_checked_per_split() -> None:
    test, length = check(OWN, BT)
    assert test["split"] == "test" and abs(test["margin"] - (-0.005)) < 1e-9
    assert test["no_worse"] and test["non_decreasing"] and not test["goal"]
    assert test["ahead"] is None  # only asked on the length-bias split
    assert not length["no_worse"] and not length["ahead"]
    assert not length["non_decreasing"]  # 0.85 at m = 1 falls to 0.80 at m = 2
    md = markdown([test, length])
    assert "| test | 40 | 0.650 | 0.600 | 0.645 | -0.005 | yes | yes | - | **no** |" in md


def test_the_report_writes_the_targets_against_the_standard_rm(tmp_path: Path) -> None:
    write_report([OWN, BT], ["critic", "bt"], tmp_path)
    assert (tmp_path / "targets.md").read_text().count("\n") == 4
    write_report([BT], ["bt"], tmp_path / "alone")
    assert not (tmp_path / "alone" / "targets.md").exists()
