"""notebooks/quickstart.ipynb never rots: executed end to end here (CPU, the offline demo config shrunk to a few
steps, pushed to the local Hub, compared from the pushed repos) by nbclient, stored without outputs, and its
"Open in Colab" badge and install cell name the repository pyproject.toml names."""

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def test_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {i} has stored outputs"
        assert "attachments" not in cell, f"cell {i} stores attachments"


def test_colab_badge_and_install_point_at_the_repository():
    repo_url = re.search(r'^Repository = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    owner_name = repo_url.removeprefix("https://github.com/")
    text = NOTEBOOK.read_text()
    badge = re.search(r"\(https://colab\.research\.google\.com/github/([^)]+)\)", text).group(1)
    assert badge == f"{owner_name}/blob/main/notebooks/quickstart.ipynb"
    assert "colab-badge.svg" in text and f"git+{repo_url}" in text


def test_runs_end_to_end_on_cpu_with_the_demo_config(tmp_path, local_hub, monkeypatch):
    out = tmp_path / "out"
    for key, value in {"DPO_STUDIO_NOTEBOOK_DEMO": "1", "DPO_STUDIO_NOTEBOOK_SMALL": "1",
                       "DPO_STUDIO_NOTEBOOK_OUT": str(out), "HUB_NAMESPACE": local_hub.user,
                       "TRACKIO_DIR": str(tmp_path / "trackio"), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
                       "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment (and the local Hub's)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    for family in ("gpt2", "t5"):
        assert (out / family / "merged" / "README.md").is_file()
        assert "README.md" in local_hub.files(f"{local_hub.user}/{family}-dpo-lora")  # the push cell ran
    shown = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    markdown = [o["data"]["text/markdown"] for o in shown if "text/markdown" in o.get("data", {})]
    comparisons = [m for m in markdown if m.startswith(("**gpt2**", "**t5**"))]
    assert len(comparisons) == 2 and all(m.count("\n| ") == 3 for m in comparisons)  # header + 2 prompts each
    assert any("rewards/accuracies" in m for m in markdown)
    assert any("image/png" in o.get("data", {}) for o in shown)  # the curves
