"""No local machine path is shown to others: public references, the app's vote records, status and serving table."""

import json
from pathlib import Path

import pytest
from tiny_models import build_models_dir

from dpo_studio.inference.model_sources import ModelRegistry, discover_models_dir
from dpo_studio.public_refs import public_ref, scrub
from dpo_studio.ui import build_studio

pytestmark = pytest.mark.usefixtures("single_thread")


def test_public_ref_keeps_hub_ids_and_hides_local_directories(tmp_path):
    assert public_ref("openai-community/gpt2") == "openai-community/gpt2"
    assert public_ref("gpt2") == "gpt2"
    assert public_ref(None) is None
    folder = tmp_path / "runs" / "demo" / "gpt2" / "base"
    folder.mkdir(parents=True)
    assert public_ref(str(folder)) == "local:gpt2/base"
    assert public_ref("/home/someone/data/pairs.jsonl") == "local:data/pairs.jsonl"  # absolute, even if missing
    assert public_ref("local:gpt2/base") == "local:gpt2/base"  # idempotent
    message = f"{folder}: row 3: field 'chosen' is empty"
    assert scrub(message, str(folder)) == "local:gpt2/base: row 3: field 'chosen' is empty"


def test_votes_status_and_serving_table_hold_no_local_path(tmp_path):
    models = tmp_path / "models"
    build_models_dir(models)
    votes_file = tmp_path / "private" / "votes.jsonl"
    studio = build_studio(ModelRegistry(discover_models_dir(models)), votes_file=votes_file)
    *_, (reply_a, reply_b, round_, status) = studio.blind_stream("Any tips about tea?", "gpt2", 8, 0.7, 0.95, 0)
    message, _ = studio.vote_message(round_, "A")
    assert "Saved" in message
    record = json.loads(votes_file.read_text(encoding="utf-8").splitlines()[-1])
    shown = [status, message, studio.votes_status(), studio.serving_summary(), json.dumps(record)]
    for text in shown:
        assert str(tmp_path) not in text and str(Path.home()) not in text, text
    assert record["models"] == {"base": "local:gpt2/base", "dpo": "local:gpt2/adapter"}
    assert "votes&#46;jsonl" in studio.votes_status()  # md_text escapes the dot (no auto-link)


def test_demo_adapter_names_its_base_relative_to_itself(tmp_path):
    """Training writes `../base` (no local path) into a demo adapter; loaders resolve it against the adapter folder."""
    from dpo_studio.inference.generation import load_pair

    dirs = build_models_dir(tmp_path, families=("gpt2",))["gpt2"]
    config_file = dirs["adapter"] / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "base_model_name_or_path": "../base"}))
    pair = load_pair(None, str(dirs["adapter"]), None)  # base read from the adapter (as `--evaluate` does)
    assert Path(pair.base_source) == dirs["base"].resolve()
    (dirs["adapter"].parent / "base").rename(tmp_path / "moved")  # no base/ folder: the app follows the adapter
    assert discover_models_dir(tmp_path)["gpt2"].base == str((dirs["adapter"] / "../base").resolve())
