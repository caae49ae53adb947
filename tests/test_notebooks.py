"""Every notebook runs headless top to bottom (nbclient, a real kernel, in a temporary directory)
with the tiny settings DIFFMEM_NOTEBOOK_QUICK=1 selects, and every committed notebook is stored
without outputs."""
import glob
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))
STRIP = os.path.join(REPO, "notebooks", "strip_outputs.py")
# seconds per cell: generous for a loaded CI host (each notebook takes ~1 min of CPU)
CELL_TIMEOUT = 1200


def execute(path, tmp_path, monkeypatch):
    """Run the notebook in a fresh kernel in tmp_path; returns (the executed notebook, its stream
    text)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DIFFMEM_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # not conftest's 8: faster
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream")
    return nb, text


def images(nb) -> int:
    return sum(
        "image/png" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


def test_there_are_notebooks():
    names = {os.path.basename(p) for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "toy_tutorial.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_committed_notebooks_have_no_outputs(path):
    with open(path) as f:
        nb = json.load(f)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), (
        f"{path} has outputs: run python3 notebooks/strip_outputs.py")


def test_strip_outputs_script(tmp_path):
    src = json.load(open(os.path.join(REPO, "notebooks", "quickstart.ipynb")))
    code = next(c for c in src["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]
    code["execution_count"] = 3
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(src))
    check = subprocess.run(
        [sys.executable, STRIP, "--check", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 1 and "1 outputs" in check.stdout
    subprocess.run([sys.executable, STRIP, str(path)], check=True, capture_output=True)
    assert subprocess.run([sys.executable, STRIP, "--check", str(path)]).returncode == 0
    stripped = json.loads(path.read_text())
    assert [c["source"] for c in stripped["cells"]] == [c["source"] for c in src["cells"]]


def test_quickstart_runs(tmp_path, monkeypatch):
    nb, out = execute(os.path.join(REPO, "notebooks", "quickstart.ipynb"), tmp_path, monkeypatch)
    assert "100% of 256 samples are copies" in out
    # K = 2 memorizes; spurious states appear later
    assert "K =   2: attractors by kind {'stored': 2}" in out
    assert "K = 100: attractors by kind {'spurious'" in out
    assert os.path.exists(tmp_path / "circle_energy.png")


@pytest.mark.slow
def test_toy_tutorial_runs(tmp_path, monkeypatch):
    nb, out = execute(os.path.join(REPO, "notebooks", "toy_tutorial.ipynb"), tmp_path, monkeypatch)
    for k in (2, 9, 1000):
        assert f"K = {k:>4}: " in out and "; tutorial thresholds: memorized" in out
    assert "correlation of the learned energy with the exact circle energy" in out
    study = tmp_path / "runs" / "toy_tutorial_quick" / "study"
    for name in ("tutorial_landscapes.png", "tutorial_exact.png", "tutorial_surfaces.png",
                 "tutorial_2.npz", "tutorial_9.npz", "tutorial_1000.npz"):
        assert (study / name).is_file(), name
    assert images(nb) >= 4  # training sets, landscapes, exact comparison, surfaces


@pytest.mark.slow
def test_k_sweep_runs(tmp_path, monkeypatch):
    nb, out = execute(os.path.join(REPO, "notebooks", "k_sweep.ipynb"), tmp_path, monkeypatch)
    # the mesh spans every device of the kernel
    assert "1 device(s)" in out and "mesh axes ('data',)" in out
    assert "{'train': 'computed', 'sample': 'computed', 'classify': 'computed'" in out
    # QUICK keeps the config's 6 steps (not the study's default)
    assert "6 training steps per model" in out
    study = tmp_path / "runs" / "k_sweep_quick" / "study"
    rep = json.load(open(study / "report.json"))
    assert rep["report"]["ks"] == [4, 16] and set(rep["classify"]["fractions"]) == {"4", "16"}
    for name in ("4", "16"):  # the notebook printed what report.json says
        assert f"K = {name:>5}: Lambda = {rep['phase_times']['table'][name]['lambda']:.3g}" in out
    assert (study / "figures" / "notebook_k_panels.png").is_file()
    assert images(nb) >= 3  # the notebook's K panels, one sample panel per K


def test_k_sweep_panels_from_a_full_report(tmp_path, monkeypatch):
    """The K-sweep notebook's drawing cells on a report.json with every stage's result (the schema:
    diffmem.studies.k_sweep_results); the quick CI run above only fills some of them."""
    from diffmem.studies import k_sweep_results as res
    monkeypatch.chdir(tmp_path)
    ks = [2, 32, 512]
    frac = {k: {"memorized": m, "spurious": s, "generalized": 1 - m - s}
            for k, m, s in zip(ks, (0.9, 0.3, 0.0), (0.05, 0.4, 0.1))}
    ci = {k: {c: [max(0.0, v - 0.05), min(1.0, v + 0.05)] for c, v in f.items()} for k,
          f in frac.items()}
    results = {
        "report": res.ReportResult(
            version=res.REPORT_VERSION, workdir="wd", config={}, settings={}, sampling={},
            ks=tuple(ks),
            stages={s: {"status": "computed", "seconds": 1.0} for s in ("train", "sample",
                                                                        "classify")},
            figures={}, key="k"),
        "classify": res.ClassifyResult(
            metric="l2", units="pixel L2", calibrated=True, thresholds={}, fractions=frac,
            fractions_ci=ci,
            published={}, optimal=frac, fixed_delta=1.0, fixed_rms=0.125, fixed_fractions=frac,
            fixed_fractions_ci=ci, ratio={2: 1.0, 32: 0.5,
                                          512: None}, ratio_optimal={k: 1.0 for k in ks},
            emm={"k": 2, "bracket": [2, 32], "k_crossing": 5.3, "status": "crossed"}, panels={}),
        "reproducibility": res.ReproducibilityResult(
            seed_b=1, threshold=0.6, features="pixel", sub_workdir="seed1", rows={
                k: {"rp_seeds": k / 600, "generalization_a": 0.5, "generalization_b": 0.5,
                    "rp_optimal": 0.1,
                    "generalization_optimal": 0.0, "num_pairs": 8} for k in ks}),
        "disjoint": res.DisjointResult(pool_size=1797, rows={
            k: {"s1_vs_s2": k / 600, "s1_vs_s2_quantiles": [0, 0.5, 1], "closest_own": 1 - k / 600,
                "num_pairs": 8, "file": "x"} for k in ks}),
        "jacobian": res.JacobianResult(models={
            k: {"snr": [0.1, 1.0, 10.0], "median": [0.1, 0.2, 0.4], "q25": [0.05, 0.1, 0.3],
                "q75": [0.2, 0.3,
                        0.5], "n": 64, "snr_speciation": 0.5, "snr_collapse": 3.0} for k in ks}),
        "phase_times": res.PhaseTimesResult(table={k: {"lambda": 5.0, "t_s": 0.9,
                                                       "t_c": 0.3} for k in ks}),
    }
    rep = res.report_json(results)
    os.makedirs(tmp_path / "wd" / "study")
    (tmp_path / "wd" / "study" / "report.json").write_text(json.dumps(rep))
    cells = [c for c in json.load(open(os.path.join(REPO, "notebooks", "k_sweep.ipynb")))["cells"]
             if c["cell_type"] == "code"]
    start = next(i for i, c in enumerate(cells) if "report.json" in "".join(c["source"]))
    shown = []  # what the cells display: PNG paths
    scope = {"WORKDIR": str(tmp_path / "wd"), "QUICK": True, "display": shown.append, "Image": str}
    exec(
        "import json, os\nimport numpy as np\nimport matplotlib.pyplot as plt\nfrom diffmem import "
        "viz\n"
        "from diffmem.studies import k_sweep, k_sweep_results\n"
        "from diffmem.workdir import Workdir",
        scope,
    )
    for cell in cells[start:]:
        exec(compile("".join(cell["source"]), "k_sweep.ipynb", "exec"), scope)
    figures = tmp_path / "wd" / "study" / "figures"
    assert (figures / "notebook_k_panels.png").is_file() and (
        figures / "notebook_rank.png"
    ).is_file()
    assert sorted(os.path.basename(p) for p in shown) == ["notebook_k_panels.png",
                                                          "notebook_rank.png"]
    assert [f.__name__ for f, _ in scope["panels"]] == ["class_fractions", "gu_ratio",
                                                        "reproducibility", "disjoint_halves"]
