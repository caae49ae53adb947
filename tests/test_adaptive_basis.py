"""Adaptive-basis analysis against a Wiener (linear) denoiser, where J, its eigen-decomposition, tr
J and the SURE identity are exact; Euler's identity on a bias-free net; Hutchinson's trace; the MSE
slope."""
import jax
import jax.numpy as jnp
import numpy as np

from diffmem.metrics import adaptive_basis as ab


def _wiener(n=16, sigma=0.5, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    cov = a @ a.T / n + 0.05 * np.eye(n)
    # E[x | y] for x ~ N(0, C), y = x + sigma z
    w = cov @ np.linalg.inv(cov + sigma ** 2 * np.eye(n))
    wj = jnp.asarray(w)
    return cov, w, lambda y, s: (y.reshape(y.shape[0], -1) @ wj.T).reshape(y.shape)


def test_wiener_eigenbasis_trace_and_euler(x64):
    sigma = 0.5
    cov, w, D = _wiener(sigma=sigma)
    y = jnp.asarray(np.random.default_rng(1).normal(size=(4, 4, 1)))
    clean = jnp.asarray(np.random.default_rng(2).normal(size=(4, 4, 1)))
    a = ab.analyse(D, y, sigma, clean=clean)
    c_eig = np.sort(np.linalg.eigvalsh(cov))[::-1]
    # shrinkage factors
    np.testing.assert_allclose(a["eigenvalues"], c_eig / (c_eig + sigma ** 2), rtol=1e-10)
    assert a["asymmetry"] < 1e-12 and a["euler_residual"] < 1e-12
    assert abs(a["trace"] - np.trace(w)) < 1e-10
    np.testing.assert_allclose(a["eigenvectors"] @ a["coefficients"], np.ravel(clean), atol=1e-10)


def test_sure_is_unbiased_for_the_wiener_denoiser(x64):
    sigma, n = 0.5, 16
    cov, w, D = _wiener(sigma=sigma)
    exact_mse = (
        np.trace((w - np.eye(n)) @ cov @ (w - np.eye(n)).T) + sigma**2 * np.trace(w @ w.T)
    ) / n
    rng = np.random.default_rng(3)
    x = rng.multivariate_normal(np.zeros(n), cov, size=20000)
    y = jnp.asarray((x + sigma * rng.normal(size=x.shape)).reshape(-1, 4, 4, 1))
    est = ab.sure(D, y, sigma, trace=np.full(len(x), np.trace(w)))
    assert abs(est.mean() - exact_mse) < 4 * est.std() / np.sqrt(len(est))
    # The exact-Jacobian trace path gives the same per-image values.
    np.testing.assert_allclose(ab.sure(D, y[:3], sigma), est[:3], rtol=1e-10)


def test_hutchinson_trace_of_an_asymmetric_map():
    a = jnp.asarray(
        np.diag(np.linspace(0.1, 2.0, 16)) + 0.01 * np.random.default_rng(0).normal(size=(16, 16)),
        jnp.float32,
    )
    D = lambda y, s: (y.reshape(y.shape[0], -1) @ a.T).reshape(y.shape)
    est = ab.hutchinson_trace(D, jnp.ones((4, 4, 1)), 0.1, jax.random.key(0), num_probes=2000)
    assert abs(est - float(jnp.trace(a))) < 0.02 * float(jnp.trace(a))


def test_bias_free_net_satisfies_euler_and_is_not_symmetric(x64, tmp_path):
    from diffmem import nets
    from diffmem.nets import bfcnn
    net = nets.BFCNN(num_layers=3, num_kernels=4)
    y = jax.random.uniform(jax.random.key(0), (1, 6, 6, 1), jnp.float64)
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), y))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape) + (1 if s.ndim == 1 else 0)), shapes
    )
    d01 = bfcnn.unit_range_denoiser(net, variables)
    a = ab.analyse(lambda v, s: d01(v), y[0], 0.1, clean=y[0])
    assert a["euler_residual"] < 1e-10 and a["asymmetry"] > 1e-3
    assert ab.eigenvector_panel(str(tmp_path / "e.png"), a, (6, 6), ks=[0, 5, 35])


def test_mse_slope():
    assert (
        abs(ab.c_alpha_optimal_slope(1.0) - 1.0) < 1e-12
        and abs(ab.c_alpha_optimal_slope(3.0) - 1.5) < 1e-12
    )
    sig = np.logspace(-2, 0, 6)
    # identity: sigma^2
    mses = ab.mse_vs_sigma(lambda y, s: y, jnp.zeros((64, 8, 8, 1)), sig, jax.random.key(0))
    assert abs(ab.mse_slope(sig, mses) - 2.0) < 0.02


