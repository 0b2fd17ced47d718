import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # make tests/hub_server.py importable as `hub_server`

from hub_server import local_hub  # noqa: E402,F401  (pytest fixture: local Hub-compatible server)
