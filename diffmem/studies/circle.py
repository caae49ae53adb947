"""The 2-D circle study of the tutorial and Pham et al.: memorized -> spurious -> generalized as K
grows.

    summary = run(config, workdir)

For every K of the config's sweep: train (or reuse) the model, sample it, cluster the samples
(agglomerative, the tutorial's distance thresholds), compute energies (-log p from the
probability-flow ODE likelihood at t_eval) of the training points, the cluster centres and a grid,
and label each centre
  memorized   samples concentrated (RMS spread <= delta_s) within delta_m of a training point,
  spurious    samples concentrated away from every training point (a new attractor, >=
              min_cluster_frac),
  generalized samples spread out (spread > delta_s), e.g. along an arc of the circle.

Scale-free (calibrated) thresholds, the study's labels: fixed distances cannot serve every K --
every point of the circle lies within 0.003 of one of K = 1000 training points, so the tutorial's
delta_m = 0.1 calls the K = 1000 model 100% memorized. Fresh points of the data process (the circle
pool minus the training points) give the scale instead (`diffmem.metrics.calibration`): delta_m =
the `quantile` (default 10%) of their distances to the nearest training point, and the spread scale
= the median of that distance (a cluster wider than a typical point's distance to its nearest
training point spans several training points: an arc, generalized). Both shrink like the
training-point spacing 2 pi / K. Per sample: memorized iff its distance to the nearest training
point is <= delta_m, spurious iff not and it belongs to a spurious cluster, generalized otherwise
(fractions with 95% bootstrap intervals). The quantile is 10%, not the image studies' 1%, because
the trained sampler ends with a noise of ~0.02 (EM at eps = 1e-4): 1% of K = 2's half spacing
(0.016) is below that resolution, 10% (0.15) is not; fresh points are then labelled memorized 10% of
the time. The tutorial's fixed thresholds are reported beside (`tutorial`). The same study runs on
the closed-form empirical model (no training): EM with the exact empirical score, its energy E_DM,
and the fixed points of the empirical denoiser at the energy's noise level. The largest K is
compared with the K -> infinity circle energy. Figures and report.{json,md} land in workdir/study/.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.cluster import AgglomerativeClustering

from diffmem import builders, energy, generate, likelihood, report, sampling, stats, train, viz
from diffmem.metrics import calibration, classify, neighbours
from diffmem.workdir import Workdir

__all__ = ["KINDS", "QUANTILE", "SPACING_QUANTILE", "cluster", "classify_centres",
           "calibrated_scales", "label_samples", "calibrated_labels", "run"]

KINDS = ("memorized", "spurious", "generalized")
# delta_m: this quantile of fresh points' nearest-training distances (module docstring)
QUANTILE = 0.1
SPACING_QUANTILE = 0.5  # cluster spread scale: the median of the same distances


def cluster(samples: np.ndarray, threshold: float):
    """Agglomerative clustering with a distance threshold -> labels (N,), centres (C, 2), counts
    (C,), spreads (C,) (RMS distance of a cluster's samples to its centre)."""
    if len(samples) < 2:
        return (np.zeros(len(samples), int), samples.copy(), np.ones(len(samples), int),
                np.zeros(len(samples)))
    labels = (
        AgglomerativeClustering(n_clusters=None, distance_threshold=threshold).fit(samples).labels_
    )
    ids = np.unique(labels)
    centres = np.stack([samples[labels == i].mean(0) for i in ids])
    spreads = np.asarray(
        [
            np.sqrt(np.mean(np.sum((samples[labels == i] - c) ** 2, -1)))
            for i, c in zip(ids, centres)
        ]
    )
    return labels, centres, np.asarray([np.sum(labels == i) for i in ids]), spreads


def classify_centres(centres: np.ndarray, counts: np.ndarray, spreads: np.ndarray,
                     patterns: np.ndarray, *, delta_m: float, delta_s: float,
                     min_frac: float) -> list[str]:
    """Label clusters by where their samples concentrate (spread = RMS distance of samples to the
    centre):

      memorized   concentrated (spread <= delta_s) within delta_m of a training point,
      spurious    concentrated away from every training point (a new attractor), >= min_frac of
                  samples,
      generalized spread out (spread > delta_s): samples cover a region, e.g. an arc of the circle,
      transient   small concentrated clusters below min_frac.
    """
    nearest = np.linalg.norm(centres[:, None] - patterns[None], axis=-1).min(1)
    total = counts.sum()
    kinds = []
    for d, spread, n in zip(nearest, spreads, counts):
        if spread > delta_s:
            kinds.append("generalized")
        elif d <= delta_m:
            kinds.append("memorized")
        elif n >= min_frac * total:
            kinds.append("spurious")
        else:
            kinds.append("transient")
    return kinds


def calibrated_scales(
    patterns: np.ndarray,
    fresh: np.ndarray,
    num_samples: int,
    *,
    quantile: float = QUANTILE,
    spacing_quantile: float = SPACING_QUANTILE,
) -> tuple[calibration.Thresholds, float]:
    """(Thresholds with delta_m = the `quantile` of fresh points' distances to the nearest training
    point, spread scale = their `spacing_quantile`) from fresh draws of the data process (not
    training points)."""
    t = calibration.calibrate(patterns, fresh, quantile=quantile, num_samples=num_samples)
    d = _nearest_distance(fresh[:10_000], patterns)
    return t, float(np.quantile(d, spacing_quantile))


def _nearest_distance(points, patterns) -> np.ndarray:
    """(N,) L2 distance of each point to its nearest training point (rows as float32, as before)."""
    pts, pats = np.asarray(points, np.float32), np.asarray(patterns, np.float32)
    return neighbours.nearest(pts, pats).distances[:, 0]


def label_samples(samples: np.ndarray, patterns: np.ndarray, cluster_labels: np.ndarray,
                  kinds: list[str], delta_m: float) -> np.ndarray:
    """Per-sample classes (classify.MEMORIZED / SPURIOUS / GENERALIZED): memorized iff the distance
    to the nearest training point is <= delta_m, spurious iff not and its cluster is labelled
    spurious, else generalized. cluster_labels index the clusters in sorted order of their ids (as
    `cluster` returns them)."""
    d_m = _nearest_distance(samples, patterns)
    ids = np.unique(cluster_labels)
    spurious_ids = ids[np.asarray([k == "spurious" for k in kinds], bool)]
    labels = np.full(len(samples), classify.GENERALIZED, np.int8)
    labels[np.isin(cluster_labels, spurious_ids)] = classify.SPURIOUS
    labels[d_m <= delta_m] = classify.MEMORIZED
    return labels


def calibrated_labels(
    samples, patterns, fresh, cluster_out, st
) -> tuple[dict, list[str], list[str]]:
    """(record, calibrated cluster kinds, the tutorial's fixed-threshold kinds) of one sample set.

    cluster_out: `cluster(samples, threshold)`; fresh: points of the data process that are not
    training points; st: the config's study section (quantile (optional), min_cluster_frac, delta_m,
    delta_s). The record holds clusters / sample_fraction (by calibrated cluster kind), thresholds
    (`calibration.Thresholds` plus spread_scale; its delta_s is reported, not used: a 2-D cloud of
    samples is not comparable with points on the 1-D circle), per-sample fractions with
    fractions_ci, and "tutorial": the fixed thresholds' counts."""
    labels, centres, counts, spreads = cluster_out
    t, spacing = calibrated_scales(
        patterns, fresh, len(samples), quantile=st.get("quantile", QUANTILE)
    )
    kinds = classify_centres(centres, counts, spreads, patterns, delta_m=t.delta_m, delta_s=spacing,
                             min_frac=st.min_cluster_frac)
    fixed = classify_centres(centres, counts, spreads, patterns, delta_m=st.delta_m,
                             delta_s=st.delta_s, min_frac=st.min_cluster_frac)
    per_sample = label_samples(samples, patterns, labels, kinds, t.delta_m)
    ci = stats.bootstrap_fractions(per_sample, classify.NAMES)
    record = dict(
        **_summary(kinds, counts),
        thresholds=dict(t.as_dict(), spread_scale=spacing),
        fractions=classify.fractions(per_sample),
        fractions_ci={c: list(v) for c, v in ci.items()},
        tutorial=dict(
            **_summary(fixed, counts), delta_m=float(st.delta_m), delta_s=float(st.delta_s)
        ),
    )
    return record, kinds, fixed


def _grid(n: int, bounds: float):
    g = np.linspace(-bounds, bounds, n)
    gx, gy = np.meshgrid(g, g, indexing="ij")
    return gx, gy, np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)


