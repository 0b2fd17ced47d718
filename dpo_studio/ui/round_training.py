"""Round two from the browser (owner only): `RoundTraining` trains the next DPO round of a family on its votes.

No second trainer: it writes the family's votes as a training file and starts `python -m dpo_studio train` (the CLI)
in a subprocess of its own process group, from the family's latest round (its merged model), into the server's
output folder. It follows the run through `<output>/<family>/progress.jsonl` (`dpo_studio.training.progress_log`) and the
log file, cancels it with the signals the CLI already handles (SIGINT: checkpoint and stop at the next step), and
when the run has finished adds the new round to the registry, so blind rounds draw it and the Leaderboard lists it
without a restart. Pushing is the CLI's own `--push` to repo ids made from the server's namespace.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo_studio.arena.votes import VoteStore
from dpo_studio.inference.model_sources import AppConfigError, FamilySource, ModelRegistry, RoundSource
from dpo_studio.run_layout import FamilyPaths
from dpo_studio.training.progress_log import read_progress
from dpo_studio.ui.owner import OwnerOnly, OwnerPolicy

logger = logging.getLogger(__name__)

MIN_DECISIVE_VOTES = 8  # fewer A/B picks than this teach a model nothing measurable (and leave no held-out split)
DEFAULT_OUTPUT_DIR = Path("rounds")
CANCEL_GRACE_S = 60.0  # SIGINT saves a checkpoint at the next step; then SIGTERM, then SIGKILL
LOG_FILE, VOTES_FILE = "train.log", "votes.jsonl"
RUNNING, FINISHED, FAILED, CANCELLED = "running", "finished", "failed", "cancelled"


@dataclass(frozen=True)
class TrainSettings:
    """The training flags a round gets (small, for a few dozen votes); `extra` are further CLI flags of the
    server's configuration (e.g. `--max-steps 4` in tests)."""

    epochs: float = 2.0
    lora_r: int = 8
    batch_size: int = 4
    eval_fraction: float = 0.2
    seed: int = 0
    eval_generations: int = 0  # the evidence generations take longer than the training itself on a CPU Space
    report_to: str = "auto"  # auto: trackio's local store when trackio is installed (dashboard: `trackio show`)
    extra: tuple[str, ...] = ()

    def tracker(self) -> str:
        if self.report_to != "auto":
            return self.report_to
        return "trackio" if importlib.util.find_spec("trackio") is not None else "none"

    def args(self) -> list[str]:
        return ["--report_to", self.tracker(), "--num-train-epochs", f"{self.epochs:g}", "--lora-r", str(self.lora_r), "--lora-alpha",
                str(2 * self.lora_r), "--per-device-train-batch-size", str(self.batch_size), "--logging-steps", "1",
                "--eval-fraction", f"{self.eval_fraction:g}", "--seed", str(self.seed), "--eval-generations",
                str(self.eval_generations), *self.extra]


@dataclass
class TrainJob:
    """One training run: where it writes, its process, and how it ended."""

    family: str
    round_name: str
    folder: Path  # the run's --output-dir (votes file, log, outputs)
    output: Path  # folder/<family dir>: the finished outputs, progress.jsonl
    process: subprocess.Popen
    push_repo: str | None = None
    state: str = RUNNING
    message: str = ""
    error: str | None = None
    cancel_requested: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def log_path(self) -> Path:
        return self.folder / LOG_FILE


def decisive_votes(records: Sequence[dict[str, Any]], family: str) -> list[dict[str, Any]]:
    """The family's A/B picks (a chosen and a rejected reply); ties and both-bad carry no preference."""
    return [r for r in records if str(r.get("family") or "") == family
            and isinstance(r.get("chosen"), str) and isinstance(r.get("rejected"), str)]


def latest_round(source: FamilySource) -> RoundSource:
    """The family's newest DPO round (the first round is "dpo")."""
    return source.dpo_round(source.model_names[-1])


