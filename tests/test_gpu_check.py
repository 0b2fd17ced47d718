"""bench/gpu_check.py, the acceptance run for a CUDA GPU, in the parts a CPU host can run: it refuses cleanly without a
GPU, its own expectation of auto precision (from the capability alone) agrees with the product's rule on every
capability users have (GPUs faked at torch.cuda's level), and its merged == base + adapter check passes on real
pipeline outputs. The whole run needs a GPU; none has been lent yet (docs/performance.md)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_cuda import CARDS
from test_publish import outputs  # noqa: F401  (fixture: finished tiny demo outputs of both families)

REPO = Path(__file__).resolve().parents[1]


def gpu_check():
    # bench/common.py quiets a bench process through its environment (TRANSFORMERS_VERBOSITY=error, TQDM_DISABLE):
    # restored here, or every later test's subprocess would inherit it (tests/test_logs.py saw no progress bars)
    environ = dict(os.environ)
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "bench"))
        os.environ.clear()
        os.environ.update(environ)
    return module


def test_without_a_gpu_it_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("gpu_check: no CUDA device (torch.cuda.is_available() is False); this acceptance "
                                   "run needs one GPU")


@pytest.mark.parametrize("capability", sorted(CARDS), ids=lambda c: f"sm{c[0]}{c[1]}")
def test_its_precision_expectation_agrees_with_the_rule(fake_cuda, capability):
    fake_cuda(capability)
    bench = gpu_check()
    checks = bench.Checks()
    expected = bench.expected_precision()
    bench.check_rule(checks, expected)
    assert checks.failed == 0, checks.rows
    assert expected == ({"gpt2": "bf16", "t5": "bf16"} if capability >= (8, 0) else {"gpt2": "fp16", "t5": "fp32"})


def test_merged_equals_base_plus_adapter_on_pipeline_outputs(outputs, tmp_path):  # noqa: F811
    (tmp_path / "lora").symlink_to(outputs)
    bench = gpu_check()
    checks = bench.Checks()
    bench.check_merged(checks, tmp_path)
    assert [row[:2] for row in checks.rows] == [["lora gpt2 merged == base + adapter", "ok"],
                                                ["lora t5 merged == base + adapter", "ok"]], checks.rows
