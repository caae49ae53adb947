"""Energies, the empirical denoiser (streamed), the circle's Bessel energy and attractors."""
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from diffmem import energy
from diffmem.data import toy


def brute_denoiser(x, y, sigma):
    d2 = ((x[:, None, :] - y[None]) ** 2).sum(-1) / (2 * sigma**2)
    w = np.exp(-(d2 - d2.min(1, keepdims=True)))
    w /= w.sum(1, keepdims=True)
    return w @ y


def test_empirical_denoiser_equals_brute_force_and_chunks_agree(x64):
    rng = np.random.default_rng(0)
    y = rng.normal(size=(103, 5))
    x = rng.normal(size=(7, 5)) * 2
    sig = np.array([0.1, 0.3, 0.5, 1.0, 2.0, 5.0, 0.05])
    want = np.stack([brute_denoiser(x[i:i + 1], y, s)[0] for i, s in enumerate(sig)])
    for chunk in (None, 1, 10, 64, 103, 500):
        got = energy.empirical_denoiser(jnp.asarray(y), chunk)(jnp.asarray(x), jnp.asarray(sig))
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_energies_and_scores_are_consistent(x64):
    rng = np.random.default_rng(1)
    y = jnp.asarray(rng.normal(size=(30, 3)))
    x = jnp.asarray(rng.normal(size=(4, 3)))
    beta, t, sigma = 2.5, 0.3, 1.5
    d2 = np.asarray(((x[:, None] - y[None]) ** 2).sum(-1))
    np.testing.assert_allclose(energy.dense_am_energy(x, y, beta),
                               -scipy.special.logsumexp(-beta * d2, axis=1) / beta, rtol=1e-12)
    v = 2 * sigma**2 * t
    np.testing.assert_allclose(energy.diffusion_energy(x, t, y, sigma, chunk=7),
                               -v * scipy.special.logsumexp(-d2 / v, axis=1), rtol=1e-12)
    # grad E_DM = -2 sigma^2 t * score of the noised empirical distribution (std^2 = sigma^2 t).
    grad = jax.vmap(jax.grad(lambda xi: energy.diffusion_energy(xi[None], t, y, sigma)[0]))(x)
    score = energy.empirical_score(y, lambda tt: sigma * jnp.sqrt(tt))(x, jnp.full((4,), t))
    np.testing.assert_allclose(grad, -2 * sigma**2 * t * score, rtol=1e-9, atol=1e-12)
    # Empirical score equals the zero-variance Gaussian-mixture score.
    mix = toy.GaussianMixture.isotropic(y, 0.0)
    from diffmem.sde import VESDE

    np.testing.assert_allclose(
        score, mix.score_fn(VESDE(sigma_max=sigma))(x, jnp.full((4,), t)), rtol=1e-8
    )


def test_streaming_large_pattern_set_matches_unchunked():
    rng = np.random.default_rng(2)
    y = jnp.asarray(rng.normal(size=(5000, 64)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(16, 64)), jnp.float32)
    s = jnp.full((16,), 8.0)
    np.testing.assert_allclose(energy.empirical_denoiser(y, 512)(x, s),
                               energy.empirical_denoiser(y, 5000)(x, s), rtol=2e-4, atol=2e-5)


def test_default_chunk_is_bounded_and_equals_brute_force(x64, monkeypatch):
    """chunk=None streams DEFAULT_CHUNK patterns at a time (never all N at once) and equals the
    unchunked brute force in float64 (the default made small so this small case spans 3 chunks, the
    last padded)."""
    monkeypatch.setattr(energy, "DEFAULT_CHUNK", 40)
    rng = np.random.default_rng(3)
    y, x = rng.normal(size=(103, 3)), rng.normal(size=(6, 3)) * 1.5
    ys, valid = energy._chunked(jnp.asarray(y), None)
    assert ys.shape == (3, 40, 3) and int(valid.sum()) == 103
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    beta, t, sigma = 1.7, 0.4, 1.2
    v = 2 * sigma**2 * t
    np.testing.assert_allclose(energy.dense_am_energy(jnp.asarray(x), jnp.asarray(y), beta),
                               -scipy.special.logsumexp(-beta * d2, axis=1) / beta, rtol=1e-12)
    np.testing.assert_allclose(energy.diffusion_energy(jnp.asarray(x), t, jnp.asarray(y), sigma),
                               -v * scipy.special.logsumexp(-d2 / v, axis=1), rtol=1e-12)
    np.testing.assert_allclose(
        energy.empirical_denoiser(jnp.asarray(y))(jnp.asarray(x), jnp.full((6,), 0.7)),
        brute_denoiser(x, y, 0.7),
        rtol=1e-10,
        atol=1e-12,
    )
    # The real default bounds a chunk too: N = 5000 patterns stream in ceil(5000 / DEFAULT_CHUNK)
    # chunks.
    monkeypatch.undo()
    ys, _ = energy._chunked(jnp.zeros((5000, 2)), None)
    assert ys.shape[1] == energy.DEFAULT_CHUNK < 5000


