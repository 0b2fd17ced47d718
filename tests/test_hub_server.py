"""The local Hub server, exercised only through the real huggingface_hub / transformers / peft clients."""

from __future__ import annotations

from pathlib import Path

import httpx2  # huggingface_hub 2.4's HTTP client: its transport errors are httpx2's, not httpx's
import pytest
import torch
from hub_server import git_blob_sha
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from tiny_models import word_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast


def _tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).eval()


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer(["[UNK]", "hello", "world"], unk_token="[UNK]")


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _cached_repo_dir(repo_id: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"


def test_gpt2_upload_folder_then_from_pretrained_in_fresh_cache(local_hub, tmp_path):
    model = _tiny_gpt2()
    model.save_pretrained(tmp_path / "model")
    _tiny_tokenizer().save_pretrained(tmp_path / "model")
    repo_id = f"{local_hub.user}/tiny-gpt2"
    api = HfApi()
    assert api.create_repo(repo_id).repo_id == repo_id
    info = api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "model")

    # Server side: exactly the local bytes, plus the Hub's initial .gitattributes; one commit on top of it.
    local = _local_files(tmp_path / "model")
    stored = local_hub.files(repo_id)
    assert {k: v for k, v in stored.items() if k != ".gitattributes"} == local
    assert local_hub.commit_ids(repo_id)[-1] == info.oid == api.model_info(repo_id).sha
    assert len(local_hub.commit_ids(repo_id)) == 2
    assert sorted(api.list_repo_files(repo_id)) == sorted([".gitattributes", *local])
    assert local_hub.count(path_contains="xet") == 0  # nothing went through Xet

    # Client side: the upload did not fill the cache, so loading really downloads over HTTP.
    assert not _cached_repo_dir(repo_id).exists()
    loaded = AutoModelForCausalLM.from_pretrained(repo_id)
    assert _cached_repo_dir(repo_id).exists()
    # transformers pins the revision to the head commit sha (repo_info) before downloading each file
    assert local_hub.count("GET", f"/{repo_id}/resolve/{info.oid}/model.safetensors", status=200) == 1
    expected = model.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    tokenizer = AutoTokenizer.from_pretrained(repo_id)
    assert tokenizer("hello world")["input_ids"] == [1, 2]


def test_peft_adapter_roundtrip(local_hub, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(1)
    peft_model = get_peft_model(_tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    repo_id = f"{local_hub.user}/tiny-lora"
    HfApi().create_repo(repo_id)
    HfApi().upload_folder(repo_id=repo_id, folder_path=tmp_path / "adapter")

    loaded = PeftModel.from_pretrained(_tiny_gpt2(), repo_id)
    expected = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    got = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert expected and got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_missing_file_repo_and_revision_raise_hub_errors(local_hub):
    repo_id = f"{local_hub.user}/errors"
    local_hub.seed_repo(repo_id, {"config.json": b"{}"})
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.bin")
    # The 404 carried X-Repo-Commit, so huggingface_hub cached the file's absence for that commit.
    head = local_hub.commit_ids(repo_id)[-1]
    assert (_cached_repo_dir(repo_id) / ".no_exist" / head / "missing.bin").exists()
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{local_hub.user}/does-not-exist", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(f"{local_hub.user}/does-not-exist")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "config.json", revision="0" * 40)
    assert HfApi().file_exists(repo_id, "config.json") and not HfApi().file_exists(repo_id, "nope.json")
    assert hf_hub_download(repo_id, "config.json", revision=head)  # a commit sha works as revision


def test_whoami_tokens_and_write_access(local_hub):
    me = HfApi().whoami()
    assert me["name"] == local_hub.user and me["auth"]["accessToken"]["role"] == "write"
    with pytest.raises(HfHubHTTPError) as err:
        HfApi().whoami(token="hf_not_a_valid_token")
    assert err.value.response.status_code == 401
    local_hub.add_token("hf_reader", "reader", write=False)
    assert HfApi().whoami(token="hf_reader")["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(HfHubHTTPError) as err:
        HfApi().create_repo("reader/nope", token="hf_reader")
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:  # writable token, foreign namespace
        HfApi().create_repo("someone-else/nope")
    assert err.value.response.status_code == 403
    assert HfApi().create_repo("test-org/shared").repo_id == "test-org/shared"  # org namespace is writable


def test_create_repo_exist_ok_and_private_visibility(local_hub):
    api = HfApi()
    repo_id = f"{local_hub.user}/private-model"
    api.create_repo(repo_id, private=True)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(repo_id)
    assert err.value.response.status_code == 409
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    api.upload_file(path_or_fileobj=b"secret", path_in_repo="w.txt", repo_id=repo_id)
    assert api.model_info(repo_id).private is True
    local_hub.add_token("hf_other", "other-user")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "w.txt", token="hf_other")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(repo_id, token=False)  # anonymous
    assert Path(hf_hub_download(repo_id, "w.txt")).read_bytes() == b"secret"


def test_space_repo_with_gradio_sdk(local_hub, tmp_path):
    api = HfApi()
    repo_id = f"{local_hub.user}/demo-space"
    url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio")
    assert url.repo_type == "space"
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "app.py").write_text("import gradio as gr\n")
    (tmp_path / "space" / "requirements.txt").write_text("transformers\n")
    api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=tmp_path / "space")
    info = api.space_info(repo_id)
    assert info.sdk == "gradio"
    assert {".gitattributes", "README.md", "app.py", "requirements.txt"} == {s.rfilename for s in info.siblings}
    app = hf_hub_download(repo_id, "app.py", repo_type="space")
    assert Path(app).read_text() == "import gradio as gr\n"
    assert local_hub.count("GET", f"/spaces/{repo_id}/resolve/main/app.py", status=200) == 1
    with pytest.raises(RepositoryNotFoundError):  # same id, wrong repo type
        api.model_info(repo_id)


