"""One app compare request (base + DPO, 64 new tokens, greedy): one-weights mixed-adapter generate vs two models.

    python bench/app_compare.py [--preset full|small] [--families gpt2,t5] [--rounds 3]

* product: `dpo_studio.inference.generation.load_pair(base, adapter)` — the base weights once plus the LoRA adapter; one
  `generate` call holds the base row (adapter off) and the DPO row (adapter on) via PEFT's mixed `adapter_names`.
* product, PEFT layers: the same with `DPO_STUDIO_MASKED_LORA=0`, i.e. PEFT's own LoRA layers and its
  split-and-scatter mixed batch instead of `cpu_decode.MaskedLoraLinear` (what the masked layer buys).
* product, F.linear forced: the product with `DPO_STUDIO_DECODE_KERNEL=linear`, i.e. without the decode-step
  product `decode_kernel.choose_decode_kernel` picks at load on this CPU (what that choice buys; "kernel" column).
* two models: `load_pair(base, merged=...)` — the base model and the merged DPO model, generating in turn.
Every variant runs eager (no torch.compile: see docs/performance.md, "Serving") in the precision `load_pair` loads (the
checkpoint's, fp32 here), with the threads `dpo_studio.training.speed.configure_threads` sets; the header says which.

Each variant runs in its own fresh process (so peak memory is its own), alternating product / two-models for
`--rounds` rounds; latency is the median of the requests after one warm-up request. Peak memory is the process's
peak RSS above its RSS after imports (what the models and the request add), and the total peak RSS.
The adapter is given random non-zero weights so base and DPO outputs differ; both variants must produce the same
greedy tokens.

Streaming (what the app's Compare tab and `/compare_stream` do): per side, the time from the request to its first
token (target <= 0.3 s for the product on the GPT-2-small shape, 2 cores) and its decode rate in tokens/s after that
first token, medians over the timed streamed requests. In two-model mode the DPO side starts after the base side has
finished, which its time to first token shows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401
import torch
from common import PRESETS, build_model, current_rss_mb, machine, make_pairs, peak_rss_mb, table, tokenizer_for

PROMPT = "What's a good way to spend a rainy Sunday afternoon at home?"
NEW_TOKENS = 64
MASKED_LORA_ENV = "DPO_STUDIO_MASKED_LORA"  # dpo_studio.inference.serving_lora.ENV_SWITCH
KERNEL_ENV = "DPO_STUDIO_DECODE_KERNEL"  # dpo_studio.inference.decode_kernel.KERNEL_ENV
PEFT_LAYERS = "product, PEFT layers"
LINEAR_FORCED = "product, F.linear forced"
# name -> (child mode, environment)
VARIANTS = {"product": ("product", {}), LINEAR_FORCED: ("product", {KERNEL_ENV: "linear"}),
            PEFT_LAYERS: ("product", {MASKED_LORA_ENV: "0"}), "two-models": ("two-models", {})}


def prepare(kind: str, shape: dict, root: Path) -> None:
    """base/, adapter/ (random LoRA in the product's config), merged/ — as train_dpo.py writes them."""
    from peft import get_peft_model

    from dpo_studio.models.families import architecture_of, prepare_tokenizer

    pairs = make_pairs(64, 0.5, seed=0)
    tokenizer = tokenizer_for(pairs, kind == "t5")
    model = build_model(kind, shape, tokenizer, seed=0)
    arch = architecture_of(model.config)
    prepare_tokenizer(tokenizer, arch)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    for sub, obj in (("base", model),):
        obj.save_pretrained(root / sub)
        tokenizer.save_pretrained(root / sub)
        arch.prompt_format.save(root / sub)
    peft_model = get_peft_model(model, arch.lora_config(16, 32, 0.0))
    gen = torch.Generator().manual_seed(1)
    scale = 0.02 if kind == "gpt2" else 0.3  # large enough that the DPO side's greedy reply differs from the base's
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    peft_model.peft_config["default"].base_model_name_or_path = str(root / "base")
    peft_model.save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "adapter")
    arch.prompt_format.save(root / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(root / "merged")
    tokenizer.save_pretrained(root / "merged")
    arch.prompt_format.save(root / "merged")


def streamed(pair, prompt, stream_pair_results) -> dict:
    """One streamed request: per side, seconds to the first token, tokens/s after it, and the final tokens."""
    start = time.perf_counter()
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    count: dict[str, int] = {}
    final = None
    for final in stream_pair_results(pair, prompt, max_new_tokens=NEW_TOKENS, temperature=0.0):
        now = time.perf_counter() - start
        for side, result in zip(("base", "dpo"), final):
            if result.num_tokens and side not in first:
                first[side] = now
            if result.num_tokens != count.get(side):
                count[side], last[side] = result.num_tokens, now
    out = {"tokens": [r.token_ids for r in final]}
    for side in ("base", "dpo"):
        span = last[side] - first[side]
        out[side] = {"ttft_s": first[side], "tok_s": (count[side] - 1) / span if span > 0 else float("nan")}
    return out


def child(variant: str, root: Path, requests: int) -> None:
    from dpo_studio.inference.generation import generate_pair_results, load_pair, stream_pair_results
    from dpo_studio.training.speed import configure_threads

    configure_threads()
    rss0 = current_rss_mb()
    started = time.perf_counter()
    if variant == "product":
        pair = load_pair(str(root / "base"), str(root / "adapter"))
    else:
        pair = load_pair(str(root / "base"), None, str(root / "merged"))
    load_s = time.perf_counter() - started
    prompts = [[{"role": "user", "content": PROMPT}]]
    times, result = [], None
    for i in range(requests + 1):
        start = time.perf_counter()
        result = generate_pair_results(pair, prompts, max_new_tokens=NEW_TOKENS, temperature=0.0)
        if i:  # the first request is a warm-up
            times.append(time.perf_counter() - start)
    base, dpo = result[0]
    streams = [streamed(pair, prompts[0], stream_pair_results) for _ in range(requests + 1)][1:]  # 1 warm-up
    stream = {side: {key: statistics.median(s[side][key] for s in streams) for key in ("ttft_s", "tok_s")}
              for side in ("base", "dpo")}
    model = pair.model if pair.model is not None else pair.base_model
    kernels = {getattr(m, "decode_kernel", None) for m in model.modules()} - {None}
    print(json.dumps({
        "kernel": ",".join(sorted(kernels)) or "F.linear (no mixed batch)",
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "variant": variant, "load_s": load_s, "latency_s": statistics.median(times), "rss_after_imports_mb": rss0,
        "peak_rss_mb": peak_rss_mb(), "base_tokens": base.token_ids, "dpo_tokens": dpo.token_ids,
        "shares_weights": pair.shares_weights, "stream": stream,
        "stream_same_tokens": all(s["tokens"] == [base.token_ids, dpo.token_ids] for s in streams),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--families", default="gpt2,t5")
    parser.add_argument("--rounds", type=int, default=3, help="alternating product / two-model processes")
    parser.add_argument("--requests", type=int, default=3, help="timed requests per process (after one warm-up)")
    parser.add_argument("--child", choices=["product", "two-models"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        child(opts.child, opts.dir, opts.requests)
        return
    preset = PRESETS[opts.preset]
    from dpo_studio.training.speed import configure_threads

    configure_threads()  # as in the children, so the header's thread count is theirs
    print(f"# app_compare — preset {preset.name}, {NEW_TOKENS} new tokens, greedy, 1 prompt; {machine()}; "
          f"compile: off (eager); load average {common.load_average()}")
    rows, ratios, stream_rows = [], [], []
    for kind in opts.families.split(","):
        shape = getattr(preset, kind)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            prepare(kind, shape, root)
            runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
            for _ in range(opts.rounds):
                for variant in runs:
                    mode, env = VARIANTS[variant]
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", mode, "--dir", str(root), "--requests",
                         str(opts.requests)], capture_output=True, text=True, check=True,
                        env={**os.environ, MASKED_LORA_ENV: "1", KERNEL_ENV: "auto", **env},
                    ).stdout.strip().splitlines()[-1]
                    runs[variant].append(json.loads(out))
        summary = {}
        for variant, results in runs.items():
            latency = statistics.median(r["latency_s"] for r in results)
            delta = statistics.median(r["peak_rss_mb"] - r["rss_after_imports_mb"] for r in results)
            peak = statistics.median(r["peak_rss_mb"] for r in results)
            load = statistics.median(r["load_s"] for r in results)
            summary[variant] = dict(latency=latency, delta=delta, peak=peak, tokens=(results[0]["base_tokens"],
                                                                                   results[0]["dpo_tokens"]))
            rows.append([f"{kind}: {variant}", f"{shape}", results[0]["dtype"], results[0]["kernel"], round(load, 2),
                         round(latency, 3), round(delta), round(peak)])
            stream = {side: {key: statistics.median(r["stream"][side][key] for r in results)
                             for key in ("ttft_s", "tok_s")} for side in ("base", "dpo")}
            stream_rows.append([f"{kind}: {variant}", round(stream["base"]["ttft_s"], 3),
                                round(stream["dpo"]["ttft_s"], 3), round(stream["base"]["tok_s"], 1),
                                round(stream["dpo"]["tok_s"], 1),
                                all(r["stream_same_tokens"] for r in results)])
        same = all(summary[v]["tokens"] == summary["two-models"]["tokens"] for v in summary)
        differs = summary["product"]["tokens"][0] != summary["product"]["tokens"][1]
        ratios.append((kind, summary, same, differs))
    print(f"# load average at end: {common.load_average()}")
    print(table(["variant", "model", "weights (ran)", "decode kernel (chosen at load)", "load s", "request latency s", "peak memory MB (above imports)",
                 "peak RSS MB (total)"], rows))
    print(table(["streamed", "base: s to 1st token", "DPO: s to 1st token", "base: tokens/s", "DPO: tokens/s",
                 "stream = non-streamed tokens"], stream_rows))
    print("target: product <= 0.3 s to the first token on the GPT-2-small shape (full preset), 2 cores")
    for kind, s, same, differs in ratios:
        p, t, peft_layers = s["product"], s["two-models"], s[PEFT_LAYERS]
        print(f"ratio {kind}: PEFT layers / MaskedLoraLinear latency = {peft_layers['latency'] / p['latency']:.2f}x")
        print(f"ratio {kind}: F.linear forced / kernel chosen at load latency = "
              f"{s[LINEAR_FORCED]['latency'] / p['latency']:.2f}x")
        print(f"ratio {kind}: two-models / product latency = {t['latency'] / p['latency']:.2f}x (target >= 1.6x); "
              f"product / two-models peak memory = {p['delta'] / t['delta']:.2f}x above imports, "
              f"{p['peak'] / t['peak']:.2f}x total (target <= 0.55x); same greedy tokens: {same} "
              f"(base != DPO output: {differs})")


if __name__ == "__main__":
    main()
