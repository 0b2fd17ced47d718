"""Every flag `train_dpo.py --help` lists has a decision: ours, honoured as in `trl dpo`, an alias of ours, or refused
with one line naming what to use (exit code 2). A flag that appears in --help without a decision fails here."""

import dataclasses
import re

import pytest

from dpo_studio.cli.train import run_cli
from dpo_studio.config import inherited_flags
from dpo_studio.config.arguments import ScriptArguments, build_parser, parse_config
from dpo_studio.config.inherited_flags import ALIASES, HONOURED, REFUSED, refusal
from dpo_studio.training.pipeline import claim_output

PARSER_OWN = {"help", "config"}  # argparse's --help, TrlParser's --config FILE
OURS = {f.name for f in dataclasses.fields(ScriptArguments)}


def help_flags() -> set[str]:
    """Field names of every `--flag` in the --help text (both spellings map to one field)."""
    names = set()
    for line in build_parser().format_help().splitlines():
        if line.startswith("  -"):  # an option's line: `  --foo_bar FOO_BAR, --foo-bar FOO_BAR`
            names |= {name.replace("-", "_") for name in re.findall(r"(?:^\s+|, )--([A-Za-z][\w-]*)", line)}
    # `--no_foo` is HfArgumentParser's negation of a boolean that defaults to true: the same field
    return {name[3:] if name.startswith("no_") and name[3:] in names else name for name in names}


def test_every_help_flag_has_a_decision():
    undecided = help_flags() - OURS - HONOURED - ALIASES.keys() - REFUSED.keys() - PARSER_OWN
    assert not undecided, f"flags in --help with no decision in inherited_flags.py: {sorted(undecided)}"


def test_decisions_are_disjoint_and_name_real_flags():
    listed = help_flags()
    groups = [OURS, set(HONOURED), set(ALIASES), set(REFUSED)]
    for i, group in enumerate(groups):
        for other in groups[i + 1:]:
            assert not group & other
    stale = (set(HONOURED) | set(ALIASES) | set(REFUSED)) - listed
    assert not stale, f"decisions for flags no longer in --help: {sorted(stale)}"
    assert set(ALIASES.values()) <= OURS


def _value_args(flag: str) -> list[str]:
    """`--flag VALUE` with a value argparse accepts for that flag (not its default)."""
    action = next(a for a in build_parser()._actions if f"--{flag}" in a.option_strings)
    if action.nargs == "?":
        return [f"--{flag}", "true"]
    if action.choices:
        return [f"--{flag}", next(str(c) for c in action.choices if c != action.default)]
    if action.nargs == "+":
        return [f"--{flag}", "x"]
    return [f"--{flag}", '{"rope": true}' if "kwargs" in flag or "config" in flag else "x"]


