"""Data loading, validation messages, conversational rows, deterministic split, prompt-format round trip."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dpo_studio.data.prompt_format import DECODER_ONLY_FORMAT, ENCODER_DECODER_FORMAT, PromptFormat
from dpo_studio.data.reading import DataError, load_pairs, split_pairs, to_dataset

REPO = Path(__file__).resolve().parents[1]
GOOD = {"prompt": "How do I keep basil alive?", "chosen": "Oh, give it sun and water!", "rejected": "Basil requires light."}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_standard_jsonl_loads(tmp_path):
    pairs, report = load_pairs(str(write_jsonl(tmp_path / "d.jsonl", [GOOD, {**GOOD, "prompt": "Other?"}])))
    assert len(pairs) == 2 and report.rows_kept == 2
    assert pairs[0].messages == (("user", GOOD["prompt"]),)
    assert pairs[0].chosen == GOOD["chosen"] and pairs[0].rejected == GOOD["rejected"]


def test_csv_json_and_parquet_load_the_same_pairs(tmp_path):
    rows = [GOOD, {**GOOD, "prompt": "Second, with a comma?"}]
    with open(tmp_path / "d.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "chosen", "rejected"])
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    loaded = [load_pairs(str(tmp_path / name))[0] for name in ("d.csv", "d.json", "d.parquet")]
    assert loaded[0] == loaded[1] == loaded[2]
    assert len(loaded[0]) == 2


def test_conversational_rows_are_normalised(tmp_path):
    row = {
        "prompt": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Tea or coffee?"},
        ],
        "chosen": [{"role": "assistant", "content": "Tea, always!"}],
        "rejected": [{"role": "assistant", "content": "Both beverages contain caffeine."}],
    }
    implicit = {  # TRL's implicit-prompt format: no prompt column, shared prefix
        "chosen": [{"role": "user", "content": "Tea or coffee?"}, {"role": "assistant", "content": "Tea!"}],
        "rejected": [{"role": "user", "content": "Tea or coffee?"}, {"role": "assistant", "content": "Caffeine."}],
    }
    pairs, _ = load_pairs(str(write_jsonl(tmp_path / "c.jsonl", [row, implicit])))
    assert pairs[0].messages[-1] == ("user", "Tea or coffee?") and len(pairs[0].messages) == 4
    assert pairs[0].chosen == "Tea, always!"
    assert pairs[1].messages == (("user", "Tea or coffee?"),) and pairs[1].rejected == "Caffeine."
    text = DECODER_ONLY_FORMAT.render_prompt(pairs[0].message_dicts())
    assert text == "System: Be kind.\nUser: Hi!\nAssistant: Hello.\nUser: Tea or coffee?\nAssistant:"


BAD_ROWS = [
    # (row, expected fragments in the message)
    ({"prompt": "p", "chosen": "c"}, ["row 1", "field 'rejected'", "missing"]),
    ({"prompt": "p", "chosen": "", "rejected": "r"}, ["row 1", "field 'chosen'", "empty"]),
    ({"prompt": "   ", "chosen": "c", "rejected": "r"}, ["row 1", "field 'prompt'", "empty"]),
    ({"prompt": "p", "chosen": 3, "rejected": "r"}, ["row 1", "field 'chosen'", "expected a string, got int"]),
    ({"prompt": "p", "chosen": "c", "rejected": None}, ["row 1", "field 'rejected'", "null"]),
    ({"question": "p", "answer": "a"}, ["row 1", "no 'prompt'/'chosen'/'rejected' fields", "answer, question"]),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, ["row 1", "'chosen' and 'rejected' are identical"]),
    (
        {"prompt": [{"role": "robot", "content": "x"}], "chosen": "c", "rejected": "r"},
        ["row 1", "field 'prompt'[0].role", "unknown role 'robot'"],
    ),
    (
        {"prompt": [{"role": "assistant", "content": "x"}], "chosen": "c", "rejected": "r"},
        ["row 1", "field 'prompt'", "last message must be a user turn"],
    ),
]


@pytest.mark.parametrize("row, fragments", BAD_ROWS)
def test_each_validation_error_names_file_row_and_field(tmp_path, row, fragments):
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DataError) as info:
        load_pairs(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_row_number_points_at_the_bad_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, {"prompt": "p", "chosen": "", "rejected": "r"}])
    with pytest.raises(DataError, match=r"row 3: field 'chosen'"):
        load_pairs(str(path))


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("empty.jsonl", b"", "file is empty"),
        ("trunc.jsonl", b'{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p", "cho', "row 2: invalid JSON"),
        ("bytes.jsonl", b'{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "\xff\xfe"}\n', "row 2: not valid UTF-8"),
        ("ragged.csv", b"prompt,chosen,rejected\np,c,r\np2,c2\n", "row 3: has 2 fields but the header has 3"),
        ("data.txt", b"hello", "unsupported file type"),
    ],
)
def test_file_level_errors(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=fragment):
        load_pairs(str(path))


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        load_pairs(str(tmp_path))
    with pytest.raises(DataError, match="file not found"):
        load_pairs(str(tmp_path / "nope.jsonl"))


def test_skip_invalid_drops_and_counts(tmp_path):
    rows = [GOOD, {"prompt": "p", "chosen": "", "rejected": "r"}, {**GOOD, "prompt": "q"}, {"prompt": "x"}]
    pairs, report = load_pairs(str(write_jsonl(tmp_path / "d.jsonl", rows)), skip_invalid=True)
    assert len(pairs) == 2 and report.rows_skipped == 2 and report.rows_read == 4
    assert "row 2" in report.skipped_examples[0] and "row 4" in report.skipped_examples[1]


def test_split_is_deterministic_disjoint_and_order_independent(tmp_path):
    rows = [{**GOOD, "prompt": f"question {i}?"} for i in range(200)]
    pairs, _ = load_pairs(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    train_a, eval_a = split_pairs(pairs, 0.2, seed=7)
    train_b, eval_b = split_pairs(list(reversed(pairs)), 0.2, seed=7)
    assert {p.prompt_key for p in eval_a} == {p.prompt_key for p in eval_b}
    assert not {p.prompt_key for p in train_a} & {p.prompt_key for p in eval_a}
    assert len(train_a) + len(eval_a) == 200 and 20 <= len(eval_a) <= 60
    _, eval_other_seed = split_pairs(pairs, 0.2, seed=8)
    assert {p.prompt_key for p in eval_other_seed} != {p.prompt_key for p in eval_a}


@pytest.mark.parametrize("fmt", [DECODER_ONLY_FORMAT, ENCODER_DECODER_FORMAT])
def test_prompt_format_round_trip(tmp_path, fmt):
    fmt.save(tmp_path)
    loaded = PromptFormat.load(tmp_path)
    assert loaded == fmt
    pairs, _ = load_pairs(str(write_jsonl(tmp_path / "d.jsonl", [GOOD])))
    row = to_dataset(pairs, loaded)[0]
    assert row["prompt"] == loaded.prompt_from_text(GOOD["prompt"])
    if fmt.kind == "plain-chat":
        assert row["prompt"] == "User: How do I keep basil alive?\nAssistant:"
        assert row["chosen"] == " Oh, give it sun and water!"
    else:
        assert row["prompt"] == "respond: User: How do I keep basil alive?"
        assert row["chosen"] == "Oh, give it sun and water!"


def test_cli_bad_data_exits_2_with_one_line_and_writes_nothing(tmp_path):
    data = write_jsonl(tmp_path / "bad.jsonl", [GOOD, {"prompt": "p", "chosen": "c", "rejected": 5}])
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "train_dpo.py"), "--dataset", str(data), "--output-dir", str(out), "--demo"],
        capture_output=True, text=True, cwd=REPO, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [f"error: {data}: row 2: field 'rejected': expected a string, got int"]
    assert not out.exists() or not any(out.rglob("metrics.json"))


def test_help_documents_every_option():
    proc = subprocess.run([sys.executable, str(REPO / "train_dpo.py"), "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0
    for flag in ("--models", "--dataset", "--eval-fraction", "--skip-invalid", "--push", "--push-only",
                 "--hub-namespace", "--resume", "--beta", "--loss-type", "--learning-rate", "--num-train-epochs",
                 "--per-device-train-batch-size", "--max-length", "--lora-r", "--seed", "--demo"):
        assert flag in proc.stdout, flag
