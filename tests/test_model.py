"""diffmem.model.Model: the record's two constructors, its score (the one conversion in
diffmem.sde), its repr, and its use as a pytree leaf / static jit argument; diffmem.layout's
paths."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import layout, sde
from diffmem.model import Model
from diffmem.workdir import Model as WorkdirModel
from diffmem.workdir import Workdir


def gaussian_denoiser(x, sigma):
    """The optimal denoiser of N(0, I) data: D(x, sigma) = x / (1 + sigma^2)."""
    return x / (1.0 + sde._bcast(sigma, x) ** 2)


def test_from_denoiser_score_and_fields():
    data = np.zeros((5, 3), np.float32)
    m = Model.from_denoiser(gaussian_denoiser, shape=(3,), sigma_range=(0.01, 10), train_data=data)
    assert WorkdirModel is Model and not hasattr(m, "config")
    assert (m.sigma_min, m.sigma_max, m.shape, m.k, m.kind, m.step, m.sde) == (0.01, 10.0, (3,), 5,
                                                                               "denoiser", -1, None)
    x = jax.random.normal(jax.random.key(0), (4, 3))
    sigma = jnp.array([0.1, 0.5, 1.0, 3.0])
    want = -x / (1 + sigma[:, None] ** 2)  # the score of N(0, (1 + sigma^2) I)
    np.testing.assert_allclose(m.score(x, sigma), want, rtol=1e-5)
    np.testing.assert_allclose(m.score(x, 0.5), -x / 1.25, rtol=1e-5)  # a shared sigma broadcasts
    assert m.time_score is None


def test_from_time_score_and_sde_views():
    ve = sde.VESDE(sigma_max=4.0, t_min=1e-3)

    def time_score(x, t):  # N(0, I) data under VE: p_t = N(0, (1 + sigma(t)^2) I)
        return -x / (1.0 + sde._bcast(ve.sigma(t), x) ** 2)

    m = Model.from_time_score(time_score, ve, shape=(2,), name="9", k=9, kind="trained", step=3)
    lo, hi = float(ve.sigma(jnp.float32(1e-3))), float(ve.sigma(jnp.float32(1.0)))
    assert (m.sigma_min, m.sigma_max, m.name, m.k, m.step) == (lo, hi, "9", 9, 3)
    assert m.time_score is time_score and m.sde is ve
    x = jax.random.normal(jax.random.key(1), (3, 2))
    sigma = jnp.array([0.2, 1.0, 2.0])
    np.testing.assert_allclose(m.denoiser(x, sigma), gaussian_denoiser(x, sigma), rtol=1e-5)
    np.testing.assert_allclose(m.score(x, sigma), -x / (1 + sigma[:, None] ** 2), rtol=1e-5)
    # A denoiser with an sde gets the process's time score and sigma range.
    d = Model.from_denoiser(gaussian_denoiser, shape=(2,), sde=ve)
    t = jnp.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(d.time_score(x, t), time_score(x, t), rtol=1e-5)
    assert (d.sigma_min, d.sigma_max) == (lo, hi)


def test_repr_is_short_and_model_is_a_leaf():
    data = np.random.default_rng(0).normal(size=(1000, 8, 8, 1)).astype(np.float32)
    m = Model.from_denoiser(gaussian_denoiser, shape=(8, 8, 1), sigma_range=(0.002, 80.0),
                            train_data=data, data_range=(-1.0, 1.0), name="1000")
    text = repr(m)
    assert "float32(1000, 8, 8, 1)" in text and "function" not in text and len(text) < 300, text
    assert jax.tree.leaves(m) == [m] and jax.tree.leaves({"m": m, "x": 1}) == [m, 1]
    with np.testing.assert_raises(dataclasses.FrozenInstanceError):
        m.name = "2"
    f = jax.jit(lambda model, x: model.denoiser(x, jnp.ones((1,))), static_argnums=0)
    np.testing.assert_allclose(f(m, jnp.ones((1, 8, 8, 1))), 0.5)


def test_layout_is_the_workdirs_paths(tmp_path):
    lay, wd = layout.Layout(str(tmp_path)), Workdir(str(tmp_path))
    assert isinstance(wd, layout.Layout) and repr(wd) == f"Workdir({str(tmp_path)!r})"
    seeds = np.arange(4, 9)
    for f in ("config_path", "metrics_path", "lock_path", "emm_path"):
        assert getattr(lay, f) == getattr(wd, f)
    assert lay.lock_path.endswith(layout.LOCK_NAME)
    assert lay.checkpoint_dir("9") == wd.checkpoint_dir("9") == str(tmp_path / "checkpoints" / "9")
    assert lay.shard_path("9", "optimal", None, seeds) == wd.shard_path("9", "optimal", None, seeds)
    assert lay.samples_dir("9", step=100).endswith("samples/9@100")
    assert type(wd.emm_member(3)) is Workdir and type(lay.emm_member(3)) is layout.Layout
    assert layout.sort_names(["1000_s2", "9", "1000"]) == ["9", "1000", "1000_s2"]
