"""Kadkhodaie et al.'s two-disjoint-sets test: do models trained on S1 and S2 (disjoint, same size
N) give the same image from the same noise (generalization), or each a copy of its own training
images (memorization)?

    summary = run_disjoint(config, "runs/kad-digits")      # configs/kadkhodaie.py; bin/disjoint.py

For every N of `config.data.k` (capped at half the pool): train the S1 model (first N of one
recorded order) in W/S1 and the S2 model (last N) in W/S2 with the one trainer (resumable), sample
both with the Kadkhodaie-Simoncelli sampler from the same seeds (same noise stream), and measure
  * mean-removed cosine similarity (their `im_set_corr`) between the two samples of a seed,
  * each sample's similarity to its closest image of its own training set,
  * train / test PSNR of both denoisers at sigma = logspace(0, 2.5, 10) / 255 ([0, 1] units, peak
    1).
Writes W/disjoint/: N<N>.npz per N, summary.json, report.md, histograms, the four-row grid (closest
in S1, S1 sample, S2 sample, closest in S2) and PSNR-vs-N curves.
"""
from __future__ import annotations

import copy
import functools
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from diffmem import builders, configlib, report, sampling, train, viz
from diffmem.data import subsets
from diffmem.metrics import neighbours
from diffmem.workdir import Workdir

__all__ = ["SETS", "im_set_corr", "paired_corr", "closest", "psnr_vs_sigma", "set_config",
           "capped_ns", "run_disjoint"]

SETS = (("S1", "first"), ("S2", "last"))


# ------------------------------------------------------------------------------------------ metrics
def im_set_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Their `im_set_corr`: per-image mean removed, then cosine; a zero norm is replaced by 0.001.
    a (n, ...), b (m, ...) -> (n, m)."""
    def unit(x):
        v = np.asarray(x, np.float64).reshape(len(x), -1)
        v = v - v.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(v, axis=1, keepdims=True)
        return v / np.where(norm == 0, 1e-3, norm)
    return unit(a) @ unit(b).T


def paired_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """im_set_corr of a[i] with b[i]: (n,)."""
    return np.array([im_set_corr(x[None], y[None])[0, 0] for x, y in zip(a, b)])


def closest(samples: np.ndarray, train_set: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and im_set_corr of each sample's closest training image (by that similarity): (n,),
    (n,) (`neighbours.most_similar` of the mean-removed images)."""
    def centred(x):
        v = np.asarray(x, np.float64).reshape(len(x), -1)
        return v - v.mean(axis=1, keepdims=True)
    best = neighbours.most_similar(centred(samples), centred(train_set))
    return best.indices, best.cosines


def psnr_vs_sigma(
    denoiser01, images01: np.ndarray, sigmas: np.ndarray, seed: int = 0, batch: int = 256
) -> np.ndarray:
    """Mean per-image PSNR (peak 1) of D_[0,1](x + sigma z) against x for each sigma:
    (len(sigmas),)."""
    out = []
    for i, s in enumerate(sigmas):
        vals = []
        for start in range(0, len(images01), batch):
            x = jnp.asarray(images01[start:start + batch])
            z = jax.random.normal(
                jax.random.fold_in(jax.random.key(seed), i * 100003 + start), x.shape, x.dtype
            )
            mse = jnp.mean((denoiser01(x + s * z) - x).reshape(len(x), -1) ** 2, axis=1)
            vals.append(np.asarray(-10.0 * jnp.log10(jnp.maximum(mse, 1e-20))))
        out.append(float(np.concatenate(vals).mean()))
    return np.asarray(out)


# -------------------------------------------------------------------------------------------- study
def set_config(
    config: ml_collections.ConfigDict, which: str, ns: tuple[int, ...]
) -> ml_collections.ConfigDict:
    """The trainer config of one side: data.subset = "first" (S1) or "last" (S2) and data.k = the
    capped Ns."""
    c = copy.deepcopy(config)
    data = c.data.to_dict()
    data.update(subset=which, k=tuple(ns) if len(ns) > 1 else ns[0])
    c.data = ml_collections.ConfigDict(data)  # k may change type (int <-> tuple)
    return c


