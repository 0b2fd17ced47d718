"""The Space: inference-only requirements, an app that imports no training package, a downloaded Space that starts
and answers /compare (its start-up time is printed, not asserted), the card's models/datasets metadata, the votes
dataset and Space variable the deploy sets up (idempotently), generation under `spaces.GPU` where `spaces` is
installed (a fake one here) and untouched where it is not, and the cold-start bench on tiny outputs."""

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from huggingface_hub import SpaceCard, hf_hub_download, snapshot_download
from test_publish import outputs  # noqa: F401  (fixture: finished tiny demo outputs of both families)
from tiny_models import ask_compare, build_models_dir, free_port

from dpo_studio import ui
from dpo_studio.arena.hub_store import VOTES_REPO_ENV
from dpo_studio.hub import publish, space
from dpo_studio.hub.publish import PushTarget, push_outputs
from dpo_studio.hub.space import deploy_space

REPO = Path(__file__).resolve().parents[1]
TRAINING_ONLY = ("trl", "datasets", "matplotlib", "pandas")  # never imported by the app
NOT_LISTED = (*TRAINING_ONLY, "accelerate", "bitsandbytes")  # not in the Space's requirements (peft pulls accelerate)
INFERENCE = ("torch", "transformers", "peft", "gradio", "huggingface_hub", "PyYAML", "safetensors")


