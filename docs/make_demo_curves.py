"""Draw docs/demo_curves.png from a demo run's metrics.json files (the README's first picture).

    python train_dpo.py --config examples/demo.yaml --output-dir runs/demo
    python docs/make_demo_curves.py runs/demo
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(run_dir: Path, out: Path) -> None:
    fig, (loss_ax, reward_ax, acc_ax) = plt.subplots(1, 3, figsize=(14.5, 3.6))
    for family, color in (("gpt2", "C0"), ("t5", "C1")):
        metrics = json.loads((run_dir / family / "metrics.json").read_text(encoding="utf-8"))
        logs = [h for h in metrics["log_history"] if "loss" in h and "step" in h]
        steps = [h["step"] for h in logs]
        loss_ax.plot(steps, [h["loss"] for h in logs], color=color, label=family)
        reward_ax.plot(steps, [h["rewards/chosen"] for h in logs], color=color, label=f"{family} chosen")
        reward_ax.plot(steps, [h["rewards/rejected"] for h in logs], color=color, ls="--", label=f"{family} rejected")
        acc_ax.plot(steps, [h["rewards/accuracies"] for h in logs], color=color, label=f"{family} train")
        acc_ax.axhline(metrics["eval_after"]["rewards/accuracies"], color=color, ls=":",
                       label=f"{family} held-out (after)")
    for ax, title in ((loss_ax, "DPO loss (train)"), (reward_ax, "implicit rewards"), (acc_ax, "reward accuracy")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Offline demo: LoRA DPO on small GPT-2 and T5 (python train_dpo.py --config examples/demo.yaml)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).with_name("demo_curves.png"))
