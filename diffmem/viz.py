"""Figures: sample scatters, image grids, energy landscapes (2-D and 3-D) and curves versus K.

Every function draws into a new matplotlib figure and saves it atomically to `path` (PNG), returning the
path. matplotlib runs headless (Agg).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffmem import atomic  # noqa: E402


def save_figure(fig, path: str, dpi: int = 150) -> str:
    """Write `fig` to `path` atomically (`diffmem.atomic`) and close it."""
    try:
        return atomic.write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


def scatter_samples(path: str, samples: np.ndarray, patterns: np.ndarray | None = None, title: str = "",
                    circle: bool = True, bounds: float = 1.5) -> str:
    """2-D samples (N, 2) as dots, training points (K, 2) as stars, the unit circle dashed."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(samples[:, 0], samples[:, 1], s=4, alpha=0.3, color="tab:blue", label=f"samples ({len(samples)})")
    if patterns is not None and len(patterns) <= 2000:
        ax.scatter(patterns[:, 0], patterns[:, 1], marker="*", s=80, color="deeppink", edgecolor="black",
                   label=f"training points ({len(patterns)})", zorder=3)
    if circle:
        a = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(a), np.sin(a), "k--", lw=0.8, alpha=0.5)
    ax.set_xlim(-bounds, bounds), ax.set_ylim(-bounds, bounds), ax.set_aspect("equal")
    ax.set_title(title), ax.legend(loc="lower left", fontsize=7)
    return save_figure(fig, path)


def image_grid(path: str, images: np.ndarray, ncols: int = 8, title: str = "") -> str:
    """Images (N, H, W, C) in [-1, 1] tiled in a grid."""
    images = np.clip((np.asarray(images) + 1) / 2, 0, 1)
    n = len(images)
    nrows = max(1, -(-n // ncols))
    h, w, c = images.shape[1:]
    canvas = np.ones((nrows * (h + 1) + 1, ncols * (w + 1) + 1, c), np.float32)
    for i, img in enumerate(images):
        r, q = divmod(i, ncols)
        canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = img
    fig, ax = plt.subplots(figsize=(ncols * 0.6 + 0.5, nrows * 0.6 + 0.5))
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.axis("off"), ax.set_title(title, fontsize=8)
    return save_figure(fig, path)


def energy_landscapes(path: str, panels: Sequence[Mapping], bounds: float = 1.5) -> str:
    """Side-by-side 2-D energy landscapes, as in the tutorial.

    Each panel: {"title", "grid_x" (R,R), "grid_y" (R,R), "energy" (R,R), optional "score" (R,R,2),
    "patterns" (K,2), "samples" (N,2), "labels" (N,), "centers" (C,2), "center_energy" (C,),
    "pattern_energy" (K,), "center_kind" (C,) strings}.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    kind_color = {"memorized": "lime", "spurious": "red", "generalized": "aqua"}
    for ax, p in zip(axes[0], panels):
        cs = ax.contourf(p["grid_x"], p["grid_y"], p["energy"], levels=60, cmap="inferno")
        a = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(a), np.sin(a), "w--", lw=0.8, alpha=0.6)
        if p.get("score") is not None:
            s, step = p["score"], max(1, p["grid_x"].shape[0] // 15)
            ax.quiver(p["grid_x"][::step, ::step], p["grid_y"][::step, ::step], s[::step, ::step, 0],
                      s[::step, ::step, 1], color="white", alpha=0.5, width=0.004)
        if p.get("samples") is not None:
            ax.scatter(p["samples"][:, 0], p["samples"][:, 1], c=p.get("labels"), s=4, alpha=0.25, cmap="viridis")
        pats = p.get("patterns")
        if pats is not None and len(pats) <= 50:
            ax.scatter(pats[:, 0], pats[:, 1], marker="*", s=90, color="deeppink", edgecolor="black", zorder=5)
            for xy, e in zip(pats, p.get("pattern_energy", [])):
                ax.annotate(f"{e:.2f}", xy, xytext=(6, 0), textcoords="offset points", color="deeppink", fontsize=6)
        if p.get("centers") is not None and len(p["centers"]) <= 60:
            kinds = p.get("center_kind", ["generalized"] * len(p["centers"]))
            ax.scatter(p["centers"][:, 0], p["centers"][:, 1], marker="X", s=45, edgecolor="black", zorder=6,
                       color=[kind_color.get(k, "aqua") for k in kinds])
            for xy, e in zip(p["centers"], p.get("center_energy", [])):
                ax.annotate(f"{e:.2f}", xy, xytext=(-16, 5), textcoords="offset points", color="aqua", fontsize=6)
        ax.set_xlim(-bounds, bounds), ax.set_ylim(-bounds, bounds), ax.set_aspect("equal")
        ax.set_xticks([]), ax.set_yticks([]), ax.set_title(p.get("title", ""), fontsize=9)
        fig.colorbar(cs, ax=ax, shrink=0.7, label="energy (min = 0)")
    return save_figure(fig, path)


def energy_surfaces(path: str, panels: Sequence[Mapping]) -> str:
    """3-D energy surfaces: panels of {"title", "grid_x", "grid_y", "energy"}."""
    fig = plt.figure(figsize=(4.2 * len(panels), 4))
    for i, p in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1, projection="3d")
        ax.plot_surface(p["grid_x"], p["grid_y"], p["energy"], cmap="inferno", linewidth=0, antialiased=True)
        ax.view_init(elev=60, azim=-60)
        ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([]), ax.set_title(p.get("title", ""), fontsize=9)
    return save_figure(fig, path)


def curves_vs_k(path: str, ks: Sequence[float], curves: Mapping[str, Sequence[float]], ylabel: str,
                title: str = "", logx: bool = True) -> str:
    """One or more curves against the training-set size K."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, ys in curves.items():
        ax.plot(ks, ys, marker="o", label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel("training set size K"), ax.set_ylabel(ylabel), ax.set_title(title)
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    return save_figure(fig, path)


def radial_profile(path: str, radii: np.ndarray, curves: Mapping[str, np.ndarray], title: str = "") -> str:
    """Energy along the radius, e.g. a trained model beside the exact circle energy."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, ys in curves.items():
        ax.plot(radii, ys, label=name)
    ax.set_xlabel("radius R"), ax.set_ylabel("energy (min = 0)"), ax.set_title(title)
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    return save_figure(fig, path)
