"""Kadkhodaie-Simoncelli sampler: the closed-form noise recursion, the literal update, one noise
stream per seed, and non-converged samples (the max_iters cap) recorded in sample shards, warned
about and counted in studies."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import sampling


def test_recursion_counts_match_the_notes():
    assert [sampling.ks_recursion_iterations(1.0, beta=b) for b in (0.01, 0.1, 0.5)] == [662, 128,
                                                                                         48]


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_iterations_follow_the_closed_form_recursion(beta):
    # One training image: the empirical optimal denoiser is D(y) = x* for every y, so y_t - x* has
    # noise sigma_t = (1 - beta h_t) sigma_{t-1} up to O(1/sqrt(N)) fluctuations.
    shape = (48, 48, 1)
    x_star = jnp.asarray(np.random.default_rng(0).uniform(0, 1, shape), jnp.float32)
    denoiser = lambda y, s: jnp.broadcast_to(x_star, y.shape)
    seeds = np.array([3, 11])
    run = jax.jit(lambda s: sampling.kadkhodaie_simoncelli(denoiser, shape, s, beta=beta))
    r = run(seeds)
    assert bool(r.converged.all())
    np.testing.assert_allclose(r.samples, np.broadcast_to(x_star, (2,) + shape), atol=1e-6)
    for i, seed in enumerate(seeds):
        y0 = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 0), shape)
        s0 = float(jnp.linalg.norm(y0 - x_star) / math.sqrt(y0.size))
        expected = sampling.ks_recursion_iterations(s0, beta=beta)
        assert abs(int(r.iterations[i]) - expected) <= 2, (int(r.iterations[i]), expected)


def test_literal_update_and_shared_noise_stream_for_two_models():
    # Linear residuals f(y) = c y: three updates reconstructed in numpy from the documented noise
    # stream (y0 from fold_in(key, 0), z_t from fold_in(key, t)); two models with the same seeds use
    # the same stream.
    shape, h0, beta, T = (4, 4, 1), 0.3, 0.2, 3
    seed = 7
    key = jax.random.key(seed)
    y0 = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), shape), np.float64)
    zs = [
        np.asarray(jax.random.normal(jax.random.fold_in(key, t), shape), np.float64)
        for t in range(1, T + 1)
    ]
    for c in (0.3, 0.6):
        r = sampling.kadkhodaie_simoncelli(lambda y, s: (1 - c) * y, shape, np.array([seed]), h0=h0,
                                           beta=beta, sigma_L=1e-6, max_iters=T)
        y = y0.copy()
        for t in range(1, T + 1):
            h = h0 * t / (1 + h0 * (t - 1))
            d = c * y
            sigma = np.linalg.norm(d) / 4.0
            y = y - h * d + sigma * np.sqrt((1 - beta * h) ** 2 - (1 - h) ** 2) * zs[t - 1]
        assert int(r.iterations[0]) == T and not bool(r.converged[0])
        np.testing.assert_allclose(r.samples[0], (1 - c) * y, rtol=1e-5, atol=1e-6)


def test_sample_depends_only_on_its_seed_and_is_registered():
    shape = (4, 4, 1)
    d = lambda y, s: 0.5 * y
    both = sampling.kadkhodaie_simoncelli(d, shape, np.array([1, 2]), beta=0.5, max_iters=20)
    one = sampling.kadkhodaie_simoncelli(d, shape, np.array([2]), beta=0.5, max_iters=20)
    np.testing.assert_allclose(both.samples[1], one.samples[0], atol=1e-6)
    assert "ks" in sampling.SAMPLERS and sampling.SAMPLERS["ks"].settings["h0"] == 0.01


def test_registered_run_reports_convergence_beside_the_samples():
    """`run.info.packed` gives the same samples as `run` plus each sample's converged flag and
    iteration count (a cap of 3 updates: none converged, 3 iterations each); a bad cap is
    refused."""
    import types
    shape = (4, 4, 1)
    model = types.SimpleNamespace(
        shape=shape, data_range=(-1.0, 1.0), denoiser=lambda x, s: 0.5 * x
    )
    seeds = np.array([4, 9, 1])
    run = sampling.SAMPLERS["ks"].build(
        model, h0=0.01, beta=0.5, sigma_L=0.01, init_mean=0.0, max_iters=3
    )
    x, info = run.info.unpack(jax.jit(run.info.packed)(seeds))
    np.testing.assert_array_equal(x, np.asarray(jax.jit(run)(seeds)))
    assert [f for f, _ in run.info.fields] == ["converged", "iterations"] == sorted(info)
    assert info["converged"].dtype == bool and info["iterations"].dtype == np.int32
    assert info["converged"].tolist() == [False] * 3 and info["iterations"].tolist() == [3] * 3
    with pytest.raises(ValueError, match="max_iters"):
        sampling.SAMPLERS["ks"].build(
            model, h0=0.01, beta=0.5, sigma_L=0.01, init_mean=0.0, max_iters=0
        )


def test_not_converged_message():
    assert sampling.not_converged_message(np.ones(4, bool), 3000) is None
    msg = sampling.not_converged_message([True, False, False, True], 3000, "K=4 trained ks",
                                         iterations=[10, 3000, 12, 11])
    assert msg.startswith("K=4 trained ks: 2 of 4 samples did not converge within max_iters=3000")
    assert "1 of them stopped early" in msg and "sample.max_iters" in msg and "\n" not in msg


def test_shards_record_convergence_and_sampling_warns(tmp_path, one_device, capsys):
    """Through the sampling stage (the empirical optimal denoiser of a 4-image digits set, no
    training): a tiny cap leaves every sample unconverged, recorded per sample in the shard and read
    back merged with a second job's shard, with a one-line warning naming the count and the key to
    raise; the K-sweep study's sample record and report text count them."""
    from diffmem import configlib, generate, workdir as wdlib
    from diffmem.studies import k_sweep_report, k_sweep_results, k_sweep_stages
    import types
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = configlib.load_config_file(os.path.join(repo, "configs", "kadkhodaie.py")
                                        + ":data=digits,n=4,samples=3,max_iters=4")
    wd = str(tmp_path / "wd")
    generate.sample_workdir(wd, np.arange(3), model="optimal", config=config, progress=False)
    err = [line for line in capsys.readouterr().err.splitlines() if "converge" in line]
    assert err == [
        "WARNING: K=4 optimal ks: 3 of 3 samples did not converge within max_iters=4 (sigma "
        "estimate still above sigma_L); raise the cap with --config.sample.max_iters=... "
        "(configs/kadkhodaie.py: max_iters=...)."
    ]
    w = wdlib.Workdir(wd)
    (shard,) = w.sample_files("4", "optimal")
    z = np.load(shard)
    assert z["converged"].tolist() == [False] * 3 and z["iterations"].tolist() == [4] * 3
    generate.sample_workdir(wd, np.array([7, 5]), model="optimal", config=config, progress=False)
    data = w.read_samples("4", "optimal")
    assert data["seeds"].tolist() == [0, 1, 2, 5, 7] and len(data["files"]) == 2
    assert data["info"]["converged"].tolist() == [False] * 5
    assert data["info"]["iterations"].tolist() == [4] * 5
    # An interrupted job's batch saved without the diagnostics is recomputed, not reused.
    part = str(tmp_path / "part.npz")
    wdlib.write_shard(part, data["samples"][:2], data["seeds"][:2], data["settings"])
    assert generate._finished_batch(part, data["seeds"][:2], data["settings"], False) is not None
    assert generate._finished_batch(part, data["seeds"][:2], data["settings"], False,
                                    ["converged"]) is None
    # The study's sample record and report.
    ctx = types.SimpleNamespace(seeds=np.arange(3), progress=False, overwrite=False,
                                config=w.config,
                                settings=types.SimpleNamespace(sampler="config", sample_steps=None))
    sets = k_sweep_stages.sample_sets(ctx, w, kinds=("optimal",))
    assert sets["optimal"][4]["not_converged"] == 5 and sets["optimal"][4]["num"] == 5
    result = k_sweep_results.SampleResult(sets=sets)
    assert "did not converge within the sampler's max_iters: 5 (optimal K = 4: 5)" in \
        k_sweep_report.not_converged_text(result)
    assert k_sweep_report.not_converged_text(None) == ""
