"""The one-command K-sweep study (diffmem.studies.k_sweep, bin/study.py): a tiny end-to-end run
whose report.json agrees with the stage outputs it summarises, a self-contained report.html, a rerun
that does nothing, the optional-section plumbing with a stand-in section, and clear errors for bad
stages and missing datasets."""
import json
import math
import os
import sys
import types

import numpy as np
import pytest

from diffmem import configlib, devices, report
from diffmem.errors import DiffmemError, InputError
from diffmem.metrics import classify as classify_lib
from diffmem.studies import disjoint, k_sweep, k_sweep_results
from diffmem.workdir import Workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A one-level UNet compiles in about half the time of the digits network's two levels with
# attention.
TINY = dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0, num_groups=4)
TINY_STUDY = dict(steps=6, metric="pixel", num_samples=8, sampler="ddim", sample_steps=3,
                  rank_latents=1, ct_per_class=1, ct_trials=2, phase_draws=64)
STAGES = ("train", "sample", "classify", "phase_times", "report")


def tiny_config(k="4+16", steps=6):
    c = configlib.load_config_file(
        os.path.join(REPO, "configs/digits.py") + f":k={k},steps={steps},lr=2e-3,batch=8"
    )
    c.model.update(TINY)
    c.optim.warmup_steps = 0
    c.steps_per_call = c.log_every = c.ckpt_every = steps
    c.sample.update(batch=8)
    return c


def _tree_state(root):
    """{path: (size, mtime_ns)} of every file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            st = os.stat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny study's first run (stages `STAGES`), shared by the tests below: (workdir, returned
    report)."""
    import jax
    full = devices.data_mesh
    devices.data_mesh = lambda devices=None: full(jax.devices()[:1] if devices is None else devices)
    try:
        wd_path = str(tmp_path_factory.mktemp("study") / "w")
        rep = k_sweep.run(
            tiny_config(), wd_path, stages=STAGES, progress=False, log=None, **TINY_STUDY
        )
    finally:
        devices.data_mesh = full
    return wd_path, rep


@pytest.mark.slow
def test_tiny_study_report_matches_stage_outputs_and_rerun_does_nothing(study, one_device):
    wd_path, rep = study
    assert rep.statuses == {s: "computed" for s in STAGES}
    wd = Workdir(wd_path)
    out = os.path.join(wd_path, "study")
    with open(os.path.join(out, "report.json")) as f:
        raw = json.load(f)
    assert set(raw) == {"train", "sample", "classify", "phase_times", "report", "claims"}
    saved = k_sweep.load_report(os.path.join(out, "report.json"))   # the schema: k_sweep_results
    assert saved == rep.results and saved["report"].to_json() == raw["report"]
    setup, cls, pt = saved["report"], saved["classify"], saved["phase_times"]
    assert isinstance(cls, k_sweep_results.ClassifyResult) and setup.ks == (4, 16)
    assert setup.stages["reproducibility"]["status"] == "off"
    assert setup.sampling == {"sampler": "ddim", "steps": 3, "optimal_sampler": "ddim"}
    assert saved["train"].steps == {4: 6, 16: 6}
    assert saved["sample"].sets["trained"][16]["num"] == 8
    for name in ("4", "16"):
        for kind in ("trained", "optimal"):
            data = wd.read_samples(name, kind)
            assert data["sampler"] == "ddim" and data["seeds"].tolist() == list(range(8))

    # Classes and the Gu ratio are the classification stage's, per K; the fixed-threshold fractions
    # are Pham's rule applied to the stored pixel distances at delta = fixed_rms * sqrt(64).
    fixed = 0.125 * 8.0
    assert cls.fixed_delta == pytest.approx(fixed)
    for k in (4, 16):
        npz, js = wd.classify_paths(str(k))
        with open(js) as f:
            meta = json.load(f)
        arrays = report.read_npz(npz)
        assert cls.fractions[k] == meta["fractions"]
        assert sum(cls.fractions[k].values()) == pytest.approx(1.0)
        assert cls.ratio[k] == meta["memorization_ratio"]
        assert cls.thresholds[k]["delta_m"] == pytest.approx(meta["thresholds"]["delta_m"])
        want = classify_lib.fractions(classify_lib.classify(arrays["train_dist"][:, 0],
                                                            arrays["sample_dist"],
                                                            fixed, fixed))
        assert cls.fixed_fractions[k] == pytest.approx(want)
        for c, (lo, hi) in cls.fractions_ci[k].items():
            assert lo <= cls.fractions[k][c] <= hi
        assert os.path.exists(wd.path_of(cls.panels[k]))
    assert cls.emm == k_sweep.emm_on_grid(cls.ratio)

    # Phase times are the mechanism stage file's values.
    with open(wd.study_output_dir("mechanisms", "phase_times.json")) as f:
        table = json.load(f)
    for k in (4, 16):
        assert pt.table[k]["t_s"] == pytest.approx(table[str(k)]["t_s"])

    # report.html is self-contained: every src= is an inline data URI, and the figures are there.
    with open(os.path.join(out, "report.html")) as f:
        page = f.read()
    srcs = page.split('src="')[1:]
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert len(srcs) == 1 + 2 and "href=" not in page   # the K panels, one sample panel per K
    with open(os.path.join(out, "report.md")) as f:
        md = f.read()
    assert "Gu ratio" in md and "## Published claims" in md
    # Claims of stages that did not run are "not measured", saying which stage is missing.
    claims = saved["claims"]
    assert claims.ks == (4, 16) and not claims.quick
    assert claims["zhang_rp_seeds"].verdict == "not measured"
    assert "reproducibility stage did not run" in claims["zhang_rp_seeds"].reason
    assert claims["gu_optimal"].verdict in ("holds", "does not hold")
    # Tables run in increasing K (report.json's keys come back in string order: "16" < "4").
    for title in ("Memorized, spurious", "Speciation and collapse"):
        section = md.split("## " + title)[1].split("\n## ")[0]
        ks = [
            int(line.split("|")[1])
            for line in section.splitlines()
            if line[:3].strip("| ").isdigit()
        ]
        assert ks == [4, 16], (title, ks)

    # A rerun does nothing: every stage skipped, no file touched.
    before = _tree_state(wd_path)
    again = k_sweep.run(
        tiny_config(), wd_path, stages=STAGES, progress=False, log=None, **TINY_STUDY
    )
    assert again.statuses == {s: "skipped" for s in STAGES}
    assert _tree_state(wd_path) == before
    assert again.results == saved


