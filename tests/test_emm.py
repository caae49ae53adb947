"""Effective model memorization: bracketing and bisection on a monotone synthetic ratio(K) give the
exact answer and reuse known results; the per-K driver trains only missing K (injected runner),
reuses finished classifications on reruns, refuses a K workdir of another config; bin/emm.py end to
end on finished runs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from diffmem import builders, configlib, report
from diffmem.metrics import memorization
from diffmem.studies import memorization as mm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smooth_ratio(k):
    """A monotone ratio crossing 0.9 between K = 577 and 578: 1 / (1 + (K / 1000)^4)."""
    return 1.0 / (1.0 + (k / 1000.0) ** 4)


def test_find_emm_bisects_to_the_exact_k_and_reuses_results():
    truth = max(k for k in range(1, 5000) if smooth_ratio(k) >= 0.9)
    assert truth == 577
    calls, saved = [], []

    def ratio_at(k):
        calls.append(k)
        return smooth_ratio(k)

    grid = [1600, 100, 200, 400, 800, 400]  # any order, duplicates ignored
    out = memorization.find_emm(ratio_at, grid, tolerance=0, on_result=saved.append)
    assert out["emm"] == truth and out["bracket"] == (577, 578) and out["status"] == "bracketed"
    assert len(calls) == len(set(calls)) and 1600 not in calls  # each K once; the scan stops at 800
    assert calls[:4] == [100, 200, 400, 800]
    assert [h["phase"] for h in out["history"]] == ["grid"] * 4 + ["bisect"] * (len(calls) - 4)
    assert out["history"][-1]["bracket"] == (577, 578) and len(saved) == len(calls)
    assert saved[-1]["status"] == "searching" and saved[-1]["history"] == out["history"]
    # A second search with the results as `known` evaluates nothing and gives the same answer.
    again = memorization.find_emm(lambda k: pytest.fail(f"K = {k} recomputed"), grid, tolerance=0,
                                  known=out["ratios"])
    assert again["emm"] == truth and all(h["reused"] for h in again["history"])
    # A relative tolerance stops early with a bracket around the answer.
    loose = memorization.find_emm(smooth_ratio, grid, tolerance=0.05)
    lo, hi = loose["bracket"]
    assert lo <= truth < hi and (hi - lo) / lo <= 0.05
    assert memorization.find_emm(smooth_ratio, [1000, 2000])["status"] == "below_grid"
    assert memorization.find_emm(smooth_ratio, [10, 20])["status"] == "above_grid"
    with pytest.raises(ValueError, match="level"):
        memorization.find_emm(smooth_ratio, [10], level=1.5)
    with pytest.raises(ValueError, match="empty"):
        memorization.find_emm(smooth_ratio, [])


CUT = 40  # the fake models below memorize up to K = 40 and produce new images beyond


def digits_config():
    return configlib.load_config_file(os.path.join(REPO, "configs/digits.py"))


def fake_train_and_sample(config, workdir, seeds, sampler):
    """Stands in for training + sampling: K <= CUT 'memorizes' (copies of training images), larger K
    produces new random images. Writes what the real runner would: config.json and
    samples/<K>.npz."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(configlib.to_json(config))
    spec = builders.model_specs(config)[0]
    n = len(seeds)
    if spec.k <= CUT:
        samples = spec.data[np.arange(n) % spec.k]
    else:
        samples = np.random.default_rng(spec.k).uniform(-1, 1, (n,) + spec.data.shape[1:])
    report.write_npz(os.path.join(workdir, "samples", f"{spec.name}.npz"),
                     samples=samples.astype(np.float32), seeds=np.asarray(seeds, np.int64),
                     step=np.int64(config.steps), sampler=np.str_(sampler))


PIXEL = dict(metric="pixel", delta_m=0.5, delta_s=0.5)


def test_emm_driver_trains_missing_k_only_and_reuses_finished_runs(tmp_path):
    root, config, trained = str(tmp_path / "emm"), digits_config(), []

    def runner(c, w, seeds, sampler):
        trained.append(c.data.k)
        assert (
            w == os.path.join(root, f"k{c.data.k}")
            and sampler == "ddpm_ancestral"
            and len(seeds) == 8
        )
        fake_train_and_sample(c, w, seeds, sampler)

    kw = dict(seeds=np.arange(8), tolerance=0, figures=False, log=None, **PIXEL)
    out = mm.emm(root, config, [8, 16, 32, 64], runner=runner, **kw)
    result = out["result"]
    assert result["emm"] == CUT and result["bracket"] == (CUT, CUT + 1)
    assert sorted(trained) == sorted(int(k) for k in result["ratios"]) and len(trained) == len(
        set(trained)
    )
    saved = json.loads(open(os.path.join(root, "emm.json")).read())
    assert saved["result"]["emm"] == CUT and saved["settings"]["k_grid"] == [8, 16, 32, 64]
    assert [h["k"] for h in saved["result"]["history"]] == trained
    assert {r["source"] for r in saved["runs"].values()} == {"trained and sampled"}
    assert saved["runs"]["16"]["ratio"] == 1.0 and saved["runs"]["64"]["ratio"] == 0.0
    assert os.path.exists(os.path.join(root, f"k{CUT}", "classify", f"{CUT}.json"))
    # Rerun: nothing is trained; finished classifications are reused (or recomputed from the
    # samples).
    os.remove(os.path.join(root, "k16", "classify", "16.json"))
    again = mm.emm(root, config, [8, 16, 32, 64], runner=lambda *a: pytest.fail("retrained"), **kw)
    assert again["result"]["emm"] == CUT
    assert again["runs"]["16"]["source"] == "samples reused"
    assert {r["source"] for k, r in again["runs"].items() if k != "16"} == {"classification reused"}
    # A K workdir trained with another config is refused, not mixed in.
    other = configlib.from_json(configlib.to_json(config))
    other.steps = 123
    with pytest.raises(configlib.ConfigError, match=r"differs in \['steps'\]"):
        mm.emm(root, other, [8, 16], runner=runner, **kw)
    with pytest.raises(ValueError, match=">= 2"):
        mm.emm(root, config, [1, 8], runner=runner, **kw)


def test_emm_script_end_to_end_on_finished_runs(tmp_path):
    root, config = tmp_path / "emm", digits_config()
    for k in (8, 16, 64):
        fake_train_and_sample(
            mm.config_for_k(config, k), str(root / f"k{k}"), np.arange(8), "ddpm_ancestral"
        )
    cmd = [sys.executable, os.path.join(REPO, "bin", "emm.py"),
           "--config=" + os.path.join(REPO, "configs/digits.py"), f"--root={root}",
           "--k_grid=8,16,64", "--tolerance=4", "--metric=pixel", "--delta_m=0.5", "--delta_s=0.5",
           "--num=8"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((root / "emm.json").read_text())
    assert saved["result"]["emm"] == 16 and saved["result"]["bracket"] == [16, 64]
    assert {r["source"] for r in saved["runs"].values()} == {"samples reused"}
    assert "EMM = 16" in proc.stdout