def _takes_a_command_line_value(flag: str) -> bool:
    """False for dict-typed options (`--liger_kernel_config`): argparse cannot parse them; only --config sets them."""
    action = next(a for a in build_parser()._actions if f"--{flag}" in a.option_strings)
    try:
        action.type and action.type(_value_args(flag)[-1])
    except (TypeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("flag", sorted(REFUSED))
def test_refused_flags_are_one_line_naming_what_to_use(flag, capsys, tmp_path):
    if _takes_a_command_line_value(flag):
        args = _value_args(flag)
    else:
        (tmp_path / "run.yaml").write_text(f"{flag}: {{rope: true}}\n", encoding="utf-8")
        args = ["--config", str(tmp_path / "run.yaml")]
    code = run_cli(["--output-dir", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f"error: --{flag} is not supported: {refusal(flag, None)}"
    assert "\n" not in err
    assert not (tmp_path / "out").exists(), "a refused flag must stop the run before anything is written"


def test_padding_free_refusal_says_what_this_device_does_instead(fake_cuda, tmp_path):
    """CPU runs bucket rows by length (speed.trainer.cpu_training); CUDA runs keep TRL's padding and say so."""
    from types import SimpleNamespace

    from dpo_studio.config.precision import choose_precision

    assert "length buckets" in refusal("padding_free", None)  # a CPU run (this host, checked in the test above)
    fake_cuda((7, 5))
    on_gpu = refusal("padding_free", SimpleNamespace(precision=choose_precision(None, False)))
    assert "CUDA run pads each batch" in on_gpu and "group_by_length" in on_gpu and "buckets" not in on_gpu


def test_refusal_also_applies_to_the_config_file(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("use_dora: true\n", encoding="utf-8")
    assert run_cli(["--config", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --use_dora is not supported: {REFUSED['use_dora']}"


def test_model_name_or_path_is_one_model():
    script, _, _ = parse_config(["--model_name_or_path", "t5"])
    assert script.family_list() == ["t5"]
    script, _, _ = parse_config(["--model-name-or-path", "t5", "--models", "t5"])
    assert script.family_list() == ["t5"]


@pytest.mark.parametrize("argv, message", [
    (["--model_name_or_path", "t5", "--models", "gpt2"], "--model_name_or_path t5 and --models gpt2 disagree"),
    (["--model_name_or_path", "gpt2,t5"], "--model_name_or_path names one model"),
    (["--hub_model_id", "me/x"], "--hub_model_id names one repo but --models has 2 families"),
    (["--hub_model_id", "me/x", "--models", "gpt2", "--hub-repo-ids", "gpt2=me/y"], "disagree"),
    (["--resume_from_checkpoint", "/no/such/checkpoint"], "no such checkpoint folder"),
])
def test_contradicting_flags_exit_2_with_one_line(argv, message, capsys, tmp_path):
    assert run_cli([*argv, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_push_to_hub_is_push_and_the_trainer_never_publishes():
    script, training, _ = parse_config(["--push_to_hub", "--models", "gpt2", "--hub_model_id", "me/gpt2-dpo",
                                        "--hub_private_repo", "true", "--hub_revision", "dev"])
    assert script.push and script.private and script.revision == "dev"
    assert script.hub_repo_ids == "gpt2=me/gpt2-dpo"
    assert training.push_to_hub is False and training.hub_model_id is None  # publishing is ours, after saving


def test_push_to_hub_without_a_token_fails_fast(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no cached login
    monkeypatch.delenv("HF_TOKEN", raising=False)
    code = run_cli(["--push_to_hub", "--output-dir", str(tmp_path / "out")])
    assert code != 0 and "token" in capsys.readouterr().err.lower()


def test_output_dir_spellings_are_one_option(tmp_path):
    _, a, _ = parse_config(["--output_dir", str(tmp_path / "a")])
    _, b, _ = parse_config(["--output-dir", str(tmp_path / "a")])
    assert a.output_dir == b.output_dir == str(tmp_path / "a")


def test_resume_from_checkpoint_true_is_resume():
    script, training, _ = parse_config(["--resume_from_checkpoint", "true"])
    assert script.resume and training.resume_from_checkpoint is None


def test_resume_from_checkpoint_path_is_the_checkpoint_training_resumes(tmp_path):
    checkpoint = tmp_path / "elsewhere" / "checkpoint-7"
    checkpoint.mkdir(parents=True)
    script, training, _ = parse_config(["--resume_from_checkpoint", str(checkpoint), "--models", "gpt2",
                                        "--output-dir", str(tmp_path / "out")])
    assert script.resume and training.resume_from_checkpoint == str(checkpoint)
    job = claim_output("gpt2", script, tmp_path / "out", training.resume_from_checkpoint)
    assert job.last_checkpoint == str(checkpoint)  # what pipeline passes to trainer.train(resume_from_checkpoint=)
    with pytest.raises(inherited_flags.FlagError, match="needs one model"):
        script.models = "gpt2,t5"
        inherited_flags._resume(script, training)


def test_trust_remote_code_is_ours():
    script, _, _ = parse_config(["--trust_remote_code", "true"])
    assert script.trust_remote_code_models


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "cfg" / "data").mkdir(parents=True)
    (tmp_path / "cfg" / "data" / "train.jsonl").write_text("{}\n", encoding="utf-8")
    config = tmp_path / "cfg" / "run.yaml"
    config.write_text("dataset: data/train.jsonl\neval_dataset: user/hub-data\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    script, _, _ = parse_config(["--config", str(config)])
    assert script.dataset == str(tmp_path / "cfg" / "data" / "train.jsonl")
    assert script.eval_dataset == "user/hub-data"  # not a file next to the config: a Hub id, unchanged
    script, _, _ = parse_config(["--config", str(config), "--dataset", "data/train.jsonl"])
    assert script.dataset == "data/train.jsonl"  # a command-line path is relative to the current folder
