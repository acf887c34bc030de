"""Execute the dense-alignment notebook in its tiny mode (LIFT_NOTEBOOK_TINY=1); any cell error
fails. Needs the shipped fine-network weights."""
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("skimage")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "dense_alignment.ipynb"
WEIGHTS = ROOT / "correspondence" / "weights" / "flow_default.pt"


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped weights flow_default.pt not built yet")
def test_dense_alignment_notebook_tiny(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "LIFT_NOTEBOOK_TINY" in params[0].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs not stripped"
    params[0].source += f"\nOUTPUT = {str(tmp_path / 'out')!r}"
    monkeypatch.setenv("LIFT_NOTEBOOK_TINY", "1")
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "mean end-point error" in text and "texture carried to" in text
    assert (tmp_path / "out" / "artwork_alignment.png").is_file()
    assert (tmp_path / "out" / "texture_transfer.png").is_file()
