"""metrics.json and the training-curve plots (PNG), from the Trainer's log history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: plots are files, never windows
import matplotlib.pyplot as plt  # noqa: E402

# TRL's metric names we report for held-out evaluation (before and after DPO).
EVAL_METRICS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)

# One PNG per panel: file name -> (title, [(log key, legend label), ...]).
PLOTS = {
    "loss.png": ("DPO loss", [("loss", "train"), ("eval_loss", "held-out")]),
    "rewards.png": (
        "Implicit rewards",
        [("rewards/chosen", "chosen"), ("rewards/rejected", "rejected")],
    ),
    "margins.png": ("Reward margin (chosen - rejected)", [("rewards/margins", "train"), ("eval_rewards/margins", "held-out")]),
    "accuracy.png": ("Reward accuracy", [("rewards/accuracies", "train"), ("eval_rewards/accuracies", "held-out")]),
}


def strip_eval_prefix(metrics: dict[str, float]) -> dict[str, float]:
    """`trainer.evaluate()` keys (`eval_rewards/margins`) -> TRL metric names (`rewards/margins`)."""
    out = {}
    for key, value in metrics.items():
        name = key[len("eval_"):] if key.startswith("eval_") else key
        if name in EVAL_METRICS or name in ("runtime", "samples_per_second"):
            out[name] = float(value)
    if "logps/chosen" in out and "logps/rejected" in out:
        out["logps/gap"] = out["logps/chosen"] - out["logps/rejected"]
    return out


def series(log_history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
    return [p[0] for p in points], [p[1] for p in points]


def write_plots(log_history: list[dict[str, Any]], plots_dir: Path, title_prefix: str = "") -> list[str]:
    """Write the four training-curve PNGs; returns their file names."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, (title, lines) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=110)
        for key, label in lines:
            steps, values = series(log_history, key)
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 3 else None, markersize=3, label=label)
        ax.set_title(f"{title_prefix}{title}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        fig.savefig(plots_dir / file_name)
        plt.close(fig)
        written.append(file_name)
    return written


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