def last_error_line(log_path: Path) -> str | None:
    """The line of the log that says why a run failed: the CLI's `error:` line, else an exception line, else the
    last line."""
    try:
        lines = [line.strip() for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return None
    lines = [line for line in lines if line]
    for pattern in (r"^(error|interrupted):", r"^\w+(Error|Exception|Interrupt)\b"):
        for line in reversed(lines):
            if re.match(pattern, line):
                return line[:300]
    return lines[-1][:300] if lines else None


def _close_at_exit(ref: weakref.ref) -> None:
    training = ref()
    if training is not None:
        training.close()


class RoundTraining:
    """Trains the next round of a family from the app, one job at a time.

    Args:
        registry: the app's models; a finished round is added to it.
        votes: the app's votes store.
        owner: the server's owner policy ("train", and "push" to publish the round).
        output_dir: where runs write (`<output_dir>/<family>-<round>/`): server configuration only.
        hub_namespace: where a pushed round goes (`<ns>/<family>-dpo-<round>`); None: pushing is off.
        settings: the training flags.
        min_votes: decisive votes a family needs before a round is trained.
    """

    def __init__(self, registry: ModelRegistry, votes: VoteStore, owner: OwnerPolicy, *,
                 output_dir: str | Path = DEFAULT_OUTPUT_DIR, hub_namespace: str | None = None,
                 settings: TrainSettings | None = None, min_votes: int = MIN_DECISIVE_VOTES) -> None:
        self.registry, self.votes, self.owner = registry, votes, owner
        self.output_dir = Path(output_dir).expanduser().resolve()
        self.hub_namespace = hub_namespace
        self.settings = settings or TrainSettings()
        self.min_votes = min_votes
        self.job: TrainJob | None = None
        self._lock = threading.Lock()
        atexit.register(_close_at_exit, weakref.ref(self))  # a run never outlives the app that started it

    @property
    def running(self) -> bool:
        job = self.job
        return job is not None and job.state == RUNNING

    # ------------------------------------------------------------------------------------------------- start
    def start(self, family: str, owner_secret: str | None = None, push: bool = False) -> str:
        """Start training the next round of `family`; one line saying what started, or why not."""
        try:
            self.owner.check("train", owner_secret)
            if push:
                self.owner.check("push", owner_secret)
        except OwnerOnly as exc:
            logger.warning("Refused a visitor's training request: %s", exc)
            return f"Training refused: {exc}"  # our own text: no visitor input, never the secret
        if family not in self.registry.families:
            served = ", ".join(self.registry.families)
            return f"Training refused: unknown family {str(family)[:60]!r}; served: {served}"
        if push and not self.hub_namespace:
            return ("Training refused: this server has no namespace to push rounds to "
                    "(start it with --train-hub-namespace)")
        with self._lock:
            if self.running:
                job = self.job
                return (f"Training refused: {self._label(job.family)} {job.round_name} is already training; "
                        "wait for it or cancel it")
            try:
                self.job = self._launch(family, push)
            except (ValueError, OSError) as exc:
                return f"Training refused: {exc}"
        threading.Thread(target=self._watch, args=(self.job,), name="round-training", daemon=True).start()
        job = self.job
        target = f", then pushed to {job.push_repo}" if job.push_repo else ""
        return f"Training {self._label(family)} {job.round_name} from its latest round on the votes{target}."

    def _label(self, family: str) -> str:
        return self.registry.source(family).label

    def _launch(self, family: str, push: bool) -> TrainJob:
        """Check the votes, write them, start the CLI; ValueError (one line) when there is nothing to train on."""
        source = self.registry.source(family)
        if importlib.util.find_spec("trl") is None:  # an inference-only install (a Space's requirements)
            raise ValueError("this server has no training stack installed (pip install -r requirements.txt)")
        decisive = decisive_votes(self.votes.records(), family)
        if len(decisive) < self.min_votes:
            raise ValueError(f"{source.label} has {len(decisive)} decisive votes (A/B picks); at least "
                             f"{self.min_votes} are needed (ties and both-bad do not count)")
        model = latest_round(source)
        if model.merged is None:
            raise ValueError(f"{source.label}'s latest round ({source.model_names[-1]}) has no merged model to "
                             "train from")
        round_name, folder = self._new_round(source)
        votes_file = folder / VOTES_FILE
        votes_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in decisive), encoding="utf-8")
        self._check_split(votes_file)
        output = FamilyPaths.of(folder, model.merged).folder
        cmd = [sys.executable, "-m", "dpo_studio", "train", "--models", model.merged, "--dataset", str(votes_file),
               "--output-dir", str(folder), "--ref-logps-dir", str(FamilyPaths.reference_root(self.output_dir)),  # kept across rounds
               "--run_name", f"{source.name}-{round_name}", *self.settings.args()]
        if model.revision:
            cmd += ["--model-revision", model.revision]
        push_repo = f"{self.hub_namespace}/{family}-dpo-{round_name}" if push else None
        if push_repo:
            cmd += ["--push", "--hub-repo-ids", f"{output.name}={push_repo}"]
        with (folder / LOG_FILE).open("wb") as log:
            # Own session = own process group: a cancel signals the run and its children, never the app.
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:  # visitors first: the run takes what CPU the app leaves
            os.setpriority(os.PRIO_PROCESS, process.pid, 10)
        except (AttributeError, OSError):  # not on this platform, or not allowed
            pass
        logger.info("Training %s %s (pid %d): %s", family, round_name, process.pid, " ".join(cmd))
        return TrainJob(family, round_name, folder, output, process, push_repo)

    def _new_round(self, source: FamilySource) -> tuple[str, Path]:
        """The next round's name (round2, round3, ... after those served) and its empty run folder; a folder of a
        finished run that is not served (e.g. from before a restart) is kept and its name skipped."""
        number = len(source.model_names)  # base, dpo (= round 1), round2, ...: the next is round<len>
        while True:
            name = f"round{number}"
            folder = self.output_dir / f"{source.name}-{name}"
            if name not in source.model_names and not FamilyPaths.finished_in(folder):
                break
            number += 1
        shutil.rmtree(folder, ignore_errors=True)  # an earlier cancelled or failed attempt
        folder.mkdir(parents=True)
        return name, folder

    def _check_split(self, votes_file: Path) -> None:
        """The CLI's own reader and held-out split, run here first so that a split with an empty side is refused
        at once rather than after the training process has started."""
        from dpo_studio.data.reading import DataError, load_pairs, split_pairs

        try:
            pairs, _ = load_pairs(str(votes_file))
            split_pairs(pairs, self.settings.eval_fraction, self.settings.seed)
        except DataError as exc:
            raise ValueError(f"{exc} (votes on more different prompts help)") from None

    # ------------------------------------------------------------------------------------------------ finish
    def _watch(self, job: TrainJob) -> None:
        """Wait for the run to end, then record how it ended (and serve a finished round)."""
        code = job.process.wait()
        ended = [r for r in read_progress(FamilyPaths(job.output).progress) if r.get("event") == "end"]
        status = ended[-1].get("status") if ended else None
        label = self._label(job.family)
        if status == FINISHED and FamilyPaths(job.output).is_finished():
            # The merged model only: the new adapter's base is the previous round, not the family's base.
            merged = str(FamilyPaths(job.output).merged)
            try:
                self.registry.add_round(job.family, RoundSource(job.round_name, merged=merged))
                message = f"{label} {job.round_name} trained and added to the arena."
            except AppConfigError as exc:
                message = f"{label} {job.round_name} trained in {job.output.name}/ but not served: {exc}"
            if code != 0:  # the outputs are complete; the CLI's push after them failed
                job.error = last_error_line(job.log_path)
                message += f" Push failed: {job.error}"
            elif job.push_repo:
                message += f" Pushed to {job.push_repo}."
            job.state, job.message = FINISHED, message
        elif job.cancel_requested or status == CANCELLED:
            job.state = CANCELLED
            job.message = f"{label} {job.round_name} cancelled; nothing was added to the arena."
        else:
            job.state, job.error = FAILED, last_error_line(job.log_path) or f"exit code {code}"
            job.message = f"{label} {job.round_name} failed: {job.error}"
        logger.info("Training %s %s ended: %s (exit code %s)", job.family, job.round_name, job.state, code)
        job.done.set()

    # ------------------------------------------------------------------------------------------------ cancel
    def cancel(self, owner_secret: str | None = None) -> str:
        """Stop the running job cleanly: SIGINT to its process group (the CLI saves a checkpoint and stops at the
        next step, publishing nothing), SIGTERM and SIGKILL if it does not end within the grace period."""
        try:
            self.owner.check("train", owner_secret)
        except OwnerOnly as exc:
            return f"Cancel refused: {exc}"
        with self._lock:
            job = self.job
            if job is None or job.state != RUNNING:
                return "No training is running."
            if not job.cancel_requested:
                job.cancel_requested = True
                threading.Thread(target=self._stop, args=(job,), name="round-training-cancel", daemon=True).start()
        return f"Cancelling {self._label(job.family)} {job.round_name}: it stops at the next step."

    @staticmethod
    def _stop(job: TrainJob, grace_s: float = CANCEL_GRACE_S) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(job.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                job.process.wait(timeout=grace_s)
                return
            except subprocess.TimeoutExpired:
                logger.warning("Training %s %s still running after %s; escalating", job.family, job.round_name,
                               sig.name)

    def close(self) -> None:
        """Stop a running job (the app is shutting down) and wait for it to end."""
        job = self.job
        if job is not None and job.state == RUNNING:
            job.cancel_requested = True
            self._stop(job, grace_s=10.0)
            job.done.wait(timeout=10.0)

    # ------------------------------------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """The job as the Train tab shows it: state, progress (0-1), step counts, ETA, the loss and reward
        series, and a one-line message (the log's last error line on a failure)."""
        job = self.job
        if job is None:
            return {"state": "idle", "message": "No training has run on this server yet.", "loss": [],
                    "rewards": [], "progress": None, "eta_s": None}
        records = read_progress(FamilyPaths(job.output).progress)
        positions = [r for r in records if r.get("event") in ("start", "step", "log", "end")]
        last = positions[-1] if positions else {}
        step, max_steps = last.get("step"), last.get("max_steps")
        logs = [r for r in records if r.get("event") == "log"]
        return {
            "state": job.state, "family": job.family, "round": job.round_name, "phase": self._phase(job, records),
            "step": step, "max_steps": max_steps,
            "progress": min(step / max_steps, 1.0) if step is not None and max_steps else None,
            "eta_s": last.get("eta_s") if job.state == RUNNING else None, "elapsed_s": last.get("elapsed_s"),
            "loss": [{"step": r["step"], "loss": r["loss"]} for r in logs],
            "rewards": [{"step": r["step"], "series": key.split("/")[1], "value": r[key]} for r in logs
                        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins") if key in r],
            "message": job.message or f"{self._label(job.family)} {job.round_name}: {self._phase(job, records)}",
            "error": job.error,
        }

    @staticmethod
    def _phase(job: TrainJob, records: list[dict[str, Any]]) -> str:
        if job.state != RUNNING:
            return job.state
        if job.cancel_requested:
            return "cancelling"
        events = [r.get("event") for r in records]
        if "end" in events:
            return "pushing" if job.push_repo else "finishing"
        if "start" in events:
            return "training"
        return "loading the model and evaluating it before training"
