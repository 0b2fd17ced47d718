"""CPU process settings for training: intra-op threads (one per physical core) and glibc malloc reuse, applied once
at a command's start through `tune_host` (they are process-wide, so no trainer or model applies them)."""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

import torch


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads share one core's FMA units, so they don't help GEMMs)."""
    try:
        available = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        available = set(range(os.cpu_count() or 1))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            blocks = handle.read().split("\n\n")
    except OSError:
        return max(1, len(available))
    cores = set()
    for block in blocks:
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "processor" in fields and int(fields["processor"]) in available:
            cores.add((fields.get("physical id", "0"), fields.get("core id", fields["processor"])))
    return max(1, len(cores) or len(available))


def configure_threads() -> int:
    """One intra-op thread per physical core, unless the user chose (`OMP_NUM_THREADS`); returns the thread count."""
    user = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(user) if user.isdigit() and int(user) > 0 else physical_cores()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def keep_freed_memory_for_reuse() -> bool:
    """Have glibc's malloc reuse freed memory instead of handing large blocks back to the kernel; returns whether set.

    Why: PyTorch has no caching allocator on CPU, and glibc serves blocks above its mmap threshold (128 KiB to 32 MiB)
    with fresh mmap()s. A training step allocates and frees hundreds of activation tensors of that size, so every
    elementwise op first page-faults its output into existence: in a GPT-2-small LoRA step that made `mul` 8x slower
    than on reused memory. With mmap off and trimming off (`mallopt`, the runtime form of `MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=...`), freed blocks stay in the heap and are reused; a training step got ~10% faster. The
    cost: the process keeps its peak heap until it exits, which a training run does anyway. Off with
    DPO_STUDIO_MALLOC_TUNING=0; no-op off glibc.
    """
    if os.environ.get("DPO_STUDIO_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


@dataclass(frozen=True)
class HostTuning:
    """What `tune_host` set for this process: the intra-op thread count (None: left alone) and whether glibc keeps
    freed memory for reuse."""

    threads: int | None
    malloc_reuse: bool


def tune_host(device: str) -> HostTuning:
    """The process-wide CPU tuning of a training command, called once at its start (`cli.train`), never by a trainer:
    threads (`configure_threads`) and malloc reuse (`keep_freed_memory_for_reuse`), on CPU runs only; `device` is
    the run's device as `config.precision` chose it ("cpu" or "cuda"). A CUDA run leaves both alone. Opt-outs:
    OMP_NUM_THREADS (threads) and DPO_STUDIO_MALLOC_TUNING=0 (malloc)."""
    if device != "cpu":
        return HostTuning(threads=None, malloc_reuse=False)
    return HostTuning(threads=configure_threads(), malloc_reuse=keep_freed_memory_for_reuse())
