"""The comparison app as a Gradio Space: `app.py`, the `dpo_studio/` package, `requirements.txt` (inference only:
torch's CPU wheels on CPU hardware, PyPI's CUDA torch on ZeroGPU), `examples/prompts.txt`, `app_config.yaml` (the
pushed repos, per family) and a README rendered from `model_cards/space.md`, whose metadata (huggingface_hub's
`SpaceCardData`) names every model the Space serves (`models:`), its votes dataset (`datasets:`) and the hardware
asked for, so the Hub links them.

Every file comes from the installed package (`dpo_studio/space_files/` and the package itself, shipped as package
data), so the deploy works the same from a `pip install .` copy in any folder as from a checkout.

`--hardware` (huggingface_hub's `SpaceHardware` names: `cpu-basic`, the default, or `zero-a10g` for ZeroGPU, ...)
picks the requirements and asks the Hub for that hardware; the app runs every GPU forward inside `spaces.GPU`
(`dpo_studio.ui.engine`).

The deploy also sets up the votes: it creates the dataset repo (private; default `<space id>-votes`) and sets the
Space variable `DPO_STUDIO_VOTES_REPO` the app reads; the Space writes with its secret `HF_TOKEN`, which the owner
sets on the Hub (or `--token-secret` copies the deployer's token there). Re-deploying changes nothing that is the same.

`dpo-studio space --space-id NS/dpo-compare --from DIR [--hub-namespace NS] [--hub-repo-ids ...] [--revision BRANCH]
[--private] [--hardware cpu-basic|zero-a10g|...] [--votes-repo NS/NAME | --no-votes-repo] [--token-secret]`
(or `python -m dpo_studio.hub.space ...`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx2  # huggingface_hub 2.x's HTTP client
import yaml
from huggingface_hub import HfApi, SpaceCard, SpaceCardData, SpaceHardware, constants
from huggingface_hub.errors import HfHubHTTPError

from dpo_studio.arena.hub_store import VOTES_REPO_ENV
from dpo_studio.hub.publish import (
    PublishError,
    PushAccessError,
    PushTarget,
    check_push_access,
    finished_families,
    parse_repo_ids,
    repo_ids_for,
    stage_tree,
    upload_repo,
)
from dpo_studio.models.licenses import PROJECT_LICENSE
from dpo_studio.names import family_label
from dpo_studio.outputs.cards import TEMPLATES
from dpo_studio.run_layout import FamilyPaths, RunMetrics

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the installed dpo_studio (site-packages or a checkout)
SPACE_FILES = PACKAGE_DIR / "space_files"  # package data: the Space's app.py and its requirements per hardware
CPU_HARDWARE = SpaceHardware.CPU_BASIC.value
ZERO_GPU_HARDWARE = (SpaceHardware.ZERO_A10G.value,)  # ZeroGPU: GPU work inside spaces.GPU, CUDA torch
HARDWARE = tuple(h.value for h in SpaceHardware)


def space_requirements(hardware: str) -> Path:
    """The requirements a Space on `hardware` installs: CPU wheels on CPU hardware, PyPI's CUDA torch elsewhere."""
    return SPACE_FILES / ("requirements-cpu.txt" if hardware.startswith("cpu") else "requirements-zerogpu.txt")


TOKEN_SECRET = "HF_TOKEN"  # the Space secret the app's huggingface_hub logs in with (votes commits)
ROLES = ("base", "adapter", "merged")


@dataclass(frozen=True)
class SpaceDeployment:
    """What a deploy made: the Space's head commit, its votes dataset (None: no votes repo), whether the deployer's
    token was copied into the Space secret."""

    space_id: str
    commit: str
    votes_repo: str | None
    token_secret: bool
    hardware: str = CPU_HARDWARE


def default_votes_repo(space_id: str) -> str:
    """`<ns>/<space name>-votes`: the votes dataset of a Space, next to it."""
    return f"{space_id}-votes"


def _family_config(from_dir: Path, target: PushTarget) -> dict[str, dict[str, str]]:
    """app_config.yaml's `families`: the pushed repos of every finished family in `from_dir`."""
    config: dict[str, dict[str, str]] = {}
    for family_dir in finished_families(from_dir):
        metrics = RunMetrics.load(FamilyPaths(family_dir).metrics)
        ids = repo_ids_for(family_dir, metrics, target)
        config[metrics.family] = {"label": family_label(metrics.family), "base": ids.base,
                                  "adapter": ids.adapter, "merged": ids.merged}
        if target.revision:  # the app reads `revision` for adapter/merged and `base_revision` for the base
            config[metrics.family].update(revision=target.revision,
                                          **({"base_revision": target.revision} if ids.base_is_ours else {}))
    return config


