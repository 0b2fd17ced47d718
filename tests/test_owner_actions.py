"""No visitor acts with the server's credentials: the votes export is owner-only, writes only to the server's
configured repo, and is refused (one line, no repo created) through the UI callback, gradio_client and raw HTTP."""

from __future__ import annotations

import json
import os
import random

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import httpx
import pytest
from gradio_client import Client
from tiny_models import free_port

from dpo_studio import ui
from dpo_studio.arena.votes import VoteStore, make_vote
from dpo_studio.inference.model_sources import FamilySource, ModelRegistry
from dpo_studio.ui.owner import OWNER_SECRET_ENV, OwnerOnly, OwnerPolicy

SECRET = "owner-secret-123"


def _store(tmp_path) -> VoteStore:
    store = VoteStore(tmp_path / "votes.jsonl")
    store.append(make_vote(prompt="Hi", replies={"A": "x", "B": "y"}, sides={"A": "dpo", "B": "base"}, choice="A",
                           family="gpt2", settings={}))
    return store


def _registry() -> ModelRegistry:
    return ModelRegistry({"x": FamilySource("x", "X", merged="unused")})


def test_policy_is_off_by_default_and_names_what_is_missing(monkeypatch):
    monkeypatch.delenv("DPO_STUDIO_OWNER_ACTIONS", raising=False)
    monkeypatch.delenv(OWNER_SECRET_ENV, raising=False)
    with pytest.raises(OwnerOnly, match="off on this server .*--owner-actions export"):
        OwnerPolicy.from_env().check("export")
    with pytest.raises(ValueError, match="unknown owner action 'delete'"):
        OwnerPolicy.from_env("export,delete")
    monkeypatch.setenv(OWNER_SECRET_ENV, SECRET)
    policy = OwnerPolicy.from_env("export")
    for wrong in (None, "", "owner-secret-12"):
        with pytest.raises(OwnerOnly, match="needs the owner secret"):
            policy.check("export", wrong)
    policy.check("export", SECRET)


def test_export_callback_refuses_visitors_and_writes_only_the_configured_repo(tmp_path, local_hub):
    target = f"{local_hub.user}/configured-export"
    off = ui.Studio(_registry(), _store(tmp_path), export_repo=target)
    assert off.export("") == ("Export refused: export is an owner-only action and is off on this server "
                              "(start it with --owner-actions export)")
    guarded = ui.Studio(_registry(), off.votes, owner=OwnerPolicy(frozenset({"export"}), SECRET), export_repo=target)
    for wrong in ("", "guess"):
        message = guarded.export(wrong)
        assert message.startswith("Export refused:") and "\n" not in message
    assert local_hub.count("POST", "/repos/create") == 0  # nothing was created with the server's token
    assert guarded.export(SECRET).startswith("Exported 1 votes")
    assert "data/train.jsonl" in local_hub.files(target, repo_type="dataset")
    unconfigured = ui.Studio(_registry(), off.votes, owner=OwnerPolicy(frozenset({"export"})))
    assert unconfigured.export("").startswith("Export refused: this server has no export repo")


def _export_fn_indices(config: dict) -> list[int]:
    return [i for i, dep in enumerate(config["dependencies"]) if dep.get("api_name") == "ui_export"]


@pytest.mark.parametrize("enabled", [False, True])
def test_an_attacker_through_the_api_gets_nothing(tmp_path, local_hub, monkeypatch, enabled):
    """Every endpoint, hidden UI events included, called with an empty token/secret: no repo is created."""
    monkeypatch.setenv(OWNER_SECRET_ENV, SECRET)
    target = f"{local_hub.user}/configured-export"
    demo = ui.build_app(_registry(), votes_file=_store(tmp_path).path, example_prompts=[], rng=random.Random(0),
                        owner_actions="export" if enabled else "", export_repo=target)
    port = free_port()
    ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        config = httpx.get(url + "config").json()
        indices = _export_fn_indices(config)
        assert len(indices) == (1 if enabled else 0)  # off: the event (and its endpoint) does not exist
        replies = []
        for index in indices:
            client = Client(url, verbose=False, analytics_enabled=False)
            try:  # gradio_client does not offer private events; the raw HTTP below does what it would
                with pytest.raises(ValueError):
                    client.predict("", api_name="/ui_export")
            finally:
                client.close()
            join = httpx.post(url + "gradio_api/queue/join", json={"data": [""], "fn_index": index,
                                                                   "session_hash": "attacker1"})
            assert join.status_code == 200
            with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": "attacker1"},
                              timeout=60) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                        replies.append(json.loads(line[5:])["output"]["data"][0])
                        break
        assert len(replies) == len(indices)
        for reply in replies:
            assert reply.startswith("Export refused: export needs the owner secret")
        # Calling an unknown fn (what "export" would be when off) is an error, not an action.
        bad = httpx.post(url + "gradio_api/queue/join", json={"data": [""], "fn_index": 999, "session_hash": "a2"})
        assert bad.status_code != 200 or "error" in bad.text.lower()
    finally:
        demo.close()
    assert local_hub.count("POST", "/repos/create") == 0
    assert local_hub.count("POST", "/commit/") == 0
