"""`python -m dpo_studio VERB ...` = `dpo-studio VERB ...` (see dpo_studio/cli/main.py)."""

import sys

from dpo_studio.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
