"""User text (and model text that repeats it) is inert wherever the app renders Markdown or HTML.

The app's UI callbacks (found by their ui_* names, so the wiring to Markdown components is what is checked) are
called with HTML/JS payloads; every value bound for a gr.Markdown/gr.HTML component, and every gr.Error message
(Gradio renders those as HTML), is rendered the most permissive way (CommonMark with raw HTML passed through, the
browser's sanitiser not counted on) and must contain only the app's own tags. Then the same in chromium: no dialog
fires and no injected element appears.

The tiny models cannot repeat a prompt, so a wrapper around the real engine makes the DPO reply echo the user's text
(as real chat models often do): that way user text reaches the replies, the per-token view and the scoring.
"""

from __future__ import annotations

import inspect
import json
import os
import random
from html.parser import HTMLParser
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from markdown_it import MarkdownIt
from tiny_models import free_port

from dpo_studio import ui
from dpo_studio.inference.generation import GenerationResult
from dpo_studio.inference.model_sources import ModelRegistry, discover_models_dir
from dpo_studio.ui import engine

PAYLOADS = ['<script>alert(1)</script>', '<img src=x onerror=alert(1)>', '"><b>bold</b>']
ALL_IN_ONE = " ".join(PAYLOADS)
# Tags the app itself writes into Markdown (code spans, bold, tables), after CommonMark rendering.
ALLOWED_TAGS = {"p", "strong", "em", "code", "br", "table", "thead", "tbody", "tr", "th", "td"}
CAP = 16
CHROMIUM = Path("/usr/bin/chromium")
# What an injection would leave in the page: a script with the payload, an error handler, the payload's image or
# its bold element.
INJECTED_JS = """() => ({
    scripts: [...document.querySelectorAll('script')].filter(s => s.textContent.includes('alert(1)')).length,
    handlers: document.querySelectorAll('[onerror]').length,
    images: document.querySelectorAll('img[src="x"]').length,
    bold: [...document.querySelectorAll('b')].filter(b => b.textContent === 'bold').length,
})"""
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword is deprecated).*"),
    pytest.mark.usefixtures("single_thread"),
]


class _Elements(HTMLParser):
    """Start tags with their attributes, and the text a browser would show (entities decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_data(self, data):
        self.text += data


def assert_inert(rendered: str, *, markdown: bool = True, shows: str | None = None) -> None:
    """`rendered` (Markdown, or HTML when markdown=False) yields only the app's tags, no attributes; `shows`, if
    given, is visible as text (escaped, not dropped)."""
    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(rendered) if markdown else rendered
    parser = _Elements()
    parser.feed(html)
    parser.close()
    bad = [(tag, attrs) for tag, attrs in parser.tags if tag not in ALLOWED_TAGS or attrs]
    assert not bad, f"user text became markup {bad} in {rendered!r}"
    if shows is not None:
        assert shows in parser.text, f"{shows!r} is not shown as text in {rendered!r}"


def echo_reply(real):
    """The real engine, except that the DPO reply repeats the user's text."""

    def generate(pair, prompts, **settings):
        rows = real(pair, prompts, **settings)
        return [(base, GenerationResult(text=str(prompt).strip(), token_ids=[], ended_with_eos=True))
                for (base, _), prompt in zip(rows, prompts)]

    return generate


def echo_stream(real):
    """The real streaming engine, except that the DPO reply repeats the user's text."""

    def stream(pair, prompt, **settings):
        for base, _ in real(pair, prompt, **settings):
            yield base, GenerationResult(text=str(prompt).strip(), token_ids=[], ended_with_eos=True)

    return stream