def _summary(kinds, counts) -> dict:
    total = max(int(np.sum(counts)), 1)
    return {"clusters": {k: int(sum(1 for x in kinds if x == k)) for k in KINDS + ("transient",)},
            "sample_fraction": {k: float(sum(c for x, c in zip(kinds, counts) if x == k)) / total
                                for k in KINDS + ("transient",)}}


def run(config, workdir: str, *, progress: bool = True) -> dict:
    """Run the whole study; returns the summary also written to workdir/study/report.json."""
    st = config.study
    wd = Workdir(workdir, config)
    train.train(config, workdir, progress=progress)
    specs = wd.specs()
    # fresh points of the data process: the pool minus a model's training set
    pool = builders.load_pool(config)
    sde = builders.build_sde(config)
    seeds = np.arange(config.sample.num)
    generate.sample_workdir(workdir, seeds, config.sample.sampler)
    gx, gy, grid = _grid(st.grid, st.bounds)
    thresholds = list(st.thresholds)
    # -log p_t of the circle limit = beta_t E_circle + const
    beta_t = 1.0 / (2.0 * float(sde.sigma(st.t_eval)) ** 2)

    trained_panels, empirical_panels, surfaces, summary = ([], [], [],
                                                           {"models": {}, "empirical": {}})
    for i, spec in enumerate(specs):
        thr = thresholds[min(i, len(thresholds) - 1)]
        patterns = spec.data
        # ----- trained model
        model = wd.model(spec.name)
        score, step = model.time_score, model.step
        samples = wd.read_samples(spec.name)["samples"]
        fresh = calibration.heldout_images(pool, spec.indices)
        labels, centres, counts, spreads = cluster(samples, thr)
        record, kinds, fixed_kinds = calibrated_labels(samples, patterns, fresh,
                                                       (labels, centres, counts, spreads), st)
        lik = jax.jit(
            functools.partial(likelihood.log_likelihood, score, sde, t_eval=st.t_eval,
                              rtol=st.lik_tol, atol=st.lik_tol)
        )
        shown = patterns[:50]
        e_all = -np.asarray(
            lik(jnp.asarray(np.concatenate([grid, centres, shown]).astype(np.float32)))
        )
        e0 = e_all[: len(grid)].min()
        e_grid, e_centres, e_pats = (e_all[: len(grid)] - e0,
                                     e_all[len(grid) : len(grid) + len(centres)] - e0,
                                     e_all[len(grid) + len(centres) :] - e0)
        score_grid = np.asarray(score(jnp.asarray(grid), jnp.full((1,), st.t_eval, jnp.float32)))
        trained_panels.append(
            dict(title=f"K = {spec.k} (trained, step {step})", grid_x=gx, grid_y=gy,
                 energy=e_grid.reshape(gx.shape), score=score_grid.reshape(gx.shape + (2,)),
                 patterns=shown, samples=samples, labels=labels, centers=centres,
                 center_energy=e_centres, pattern_energy=e_pats, center_kind=kinds)
        )
        surfaces.append(
            dict(title=f"K = {spec.k}", grid_x=gx, grid_y=gy, energy=e_grid.reshape(gx.shape))
        )
        summary["models"][spec.name] = dict(
            k=spec.k,
            step=step,
            threshold=thr,
            **record,
            centres=[
                dict(x=c.tolist(), kind=k, tutorial_kind=tk, count=int(n), spread=float(sp),
                     energy=float(e))
                for c, k, tk, n, sp, e in zip(
                    centres, kinds, fixed_kinds, counts, spreads, e_centres
                )
            ],
            pattern_energy_mean=float(np.mean(e_pats)),
        )
        # ----- the closed-form empirical model of the same K points (no training)
        emp_score = energy.empirical_score(jnp.asarray(patterns), sde.sigma, chunk=4096)
        x0 = sampling.tutorial_init(jnp.asarray(seeds, jnp.uint32), 2, sde)
        emp_samples = np.asarray(
            jax.jit(
                lambda x, s: sampling.euler_maruyama(
                    emp_score, sde, x, s, config.sample.num_steps, eps=st.empirical_eps
                )
            )(x0, jnp.asarray(seeds, jnp.uint32))
        )
        elabels, ecentres, ecounts, espreads = cluster(emp_samples, thr)
        erecord, ekinds, _ = calibrated_labels(emp_samples, patterns, fresh,
                                               (elabels, ecentres, ecounts, espreads), st)
        sig = float(sde.sigma(st.t_eval))
        e_emp = np.asarray(
            energy.diffusion_energy(
                jnp.asarray(grid), st.t_eval, jnp.asarray(patterns), sde.sigma_max, chunk=4096
            )
        ) / (2 * sig**2)
        starts = jnp.asarray(
            np.random.default_rng(0).uniform(-st.bounds, st.bounds, (st.attractor_starts, 2)),
            jnp.float32,
        )
        att = energy.find_attractors(
            jnp.asarray(patterns), sig, starts, merge_tol=1e-2, stored_tol=st.delta_m
        )
        empirical_panels.append(
            dict(title=f"K = {spec.k} (empirical, no training)", grid_x=gx, grid_y=gy,
                 energy=(e_emp - e_emp.min()).reshape(gx.shape), patterns=patterns[:50],
                 samples=emp_samples, labels=elabels, centers=att["points"],
                 center_kind=["memorized" if k == "stored" else "spurious" for k in att["kind"]])
        )
        summary["empirical"][spec.name] = dict(
            k=spec.k, **erecord, sampler_eps=st.empirical_eps,
            attractors=dict(sigma=sig, stored=int(np.sum(att["kind"] == "stored")),
                            spurious=int(np.sum(att["kind"] == "spurious"))))
        # ----- the K -> infinity limit beside the largest K
        if i == len(specs) - 1:
            r = np.linalg.norm(grid, axis=1)
            closed = beta_t * np.asarray(energy.circle_energy(grid, beta_t))
            closed -= closed.min()
            # The K -> infinity score, grad log p_t = beta(t) * circle_score(x, beta(t)), beta(t) =
            # 1/(2 sigma(t)^2), through the same ODE likelihood (same solver and Gaussian prior at
            # T), so the estimator's own bias (the prior is not exactly p_T) is shared and only the
            # scores differ.
            def limit_score(x, t):
                b = 1.0 / (2.0 * sde.sigma(t) ** 2)
                return b[:, None] * energy.circle_score(x, b[0]) if b.shape[0] == 1 else \
                    jax.vmap(lambda xi, bi: bi * energy.circle_score(xi[None], bi)[0])(x, b)

            exact = -np.asarray(
                jax.jit(
                    functools.partial(likelihood.log_likelihood, limit_score, sde, t_eval=st.t_eval,
                                      rtol=st.lik_tol, atol=st.lik_tol)
                )(jnp.asarray(grid))
            )
            exact -= exact.min()
            inside = r <= st.bounds
            corr = float(np.corrcoef(e_grid[inside], exact[inside])[0, 1])
            bins = np.linspace(0, st.bounds, 31)
            idx = np.digitize(r, bins)
            radii, model_r, exact_r, closed_r = [], [], [], []
            for b in range(1, len(bins)):
                m = idx == b
                if m.any():
                    (radii.append(r[m].mean()), model_r.append(e_grid[m].mean()),
                     exact_r.append(exact[m].mean()))
                    closed_r.append(closed[m].mean())
            model_r, exact_r = (np.asarray(model_r) - min(model_r),
                                np.asarray(exact_r) - min(exact_r))
            closed_r = np.asarray(closed_r) - min(closed_r)
            summary["exact_comparison"] = dict(
                k=spec.k,
                beta_t=beta_t,
                grid_correlation=corr,
                radial_rms_error=float(np.sqrt(np.mean((model_r - exact_r) ** 2))),
                radial_energy_range=float(exact_r.max()),
            )
            viz.radial_profile(wd.study_dir("exact_vs_model_radial.png"), np.asarray(radii),
                               {f"K = {spec.k} model (ODE likelihood)": model_r,
                                "exact circle score, same ODE likelihood": exact_r,
                                f"closed form beta_t E(R), beta_t = {beta_t:.2f}": closed_r},
                               title=f"energy along the radius at t = {st.t_eval}")
            viz.energy_landscapes(
                wd.study_dir("exact_vs_model.png"),
                [
                    dict(
                        title="exact circle (K -> infinity)",
                        grid_x=gx,
                        grid_y=gy,
                        energy=exact.reshape(gx.shape),
                        score=np.asarray(energy.circle_score(grid, beta_t)).reshape(
                            gx.shape + (2,)
                        ),
                    ),
                    dict(title=f"K = {spec.k} model", grid_x=gx, grid_y=gy,
                         energy=e_grid.reshape(gx.shape)),
                ],
            )

    figs = [
        viz.energy_landscapes(wd.study_dir("landscapes_trained.png"), trained_panels, st.bounds),
        viz.energy_landscapes(
            wd.study_dir("landscapes_empirical.png"), empirical_panels, st.bounds
        ),
        viz.energy_surfaces(wd.study_dir("surfaces_trained.png"), surfaces),
    ]
    figs += [wd.study_dir(f) for f in ("exact_vs_model.png", "exact_vs_model_radial.png")]
    summary["checks"] = _published_checks(summary, specs)
    report.write_json(wd.study_dir("report.json"), summary)
    report.write_markdown(wd.study_dir("report.md"),
                          "Circle study: memorized, spurious, generalized", _sections(summary),
                          figs)
    return summary