def requirements(path: Path) -> dict[str, str]:
    """{package name (lower case): version specifier} of a requirements file; options and comments skipped."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, spec = re.match(r"([A-Za-z0-9_.\-]+)(.*)", line).groups()
            out[name.lower().replace("_", "-")] = spec.strip()
    return out


def test_space_requirements_are_inference_only_and_pinned_like_training():
    space = requirements(REPO / "requirements-space.txt")
    training = requirements(REPO / "requirements-core.txt") | requirements(REPO / "requirements-app.txt")
    assert set(space) == {name.lower().replace("_", "-") for name in INFERENCE}
    assert not set(space) & set(NOT_LISTED)
    for name, spec in space.items():
        assert spec == training[name], f"{name}: {spec!r} in the Space, {training[name]!r} for training"
    text = (REPO / "requirements-space.txt").read_text(encoding="utf-8")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text.splitlines()


def test_zero_gpu_requirements_take_cuda_torch_and_the_same_ranges():
    cpu = requirements(REPO / "requirements-space.txt")
    zero = requirements(space.space_requirements("zero-a10g"))
    assert zero == cpu  # the same packages and ranges ...
    lines = space.space_requirements("zero-a10g").read_text(encoding="utf-8").splitlines()
    assert not any(line.startswith("--") for line in lines)  # ... but PyPI's torch (the CUDA build), no CPU index
    assert space.space_requirements("cpu-basic").read_bytes() == (REPO / "requirements-space.txt").read_bytes()
    assert space.space_requirements("cpu-upgrade") == space.space_requirements("cpu-basic")


def test_the_spaces_app_py_is_the_projects_app_py():
    """The Space's app.py ships as package data (dpo_studio/space_files/app.py) and is the checkout's app.py."""
    assert (space.SPACE_FILES / "app.py").read_bytes() == (REPO / "app.py").read_bytes()


def test_zero_gpu_deploy_uploads_cuda_requirements_and_asks_for_the_hardware_once(outputs, local_hub, capsys):  # noqa: F811
    space_id = f"{local_hub.user}/zero"
    push_outputs(outputs, publish.check_push_access(PushTarget()))
    assert space.main(["--space-id", space_id, "--from", str(outputs), "--hardware", "zero-a10g"]) == 0
    assert "hardware zero-a10g" in capsys.readouterr().out.splitlines()[0]
    files = local_hub.files(space_id, "space")
    assert files["requirements.txt"] == space.space_requirements("zero-a10g").read_bytes()
    card = SpaceCard(files["README.md"].decode())
    assert card.data.suggested_hardware == "zero-a10g" and "Hardware: `zero-a10g` (ZeroGPU" in card.text
    assert local_hub.repos[("space", space_id)].hardware == "zero-a10g"
    assert space.main(["--space-id", space_id, "--from", str(outputs), "--hardware", "zero-a10g"]) == 0
    assert local_hub.hardware_requests == []  # asked for at creation; unchanged on re-deploy (no restart)
    assert space.main(["--space-id", space_id, "--from", str(outputs), "--hardware", "cpu-basic"]) == 0
    assert local_hub.hardware_requests == [(space_id, "cpu-basic")]
    files = local_hub.files(space_id, "space")
    assert files["requirements.txt"] == (REPO / "requirements-space.txt").read_bytes()
    assert "Hardware: `cpu-basic` (CPU" in files["README.md"].decode()


def test_app_imports_no_training_package(tmp_path):
    """A fresh interpreter imports app.py, builds the app and answers a compare for both families."""
    build_models_dir(tmp_path / "models")
    script = textwrap.dedent(f"""
        import sys, traceback
        importers = {{}}

        class Watch:  # records which file imports each watched package first
            def find_spec(self, name, path=None, target=None):
                if name in {TRAINING_ONLY!r}:
                    frames = [f for f in traceback.extract_stack()[:-1] if "importlib" not in f.filename]
                    importers.setdefault(name, frames[-1].filename)
                return None

        sys.meta_path.insert(0, Watch())
        import app
        from dpo_studio import ui
        studio = ui.build_studio(models_dir={str(tmp_path / 'models')!r}, votes_file={str(tmp_path / 'votes.jsonl')!r})
        ui.build_app(studio=studio)
        for family in ("gpt2", "t5"):
            base, dpo, _ = studio.compare("Any tips about tea?", family, 4, 0.0, 1.0, 0)
        print("IMPORTERS", importers)
        print("LOADED", sorted(m for m in {TRAINING_ONLY!r} if m in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    importers = eval(proc.stdout.split("IMPORTERS", 1)[1].splitlines()[0])  # noqa: S307 - our own repr
    loaded = eval(proc.stdout.split("LOADED", 1)[1].splitlines()[0])  # noqa: S307
    for name in loaded:
        # gradio itself imports pandas (gradio/caching.py, a hard dependency of gradio): nothing of ours does
        assert name == "pandas" and "/gradio/" in importers[name], f"{name} imported by {importers.get(name)}"
    assert not set(loaded) - {"pandas"}


def test_downloaded_space_starts_and_answers_compare(outputs, local_hub, tmp_path):  # noqa: F811
    ns = local_hub.user
    target = publish.check_push_access(PushTarget())
    push_outputs(outputs, target)
    deploy_space(f"{ns}/dpo-compare", outputs, target)
    space = Path(snapshot_download(f"{ns}/dpo-compare", repo_type="space", local_dir=tmp_path / "space"))
    assert (space / "requirements.txt").read_bytes() == (REPO / "requirements-space.txt").read_bytes()

    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_HUB_OFFLINE")}
    env.update(GRADIO_SERVER_PORT=str(port), HF_HOME=str(tmp_path / "space_hf_home"),
               HF_HUB_CACHE=str(tmp_path / "space_hf_home" / "hub"), GRADIO_ANALYTICS_ENABLED="False")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        answer = ask_compare(proc, port, "gpt2", 8, timeout_s=240 - (time.perf_counter() - started))
        elapsed = time.perf_counter() - started
        assert answer is not None, proc.stdout.read() if proc.poll() is not None else "no answer in 240 s"
        base, dpo = answer
        assert isinstance(base, str) and isinstance(dpo, str)
        print(f"\nSpace start-up to first /compare answer: {elapsed:.1f} s (models downloaded from the local Hub)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _served_repo_ids(hub, space_id: str) -> list[str]:
    """Every base/adapter/merged repo id in the deployed Space's app_config.yaml."""
    import yaml

    families = yaml.safe_load(hub.files(space_id, repo_type="space")["app_config.yaml"])["families"]
    return sorted({entry[role] for entry in families.values() for role in ("base", "adapter", "merged")})


def test_space_card_names_its_models_and_votes_dataset(outputs, local_hub, tmp_path):  # noqa: F811
    ns = local_hub.user
    target = publish.check_push_access(PushTarget())
    push_outputs(outputs, target)
    done = deploy_space(f"{ns}/dpo-compare", outputs, target)
    readme = hf_hub_download(f"{ns}/dpo-compare", "README.md", repo_type="space", local_dir=tmp_path / "card")
    card = SpaceCard.load(readme)
    expected = sorted(f"{ns}/{family}-dpo{suffix}" for family in ("gpt2", "t5") for suffix in ("", "-lora", "-base"))
    assert card.data.models == expected == _served_repo_ids(local_hub, f"{ns}/dpo-compare")
    assert card.data.datasets == [f"{ns}/dpo-compare-votes"] == [done.votes_repo]
    assert f"datasets/{ns}/dpo-compare-votes" in card.text  # the body links the votes dataset too


def test_space_deploy_sets_up_the_votes_dataset_idempotently(outputs, local_hub):  # noqa: F811
    ns, space_id = local_hub.user, f"{local_hub.user}/dpo-compare"
    target = publish.check_push_access(PushTarget())
    push_outputs(outputs, target)
    first = deploy_space(space_id, outputs, target)
    votes = f"{ns}/dpo-compare-votes"
    assert first.votes_repo == votes and local_hub.repos[("dataset", votes)].private
    assert local_hub.space_variables(space_id) == {VOTES_REPO_ENV: votes}
    assert local_hub.space_secrets(space_id) == {}  # the owner's job unless --token-secret
    space_commits, votes_commits = local_hub.commit_ids(space_id, "space"), local_hub.commit_ids(votes, "dataset")
    posts = local_hub.count("POST", "/variables")

    again = deploy_space(space_id, outputs, target)
    assert again.commit == first.commit and local_hub.commit_ids(space_id, "space") == space_commits
    assert local_hub.commit_ids(votes, "dataset") == votes_commits
    assert local_hub.count("POST", "/variables") == posts  # unchanged variable not set again (no restart)
    assert local_hub.space_variables(space_id) == {VOTES_REPO_ENV: votes}


def test_space_command_votes_repo_token_secret_and_no_votes(outputs, local_hub, capsys):  # noqa: F811
    ns = local_hub.user
    push_outputs(outputs, publish.check_push_access(PushTarget()))
    assert space.main(["--space-id", f"{ns}/arena", "--from", str(outputs), "--votes-repo", "test-org/arena-votes",
                       "--token-secret"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{local_hub.url}/spaces/{ns}/arena (commit ")
    assert "test-org/arena-votes" in lines[1] and "secret HF_TOKEN" in lines[2]
    assert ("dataset", "test-org/arena-votes") in local_hub.repos
    assert local_hub.space_variables(f"{ns}/arena") == {VOTES_REPO_ENV: "test-org/arena-votes"}
    assert local_hub.space_secrets(f"{ns}/arena") == {"HF_TOKEN": local_hub.token}

    assert space.main(["space", "--space-id", f"{ns}/plain", "--from", str(outputs), "--no-votes-repo"]) == 0
    assert "no votes dataset" in capsys.readouterr().out
    assert ("dataset", f"{ns}/plain-votes") not in local_hub.repos
    assert local_hub.space_variables(f"{ns}/plain") == {} and local_hub.space_secrets(f"{ns}/plain") == {}
    assert SpaceCard(local_hub.files(f"{ns}/plain", "space")["README.md"].decode()).data.datasets is None


def test_space_command_refuses_a_votes_repo_without_namespace(capsys):
    with pytest.raises(SystemExit) as exit_info:
        space.main(["--space-id", "me/arena", "--from", "runs/x", "--votes-repo", "votes"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "dpo-studio space: error: --votes-repo 'votes': expected a Hub repo id NAMESPACE/NAME"


# ------------------------------------------------------------------------------------------------ ZeroGPU
@pytest.fixture
def zero_gpu(monkeypatch):
    """A ZeroGPU Space's `spaces` (tests/fake_spaces.py): CUDA init in the main process raises, `spaces.GPU` runs
    in a forked child with pickled arguments and results, and every module forward records its process id."""
    import fake_spaces

    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    module = fake_spaces.install(monkeypatch)
    yield module
    module.remove_hook()


def _generations(studio) -> dict[str, object]:
    """Compare (whole and streamed, both families), a blind round, Score and What DPO changed, greedy and seeded."""
    out = {family: studio.compare("Any tips about tea?", family, 6, 0.0, 1.0, 0)[:2] for family in ("gpt2", "t5")}
    out["stream"] = [step[:2] for step in studio.compare_stream("Any tips about tea?", "gpt2", 6, 0.0, 1.0, 0)]
    _, reply_a, reply_b = studio.blind("Any tips about tea?", "t5", 6, 0.0, 1.0, 0)
    out["blind"] = sorted((reply_a, reply_b))
    out["score"] = studio.score_all("Any tips about tea?", "Oh, I love tea!", "Tea is a beverage.", "gpt2")
    runs = studio.compare("Any tips about tea?", "t5", 6, 0.0, 1.0, 0)[2]
    out["changes"] = studio.changes(runs)
    return out


def test_stand_in_spaces_enforces_zero_gpus_rules(zero_gpu):
    """The stand-in is strict enough to catch the old app: CUDA init in the main process raises; a decorated
    function runs in another process and gets pickled copies of its arguments."""
    import torch
    from fake_spaces import CUDA_IN_MAIN

    with pytest.raises(RuntimeError, match="CUDA must not be initialized in the main process"):
        torch.zeros(1, device="cuda")
    assert CUDA_IN_MAIN
    seen = {"x": 1}

    def where(arg):
        arg["x"] = 2
        yield os.getpid(), arg

    pid, arg = next(zero_gpu.GPU(where)(seen))
    assert pid != os.getpid() and arg == {"x": 2} and seen == {"x": 1}


def test_zero_gpu_runs_every_forward_in_a_gpu_worker_and_loads_models_at_start(tmp_path, monkeypatch, zero_gpu):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build_models_dir(tmp_path / "models")
    zero_gpu.remove_hook()  # the plain run first, without ZeroGPU
    with monkeypatch.context() as plain_patch:
        plain_patch.delitem(sys.modules, "spaces")
        import torch

        plain_patch.setattr(torch.cuda, "is_available", lambda: False)
        plain_patch.setattr(torch.Tensor, "to", torch._C.TensorBase.to)
        plain_studio = ui.build_studio(models_dir=str(tmp_path / "models"), votes_file=str(tmp_path / "a.jsonl"))
        ui.build_app(studio=plain_studio)
        assert not plain_studio.registry.is_loaded("gpt2")  # without spaces: loaded on first use
        plain = _generations(plain_studio)
    assert len(plain["stream"]) > 1 and plain["stream"][-1] == plain["gpt2"]
    assert plain["blind"] == sorted(plain["t5"])

    import fake_spaces

    module = fake_spaces.install(monkeypatch)  # ZeroGPU from here on
    studio = ui.build_studio(models_dir=str(tmp_path / "models"), votes_file=str(tmp_path / "b.jsonl"))
    ui.build_app(studio=studio)
    # Loaded at start-up, in the main thread, and moved to "cuda" there (deferred by spaces, as on ZeroGPU)
    assert studio.registry.is_loaded("gpt2") and studio.registry.is_loaded("t5") and module.deferred
    assert len(module.wrapped) == 3 and module.calls == []  # decode, score, what-changed: wrapped before launch
    assert fake_spaces.forward_pids(module) == []  # loading ran no forward
    try:
        on_gpu = _generations(studio)
    finally:
        module.remove_hook()
    assert on_gpu == plain  # same replies, streaming steps, scores and changes
    pids = fake_spaces.forward_pids(module)
    assert pids and os.getpid() not in pids  # every forward ran in a GPU worker, none in the main process
    # one call per GPU task, with names, texts and settings only (all pickled)
    assert [call[0] for call in module.calls] == ["gpt2", "t5", "gpt2", "t5", "gpt2", "t5", "t5"]


def test_cold_start_bench_runs_on_tiny_outputs(outputs):  # noqa: F811
    """bench/space_cold_start.py end to end (its own local Hub, deploy, download, app.py); figures not asserted."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "space_cold_start.py"), "--from", str(outputs),
                           "--max-new-tokens", "4", "--timeout", "240"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("Space cold start:"))
    assert re.fullmatch(r"Space cold start: process start -> server answering [\d.]+ s, -> first /compare [\d.]+ s "
                        r"\(models downloaded and loaded\); warm /compare [\d.]+ s", line), line
    assert proc.stdout.startswith("# ") and "torch threads" in proc.stdout.splitlines()[0]
