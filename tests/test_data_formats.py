"""Valid files load as written: separators inside JSON strings, CRLF, BOM, blank lines, quoted CSV newlines,
conversational rows, extra columns."""

import csv
import io
import json
import logging

import pytest

from dpo_studio.data.reading import load_pairs

# Characters `str.splitlines` treats as line ends; `json.dumps(..., ensure_ascii=False)` writes them raw.
SEPARATORS = "\u2028\u2029\u0085\x1c\x1d\x1e\x0b\x0c"
ROWS = [
    {"prompt": f"Line one{SEPARATORS}still the prompt?", "chosen": "Oh, sure\u2028friend!", "rejected": "Certainly.\u2029"},
    {"prompt": "Tea or coffee?", "chosen": "Tea, always\u0085 (a cosy one)!", "rejected": "Both are beverages."},
]


def expected_pairs():
    return [(row["prompt"].strip(), row["chosen"].strip(), row["rejected"].strip()) for row in ROWS]


def as_tuples(pairs):
    return [(p.messages[-1][1], p.chosen, p.rejected) for p in pairs]


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS), encoding="utf-8")
    pairs, report = load_pairs(str(path))
    assert as_tuples(pairs) == expected_pairs()
    assert report.rows_read == 2 and report.rows_skipped == 0


def test_jsonl_with_bom_crlf_and_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(ROWS[0], ensure_ascii=False), "", "   ", json.dumps(ROWS[1], ensure_ascii=False), "", ""]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8"))
    pairs, _ = load_pairs(str(path))
    assert as_tuples(pairs) == expected_pairs()


def test_jsonl_error_row_counts_only_newlines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0], ensure_ascii=False) + "\n\n" + '{"prompt": "x", "chosen": \n', encoding="utf-8")
    with pytest.raises(Exception, match=r"row 3: invalid JSON"):
        load_pairs(str(path))


def test_csv_with_quoted_newlines_bom_and_crlf(tmp_path):
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["prompt", "chosen", "rejected"])
    rows = [*ROWS, {"prompt": "Two\nlines\r\nhere?", "chosen": "Yes,\nthey stay!", "rejected": "Noted."}]
    for row in rows:
        writer.writerow([row["prompt"], row["chosen"], row["rejected"]])
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbf" + buffer.getvalue().encode("utf-8") + b"\r\n")
    pairs, report = load_pairs(str(path))
    assert as_tuples(pairs) == [*expected_pairs(), ("Two\nlines\r\nhere?", "Yes,\nthey stay!", "Noted.")]
    assert report.rows_read == 3


def test_conversational_jsonl(tmp_path):
    rows = [
        {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi\u2028there?"}],
         "chosen": [{"role": "assistant", "content": "Hey you!"}],
         "rejected": [{"role": "assistant", "content": "Greetings."}]},
        {"chosen": [{"role": "user", "content": "Rain?"}, {"role": "assistant", "content": "Cosy!"}],
         "rejected": [{"role": "user", "content": "Rain?"}, {"role": "assistant", "content": "Precipitation."}]},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8-sig")
    pairs, _ = load_pairs(str(path))
    assert pairs[0].messages == (("system", "Be kind."), ("user", "Hi\u2028there?"))
    assert (pairs[0].chosen, pairs[0].rejected) == ("Hey you!", "Greetings.")
    assert pairs[1].messages == (("user", "Rain?"),) and pairs[1].chosen == "Cosy!"


def test_extra_columns_are_accepted_and_named_once(tmp_path, caplog):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({**row, "id": i, "score": 0.5}, ensure_ascii=False) + "\n"
                            for i, row in enumerate(ROWS * 3)), encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="dpo_studio"):
        pairs, report = load_pairs(str(path))
    assert len(pairs) == 6 and report.extra_columns == ["id", "score"]
    mentions = [r.getMessage() for r in caplog.records if "extra columns" in r.getMessage()]
    assert mentions == [f"{path}: ignoring extra columns: id, score"]
