"""A training run's output folder, in one place: the layout of `DIR/F` (`FamilyPaths`). Every room that writes or
reads a family folder (training, outputs, hub, inference, the app) goes through it; no other module spells the
folder's names.

A shared basic at the package root (not in `outputs/`) because a room below `outputs/` reads the folder too: the
app's model sources (`inference/`) find the families in it. Light: no torch.

    DIR/F/                      a finished family (FamilyPaths.folder); complete once metrics.json exists
        metrics.json            RunMetrics, written last
        adapter/  merged/       the trained LoRA adapter (absent after full DPO) and the merged model
        base/                   the demo's warm-started base (offline demo only)
        plots/  report.html     training curves and the evidence report
        progress.jsonl          the live progress log (training.progress_log)
    DIR/F.old                   the folder being replaced while a new one is swapped in
    DIR/.work/F/                checkpoints/, staging/ (laid out as DIR/F), trained/, base/ (demo), data/ (DDP)
    DIR/.ref_logps/F/           the keyed reference log-prob store (unless --ref-logps-dir)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from dpo_studio.names import family_dir_name


@dataclass(frozen=True)
class FamilyPaths:
    """Where everything of one family's run lives. `folder` is the finished folder `DIR/F`, or a folder laid out the
    same way (the staging folder, a pushed copy); the run's neighbours (`work`, `old`, `reference_store`) are those
    of a finished folder."""

    folder: Path

    METRICS_FILE: ClassVar[str] = "metrics.json"  # written last: a family folder with it is complete
    ADAPTER_DIR: ClassVar[str] = "adapter"
    MERGED_DIR: ClassVar[str] = "merged"
    BASE_DIR: ClassVar[str] = "base"
    PLOTS_DIR: ClassVar[str] = "plots"
    REPORT_FILE: ClassVar[str] = "report.html"
    PROGRESS_FILE: ClassVar[str] = "progress.jsonl"
    OLD_SUFFIX: ClassVar[str] = ".old"
    WORK_DIR: ClassVar[str] = ".work"
    REF_LOGPS_DIR: ClassVar[str] = ".ref_logps"
    # A demo adapter's / merged model's base, relative to adapter/ and merged/ (the copy in base/, no local path).
    DEMO_BASE_REF: ClassVar[str] = f"../{BASE_DIR}"

    @classmethod
    def of(cls, out_root: str | Path, family: str) -> FamilyPaths:
        """The folder of `family` (a short name, Hub id or path) under the run's `--output-dir`."""
        return cls(Path(out_root) / family_dir_name(family))

    @classmethod
    def finished_in(cls, out_root: str | Path) -> list[FamilyPaths]:
        """The finished families directly under `out_root`, sorted by folder name."""
        return [cls(p.parent) for p in sorted(Path(out_root).glob(f"*/{cls.METRICS_FILE}"))]

    @classmethod
    def is_scratch(cls, name: str) -> bool:
        """Whether a folder name under DIR is the pipeline's (.work, .ref_logps, a folder being replaced)."""
        return name.startswith(".") or name.endswith(cls.OLD_SUFFIX)

    @classmethod
    def reference_root(cls, out_root: str | Path) -> Path:
        """The default `--ref-logps-dir` of a run writing to `out_root`."""
        return Path(out_root) / cls.REF_LOGPS_DIR

    # ------------------------------------------------------------------------------------------- the family folder
    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def metrics(self) -> Path:
        return self.folder / self.METRICS_FILE

    @property
    def adapter(self) -> Path:
        return self.folder / self.ADAPTER_DIR

    @property
    def merged(self) -> Path:
        return self.folder / self.MERGED_DIR

    @property
    def base(self) -> Path:
        return self.folder / self.BASE_DIR

    @property
    def plots(self) -> Path:
        return self.folder / self.PLOTS_DIR

    @property
    def report(self) -> Path:
        return self.folder / self.REPORT_FILE

    @property
    def progress(self) -> Path:
        return self.folder / self.PROGRESS_FILE

    def is_finished(self) -> bool:
        return self.metrics.is_file()

    # ----------------------------------------------------------------------------------------- the run's neighbours
    @property
    def old(self) -> Path:
        return self.folder.with_name(self.folder.name + self.OLD_SUFFIX)

    @property
    def work(self) -> Path:
        """DIR/.work/F: checkpoints, staging, the trained weights, the demo base."""
        return self.folder.parent / self.WORK_DIR / self.folder.name

    @property
    def staging(self) -> FamilyPaths:
        """Where the outputs are assembled before they are swapped into `folder`."""
        return FamilyPaths(self.work / "staging")

    @property
    def checkpoints(self) -> Path:
        return self.work / "checkpoints"

    @property
    def trained(self) -> Path:
        """The trained adapter (or model), saved before anything can fail."""
        return self.work / "trained"

    @property
    def demo_base(self) -> FamilyPaths:
        """The demo's warm-started base while the run goes on (complete once its own metrics.json exists)."""
        return FamilyPaths(self.work / self.BASE_DIR)

    def shared_split(self, split: str) -> Path:
        """A dataset split saved for every DDP rank to read."""
        return self.work / "data" / split

    def reference_store(self, ref_logps_dir: str | Path | None = None) -> Path:
        """The family's keyed reference log-probs: `--ref-logps-dir`/F, by default DIR/.ref_logps/F."""
        return (Path(ref_logps_dir) if ref_logps_dir else self.reference_root(self.folder.parent)) / self.folder.name