@pytest.fixture(scope="module")
def app(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The app (tiny GPT-2 and T5, echoing DPO replies) built and served on a free 127.0.0.1 port."""
    votes_file = tmp_path_factory.mktemp("votes") / "votes.jsonl"
    studio = ui.build_studio(ModelRegistry(discover_models_dir(models_dir)), votes_file=votes_file,
                             max_new_tokens_cap=CAP, rng=random.Random(0))
    demo = ui.build_app(studio=studio, example_prompts=[])
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "generate_pair_results", echo_reply(engine.generate_pair_results))
        patch.setattr(engine, "stream_pair_results", echo_stream(engine.stream_pair_results))
        ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield demo, f"http://127.0.0.1:{port}/", studio
        finally:
            demo.close()


def call(demo: gr.Blocks, api_name: str, *args):
    """Run a UI callback as Gradio would; (values bound for Markdown/HTML components, all outputs) or the error."""
    [fn] = [f for f in demo.fns.values() if f.api_name == api_name]
    try:
        values = fn.fn(*args)
        if inspect.isgenerator(values):  # a streaming callback: what it shows last
            values = list(values)[-1]
    except gr.Error as exc:
        return exc
    values = values if isinstance(values, tuple) else (values,)
    assert len(values) == len(fn.outputs)
    rendered = []
    for component, value in zip(fn.outputs, values):
        if isinstance(value, dict) and value.get("__type__") == "update":
            value = value.get("value")
        if isinstance(component, (gr.Markdown, gr.HTML)) and value is not None:
            rendered.append(component.postprocess(value))
    return rendered, values


@pytest.mark.parametrize("payload", PAYLOADS + [ALL_IN_ONE])
def test_compare_blind_and_score_render_user_text_inert(app, payload):
    demo, _, studio = app
    settings = (CAP, 0.0, 1.0, 0)

    rendered, (base, dpo, runs) = call(demo, "ui_compare", payload, "gpt2", *settings)
    assert dpo == payload  # the echo: user text really is in the reply (Textboxes show it as plain text)
    assert rendered == []  # compare's outputs are Textboxes and State, nothing rendered as HTML
    rendered, views = call(demo, "ui_changes", runs)
    # The per-token view of the echoed text: token strings such as "<unk>" (characters this tokenizer does not
    # know) must not become tags either.
    [summary] = rendered
    assert "Σ log-ratio" in summary
    assert_inert(summary)

    rendered, (reply_a, reply_b, round_id, *_) = call(demo, "ui_blind", payload, "t5", *settings)
    assert payload in (reply_a, reply_b)
    for markdown in rendered:
        assert_inert(markdown)
    rendered, _ = call(demo, "ui_vote_A", round_id)
    assert_inert(rendered[0], shows="Saved: you preferred reply A.")
    # Stored verbatim: escaping belongs to rendering, the preference data keeps the user's text.
    record = json.loads(studio.votes.path.read_text(encoding="utf-8").splitlines()[-1])
    assert record["prompt"] == payload and payload in (record["chosen"], record["rejected"])

    rendered, (rows, _) = call(demo, "ui_score", payload, payload, f"{payload} again", "both")
    assert [row[1] for row in rows] == ["A", "B", "A", "B"]
    [verdict] = rendered
    assert verdict.count("DPO prefers") == 2
    assert_inert(verdict)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_token_strings_and_messages_with_user_text_are_escaped(app, payload, monkeypatch, models_dir, tmp_path):
    demo, _, studio = app
    # A tokenizer whose tokens carry the payload whole (real BPE pieces would split it): the summary names the
    # most boosted and most suppressed tokens inside <code>.
    monkeypatch.setattr(engine, "generated_token_log_ratios",
                        lambda pair, prompt, result: [(result.text, 0.5), ("ok", -0.5)])
    _, _, runs = studio.compare(payload, "gpt2", CAP, 0.0, 1.0, 0)
    [summary], _ = call(demo, "ui_changes", runs)
    assert_inert(summary, shows=f"most boosted {payload} (+0.500)")

    # The family selector's value comes from the client: an unknown one is quoted back in a gr.Error (HTML).
    error = call(demo, "ui_compare", "Hi", payload, CAP, 0.0, 1.0, 0)
    assert isinstance(error, gr.Error)
    assert_inert(error.message, markdown=False, shows=f"Unknown model family {payload!r}")
    error = call(demo, "ui_score", "Hi", "a", "b", payload)
    assert isinstance(error, gr.Error)
    assert_inert(error.message, markdown=False, shows=repr(payload))

    # Export: on a server with export enabled and an owner secret, the only visitor text is the secret box; a wrong
    # secret is refused without echoing it.
    monkeypatch.setenv("DPO_STUDIO_OWNER_SECRET", "the-owners-secret")
    owner_demo = ui.build_app(ModelRegistry(discover_models_dir(models_dir)), votes_file=tmp_path / "votes.jsonl",
                              max_new_tokens_cap=CAP, example_prompts=[], owner_actions="export",
                              export_repo="owner/votes")
    rendered, _ = call(owner_demo, "ui_export", payload)
    [message] = rendered
    assert message.startswith("Export refused:")
    assert payload not in message
    assert_inert(message)


def test_api_error_quotes_user_text_escaped(app):
    """The public /compare API (gradio_client): the error for an unknown family carries the text escaped."""
    _, url, _ = app
    client = Client(url, verbose=False, analytics_enabled=False)
    try:
        with pytest.raises(AppError) as info:
            client.predict("Hi", ALL_IN_ONE, 4, 0.0, api_name="/compare")
    finally:
        client.close()
    assert_inert(str(info.value.message), markdown=False, shows=f"Unknown model family {ALL_IN_ONE!r}")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed")
def test_payload_prompt_in_chromium_runs_nothing(app, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api", reason="python playwright is not installed")
    _, url, _ = app
    # Whole-reply tokens, so the payload reaches the Markdown summary and the highlighted view intact.
    monkeypatch.setattr(engine, "generated_token_log_ratios",
                        lambda pair, prompt, result: [(result.text, 0.5), ("ok", -0.5)])
    dialogs: list[str] = []
    injected: dict[str, dict[str, int]] = {}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.set_default_timeout(60_000)
            page.goto(url)

            page.locator("#prompt textarea").fill(ALL_IN_ONE)
            page.locator("#compare-btn").click()
            page.wait_for_function("() => document.querySelector('#dpo-out textarea')?.value")
            summary = page.get_by_text("most boosted", exact=False).first
            summary.wait_for()
            page.locator("#changes-gpt2").wait_for(state="visible")
            injected["compare"] = page.evaluate(INJECTED_JS)
            shown = {"reply": page.locator("#dpo-out textarea").input_value(), "summary": summary.inner_text(),
                     "tokens": page.locator("#changes-gpt2").inner_text()}

            page.get_by_role("tab", name="Blind A/B").click()
            page.locator("#blind-prompt textarea").fill(ALL_IN_ONE)
            page.locator("#blind-btn").click()
            page.wait_for_function(
                "() => ['reply-a', 'reply-b'].every(id => document.querySelector(`#${id} textarea`)?.value)")
            page.locator("#vote-b").click()
            page.locator("#blind-status").get_by_text("Saved: you preferred reply B", exact=False).wait_for()
            injected["blind"] = page.evaluate(INJECTED_JS)
        finally:
            browser.close()
    nothing = {"scripts": 0, "handlers": 0, "images": 0, "bold": 0}
    assert injected == {"compare": nothing, "blind": nothing}
    assert dialogs == []
    assert shown["reply"] == ALL_IN_ONE  # and the user's text is shown, as text, where it belongs
    assert ALL_IN_ONE in shown["summary"] and ALL_IN_ONE in shown["tokens"]