def capped_ns(config: ml_collections.ConfigDict, pool_size: int) -> tuple[int, ...]:
    """The sweep's Ns, each capped at half the pool (so S1 and S2 never overlap), without
    repeats."""
    return tuple(sorted({min(int(n), pool_size // 2) for n in configlib.sweep(config.data.k)}))


def _load(side, n: int):
    """Side S1 or S2's model of N through its workdir's model record, with the [0, 1]-unit denoiser
    D_[0,1](y) (blind: sigma ignored) the KS sampler and the PSNR curves take, jitted once per
    model."""
    wd, specs = side
    model = wd.model(specs[n].name)
    d01 = jax.jit(lambda y: (model.denoiser(2.0 * y - 1.0, None) + 1.0) / 2.0)
    return model, d01


def _sample(d01, shape, seeds, s):
    """Kadkhodaie-Simoncelli samples of D_[0,1] from `seeds` (a KSResult; the same noise stream for
    both sides)."""
    run = jax.jit(
        lambda seeds: sampling.kadkhodaie_simoncelli(lambda y, sig: d01(y), shape, seeds, h0=s.h0,
                                                     beta=s.beta, sigma_L=s.sigma_L,
                                                     init_mean=s.init_mean, max_iters=s.max_iters)
    )
    return run(seeds)


def run_disjoint(config: ml_collections.ConfigDict, workdir: str, *, num_samples: int | None = None,
                 mesh=None, progress: bool = True) -> dict:
    """Train, sample and compare the S1 / S2 models of every N (see the module docstring). Returns
    the summary."""
    if config.loss.name != "blind" or config.model.name not in builders.BLIND_MODELS:
        raise configlib.ConfigError(
            "run_disjoint needs a blind bias-free model (configs/kadkhodaie.py)."
        )
    pool = builders.load_pool(config)
    ns = capped_ns(config, len(pool))
    wd = Workdir(workdir)
    out_dir = wd.study_output_dir("disjoint")
    os.makedirs(out_dir, exist_ok=True)
    sides = {}
    for label, which in SETS:
        c = set_config(config, which, ns)
        side = wd.sub_workdir(label, c)
        train.train(c, side.path, mesh=mesh, progress=progress)
        sides[label] = (side, {spec.k: spec for spec in side.specs()})
    s = config.sample
    num = int(num_samples or s.num)
    seeds = np.arange(num) + int(config.study.get("seeds_from", 0))
    sigmas = np.asarray(config.study.psnr_sigmas_255, np.float64) / 255.0
    order = subsets.fixed_order(len(pool), int(config.data.subset_seed))
    n_test = min(int(config.study.test_images), len(pool) // 2)
    # the other end of the order
    test_rows = {"S1": order[len(pool) - n_test:], "S2": order[:n_test]}
    pool01 = (pool + 1.0) / 2.0
    rows, per_n = [], {}
    for n in tqdm(ns, desc="disjoint N", disable=not progress):
        res = {}
        for label, _ in SETS:
            model, d01 = _load(sides[label], n)
            r = _sample(d01, model.shape, seeds, s)
            samples = 2.0 * np.asarray(r.samples) - 1.0  # back to diffmem's [-1, 1]
            message = sampling.not_converged_message(r.converged, s.max_iters, f"N={n} {label}",
                                                     r.iterations)
            if message:  # kept, and counted in the summary's not_converged
                print(f"WARNING: {message}", file=sys.stderr, flush=True)
            idx, corr = closest(samples, model.train_data)
            res[label] = dict(
                samples=samples,
                iterations=np.asarray(r.iterations),
                converged=np.asarray(r.converged),
                closest=idx,
                closest_corr=corr,
                step=model.step,
                train=model.train_data,
                psnr_train=psnr_vs_sigma(d01, (model.train_data[:n_test] + 1.0) / 2.0, sigmas),
                psnr_test=psnr_vs_sigma(d01, pool01[test_rows[label]], sigmas),
            )
        pair = paired_corr(res["S1"]["samples"], res["S2"]["samples"])
        per_n[n] = (res, pair)
        report.write_npz(
            wd.study_output_dir("disjoint", f"N{n}.npz"),
            seeds=seeds,
            s1_vs_s2=pair,
            **{
                f"{lab}_{k}": res[lab][k]
                for lab, _ in SETS
                for k in ("samples", "iterations", "converged", "closest", "closest_corr",
                          "psnr_train", "psnr_test")
            },
        )
        rows.append(
            dict(N=n, s1_vs_s2=float(pair.mean()),
                 s1_vs_closest_s1=float(res["S1"]["closest_corr"].mean()),
                 s2_vs_closest_s2=float(res["S2"]["closest_corr"].mean()),
                 iterations=float(np.mean([res[name]["iterations"].mean() for name, _ in SETS])),
                 converged=float(np.mean([res[name]["converged"].mean() for name, _ in SETS])),
                 not_converged=int(sum(np.sum(~res[name]["converged"]) for name, _ in SETS)),
                 steps=int(res["S1"]["step"]))
        )
    summary = dict(
        ns=list(ns),
        pool_size=len(pool),
        order_seed=int(config.data.subset_seed),
        seeds=seeds.tolist(),
        sigmas_255=(sigmas * 255).tolist(),
        rows=rows,
        psnr={
            str(n): {
                lab: dict(train=per_n[n][0][lab]["psnr_train"], test=per_n[n][0][lab]["psnr_test"])
                for lab, _ in SETS
            }
            for n in ns
        },
    )
    # The adaptive basis of the largest-N S1 model at a held-out image (C-alpha: its MSE slope vs
    # the optimum).
    from diffmem.metrics import adaptive_basis
    _, d01 = _load(sides["S1"], ns[-1])
    source = str(config.data.get("source", ""))
    alpha = (
        float(source.split("alpha=")[1].split(",")[0])
        if source.startswith("calpha:alpha=")
        else None
    )
    summary["adaptive_basis"] = adaptive_basis.basis_report(
        d01, pool01[test_rows["S1"]], out_dir, alpha=alpha,
        name=f"adaptive_basis_S1_N{ns[-1]}")
    out = functools.partial(wd.study_output_dir, "disjoint")
    report.write_json(out("summary.json"), summary)
    figures = [summary["adaptive_basis"]["figure"], _histograms(out("similarity_hist.png"), per_n),
               _four_rows(out("four_rows.png"), per_n),
               _psnr_figure(out("psnr_vs_n.png"), per_n, sigmas)]
    _write_report(out("report.md"), summary, figures)
    return summary


# ------------------------------------------------------------------------------------------ figures
def _histograms(path: str, per_n: dict) -> str:
    import matplotlib.pyplot as plt
    ns = list(per_n)
    fig, axes = plt.subplots(1, len(ns), figsize=(3 * len(ns), 2.6), squeeze=False)
    bins = np.linspace(-0.2, 1.0, 25)
    for ax, n in zip(axes[0], ns):
        res, pair = per_n[n]
        ax.hist(pair, bins, alpha=0.6, label="S1 vs S2 sample")
        ax.hist(np.concatenate([res["S1"]["closest_corr"], res["S2"]["closest_corr"]]), bins,
                alpha=0.6, label="sample vs closest own training image")
        (ax.set_title(f"N = {n}", fontsize=9),
         ax.set_xlabel("cosine similarity (mean removed)", fontsize=7))
    axes[0][0].legend(fontsize=6)
    return viz.save_figure(fig, path)


def _four_rows(path: str, per_n: dict) -> str:
    """Columns = N (first seed); rows: closest in S1, S1 sample, S2 sample, closest in S2 (their
    Fig. 1)."""
    import matplotlib.pyplot as plt
    ns = list(per_n)
    fig, axes = plt.subplots(4, len(ns), figsize=(1.3 * len(ns) + 0.8, 5.4), squeeze=False)
    names = ["closest in S1", "S1 sample", "S2 sample", "closest in S2"]
    for j, n in enumerate(ns):
        res, _ = per_n[n]
        imgs = [res["S1"]["train"][res["S1"]["closest"][0]], res["S1"]["samples"][0],
                res["S2"]["samples"][0], res["S2"]["train"][res["S2"]["closest"][0]]]
        for i, im in enumerate(imgs):
            ax = axes[i][j]
            ax.imshow(np.clip((im[..., 0] + 1) / 2, 0, 1), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(names[i], fontsize=7)
        axes[0][j].set_title(f"N = {n}", fontsize=8)
    return viz.save_figure(fig, path)


def _psnr_figure(path: str, per_n: dict, sigmas: np.ndarray) -> str:
    import matplotlib.pyplot as plt
    ns = list(per_n)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, kind in zip(axes, ("train", "test")):
        for i in range(0, len(sigmas), 3):
            ax.plot(ns,
                    [np.mean([per_n[n][0][lab][f"psnr_{kind}"][i] for lab, _ in SETS]) for n in ns],
                    marker="o", label=f"sigma = {sigmas[i] * 255:.3g}/255")
        (ax.set_xscale("log"), ax.set_xlabel("N"), ax.set_ylabel(f"{kind} PSNR (dB)"),
         ax.grid(alpha=0.3))
    axes[0].legend(fontsize=7)
    return viz.save_figure(fig, path)


def _write_report(path: str, summary: dict, figures: list[str]) -> str:
    table = report.markdown_table(
        summary["rows"],
        ["N", "s1_vs_s2", "s1_vs_closest_s1", "s2_vs_closest_s2", "iterations", "converged",
         "not_converged", "steps"],
    )
    psnr_rows = [
        dict(
            N=n,
            **{
                f"{lab} {kind} @{summary['sigmas_255'][i]:.3g}": summary["psnr"][str(n)][lab][kind][
                    i
                ]
                for lab in ("S1",)
                for kind in ("train", "test")
                for i in (0, 5, 9)
            },
        )
        for n in summary["ns"]
    ]
    psnr_cols = ["N"] + [k for k in psnr_rows[0] if k != "N"]
    text = (
        "Mean over seeds of the mean-removed cosine similarity (`im_set_corr`). Published "
        "behaviour "
        "(Kadkhodaie et al. 2024, CelebA 80x80): N <= 100 the samples copy training images "
        "(sample-vs-closest near 1, S1-vs-S2 low); N >= 10^4 the two models agree (S1-vs-S2 near "
        "1) and "
        "differ from their nearest training images."
    )
    return report.write_markdown(
        path,
        "Two models on disjoint sets (Kadkhodaie et al.)",
        [
            (
                "Setup",
                f"pool {summary['pool_size']} images, order seed {summary['order_seed']}; S1 = "
                f"first N, "
                f"S2 = last N; {len(summary['seeds'])} seeds shared by both models (same noise "
                f"stream).",
            ),
            ("Similarity per N", text + "\n\n" + table),
            ("Denoising PSNR (S1 model, [0, 1] units, peak 1)",
             report.markdown_table(psnr_rows, psnr_cols)),
            ("Adaptive basis (S1 model of the largest N, one held-out image)",
             _basis_text(summary["adaptive_basis"])),
        ],
        figures,
    )


def _basis_text(b: dict) -> str:
    text = (
        f"At sigma = {b['sigma']:g} ([0, 1] units): Jacobian asymmetry ||J - J^T|| / ||J|| = "
        f"{b['asymmetry']:.3g}, "
        f"effective dimension tr J = {b['trace']:.1f} of n = {b['n']}, Euler residual ||J y - "
        f"D(y)|| / ||D(y)|| = "
        f"{b['euler_residual']:.2g} (0 for a bias-free net), leading shrinkage factors "
        f"{', '.join(f'{v:.3f}' for v in b['top_eigenvalues'][:5])}. MSE-vs-sigma log-log slope "
        f"{b['mse_slope']:.3f}"
    )
    if "optimal_slope" in b:
        text += f" (optimal for C-alpha: 2 alpha / (alpha + 1) = {b['optimal_slope']:.3f})"
    return text + "."
