"""Every picture README.md and docs/ show, made from the offline demo's own output.

    python docs/make_screenshots.py                      # trains runs/demo first when it has no finished outputs
    python docs/make_screenshots.py --run-dir runs/demo --out docs

1. The demo: `train_dpo.py --config examples/demo.yaml --output-dir RUN_DIR` (skipped when both families finished).
2. docs/demo_curves.png: docs/make_demo_curves.py on the demo's metrics.json files.
3. The app on the demo's models (what `dpo-studio app --models-dir RUN_DIR` serves), in Debian chromium driven by
   playwright:
   - docs/streaming.png: the Compare tab mid-stream (the stream is paced at PACE_S per token so that the picture
     catches it; the tokens are the models' own);
   - docs/app.png: both families compared, finished, with "What DPO changed";
   - docs/leaderboard.png: after VOTES blind rounds per family, each voted by the style judge (a Naive Bayes
     classifier trained on the demo's chosen vs rejected replies), not by people;
   - docs/train.png: round two of GPT-2 trained from those votes in the Train tab (2 epochs, LoRA r=8, learning
     rate 1e-3: the demo's own scale).
The captions in README.md and docs/ say the same.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PACE_S = 0.12  # per streamed token, for docs/streaming.png only
VOTES = 16  # blind rounds per family, voted by the style judge
TIMEOUT_MS = 600_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_demo(run_dir: Path) -> None:
    if all((run_dir / family / "metrics.json").is_file() for family in ("gpt2", "t5")):
        return
    subprocess.run([sys.executable, str(REPO / "train_dpo.py"), "--config", str(REPO / "examples" / "demo.yaml"),
                    "--output-dir", str(run_dir), "--overwrite"], check=True)


def judge_votes(studio, prompts: list[str]) -> None:
    """VOTES blind rounds per family, each voted for the reply the style judge finds more like the chosen replies."""
    from dpo_studio.data.reading import load_pairs
    from dpo_studio.evaluation.style_judge import StyleJudge

    pairs, _ = load_pairs(str(REPO / "examples" / "data" / "train.jsonl"), "train", False)
    judge = StyleJudge.fit([p.chosen for p in pairs], [p.rejected for p in pairs])
    for family in ("gpt2", "t5"):
        for i in range(VOTES):
            round_id, reply_a, reply_b = studio.blind(prompts[i % len(prompts)], family, 64, 0.7, 0.95, i)
            p_a, p_b = judge.predict_proba([reply_a, reply_b])
            studio.vote(round_id, "A" if p_a > p_b else "B" if p_b > p_a else "tie")


def paced(stream):
    def slow(*args, **kwargs):
        for step in stream(*args, **kwargs):
            yield step
            time.sleep(PACE_S)

    return slow


def compare_shots(page, out: Path, prompt: str, pace) -> None:
    page.locator("#prompt textarea").fill(prompt)
    with pace():
        page.locator("#compare-btn").click()
        page.wait_for_function("() => ['base-out', 'dpo-out'].every(id => "
                               "document.querySelector(`#${id} textarea`)?.value.length >= 40)")
        page.screenshot(path=str(out / "streaming.png"), full_page=True)
        page.get_by_text("Σ log-ratio", exact=False).first.wait_for()
    page.get_by_label("Both").check()
    page.locator("#compare-btn").click()
    page.locator("#changes-t5").wait_for(state="visible")
    page.screenshot(path=str(out / "app.png"), full_page=True)


def arena_shots(page, out: Path) -> None:
    page.get_by_role("tab", name="Leaderboard").click()
    page.wait_for_function("() => document.querySelector('#leaderboard-table')?.innerText.includes('dpo')")
    page.wait_for_function("() => !document.querySelector('#leaderboard-table').innerText.includes('processing')")
    page.screenshot(path=str(out / "leaderboard.png"), full_page=True)
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-start").click()
    page.locator("#train-eta").get_by_text("added to the arena", exact=False).wait_for()
    page.screenshot(path=str(out / "train.png"), full_page=True)


def app_shots(run_dir: Path, out: Path, work: Path) -> None:
    from playwright.sync_api import sync_playwright

    from dpo_studio import ui
    from dpo_studio.inference.model_sources import ModelRegistry, discover_models_dir
    from dpo_studio.ui import engine
    from dpo_studio.ui.round_training import TrainSettings

    prompts = [line.strip() for line in (REPO / "examples" / "prompts.txt").read_text().splitlines() if line.strip()]
    studio = ui.build_studio(ModelRegistry(discover_models_dir(run_dir)), votes_file=work / "votes.jsonl",
                             rng=random.Random(0), owner_actions="train", train_output_dir=work / "rounds",
                             train_settings=TrainSettings(epochs=2, lora_r=8, batch_size=4, report_to="none",
                                                         extra=("--learning-rate", "1e-3")))
    judge_votes(studio, prompts)
    demo = ui.build_app(studio=studio, example_prompts=prompts[:3])
    original = engine.stream_pair_results

    class Pace:  # docs/streaming.png only: the engine's stream, paced (see the module docstring)
        def __enter__(self):
            engine.stream_pair_results = paced(original)

        def __exit__(self, *exc):
            engine.stream_pair_results = original

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            compare_shots(page, out, prompts[0], Pace)
            arena_shots(page, out)
            browser.close()
    finally:
        demo.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    ensure_demo(args.run_dir)
    subprocess.run([sys.executable, str(REPO / "docs" / "make_demo_curves.py"), str(args.run_dir),
                    str(args.out / "demo_curves.png")], check=True)
    with tempfile.TemporaryDirectory() as work:
        app_shots(args.run_dir.resolve(), args.out, Path(work))
    print("wrote", ", ".join(f"{args.out}/{name}" for name in ("demo_curves.png", "streaming.png", "app.png",
                                                                 "leaderboard.png", "train.png")))


if __name__ == "__main__":
    main()
