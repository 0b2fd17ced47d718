"""Experiment tracking with trackio (TRL's recommended tracker), through transformers' own `TrackioCallback`:
`--report_to trackio` logs every Trainer log line of both families (TRL's DPOTrainer and our seq2seq trainer, which
logs through the same `Trainer.log`) to trackio's local SQLite store (`$TRACKIO_DIR`, default
`~/.cache/huggingface/trackio`), or to a Space with `--trackio_space_id`.

What transformers leaves to us: a project and run name that say what ran (its defaults are the project
"huggingface" and the checkpoint folder's name, which is the same for every family here), the same run continued on
`--resume`, the held-out evaluations before/after DPO (our own pass, not `Trainer.evaluate`) logged into the run, and
the record metrics.json and the cards keep (TRL's `trackio` tag, the Space's dashboard link).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from dpo_studio.config.arguments import ConfigError

logger = logging.getLogger(__name__)

TRACKIO = "trackio"
DEFAULT_PROJECT = "dpo-studio"
TRANSFORMERS_DEFAULT_PROJECT = "huggingface"  # TrainingArguments.project's default: "not chosen by the user"
RUN_FILE = "tracking.json"  # in the family's work folder: the run name a --resume continues
SPACE_URL = "https://huggingface.co/spaces/{space_id}"


def reports_to_trackio(args) -> bool:
    """`--report_to trackio`, or `all` with trackio installed (transformers then reports to every installed tracker)."""
    report_to = args.report_to or []
    return TRACKIO in report_to or ("all" in report_to and importlib.util.find_spec(TRACKIO) is not None)


def check_trackio_installed() -> None:
    """One line instead of transformers' RuntimeError deep inside the Trainer's constructor."""
    if importlib.util.find_spec(TRACKIO) is None:
        raise ConfigError("--report_to trackio: trackio is not installed (pip install trackio)")


def with_tracking_defaults(args, family: str, output_root: Path, work: Path):
    """`args` with trackio's project and run name filled in where the user left transformers' defaults: project
    `dpo-studio`, run `<output folder>-<family>-<UTC time>`, kept in `work/tracking.json` so `--resume` logs into the
    same run (trackio resumes a run by name). Unchanged when the run does not report to trackio."""
    if not reports_to_trackio(args):
        return args
    check_trackio_installed()
    changes: dict[str, Any] = {}
    if args.project == TRANSFORMERS_DEFAULT_PROJECT:
        changes["project"] = DEFAULT_PROJECT
    if not args.run_name or args.run_name == args.output_dir:
        saved = work / RUN_FILE
        try:
            changes["run_name"] = json.loads(saved.read_text(encoding="utf-8"))["run_name"]
        except (OSError, ValueError, KeyError):
            changes["run_name"] = f"{output_root.resolve().name}-{family}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
            if int(os.environ.get("RANK", "0")) == 0:
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_text(json.dumps({"run_name": changes["run_name"]}), encoding="utf-8")
    return dataclasses.replace(args, **changes) if changes else args


def log_held_out(args, points: list[tuple[int, dict[str, Any]]]) -> None:
    """Log our held-out evaluations as `held_out/<metric>` at their steps (before DPO: 0, after: the last step) into
    the run the Trainer's callback opened and finished: trackio continues a run of the same name (resume="allow")."""
    if not reports_to_trackio(args) or int(os.environ.get("RANK", "0")) != 0:
        return
    import trackio

    trackio.init(project=args.project, name=args.run_name, space_id=args.trackio_space_id, resume="allow")
    try:
        for step, metrics in points:
            trackio.log({f"held_out/{key}": value for key, value in metrics.items()
                         if isinstance(value, (int, float)) and not isinstance(value, bool)}, step=step)
    finally:
        trackio.finish()


def tracking_record(args) -> dict[str, Any] | None:
    """metrics.json's `tracking`: where the run's logs are (`trackio show --project P` opens the local dashboard;
    `url` is the Space's page when one hosts it)."""
    if not reports_to_trackio(args):
        return None
    space_id = args.trackio_space_id or os.environ.get("TRACKIO_SPACE_ID")
    url = SPACE_URL.format(space_id=space_id) if space_id and "/" in space_id else None
    return {TRACKIO: {"project": args.project, "run": args.run_name, "space_id": space_id, "url": url}}
