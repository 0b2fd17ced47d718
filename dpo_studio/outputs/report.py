"""metrics.json and the training-curve plots (PNG), from the Trainer's log history."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: plots are files, never windows
import matplotlib.pyplot as plt  # noqa: E402

from dpo_studio.evaluation.held_out import EVAL_METRICS  # noqa: E402  (TRL's metric names of the held-out table)
from dpo_studio.run_layout import FamilyPaths, RunMetrics  # noqa: E402

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
        # Trainer logs means over each logging step's batches; the held-out tables are per-pair means (evaluation.py).
        ax.set_title(f"{title_prefix}{title}, per logging step", fontsize=10)
        ax.set_xlabel("training step (each point: mean over the logging step's batches)", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        fig.savefig(plots_dir / file_name)
        plt.close(fig)
        written.append(file_name)
    return written


# ------------------------------------------------------------------------------------------------------ report.html
_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.35rem .6rem;text-align:right}
td:first-child,th:first-child{text-align:left}.plots img{width:48%;margin:1%}
.samples td{text-align:left;vertical-align:top;width:33%}.warn{background:#fff4e5;padding:.6rem;border-left:4px solid #f90}
.muted{color:#666;font-size:.9rem}
"""


def html_cell(value: Any) -> str:
    """A report.html table cell: numbers rounded for reading, text escaped."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]], css_class: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _generation_section(metrics: RunMetrics) -> list[str]:
    """report.html's base-vs-DPO generation table, health warnings, style judge and samples."""
    from dpo_studio.evaluation.evidence import summarize_for_card

    evaluation = {
        "generation_before": metrics.generation_before, "generation_after": metrics.generation_after,
        "comparison": metrics.generation_comparison or {},
    }
    rows = [[r["metric"], r["base"], r["dpo"], r["note"]] for r in summarize_for_card(evaluation)]
    settings = metrics.generation_settings or {}
    parts = [
        "<h2>Generations: base vs DPO</h2>",
        f"<p class='muted'>{settings.get('prompts', '?')} held-out prompts, temperature "
        f"{settings.get('temperature', '?')}, top-p {settings.get('top_p', '?')}, at most "
        f"{settings.get('max_new_tokens', '?')} new tokens, seed {settings.get('seed', '?')}, same for both.</p>",
        _table(["metric", "base", "DPO", "reading"], rows),
    ]
    for warning in metrics.generation_warnings or []:
        parts.append(f"<p class='warn'>⚠ {html.escape(warning)}</p>")
    judge = metrics.judge
    if judge:
        preferred = ", ".join(html.escape(n) for n, _ in judge["top_features"]["preferred"])
        rejected = ", ".join(html.escape(n) for n, _ in judge["top_features"]["rejected"])
        parts.append(
            f"<p class='muted'>Style judge: {html.escape(judge['kind'])}, trained on {judge['train_replies']} "
            f"training replies; held-out accuracy {judge['heldout_accuracy']:.3f}. Preferred-style cues: "
            f"{preferred}. Rejected-style cues: {rejected}.</p>"
        )
    samples = metrics.samples or []
    if samples:
        parts.append("<h2>Samples</h2>")
        parts.append(_table(["prompt", "base", "DPO"], [[s["prompt"], s["base"], s["dpo"]] for s in samples], "samples"))
    return parts


def write_report_html(family_dir: Path, metrics: RunMetrics) -> Path:
    """A self-contained page (plots embedded as data URIs) that opens in a browser with no server."""
    family = html.escape(str(metrics.family))
    before, after = metrics.eval_before, metrics.eval_after
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>DPO report: {family}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>DPO report: {family}</h1>",
        f"<p class='muted'>Base model: {html.escape(str(metrics.base_model))} · data: "
        f"{html.escape(str(metrics.dataset))} · {metrics.data['train_pairs']} training pairs, "
        f"{metrics.data['eval_pairs']} held-out · {metrics.train_runtime_s:.1f} s "
        f"({metrics.train_pairs_per_s:.1f} pairs/s)</p>",
        "<h2>Held-out preference metrics</h2>",
        f"<p class='muted'>Means over the {after.get('pairs', metrics.data['eval_pairs'])} held-out pairs "
        "(reward accuracy = share of pairs whose chosen reply gets the strictly higher implicit reward). The curves "
        "below are Trainer's logs: means over each logging step's batches.</p>",
        _table(["metric", "before DPO", "after DPO"], [[k, before.get(k), after.get(k)] for k in (*EVAL_METRICS, "logps/gap")]),
        *([f"<p class='warn' id='degeneration'>⚠ {html.escape(advice)}</p>"]
          if (advice := (metrics.degeneration or {}).get("advice")) else []),
        "<h2>Training curves</h2><div class='plots'>",
    ]
    for file_name in PLOTS:
        png = FamilyPaths(family_dir).plots / file_name
        if png.exists():
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f"<img alt='{html.escape(file_name)}' src='data:image/png;base64,{data}'>")
    parts.append("</div>")
    if metrics.generation_before is not None:
        parts += _generation_section(metrics)
    parts.append("</body></html>")
    path = FamilyPaths(family_dir).report
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
