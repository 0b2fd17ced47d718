"""A live progress log of one family's training: `<output>/<family>/progress.jsonl`, one JSON line per event.

Lines, each flushed as it is written so that another process (the app's Train tab) can follow the run:

* `{"event": "start", "step", "max_steps", "epoch", "elapsed_s": 0, "eta_s": null}` when the Trainer starts;
* `{"event": "step", "step", "max_steps", "epoch", "elapsed_s", "eta_s"}` after every optimizer step;
* `{"event": "log", ..., "loss", "rewards/chosen", "rewards/rejected", "rewards/margins"}` at every training log
  (every `--logging-steps`), with the Trainer's own numbers;
* one last `{"event": "end", "status": "finished" | "failed" | "cancelled", "step", ...}` (plus `"error"` on a
  failure), written by `ProgressLog.outcome()` around the whole run: "finished" only once the outputs are saved.

The Trainer already counts steps and logs TRL's metrics; this callback only writes them where a reader can see them
live (Trainer's own `trainer_state.json` is written at checkpoints only). The pipeline moves the finished outputs
into place by swapping folders, so it carries the file into the new folder with `carry()` before the swap.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from dpo_studio.run_layout import FamilyPaths
from dpo_studio.training.signals import TrainingInterrupted

LOGGED_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
STATUSES = ("finished", "failed", "cancelled")


class ProgressLog(TrainerCallback):
    """Writes the progress lines of one run to `path`.

    Args:
        path: the progress file (`<output>/<family>/progress.jsonl`).
        append: keep earlier lines (a resumed run); otherwise the file starts empty.
        enabled: False on every process but the main one under DDP (one writer).
    """

    def __init__(self, path: Path, *, append: bool = False, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._started: float | None = None
        self._first_step = 0
        self._last: dict[str, Any] = {"step": 0, "max_steps": None, "epoch": None}
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not append:
                self.path.write_text("", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append one line, flushed (opened per line: the folder holding the file may be swapped in between)."""
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()

    def _position(self, state) -> dict[str, Any]:  # noqa: ANN001 - TrainerState
        elapsed = time.monotonic() - self._started if self._started is not None else 0.0
        done = state.global_step - self._first_step
        eta = elapsed / done * (state.max_steps - state.global_step) if done > 0 and state.max_steps else None
        self._last = {"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
                      "elapsed_s": round(elapsed, 3), "eta_s": None if eta is None else round(max(eta, 0.0), 3)}
        return dict(self._last)

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - TrainerCallback signature
        self._started, self._first_step = time.monotonic(), state.global_step  # a resumed run starts mid-way
        self.write({"event": "start", **self._position(state)})

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - TrainerCallback signature
        self.write({"event": "step", **self._position(state)})

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - TrainerCallback signature
        if logs and "loss" in logs:  # training logs only (the final summary says train_loss)
            metrics = {key: logs[key] for key in LOGGED_METRICS if key in logs}
            self.write({"event": "log", **self._position(state), **metrics})

    def end(self, status: str, error: str | None = None) -> None:
        """The last line: how the run ended."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        record = {"event": "end", "status": status, **self._last}
        if error:
            record["error"] = error
        self.write(record)

    @contextlib.contextmanager
    def outcome(self) -> Iterator[ProgressLog]:
        """Around a whole run: "finished" when the block completes, "cancelled" on a signal (TrainingInterrupted,
        KeyboardInterrupt), "failed" with the error's first line on anything else; exceptions propagate."""
        try:
            yield self
        except (TrainingInterrupted, KeyboardInterrupt):
            self.end("cancelled")
            raise
        except BaseException as exc:
            lines = str(exc).strip().splitlines()
            self.end("failed", f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__)
            raise
        self.end("finished")


def carry(final: FamilyPaths, stage: FamilyPaths) -> None:
    """Copy the progress file of `final` (the family folder being replaced) into `stage` (its replacement)."""
    if final.progress.is_file():
        shutil.copy2(final.progress, stage.progress)


def read_progress(path: Path) -> list[dict[str, Any]]:
    """The lines written so far (a line still being written, or garbled, is left out)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
