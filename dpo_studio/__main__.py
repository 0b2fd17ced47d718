"""`python -m dpo_studio VERB ...` = `dpo-studio VERB ...` (see dpo_studio/commands.py)."""

import sys

from dpo_studio.commands import main

if __name__ == "__main__":
    sys.exit(main())
