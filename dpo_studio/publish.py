"""Publishing finished outputs to the Hugging Face Hub: merged models, LoRA adapters, demo bases, cards, the Space.

Publishing
----------
Every finished family folder `DIR/F` (one with `metrics.json`) becomes up to three model repos:

- `<ns>/F-dpo`: the merged model (adapter folded into the base): weights, config, generation config, tokenizer,
  `prompt_format.json`, `dpo_config.json`, `metrics.json`, `plots/*.png` and the card. Loads with
  `AutoModelForCausalLM` / `AutoModelForSeq2SeqLM.from_pretrained(repo_id)`.
- `<ns>/F-dpo-lora`: the LoRA adapter with tokenizer, prompt format and card, its `adapter_config.json` pointing at
  the Hub id of the base. A separate repo rather than a subfolder: `PeftModel.from_pretrained(base, repo_id)`, the
  Hub's adapter metadata and the app all work with a plain repo id, and the adapter stays a few-MB download.
- `<ns>/F-dpo-base`: only for demo outputs (`DIR/F/base/` exists: a base built locally that no Hub repo holds).
  The adapter's base id then points there; otherwise it is the Hub id the family was trained from.

`--hub-repo-ids gpt2=me/x,t5=me/y` names the merged repos explicitly (adapter `me/x-lora`, base `me/x-base`).
`--private`, `--revision` (a branch, created if missing) and `--commit-message` apply to every repo. The token and
endpoint are huggingface_hub's own (`HF_TOKEN` or `hf auth login`, `HF_ENDPOINT`); the token is never printed.
Upload folders are staged in a temp dir (outputs are never modified); cards are deterministic, so re-pushing
unchanged outputs creates no commit. A failed push names the `train_dpo.py --push-only` command that finishes it.

Space: `python -m dpo_studio.publish space --space-id NS/dpo-compare --from DIR [--hub-namespace NS]
[--hub-repo-ids ...] [--private]` creates a Gradio Space with `app.py`, the `dpo_studio/` package,
`requirements.txt` (from `requirements-space.txt`: inference only), `examples/prompts.txt`, `app_config.yaml` (the pushed repos, per family) and its README.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import httpx2  # huggingface_hub 2.x's HTTP client: dropped connections surface as httpx2.TransportError
import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, SpaceCard, SpaceCardData, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from .licenses import PROJECT_LICENSE, base_model_license, card_license_fields
from .prompt_format import PromptFormat

logger = logging.getLogger("dpo_studio")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = PROJECT_ROOT / "model_cards"
NO_TOKEN = "--push needs a Hugging Face token with write access: set HF_TOKEN or run `hf auth login`"
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
LABELS = {"gpt2": "GPT-2", "t5": "T5"}
EVAL_ROWS = ("rewards/accuracies", "rewards/margins", "loss", "rewards/chosen", "rewards/rejected",
             "logps/chosen", "logps/rejected", "logps/gap")
SPACE_REQUIREMENTS = "requirements-space.txt"  # inference-only: uploaded as the Space's requirements.txt
PLOT_ORDER = {"loss": 0, "rewards": 1, "margins": 2, "accuracy": 3}
_sleep: Callable[[float], None] = time.sleep  # module-level so tests can skip real waiting


class PublishError(RuntimeError):
    """Publishing failed; `exit_code` 2 = bad input/credentials, 1 = the Hub failed."""

    exit_code = 1


class PushAccessError(PublishError):
    exit_code = 2


@dataclass(frozen=True)
class RepoIds:
    """Where one family goes (Hub ids), or local paths relative to the output dir when `on_hub` is False."""

    merged: str
    adapter: str
    base: str
    base_is_ours: bool = False  # demo: the base is built locally and published by us to `base`
    on_hub: bool = True


@dataclass
class PushTarget:
    """Push settings shared by every family (from the CLI flags)."""

    namespace: str | None = None
    explicit: dict[str, str] | None = None  # family -> merged repo id
    private: bool = False
    revision: str | None = None
    commit_message: str = "Upload DPO model trained with dpo_studio"

    def finish_command(self, out_dir: Path) -> str:
        cmd = ["python", "train_dpo.py", "--push-only", str(out_dir)]
        if self.namespace:
            cmd += ["--hub-namespace", self.namespace]
        if self.explicit:
            cmd += ["--hub-repo-ids", ",".join(f"{k}={v}" for k, v in self.explicit.items())]
        cmd += ["--private"] * self.private + (["--revision", self.revision] if self.revision else [])
        return shlex.join(cmd)


# ----------------------------------------------------------------------------------------------- ids and access
def parse_repo_ids(spec: str | None) -> dict[str, str]:
    """`gpt2=me/x,t5=me/y` -> {"gpt2": "me/x", "t5": "me/y"}."""
    ids: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (spec or "").split(","))):
        family, _, repo_id = item.partition("=")
        if not family.strip() or not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id.strip()):
            raise PushAccessError(f"--hub-repo-ids: bad entry {item!r}: expected FAMILY=NAMESPACE/NAME")
        ids[family.strip()] = repo_id.strip()
    return ids


def is_hub_id(ref: str) -> bool:
    """A Hub model/dataset id rather than a local path or data file."""
    return (bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", ref)) and not Path(ref).exists()
            and not ref.endswith((".jsonl", ".json", ".csv", ".parquet")))


def repo_ids_for(family_dir: Path, metrics: dict[str, Any], target: PushTarget) -> RepoIds:
    family = metrics.get("family") or family_dir.name
    merged = (target.explicit or {}).get(family) or f"{target.namespace}/{family}-dpo"
    if merged.startswith("None/"):
        raise PushAccessError(f"no repo id for family {family!r}: give --hub-namespace or --hub-repo-ids")
    demo = (family_dir / "base").is_dir()
    return RepoIds(merged, f"{merged}-lora", f"{merged}-base" if demo else metrics["base_model"], base_is_ours=demo)


def local_repo_ids(family_dir: Path, metrics: dict[str, Any]) -> RepoIds:
    name = metrics.get("family") or family_dir.name
    demo = (family_dir / "base").is_dir()
    return RepoIds(f"{name}/merged", f"{name}/adapter", f"{name}/base" if demo else metrics["base_model"],
                   base_is_ours=demo, on_hub=False)


def push_requested(argv: list[str]) -> bool:
    """Cheap pre-scan (before the slow TRL import) of flags and `--config` YAML for --push / --push-only."""
    wanted = False
    for i, arg in enumerate(argv):
        flag, _, value = arg.partition("=")
        if flag.replace("_", "-") in ("--push", "--push-only"):
            value = value or (argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "true")
            wanted = wanted or value.lower() not in ("false", "0", "no")
        if flag == "--config" and (value or i + 1 < len(argv)):
            try:
                config = yaml.safe_load(Path(value or argv[i + 1]).read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError):
                continue  # the real parser reports a bad config file
            wanted = wanted or bool(config.get("push") or config.get("push_only"))
    return wanted


def require_token() -> None:
    """The offline half of the access check: a token exists (HF_TOKEN or a stored login)."""
    if not get_token():
        raise PushAccessError(NO_TOKEN)


def check_push_access(target: PushTarget, api: HfApi | None = None) -> PushTarget:
    """Fail before training: a token exists, the Hub accepts it, and it may write every target namespace.

    Returns the target with `namespace` defaulted to the token's user. Fine-grained tokens carry per-repo scopes
    that whoami does not summarise; for those, `create_repo` is the check.
    """
    require_token()
    api = api or HfApi()
    try:
        me = api.whoami()
    except OfflineModeIsEnabled:
        raise PushAccessError("--push needs the Hub but HF_HUB_OFFLINE is set: unset it to publish") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else 0
        if status in (401, 403):
            raise PushAccessError(f"the Hub at {api.endpoint} rejected the token (HTTP {status}): set a valid "
                                  "HF_TOKEN or run `hf auth login`") from None
        raise PublishError(f"the Hub at {api.endpoint} answered HTTP {status} to whoami; try again later") from None
    except httpx2.TransportError as err:
        raise PublishError(f"cannot reach the Hub at {api.endpoint}: {type(err).__name__}") from None
    role = (me.get("auth", {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PushAccessError(f"{NO_TOKEN} (the current token of '{me['name']}' is read-only)")
    target = replace(target, namespace=target.namespace or me["name"])  # families without an explicit id
    allowed = {me["name"], *(org["name"] for org in me.get("orgs", []))}
    needed = {target.namespace, *(repo_id.split("/")[0] for repo_id in (target.explicit or {}).values())}
    if role != "fineGrained" and needed - allowed:
        raise PushAccessError(f"the token of '{me['name']}' cannot write to namespace(s) "
                              f"{', '.join(sorted(needed - allowed))}; it can write to {', '.join(sorted(allowed))}")
    return target


# ------------------------------------------------------------------------------------------------------ cards
def _num(value: Any) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _hp(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else f"{value:g}" if isinstance(value, float) else str(value)


def _cell(text: Any) -> str:
    """A markdown table cell: no pipes or newlines may break the row."""
    return str(text).replace("|", "\\|").replace("\r", "").replace("\n", "<br>").strip() or "(empty)"


def card_context(metrics: dict[str, Any], ids: RepoIds, family_dir: Path) -> dict[str, Any]:
    """Every template variable of the cards, computed from metrics.json alone (deterministic: no timestamps)."""
    seq2seq = metrics.get("architecture") == "seq2seq"
    before, after = metrics["eval_before"], metrics["eval_after"]
    data = metrics.get("data", {})
    url = (lambda ref: f"{constants.ENDPOINT}/{ref}") if ids.on_hub else (lambda ref: f"../{ref.split('/', 1)[-1]}")
    ctx: dict[str, Any] = {
        "family": metrics["family"], "demo": ids.base_is_ours, "on_hub": ids.on_hub, "seq2seq": seq2seq,
        "has_adapter": (family_dir / "adapter").is_dir(),  # absent after full DPO (--use-peft false)
        "full_dpo": not (family_dir / "adapter").is_dir(),
        "precision": (metrics.get("precision") or {}).get("description"),
        "quantization": metrics.get("quantization"),
        "arch_label": "encoder-decoder (seq2seq) language model" if seq2seq else "decoder-only (causal) language model",
        "auto_class": "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM",
        "trainer": "dpo_studio's Seq2SeqDPOTrainer on TRL's DPOTrainer" if seq2seq else "DPOTrainer",
        "merged_ref": ids.merged, "adapter_ref": ids.adapter, "base_ref": ids.base,
        "merged_url": url(ids.merged), "adapter_url": url(ids.adapter), "base_url": url(ids.base),
        "dataset": metrics.get("dataset"), "eval_dataset": data.get("eval_dataset", "held-out split"),
        "train_pairs": data.get("train_pairs", "?"), "eval_pairs": data.get("eval_pairs", "?"),
        "beta": _hp(metrics.get("hyperparameters", {}).get("beta", "?")),
        "runtime": f"{metrics.get('train_runtime_s') or 0:.1f}", "pairs_per_s": f"{metrics.get('train_pairs_per_s') or 0:.2f}",
        "eval_rows": [{"name": k, "before": _num(before[k]), "after": _num(after[k]),
                       "change": f"{after[k] - before[k]:+.4f}"} for k in EVAL_ROWS if k in before and k in after],
        "hp_rows": [{"name": k, "value": _hp(v)} for k, v in metrics.get("hyperparameters", {}).items()],
        "version_rows": [{"name": k, "value": v} for k, v in metrics.get("versions", {}).items()],
        "plots": [{"title": p.stem.capitalize(), "path": f"{'' if ids.on_hub else '../'}plots/{p.name}"}
                  for p in sorted((family_dir / "plots").glob("*.png"), key=lambda p: (PLOT_ORDER.get(p.stem, 9), p.name))],
        "warnings": metrics.get("generation_warnings") or [],
        "samples": [{k: _cell(s.get(k, "")) for k in ("prompt", "base", "dpo")} for s in metrics.get("samples") or []][:6],
    }
    # Outputs from before the license was recorded: look it up now (demo: the project's own).
    ctx["license"] = metrics.get("base_license") or base_model_license(metrics.get("base_model", ""),
                                                                      built_locally=ids.base_is_ours)
    fmt = PromptFormat.from_dict(metrics["prompt_format"])
    ctx["example_prompt"] = json.dumps(fmt.prompt_from_text("Any tips for staying motivated when running?"))
    ctx["prompt_format_json"] = json.dumps(metrics["prompt_format"], sort_keys=True)
    if "generation_before" in metrics and "generation_after" in metrics:
        from .evidence import card_table_markdown  # numpy-backed: imported only when there is evidence

        ctx["generation_table"] = card_table_markdown({"generation_before": metrics["generation_before"],
            "generation_after": metrics["generation_after"], "comparison": metrics.get("generation_comparison", {})})
    if judge := metrics.get("judge"):
        top = judge.get("top_features", {})
        cues = {side: ", ".join(f"`{_cell(g if isinstance(g, str) else ' '.join(g))}`" for g, _ in top.get(side, [])[:8])
                or "—" for side in ("preferred", "rejected")}
        ctx["judge"] = {"accuracy": _num(judge.get("heldout_accuracy")), **cues}
    return ctx


def render_card(kind: str, metrics: dict[str, Any], ids: RepoIds, family_dir: Path) -> ModelCard:
    """Render `model_cards/<kind>.md` (kind: merged, adapter, base) with the shared macros of `_shared.md`."""
    ctx = card_context(metrics, ids, family_dir)
    task = "text2text-generation" if ctx["seq2seq"] else "text-generation"
    name = {"merged": ids.merged, "adapter": ids.adapter, "base": ids.base}[kind]
    if not ids.on_hub:  # local folders: name the repos they will become
        name = f"{metrics['family']}-dpo" + {"merged": "", "adapter": "-lora", "base": "-base"}[kind]
    dataset = metrics.get("dataset") or ""
    eval_results = [
        EvalResult(task_type=task, dataset_type=dataset if is_hub_id(dataset) else "local-preference-pairs",
                   dataset_name=Path(dataset).name or "preference pairs", dataset_split="held-out",
                   metric_type=metric, metric_name=label, metric_value=round(float(metrics["eval_after"][metric]), 6))
        for metric, label in (("rewards/accuracies", "Held-out reward accuracy"),
                              ("rewards/margins", "Held-out reward margin")) if metric in metrics["eval_after"]
    ]
    # base_model metadata only for a Hub id (a local demo base such as "gpt2/base" is a path)
    base_meta = ids.base if kind != "base" and (ids.on_hub or not ids.base_is_ours) and is_hub_id(ids.base) else None
    data = ModelCardData(
        base_model=base_meta, datasets=[dataset] if is_hub_id(dataset) else None, **card_license_fields(ctx["license"]),
        library_name="peft" if kind == "adapter" else "transformers", pipeline_tag=task,
        tags=["dpo", "trl", "peft", "lora", metrics.get("model_type", ""), "dpo-studio",
              *(["demo", "toy-model"] if ids.base_is_ours else [])],
        # model-index needs a model name; the demo base has no evaluation of its own
        **({} if kind == "base" else {"model_name": name.split("/")[-1], "eval_results": eval_results}),
    )
    title = {"merged": f"{name} (DPO, merged)", "adapter": f"{name} (DPO LoRA adapter)", "base": f"{name} (demo base)"}
    template = (TEMPLATES / "_shared.md").read_text(encoding="utf-8") + (TEMPLATES / f"{kind}.md").read_text(encoding="utf-8")
    return ModelCard.from_template(data, template_str=template, title=title[kind], **ctx)


def write_model_cards(family_dir: Path, metrics: dict[str, Any], repo_ids: RepoIds | None = None) -> None:
    """Write README.md into `family_dir/merged`, `/adapter` and `/base` (demo); local paths when repo_ids is None."""
    family_dir = Path(family_dir)
    ids = repo_ids or local_repo_ids(family_dir, metrics)
    for kind in ("merged", "adapter", "base"):
        if (family_dir / kind).is_dir() and (kind != "base" or ids.base_is_ours):
            _write(family_dir / kind / "README.md", str(render_card(kind, metrics, ids, family_dir)))


# ----------------------------------------------------------------------------------------------------- upload
def _write(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)  # never write through a hard link into the outputs
    path.write_text(text, encoding="utf-8")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # staging costs no disk space for multi-GB weights; staged files are only read
    except OSError:
        shutil.copy2(src, dst)


def _stage(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("README.md", "__pycache__"))
    return dst


def _transient(err: Exception) -> bool:
    if isinstance(err, HfHubHTTPError):
        return err.response is not None and err.response.status_code in TRANSIENT_STATUS
    return isinstance(err, httpx2.TransportError)  # dropped / refused / timed-out connections


def upload_repo(api: HfApi, repo_id: str, folder: Path, target: PushTarget, repo_type: str = "model",
                attempts: int = 3, base_delay: float = 2.0, **create_kwargs: Any) -> str:
    """Create the repo (and branch) if needed and upload `folder`; returns the head commit id.

    huggingface_hub already retries single requests; this retries the whole idempotent step (an unchanged file is
    skipped on the next try) with exponential backoff, for 5xx/429 answers and connection errors only.
    """
    for attempt in range(attempts):
        try:
            api.create_repo(repo_id, repo_type=repo_type, private=target.private, exist_ok=True, **create_kwargs)
            if target.revision and target.revision != "main":
                api.create_branch(repo_id, branch=target.revision, repo_type=repo_type, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type=repo_type,
                                     revision=target.revision, commit_message=target.commit_message)
            return info.oid
        except Exception as err:
            if not _transient(err) or attempt == attempts - 1:
                raise
            delay = base_delay * 2**attempt
            logger.warning("push of %s failed (%s); retrying in %.0f s", repo_id, type(err).__name__, delay)
            _sleep(delay)
    raise AssertionError("unreachable")


def finished_families(out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    if (out_dir / "metrics.json").is_file():  # DIR is itself one family folder
        return [out_dir]
    families = sorted(p.parent for p in out_dir.glob("*/metrics.json"))
    if not families:
        raise PushAccessError(f"{out_dir}: no finished outputs (no */metrics.json) to publish")
    return families


def push_family(family_dir: Path, target: PushTarget, api: HfApi | None = None, **retry: Any) -> dict[str, str]:
    """Push merged, adapter and (demo) base repos of one finished family; returns {repo id: head commit}."""
    api = api or HfApi()
    metrics = json.loads((family_dir / "metrics.json").read_text(encoding="utf-8"))
    ids = repo_ids_for(family_dir, metrics, target)
    pushed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="dpo-studio-push-") as tmp:
        stage = Path(tmp)
        folders: dict[str, tuple[str, Path]] = {}
        if ids.base_is_ours:
            folders["base"] = (ids.base, _stage(family_dir / "base", stage / "base"))
        if (family_dir / "adapter").is_dir():  # absent when trained with --use-peft false
            adapter = _stage(family_dir / "adapter", stage / "adapter")
            folders["adapter"] = (ids.adapter, adapter)
            config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = ids.base  # the local path of training means nothing on the Hub
            _write(adapter / "adapter_config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
        merged = _stage(family_dir / "merged", stage / "merged")
        for folder in (stage / "adapter", merged):  # dpo_config.json names the base as this machine knows it
            settings_file = folder / "dpo_config.json"
            if settings_file.is_file():
                settings = json.loads(settings_file.read_text(encoding="utf-8"))
                settings["base_model"] = ids.base
                _write(settings_file, json.dumps(settings, indent=2) + "\n")
        shutil.copy2(family_dir / "metrics.json", merged / "metrics.json")
        if (family_dir / "plots").is_dir():
            _stage(family_dir / "plots", merged / "plots")
        folders["merged"] = (ids.merged, merged)
        for kind, (repo_id, folder) in folders.items():
            _write(folder / "README.md", str(render_card(kind, metrics, ids, family_dir)))
            pushed[repo_id] = upload_repo(api, repo_id, folder, target, **retry)
            logger.info("[%s] %s -> %s/%s (commit %s)", metrics["family"], kind, api.endpoint, repo_id,
                        pushed[repo_id][:10])
    return pushed


def push_outputs(out_dir: Path, target: PushTarget, families: list[Path] | None = None, **retry: Any) -> dict[str, str]:
    """Push every finished family of `out_dir`; on failure, a PublishError naming the command that finishes it."""
    families = families or finished_families(out_dir)
    unknown = set(target.explicit or {}) - {json.loads((f / "metrics.json").read_text())["family"] for f in families}
    if unknown:
        raise PushAccessError(f"--hub-repo-ids names families not in {out_dir}: {', '.join(sorted(unknown))}")
    pushed: dict[str, str] = {}
    try:
        for family_dir in families:
            pushed.update(push_family(family_dir, target, **retry))
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PublishError(f"publishing failed ({type(err).__name__}: {reason}); the outputs are intact in {out_dir}, "
                           f"finish with: {target.finish_command(out_dir)}") from err
    return pushed


# ------------------------------------------------------------------------------------------------------ space
def deploy_space(space_id: str, from_dir: Path, target: PushTarget, project_root: Path = PROJECT_ROOT,
                 api: HfApi | None = None, **retry: Any) -> str:
    """Create/update a Gradio Space comparing the pushed repos of `from_dir`'s families; returns the head commit."""
    api = api or HfApi()
    config: dict[str, dict[str, str]] = {}
    for family_dir in finished_families(from_dir):
        metrics = json.loads((family_dir / "metrics.json").read_text(encoding="utf-8"))
        ids = repo_ids_for(family_dir, metrics, target)
        config[metrics["family"]] = {"label": LABELS.get(metrics["family"], metrics["family"]), "base": ids.base,
                                     "adapter": ids.adapter, "merged": ids.merged}
        if target.revision:  # the app reads `revision` for adapter/merged and `base_revision` for the base
            config[metrics["family"]].update(revision=target.revision,
                                             **({"base_revision": target.revision} if ids.base_is_ours else {}))
    with tempfile.TemporaryDirectory(prefix="dpo-studio-space-") as tmp:
        stage = Path(tmp)
        # (file in the project, path in the Space): the Space gets the inference-only requirements as its own
        for rel, dest in (("app.py", "app.py"), (SPACE_REQUIREMENTS, "requirements.txt"),
                          ("examples/prompts.txt", "examples/prompts.txt")):
            if not (project_root / rel).is_file():
                raise PushAccessError(f"{project_root / rel}: missing, the Space needs it")
            (stage / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project_root / rel, stage / dest)
        _stage(project_root / "dpo_studio", stage / "dpo_studio")
        (stage / "app_config.yaml").write_text(yaml.safe_dump({"families": config}, sort_keys=False), encoding="utf-8")
        card_data = SpaceCardData(
            title="DPO: base vs tuned", sdk="gradio", sdk_version=version("gradio"), app_file="app.py",
            license=PROJECT_LICENSE, models=sorted({fam[role] for fam in config.values() for role in ("base", "adapter", "merged")}),
            tags=["dpo", "trl", "peft", "lora"], emoji="⚖️", colorFrom="indigo", colorTo="pink", pinned=False,
        )
        card = SpaceCard.from_template(card_data, template_path=str(TEMPLATES / "space.md"), title=card_data.title,
                                       space_id=space_id, hub_url=constants.ENDPOINT,
                                       family_rows=list(config.values()))
        (stage / "README.md").write_text(str(card), encoding="utf-8")
        try:
            return upload_repo(api, space_id, stage, replace(target, revision=None), repo_type="space",
                               space_sdk="gradio", **retry)
        except (HfHubHTTPError, httpx2.HTTPError) as err:
            raise PublishError(f"deploying the Space {space_id} failed ({type(err).__name__}); run the same "
                               "command again to finish") from err


