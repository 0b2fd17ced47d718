import os
import sys
from pathlib import Path

# Tests never reach the Hub; the local_hub fixture lifts this for the tests that talk to the local server.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # make tests/hub_server.py importable as `hub_server`

from hub_server import local_hub  # noqa: E402,F401  (pytest fixture: local Hub-compatible server)
