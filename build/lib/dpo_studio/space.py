"""The comparison app as a Gradio Space: `app.py`, the `dpo_studio/` package, `requirements.txt` (from
`requirements-space.txt`: inference only), `examples/prompts.txt`, `app_config.yaml` (the pushed repos, per family)
and a README rendered from `model_cards/space.md`.

`python -m dpo_studio.publish space --space-id NS/dpo-compare --from DIR [--hub-namespace NS] [--hub-repo-ids ...]
[--revision BRANCH] [--private]` (or `python -m dpo_studio.space ...`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx2  # huggingface_hub 2.x's HTTP client
import yaml
from huggingface_hub import HfApi, SpaceCard, SpaceCardData, constants
from huggingface_hub.errors import HfHubHTTPError

from .cards import PROJECT_ROOT, TEMPLATES
from .licenses import PROJECT_LICENSE
from .names import family_label
from .publish import (
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

SPACE_REQUIREMENTS = "requirements-space.txt"  # inference-only: uploaded as the Space's requirements.txt


def deploy_space(space_id: str, from_dir: Path, target: PushTarget, project_root: Path = PROJECT_ROOT,
                 api: HfApi | None = None, **retry: Any) -> str:
    """Create/update a Gradio Space comparing the pushed repos of `from_dir`'s families; returns the head commit."""
    api = api or HfApi()
    config: dict[str, dict[str, str]] = {}
    for family_dir in finished_families(from_dir):
        metrics = json.loads((family_dir / "metrics.json").read_text(encoding="utf-8"))
        ids = repo_ids_for(family_dir, metrics, target)
        config[metrics["family"]] = {"label": family_label(metrics["family"]), "base": ids.base,
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
        stage_tree(project_root / "dpo_studio", stage / "dpo_studio")
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
    parser = argparse.ArgumentParser(prog="python -m dpo_studio.publish", description="Deploy the base-vs-DPO comparison app as a Gradio Space.")
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