def test_circle_energy_matches_bessel_and_survives_large_beta(x64):
    r = np.linspace(0.05, 1.8, 40)
    x = np.stack([r * np.cos(0.3), r * np.sin(0.3)], 1)
    beta = 20.0
    want = r**2 + 1 - np.log(scipy.special.i0(2 * beta * r)) / beta
    np.testing.assert_allclose(energy.circle_energy(x, beta), want, rtol=1e-10)
    np.testing.assert_allclose(energy.circle_energy_numpy(r, beta), want, rtol=1e-10)
    big = np.asarray(energy.circle_energy(x, 1e4))
    assert np.all(np.isfinite(big))
    # beta -> infinity: E -> (R - 1)^2 (plus O(log(beta R) / beta)).
    np.testing.assert_allclose(big, (r - 1) ** 2, atol=2e-3)
    # Score = -grad E.
    g = jax.vmap(jax.grad(lambda xi: energy.circle_energy(xi[None], beta)[0]))(jnp.asarray(x))
    np.testing.assert_allclose(energy.circle_score(x, beta), -g, rtol=1e-8, atol=1e-10)
    assert np.all(np.isfinite(np.asarray(energy.circle_score(x, 1e4))))


def test_attractors_known_cases(x64):
    far = jnp.array([[-1.0, 0.0], [1.0, 0.0]])
    starts = jnp.asarray(np.random.default_rng(3).normal(size=(50, 2)))
    out = energy.find_attractors(far, 0.2, starts)
    assert set(out["kind"]) == {"stored"} and len(out["points"]) == 2
    np.testing.assert_allclose(np.sort(out["points"][:, 0]), [-1, 1], atol=1e-6)
    close = jnp.array([[-0.1, 0.0], [0.1, 0.0]])
    out = energy.find_attractors(close, 1.0, starts)
    assert list(out["kind"]) == ["spurious"] and out["counts"][0] == 50
    np.testing.assert_allclose(out["points"][0], [0, 0], atol=1e-6)


def test_spurious_states_appear_as_k_grows():
    """K points on the unit circle at fixed sigma: few points are all stored; many create spurious
    states."""
    sigma = 0.25
    counts = {}
    for k in (2, 16):
        pats = jnp.asarray(toy.circle_subset(k))
        starts = jnp.asarray(
            np.random.default_rng(4).uniform(-1.5, 1.5, size=(300, 2)), jnp.float32
        )
        out = energy.find_attractors(pats, sigma, starts, merge_tol=1e-2)
        counts[k] = int(np.sum(out["kind"] == "spurious"))
    assert counts[2] == 0 and counts[16] >= 1, counts


def test_relative_energy_converges_to_exact_difference(x64):
    y = jnp.asarray(np.random.default_rng(5).normal(size=(6, 2)))
    beta = 1.5
    e = lambda x: energy.dense_am_energy(x, y, beta)
    grad = jax.vmap(jax.grad(lambda xi: e(xi[None])[0]))
    x, r = jnp.array([[0.2, 0.1]]), jnp.array([[-1.0, 0.7]])
    rel = energy.relative_energy(grad, x, r, num=400)
    np.testing.assert_allclose(rel[0, -1], e(r)[0] - e(x)[0], rtol=1e-4)
    assert rel.shape == (1, 400) and rel[0, 0] == 0
