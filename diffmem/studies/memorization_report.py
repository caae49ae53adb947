"""Figures and report.md of the memorization study (`diffmem.studies.memorization`): per-model
image panels, Gu et al.'s ratio and Pham et al.'s class fractions vs K, the Markdown tables."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from diffmem import report, viz
from diffmem.metrics import classify
from diffmem.workdir import sort_key

import matplotlib.pyplot as plt  # noqa: E402  (after viz, which selects the Agg backend)

__all__ = ["KINDS", "draw_panels", "curves", "markdown"]

KINDS = ("trained", "optimal")  # the summary's sections: trained models, the optimal denoiser


def draw_panels(path: str, data: dict, arrays: dict, train: np.ndarray, meta: dict,
                rows_per_class: int = 3) -> str | None:
    """For each class, up to `rows_per_class` rows (the first samples of that class by index):
    sample | its nearest training image | its nearest other sample, captioned with d_m and d_s.
    data: the model's samples and seeds; arrays: its classify/<K>.npz; meta: its classify/<K>.json.
    Returns the path, or None if there is nothing to show."""
    rows = [(c, i) for c, name in enumerate(classify.NAMES)
            for i in np.flatnonzero(arrays["labels"] == c)[:rows_per_class]]
    if not rows:
        return None
    x, seeds = data["samples"], data["seeds"]
    show = lambda img: np.clip((img + 1) / 2, 0, 1)
    fig, axes = plt.subplots(len(rows), 3, figsize=(4.8, 1.9 * len(rows) + 0.4), squeeze=False,
                             layout="constrained")
    for r, (c, i) in enumerate(rows):
        m, s = int(arrays["d_m_idx"][i]), int(arrays["d_s_idx"][i])
        cells = (
            (x[i], f"{classify.NAMES[c]}\nseed {seeds[i]}"),
            (train[m], f"train #{m}\nd_m {arrays['d_m'][i]:.3g}"),
            (x[s], f"seed {seeds[s]}\nd_s {arrays['d_s'][i]:.3g}"),
        )
        for ax, (img, caption) in zip(axes[r], cells):
            ax.imshow(show(img[..., 0]) if img.shape[-1] == 1 else show(img), cmap="gray", vmin=0,
                      vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([]), ax.set_xlabel(caption, fontsize=7)
    for ax, head in zip(axes[0], ("sample", "nearest training image", "nearest other sample")):
        ax.set_title(head, fontsize=8)
    who = f"K = {meta['k']}" + (" (optimal denoiser)" if meta["kind"] == "optimal"
                                else f", step {meta['step']}")
    t = meta["thresholds"]
    fig.suptitle(
        f"{who}; {meta['units']}, delta_m {t['delta_m']:.4g}, delta_s {t['delta_s']:.4g} "
        f"({t['method']})",
        fontsize=8,
    )
    return viz.save_figure(fig, path)


def _series(summary: dict, value: Callable[[dict], float | None]) -> dict:
    out = {}
    for kind in KINDS:
        pts = sorted((m["k"], value(m)) for m in summary[kind].values() if value(m) is not None)
        if pts:
            out[kind] = (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
    return out


def curves(summary: dict, path_of: Callable[[str], str]) -> list[str]:
    """ratio_vs_k.png (Gu et al.'s ratio) and classes_vs_k.png (Pham et al.'s fractions); the
    optimal denoiser dashed beside the trained models."""
    figs = []
    ratio = _series(summary, lambda m: m["memorization_ratio"])
    if ratio:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for kind, (ks, ys) in ratio.items():
            ax.plot(
                ks,
                100 * ys,
                "o-" if kind == "trained" else "s--",
                label=f"{kind} (max over snapshots)" if kind == "trained" else "optimal denoiser",
            )
        ax.axhline(90, color="gray", lw=0.8, ls=":")
        ax.set_xscale("log"), ax.set_ylim(-3, 103), ax.set_xlabel("training set size K")
        (ax.set_ylabel("memorization ratio (%)"),
         ax.set_title("Gu et al.: d1/d2 < 1/3 (pixel L2)", fontsize=9))
        ax.grid(alpha=0.3), ax.legend(fontsize=8)
        figs.append(viz.save_figure(fig, path_of("ratio_vs_k.png")))
    s = summary["settings"]
    how = (
        f"calibrated: {100 * s['quantile']:g}% quantiles of held-out distances"
        if s.get("thresholds") == "calibrated"
        else f"delta_m {s['delta_m']}, delta_s {s['delta_s']}"
    )
    if summary["trained"] or summary["optimal"]:
        figs.append(_class_figure(path_of("classes_vs_k.png"), summary, lambda m: m,
                                  f"Pham et al.: {summary['units']}, {how}"))
    if any("published" in m for kind in KINDS for m in summary[kind].values()):
        figs.append(
            _class_figure(path_of("classes_vs_k_published.png"), summary,
                          lambda m: m.get("published"),
                          f"Pham et al.'s published thresholds: {summary['units']}, 0.03 / 0.02")
        )
    return figs


def _class_figure(path: str, summary: dict, part: Callable[[dict], dict | None], title: str) -> str:
    """Class fractions vs K with 95% bootstrap error bars; the optimal denoiser dashed."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for c, color in zip(classify.NAMES, ("tab:red", "tab:orange", "tab:green")):
        for kind in KINDS:
            rows = sorted((m["k"], part(m)) for m in summary[kind].values() if part(m) is not None)
            if not rows:
                continue
            ks = np.array([k for k, _ in rows])
            ys = np.array([p["fractions"][c] for _, p in rows])
            ci = np.array([p.get("fractions_ci", {}).get(c, (y, y)) for (_, p), y in zip(rows, ys)])
            err = np.clip(np.stack([ys - ci[:, 0], ci[:, 1] - ys]), 0, None)
            ax.errorbar(ks, ys, yerr=err, fmt="o-" if kind == "trained" else "s--", color=color,
                        capsize=3, ms=4,
                        label=f"{c} ({'trained' if kind == 'trained' else 'optimal denoiser'})")
    ax.set_xscale("log"), ax.set_ylim(-0.03, 1.03), ax.set_xlabel("training set size K")
    (ax.set_ylabel("fraction of samples (95% bootstrap CI)"), ax.grid(alpha=0.3),
     ax.legend(fontsize=7))
    ax.set_title(title, fontsize=8)
    return viz.save_figure(fig, path)