def _linear(w):
    wj = jnp.asarray(w)
    return lambda y, s: (y.reshape(y.shape[0], -1) @ wj.T).reshape(y.shape)


def test_matrix_free_top_eigenpairs_of_a_linear_denoiser(x64):
    # W = Q diag(lambda) Q^T + A, A antisymmetric: a known, well-separated spectrum of the symmetric
    # part (an indefinite tail) and a large asymmetry; the estimate must target (W + W^T)/2 = Q
    # diag(lambda) Q^T.
    n, k = 144, 6
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(n, n)))[0]
    lam = np.concatenate([[1.0, 0.9, 0.8, 0.7, 0.6, 0.5], np.linspace(0.2, -0.1, n - 6)])
    b = rng.normal(size=(n, n))
    w = q @ np.diag(lam) @ q.T + 0.3 * (b - b.T) / np.sqrt(n)
    D, y = _linear(w), jnp.asarray(rng.normal(size=(12, 12, 1)))
    ev, vecs, res = (
        np.asarray(a) for a in ab.top_eigenpairs(D, y, 0.1, k, jax.random.key(1), iters=6)
    )
    # 7 blocks of 14: a 98-dimensional subspace of R^144
    np.testing.assert_allclose(ev, lam[:k], atol=1e-10)
    # e_k = +-q_k
    np.testing.assert_allclose(np.abs(np.sum(vecs * q[:, :k], axis=0)), 1.0, atol=1e-8)
    # the residual bounds the error
    assert np.max(res) < 1e-4 and np.all(np.abs(ev - lam[:k]) <= res + 1e-12)
    exact = ab.analyse(D, y, 0.1, clean=y, method="exact")
    np.testing.assert_allclose(exact["eigenvalues"][:k], lam[:k], atol=1e-12)
    mf = ab.analyse(D, y, 0.1, clean=y, method="matrix_free", k=k, key=jax.random.key(1),
                    num_probes=256, iters=6)
    np.testing.assert_allclose(mf["eigenvalues"], exact["eigenvalues"][:k], atol=1e-10)
    np.testing.assert_allclose(
        np.abs(np.sum(mf["eigenvectors"] * exact["eigenvectors"][:, :k], axis=0)), 1.0, atol=1e-8
    )
    np.testing.assert_allclose(
        np.abs(mf["coefficients"]), np.abs(exact["coefficients"][:k]), atol=1e-3
    )
    assert (
        mf["jacobian"] is None and mf["euler_residual"] < 1e-12 and exact["euler_residual"] < 1e-12
    )
    assert abs(mf["trace"] - np.trace(w)) < 0.2 * abs(np.trace(w)) + 1.0  # Hutchinson estimates
    assert 0.7 * exact["asymmetry"] < mf["asymmetry"] < 1.4 * exact["asymmetry"]
    assert ab.analyse(D, y, 0.1)["method"] == "exact"  # auto at n = 144


def test_matrix_free_top_eigenvalues_of_a_bias_free_net(x64):
    from diffmem import nets
    from diffmem.nets import bfcnn
    net = nets.BFCNN(num_layers=3, num_kernels=4)
    y = jax.random.uniform(jax.random.key(0), (1, 8, 8, 1), jnp.float64)  # n = 64
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), y))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape) + (1 if s.ndim == 1 else 0)), shapes
    )
    d01 = bfcnn.unit_range_denoiser(net, variables)
    D = lambda v, s: d01(v)
    exact = ab.analyse(D, y[0], 0.1, method="exact")
    k = 4  # one block of 4, 12 Krylov steps: a 52-dimensional subspace of R^64
    lam, vecs, res = ab.top_eigenpairs(D, y[0], 0.1, k, jax.random.key(3), oversample=0, iters=12)
    lam, vecs, res = (np.asarray(a) for a in (lam, vecs, res))
    top = exact["eigenvalues"][:k]
    np.testing.assert_allclose(lam, top, rtol=1e-6)
    assert np.all(np.abs(lam - top) <= res + 1e-12)  # the residual bounds the eigenvalue error
    # separated: the eigenvectors are determined
    assert np.min(-np.diff(exact["eigenvalues"][:k + 1])) > 0.1
    np.testing.assert_allclose(
        np.abs(np.sum(vecs * exact["eigenvectors"][:, :k], axis=0)), 1.0, atol=1e-4
    )
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(k), atol=1e-12)

def test_matrix_free_validates_inputs():
    import pytest
    from diffmem.errors import InputError
    with pytest.raises(InputError):
        ab.analyse(lambda y, s: y, jnp.ones((2, 2, 1)), 0.1, method="dense")
    with pytest.raises(InputError):
        ab.top_eigenpairs(lambda y, s: y, jnp.ones((2, 2, 1)), 0.1, k=5)
