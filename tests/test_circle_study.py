"""The circle study runs end to end on a tiny budget and writes its figures and report."""
import json
import os

import ml_collections
import numpy as np
import pytest

from diffmem import configlib
from diffmem.data import toy
from diffmem.studies import circle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_classify_centres_rules():
    pats = np.array([[1.0, 0.0], [0.0, 1.0]])
    centres = np.array([[0.98, 0.01], [0.7071, 0.7071], [0.5, 0.5], [0.0, 0.0]])
    kinds = circle.classify_centres(centres, np.array([50, 30, 15, 1]),
                                    np.array([0.02, 0.3, 0.05, 0.01]), pats, delta_m=0.1,
                                    delta_s=0.1, min_frac=0.05)
    assert kinds == ["memorized", "generalized", "spurious", "transient"]
    labels, cents, counts, spreads = circle.cluster(
        np.array([[0, 0], [0.1, 0], [5, 5], [5.1, 5]], float), 1.0
    )
    assert sorted(counts.tolist()) == [2, 2] and len(cents) == 2
    np.testing.assert_allclose(spreads, 0.05)


def on_circle(angles, radius=1.0):
    return (np.asarray(radius)[..., None] * np.stack([np.cos(angles), np.sin(angles)], -1)).astype(
        np.float32
    )


def test_calibrated_labels_scale_with_the_training_spacing():
    """The published behaviour on stand-in sample sets with the trained sampler's noise (0.02): K =
    2 samples around the training points are memorized; K = 9 samples collapsing on midpoints
    between neighbouring training points form spurious clusters; K = 1000 samples spread along the
    circle are generalized -- where the tutorial's fixed delta_m = 0.1 calls every K = 1000 cluster
    memorized."""
    rng = np.random.default_rng(0)
    st = ml_collections.ConfigDict(dict(delta_m=0.1, delta_s=0.1, min_cluster_frac=0.01))
    fresh = toy.circle_pool(20_000, seed=1)  # fresh draws of the data process

    def labels(k, samples, threshold):
        pats = on_circle(2 * np.pi * np.arange(k) / k)
        return circle.calibrated_labels(
            samples, pats, fresh, circle.cluster(samples, threshold), st
        )

    noise = lambda n: rng.normal(0, 0.02, (n, 2)).astype(np.float32)
    rec2, kinds2, _ = labels(2, on_circle(np.pi * rng.integers(0, 2, 600)) + noise(600), 3.0)
    assert rec2["fractions"]["memorized"] >= 0.9 and kinds2 == ["memorized", "memorized"]
    # 10% of U[0, pi/2]
    assert rec2["thresholds"]["delta_m"] == pytest.approx(2 * np.sin(0.1 * np.pi / 4), rel=0.1)
    mid = 2 * np.pi * (np.arange(3) + 0.5) / 9  # between training points 0-1, 1-2, 2-3
    angles9 = np.concatenate([np.repeat(mid, 150), 2 * np.pi * np.repeat(np.arange(4, 9), 60) / 9])
    rec9, kinds9, _ = labels(9, on_circle(angles9) + noise(len(angles9)), 2.0)
    assert sorted(kinds9) == ["memorized"] * 5 + ["spurious"] * 3
    assert rec9["fractions"]["spurious"] == pytest.approx(0.6, abs=0.01)
    rec1k, kinds1k, fixed1k = labels(
        1000, on_circle(rng.uniform(0, 2 * np.pi, 1500), 1 + rng.normal(0, 0.02, 1500)), 0.45
    )
    assert rec1k["fractions"]["generalized"] >= 0.95 and set(kinds1k) == {"generalized"}
    assert (
        set(fixed1k) == {"memorized"} and rec1k["tutorial"]["sample_fraction"]["memorized"] == 1.0
    )
    scales = [r["thresholds"]["spread_scale"] for r in (rec2, rec9, rec1k)]
    # median of U[0, pi/K]
    assert scales[0] > scales[1] > scales[2] and scales[2] == pytest.approx(np.pi / 2000, rel=0.1)


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
        assert (
            abs(sum(s["sample_fraction"].values()) - 1) < 1e-9
            and abs(sum(s["fractions"].values()) - 1) < 1e-9
        )
        assert (
            s["thresholds"]["method"] == "heldout"
            and s["thresholds"]["quantile"] == circle.QUANTILE
        )
        assert abs(sum(s["tutorial"]["sample_fraction"].values()) - 1) < 1e-9
        assert all(c["tutorial_kind"] in circle.KINDS + ("transient",) for c in s["centres"])
    # delta_m shrinks with the training-point spacing.
    assert (
        saved["models"]["9"]["thresholds"]["delta_m"]
        < saved["models"]["2"]["thresholds"]["delta_m"]
    )
    # The closed-form empirical model of K = 2 points memorizes: every sample copies a training
    # point.
    assert saved["empirical"]["2"]["sample_fraction"]["memorized"] == 1.0
    assert saved["empirical"]["2"]["fractions"]["memorized"] == 1.0
    assert -1 <= summary["exact_comparison"]["grid_correlation"] <= 1
