"""The Colab quickstart runs top to bottom (tiny settings, without the Colab install cell), is kept without outputs,
and shows its figures."""

import json
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "aero_quickstart.ipynb"


def test_the_notebook_is_kept_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def without_install_cell(notebook):
    """The notebook as a local checkout runs it: without the cell that pip-installs the package on Colab."""
    install = [cell for cell in notebook.cells if '"pip", "install"' in cell.source]
    assert len(install) == 1
    notebook.cells = [cell for cell in notebook.cells if cell is not install[0]]
    return notebook


@pytest.mark.slow
def test_the_quickstart_runs_top_to_bottom_without_its_install_cell(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("AERO_QUICKSTART_SMOKE", "1")
    monkeypatch.setenv("AERO_QUICKSTART_WORKDIR", str(tmp_path / "runs"))
    monkeypatch.setenv("AERO_QUICKSTART_DATA", json.dumps(corpus))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = without_install_cell(nbformat.read(NOTEBOOK, as_version=4))  # locally it installs nothing
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # a failing cell raises
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 4  # PI cost, loss curves, head entropy, entropy ranges
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "EReg(SM(t)+ScFuFFN)" in text and "===== SM+LN+G (step 8)" in text
    assert "largest |logit difference| between JAX and PyTorch" in text
