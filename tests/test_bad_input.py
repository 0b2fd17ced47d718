"""Table of malformed inputs: each gives one error line naming file/row/field, exit code 2, and writes nothing."""

import json

import pytest

from dpo_studio.cli.train import run_cli
from dpo_studio.data.reading import DataError, load_pairs

OK = {"prompt": "Tea or coffee?", "chosen": "Tea, always!", "rejected": "Both contain caffeine."}


def jsonl(*rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


CASES = {
    # name: (file name, content bytes or None for a directory, fragments expected in the message)
    "chosen is a number": ("d.jsonl", jsonl(OK, {**OK, "chosen": 3}), ["row 2", "field 'chosen'", "got int"]),
    "prompt is an object": ("d.jsonl", jsonl({**OK, "prompt": {"text": "hi"}}), ["row 1", "field 'prompt'", "got dict"]),
    "rejected is a list of strings": ("d.jsonl", jsonl({**OK, "rejected": ["a"]}), ["row 1", "field 'rejected'[0]"]),
    "missing rejected column": ("d.jsonl", jsonl({"prompt": "p", "chosen": "c"}), ["row 1", "field 'rejected'", "missing"]),
    "only unknown columns": ("d.jsonl", jsonl({"q": "p", "a": "c"}), ["row 1", "no 'prompt'/'chosen'/'rejected'", "a, q"]),
    "empty chosen": ("d.jsonl", jsonl({**OK, "chosen": ""}), ["row 1", "field 'chosen'", "empty"]),
    "whitespace prompt": ("d.jsonl", jsonl(OK, OK, {**OK, "prompt": " \t "}), ["row 3", "field 'prompt'", "empty"]),
    "null rejected": ("d.jsonl", jsonl({**OK, "rejected": None}), ["row 1", "field 'rejected'", "null"]),
    "non-UTF-8 bytes": ("d.jsonl", jsonl(OK) + b'{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}\n', ["row 2", "UTF-8"]),
    "truncated JSON line": ("d.jsonl", jsonl(OK) + b'{"prompt": "p", "chos', ["row 2", "invalid JSON"]),
    "JSON line is an array": ("d.jsonl", jsonl(OK) + b'["p", "c", "r"]\n', ["row 2", "expected a JSON object"]),
    "CSV ragged row": ("d.csv", b"prompt,chosen,rejected\np,c,r\np2,c2\n", ["row 3", "2 fields", "header has 3"]),
    "CSV header only": ("d.csv", b"prompt,chosen,rejected\n", ["header but no rows"]),
    "conversational bad role": (
        "d.jsonl", jsonl({**OK, "prompt": [{"role": "bot", "content": "hi"}]}), ["row 1", "'prompt'[0].role", "'bot'"]),
    "conversational missing content": (
        "d.jsonl", jsonl({**OK, "prompt": [{"role": "user"}]}), ["row 1", "'prompt'[0].content", "null"]),
    "conversational prompt ends with assistant": (
        "d.jsonl", jsonl({**OK, "prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
        ["row 1", "field 'prompt'", "last message must be a user turn"]),
    "conversational reply by user": (
        "d.jsonl", jsonl({**OK, "chosen": [{"role": "user", "content": "x"}]}), ["row 1", "'chosen'[0].role", "'assistant'"]),
    "message is not an object": ("d.jsonl", jsonl({**OK, "prompt": ["hi"]}), ["row 1", "'prompt'[0]", "got str"]),
    "prompt-only row": ("d.jsonl", jsonl({"prompt": "just a question"}), ["row 1", "field 'chosen'", "missing"]),
    "chosen equals rejected": ("d.jsonl", jsonl({**OK, "rejected": OK["chosen"]}), ["row 1", "identical"]),
    "empty file": ("d.jsonl", b"", ["file is empty"]),
    "blank lines only": ("d.jsonl", b"\n\n  \n", ["no rows"]),
    "a directory": ("data_dir", None, ["is a directory"]),
    "unsupported extension": ("d.txt", b"prompt chosen rejected", ["unsupported file type '.txt'"]),
    "JSON not a list": ("d.json", b"42", ["expected a JSON array"]),
    "corrupt parquet": ("d.parquet", b"PAR1 this is not parquet", ["not a readable parquet file"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_input_fails_cleanly(case, tmp_path, capsys):
    name, content, fragments = CASES[case]
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    out = tmp_path / "out"
    code = run_cli(["--dataset", str(path), "--output-dir", str(out), "--demo", "--models", "gpt2"])
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(error_lines) == 1, err
    message = error_lines[0]
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists(), "nothing is written for bad input"


def test_each_case_fails_by_its_own_defect(tmp_path):
    """Controls for the table: the row the cases are built from loads as a pair, and every case is rejected with a
    message of its own (no two cases test the same defect)."""
    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl(OK, OK))
    pairs, report = load_pairs(str(good))
    assert [(p.messages, p.chosen, p.rejected) for p in pairs] == [((("user", OK["prompt"]),), OK["chosen"], OK["rejected"])] * 2
    assert report.rows_kept == 2
    messages = set()
    for case, (name, content, _) in CASES.items():
        path = tmp_path / case.replace(" ", "_") / name
        path.parent.mkdir()
        path.mkdir() if content is None else path.write_bytes(content)
        with pytest.raises(DataError) as err:
            load_pairs(str(path))
        messages.add(str(err.value).replace(str(path), "FILE"))
    assert len(messages) == len(CASES), sorted(messages)


def test_missing_file_and_bad_option(tmp_path, capsys):
    assert run_cli(["--dataset", str(tmp_path / "nope.jsonl"), "--output-dir", str(tmp_path / "o"), "--demo"]) == 2
    assert "file not found" in capsys.readouterr().err
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(OK))
    assert run_cli(["--dataset", str(data), "--output-dir", str(tmp_path / "o"), "--demo", "--models", "llama"]) == 2
    assert "--demo builds 'gpt2' and 't5'" in capsys.readouterr().err
