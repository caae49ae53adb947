"""The two-disjoint-sets study: metrics against brute force, and one tiny end-to-end run (train S1 /
S2, KS sampling from shared seeds, report) that also checks the trainer carries batch-norm
statistics and resumes."""
import os

import jax
import numpy as np
import pytest

from diffmem import configlib
from diffmem.studies import disjoint


def test_im_set_corr_and_closest_against_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 4, 4, 1)), rng.normal(size=(7, 4, 4, 1))
    b[5] = 3.0 * a[1] + 2.0  # same image up to gain and offset: similarity 1
    b[6] = 0.0               # zero norm after mean removal: replaced by 0.001, similarity 0
    c = disjoint.im_set_corr(a, b)
    for i in range(3):
        for j in range(7):
            u, v = a[i].ravel() - a[i].mean(), b[j].ravel() - b[j].mean()
            nv = np.linalg.norm(v) or 1e-3
            ref = u @ v / (np.linalg.norm(u) * nv)
            assert abs(c[i, j] - ref) < 1e-12
    assert abs(c[1, 5] - 1.0) < 1e-12
    idx, best = disjoint.closest(a, b)
    np.testing.assert_array_equal(idx, c.argmax(1))
    np.testing.assert_allclose(best, c.max(1))
    np.testing.assert_allclose(disjoint.paired_corr(a, b[:3]), np.diag(c[:, :3]))


def test_ns_capped_at_half_the_pool():
    config = configlib.load_config_file("configs/kadkhodaie.py:data=digits,n=1+10+1000+5000")
    assert disjoint.capped_ns(config, 1797) == (1, 10, 898)
    assert disjoint.set_config(config, "last", (1, 898)).data.subset == "last"


@pytest.mark.slow
def test_end_to_end_tiny_digits(tmp_path, one_device):
    config = configlib.load_config_file(
        "configs/kadkhodaie.py:data=digits,n=4,blocks=1,kernels=4,batch=8,steps=6,epoch_images=16,"
        "halve_every=1,samples=2,max_iters=30")
    config.study.test_images = 8
    summary = disjoint.run_disjoint(config, str(tmp_path), progress=False)
    assert summary["ns"] == [4] and [r["steps"] for r in summary["rows"]] == [6]
    out = tmp_path / "disjoint"
    for name in ("report.md", "summary.json", "four_rows.png", "similarity_hist.png",
                 "psnr_vs_n.png", "N4.npz", "adaptive_basis_S1_N4.png"):
        assert (out / name).exists(), name
    z = np.load(out / "N4.npz")
    assert z["S1_samples"].shape == (2, 8, 8, 1) and z["S1_iterations"].shape == (2,)
    assert np.isfinite(z["S1_psnr_test"]).all() and z["S1_psnr_train"].shape == (10,)
    # S1 and S2 are disjoint ends of one order; each sample's closest image is scored within its own
    # set.
    c1 = disjoint.set_config(config, "first", (4,))
    c2 = disjoint.set_config(config, "last", (4,))
    from diffmem import builders, checkpoint, train
    s1, s2 = builders.model_specs(c1)[0], builders.model_specs(c2)[0]
    assert not set(s1.indices) & set(s2.indices)
    np.testing.assert_allclose(
        z["S1_closest_corr"], disjoint.im_set_corr(z["S1_samples"], s1.data).max(1)
    )
    # The trainer kept batch-norm running sds (not the initial ones) in the checkpoint, EMA = params
    # (no EMA).
    net = builders.build_model(c1, s1.data.shape[1:])
    like = train.init_state(net, builders.build_optimizer(c1), s1).as_dict()
    tree, step = checkpoint.restore_latest(str(tmp_path / "S1"), "4", like)
    sds = np.concatenate([np.ravel(v) for v in jax.tree.leaves(tree["params"]["batch_stats"])])
    assert step == 6 and np.abs(sds - 1.0).max() > 1e-4
    for a, b in zip(jax.tree.leaves(tree["params"]), jax.tree.leaves(tree["ema_params"])):
        np.testing.assert_array_equal(a, b)
    assert len(open(os.path.join(tmp_path, "S1", "metrics.jsonl")).read().splitlines()) >= 1
    b = summary["adaptive_basis"]
    # bias-free: D(y) = J y
    assert b["n"] == 64 and b["euler_residual"] < 1e-4 and np.isfinite(b["mse_slope"])
