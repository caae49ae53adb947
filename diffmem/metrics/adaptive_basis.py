"""Geometry-adaptive harmonic bases (Kadkhodaie et al. 2024): the denoiser Jacobian at a noisy image as an
adaptive shrinkage, D(y) = J(y) y ~ sum_k lambda_k <y, e_k> e_k.

    a = analyse(D, y, sigma, clean=x)          # J, asymmetry, eigenvalues lambda_k (descending), e_k, <x, e_k>,
                                               # tr J (effective dimension), Euler residual |J y - D(y)| / |D(y)|
    t = hutchinson_trace(D, y, sigma, key, 64) # tr J from Jacobian-vector products, for large n
    m = sure(D, y, sigma)                      # SURE per image: |y - D|^2 + 2 sigma^2 tr J - n sigma^2 (per pixel)
    s = mse_slope(sigmas, mses)                # log-log slope of MSE vs sigma, beside c_alpha_optimal_slope(alpha)

D is the common denoiser D(x (B, *S), sigma (B,)); for a blind [0, 1] net pass its unit-range view. The dense
Jacobian comes from `diffmem.metrics.jacobian.denoiser_jacobian` (jacfwd; exact, float64 with x64; n up to
~10^4); eigh runs on its symmetric part (J is symmetric for an exact MMSE denoiser; the asymmetry says how far
a network is from that).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffmem.metrics.jacobian import denoiser_jacobian


def analyse(denoiser, y, sigma: float, clean=None) -> dict:
    """Adaptive-basis analysis of D at one noisy image y (*S).

    Returns numpy arrays: jacobian (n, n), asymmetry ||J - J^T||_F / ||J||_F, eigenvalues (n,) of (J + J^T)/2
    sorted descending (the shrinkage factors lambda_k), eigenvectors (n, n) (column k = e_k), trace (tr J, the
    effective dimension), euler_residual ||J y - D(y)|| / ||D(y)|| (0 for bias-free nets), and with `clean`
    (*S) its coefficients <x, e_k> (n,).
    """
    y = jnp.asarray(y)
    J = np.asarray(denoiser_jacobian(denoiser, y, sigma), np.float64)
    d = np.asarray(denoiser(y[None], jnp.full((1,), sigma, y.dtype))[0], np.float64).ravel()
    sym = 0.5 * (J + J.T)
    lam, vecs = np.linalg.eigh(sym)
    order = np.argsort(lam)[::-1]
    lam, vecs = lam[order], vecs[:, order]
    out = dict(jacobian=J, asymmetry=float(np.linalg.norm(J - J.T) / max(np.linalg.norm(J), 1e-300)),
               eigenvalues=lam, eigenvectors=vecs, trace=float(np.trace(J)),
               euler_residual=float(np.linalg.norm(J @ np.asarray(y, np.float64).ravel() - d)
                                    / max(np.linalg.norm(d), 1e-300)))
    if clean is not None:
        out["coefficients"] = vecs.T @ np.asarray(clean, np.float64).ravel()
    return out


def hutchinson_trace(denoiser, y, sigma: float, key, num_probes: int = 64) -> float:
    """tr J(y) estimated as the mean of v^T J v over Rademacher probes v, each by one JVP (no dense J)."""
    y = jnp.asarray(y)
    sig = jnp.full((1,), sigma, y.dtype)
    f = lambda v: denoiser(v[None], sig)[0]
    probes = jax.random.rademacher(key, (num_probes,) + y.shape, y.dtype)
    jv = jax.vmap(lambda v: jax.jvp(f, (y,), (v,))[1])(probes)
    return float(jnp.mean(jnp.sum((probes * jv).reshape(num_probes, -1), axis=1)))


def sure(denoiser, y, sigma: float, trace=None) -> np.ndarray:
    """Stein's unbiased risk estimate of the per-pixel MSE of D on noisy images y (B, *S) at noise sigma:
    (||y - D(y)||^2 + 2 sigma^2 tr J(y)) / n - sigma^2, per image (B,). trace: (B,) tr J (computed exactly
    with the dense Jacobian when None). Its mean over noise draws equals E ||D(y) - x||^2 / n."""
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
    """The optimal MSE slope for C^alpha images, MSE ~ sigma^(2 alpha / (alpha + 1)) (the paper's reference;
    the notes mark the exact statement UNVERIFIED)."""
    return 2.0 * alpha / (alpha + 1.0)


def eigenvector_panel(path: str, result: dict, shape: tuple[int, int], ks=None, title: str = "") -> str:
    """Eigenvectors e_k as images with their lambda_k, beside the shrinkage curve and |<x, e_k>|."""
    import matplotlib.pyplot as plt
    from diffmem import viz
    lam, vecs = result["eigenvalues"], result["eigenvectors"]
    n = len(lam)
    ks = list(ks) if ks is not None else [int(k) for k in np.unique(np.linspace(0, n - 1, 8, dtype=int) // 1)]
    fig, axes = plt.subplots(1, len(ks) + 1, figsize=(1.6 * len(ks) + 3.5, 2.2))
    ax = axes[0]
    ax.plot(np.arange(1, n + 1), lam, label="lambda_k")
    if "coefficients" in result:
        c = np.abs(result["coefficients"])
        ax.plot(np.arange(1, n + 1), c / max(c.max(), 1e-300), alpha=0.6, label="|<x, e_k>| (scaled)")
    ax.set_xlabel("k", fontsize=7), ax.legend(fontsize=6), ax.set_title(title, fontsize=7)
    for a, k in zip(axes[1:], ks):
        a.imshow(vecs[:, k].reshape(shape), cmap="gray", interpolation="nearest")
        a.set_title(f"k={k + 1}, lambda={lam[k]:.3f}", fontsize=6), a.axis("off")
    return viz.save_figure(fig, path)


def basis_report(denoiser01, images01, out_dir: str, *, sigma: float = 0.1, sigmas=None, alpha: float | None = None,
                 seed: int = 0, name: str = "adaptive_basis") -> dict:
    """The analysis of one blind denoiser D(y) ([0, 1] units, y (B, H, W, C)) for a report: at the first image
    + sigma z, the Jacobian's asymmetry, tr J, Euler residual, leading shrinkage factors and an eigenvector
    panel (<out_dir>/<name>.png); and the MSE-vs-sigma slope on all `images01` (beside 2 alpha / (alpha + 1)
    for C-alpha images when `alpha` is given). Returns a JSON-ready dict."""
    import os
    key = jax.random.key(seed)
    x = jnp.asarray(images01[0])
    y = x + sigma * jax.random.normal(key, x.shape, x.dtype)
    d = lambda v, s: denoiser01(v)
    a = analyse(d, y, sigma, clean=x)
    n = a["eigenvalues"].size
    ks = sorted({0, 1, 4, min(16, n - 1), n // 4, n // 2, n - 1})
    panel = eigenvector_panel(os.path.join(out_dir, f"{name}.png"), a, x.shape[:2], ks=ks,
                              title=f"sigma = {sigma:g}, tr J = {a['trace']:.1f} of {n}")
    sigmas = np.logspace(-2, 0, 8) if sigmas is None else np.asarray(sigmas)
    mses = mse_vs_sigma(d, images01, sigmas, jax.random.fold_in(key, 1))
    out = dict(sigma=sigma, n=n, asymmetry=a["asymmetry"], trace=a["trace"], euler_residual=a["euler_residual"],
               top_eigenvalues=a["eigenvalues"][:8].tolist(), sigmas=sigmas.tolist(), mse=mses.tolist(),
               mse_slope=mse_slope(sigmas, mses), figure=panel)
    if alpha is not None:
        out["optimal_slope"] = c_alpha_optimal_slope(alpha)
    return out
