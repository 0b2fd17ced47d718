"""Publishing finished outputs to the Hugging Face Hub: merged models, LoRA adapters, demo bases (cards: cards.py,
the Space: space.py).

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
Upload folders are staged in a temp dir (outputs are never modified). A failed push names the
`train_dpo.py --push-only` command that finishes it.

`dpo-studio space ...` deploys the comparison Space (see space.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import httpx2  # huggingface_hub 2.x's HTTP client: dropped connections surface as httpx2.TransportError
import yaml
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from dpo_studio.names import DPO_CONFIG_FILE
from dpo_studio.outputs.cards import RepoIds, render_card, write_unlinked
from dpo_studio.run_layout import FamilyPaths, RunMetrics

logger = logging.getLogger(__name__)

NO_TOKEN = "--push needs a Hugging Face token with write access: set HF_TOKEN or run `hf auth login`"
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_sleep: Callable[[float], None] = time.sleep  # module-level so tests can skip real waiting


class PublishError(RuntimeError):
    """Publishing failed; `exit_code` 2 = bad input/credentials, 1 = the Hub failed."""

    exit_code = 1


class PushAccessError(PublishError):
    exit_code = 2


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


def repo_ids_for(family_dir: Path, metrics: RunMetrics, target: PushTarget) -> RepoIds:
    family = metrics.family or family_dir.name
    merged = (target.explicit or {}).get(family) or f"{target.namespace}/{family}-dpo"
    if merged.startswith("None/"):
        raise PushAccessError(f"no repo id for family {family!r}: give --hub-namespace or --hub-repo-ids")
    demo = FamilyPaths(family_dir).base.is_dir()
    return RepoIds(merged, f"{merged}-lora", f"{merged}-base" if demo else metrics.base_model, base_is_ours=demo)


def push_requested(argv: list[str]) -> bool:
    """Whether `train_dpo.py argv` asks for --push / --push-only (flags, else the `--config` YAML).

    A pre-scan, so that --push without a token fails in about a second, before TRL and torch are imported; the real
    parse (config.parse_config, TrlParser) decides everything else, and tests check the two agree. Hand-written
    because TrlParser itself needs trl: argparse reads the flags the way TrlParser does (`--push`, `--push true`,
    `--push-only DIR`, `--push_only=DIR`, unknown flags ignored).
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config")
    parser.add_argument("--push", nargs="?", const="true")
    parser.add_argument("--push_only", "--push-only")
    known, _ = parser.parse_known_args(argv)
    values: dict[str, Any] = {}
    if known.config:
        try:
            values = yaml.safe_load(Path(known.config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            values = {}  # the real parser reports a bad config file
    push = known.push if known.push is not None else values.get("push", False) if isinstance(values, dict) else False
    push_only = known.push_only or (values.get("push_only") if isinstance(values, dict) else None)
    return str(push).lower() in ("true", "t", "1", "yes", "y") or bool(push_only)


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


# ----------------------------------------------------------------------------------------------------- upload
def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # staging costs no disk space for multi-GB weights; staged files are only read
    except OSError:
        shutil.copy2(src, dst)


def stage_tree(src: Path, dst: Path) -> Path:
    """Hard-linked (else copied) copy of `src` for an upload, without cards (rendered fresh) and caches."""
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

    Args:
        target: branch, privacy and commit message of the push.
        attempts, base_delay: tries in all, and the first wait in seconds (doubled after each failure).
        create_kwargs: passed to `create_repo` (e.g. `space_sdk` for a Space).
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
    if FamilyPaths(out_dir).is_finished():  # DIR is itself one family folder
        return [out_dir]
    families = [paths.folder for paths in FamilyPaths.finished_in(out_dir)]
    if not families:
        raise PushAccessError(f"{out_dir}: no finished outputs (no */{FamilyPaths.METRICS_FILE}) to publish")
    return families


def push_family(family_dir: Path, target: PushTarget, api: HfApi | None = None, **retry: Any) -> dict[str, str]:
    """Push merged, adapter and (demo) base repos of one finished family; returns {repo id: head commit}."""
    api = api or HfApi()
    paths = FamilyPaths(family_dir)
    metrics = RunMetrics.load(paths.metrics)
    ids = repo_ids_for(family_dir, metrics, target)
    pushed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="dpo-studio-push-") as tmp:
        stage = FamilyPaths(Path(tmp))  # laid out as the family folder
        folders: dict[str, tuple[str, Path]] = {}
        if ids.base_is_ours:
            folders["base"] = (ids.base, stage_tree(paths.base, stage.base))
        if paths.adapter.is_dir():  # absent when trained with --use-peft false
            adapter = stage_tree(paths.adapter, stage.adapter)
            folders["adapter"] = (ids.adapter, adapter)
            config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = ids.base  # the local path of training means nothing on the Hub
            write_unlinked(adapter / "adapter_config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
        merged = stage_tree(paths.merged, stage.merged)
        for folder in (stage.adapter, merged):  # dpo_config.json names the base as this machine knows it
            settings_file = folder / DPO_CONFIG_FILE
            if settings_file.is_file():
                settings = json.loads(settings_file.read_text(encoding="utf-8"))
                settings["base_model"] = ids.base
                write_unlinked(settings_file, json.dumps(settings, indent=2) + "\n")
        shutil.copy2(paths.metrics, merged / FamilyPaths.METRICS_FILE)  # the merged repo carries the run's record
        if paths.plots.is_dir():
            stage_tree(paths.plots, merged / FamilyPaths.PLOTS_DIR)
        folders["merged"] = (ids.merged, merged)
        for kind, (repo_id, folder) in folders.items():
            write_unlinked(folder / "README.md", str(render_card(kind, metrics, ids, family_dir)))
            pushed[repo_id] = upload_repo(api, repo_id, folder, target, **retry)
            logger.info("[%s] %s -> %s/%s (commit %s)", metrics.family, kind, api.endpoint, repo_id,
                        pushed[repo_id][:10])
    return pushed


def push_outputs(out_dir: Path, target: PushTarget, families: list[Path] | None = None, **retry: Any) -> dict[str, str]:
    """Push every finished family of `out_dir`; on failure, a PublishError naming the command that finishes it."""
    families = families or finished_families(out_dir)
    unknown = set(target.explicit or {}) - {RunMetrics.load(FamilyPaths(f).metrics).family for f in families}
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
