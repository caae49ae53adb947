"""Geometry-adaptive harmonic bases (Kadkhodaie et al. 2024): the denoiser Jacobian at a noisy image
as an adaptive shrinkage, D(y) = J(y) y ~ sum_k lambda_k <y, e_k> e_k.

    # J, asymmetry, eigenvalues lambda_k (descending), e_k, <x, e_k>,
    a = analyse(D, y, sigma, clean=x)
                                               # tr J (effective dimension), Euler residual |J y -
                                               D(y)| / |D(y)|
    # top-16 only, from JVP/VJP products (n > 10^4: auto)
    a = analyse(D, y, sigma, method="matrix_free", k=16)
    # block Krylov + Rayleigh-Ritz on (J + J^T)/2
    lam, vecs, res = top_eigenpairs(D, y, sigma, 16, key)
    t = hutchinson_trace(D, y, sigma, key, 64) # tr J from Jacobian-vector products, for large n
    # SURE per image: |y - D|^2 + 2 sigma^2 tr J - n sigma^2 (per pixel)
    m = sure(D, y, sigma)
    # log-log slope of MSE vs sigma, beside c_alpha_optimal_slope(alpha)
    s = mse_slope(sigmas, mses)

D is the common denoiser D(x (B, *S), sigma (B,)); for a blind [0, 1] net pass its unit-range view.
The dense Jacobian comes from `diffmem.metrics.jacobian.denoiser_jacobian` (jacfwd; exact, float64
with x64; n up to ~10^4); eigh runs on its symmetric part (J is symmetric for an exact MMSE
denoiser; the asymmetry says how far a network is from that).

Beyond ~10^4 pixels (`EXACT_EIGEN_MAX_N`) the dense J does not fit; `top_eigenpairs` then gives the
leading
eigenpairs of S = (J + J^T)/2 matrix-free: S v = (J v + J^T v) / 2 with J v from jax.jvp and J^T v
    from jax.vjp
(one linearisation, vmapped over a block of b = k + oversample vectors), a randomized block Krylov
space [V, S V, ..., S^q V] with full re-orthogonalisation (randomized block Lanczos, Musco & Musco
2015), and Rayleigh-Ritz on it (the algebraically largest Ritz pairs, so an indefinite S is
handled). Jitted, in y's dtype. (`diffmem.metrics.jacobian.randomized_singular_values` is the
dense-matrix analogue for singular values.)
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffmem.errors import InputError
from diffmem.metrics.jacobian import denoiser_jacobian

__all__ = ["EXACT_EIGEN_MAX_N", "symmetric_jacobian_matvec", "top_eigenpairs", "analyse",
           "hutchinson_trace", "sure", "mse_vs_sigma", "mse_slope", "c_alpha_optimal_slope",
           "eigenvector_panel", "basis_report"]

# method="auto": dense jacfwd + eigh up to this many pixels, matrix-free beyond
EXACT_EIGEN_MAX_N = 10_000


def _flat_fn(denoiser, y, sigma):
    """v (n,) -> D(v reshaped like y; sigma) flattened (n,)."""
    shape, n = y.shape, math.prod(y.shape)
    sig = jnp.full((1,), sigma, y.dtype)
    return lambda v: denoiser(v.reshape((1,) + shape), sig).reshape(n)


def symmetric_jacobian_matvec(denoiser, y, sigma):
    """Returns (mv, d): mv(V (m, n)) -> (m, n) rows S v = (J v + J^T v) / 2 at y (*S), vmapped over
    rows, with one linearisation of D at y shared by all products; d = D(y) flattened (n,)."""
    y = jnp.asarray(y)
    f = _flat_fn(denoiser, y, sigma)
    yf = y.reshape(-1)
    d, jvp_fn = jax.linearize(f, yf)
    vjp_fn = jax.linear_transpose(jvp_fn, yf)
    mv = jax.vmap(lambda v: 0.5 * (jvp_fn(v) + vjp_fn(v)[0]))
    return mv, d


@functools.partial(jax.jit, static_argnames=("denoiser", "k", "oversample", "iters"))
def _top_eigenpairs(denoiser, y, sigma, key, k: int, oversample: int, iters: int):
    mv, _ = symmetric_jacobian_matvec(denoiser, y, sigma)
    n = y.size
    b = min(k + oversample, n)
    # the Krylov space [V, SV, ..., S^q V] has (q + 1) b <= n columns
    q = max(0, min(iters, n // b - 1))
    m = (q + 1) * b

    # rows of w made orthonormal and orthogonal to the rows of basis (two passes)
    def orth(w, basis):
        for _ in range(2):
            w = w - (w @ basis.T) @ basis  # the unfilled (zero) rows of basis do nothing
            w = jnp.linalg.qr(w.T)[0].T
        return w

    qb = (
        jnp.zeros((m, n), y.dtype)
        .at[:b]
        .set(orth(jax.random.normal(key, (b, n), y.dtype), jnp.zeros((1, n), y.dtype)))
    )
    sq = jnp.zeros((m, n), y.dtype)

    # one block of the Krylov space: S Q_i, then Q_{i+1} = orth(S Q_i) (fori_loop: one compile)
    def step(i, carry):
        qb, sq = carry
        w = mv(jax.lax.dynamic_slice_in_dim(qb, i * b, b))
        sq = jax.lax.dynamic_update_slice_in_dim(sq, w, i * b, 0)
        qb = jax.lax.dynamic_update_slice_in_dim(qb, orth(w, qb), (i + 1) * b, 0)
        return qb, sq

    qb, sq = jax.lax.fori_loop(0, q, step, (qb, sq))
    sq = jax.lax.dynamic_update_slice_in_dim(sq, mv(qb[q * b:]), q * b, 0)
    # qb (m, n): orthonormal rows spanning the Krylov space; sq (m, n): S applied to them
    t = qb @ sq.T
    lam, u = jnp.linalg.eigh(0.5 * (t + t.T))
    lam, u = lam[::-1][:k], u[:, ::-1][:, :k]
    vecs = qb.T @ u  # (n, k)
    res = jnp.linalg.norm(sq.T @ u - vecs * lam, axis=0)  # ||S e_k - lambda_k e_k||
    return lam, vecs, res


def top_eigenpairs(denoiser, y, sigma: float, k: int = 16, key=None, *, oversample: int = 8,
                   iters: int = 8):
    """The k algebraically largest eigenpairs of S = (J + J^T)/2, J = dD/dy at y (*S), without
    forming J.

    Randomized block Krylov with blocks of b = k + oversample vectors and `iters` applications of S
        (capped so
    that (iters + 1) b <= n), Rayleigh-Ritz on the span. Cost: (iters + 1) b JVP + VJP pairs.
    Returns jax arrays (eigenvalues (k,) descending, eigenvectors (n, k) orthonormal columns,
    residuals (k,) ||S e - lambda e||, which bound each lambda's error). Use float64 y under x64 for
    tight agreement with the dense result.
    """
    y = jnp.asarray(y)
    if not 1 <= k <= y.size:
        raise InputError(f"k must be in [1, n = {y.size}], got {k}.")
    key = jax.random.key(0) if key is None else key
    return _top_eigenpairs(denoiser, y, jnp.asarray(sigma, y.dtype), key, k, oversample, iters)


@functools.partial(jax.jit, static_argnames=("denoiser", "num_probes"))
def _probe_stats(denoiser, y, sigma, key, num_probes: int):
    """(D(y), J y, ||(J - J^T) V||_F / ||J V||_F, mean v^T J v) over Gaussian probes V (num_probes,
    n): E ||A v||^2 = ||A||_F^2 and E v^T J v = tr J, so the last two estimate the asymmetry and tr
    J."""
    f = _flat_fn(denoiser, y, sigma)
    yf = y.reshape(-1)
    d, jvp_fn = jax.linearize(f, yf)
    vjp_fn = jax.linear_transpose(jvp_fn, yf)
    probes = jax.random.normal(key, (num_probes, yf.size), y.dtype)
    jv = jax.vmap(jvp_fn)(probes)
    jtv = jax.vmap(lambda v: vjp_fn(v)[0])(probes)
    asym = jnp.linalg.norm(jv - jtv) / jnp.maximum(jnp.linalg.norm(jv), jnp.finfo(y.dtype).tiny)
    return d, jvp_fn(yf), asym, jnp.mean(jnp.sum(probes * jv, axis=1))


def _analyse_matrix_free(denoiser, y, sigma, clean, k, key, num_probes, iters):
    lam, vecs, res = top_eigenpairs(denoiser, y, sigma, k, key, iters=iters)
    d, jy, asym, trace = _probe_stats(
        denoiser, y, jnp.asarray(sigma, y.dtype), jax.random.fold_in(key, 1), num_probes
    )
    d, jy = np.asarray(d, np.float64), np.asarray(jy, np.float64)  # Euler: J y exactly, one JVP
    lam, vecs = np.asarray(lam, np.float64), np.asarray(vecs, np.float64)
    out = dict(jacobian=None, eigenvalues=lam, eigenvectors=vecs,
               residuals=np.asarray(res, np.float64), asymmetry=float(asym), trace=float(trace),
               euler_residual=float(np.linalg.norm(jy - d) / max(np.linalg.norm(d), 1e-300)),
               method="matrix_free")
    if clean is not None:
        out["coefficients"] = vecs.T @ np.asarray(clean, np.float64).ravel()
    return out


def analyse(denoiser, y, sigma: float, clean=None, *, method: str = "auto", k: int = 16, key=None,
            num_probes: int = 64, iters: int = 8) -> dict:
    """Adaptive-basis analysis of D at one noisy image y (*S).

    method "exact" (dense jacfwd + eigh; "auto" for n <= EXACT_EIGEN_MAX_N): returns numpy arrays:
    jacobian (n, n), asymmetry ||J - J^T||_F / ||J||_F, eigenvalues (n,) of (J + J^T)/2 sorted
    descending (the shrinkage factors lambda_k), eigenvectors (n, n) (column k = e_k), trace (tr J,
    the effective dimension), euler_residual ||J y - D(y)|| / ||D(y)|| (0 for bias-free nets), and
    with `clean` (*S) its coefficients <x, e_k> (n,). method "matrix_free" ("auto" above
    EXACT_EIGEN_MAX_N): the same keys for the top `k` pairs only (eigenvalues (k,), eigenvectors (n,
    k), coefficients (k,)) by `top_eigenpairs`, plus residuals (k,); jacobian is None;
    euler_residual exact (one JVP); trace and asymmetry are Gaussian-probe (Hutchinson) estimates
    from `num_probes` JVP/VJP pairs; `iters` Krylov steps (see `top_eigenpairs`).
    """
    y = jnp.asarray(y)
    if method == "auto":
        method = "exact" if y.size <= EXACT_EIGEN_MAX_N else "matrix_free"
    if method == "matrix_free":
        key = jax.random.key(0) if key is None else key
        return _analyse_matrix_free(denoiser, y, sigma, clean, k, key, num_probes, iters)
    if method != "exact":
        raise InputError(f"Unknown method {method!r}; valid: 'auto', 'exact', 'matrix_free'.")
    J = np.asarray(denoiser_jacobian(denoiser, y, sigma), np.float64)
    d = np.asarray(denoiser(y[None], jnp.full((1,), sigma, y.dtype))[0], np.float64).ravel()
    sym = 0.5 * (J + J.T)
    lam, vecs = np.linalg.eigh(sym)
    order = np.argsort(lam)[::-1]
    lam, vecs = lam[order], vecs[:, order]
    out = dict(
        jacobian=J,
        asymmetry=float(np.linalg.norm(J - J.T) / max(np.linalg.norm(J), 1e-300)),
        eigenvalues=lam,
        eigenvectors=vecs,
        trace=float(np.trace(J)),
        euler_residual=float(
            np.linalg.norm(J @ np.asarray(y, np.float64).ravel() - d)
            / max(np.linalg.norm(d), 1e-300)
        ),
        method="exact",
    )
    if clean is not None:
        out["coefficients"] = vecs.T @ np.asarray(clean, np.float64).ravel()
    return out


def hutchinson_trace(denoiser, y, sigma: float, key, num_probes: int = 64) -> float:
    """tr J(y) estimated as the mean of v^T J v over Rademacher probes v, each by one JVP (no dense
    J)."""
    y = jnp.asarray(y)
    sig = jnp.full((1,), sigma, y.dtype)
    f = lambda v: denoiser(v[None], sig)[0]
    probes = jax.random.rademacher(key, (num_probes,) + y.shape, y.dtype)
    jv = jax.vmap(lambda v: jax.jvp(f, (y,), (v,))[1])(probes)
    return float(jnp.mean(jnp.sum((probes * jv).reshape(num_probes, -1), axis=1)))


def sure(denoiser, y, sigma: float, trace=None) -> np.ndarray:
    """Stein's unbiased risk estimate of the per-pixel MSE of D on noisy images y (B, *S) at noise
    sigma: (||y - D(y)||^2 + 2 sigma^2 tr J(y)) / n - sigma^2, per image (B,). trace: (B,) tr J
    (computed exactly with the dense Jacobian when None). Its mean over noise draws equals E ||D(y)
    - x||^2 / n."""
    y = jnp.asarray(y)
    n = math.prod(y.shape[1:])
    d = denoiser(y, jnp.full((y.shape[0],), sigma, y.dtype))
    if trace is None:
        trace = [float(np.trace(np.asarray(denoiser_jacobian(denoiser, yi, sigma)))) for yi in y]
    resid = np.asarray(jnp.sum(((y - d) ** 2).reshape(y.shape[0], -1), axis=1), np.float64)
    return (resid + 2.0 * sigma ** 2 * np.asarray(trace, np.float64)) / n - sigma ** 2


def mse_vs_sigma(denoiser, clean, sigmas, key) -> np.ndarray:
    """Per-pixel MSE of D on clean images (B, *S) + sigma z, for each sigma: (len(sigmas),)."""
    clean = jnp.asarray(clean)
    out = []
    for i, s in enumerate(sigmas):
        z = jax.random.normal(jax.random.fold_in(key, i), clean.shape, clean.dtype)
        d = denoiser(clean + s * z, jnp.full((clean.shape[0],), s, clean.dtype))
        out.append(float(jnp.mean((d - clean) ** 2)))
    return np.asarray(out)


def mse_slope(sigmas, mses) -> float:
    """Least-squares slope of log MSE against log sigma."""
    return float(np.polyfit(np.log(np.asarray(sigmas)), np.log(np.asarray(mses)), 1)[0])


def c_alpha_optimal_slope(alpha: float) -> float:
    """The optimal MSE slope for C^alpha images, MSE ~ sigma^(2 alpha / (alpha + 1)) (the paper's
    reference; the notes mark the exact statement UNVERIFIED)."""
    return 2.0 * alpha / (alpha + 1.0)


def eigenvector_panel(
    path: str, result: dict, shape: tuple[int, int], ks=None, title: str = ""
) -> str:
    """Eigenvectors e_k as images with their lambda_k, beside the shrinkage curve and |<x, e_k>|."""
    import matplotlib.pyplot as plt
    from diffmem import viz
    lam, vecs = result["eigenvalues"], result["eigenvectors"]
    n = len(lam)
    ks = (
        list(ks)
        if ks is not None
        else [int(k) for k in np.unique(np.linspace(0, n - 1, 8, dtype=int) // 1)]
    )
    fig, axes = plt.subplots(1, len(ks) + 1, figsize=(1.6 * len(ks) + 3.5, 2.2))
    ax = axes[0]
    ax.plot(np.arange(1, n + 1), lam, label="lambda_k")
    if "coefficients" in result:
        c = np.abs(result["coefficients"])
        ax.plot(
            np.arange(1, n + 1), c / max(c.max(), 1e-300), alpha=0.6, label="|<x, e_k>| (scaled)"
        )
    ax.set_xlabel("k", fontsize=7), ax.legend(fontsize=6), ax.set_title(title, fontsize=7)
    for a, k in zip(axes[1:], ks):
        a.imshow(vecs[:, k].reshape(shape), cmap="gray", interpolation="nearest")
        a.set_title(f"k={k + 1}, lambda={lam[k]:.3f}", fontsize=6), a.axis("off")
    return viz.save_figure(fig, path)


def basis_report(denoiser01, images01, out_dir: str, *, sigma: float = 0.1, sigmas=None,
                 alpha: float | None = None, seed: int = 0, name: str = "adaptive_basis") -> dict:
    """The analysis of one blind denoiser D(y) ([0, 1] units, y (B, H, W, C)) for a report: at the
    first image + sigma z, the Jacobian's asymmetry, tr J, Euler residual, leading shrinkage factors
    and an eigenvector panel (<out_dir>/<name>.png); and the MSE-vs-sigma slope on all `images01`
    (beside 2 alpha / (alpha + 1) for C-alpha images when `alpha` is given). Returns a JSON-ready
    dict."""
    import os
    key = jax.random.key(seed)
    x = jnp.asarray(images01[0])
    y = x + sigma * jax.random.normal(key, x.shape, x.dtype)
    d = lambda v, s: denoiser01(v)
    a = analyse(d, y, sigma, clean=x)
    # m < n when the matrix-free path ran (n > EXACT_EIGEN_MAX_N)
    n, m = int(x.size), a["eigenvalues"].size
    ks = sorted(k for k in {0, 1, 4, min(16, n - 1), n // 4, n // 2, n - 1} if k < m)
    panel = eigenvector_panel(os.path.join(out_dir, f"{name}.png"), a, x.shape[:2], ks=ks,
                              title=f"sigma = {sigma:g}, tr J = {a['trace']:.1f} of {n}")
    sigmas = np.logspace(-2, 0, 8) if sigmas is None else np.asarray(sigmas)
    mses = mse_vs_sigma(d, images01, sigmas, jax.random.fold_in(key, 1))
    out = dict(sigma=sigma, n=n, asymmetry=a["asymmetry"], trace=a["trace"],
               euler_residual=a["euler_residual"], top_eigenvalues=a["eigenvalues"][:8].tolist(),
               sigmas=sigmas.tolist(), mse=mses.tolist(), mse_slope=mse_slope(sigmas, mses),
               figure=panel)
    if alpha is not None:
        out["optimal_slope"] = c_alpha_optimal_slope(alpha)
    return out