@pytest.mark.slow
def test_added_stages_run_alone_and_match_their_files(study, one_device):
    """Asking for more stages runs only those (and the report); the disjoint halves are recomputed
    from the two sides' sample sets, the critical times are the mechanism files'. (The Jacobian
    stage is left to bench/bench_study.py: its compilations would double this test's time.)"""
    wd_path, _ = study
    wd = Workdir(wd_path)
    more = ("disjoint", "critical_times")
    rep = k_sweep.run(
        tiny_config(), wd_path, stages=STAGES + more, progress=False, log=None, **TINY_STUDY
    )
    assert rep.statuses == dict({s: "skipped" for s in STAGES if s != "report"}, report="computed",
                                   **{s: "computed" for s in more})
    s2 = wd.sub_workdir(os.path.join("disjoint_sweep", "S2"))
    for name in ("4", "16"):
        a, b = wd.read_samples(name), s2.read_samples(name)
        assert np.array_equal(a["seeds"], b["seeds"])
        # disjoint training sets
        assert not set(wd.spec(name).indices) & set(s2.spec(name).indices)
        pair = disjoint.paired_corr(a["samples"], b["samples"])
        assert rep["disjoint"].rows[int(name)]["s1_vs_s2"] == pytest.approx(float(pair.mean()),
                                                                            abs=1e-6)
    found = 0
    for cls, table in rep["critical_times"].tc.items():
        for k, vals in table.items():
            z = report.read_npz(wd.study_output_dir("mechanisms", "critical_times", cls,
                                                    f"{k}_0-1.npz"))
            assert vals == pytest.approx(np.median(z["time"], axis=1).tolist())
            found += 1
    assert found >= 2   # every K has samples of at least one class