def space_card(space_id: str, config: dict[str, dict[str, str]], votes_repo: str | None,
               hardware: str = CPU_HARDWARE) -> SpaceCard:
    """The Space's README: metadata through `SpaceCardData` (models served, votes dataset, suggested hardware), body
    from the template."""
    card_data = SpaceCardData(
        title="DPO: base vs tuned", sdk="gradio", sdk_version=version("gradio"), app_file="app.py",
        license=PROJECT_LICENSE, models=sorted({fam[role] for fam in config.values() for role in ROLES}),
        datasets=[votes_repo] if votes_repo else None, suggested_hardware=hardware,
        tags=["dpo", "trl", "peft", "lora"], emoji="⚖️", colorFrom="indigo", colorTo="pink", pinned=False,
    )
    return SpaceCard.from_template(card_data, template_path=str(TEMPLATES / "space.md"), title=card_data.title,
                                   space_id=space_id, hub_url=constants.ENDPOINT, votes_repo=votes_repo,
                                   family_rows=list(config.values()), hardware=hardware,
                                   zero_gpu=hardware in ZERO_GPU_HARDWARE)


def _stage(stage: Path, package: Path, config: dict[str, dict[str, str]], card: SpaceCard, hardware: str) -> None:
    """The Space's files in `stage`, all from the installed package `package` (no checkout needed)."""
    requirements = space_requirements(hardware).relative_to(PACKAGE_DIR)
    # (file in the package, path in the Space): the Space gets the inference-only requirements as its own
    for rel, dest in (("space_files/app.py", "app.py"), (str(requirements), "requirements.txt"),
                      ("examples/prompts.txt", "examples/prompts.txt")):
        if not (package / rel).is_file():  # a broken install: name the package file, not the user's path
            raise PushAccessError(f"the installed dpo_studio lacks its package file {rel}: reinstall dpo-studio")
        (stage / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(package / rel, stage / dest)
    stage_tree(package, stage / "dpo_studio")
    (stage / "app_config.yaml").write_text(yaml.safe_dump({"families": config}, sort_keys=False), encoding="utf-8")
    (stage / "README.md").write_text(str(card), encoding="utf-8")


def _set_up_votes(api: HfApi, space_id: str, votes_repo: str) -> None:
    """The votes dataset exists (private: it holds visitors' prompts) and the Space knows its name; idempotent."""
    api.create_repo(votes_repo, repo_type="dataset", private=True, exist_ok=True)
    current = api.get_space_variables(space_id).get(VOTES_REPO_ENV)
    if current is None or current.value != votes_repo:  # setting a variable restarts the Space: only on change
        api.add_space_variable(space_id, VOTES_REPO_ENV, votes_repo,
                               description="Hub dataset the arena's votes are committed to (dpo_studio)")


def _deployer_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PushAccessError("--token-secret: no token to copy (set HF_TOKEN or run `hf auth login`)")
    return token


def _set_hardware(api: HfApi, space_id: str, hardware: str) -> None:
    """Ask the Hub for `hardware` when the Space runs on (or has asked for) something else; idempotent (a change of
    hardware restarts the Space, so it is only requested on change)."""
    runtime = api.get_space_runtime(space_id)
    if hardware not in (runtime.requested_hardware, runtime.hardware):
        api.request_space_hardware(space_id, hardware)


def deploy_space(space_id: str, from_dir: Path, target: PushTarget, package: Path = PACKAGE_DIR,
                 api: HfApi | None = None, *, votes: bool = True, votes_repo: str | None = None,
                 token_secret: bool = False, hardware: str = CPU_HARDWARE, **retry: Any) -> SpaceDeployment:
    """Create/update a Gradio Space comparing the pushed repos of `from_dir`'s families, with its votes dataset.

    Args:
        package: the dpo_studio package folder whose files the Space gets (default: this installed package).
        hardware: the Space hardware (`SpaceHardware` value): its requirements, the card's line, the Hub request.
        votes: create the votes dataset and tell the Space its name (False: the Space keeps votes on its disk).
        votes_repo: the votes dataset (default `default_votes_repo(space_id)`).
        token_secret: copy the deployer's token into the Space secret HF_TOKEN (gives the Space that token).
        retry: `upload_repo`'s attempts / base_delay.
    """
    api = api or HfApi()
    config = _family_config(from_dir, target)
    votes_repo = (votes_repo or default_votes_repo(space_id)) if votes else None
    try:
        with tempfile.TemporaryDirectory(prefix="dpo-studio-space-") as tmp:
            _stage(Path(tmp), package, config, space_card(space_id, config, votes_repo, hardware), hardware)
            commit = upload_repo(api, space_id, Path(tmp), replace(target, revision=None), repo_type="space",
                                 space_sdk="gradio", space_hardware=hardware, **retry)
        _set_hardware(api, space_id, hardware)
        if votes_repo:
            _set_up_votes(api, space_id, votes_repo)
        if token_secret:
            api.add_space_secret(space_id, TOKEN_SECRET, api.token or _deployer_token(),
                                 description="the Space's Hub login (copied by dpo-studio space)")
    except (HfHubHTTPError, httpx2.HTTPError) as err:
        raise PublishError(f"deploying the Space {space_id} failed ({type(err).__name__}: "
                           f"{_first_line(err)}); run the same command again to finish") from err
    return SpaceDeployment(space_id, commit, votes_repo, token_secret, hardware)


def _is_repo_id(repo_id: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return repo_id.count("/") == 1


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpo-studio space",
                                     description="Deploy the base-vs-DPO comparison app as a Gradio Space.")
    parser.add_argument("--space-id", required=True, help="Space repo id, e.g. me/dpo-compare.")
    parser.add_argument("--from", dest="from_dir", required=True, type=Path, help="Output dir of train_dpo.py.")
    parser.add_argument("--hub-namespace", help="Namespace the models were pushed to (default: the token's user).")
    parser.add_argument("--hub-repo-ids", help="Explicit model repo ids, as for train_dpo.py.")
    parser.add_argument("--revision", help="Branch the models were pushed to (written to app_config.yaml).")
    parser.add_argument("--private", action="store_true", help="Create a private Space.")
    parser.add_argument("--hardware", default=CPU_HARDWARE, choices=HARDWARE, metavar="HARDWARE",
                        help="Space hardware: cpu-basic (default; torch's CPU wheels) or zero-a10g (ZeroGPU: CUDA "
                             "torch, GPU work inside spaces.GPU), or any other Hub hardware name.")
    votes = parser.add_mutually_exclusive_group()
    votes.add_argument("--votes-repo", help="Dataset repo the Space commits its votes to (created private if "
                                            "missing; default: <space id>-votes)")
    votes.add_argument("--no-votes-repo", action="store_true",
                       help="No votes dataset: the Space keeps votes on its disk (lost on restart)")
    parser.add_argument("--token-secret", action="store_true",
                        help=f"Copy YOUR token into the Space secret {TOKEN_SECRET}: this gives the Space (and "
                             "whoever can change its code) your token. Default: set a write token there yourself")
    return parser


def report(done: SpaceDeployment) -> list[str]:
    """The lines printed after a deploy: the Space, its votes dataset, where its token comes from."""
    url = f"{constants.ENDPOINT}/spaces/{done.space_id}"
    lines = [f"{url} (commit {done.commit[:10]}, hardware {done.hardware})"]
    if done.votes_repo is None:
        lines.append("Votes: kept on the Space's disk (lost on restart): no votes dataset (--no-votes-repo)")
    else:
        lines.append(f"Votes: dataset {done.votes_repo} (private); the Space reads its name from the variable "
                     f"{VOTES_REPO_ENV}")
    if done.token_secret:
        return [*lines, f"Token: your token was copied into the Space secret {TOKEN_SECRET}"]
    if done.votes_repo is None:
        return lines
    return [*lines, f"Token: set the Space secret {TOKEN_SECRET} (a token that can write {done.votes_repo}) in "
                    f"{url}/settings; the app needs it to start, and it is never typed into the page"]


def main(argv: list[str] | None = None) -> int:
    """`dpo-studio space --space-id NS/NAME --from DIR [...]` (a leading `space` is accepted, as before)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv[1:] if argv[:1] == ["space"] else argv)
    for flag, repo_id in (("--space-id", args.space_id), ("--votes-repo", args.votes_repo)):
        if repo_id is not None and not _is_repo_id(repo_id):
            parser.error(f"{flag} {repo_id!r}: expected a Hub repo id NAMESPACE/NAME")
    from dpo_studio.logs import setup_logging

    setup_logging()
    try:
        target = check_push_access(PushTarget(args.hub_namespace, parse_repo_ids(args.hub_repo_ids), args.private,
                                              args.revision, commit_message="Deploy the dpo_studio comparison app"))
        done = deploy_space(args.space_id, args.from_dir, target, votes=not args.no_votes_repo,
                            votes_repo=args.votes_repo, token_secret=args.token_secret, hardware=args.hardware)
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print("\n".join(report(done)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
