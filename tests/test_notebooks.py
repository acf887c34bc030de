"""Execute the benchmark notebooks in their tiny mode (the default parameters); any cell error fails."""
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["homography_benchmark.ipynb", "pose_benchmark.ipynb"])
def test_notebook_tiny_mode(name, tmp_path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and 'MODE = "tiny"' in params[0].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs not stripped"
    # write outputs under tmp_path, not into the repository
    params[0].source += f"\nOUTPUT = {str(tmp_path / 'out')!r}"
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError on any failing cell
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "| sift |" in text  # the results table was produced
    assert list((tmp_path / "out").glob("*.png")), "no figure written"
