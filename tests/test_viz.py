"""Figures people read: numeric labels of the energy landscape never overlap."""
import numpy as np

from diffmem import viz


def _crowded_panel(n_centres=40, n_patterns=9):
    g = np.linspace(-1.5, 1.5, 16)
    gx, gy = np.meshgrid(g, g, indexing="ij")
    a = np.linspace(0, 2 * np.pi, n_centres, endpoint=False)
    # 40 centres 0.16 apart: fixed offsets collide
    centres = np.stack([np.cos(a), np.sin(a)], 1)
    b = np.linspace(0, 2 * np.pi, n_patterns, endpoint=False) + 0.05
    patterns = np.stack([np.cos(b), np.sin(b)], 1)         # each star right next to a centre
    return dict(title="crowded", grid_x=gx, grid_y=gy, energy=gx**2 + gy**2, patterns=patterns,
                pattern_energy=np.linspace(0, 1, n_patterns), centers=centres,
                center_energy=np.linspace(0.01, 0.5, n_centres),
                center_kind=["spurious"] * n_centres)


def _boxes(ax, renderer):
    return [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]


def test_energy_landscape_labels_do_not_overlap():
    fig = viz.energy_landscapes_figure([_crowded_panel(), _crowded_panel(6, 3)])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes[:2]:  # the landscape axes (their colour bars come after them)
        boxes = _boxes(ax, renderer)
        assert len(boxes) >= 9
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), (a, b)
    # every label is either drawn or counted in the one summary line under the crowded panel
    crowded = fig.axes[0]
    numbers = [t.get_text() for t in crowded.texts if "not labelled" not in t.get_text()]
    summary = [t.get_text() for t in crowded.texts if "not labelled" in t.get_text()]
    missing = int(summary[0].split()[0]) if summary else 0
    assert len(numbers) + missing == 49
    assert len(numbers) >= 20   # collision avoidance still labels most of them
    # the sparse panel labels all of its 9 points
    assert len(_boxes(fig.axes[1], renderer)) == 9
    viz.plt.close(fig)


def test_place_labels_keeps_order_and_values():
    fig, ax = viz.plt.subplots(figsize=(3, 3))
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    fig.canvas.draw()
    texts = viz.place_labels(ax, [((0.5, 0.5), 1.234, "k"), ((0.5, 0.5), 2.5, "k")])
    assert [t.get_text() for t in texts] == ["1.23", "2.50"]    # same point: the second moves aside
    r = fig.canvas.get_renderer()
    assert not texts[0].get_window_extent(r).overlaps(texts[1].get_window_extent(r))
    viz.plt.close(fig)
