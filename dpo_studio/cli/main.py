"""The `dpo-studio` console command: one verb per job, each the same flags as the script it stands for.

    dpo-studio train ...        = python train_dpo.py ...
    dpo-studio check-data ...   = python train_dpo.py --check-data ...
    dpo-studio evaluate ...     = python train_dpo.py --evaluate ...
    dpo-studio push DIR ...     = python train_dpo.py --push-only DIR ...
    dpo-studio app ...          = python app.py ...
    dpo-studio space ...        = python -m dpo_studio.hub.space ...
    dpo-studio examples         prints the folder of the bundled examples (demo.yaml, app_config.yaml, data/)
"""

from __future__ import annotations

import sys
from importlib import resources

from dpo_studio.bnb_messages import install_filter

VERBS = {
    "train": "train DPO (LoRA/QLoRA/full) and write outputs (= python train_dpo.py; --help lists every option)",
    "check-data": "validate the data and measure token lengths, write nothing (= train_dpo.py --check-data)",
    "evaluate": "generation evidence of an existing base/DPO pair (= train_dpo.py --evaluate)",
    "push": "publish outputs that already exist: dpo-studio push DIR --hub-namespace NS (= --push-only DIR)",
    "app": "serve the comparison app (= python app.py)",
    "space": "deploy the app as a Hugging Face Space (= python -m dpo_studio.hub.space)",
    "examples": "print the folder of the bundled examples; e.g. dpo-studio train --config \"$(dpo-studio examples)/demo.yaml\"",
}


def usage() -> str:
    lines = ["usage: dpo-studio VERB [options]   (dpo-studio VERB --help for its options)", "", "verbs:"]
    lines += [f"  {verb:<11} {text}" for verb, text in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch `dpo-studio VERB ARGS` to the entry point the verb stands for; an exit code."""
    install_filter()  # before any verb imports peft and with it bitsandbytes: see bnb_messages.py
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    verb, rest = args[0], args[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}; one of: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    if verb == "examples":
        print(resources.files("dpo_studio") / "examples")
        return 0
    if verb == "app":
        from dpo_studio.ui import main as app_main

        app_main(rest)
        return 0
    if verb == "space":
        from dpo_studio.hub.space import main as space_main

        return space_main(rest)
    from dpo_studio.cli.train import run_cli

    prefix = {"train": [], "check-data": ["--check-data"], "evaluate": ["--evaluate"], "push": []}[verb]
    if verb == "push" and rest and not rest[0].startswith("-"):
        prefix = ["--push-only", rest.pop(0)]
    return run_cli(prefix + rest)