def main(argv: list[str] | None = None) -> int:
    """`python -m dpo_studio.publish space --space-id NS/NAME --from DIR [...]`."""
    parser = argparse.ArgumentParser(prog="python -m dpo_studio.publish", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    space = sub.add_parser("space", help="Create/update a Gradio Space comparing base and DPO models.")
    space.add_argument("--space-id", required=True, help="Space repo id, e.g. me/dpo-compare.")
    space.add_argument("--from", dest="from_dir", required=True, type=Path, help="Output dir of train_dpo.py.")
    space.add_argument("--hub-namespace", help="Namespace the models were pushed to (default: the token's user).")
    space.add_argument("--hub-repo-ids", help="Explicit model repo ids, as for train_dpo.py.")
    space.add_argument("--revision", help="Branch the models were pushed to (written to app_config.yaml).")
    space.add_argument("--private", action="store_true", help="Create a private Space.")
    args = parser.parse_args(argv)
    from .logs import setup_logging

    setup_logging()
    try:
        target = check_push_access(PushTarget(args.hub_namespace, parse_repo_ids(args.hub_repo_ids), args.private,
                                              args.revision, commit_message="Deploy the dpo_studio comparison app"))
        commit = deploy_space(args.space_id, args.from_dir, target)
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{constants.ENDPOINT}/spaces/{args.space_id} (commit {commit[:10]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
