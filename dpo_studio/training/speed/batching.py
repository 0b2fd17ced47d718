"""Batches with less padding: length-grouped pair order (opt-in sampler) and in-batch length buckets (exact)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

# An extra bucket costs a forward/backward's fixed overhead (kernel launches, Python); splitting is worth it only
# when it saves more padded tokens than this share of the batch's real tokens.
BUCKET_OVERHEAD_SHARE = 0.04
MAX_BUCKETS = 4
# Pairs sorted together by the sampler: batch_size * MEGABATCH_BATCHES (as transformers' LengthGroupedSampler's
# megabatches): large enough to find similar lengths, small enough to keep batches random across epochs.
MEGABATCH_BATCHES = 16


def pair_lengths(dataset) -> list[int]:
    """Padded length a pair needs: prompt + the longer completion (the collator pads chosen and rejected together)."""
    prompts, chosen, rejected = dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]
    return [len(p) + max(len(c), len(r)) for p, c, r in zip(prompts, chosen, rejected)]


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, megabatch_batches: int = MEGABATCH_BATCHES
) -> list[int]:
    """A permutation of `range(len(lengths))` whose consecutive `batch_size` blocks hold similar lengths.

    Random permutation -> megabatches of `batch_size * megabatch_batches` -> each sorted by length (stable, so ties
    stay random) -> cut into batches -> batches shuffled. Hand-written because transformers' `LengthGroupedSampler`
    keeps the batches of a megabatch in descending length order (every epoch the same long-to-short curriculum).
    A last partial batch stays last so that full batches keep full size.
    """
    n = len(lengths)
    perm = torch.randperm(n, generator=generator).tolist()
    mega = max(1, batch_size * megabatch_batches)
    batches: list[list[int]] = []
    for start in range(0, n, mega):
        chunk = sorted(perm[start : start + mega], key=lambda i: -lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    tail = [b for b in batches if len(b) < batch_size]
    full = [b for b in batches if len(b) == batch_size]
    order = torch.randperm(len(full), generator=generator).tolist()
    return [i for k in order for i in full[k]] + [i for b in tail for i in b]


class LengthGroupedPairSampler(Sampler[int]):
    """Length-grouped order of preference pairs; a new seeded permutation each epoch (`set_epoch` or per iteration)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch: int | None = None
        self._iterations = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        epoch = self._iterations if self.epoch is None else self.epoch
        self._iterations += 1
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return iter(length_grouped_indices(self.lengths, self.batch_size, generator))


def bucketed_rows(
    lengths: Sequence[int], overhead_share: float = BUCKET_OVERHEAD_SHARE, max_buckets: int = MAX_BUCKETS
) -> list[tuple[list[int], int]]:
    """Split rows into at most `max_buckets` groups of similar length, minimising padded tokens + per-group overhead.

    Returns `[(row indices, bucket length), ...]`. Exact dynamic programme over rows sorted by length (groups are
    contiguous in that order); each extra group costs `overhead_share * sum(lengths)` tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    ls = [int(lengths[i]) for i in order]
    n = len(ls)
    overhead = overhead_share * sum(ls)
    inf = float("inf")
    # best[k][j]: cost of splitting the first j sorted rows into k groups
    best = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for k in range(1, max_buckets + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                cost = best[k - 1][i] + (j - i) * ls[i] + overhead
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    k = min(range(1, max_buckets + 1), key=lambda kk: best[kk][n])
    groups, j = [], n
    while k > 0:
        i = cut[k][j]
        groups.append(([order[r] for r in range(i, j)], ls[i]))
        j, k = i, k - 1
    return groups[::-1]


def _right_padded_lengths(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Row lengths when every row is ones then zeros (right padding), else None."""
    if attention_mask.dim() != 2:
        return None
    lengths = attention_mask.sum(dim=1)
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    if not torch.equal(attention_mask.bool(), positions.unsqueeze(0) < lengths.unsqueeze(1)):
        return None
    return lengths


def _pad_to(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad dim 1 of a [rows, length, ...] tensor (positions past each row's end are never read)."""
    missing = length - tensor.size(1)
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 2) + [0, missing]
    return F.pad(tensor, pad)


def run_buckets(
    mask: torch.Tensor, total_length: int, run: Callable[[torch.Tensor, int], torch.Tensor]
) -> torch.Tensor | None:
    """Call `run(row_index, bucket_length)` per length bucket of the rows of the right-padded 2-d `mask` and
    reassemble `[rows, total_length, ...]` in row order; None (nothing run) when `mask` is not right-padded."""
    lengths = _right_padded_lengths(mask)
    if lengths is None:
        return None
    groups = bucketed_rows(lengths.tolist())
    device = lengths.device
    outputs, order = [], []
    for rows, length in groups:
        index = torch.tensor(rows, device=device)
        outputs.append(_pad_to(run(index, max(int(length), 1)), total_length))
        order.extend(rows)
    stacked = torch.cat(outputs, dim=0) if len(outputs) > 1 else outputs[0]
    inverse = torch.empty(len(order), dtype=torch.long, device=device)
    inverse[torch.tensor(order, device=device)] = torch.arange(len(order), device=device)
    return stacked.index_select(0, inverse)


def _set_keys(kwargs: dict[str, Any]) -> set[str]:
    """Keyword arguments that carry a value: PEFT's forward passes `inputs_embeds=None`, `output_attentions=None`,
    ... explicitly, which mean the same as leaving them out."""
    return {key for key, value in kwargs.items() if value is not None}
