"""Figures: sample scatters, image grids, energy landscapes (2-D and 3-D) and curves versus K.

Every function draws into a new matplotlib figure and saves it atomically to `path` (PNG), returning
the path. Nothing here picks a matplotlib backend (a notebook keeps its own; bin/ scripts default
MPLBACKEND to Agg before matplotlib is imported): figures are saved to files and closed.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from diffmem import atomic

__all__ = ["save_figure", "scatter_samples", "image_grid", "energy_landscapes",
           "energy_landscapes_figure", "place_labels", "energy_surfaces", "curves_vs_k",
           "radial_profile"]


def save_figure(fig, path: str, dpi: int = 150) -> str:
    """Write `fig` to `path` atomically (`diffmem.atomic`) and close it."""
    try:
        return atomic.write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


def scatter_samples(path: str, samples: np.ndarray, patterns: np.ndarray | None = None,
                    title: str = "", circle: bool = True, bounds: float = 1.5) -> str:
    """2-D samples (N, 2) as dots, training points (K, 2) as stars, the unit circle dashed."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(samples[:, 0], samples[:, 1], s=4, alpha=0.3, color="tab:blue",
               label=f"samples ({len(samples)})")
    if patterns is not None and len(patterns) <= 2000:
        ax.scatter(patterns[:, 0], patterns[:, 1], marker="*", s=80, color="deeppink",
                   edgecolor="black", label=f"training points ({len(patterns)})", zorder=3)
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
    """Side-by-side 2-D energy landscapes, as in the tutorial (`energy_landscapes_figure`), saved to
    `path`."""
    return save_figure(energy_landscapes_figure(panels, bounds), path)


