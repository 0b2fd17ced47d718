"""Round two from the browser: the Train tab's service trains the next round on the votes in a subprocess (the CLI),
follows its progress log, cancels it cleanly, refuses without enough votes or without the owner's rights, and adds
the finished round to the arena without a restart."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
from gradio_client import Client
from tiny_models import free_port, plain_generate
from toy_data import toy_rows

from dpo_studio import ui
from dpo_studio.arena.votes import VoteStore, make_vote
from dpo_studio.inference.model_sources import ModelRegistry, discover_models_dir
from dpo_studio.run_layout import FamilyPaths
from dpo_studio.training.progress_log import read_progress
from dpo_studio.ui.owner import OWNER_SECRET_ENV
from dpo_studio.ui.round_training import MIN_DECISIVE_VOTES, TrainSettings
from dpo_studio.ui.tabs import train as train_tab

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword is deprecated).*")]
CAP = 8
STEPS = 3
TINY = TrainSettings(epochs=1, lora_r=4, batch_size=4, eval_fraction=0.25,
                     extra=("--max-steps", str(STEPS), "--learning-rate", "1e-2", "--bf16", "false"))
ENDLESS = TrainSettings(epochs=1, lora_r=4, batch_size=4, eval_fraction=0.25,
                        extra=("--max-steps", "100000", "--bf16", "false", "--save-steps", "100000"))


@pytest.fixture(autouse=True)
def _one_thread_children(monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the training subprocess on a shared 2-core box
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # rounds report to trackio: a temp store


def plant_votes(path: Path, decisive: int, ties: int = 2) -> VoteStore:
    """`decisive` A/B picks of gpt2 on different prompts (the warm reply chosen), `ties` ties, and t5 votes that
    must not count for gpt2."""
    store = VoteStore(path)
    for i, row in enumerate(toy_rows(decisive + ties)):
        choice = "tie" if i >= decisive else "A"
        store.append(make_vote(prompt=row["prompt"], replies={"A": row["chosen"], "B": row["rejected"]},
                               sides={"A": "dpo", "B": "base"}, choice=choice, family="gpt2", settings={}))
    for row in toy_rows(4):
        store.append(make_vote(prompt=row["prompt"], replies={"A": row["chosen"], "B": row["rejected"]},
                               sides={"A": "dpo", "B": "base"}, choice="B", family="t5", settings={}))
    return store


def app(models_dir: Path, tmp_path: Path, votes: int, settings: TrainSettings = TINY, **kwargs):
    """The app (and its Studio) over the tiny GPT-2 with `votes` planted votes, training enabled."""
    plant_votes(tmp_path / "votes.jsonl", votes)
    registry = ModelRegistry({"gpt2": discover_models_dir(models_dir)["gpt2"]})
    kwargs.setdefault("owner_actions", "train")
    studio = ui.build_studio(registry, votes_file=tmp_path / "votes.jsonl", max_new_tokens_cap=CAP,
                             rng=random.Random(0), train_output_dir=tmp_path / "rounds", train_settings=settings,
                             **kwargs)
    return ui.build_app(studio=studio, example_prompts=[]), studio


def api_names(demo) -> set[str]:
    return {dep.get("api_name") for dep in demo.config["dependencies"]}


def wait_until(condition, timeout_s: float = 900.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("timed out waiting")


def test_a_round_trained_from_the_train_tab_joins_the_arena(models_dir, tmp_path):
    demo, studio = app(models_dir, tmp_path, votes=16)
    training = studio.training
    message = training.start("gpt2")
    assert message.startswith("Training GPT-2 round2") and "\n" not in message
    assert training.start("gpt2").startswith("Training refused: GPT-2 round2 is already training")  # one at a time
    status = wait_until(lambda: (s := training.status())["state"] != "running" and s)
    job = training.job
    assert status["state"] == "finished", (status, job.log_path.read_text()[-3000:])
    assert status["progress"] == 1.0 and status["step"] == status["max_steps"] == STEPS

    # The training file: the 16 decisive gpt2 votes only (no ties, no t5 votes).
    rows = [json.loads(line) for line in (job.folder / "votes.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and {r["family"] for r in rows} == {"gpt2"}
    # The progress log: a line per step, and the Trainer's own logged losses (metrics.json's log history).
    lines = read_progress(FamilyPaths(job.output).progress)
    metrics = json.loads((job.output / "metrics.json").read_text())
    steps = [r for r in lines if r["event"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1)) and {r["max_steps"] for r in steps} == {STEPS}
    assert all(r["eta_s"] >= 0 for r in steps) and steps[-1]["eta_s"] == 0
    logged = [e for e in metrics["log_history"] if "loss" in e]
    assert [(r["step"], r["loss"]) for r in lines if r["event"] == "log"] == [(e["step"], e["loss"]) for e in logged]
    assert [p["loss"] for p in status["loss"]] == [e["loss"] for e in logged]
    assert {p["series"] for p in status["rewards"]} == {"chosen", "rejected", "margins"}
    # The round is tracked in trackio's local store (trackio installed: the Train tab's default), named for the round.
    assert metrics["tracking"]["trackio"] == {"project": "dpo-studio", "run": "gpt2-round2", "space_id": None,
                                              "url": None}
    read_back = subprocess.run([sys.executable, "-c", "import json; from trackio.sqlite_storage import SQLiteStorage as S;"
                                " print(json.dumps(S.get_logs('dpo-studio', 'gpt2-round2')))"],
                               capture_output=True, text=True, timeout=120, check=True)
    tracked = [row for row in json.loads(read_back.stdout.strip().splitlines()[-1]) if "train/loss" in row]
    assert [(r["train/global_step"], r["train/loss"]) for r in tracked] == [(e["step"], e["loss"]) for e in logged]
    assert lines[-1]["event"] == "end" and lines[-1]["status"] == "finished"
    assert metrics["data"]["train_pairs"] + metrics["data"]["eval_pairs"] == 16
    bar, line, loss, rewards, _ = train_tab.status_view(training)
    assert 'value="1.0000"' in bar and len(loss) == len(logged) and len(rewards) == 3 * len(logged)

    # In the arena without a restart: blind rounds draw it (its replies are its merged model's), /leaderboard lists it.
    source = studio.registry.source("gpt2")
    assert source.model_names == ("base", "dpo", "round2")
    assert source.dpo_round("round2").merged == str(job.output / "merged")
    expected = plain_generate(job.output / "merged", "gpt2", "Any tips about tea?", CAP)
    drawn = []
    for _ in range(12):
        round_id, reply_a, reply_b = studio.blind("Any tips about tea?", "gpt2", CAP, 0.0, 1.0, 0)
        reveal = studio.vote(round_id, "A")
        drawn += [reply for side, reply in (("A", reply_a), ("B", reply_b)) if reveal[side] == "round2"]
    assert drawn and set(drawn) == {expected}
    port = free_port()
    ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        board = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(api_name="/leaderboard")["gpt2"]
    finally:
        demo.close()
    round2 = next(row for row in board["models"] if row["model"] == "round2")
    assert round2["votes"] == len(drawn) and round2["rating"] is not None


def test_cancel_stops_the_run_and_nothing_looks_finished(models_dir, tmp_path):
    demo, studio = app(models_dir, tmp_path, votes=12, settings=ENDLESS)
    training = studio.training
    training.start("gpt2")
    wait_until(lambda: (training.status().get("step") or 0) >= 1)  # training is under way
    assert training.cancel().startswith("Cancelling GPT-2 round2")
    status = wait_until(lambda: (s := training.status())["state"] != "running" and s, timeout_s=300)
    job = training.job
    assert status["state"] == "cancelled", job.log_path.read_text()[-3000:]
    assert job.process.poll() is not None
    with pytest.raises(ProcessLookupError):  # the whole process group is gone
        os.killpg(job.process.pid, 0)
    assert not list(job.folder.rglob("metrics.json")), "a cancelled run must not look finished"
    assert read_progress(FamilyPaths(job.output).progress)[-1]["status"] == "cancelled"
    assert "checkpoint saved at step" in job.log_path.read_text()  # the CLI's own clean stop (SIGINT), not a kill
    assert studio.registry.source("gpt2").model_names == ("base", "dpo")
    assert training.cancel() == "No training is running."


def test_too_few_decisive_votes_are_refused_in_one_line(models_dir, tmp_path):
    demo, studio = app(models_dir, tmp_path, votes=MIN_DECISIVE_VOTES - 3)
    message = studio.training.start("gpt2")
    assert message == (f"Training refused: GPT-2 has {MIN_DECISIVE_VOTES - 3} decisive votes (A/B picks); at least "
                       f"{MIN_DECISIVE_VOTES} are needed (ties and both-bad do not count)")
    assert studio.training.job is None and not (tmp_path / "rounds").exists()  # no process, nothing written


def test_visitors_cannot_train(models_dir, tmp_path, monkeypatch):
    off_demo, off = app(models_dir, tmp_path, votes=16, owner_actions=None)
    assert off.training.start("gpt2").startswith("Training refused: train is an owner-only action and is off")
    assert off.training.cancel().startswith("Cancel refused: train is an owner-only action")
    assert off.training.job is None
    assert not {"ui_train", "ui_train_cancel", "ui_train_status"} & api_names(off_demo)  # no Train tab, no events

    monkeypatch.setenv(OWNER_SECRET_ENV, "owner-s3cret")
    guarded_demo, guarded = app(models_dir, tmp_path, votes=16, owner_actions="train")
    for supplied in (None, "", "wrong-guess"):
        message = guarded.training.start("gpt2", supplied)
        assert message == f"Training refused: train needs the owner secret (${OWNER_SECRET_ENV} of this server)"
    assert "owner-s3cret" not in message and guarded.training.job is None
    # "push" is off on this server: asking to push is refused even with the right secret.
    assert guarded.training.start("gpt2", "owner-s3cret", push=True).startswith(
        "Training refused: push is an owner-only action and is off")
    assert guarded.training.job is None
    assert {"ui_train", "ui_train_cancel", "ui_train_status"} <= api_names(guarded_demo)


def test_an_attacker_calling_the_hidden_train_event_is_refused(models_dir, tmp_path, monkeypatch):
    """Raw HTTP to the Train tab's hidden Gradio events (what a script would send), with a wrong secret."""
    import httpx

    monkeypatch.setenv(OWNER_SECRET_ENV, "owner-s3cret")
    demo, studio = app(models_dir, tmp_path, votes=16, owner_actions="train,push", train_hub_namespace="someone")
    port = free_port()
    ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    replies = {}
    try:
        config = httpx.get(url + "config").json()
        calls = {"ui_train": ["guess", "gpt2", True], "ui_train_cancel": ["guess"]}
        for index, dep in enumerate(config["dependencies"]):
            if dep.get("api_name") in calls:
                session = f"attacker-{index}"
                join = httpx.post(url + "gradio_api/queue/join", json={
                    "data": calls[dep["api_name"]], "fn_index": index, "session_hash": session})
                assert join.status_code == 200
                with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session},
                                  timeout=60) as stream:
                    for line in stream.iter_lines():
                        if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                            replies[dep["api_name"]] = json.loads(line[5:])["output"]["data"][0]
                            break
    finally:
        demo.close()
    assert replies["ui_train"].startswith("Training refused: train needs the owner secret")
    assert replies["ui_train_cancel"].startswith("Cancel refused: train needs the owner secret")
    assert studio.training.job is None and not (tmp_path / "rounds").exists()


