"""The K-sweep study's figures: k_panels.png (every measure on one shared log-K axis) and
rank_vs_snr.png, drawn from the stage results (diffmem.studies.k_sweep_results)."""
from __future__ import annotations

import os
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np

from diffmem import viz
from diffmem.studies import k_sweep_results as res
from diffmem.studies.k_sweep_results import CLASSES

__all__ = ["COLORS", "series", "draw_figures", "panel_classes", "panel_gu", "panel_scores",
           "panel_disjoint", "panel_critical", "rank_figure"]

COLORS = dict(zip(CLASSES, ("tab:red", "tab:orange", "tab:green")))


def series(table: Mapping[int, float | None]) -> tuple[np.ndarray, np.ndarray]:
    """(K, value) of a {K: value} table in K order, values None dropped."""
    pts = sorted((k, v) for k, v in table.items() if v is not None)
    return np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)


def draw_figures(folder: str, results: Mapping[str, res.Result], ks, config: dict) -> dict:
    """k_panels.png and rank_vs_snr.png in `folder` from the results there are; {name: path}."""
    out = {}
    panels = [p for p in (panel_classes, panel_gu, panel_scores, panel_disjoint, panel_critical)
              if p(None, results)]
    if panels:
        fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 2.9 * len(panels) + 0.6),
                                 sharex=True,
                                 squeeze=False)
        for ax, panel in zip(axes[:, 0], panels):
            panel(ax, results)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax = axes[-1, 0]
        ax.set_xscale("log")
        ax.set_xticks(list(ks), [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("training-set size K (log scale)")
        fig.suptitle(f"K sweep: {config['source']}, {config['arch']}, {config['steps']} steps",
                     fontsize=10)
        fig.tight_layout()
        out["k_panels"] = viz.save_figure(fig, os.path.join(folder, "k_panels.png"), dpi=100)
    jac = results.get("jacobian")
    if jac is not None and jac.models:
        out["rank_vs_snr"] = rank_figure(os.path.join(folder, "rank_vs_snr.png"), jac)
    return out


def _errorbars(ax, ks, fr, ci, **kw):
    lo = np.array([fr[i] - ci[i][0] for i in range(len(ks))])
    hi = np.array([ci[i][1] - fr[i] for i in range(len(ks))])
    ax.errorbar(ks, fr, yerr=np.maximum(0, np.stack([lo, hi])), capsize=2, **kw)


def panel_classes(ax, results) -> bool:
    cls: res.ClassifyResult | None = results.get("classify")
    if cls is None or not cls.fractions:
        return False
    if ax is None:
        return True
    main = "calibrated" if cls.calibrated else "fixed"
    tables = [(cls.fractions, cls.fractions_ci, "o-", main)]
    if cls.calibrated:
        tables.append((cls.fixed_fractions, cls.fixed_fractions_ci, "s--", "fixed pixel"))
    for table, ci, style, label in tables:
        ks = sorted(table)
        for c in CLASSES:
            _errorbars(ax, ks, [table[k][c] for k in ks], [ci[k][c] for k in ks], fmt=style,
                       color=COLORS[c], ms=4, label=f"{c} ({label})",
                       alpha=1.0 if style == "o-" else 0.6)
    if cls.published:
        for c in CLASSES:
            ks, ys = series({k: f[c] for k, f in cls.published.items()})
            ax.plot(ks, ys, ":", color=COLORS[c], label=f"{c} (published LPIPS 0.03/0.02)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("fraction of samples")
    ax.set_title(f"Pham et al. classes ({cls.units or cls.metric}; bars: 95% bootstrap)",
                 fontsize=8)
    return True


def panel_gu(ax, results) -> bool:
    cls: res.ClassifyResult | None = results.get("classify")
    if cls is None or not any(v is not None for v in cls.ratio.values()):
        return False
    if ax is None:
        return True
    ks, ys = series(cls.ratio)
    ax.plot(ks, 100 * ys, "o-", color="tab:blue", label="trained")
    ks, ys = series(cls.ratio_optimal)
    if len(ks):
        ax.plot(ks, 100 * ys, "s:", color="gray", label="optimal denoiser")
    ax.axhline(100 * cls.level, color="k", ls="--", lw=0.8, label="90%")
    emm = cls.emm
    if emm.get("k_crossing"):
        ax.axvline(emm["k_crossing"], color="tab:purple", lw=1.2,
                   label=f"EMM ~ {emm['k_crossing']:.0f}")
    elif emm.get("k"):
        ax.plot([emm["k"]], [100 * cls.level], "*", color="tab:purple", ms=12,
                label=f"EMM >= {emm['k']}")
    ax.set_ylim(-3, 103)
    ax.set_ylabel("memorization ratio (%)")
    ax.set_title("Gu et al.: d1/d2 < 1/3 (pixel L2)", fontsize=8)
    return True


def panel_scores(ax, results) -> bool:
    rp: res.ReproducibilityResult | None = results.get("reproducibility")
    if rp is None or not rp.rows:
        return False
    if ax is None:
        return True
    for key, style, label in (("rp_seeds", "o-", "RP, seed a vs seed b"),
                              ("rp_optimal", "s--", "RP, model vs optimal"),
                              ("generalization_a", "^-", "generalization (seed a)"),
                              ("generalization_b", "v:", "generalization (seed b)")):
        ks, ys = series({k: r[key] for k, r in rp.rows.items()})
        if len(ks):
            ax.plot(ks, ys, style, label=label)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("score")
    ax.set_title("Zhang et al. (pixel features, cosine > 0.6)", fontsize=8)
    return True


def panel_disjoint(ax, results) -> bool:
    dj: res.DisjointResult | None = results.get("disjoint")
    if dj is None or not dj.rows:
        return False
    if ax is None:
        return True
    ks = sorted(dj.rows)
    mid = np.array([dj.rows[k]["s1_vs_s2"] for k in ks])
    q = np.array([dj.rows[k]["s1_vs_s2_quantiles"] for k in ks])
    ax.errorbar(np.array(ks, float), mid, yerr=np.maximum(0, np.stack([mid - q[:, 0], q[:,
                                                                                        2] - mid])),
                fmt="o-", capsize=2, label="S1 vs S2 sample, same seed (mean, 5-95%)")
    ax.plot(np.array(ks, float), [dj.rows[k]["closest_own"] for k in ks], "s--",
            label="sample vs closest own training image")
    ax.set_ylim(-0.1, 1.03)
    ax.set_ylabel("cosine similarity")
    ax.set_title("Kadkhodaie et al.: models on disjoint K-subsets", fontsize=8)
    return True


def panel_critical(ax, results) -> bool:
    ct: res.CriticalTimesResult | None = results.get("critical_times")
    if ct is None or not any(ct.tc.values()):
        return False
    if ax is None:
        return True
    for j, c in enumerate(CLASSES):
        shift = 1.08 ** (j - 1)   # side by side on the log axis
        xs, ys, med_k, med = [], [], [], []
        for k, vals in sorted(ct.tc.get(c, {}).items()):
            if vals:
                xs += [k * shift] * len(vals)
                ys += vals
                med_k.append(k * shift)
                med.append(float(np.median(vals)))
        if xs:
            ax.plot(xs, ys, ".", color=COLORS[c], alpha=0.4, ms=4)
            ax.plot(med_k, med, "o-", color=COLORS[c], label=f"{c} (median)")
    pt: res.PhaseTimesResult | None = results.get("phase_times")
    for key, style, label in (("t_s_index", "k_", "speciation step t_S (data)"),
                              ("t_c_index", "kx", "collapse step t_C (data)")):
        table = {} if pt is None else pt.table
        ks, ys = series({k: (r.get(key) if r.get(key) is not None and r.get(key) >= 0 else None)
                         for k, r in table.items()})
        if len(ks):
            ax.plot(ks, ys, style, ms=12 if style == "k_" else 6, label=label)
    ax.set_ylabel("critical time Tc (DDPM step)")
    ax.set_title(f"Pham et al. critical times ({ct.metric}, delta {ct.delta:.3g}, "
                 f"{ct.trials} trials)",
                 fontsize=8)
    return True


def rank_figure(path: str, jac: res.JacobianResult) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, (k, r) in enumerate(sorted(jac.models.items())):
        snr = np.asarray(r["snr"])
        ax.plot(snr, r["median"], "o-", color=f"C{i}", ms=3, label=f"K = {k} (median)")
        ax.fill_between(snr, np.maximum(r["q25"], 1e-4), np.maximum(r["q75"], 1e-4), color=f"C{i}",
                        alpha=0.2)
        for key, style in (("snr_speciation", ":"), ("snr_collapse", "--")):
            if r.get(key):
                ax.axvline(r[key], color=f"C{i}", ls=style, lw=0.8)
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("SNR = 1 / sigma"), ax.set_ylabel("rank(J) / n")
    ax.set_title("Zhang et al.: Jacobian rank (dotted: speciation, dashed: collapse, data only)",
                 fontsize=8)
    ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.tight_layout()
    return viz.save_figure(fig, path, dpi=100)