def energy_landscapes_figure(panels: Sequence[Mapping], bounds: float = 1.5):
    """The figure of `energy_landscapes`: heat map of the energy, score quiver, samples, training
    stars and cluster centres (X, coloured by kind), with numeric energy labels placed so that no
    two overlap.

    Each panel: {"title", "grid_x" (R,R), "grid_y" (R,R), "energy" (R,R), optional "score" (R,R,2),
    "patterns" (K,2), "samples" (N,2), "labels" (N,), "centers" (C,2), "center_energy" (C,),
    "pattern_energy" (K,), "center_kind" (C,) strings}. Labels that find no free spot near their
    marker are summarised in one line under the panel (how many, and their energy range) instead of
    being drawn over other labels.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    kind_color = {"memorized": "lime", "spurious": "red", "generalized": "aqua"}
    pending = []
    for ax, p in zip(axes[0], panels):
        cs = ax.contourf(p["grid_x"], p["grid_y"], p["energy"], levels=60, cmap="inferno")
        a = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(a), np.sin(a), "w--", lw=0.8, alpha=0.6)
        if p.get("score") is not None:
            s, step = p["score"], max(1, p["grid_x"].shape[0] // 15)
            ax.quiver(p["grid_x"][::step, ::step], p["grid_y"][::step, ::step],
                      s[::step, ::step, 0], s[::step, ::step, 1], color="white", alpha=0.5,
                      width=0.004)
        if p.get("samples") is not None:
            ax.scatter(p["samples"][:, 0], p["samples"][:, 1], c=p.get("labels"), s=4, alpha=0.25,
                       cmap="viridis")
        # (xy, text, colour): centres first (they are what the figure is about), then patterns
        labels = []
        if p.get("centers") is not None and len(p["centers"]) <= 60:
            kinds = p.get("center_kind", ["generalized"] * len(p["centers"]))
            ax.scatter(p["centers"][:, 0], p["centers"][:, 1], marker="X", s=45, edgecolor="black",
                       zorder=6, color=[kind_color.get(k, "aqua") for k in kinds])
            labels += [
                (xy, float(e), "aqua") for xy, e in zip(p["centers"], p.get("center_energy", []))
            ]
        pats = p.get("patterns")
        if pats is not None and len(pats) <= 50:
            ax.scatter(pats[:, 0], pats[:, 1], marker="*", s=90, color="deeppink",
                       edgecolor="black", zorder=5)
            labels += [
                (xy, float(e), "deeppink") for xy, e in zip(pats, p.get("pattern_energy", []))
            ]
        ax.set_xlim(-bounds, bounds), ax.set_ylim(-bounds, bounds), ax.set_aspect("equal")
        ax.set_xticks([]), ax.set_yticks([]), ax.set_title(p.get("title", ""), fontsize=9)
        fig.colorbar(cs, ax=ax, shrink=0.7, label="energy (min = 0)")
        pending.append((ax, labels))
    # final axes positions (colour bars and equal aspect applied) before placing labels
    fig.canvas.draw()
    for ax, labels in pending:
        place_labels(ax, labels)
    return fig


# Offsets (in points) tried around a marker, nearest first; each names the text's anchor corner.
_LABEL_OFFSETS = [(dx * r, dy * r, ha, va) for r in (1, 2, 3.5)
                  for dx, dy, ha, va in ((5, 3, "left", "bottom"), (5, -3, "left", "top"),
                                         (-5, 3, "right", "bottom"), (-5, -3, "right", "top"),
                                         (0, 6, "center", "bottom"), (0, -6, "center", "top"))]


def place_labels(ax, labels: Sequence[tuple], fontsize: float = 6, fmt: str = "{:.2f}") -> list:
    """Annotate points with numbers so that no two label boxes overlap (greedy, in `labels` order).

    labels: (xy data coordinates, value, colour). Each label tries `_LABEL_OFFSETS` around its point
    and takes the first spot inside the axes that overlaps no label placed before. The ones that fit
    nowhere are summarised in one line below the axes. Returns the Text artists drawn.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    px = fig.dpi / 72.0
    placed, boxes, unplaced = [], [], []
    for xy, value, color in labels:
        text = ax.annotate(fmt.format(value), xy, xytext=(0, 0), textcoords="offset points",
                           color=color, fontsize=fontsize, zorder=7)
        size = text.get_window_extent(renderer)
        w, h = size.width, size.height
        x0, y0 = ax.transData.transform(xy)
        for dx, dy, ha, va in _LABEL_OFFSETS:
            left = x0 + dx * px - {"left": 0.0, "center": w / 2, "right": w}[ha]
            bottom = y0 + dy * px - {"bottom": 0.0, "top": h}[va]
            box = (left - 1, bottom - 1, left + w + 1, bottom + h + 1)
            inside = (
                box[0] >= frame.x0
                and box[2] <= frame.x1
                and box[1] >= frame.y0
                and box[3] <= frame.y1
            )
            if inside and not any(_overlap(box, b) for b in boxes):
                text.set_position((dx, dy)), text.set_ha(ha), text.set_va(va)
                boxes.append(box), placed.append(text)
                break
        else:
            text.remove()
            unplaced.append(value)
    if unplaced:
        values = (f"value {min(unplaced):.2f}" if len(unplaced) == 1 else
                  f"values {min(unplaced):.2f} to {max(unplaced):.2f}")
        placed.append(
            ax.text(0.5, -0.02, f"{len(unplaced)} more not labelled (no free spot): {values}",
                    transform=ax.transAxes, ha="center", va="top", fontsize=fontsize)
        )
    return placed


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def energy_surfaces(path: str, panels: Sequence[Mapping]) -> str:
    """3-D energy surfaces: panels of {"title", "grid_x", "grid_y", "energy"}."""
    fig = plt.figure(figsize=(4.2 * len(panels), 4))
    for i, p in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1, projection="3d")
        ax.plot_surface(
            p["grid_x"], p["grid_y"], p["energy"], cmap="inferno", linewidth=0, antialiased=True
        )
        ax.view_init(elev=60, azim=-60)
        (ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([]),
         ax.set_title(p.get("title", ""), fontsize=9))
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


def radial_profile(
    path: str, radii: np.ndarray, curves: Mapping[str, np.ndarray], title: str = ""
) -> str:
    """Energy along the radius, e.g. a trained model beside the exact circle energy."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, ys in curves.items():
        ax.plot(radii, ys, label=name)
    ax.set_xlabel("radius R"), ax.set_ylabel("energy (min = 0)"), ax.set_title(title)
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    return save_figure(fig, path)
