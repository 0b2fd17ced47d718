"""Shared pieces of the benchmarks: chat-length preference data, models built from config, timing, tables.

Data: the bundled demo pairs (examples/data/train.jsonl) stretched to the length spread of real chat replies.
Real preference sets such as HumanLLMs/Human-Like-DPO-Dataset have short prompts and long, widely spread replies
(chosen ~100-150 words, rejected longer and more formal); here prompt/chosen/rejected token lengths are drawn from
log-normal distributions with those medians (scaled by `length_scale`), and the text is made of the demo's own
sentences of the matching style, so the tokenizer sees real words.
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]  # benches import the installed package (`pip install -e .`)

import torch  # noqa: E402

from dpo_studio.data.reading import PreferencePair  # noqa: E402

DEMO_DATA = ROOT / "examples" / "data" / "train.jsonl"
# Median tokens and log-normal sigma of chat preference data (prompt, chosen reply, rejected reply).
CHAT_LENGTHS = {"prompt": (20, 0.45), "chosen": (130, 0.55), "rejected": (190, 0.5)}


@dataclass(frozen=True)
class Preset:
    name: str
    pairs: int
    length_scale: float
    gpt2: dict[str, int]
    t5: dict[str, int]


PRESETS = {
    # GPT-2-small (12 x 768) and T5-small (6+6 x 512) architectures with an 8k vocabulary (the issue allows a smaller
    # one) at half chat-reply lengths: the default of train_throughput (about 15 minutes on 2 idle cores).
    "arch": Preset("arch", pairs=24, length_scale=0.5,
                   gpt2=dict(n_layer=12, n_embd=768, n_head=12, vocab_size=8192),
                   t5=dict(num_layers=6, d_model=512, d_ff=2048, num_heads=8, d_kv=64, vocab_size=8192)),
    # Small shapes: each script in a few minutes on 2 busy CPU cores (a quick check, not the reported figures).
    "small": Preset("small", pairs=24, length_scale=0.35,
                    gpt2=dict(n_layer=4, n_embd=256, n_head=4, vocab_size=4096),
                    t5=dict(num_layers=3, d_model=256, d_ff=1024, num_heads=4, d_kv=64, vocab_size=4096)),
    # GPT-2-small (124M) and T5-small (60M) shapes with their real vocabulary sizes and full chat lengths.
    "full": Preset("full", pairs=64, length_scale=1.0,
                   gpt2=dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257),
                   t5=dict(num_layers=6, d_model=512, d_ff=2048, num_heads=8, d_kv=64, vocab_size=32128)),
}


def _sentences(field: str) -> list[str]:
    rows = [json.loads(line) for line in DEMO_DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for row in rows:
        text = row[field] if isinstance(row[field], str) else row[field][-1]["content"]
        out.extend(s.strip() + "." for s in text.replace("?", ".").replace("!", ".").split(".") if s.strip())
    return out


def make_pairs(n: int, length_scale: float, seed: int = 0) -> list[PreferencePair]:
    """`n` pairs with chat-like length spread (token counts approximated as 1.3 x words)."""
    rng = random.Random(seed)
    pools = {"prompt": _sentences("prompt"), "chosen": _sentences("chosen"), "rejected": _sentences("rejected")}

    def text(field: str) -> str:
        median, sigma = CHAT_LENGTHS[field]
        words = max(3, int(rng.lognormvariate(math.log(median * length_scale / 1.3), sigma)))
        out: list[str] = []
        while len(out) < words:
            out.extend(rng.choice(pools[field]).split())
        return " ".join(out[:words])

    return [PreferencePair(messages=(("user", text("prompt")),), chosen=text("chosen"), rejected=text("rejected"))
            for _ in range(n)]


def tokenizer_for(pairs: list[PreferencePair], encoder_decoder: bool, vocab: int = 4096):
    from dpo_studio.models.demo import train_tokenizer

    texts = [t for p in pairs for t in (p.messages[-1][1], p.chosen, p.rejected)] + _sentences("chosen")
    return train_tokenizer(texts, vocab, encoder_decoder)


def build_model(kind: str, shape: dict[str, int], tokenizer, seed: int = 0):
    """Random-init GPT-2 or T5 of the given shape (vocab_size >= the tokenizer's; extra rows are never used)."""
    from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    vocab = max(shape["vocab_size"], len(tokenizer))
    if kind == "gpt2":
        cfg = GPT2Config(**{**shape, "vocab_size": vocab}, n_positions=1024, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        return GPT2LMHeadModel(cfg)
    cfg = T5Config(**{**shape, "vocab_size": vocab}, num_decoder_layers=shape["num_layers"], feed_forward_proj="relu",
                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                   decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    return T5ForConditionalGeneration(cfg)


def matmul_peak_gflops(seconds: float = 2.0, n: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    """Best GEMM rate (GFLOP/s) of torch.mm on `n x n` matrices of `dtype` with the current thread setting."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    c = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=c)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.mm(a, b, out=c)
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


# `--precision` of the benches -> the product's `--bf16` (None = auto: the product's own rule, `precision.py`).
PRECISIONS = {"auto": None, "bf16": True, "fp32": False}


def product_args(precision: str = "auto", **overrides: Any):
    """The product's training arguments (`config.DPOTrainingArguments` over `config.PRODUCT_DEFAULTS`), as
    `train_dpo.py` builds them: the product resolves precision and sets `use_cpu` itself."""
    from dpo_studio.config.arguments import PRODUCT_DEFAULTS, DPOTrainingArguments

    return DPOTrainingArguments(**{**PRODUCT_DEFAULTS, **overrides, "bf16": PRECISIONS[precision]})


def ran_precision(trainer) -> str:
    """The precision a trainer trained in (after the product's resolution), in words."""
    from dpo_studio.config.precision import precision_of

    return precision_of(trainer.args).describe()


def compile_setting(trainer) -> str:
    """Whether a trainer ran through torch.compile, and why (the product's record; plain TRL trainers: their flag)."""
    decision = getattr(trainer, "compile_decision", None)
    if decision is None:
        return f"{bool(trainer.args.torch_compile)} (torch_compile as given)"
    return f"{decision.enabled} ({decision.requested}: {decision.reason})"


class StepTimer:
    """Trainer callback: the first optimizer step (it includes compiling, when compiled) apart from the steady ones."""

    def __init__(self):
        from transformers import TrainerCallback

        self.times: list[float] = []
        self._start = 0.0
        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.times.append(time.perf_counter() - timer._start)

        self.callback = _Callback()

    def describe(self) -> str:
        if not self.times:
            return "no steps"
        rest = sorted(self.times[1:])
        steady = rest[len(rest) // 2] if rest else float("nan")
        return f"first step {self.times[0]:.2f} s (incl. compile if on), steady median {steady:.2f} s/step"


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not `getrusage().ru_maxrss`: Linux keeps that across `execve`, so a child
    started by a big parent would report the parent's peak."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-markdown table (readable in a terminal too)."""
    cells = [[str(h) for h in headers]] + [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def machine() -> str:
    from dpo_studio.config.precision import cpu_has_native_bf16
    from dpo_studio.training.speed import physical_cores

    model = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from dpo_studio.config.precision import cpu_flags

    flags = cpu_flags()
    shown = ", ".join(f"{f}={'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    return (f"{model}, {physical_cores()} physical cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
            f"native bf16: {'yes' if cpu_has_native_bf16() else 'no'} ({shown})")


def load_average() -> str:
    """`uptime`'s 1/5/15-minute load averages: a busy machine slows every variant, and not equally."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} logical CPUs"


def collect() -> None:
    gc.collect()