def test_a_failed_run_shows_the_logs_error_line(tmp_path):
    from dpo_studio.inference.model_sources import FamilySource

    (tmp_path / "not-a-model").mkdir()
    registry = ModelRegistry({"gpt2": FamilySource("gpt2", "GPT-2", base=str(tmp_path / "b"),
                                                   merged=str(tmp_path / "not-a-model"))})
    plant_votes(tmp_path / "votes.jsonl", 16)
    studio = ui.build_studio(registry, votes_file=tmp_path / "votes.jsonl", owner_actions="train",
                             train_output_dir=tmp_path / "rounds", train_settings=TINY)
    assert studio.training.start("gpt2").startswith("Training GPT-2 round2")
    status = wait_until(lambda: (s := studio.training.status())["state"] != "running" and s, timeout_s=300)
    assert status["state"] == "failed" and status["error"].startswith("error: model ")
    assert "cannot read its config" in status["message"] and "\n" not in status["message"]
    assert registry.source("gpt2").model_names == ("base", "dpo")


def test_the_progress_log_ends_with_how_the_run_ended(tmp_path):
    from dpo_studio.training.progress_log import ProgressLog
    from dpo_studio.training.signals import TrainingInterrupted

    for error, status in ((RuntimeError("disk full\nmore detail"), "failed"), (TrainingInterrupted("x"), "cancelled"),
                          (None, "finished")):
        log = ProgressLog(tmp_path / "progress.jsonl")
        with pytest.raises(type(error)) if error else contextlib.nullcontext():
            with log.outcome():
                if error:
                    raise error
        [last] = read_progress(log.path)  # a new run starts an empty file
        assert last["event"] == "end" and last["status"] == status
        assert last.get("error") == ("RuntimeError: disk full" if status == "failed" else None)


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian chromium is not installed")
def test_the_train_tab_in_chromium(models_dir, tmp_path):
    """Start in the page, the timer follows the run to the end, the Leaderboard then lists round2 (docs/train.png
    is the demo's own, from docs/make_screenshots.py)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="python playwright is not installed")
    settings = TrainSettings(epochs=1, lora_r=4, batch_size=4, eval_fraction=0.25,
                             extra=("--max-steps", "8", "--learning-rate", "1e-2", "--bf16", "false"))
    demo, studio = app(models_dir, tmp_path, votes=16, settings=settings)
    port = free_port()
    ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    errors: list[str] = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
                page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
                page.set_default_timeout(600_000)
                page.goto(f"http://127.0.0.1:{port}/")
                page.get_by_role("tab", name="Train").click()
                page.locator("#train-start").click()
                page.locator("#train-message").get_by_text("Training GPT-2 round2", exact=False).wait_for()
                page.locator("#train-eta").get_by_text("added to the arena", exact=False).wait_for()
                bar = page.locator("#train-progress").get_attribute("value")
                shot = tmp_path / "train.png"
                page.screenshot(path=str(shot), full_page=True)
                page.get_by_role("tab", name="Leaderboard").click()
                page.wait_for_function("() => document.querySelector('#leaderboard-table')?.innerText"
                                       ".includes('round2')")
            finally:
                browser.close()
    finally:
        demo.close()
    assert float(bar) == 1.0 and studio.training.status()["state"] == "finished"
    assert errors == []


def test_a_round_pushed_from_the_train_tab_lands_in_the_servers_namespace(models_dir, tmp_path, local_hub):
    from transformers import AutoModelForCausalLM

    demo, studio = app(models_dir, tmp_path, votes=16, owner_actions="train,push", train_hub_namespace=local_hub.user)
    training = studio.training
    repo = f"{local_hub.user}/gpt2-dpo-round2"
    assert training.start("gpt2", push=True) == (f"Training GPT-2 round2 from its latest round on the votes, then "
                                                 f"pushed to {repo}.")
    status = wait_until(lambda: (s := training.status())["state"] != "running" and s)
    assert status["state"] == "finished" and status["error"] is None, training.job.log_path.read_text()[-3000:]
    assert status["message"] == f"GPT-2 round2 trained and added to the arena. Pushed to {repo}."
    assert "model.safetensors" in local_hub.files(repo) and "adapter_config.json" in local_hub.files(f"{repo}-lora")
    AutoModelForCausalLM.from_pretrained(repo)  # the pushed merged round loads on its own