def test_identical_reupload_creates_no_commit_changed_file_does(local_hub, tmp_path):
    """Preupload returns each existing file's git oid, so huggingface_hub skips unchanged files (as on the Hub)."""
    api = HfApi()
    repo_id = f"{local_hub.user}/reupload"
    api.create_repo(repo_id)
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"alpha")
    (folder / "sub" / "b.txt").write_bytes(b"beta")
    first = api.upload_folder(repo_id=repo_id, folder_path=folder)
    commits_before = local_hub.count("POST", "/commit/")

    second = api.upload_folder(repo_id=repo_id, folder_path=folder)  # upload_folder path (hf_xet pipeline)
    third = api.upload_file(path_or_fileobj=b"alpha", path_in_repo="a.txt", repo_id=repo_id)  # create_commit path
    assert first.oid == second.oid == third.oid
    assert local_hub.count("POST", "/commit/") == commits_before
    assert len(local_hub.commit_ids(repo_id)) == 2

    (folder / "a.txt").write_bytes(b"alpha v2")
    fourth = api.upload_folder(repo_id=repo_id, folder_path=folder)
    assert fourth.oid != first.oid and len(local_hub.commit_ids(repo_id)) == 3
    tree = {f.path: f.blob_id for f in api.list_repo_tree(repo_id, recursive=True) if hasattr(f, "blob_id")}
    assert tree["a.txt"] == git_blob_sha(b"alpha v2") and tree["sub/b.txt"] == git_blob_sha(b"beta")
    # An older revision still serves the old content.
    old = hf_hub_download(repo_id, "a.txt", revision=first.oid)
    assert Path(old).read_bytes() == b"alpha"


def test_parent_commit_and_deletions(local_hub):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api = HfApi()
    repo_id = f"{local_hub.user}/ops"
    stale = local_hub.seed_repo(repo_id, {"x/1.txt": b"1", "x/2.txt": b"2", "keep.txt": b"k"})
    local_hub.seed_repo(repo_id, {"later.txt": b"l"})
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(repo_id, [CommitOperationAdd("n.txt", b"n")], commit_message="m", parent_commit=stale)
    assert err.value.response.status_code == 412
    api.create_commit(repo_id, [CommitOperationDelete("x/"), CommitOperationDelete("keep.txt")], commit_message="rm")
    assert set(local_hub.files(repo_id)) == {".gitattributes", "later.txt"}


def test_injected_500_on_commit(local_hub, tmp_path):
    """create_commit/upload_file POST the commit once: a 500 surfaces. upload_folder (hf_xet pipeline) retries it."""
    api = HfApi()
    repo_id = f"{local_hub.user}/faults"
    api.create_repo(repo_id)
    local_hub.inject_faults("/commit/main", ["500"])
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"1", path_in_repo="one.txt", repo_id=repo_id)
    assert err.value.response.status_code == 500
    assert len(local_hub.commit_ids(repo_id)) == 1  # nothing committed

    local_hub.inject_faults("/commit/main", ["500"])
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "two.txt").write_bytes(b"2")
    api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "folder")
    assert [r.status for r in local_hub.requests if r.method == "POST" and "/commit/" in r.path] == [500, 500, 200]
    assert set(local_hub.files(repo_id)) == {".gitattributes", "two.txt"}


def test_injected_503_on_preupload_is_retried(local_hub):
    repo_id = f"{local_hub.user}/faults"
    HfApi().create_repo(repo_id)
    local_hub.inject_faults("/preupload/", ["503"])
    HfApi().upload_file(path_or_fileobj=b"1", path_in_repo="one.txt", repo_id=repo_id)
    assert local_hub.count("POST", "/preupload/", status=503) == 1
    assert local_hub.count("POST", "/preupload/", status=200) == 1
    assert local_hub.files(repo_id)["one.txt"] == b"1"


def test_dropped_connections(local_hub):
    api = HfApi()
    repo_id = f"{local_hub.user}/drops"
    api.create_repo(repo_id)
    local_hub.inject_faults("/commit/main", ["drop"])
    with pytest.raises(httpx2.RemoteProtocolError):  # commit is not retried by upload_file
        api.upload_file(path_or_fileobj=b"1", path_in_repo="one.txt", repo_id=repo_id)
    assert local_hub.count("POST", "/commit/main", status="drop") == 1
    assert len(local_hub.commit_ids(repo_id)) == 1

    api.upload_file(path_or_fileobj=b"1", path_in_repo="one.txt", repo_id=repo_id)
    # metadata HEAD is not retried (fast fallback to the cache, which is empty) => the transport error surfaces
    local_hub.inject_faults("/resolve/", ["drop"], method="HEAD")
    with pytest.raises(httpx2.TransportError):
        hf_hub_download(repo_id, "one.txt")
    # a dropped download GET is resumed by huggingface_hub
    local_hub.inject_faults("/resolve/", ["drop"], method="GET")
    assert Path(hf_hub_download(repo_id, "one.txt")).read_bytes() == b"1"
    assert local_hub.count("GET", "/resolve/main/one.txt", status="drop") == 1
    assert local_hub.count("GET", "/resolve/main/one.txt", status=200) == 1