def markdown(path: str, summary: dict, figures: Sequence[str]) -> str:
    s = summary["settings"]
    cols = ["K", "name", "samples", "step", "ratio", "ratio step", "delta_m", "delta_s",
            "thresholds", "memorized", "spurious", "generalized", "median d_m", "median d_s"]
    if s.get("thresholds") == "calibrated":
        rule = (
            f"thresholds calibrated per model: delta_m = the {100 * s['quantile']:g}% quantile of "
            f"held-out real "
            "images' distances to the nearest training image, delta_s = the same quantile of their "
            "distances "
            "to the nearest other real image among N - 1 (N = the number of samples); held-out = "
            "the dataset "
            "minus the model's training set, leave-one-out over the training set when too few "
            "remain "
            "(`diffmem.metrics.calibration`). Fresh draws of the data distribution would be "
            "labelled "
            f"memorized and spurious {100 * s['quantile']:g}% of the time each"
        )
    else:
        rule = (f"{s.get('thresholds', 'given')} thresholds delta_m = {s['delta_m']}, "
                f"delta_s = {s['delta_s']}")
    sections = [
        (
            "Settings",
            f"Pham et al. classes in {summary['units']}: memorized iff d_m <= delta_m, "
            "spurious iff not memorized and d_s <= delta_s, generalized otherwise (d_m: nearest "
            "training "
            f"image, d_s: nearest other sample); {rule}. Fractions with 95% percentile-bootstrap "
            f"intervals. "
            "Memorization ratio (Gu et al.): fraction of samples with d1/d2 < 1/3 in pixel L2, "
            "maximum over "
            "the sampled snapshots."
            + (f" Note: {summary['metric_note']}" if summary.get("metric_note") else ""),
        )
    ]
    fmt = lambda p, c: (
        f"{p['fractions'][c]:.3f} [{p['fractions_ci'][c][0]:.3f}, {p['fractions_ci'][c][1]:.3f}]"
    )
    for kind, head in (("trained", "Trained models"), ("optimal", "Empirical optimal denoiser")):
        metas = sorted(summary[kind].values(), key=lambda m: sort_key(m["name"]))
        rows = [
            dict(
                K=m["k"],
                name=m["name"],
                samples=m["num_samples"],
                step=m["step"],
                ratio="n/a (K < 2)" if m["memorization_ratio"] is None else m["memorization_ratio"],
                **{"ratio step": m["ratio_step"], "median d_m": m["median_d_m"],
                   "median d_s": m["median_d_s"], "delta_m": m["thresholds"]["delta_m"],
                   "delta_s": m["thresholds"]["delta_s"], "thresholds": m["thresholds"]["method"]},
                **{c: fmt(m, c) for c in classify.NAMES},
            )
            for m in metas
        ]
        if rows:
            sections.append((head, report.markdown_table(rows, cols)))
        published = [
            dict(K=m["k"], name=m["name"], **{c: fmt(m["published"], c) for c in classify.NAMES})
            for m in metas
            if "published" in m
        ]
        if published:
            sections.append((f"{head}: Pham et al.'s published LPIPS thresholds (0.03 / 0.02)",
                             report.markdown_table(published, ["K", "name", *classify.NAMES])))
    if summary["not_included"]:
        sections.append(
            ("Not included", "".join(f"- {k}: {v}\n" for k, v in summary["not_included"].items()))
        )
    return report.write_markdown(
        path, "Memorization: Gu et al.'s ratio and Pham et al.'s classes", sections, figures
    )
