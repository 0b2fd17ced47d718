"""LoRA DPO on GPT-2 and T5 with TRL, with outputs ready for the Hub and the comparison app.

# Offline demo (no network): small GPT-2/T5-architecture models, tokenizer and warm start built locally
```bash
python train_dpo.py --config examples/demo.yaml --output-dir runs/demo
```

# Real models and data from the Hub, then publish
```bash
python train_dpo.py --models gpt2,t5 --dataset HumanLLMs/Human-Like-DPO-Dataset \
    --output-dir runs/human-like --num-train-epochs 1 --learning-rate 5e-5 --beta 0.1 \
    --push --hub-namespace <your-namespace>
```

# Publish outputs that already exist
```bash
python train_dpo.py --push-only runs/human-like --hub-namespace <your-namespace>
```

Every option (ours, TRL's DPOConfig, TRL's ModelConfig for LoRA) is listed by `--help`; a YAML file given with
`--config` sets defaults that flags override. `--log-level debug` (or LOG_LEVEL=debug) also shows HTTP requests and
library deprecation warnings.
"""

import sys


def main(argv: list[str] | None = None) -> int:
    from dpo_studio.cli.train import run_cli

    return run_cli(argv)


if __name__ == "__main__":
    sys.exit(main())
