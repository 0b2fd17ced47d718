"""`--check-data`: the run's reader and checks, per-family token lengths and truncation, exit 0/2, nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import build_models_dir
from toy_data import toy_rows
from trl import DPOConfig

from dpo_studio.config.arguments import parse_config
from dpo_studio.data.reading import load_pairs, to_dataset
from dpo_studio.models.families import load_model_and_tokenizer
from dpo_studio.training.check_data import check_data
from dpo_studio.training.pipeline import build_trainer, count_truncation

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "DPO_STUDIO_CPU_BF16": "0"}


def write_rows(path: Path, rows: list[dict], newline: str = "\n") -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + newline for row in rows), encoding="utf-8")
    return path


def train_dpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train_dpo.py"), *args], capture_output=True, text=True,
                          cwd=REPO, env=ENV, timeout=600)


def test_demo_check_data_reports_counts_and_lengths_and_writes_nothing(tmp_path):
    rows = toy_rows(40)
    rows[3]["prompt"] = "Line\u2028separated prompt?"  # valid JSON lines that str.splitlines would break
    rows[5] = {**rows[5], "source": "forum", "id": 5}
    data = write_rows(tmp_path / "pairs.jsonl", rows, newline="\r\n")
    bad = write_rows(tmp_path / "eval.jsonl", [*toy_rows(6)[:5], {"prompt": "p", "chosen": "c", "rejected": ""}])
    out = tmp_path / "out"
    proc = train_dpo("--demo", "--demo-vocab-size", "300", "--dataset", str(data), "--eval-dataset", str(bad),
                     "--skip-invalid", "--output-dir", str(out), "--check-data", "--max-length", "40")
    assert proc.returncode == 0, proc.stderr
    assert not out.exists(), "--check-data writes nothing"
    text = proc.stdout
    assert "local:" in text and "40 rows read, 40 valid, 0 skipped" in text
    assert "6 rows read, 5 valid, 1 skipped" in text and "field 'rejected': is empty" in text
    assert "extra columns (ignored): id, source" in text
    assert "pairs: train 40, eval 5" in text
    for family in ("gpt2", "t5"):
        assert any(line.split()[:3] == [family, "train", "40"] for line in text.splitlines()), text
        assert any(line.split()[:3] == [family, "eval", "5"] for line in text.splitlines()), text


def test_bad_data_exits_2_with_one_line(tmp_path):
    data = write_rows(tmp_path / "bad.jsonl", [*toy_rows(3), {"prompt": "p", "chosen": "same", "rejected": "same"}])
    out = tmp_path / "out"
    proc = train_dpo("--demo", "--dataset", str(data), "--output-dir", str(out), "--check-data")
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {data}: row 4: fields 'chosen' and 'rejected' are identical (not a preference pair)"]
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_truncation_counts_match_the_trainer(tmp_path, family, monkeypatch):
    """A local model's own tokenizer; the counts equal what the family's trainer truncates and drops."""
    monkeypatch.setenv("DPO_STUDIO_CPU_BF16", "0")
    model_dir = build_models_dir(tmp_path / "models", families=(family,))[family]["base"]
    rows = toy_rows(12)
    rows[0]["prompt"] = "Tell me all about it? " * 30  # this prompt alone fills max_length
    data = write_rows(tmp_path / "pairs.jsonl", rows)
    max_length = 40
    args = parse_config(["--models", str(model_dir), "--dataset", str(data), "--eval-dataset", str(data),
                         "--output-dir", str(tmp_path / "out"), "--max-length", str(max_length)])
    report = check_data(*args)
    lengths = report["families"][str(model_dir)]["train"]

    model, tokenizer, arch = load_model_and_tokenizer(str(model_dir))
    pairs, _ = load_pairs(str(data))
    dataset = to_dataset(pairs, arch.prompt_format)
    config = DPOConfig(output_dir=str(tmp_path / "ckpt"), max_length=max_length, bf16=False, use_cpu=True,
                       report_to="none", precompute_ref_log_probs=False, gradient_checkpointing=False)
    trainer = build_trainer(arch, model, tokenizer, dataset, dataset, config, arch.lora_config(4, 8, 0.0, None))
    counted = count_truncation(trainer, len(dataset), len(dataset), max_length)["train"]
    assert (lengths.truncated, lengths.dropped) == (counted["rows"], counted["dropped"])
    assert lengths.truncated > 0 and lengths.pairs == 12
    assert lengths.min <= lengths.median <= lengths.max and lengths.max > 10 * max_length  # the long prompt
    assert not (tmp_path / "out").exists()


def test_estimate_times_a_few_steps_projects_the_run_and_writes_nothing(tmp_path):
    data = write_rows(tmp_path / "pairs.jsonl", toy_rows(40))
    out, work = tmp_path / "out", tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_studio", "check-data", "--estimate", "--estimate-steps", "2", "--demo",
         "--demo-vocab-size", "300", "--demo-hidden-size", "32", "--demo-layers", "1", "--dataset", str(data),
         "--output-dir", str(out), "--per-device-train-batch-size", "4", "--num-train-epochs", "3",
         "--eval-fraction", "0.25"],
        capture_output=True, text=True, cwd=work, env={**ENV, "TMPDIR": str(tmp_path / "tmp")}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "pairs: train 36, eval 4" in text  # the held-out split by prompt hash
    for family in ("gpt2", "t5"):
        line = next(line for line in text.splitlines() if line.strip().startswith(f"{family}: 3 steps of 4 pairs"))
        # 36 train pairs in batches of 4 = 9 steps per epoch, x 3 epochs
        assert "36 pairs x 3 epochs = 27 steps" in line and "projected total" in line, line
    assert "projected whole run:" in text and "estimate on " in text
    assert not out.exists(), "--estimate writes no output folder"
    assert not any(work.iterdir()), "--estimate writes nothing in the working folder"
    assert not list((tmp_path / "tmp").glob("dpo-studio-estimate-*")), "its temporary folder is removed"


def test_estimate_without_check_data_is_refused_in_one_line(tmp_path):
    proc = train_dpo("--estimate", "--demo", "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 2 and "--estimate goes with --check-data" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
