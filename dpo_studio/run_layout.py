"""A training run's output folder, in one place: the layout of `DIR/F` (`FamilyPaths`) and the schema of its
`metrics.json` (`RunMetrics`). Every room that writes or reads a family folder (training, outputs, hub, inference,
the app) goes through these two classes; no other module spells the folder's names or reads metrics.json by key.

A shared basic at the package root (not in `outputs/`) because rooms below `outputs/` read the folder too: the
app's model sources (`inference/`) find the families in it and `evaluation/` judges the metrics. Light: no torch.

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

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dpo_studio.json_files import write_json_atomic
from dpo_studio.names import family_dir_name

SCHEMA_VERSION = 1  # metrics.json's layout; files written before the field existed have the same keys (version 1)


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


class MetricsFileError(ValueError):
    """A metrics.json that cannot be read; the message is one line naming the file."""


def _evidence() -> Any:
    """A field present in metrics.json only when it was measured (`--eval-generations 0` writes no evidence)."""
    return field(default=None, metadata={"omit_if_none": True})


@dataclass
class RunMetrics:
    """The schema of `DIR/F/metrics.json`: what one family's run measured and how it ran. Written last into the
    family folder (`save`), read back by the CLI's summary, the report, the cards, the Hub push and the Space deploy
    (`load`). The JSON keys are the field names; keys this version does not know are kept in `extra` and written
    back, so a newer or older file loses nothing. Held-out metrics keep TRL's names (`rewards/accuracies`, ...)."""

    family: str = ""  # the output folder's name
    architecture: str | None = None  # "causal" or "seq2seq"
    model_type: str | None = None
    base_model: str = ""  # the base's public ref (Hub id), or the demo's description
    base_license: dict[str, Any] | None = None  # the cards' `license` (absent in files from before it was recorded)
    base_lineage: Any = None  # round two: round one's repo
    dataset: str = ""  # the data's public ref
    data: dict[str, Any] = field(default_factory=dict)  # splits, caps, license (`data.splits`)
    train_runtime_s: float | None = None
    train_pairs_per_s: float | None = None
    train_loss: float | None = None
    truncation: dict[str, dict[str, int]] = field(default_factory=dict)
    resumed_from_step: int | None = None
    world_size: int = 1
    distributed: str | None = None  # accelerate's distributed type: NO, MULTI_CPU (DDP), FSDP, ...
    precision: dict[str, Any] = field(default_factory=dict)
    compile: dict[str, Any] = field(default_factory=dict)  # whether training ran through torch.compile, and why
    training: str | None = None  # "LoRA DPO", "QLoRA DPO" or "full-parameter DPO"
    quantization: Any = None
    eval_before: dict[str, float] = field(default_factory=dict)  # held-out metrics of the base, TRL's names
    eval_after: dict[str, float] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    prompt_format: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # the cards' "Framework versions"
    tracking: dict[str, Any] | None = None  # trackio's project/run
    log_history: list[dict[str, Any]] = field(default_factory=list)  # Trainer's logs (the plots)
    generation_before: dict[str, Any] | None = _evidence()  # base vs DPO generations (`evaluation.evidence`)
    generation_after: dict[str, Any] | None = _evidence()
    generation_comparison: dict[str, Any] | None = _evidence()
    generation_warnings: list[str] | None = _evidence()
    generation_settings: dict[str, Any] | None = _evidence()
    samples: list[dict[str, str]] | None = _evidence()
    judge: dict[str, Any] | None = _evidence()
    degeneration: dict[str, Any] | None = _evidence()  # signs, chosen log-prob drop, advice (`evaluation.degeneration`)
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict, metadata={"omit_if_none": True})  # unknown keys, as read

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "metrics.json") -> RunMetrics:
        if not isinstance(data, dict):
            raise MetricsFileError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise MetricsFileError(f"{where}: schema_version {str(version)[:20]} is newer than this dpo-studio reads "
                                   f"({SCHEMA_VERSION}); upgrade dpo-studio")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        """metrics.json's content: `schema_version` first, then the fields in order, the unknown keys last."""
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in ("schema_version", "extra") and not (f.metadata.get("omit_if_none") and value is None):
                out[f.name] = value
        return {**out, **self.extra}

    @classmethod
    def load(cls, path: str | Path) -> RunMetrics:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MetricsFileError(f"{path}: cannot read metrics.json ({type(exc).__name__})") from None
        return cls.from_dict(data, str(path))

    def save(self, path: str | Path) -> None:
        """Write atomically: a reader (the app, `push`) never sees half a file, and its presence marks the folder
        complete."""
        write_json_atomic(Path(path), self.to_dict())
