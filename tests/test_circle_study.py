"""The circle study runs end to end on a tiny budget and writes its figures and report."""
import json
import os

import numpy as np

from diffmem import configlib
from diffmem.studies import circle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_classify_centres_rules():
    pats = np.array([[1.0, 0.0], [0.0, 1.0]])
    centres = np.array([[0.98, 0.01], [0.7071, 0.7071], [0.5, 0.5], [0.0, 0.0]])
    kinds = circle.classify_centres(centres, np.array([50, 30, 15, 1]), np.array([0.02, 0.3, 0.05, 0.01]), pats,
                                    delta_m=0.1, delta_s=0.1, min_frac=0.05)
    assert kinds == ["memorized", "generalized", "spurious", "transient"]
    labels, cents, counts, spreads = circle.cluster(np.array([[0, 0], [0.1, 0], [5, 5], [5.1, 5]], float), 1.0)
    assert sorted(counts.tolist()) == [2, 2] and len(cents) == 2
    np.testing.assert_allclose(spreads, 0.05)


def test_study_end_to_end_small(tmp_path, one_device):
    c = configlib.load_config_file(os.path.join(REPO, "configs/circle.py") + ":k=2+9,steps=300")
    c.model.hidden, c.model.embed = 32, 16
    c.steps_per_call, c.log_every, c.ckpt_every = 100, 100, 300
    c.sample.num = 100
    c.study.grid, c.study.attractor_starts, c.study.lik_tol = 12, 50, 1e-4
    summary = circle.run(c, str(tmp_path), progress=False)
    out = tmp_path / "study"
    for f in ("report.json", "report.md", "landscapes_trained.png", "landscapes_empirical.png",
              "surfaces_trained.png", "exact_vs_model.png", "exact_vs_model_radial.png"):
        assert (out / f).exists(), f
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["models"]) == {"2", "9"}
    for s in saved["models"].values():
        assert abs(sum(s["sample_fraction"].values()) - 1) < 1e-9
    # The closed-form empirical model of K = 2 points memorizes: every sample copies a training point.
    assert saved["empirical"]["2"]["sample_fraction"]["memorized"] == 1.0
    assert -1 <= summary["exact_comparison"]["grid_correlation"] <= 1
