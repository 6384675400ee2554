"""The PNGs of what a critic is for, base against trained on each split: eval.critic's fix rates
and mean critique utility (critic.png) and SyncPL's /compare accuracy (compare.png). Bars are
grouped by split, one colour per model version, with the 95% interval where one is known."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# One panel: its title, the y label, and per version and split (value, low, high); None where
# the split had nothing to measure.
Bar = tuple[float, float, float] | None
Panel = tuple[str, str, dict[str, dict[str, Bar]]]


def critic_panels(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[Panel]:
    """eval.critic's results (critic.json) as three panels: fix rate after 1 and 2 rounds, and
    mean CU of wrong responses' critiques (no interval: CU is a mean of shared revisions)."""
    panels: list[Panel] = []
    for k in ("1", "2"):
        bars: dict[str, dict[str, Bar]] = {}
        for label, by_split in results.items():
            bars[label] = {}
            for name, m in by_split.items():
                r = m.get("fix_rate", {}).get(k)
                bars[label][name] = None if r is None else (r["rate"], *r["ci95"])
        rounds = "round" if k == "1" else "rounds"
        panels.append((f"fix rate after {k} {rounds}", "wrong responses made right", bars))
    cu: dict[str, dict[str, Bar]] = {}
    for label, by_split in results.items():
        cu[label] = {}
        for name, m in by_split.items():
            v = m.get("mean_cu_wrong")
            cu[label][name] = None if v is None else (v, v, v)
    panels.append(("mean CU, wrong responses", "critique utility", cu))
    return panels


def compare_panels(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[Panel]:
    """SyncPL's compare.json: /compare accuracy with the position swap, as /compare reads the
    scores, and by the greedy digits alone where the report has them."""

    def bars_of(pick: str | None) -> dict[str, dict[str, Bar]]:
        bars: dict[str, dict[str, Bar]] = {}
        for label, by_split in results.items():
            bars[label] = {}
            for name, acc in by_split.items():
                part = acc if pick is None else acc.get(pick) or {}
                v = part.get("overall")
                bars[label][name] = None if v is None else (v, *part["ci95"])
        return bars

    both = any("greedy" in acc for by in results.values() for acc in by.values())
    served = "/compare, expected digits (served)" if both else "/compare accuracy (both orders)"
    panels = [(served, "pairwise accuracy", bars_of(None))]
    if both:
        panels.append(("/compare, greedy digits alone", "pairwise accuracy", bars_of("greedy")))
    return panels


def plot_panels(panels: list[Panel], out: Path, chance: float | None = None) -> None:
    """Grouped bars, one panel each; `chance` draws a dashed level on panels of accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), dpi=110)
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (title, ylabel, bars) in zip(axes, panels, strict=True):
        labels = list(bars)
        splits = list(dict.fromkeys(s for by in bars.values() for s in by))
        width = 0.8 / max(len(labels), 1)
        for i, label in enumerate(labels):
            xs: list[float] = []
            ys: list[float] = []
            err: list[list[float]] = [[], []]
            for j, name in enumerate(splits):
                bar = bars[label].get(name)
                if bar is None:
                    continue
                value, lo, hi = bar
                xs.append(j + (i - (len(labels) - 1) / 2) * width)
                ys.append(value)
                err[0].append(max(value - lo, 0.0))
                err[1].append(max(hi - value, 0.0))
            ax.bar(xs, ys, width, yerr=err, capsize=3, color=f"C{i}", label=label)
        if chance is not None and "accuracy" in ylabel:
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(splits)), splits)
        ax.set_ylim(0, 1)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
