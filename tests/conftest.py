import os
from pathlib import Path

import pytest
import torch

# Tests never reach the Hub; the local_hub fixture lifts this for the tests that talk to the local server.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The app's decode product is chosen by timing at load (inference/decode_kernel.py): on a busy machine two processes
# may choose differently, and sampled tokens then differ in the last bits. Tests (and the processes they start) use
# one product; tests/test_decode_kernel.py covers the timed choice and both forced ones.
os.environ.setdefault("DPO_STUDIO_DECODE_KERNEL", "linear")
# tests/ has no __init__.py: pytest's default "prepend" import mode puts this folder on sys.path, so the tests' own
# helpers import by name (`hub_server`, `tiny_models`); dpo_studio itself is the installed package (`pip install -e .`).
from fake_cuda import fake_cuda  # noqa: E402,F401  (pytest fixture: GPUs of a chosen capability, at torch.cuda's level)
from hub_server import local_hub  # noqa: E402,F401  (pytest fixture: local Hub-compatible server)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box the thread pool's waiting dominates
    (seen: 50x slower forwards); modules opt in with `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny GPT-2 and T5 families in train_dpo.py's output layout (tests/tiny_models.py), built once, read only."""
    from tiny_models import build_models_dir

    root = tmp_path_factory.mktemp("models")
    build_models_dir(root)
    return root
