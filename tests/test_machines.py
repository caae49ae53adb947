"""Analytic local score machines: closed forms and brute-force numpy twins (float64), streaming,
Model records."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from diffmem import configlib, energy, sampling
from diffmem.data import toy
from diffmem.machines import Schedule, machine_denoiser, machine_model
from diffmem.machines import local_score as ls
from diffmem.machines import patch_kernel as pk
from diffmem.machines import wiener

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -------------------------------------------------------------------------- brute-force numpy twins
def _softmax_mean(queries_minus_refs_sq, values, sigma):
    """sum_p softmax_p(-d_p / 2 s^2) v_p in float64 with its own max (one query)."""
    logits = -np.asarray(queries_minus_refs_sq) / (2 * sigma**2)
    w = np.exp(logits - logits.max())
    return (w[:, None] * np.asarray(values)).sum(0) / w.sum()


def _padded(img, r, mode="constant"):
    return np.pad(img, ((r, r), (r, r), (0, 0)), mode=mode)


def _brute(Y, x, sigma, machine, k=3, masks=None):
    """Per-pixel enumeration of each machine's references (local_score docstring), independent of
    the kernel."""
    Y, x = np.asarray(Y, np.float64), np.asarray(x, np.float64)
    n, h, w, c = Y.shape
    r = k // 2
    out = np.zeros_like(x)
    for b in range(len(x)):
        s = float(sigma[b])
        if machine == "pspc_square":
            total, count = np.zeros((h, w, c)), np.zeros((h, w, 1))
            for i in range(h - k + 1):
                for j in range(w - k + 1):
                    d = (
                        ((x[b, i : i + k, j : j + k] - Y[:, i : i + k, j : j + k]) ** 2)
                        .reshape(n, -1)
                        .sum(1)
                    )
                    mean = _softmax_mean(d, Y[:, i:i + k, j:j + k].reshape(n, -1), s)
                    total[i:i + k, j:j + k] += mean.reshape(k, k, c)
                    count[i:i + k, j:j + k] += 1
            out[b] = total / count
            continue
        if machine == "pspc_flex":
            total, count = np.zeros((h * w, c)), np.zeros((h * w, 1))
            for p in range(h * w):
                m = masks[b, p]
                d = (
                    ((x[b].reshape(h * w, c)[m] - Y.reshape(n, h * w, c)[:, m]) ** 2)
                    .reshape(n, -1)
                    .sum(1)
                )
                total[m] += _softmax_mean(
                    d, Y.reshape(n, h * w, c)[:, m].reshape(n, -1), s
                ).reshape(-1, c)
                count[m] += 1
            out[b] = (total / count).reshape(h, w, c)
            continue
        xz, xc, Yz = (_padded(x[b], r), _padded(x[b], r, "wrap"),
                      np.stack([_padded(y, r) for y in Y]))
        for hh in range(h):
            for ww in range(w):
                if machine == "ideal":
                    d = ((x[b] - Y) ** 2).reshape(n, -1).sum(1)
                    vals = Y[:, hh, ww]
                elif machine == "ls":
                    d = (
                        ((xz[hh : hh + k, ww : ww + k] - Yz[:, hh : hh + k, ww : ww + k]) ** 2)
                        .reshape(n, -1)
                        .sum(1)
                    )
                    vals = Y[:, hh, ww]
                else:  # els / bbels: every allowed (image, position) pair
                    q = xc[hh:hh + k, ww:ww + k] if machine == "els" else xz[hh:hh + k, ww:ww + k]
                    d, vals = [], []
                    for i in range(h):
                        for j in range(w):
                            if machine == "els":
                                ok = r <= i < h - r and r <= j < w - r
                            # same offset from an edge, or anywhere in the interior along that axis
                            else:
                                same = lambda a, bb, size: (
                                    a == bb if (a < r or a >= size - r) else r <= bb < size - r
                                )
                                ok = same(hh, i, h) and same(ww, j, w)
                            if ok:
                                d.extend(((q - Yz[:, i:i + k, j:j + k]) ** 2).reshape(n, -1).sum(1))
                                vals.extend(Y[:, i, j])
                    d, vals = np.asarray(d), np.asarray(vals)
                out[b, hh, ww] = _softmax_mean(d, vals, s)
    return out


def _data(n=3, h=5, w=5, c=1, b=2, seed=0):
    rng = np.random.default_rng(seed)
    Y = rng.uniform(-1, 1, (n, h, w, c))
    x = Y[:b] + 0.6 * rng.normal(size=(b, h, w, c))
    return Y, x, np.array([0.5, 0.9])[:b]


# ---------------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize(
    "machine,c,chunk",
    [("ls", 1, None), ("els", 2, None), ("bbels", 1, None), ("bbels", 2, 2),
     ("pspc_square", 1, None)],
)
def test_machines_equal_their_brute_force_twins(x64, machine, c, chunk):
    Y, x, s = _data(c=c)
    got = machine_denoiser(Y, machine, patch_size=3, chunk=chunk)(jnp.asarray(x), jnp.asarray(s))
    np.testing.assert_allclose(np.asarray(got), _brute(Y, x, s, machine), rtol=0, atol=1e-10)


def test_pspc_flex_equals_its_twin_and_tau_one_is_the_empirical_denoiser(x64):
    Y, x, s = _data()
    table = jnp.asarray(np.random.default_rng(1).uniform(size=(25, 25)))
    heat = lambda sig: jnp.broadcast_to(table, (sig.shape[0], 25, 25))
    masks = np.asarray(ls.flex_masks(heat(jnp.asarray(s)), 0.6))
    assert 1 < masks.sum(-1).mean() < 25  # a real partial mask
    got = machine_denoiser(Y, "pspc_flex", tau=0.6, heatmap=heat)(jnp.asarray(x), jnp.asarray(s))
    np.testing.assert_allclose(
        np.asarray(got), _brute(Y, x, s, "pspc_flex", masks=masks), atol=1e-10
    )
    # Wiener heatmap, tau = 1
    full = machine_denoiser(Y, "pspc_flex", tau=1.0)(jnp.asarray(x), jnp.asarray(s))
    np.testing.assert_allclose(
        np.asarray(full), np.asarray(energy.empirical_denoiser(Y)(x, s)), atol=1e-12
    )


def test_full_image_patches_and_ideal_equal_the_empirical_denoiser(x64):
    Y, x, s = _data(h=4, w=5)
    want = np.asarray(energy.empirical_denoiser(Y)(x, s))
    np.testing.assert_allclose(np.asarray(machine_denoiser(Y, "ideal")(x, s)), want, atol=1e-12)
    # PSPC with a full-image window (k clipped to the image) and LS whose centred patch covers the
    # whole image
    np.testing.assert_allclose(
        np.asarray(machine_denoiser(Y, "pspc_square", patch_size=99)(x, s)), want, atol=1e-12
    )
    np.testing.assert_allclose(
        np.asarray(machine_denoiser(Y, "ls", patch_size=9)(x, s)), want, atol=1e-12
    )


def test_els_of_one_training_image_closed_forms(x64):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 6, 6, 1))
    # every patch identical: every pixel is the constant, for any x and sigma
    const = np.full((1, 6, 6, 1), 0.3)
    out = machine_denoiser(const, "els", patch_size=3)(x, np.array([0.05, 3.0]))
    np.testing.assert_allclose(np.asarray(out), 0.3, atol=1e-12)
    y = rng.uniform(-1, 1, (1, 6, 6, 1))
    d = machine_denoiser(y, "els", patch_size=3)
    # sigma -> infinity: all 16 patches weigh the same, every pixel is the mean of the interior
    # (centre) pixels
    np.testing.assert_allclose(
        np.asarray(d(x, np.array([1e6, 1e6]))), y[0, 1:5, 1:5].mean(), atol=1e-9
    )
    # sigma -> 0 at x = y: a pixel's own patch is the nearest, so interior pixels are returned
    # exactly
    np.testing.assert_allclose(
        np.asarray(d(y, np.array([1e-3])))[0, 1:5, 1:5], y[0, 1:5, 1:5], atol=1e-12
    )
    s = np.array([0.4, 1.2])
    np.testing.assert_allclose(np.asarray(d(x, s)), _brute(y, x, s, "els"), atol=1e-10)
    # LS of one image: one reference per pixel, weight 1: the image itself
    np.testing.assert_allclose(
        np.asarray(machine_denoiser(y, "ls", patch_size=3)(x, s)), np.broadcast_to(y, x.shape)
    )


def test_wiener_filter_is_the_gaussian_posterior_mean(x64):
    key = jax.random.key(0)
    a = jax.random.normal(key, (6, 6), jnp.float64)
    gmm = toy.GaussianMixture(
        jnp.ones(1), jnp.linspace(-1, 1, 6)[None], (a @ a.T / 6 + 0.1 * jnp.eye(6))[None]
    )
    x = jax.random.normal(jax.random.fold_in(key, 1), (4, 6), jnp.float64) * 2
    s = jnp.array([0.1, 0.5, 1.0, 3.0])
    d = wiener.wiener_from_moments(gmm.means[0], gmm.covs[0])
    np.testing.assert_allclose(
        np.asarray(d(x, s)), np.asarray(jax.jit(gmm.denoiser)(x, s)), atol=1e-12
    )
    # from a training set: its mean and (1/N) covariance
    y = np.random.default_rng(0).normal(size=(50, 6))
    want = wiener.wiener_from_moments(y.mean(0), np.cov(y.T, bias=True))(x, s)
    np.testing.assert_allclose(
        np.asarray(machine_denoiser(y, "wiener")(x, s)), np.asarray(want), atol=1e-12
    )


def test_streaming_chunk_sizes_agree_and_rows_keep_their_own_maximum(x64):
    Y, x, s = _data(n=5)
    full = machine_denoiser(Y, "els", patch_size=3, chunk=None)(x, s)
    # 3 chunks, the last one half padding
    one = machine_denoiser(Y, "els", patch_size=3, chunk=2)(x, s)
    np.testing.assert_allclose(np.asarray(one), np.asarray(full), atol=1e-12)
    # a row whose logits are all ~ -1e6 beside one near 0: a max shared over rows would underflow it
    # to 0 / 0
    refs = jnp.asarray(np.random.default_rng(0).normal(size=(1, 7, 4)))
    q = jnp.concatenate([refs[:, :1] + 1e-3, refs[:, :1] + 1e3], axis=1)              # (1, 2, 4)
    items = pk.chunked(refs[0], 3)
    run = jax.jit(lambda q, items: pk.stream_patch_lse(q, jnp.ones((1, 2)), lambda it: (
        it[0][None], it[0][None], jnp.where(it[1], 0, -1)[None]), items))
    lse, mean = run(q, items)
    d2 = ((np.asarray(q)[0, :, None] - np.asarray(refs)[0][None]) ** 2).sum(-1)
    np.testing.assert_allclose(
        np.asarray(lse)[0], scipy.special.logsumexp(-0.5 * d2, axis=1), rtol=1e-9
    )
    assert np.all(np.isfinite(np.asarray(mean)))


def test_schedule_runs_each_example_at_its_own_patch_size(x64):
    Y, x, _ = _data(b=2)
    s = np.array([0.2, 2.0])
    d = machine_denoiser(Y, "els", patch_size=Schedule((0.3, 1.0), (1, 3)))(x, s)
    np.testing.assert_allclose(np.asarray(d)[0], _brute(Y, x[:1], s[:1], "els", k=1)[0], atol=1e-10)
    np.testing.assert_allclose(np.asarray(d)[1], _brute(Y, x[1:], s[1:], "els", k=3)[0], atol=1e-10)
    # published scales: index i at t = i / 20, sigma = b_t / a_t = tan(t / 1.008 pi / 2) (index 0
    # unused)
    from diffmem.machines import schedule
    kamb = schedule.kamb_schedule("mnist_unet_zeros")
    assert kamb(schedule.kamb_sigma(10 / 20)) == 9 and kamb(schedule.kamb_sigma(19 / 20)) == 27
    assert kamb.values[0] == schedule.KAMB_SCALES["mnist_unet_zeros"][1] and len(kamb.values) == 19
    assert schedule.as_schedule(lambda sig: 3 if sig < 1 else 5, [0.5, 2.0]).values == (3, 5)


def test_machine_model_runs_through_a_registered_sampler(one_device):
    config = configlib.load_config_file(os.path.join(REPO, "configs/digits.py") + ":k=8")
    m = machine_model(config, "8", "els", patch_size=3)
    assert (m.kind, m.step, m.shape, m.k) == ("els", -1, (8, 8, 1), 8)
    # what samplers of this model compile with
    assert m.compiler_options == (pk.compiler_options() or None)
    x = sampling.get_sampler("edm_euler", m).build(m, num_steps=3, sigma_min=0.002, sigma_max=80.0)(
        np.arange(3)
    )
    assert x.shape == (3, 8, 8, 1) and np.all(np.isfinite(np.asarray(x)))
    # the last Euler step returns D(x, sigma_min): at sigma 0.002 each pixel is the centre of its
    # nearest training patch, so every pixel lies on the digits' grid of 17 levels j / 8 - 1
    grid = 8 * (np.asarray(x) + 1)
    assert np.abs(grid - np.round(grid)).max() < 0.05


def test_row_blocks_and_masks_stream_like_one_pass(x64):
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.normal(size=(3, 5, 4)))                       # 3 groups x 5 rows
    refs = jnp.asarray(rng.normal(size=(3, 7, 4)))
    w = jnp.asarray(rng.uniform(size=(3, 5, 4)))                      # per-row precision vectors
    tags = jnp.asarray(rng.integers(0, 2, size=(3, 5)))
    items = (jnp.arange(7),)
    chunk = lambda it: (refs[:, it[0]][:, None], refs[:, it[0]][:, None, :2],
                        jnp.asarray([[it[0] % 2]]))
    run = lambda rb: jax.jit(
        lambda q, w, tags: pk.stream_patch_lse(
            q, jnp.full((3, 5), 2.0), chunk, items, weights=w, query_tags=tags, row_block=rb
        )
    )(q, w, tags)
    one, full = run(2), run(None)
    # brute force: weighted distances, pairs with equal tags only
    d2 = np.einsum(
        "gbd,gbnd->gbn", np.asarray(w), (np.asarray(q)[:, :, None] - np.asarray(refs)[:, None]) ** 2
    )
    ok = np.asarray(tags)[..., None] == (np.arange(7) % 2)[None, None]
    logits = np.where(ok, -d2, -np.inf)
    wts = np.exp(logits - logits.max(-1, keepdims=True))
    want_mean = np.einsum("gbn,gnv->gbv", wts, np.asarray(refs)[..., :2]) / wts.sum(-1)[..., None]
    for lse, mean in (one, full):
        np.testing.assert_allclose(
            np.asarray(lse), scipy.special.logsumexp(logits, axis=-1), rtol=1e-12
        )
        np.testing.assert_allclose(np.asarray(mean), want_mean, atol=1e-12)


def test_calibration_recovers_the_patch_size_of_a_machine_network():
    import types
    from diffmem.machines import calibration
    Y, _, _ = _data(n=4, h=6, w=6)
    net = types.SimpleNamespace(train_data=Y, shape=Y.shape[1:], sigma_min=0.002, sigma_max=80.0,
                                # the "network": ELS k = 3
                                denoiser=machine_denoiser(Y, "els", patch_size=3))
    res = calibration.calibrate(net, "els", candidates=(1, 3), sigmas=(0.5,), images=Y[:2])
    assert res["best"] == [3] and res["schedule"](0.5) == 3
    np.testing.assert_allclose(res["r2"], 1.0, atol=1e-6)
    assert res["mse"][0][0] > 1e-4 > 1e-10 > res["mse"][0][1]


def test_agreement_of_the_empirical_machine_with_itself_is_one(tmp_path, one_device):
    from diffmem.machines import agreement
    from diffmem.workdir import Workdir
    config = configlib.load_config_file(os.path.join(REPO, "configs/digits.py") + ":k=8")
    wd = Workdir(str(tmp_path / "wd"))
    wd.write_config(config)
    wd.specs(config, record=True)
    a, b = np.random.default_rng(0).normal(size=(2, 3, 8, 8, 1))
    np.testing.assert_allclose(agreement.pearson_r(a, 2 * a + 1), 1.0)
    np.testing.assert_allclose(agreement.pearson_r(a, -a), -1.0)
    section = agreement.study_section(wd.path, ["8"], network="optimal", machines=("ideal",),
                                      calibrate_machine=None, sigmas=(0.5,), num_images=2,
                                      num_seeds=2, num_steps=2)
    row = section["data"]["rows"]["8"]
    np.testing.assert_allclose(row["machines"]["ideal"]["r_samples"], 1.0, atol=1e-5)
    np.testing.assert_allclose(row["machines"]["ideal"]["r_denoiser"], 1.0, atol=1e-5)
    assert section["title"] and "| 8 |" in section["markdown"]
    assert all(os.path.exists(f) and f.startswith(wd.path) for f in section["figures"])


def test_network_heatmap_of_a_linear_denoiser_is_its_gain(x64):
    import types
    from diffmem.machines import calibration
    Y = np.random.default_rng(4).uniform(-1, 1, (6, 3, 3, 2))
    # Jacobian = W_sigma
    net = types.SimpleNamespace(shape=Y.shape[1:], denoiser=wiener.wiener_denoiser(Y))
    heat = calibration.network_heatmap(net, [0.3, 2.0], Y[:2])
    # |W_sigma|, channels summed
    want = wiener.wiener_heatmap(Y)(jnp.asarray([0.3, 2.0]))
    np.testing.assert_allclose(
        np.asarray(heat(jnp.asarray([0.31, 1.9]))), np.asarray(want), rtol=1e-6
    )  # float32 table


def test_row_blocks_are_even_and_deep_patches_get_wide_chunks():
    # three blocks of 2091, not 2621 + 2621 + 1030
    assert pk.even_blocks(6272, 2621) == 2091
    assert (
        pk.even_blocks(5, 2) == 2
        and pk.even_blocks(7, 100) == 7
        and pk.even_blocks(4096, 4096) == 4096
    )
    for rows in range(1, 60):
        for most in range(1, 20):
            size = pk.even_blocks(rows, most)
            blocks = -(-rows // size)
            assert size <= max(most, 1) or size == rows
            assert blocks == -(-rows // min(most, rows)) and blocks * size - rows < blocks
    # FMNIST ELS k = 9 (6272 rows, 400 patches per image, D = 81): two images per chunk; shallow
    # patches keep the logits-sized chunks
    assert pk.images_per_chunk(6272, 400, None, 81) == 2
    assert pk.images_per_chunk(4096, 36, None, 9) == pk.images_per_chunk(4096, 36, None) == 7
    assert pk.images_per_chunk(6272, 400, 5, 81) == 5


def test_machines_compiler_options(monkeypatch):
    monkeypatch.setenv(pk.VECTOR_WIDTH_ENV, "0")
    assert pk.compiler_options() == {}
    monkeypatch.setenv(pk.VECTOR_WIDTH_ENV, "256")
    assert pk.compiler_options() == {"xla_cpu_prefer_vector_width": 256}
    monkeypatch.delenv(pk.VECTOR_WIDTH_ENV)
    monkeypatch.setattr(pk, "_host_has_avx512", lambda: True)
    assert pk.compiler_options() == {"xla_cpu_prefer_vector_width": 512}
    monkeypatch.setattr(pk, "_host_has_avx512", lambda: False)
    assert pk.compiler_options() == {}
    monkeypatch.setattr(pk, "_cpu_backend", lambda: False)
    monkeypatch.setattr(pk, "_host_has_avx512", lambda: True)
    assert pk.compiler_options() == {}
    # the 512-bit program computes the same machine up to float32 rounding
    Y, x, s = (np.asarray(a, np.float32) for a in _data(n=5))
    fn = lambda y, x, s: ls.equivariant(y, x, s, 3)
    plain = jax.jit(fn)(Y, x, s)
    wide = jax.jit(fn, compiler_options={"xla_cpu_prefer_vector_width": 512})(Y, x, s)
    np.testing.assert_allclose(np.asarray(wide), np.asarray(plain), rtol=1e-5, atol=1e-6)
