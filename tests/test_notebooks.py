"""Every notebook's code cells run top to bottom (in a temporary directory, figures to Agg)."""
import glob
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cells = json.load(open(path))["cells"]
    scope = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{os.path.basename(path)}", "exec"), scope)
    out = capsys.readouterr().out
    assert "100% of 256 samples are copies" in out
    assert "K =   2: attractors by kind {'stored': 2}" in out  # K = 2 memorizes; spurious states appear later
    assert "K = 100: attractors by kind {'spurious'" in out
    assert os.path.exists(tmp_path / "circle_energy.png")