def test_optional_section_plumbing_with_a_stand_in(tmp_path, monkeypatch):
    """The machines stage calls diffmem.machines.agreement.study_section(workdir, names, **kw) and
    the report includes its title, markdown and figure (inline in the HTML)."""
    import matplotlib.pyplot as plt
    wd_path = str(tmp_path / "w")
    Workdir(wd_path).write_config(tiny_config())
    fig_path = str(tmp_path / "w" / "machines.png")
    calls = []

    def study_section(workdir, names, **kw):
        calls.append((workdir, list(names), kw))
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        fig.savefig(fig_path)
        plt.close(fig)
        return dict(title="Local score machines",
                    markdown="Agreement r2 per K:\n\n| K | r2 |\n|---|---|\n| 4 | 0.5 |",
                    figures=[fig_path], data={"r2": {"4": 0.5}})

    fake = types.ModuleType("diffmem.machines.agreement")
    fake.study_section = study_section
    monkeypatch.setitem(sys.modules, "diffmem.machines.agreement", fake)
    rep = k_sweep.run(tiny_config(), wd_path, stages=("machines", "report"), progress=False,
                      log=None, section_kw={"agreement": {"patch": 3}})
    assert calls == [(wd_path, ["4", "16"], {"patch": 3})]
    sec = rep["machines"]
    assert sec.title == "Local score machines" and sec.data == {"r2": {"4": 0.5}}
    assert sec.figures == ("machines.png",)
    out = os.path.join(wd_path, "study")
    with open(os.path.join(out, "report.md")) as f:
        assert "Local score machines" in f.read()
    with open(os.path.join(out, "report.html")) as f:
        page = f.read()
    assert "<td>0.5</td>" in page and 'src="data:image/png;base64,' in page
    again = k_sweep.run(tiny_config(), wd_path, stages=("machines", "report"), progress=False,
                        log=None, section_kw={"agreement": {"patch": 3}})
    assert again.statuses == {"machines": "skipped", "report": "skipped"} and len(calls) == 1


def test_bad_stage_names_the_valid_ones():
    with pytest.raises(InputError, match="valid stages.*classify"):
        k_sweep.check_stages(["train", "clasify"])
    assert k_sweep.check_stages(["report", "train"]) == ("train", "report")  # pipeline order
    assert (
        "machines" not in k_sweep.DEFAULT_STAGES and "training_time" not in k_sweep.DEFAULT_STAGES
    )


def test_missing_dataset_says_what_to_fetch(tmp_path):
    c = configlib.load_config_file(os.path.join(REPO, "configs/fmnist.py") + ":k=10")
    c.data.source = f"fmnist:{tmp_path / 'nowhere'}"
    with pytest.raises(DiffmemError, match="dataset-fashion-mnist"):
        k_sweep.run(c, str(tmp_path / "w"), progress=False, log=None)
    assert not os.path.exists(tmp_path / "w")   # nothing written


def test_emm_on_the_grid_and_bootstrap_intervals():
    r = k_sweep.emm_on_grid({2: 1.0, 8: 0.95, 32: 0.5, 128: 0.1})
    assert r["k"] == 8 and r["bracket"] == [8, 32] and r["status"] == "bracketed"
    frac = (0.95 - 0.9) / (0.95 - 0.5)
    assert r["k_crossing"] == pytest.approx(
        math.exp(math.log(8) + frac * (math.log(32) - math.log(8)))
    )
    assert k_sweep.emm_on_grid({2: 0.5})["k"] is None
    assert k_sweep.emm_on_grid({2: 1.0, 8: 0.99})["status"] == "above_grid"
    ci = k_sweep.bootstrap_fractions(np.zeros(50, np.int8))
    assert ci["memorized"] == [1.0, 1.0] and ci["generalized"] == [0.0, 0.0]
    labels = np.array([0] * 50 + [2] * 50, np.int8)
    lo, hi = k_sweep.bootstrap_fractions(labels)["memorized"]
    # binomial sd 0.05
    assert lo < 0.5 < hi and hi - lo == pytest.approx(2 * 1.96 * 0.05, abs=0.04)


def test_jacobian_models_and_quick_preset():
    names = ["2", "8", "32", "128", "512"]
    ks = {n: int(n) for n in names}
    assert k_sweep.rank_names(names, ks, None) == ["2", "32", "512"]   # smallest, middle, largest
    assert k_sweep.rank_names(names[:2], ks, None) == ["2", "8"]
    assert k_sweep.rank_names(names, ks, [128, 8]) == ["128", "8"]
    with pytest.raises(InputError, match="not in the sweep"):
        k_sweep.rank_names(names, ks, [100])
    c = k_sweep.quick_config(tiny_config(k="2+8+32", steps=6000))
    assert tuple(c.data.k) == k_sweep.QUICK_KS and c.steps == k_sweep.QUICK_STEPS
    assert c.log_every <= c.steps and c.ckpt_every <= c.steps and c.steps % c.steps_per_call == 0


def test_training_time_stage_makes_the_train_stage_keep_snapshots():
    c = configlib.load_config_file(os.path.join(REPO, "configs/digits.py") + ":k=8+32")
    plain = k_sweep.study_config(c, k_sweep.DEFAULT_STAGES, steps=200)
    assert plain.steps == 200 and not (plain.get("monitor") and plain.monitor.get("snapshots"))
    timed = k_sweep.study_config(c, ("train", "training_time"), steps=200)
    snaps = list(timed.monitor.snapshots)
    assert timed.steps == 200 and len(snaps) >= 2 and snaps == sorted(snaps) and snaps[-1] <= 200
