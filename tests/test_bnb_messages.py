"""bitsandbytes' import-time `kernels` warning: one line of ours, at debug unless a 4-bit model is loaded on the CPU.

The warning is only logged on CPUs with AVX512-BF16; the subprocess forces that branch (as on such a CPU) and makes
the `kernels` import fail (as where it is not installed), so the test runs the same on every host."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import torch
from transformers import BitsAndBytesConfig, GPT2Config, GPT2LMHeadModel

from dpo_studio import bnb_messages
from dpo_studio.models import families

FORCED_IMPORT = textwrap.dedent("""
    import importlib.abc, importlib.machinery, logging, sys
    {kernels}

    class ForceAvx512Bf16(importlib.abc.MetaPathFinder):
        # after bitsandbytes.functional loads, its CPU probe answers yes, so the CPU backend tries the Hub kernel
        def find_spec(self, name, path, target=None):
            if name != "bitsandbytes.functional":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            run = spec.loader.exec_module
            def exec_module(module):
                run(module)
                module.has_avx512bf16 = lambda: True
            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, ForceAvx512Bf16())
    {before}
    import bitsandbytes
    {after}
""")


WITHOUT_KERNELS = 'sys.modules["kernels"] = None  # `from kernels import get_kernel` fails, as without the package'
# `kernels` installed (transformers 5 requires it) with the Hub offline: it warns that it skips the publisher check,
# then finds no cached kernel (both messages as kernels 0.19 words them).
OFFLINE_KERNELS = textwrap.dedent("""
    import types
    fake = types.ModuleType("kernels")
    def get_kernel(repo_id, version=None):
        logging.getLogger("kernels._internals.hf_hub").warning(
            f"Skipping publisher trust check for '{repo_id}' because Hugging Face Hub is in offline mode.")
        raise FileNotFoundError(f"Version 1 of '{repo_id}' is not available in the local cache")
    fake.get_kernel = get_kernel
    sys.modules["kernels"] = fake
""")


def run_forced(before: str, after: str = "", kernels: str = WITHOUT_KERNELS) -> str:
    code = FORCED_IMPORT.format(before=before, after=after, kernels=kernels)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


def test_without_our_filter_bitsandbytes_warns_at_import():
    """The forced branch really produces the library's warning (so the next test can fail)."""
    err = run_forced("logging.basicConfig(level=logging.INFO)")
    assert "Failed to load CPU gemm_4bit_forward from kernels-community" in err


def test_importing_through_dpo_studio_is_quiet_and_a_4bit_load_explains_it_once():
    setup = "import dpo_studio\nfrom dpo_studio.logs import setup_logging\nsetup_logging('info')"
    quiet = run_forced(setup)
    assert "gemm_4bit_forward" not in quiet and "kernels" not in quiet
    explained = run_forced(setup, "from dpo_studio.bnb_messages import explain_missing_kernel\nexplain_missing_kernel()")
    ours = [line for line in explained.splitlines() if "kernels" in line]
    assert len(ours) == 1
    assert "needs the `kernels` package and the Hub" in ours[0] and "using bitsandbytes' own 4-bit kernel" in ours[0]
    assert "Failed to load" not in explained
    debug = run_forced(setup.replace("'info'", "'debug'"))
    assert sum("needs the `kernels` package" in line for line in debug.splitlines()) == 1


def test_a_4bit_cpu_load_says_it_when_the_kernel_was_missing(tmp_path, caplog, monkeypatch):
    GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=1, n_head=2, n_positions=32)).save_pretrained(tmp_path)
    arch = families.load_architecture(str(tmp_path))
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    monkeypatch.setattr(bnb_messages.MISSING_KERNEL, "reason", "No module named 'kernels'")
    with caplog.at_level(logging.INFO, logger="dpo_studio"):
        families.load_model(str(tmp_path), arch, quantization_config=quant)
    lines = [r.getMessage() for r in caplog.records if "kernels" in r.getMessage()]
    assert lines == [bnb_messages.MISSING_KERNEL.message()]
    monkeypatch.setattr(bnb_messages.MISSING_KERNEL, "reason", None)  # kernel loaded (or never tried): nothing said
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dpo_studio"):
        families.load_model(str(tmp_path), arch, quantization_config=quant)
    assert not [r for r in caplog.records if "kernels" in r.getMessage()]


def test_offline_with_kernels_installed_is_quiet_too():
    loud = run_forced("logging.basicConfig(level=logging.INFO)", kernels=OFFLINE_KERNELS)
    assert "Skipping publisher trust check" in loud and "Failed to load CPU gemm_4bit_forward" in loud
    setup = "import dpo_studio\nfrom dpo_studio.logs import setup_logging\nsetup_logging('info')"
    quiet = run_forced(setup, kernels=OFFLINE_KERNELS)
    assert "kernels" not in quiet and "gemm_4bit_forward" not in quiet
    explained = run_forced(setup, "from dpo_studio.bnb_messages import explain_missing_kernel\nexplain_missing_kernel()",
                           kernels=OFFLINE_KERNELS)
    ours = [line for line in explained.splitlines() if "kernels" in line]
    assert len(ours) == 1 and "not available in the local cache" in ours[0]
