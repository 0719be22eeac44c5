"""The walkthrough notebook: stored without outputs, and it runs top to bottom on real MNIST."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from jaxweights import config as jcfg

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "walkthrough.ipynb"


def zoo_size(nb) -> int:
    """Networks of the zoo the notebook trains, from the config lines of its training cell (run here alone)."""
    cell = next(
        c.source for c in nb.cells if c.cell_type == "code" and "train_pipeline.train_and_evaluate(c," in c.source
    )
    ns = {"config": jcfg}
    exec("\n".join(line for line in cell.splitlines() if line.startswith("c.") or line.startswith("c =")), ns)
    c = ns["c"]
    return c.num_seeds * len(c.learning_rates) * len(c.init_scales)


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for c in code:
        assert c.outputs == [] and c.execution_count is None, c.source[:80]
        assert "execution" not in c.metadata


def test_notebook_runs_top_to_bottom(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("JAXWEIGHTS_DATA_DIR", str(data_dir))  # the kernel inherits the environment
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's working folder lands here
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    text = "\n".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    # the zoo's size from the config the notebook trains: seeds × learning rates × init scales
    n = zoo_size(nb)
    assert n > 1 and f"{n} networks, best test accuracy" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # histograms, statistics vs accuracy, distance heatmap, imported histograms
    assert "verdict" in text and "fc1/kernel" in text