def _published_checks(summary: dict, specs) -> dict:
    m = summary["models"]
    checks = {}
    small, mid, large = specs[0], specs[1] if len(specs) > 1 else None, specs[-1]
    checks[
        f"K={small.k} memorized (>= 90% of samples within the calibrated delta_m of a training "
        f"point)"
    ] = m[small.name]["fractions"]["memorized"] >= 0.9
    if mid is not None and len(specs) > 2:
        checks[f"K={mid.k} has at least one spurious cluster"] = (
            m[mid.name]["clusters"]["spurious"] >= 1
        )
        checks[f"K={large.k} generalized (>= 90% of samples generalized, calibrated)"] = (
            m[large.name]["fractions"]["generalized"] >= 0.9)
    if "exact_comparison" in summary:
        checks["largest K energy correlates with the exact circle energy (r >= 0.9)"] = (
            summary["exact_comparison"]["grid_correlation"] >= 0.9)
    return checks


def _sections(summary: dict):
    rows, fixed = [], []
    for source in ("models", "empirical"):
        for name, s in summary[source].items():
            who = f"K={s['k']} " + ("trained" if source == "models" else "empirical")
            ci = s["fractions_ci"]
            rows.append(
                {
                    "model": who,
                    "delta_m": s["thresholds"]["delta_m"],
                    "spread scale": s["thresholds"]["spread_scale"],
                    **{f"{k} clusters": s["clusters"][k] for k in KINDS},
                    **{
                        k: f"{s['fractions'][k]:.3f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]"
                        for k in KINDS
                    },
                }
            )
            fixed.append(
                {"model": who, **{f"{k} clusters": s["tutorial"]["clusters"][k] for k in KINDS},
                 **{f"{k} frac": s["tutorial"]["sample_fraction"][k] for k in KINDS}}
            )
    cols = ["model", "delta_m", "spread scale"] + [f"{k} clusters" for k in KINDS] + list(KINDS)
    first = next(iter(summary["models"].values()), None)
    q = first["thresholds"]["quantile"] if first else QUANTILE
    sections = [
        (
            "Calibrated classes per K",
            f"delta_m = the {100 * q:g}% quantile of fresh circle points' distances to the nearest "
            f"training "
            "point, spread scale = their median (both scale with the training-point spacing). "
            "Clusters: "
            "memorized / spurious if their spread is <= the spread scale (centre within delta_m of "
            "a "
            "training point or not), generalized if wider. Samples (95% bootstrap intervals): "
            "memorized iff "
            "within delta_m of a training point, spurious iff not and in a spurious cluster.\n\n"
            + report.markdown_table(rows, cols),
        ),
        (
            "The tutorial's fixed thresholds",
            f"delta_m = {first['tutorial']['delta_m'] if first else ''}, spread <= "
            f"{first['tutorial']['delta_s'] if first else ''} for concentrated clusters; sample "
            f"fractions "
            "by cluster.\n\n"
            + report.markdown_table(
                fixed, ["model"] + [f"{k} clusters" for k in KINDS] + [f"{k} frac" for k in KINDS]
            ),
        ),
    ]
    if "exact_comparison" in summary:
        e = summary["exact_comparison"]
        sections.append(
            (
                "Largest K against the exact circle energy",
                f"K = {e['k']}: grid correlation {e['grid_correlation']:.3f}; RMS error along the "
                f"radius "
                f"{e['radial_rms_error']:.3f} nats over a range of {e['radial_energy_range']:.2f} "
                f"nats "
                f"(beta_t = {e['beta_t']:.3f}).",
            )
        )
    sections.append(("Published behaviour", "\n".join(f"- {'PASS' if v else 'FAIL'}: {k}"
                                                      for k, v in summary["checks"].items())))
    return sections
