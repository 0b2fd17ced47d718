"""bitsandbytes' import-time warning about its optional CPU kernel, said once in our words and only when it matters.

On CPUs with AVX512-BF16, importing bitsandbytes (peft imports it whenever it is installed, quantizing or not) tries
to fetch a faster 4-bit CPU matmul from the Hub through the `kernels` package and, without it, logs
"Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'" in every process. The
library's fallback is its own kernel, which is correct, so a process that never quantizes has nothing to learn from
it: the filter below turns the record into one debug line of ours, and `explain_missing_kernel` says it at info level
when a 4-bit model is loaded on the CPU. Where `kernels` is installed (transformers 5 requires it) and the Hub is
offline (`HF_HUB_OFFLINE=1`, as in the offline demo), `kernels` first warns that it skips the publisher check of that
repo: the same filter drops that record too (bitsandbytes' own failure line follows and is the one explained).
"""

from __future__ import annotations

import logging

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNELS_HUB_LOGGER = "kernels._internals.hf_hub"
KERNEL_WARNING_PREFIX = "Failed to load CPU gemm_4bit_forward from kernels-community"
BNB_KERNEL_REPO = "kernels-community/quantization-bitsandbytes"
logger = logging.getLogger(__name__)


class MissingKernelFilter(logging.Filter):
    """Drops bitsandbytes' kernel warning, keeping why it failed for `explain_missing_kernel`."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == KERNELS_HUB_LOGGER:  # `kernels` about bitsandbytes' kernel repo: part of the same story
            if BNB_KERNEL_REPO not in record.getMessage():
                return True
            logger.debug("kernels: %s", record.getMessage())
            return False
        if not str(record.msg).startswith(KERNEL_WARNING_PREFIX):
            return True
        self.reason = str(record.args[0]) if record.args else "unknown reason"
        logger.debug(self.message())
        return False

    def message(self) -> str:
        return (f"bitsandbytes: the faster 4-bit CPU kernel (Hub repo kernels-community/quantization-bitsandbytes) "
                f"needs the `kernels` package and the Hub ({self.reason}); using bitsandbytes' own 4-bit kernel")


MISSING_KERNEL = MissingKernelFilter()


def install_filter() -> None:
    """Attach the filter to bitsandbytes' CPU-backend logger and kernels' Hub logger (idempotent); must run before
    bitsandbytes is imported."""
    for name in (BNB_CPU_LOGGER, KERNELS_HUB_LOGGER):
        target = logging.getLogger(name)
        if MISSING_KERNEL not in target.filters:
            target.addFilter(MISSING_KERNEL)


def explain_missing_kernel() -> None:
    """At a 4-bit load on the CPU: our one line, if bitsandbytes could not load its faster kernel."""
    if MISSING_KERNEL.reason is not None:
        logger.info(MISSING_KERNEL.message())
