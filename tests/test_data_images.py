"""Image loaders on tiny files the tests write in each real format (IDX, the CIFAR-10 binary
tarball, .npz, PNG folders, a TFDS array_record dataset built without TensorFlow): exact pixels and
labels back, and every damaged file raises a ValueError naming it."""
import gzip
import io
import json
import os
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from diffmem.data import image_formats as F
from diffmem.data import images as I
from diffmem.data.subsets import class_balanced, first_k_of_permutation

RNG = np.random.default_rng(0)


def unit(pixels, max_value=255.0):
    """The expected float32 values, computed independently of the library (float64, then
    rounded)."""
    return (np.asarray(pixels, np.float64) / (max_value / 2) - 1).astype(np.float32)


# ---------------------------------------------------------------------------------- digits, subsets
@pytest.fixture(scope="module")
def digits():
    return I.load_images("digits")


def test_digits_are_sklearns_images_scaled(digits):
    from sklearn.datasets import load_digits
    ref = load_digits()
    assert digits.images.shape == (1797, 8, 8, 1) and digits.images.dtype == np.float32
    assert digits.images.min() == -1 and digits.images.max() == 1
    np.testing.assert_allclose(digits.images[..., 0], ref.images / 8 - 1, atol=1e-6)
    np.testing.assert_array_equal(digits.labels, ref.target)
    with pytest.raises(ValueError, match="single split"):
        I.load_images("digits", split="test")


def test_k_subsets_nest_balance_and_reject_large_k(digits):
    small, big = I.k_subset(digits, 10, seed=3), I.k_subset(digits, 100, seed=3)
    np.testing.assert_array_equal(small.images, big.images[:10])  # nested in K
    np.testing.assert_array_equal(big.images, digits.images[first_k_of_permutation(1797, 100, 3)])
    assert not np.array_equal(I.k_subset(digits, 10, seed=4).labels, small.labels)
    bal = I.k_subset(digits, 50, seed=3, mode="balanced")
    assert np.all(np.bincount(bal.labels, minlength=10) == 5)
    np.testing.assert_array_equal(bal.images, digits.images[class_balanced(digits.labels, 50, 3)])
    with pytest.raises(ValueError, match="K = 5000 is larger"):
        I.k_subset(digits, 5000, 0)
    with pytest.raises(ValueError, match="divisible"):
        I.k_subset(digits, 55, 0, mode="balanced")
    with pytest.raises(ValueError, match="Unknown K-subset mode"):
        I.k_subset(digits, 5, 0, mode="random")
    unlabelled = I.ImageData(digits.images[:20], None, "x")
    with pytest.raises(ValueError, match="needs labels"):
        I.k_subset(unlabelled, 10, 0, mode="balanced")


# --------------------------------------------------------------------------------------- transforms
def test_resize_is_the_antialiased_triangle_filter():
    # Halving: interior outputs weigh input pixels 2j-1 .. 2j+2 by 1, 3, 3, 1 (/8); at the borders
    # the weights that fall outside the image are dropped and the rest renormalised.
    x = RNG.uniform(-1, 1, (1, 8, 8, 1)).astype(np.float64)
    row = x[0, 0, :, 0]
    w = np.zeros((4, 8))
    w[0, :3] = np.array([3, 3, 1]) / 7
    for j in (1, 2):
        w[j, 2 * j - 1:2 * j + 3] = np.array([1, 3, 3, 1]) / 8
    w[3, 5:] = np.array([1, 3, 3]) / 7
    np.testing.assert_allclose(I.resize_weights(8, 4), w, atol=1e-7)
    flat = np.repeat(x[:, :1], 8, axis=1)  # every row equal: the vertical filter changes nothing
    np.testing.assert_allclose(I.resize(flat.astype(np.float32), 4)[0, 0, :, 0], w @ row, atol=1e-6)
    const = np.full((2, 7, 5, 3), 0.25, np.float32)
    np.testing.assert_allclose(I.resize(const, 3), 0.25, atol=1e-6)
    # The same filter as PIL's BILINEAR resize (an independent implementation), shrinking and
    # enlarging.
    for h, w_, s in [(11, 7, 4), (5, 5, 9)]:
        img = RNG.uniform(-1, 1, (h, w_)).astype(np.float32)
        ref = np.asarray(Image.fromarray(img, mode="F").resize((s, s), Image.BILINEAR))
        np.testing.assert_allclose(I.resize(img[None, :, :, None], s)[0, ..., 0], ref, atol=1e-6)


def test_crop_grayscale_and_the_composed_pipeline(tmp_path):
    x = RNG.integers(0, 256, (3, 6, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(I.center_crop(x), x[:, :, 2:8])
    np.testing.assert_array_equal(
        I.center_crop(x.transpose(0, 2, 1, 3)), x.transpose(0, 2, 1, 3)[:, 2:8]
    )
    gray = I.grayscale(unit(x))
    ref = unit(x[..., 0].astype(float) * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114)
    np.testing.assert_allclose(gray[..., 0], ref, atol=1e-6)
    np.testing.assert_array_equal(I.grayscale(gray), gray)
    np.savez(tmp_path / "rgb.npz", images=x)
    d = I.load_images(
        f"npz:{tmp_path / 'rgb.npz'}", center_crop_images=True, to_grayscale=True, image_size=4
    )
    expected = I.resize(ref[:, :, 2:8, None], 4)
    assert d.images.shape == (3, 4, 4, 1) and d.labels is None and d.name == "rgb.npz"
    np.testing.assert_allclose(d.images, expected, atol=1e-6)
    white = np.full((1, 5, 5, 3), 255, np.uint8)  # rounding must not leave [-1, 1]
    assert I.preprocess(white, to_grayscale=True, image_size=3).max() <= 1.0
    with pytest.raises(ValueError, match="image_size"):
        I.load_images(f"npz:{tmp_path / 'rgb.npz'}", image_size=0)


def test_chunked_loading_equals_one_pass(tmp_path, monkeypatch):
    x = RNG.integers(0, 256, (7, 6, 6, 3), dtype=np.uint8)
    labels = np.arange(7)
    np.savez(tmp_path / "a.npz", images=x, labels=labels)
    whole = I.load_images(f"npz:{tmp_path / 'a.npz'}", to_grayscale=True, image_size=3)
    monkeypatch.setattr(I, "CHUNK", 3)
    chunked = I.load_images(f"npz:{tmp_path / 'a.npz'}", to_grayscale=True, image_size=3)
    np.testing.assert_array_equal(chunked.images, whole.images)
    np.testing.assert_array_equal(chunked.labels, labels)


# ------------------------------------------------------------------------------------ Fashion-MNIST
def write_idx(path, arr, compress=False):
    arr = np.asarray(arr, np.uint8)
    data = (
        b"\x00\x00\x08"
        + bytes([arr.ndim])
        + struct.pack(f">{arr.ndim}I", *arr.shape)
        + arr.tobytes()
    )
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)


def write_fmnist(folder, n=5, compress=False, split="train"):
    folder.mkdir(exist_ok=True)
    imgs, labs = RNG.integers(0, 256, (n, 28, 28)), RNG.integers(0, 10, n)
    sfx = ".gz" if compress else ""
    stems = F.FMNIST_FILES[split]
    write_idx(folder / f"{stems[0]}{sfx}", imgs, compress)
    write_idx(folder / f"{stems[1]}{sfx}", labs, compress)
    return imgs, labs


@pytest.mark.parametrize("compress", [False, True])
def test_fmnist_idx_round_trip(tmp_path, compress):
    imgs, labs = write_fmnist(tmp_path, compress=compress)
    test_imgs, test_labs = write_fmnist(tmp_path, n=3, compress=compress, split="test")
    d = I.load_images(f"fmnist:{tmp_path}")
    assert d.images.shape == (5, 28, 28, 1) and d.name == "fmnist"
    np.testing.assert_array_equal(d.images[..., 0], unit(imgs))
    np.testing.assert_array_equal(d.labels, labs)
    t = I.load_images(f"fmnist:{tmp_path}", split="test")
    np.testing.assert_array_equal(t.images[..., 0], unit(test_imgs))
    np.testing.assert_array_equal(t.labels, test_labs)


def test_fmnist_default_folder_and_missing_files(tmp_path, monkeypatch):
    imgs, _ = write_fmnist(tmp_path / "debian", compress=True)
    monkeypatch.setattr(F, "FMNIST_DIRS", (str(tmp_path / "nowhere"), str(tmp_path / "debian")))
    np.testing.assert_array_equal(I.load_images("fmnist").images[..., 0], unit(imgs))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        I.load_images(f"fmnist:{tmp_path / 'empty'}")
    with pytest.raises(ValueError, match="split must be one of"):
        I.load_images(f"fmnist:{tmp_path / 'debian'}", split="validation")


@pytest.mark.skipif(
    not os.path.isdir(F.FMNIST_DIRS[0]), reason="Debian's dataset-fashion-mnist not installed"
)
def test_real_fmnist_test_split():
    d = I.load_images("fmnist", split="test")
    assert d.images.shape == (10000, 28, 28, 1) and d.images.min() == -1 and d.images.max() == 1
    assert np.all(np.bincount(d.labels) == 1000)


def test_bad_idx_files_name_the_file(tmp_path):
    images, labels = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    write_idx(images, np.zeros((4, 28, 28)))
    write_idx(labels, np.zeros(4))
    good = images.read_bytes()
    cases = [(good[:-100], "train-images-idx3-ubyte: truncated IDX file"),
             (good + b"\x00", "train-images-idx3-ubyte: oversized"),
             (good[:9], "train-images-idx3-ubyte: truncated IDX header"),
             (b"garbage!" * 10, "train-images-idx3-ubyte: not an unsigned-byte IDX file"),
             (gzip.compress(good)[:-30], "train-images-idx3-ubyte: cannot read IDX file")]
    for data, message in cases:
        images.write_bytes(data)
        with pytest.raises(ValueError, match=message):
            I.load_images(f"fmnist:{tmp_path}")
    write_idx(images, np.zeros((4, 784)))  # wrong shape
    with pytest.raises(
        ValueError, match=r"train-images-idx3-ubyte: expected images of shape \(N, H, W\)"
    ):
        I.load_images(f"fmnist:{tmp_path}")
    write_idx(images, np.zeros((3, 28, 28)))  # 4 labels for 3 images
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: expected 3 labels"):
        I.load_images(f"fmnist:{tmp_path}")
    write_idx(labels, [0, 1, 12])  # wrong range
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: labels must be in 0..9"):
        I.load_images(f"fmnist:{tmp_path}")


# ---------------------------------------------------------------------------------- CIFAR-10 binary
def write_cifar(path, n_per_batch=2, damage=None):
    """A cifar-10-binary.tar.gz in the real layout; `damage` = (member, bytes -> bytes)."""
    records = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in F.CIFAR10_FILES["train"] + F.CIFAR10_FILES["test"]:
            labels = RNG.integers(0, 10, n_per_batch, dtype=np.uint8)
            chw = RNG.integers(0, 256, (n_per_batch, 3, 32, 32), dtype=np.uint8)
            data = np.concatenate([labels[:, None], chw.reshape(n_per_batch, -1)], 1).tobytes()
            if damage and damage[0] == name:
                data = damage[1](data)
            if data is None:
                continue
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            records[name] = (labels, chw)
    return records


def test_cifar10_binary_round_trip(tmp_path):
    path = tmp_path / "cifar-10-binary.tar.gz"
    recs = write_cifar(path)
    d = I.load_images(f"cifar10-binary:{path}")
    train = [recs[n] for n in F.CIFAR10_FILES["train"]]
    assert d.images.shape == (10, 32, 32, 3) and d.name == "cifar10"
    np.testing.assert_array_equal(d.labels, np.concatenate([lab for lab, _ in train]))
    # CHW planes -> HWC pixels
    hwc = np.concatenate([chw for _, chw in train]).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(d.images, unit(hwc))
    assert d.images[0, 5, 7, 2] == unit(train[0][1][0, 2, 5, 7])  # blue plane, row 5, column 7
    t = I.load_images(f"cifar10-binary:{path}", split="test")
    np.testing.assert_array_equal(t.images, unit(recs["test_batch.bin"][1].transpose(0, 2, 3, 1)))


def test_bad_cifar10_archives_name_the_file(tmp_path):
    cases = [
        ("truncated.tar.gz", ("data_batch_3.bin", lambda b: b[:-7]),
         "truncated.tar.gz: data_batch_3.bin is truncated"),
        ("nolabel.tar.gz", ("data_batch_1.bin", lambda b: b"\x0c" + b[1:]),
         "nolabel.tar.gz: label bytes"),
        (
            "missing.tar.gz",
            ("data_batch_5.bin", lambda b: None),
            r"missing.tar.gz: the archive lacks "
            r"\['data_batch_5.bin'\]",
        ),
    ]
    for name, damage, message in cases:
        write_cifar(tmp_path / name, damage=damage)
        with pytest.raises(ValueError, match=message):
            I.load_images(f"cifar10-binary:{tmp_path / name}")
    good = tmp_path / "good.tar.gz"
    write_cifar(good, n_per_batch=40)
    # truncated archive
    (tmp_path / "cut.tar.gz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball at all")
    for name in ("cut.tar.gz", "junk.tar.gz"):
        with pytest.raises(ValueError, match=f"{name}: not a readable CIFAR-10 binary tarball"):
            I.load_images(f"cifar10-binary:{tmp_path / name}")
    with pytest.raises(FileNotFoundError, match="cifar-10-binary.tar.gz"):
        I.load_images(f"cifar10-binary:{tmp_path / 'absent.tar.gz'}")


# ---------------------------------------------------------------------------------- npz and folders
def test_npz_round_trip(tmp_path):
    imgs = RNG.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=imgs, labels=np.arange(4, dtype=np.int32))
    d = I.load_images(f"npz:{tmp_path / 'rgb.npz'}")
    np.testing.assert_array_equal(d.images, unit(imgs))
    assert d.labels.dtype == np.int64 and list(d.labels) == [0, 1, 2, 3]
    # floats in [-1, 1] pass through; (N, H, W)
    floats = RNG.uniform(-1, 1, (3, 4, 4)).astype(np.float32)
    np.savez_compressed(tmp_path / "float.npz", images=floats)
    f = I.load_images(f"npz:{tmp_path / 'float.npz'}")
    np.testing.assert_array_equal(f.images[..., 0], floats)
    assert f.labels is None


def test_bad_npz_files_name_the_file(tmp_path):
    bad = {"range.npz": dict(images=np.full((2, 4, 4), 3.0, np.float32)),
           "nan.npz": dict(images=np.full((2, 4, 4), np.nan, np.float32)),
           "int.npz": dict(images=np.full((2, 4, 4), 300, np.int32)),
           "shape.npz": dict(images=np.zeros((2, 4), np.float32)),
           "channels.npz": dict(images=np.zeros((2, 4, 4, 2), np.uint8)),
           "labels.npz": dict(images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(3, np.int64)),
           "nokey.npz": dict(x=np.zeros((2, 4, 4), np.uint8)),
           "object.npz": dict(images=np.array([None, 1], dtype=object))}
    messages = {"range.npz": "must be finite and in", "nan.npz": "must be finite and in",
                "int.npz": "must be in 0..255", "shape.npz": "must have shape",
                "channels.npz": "must have shape", "labels.npz": "'labels' must be 2 integers",
                "nokey.npz": "no 'images' array", "object.npz": "not a readable .npz archive"}
    for name, arrays in bad.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ValueError, match=f"{name}: .*{messages[name]}"):
            I.load_images(f"npz:{tmp_path / name}")
    np.save(tmp_path / "single.npy", np.zeros((2, 4, 4), np.uint8))
    (tmp_path / "text.npz").write_text("not an archive")
    np.savez(tmp_path / "cut.npz", images=np.zeros((64, 8, 8), np.uint8))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:300])
    for name, message in [("single.npy", "a single .npy array"),
                          ("text.npz", "not a readable .npz"), ("cut.npz", "not a readable .npz")]:
        with pytest.raises(ValueError, match=f"{name}: {message}"):
            I.load_images(f"npz:{tmp_path / name}")


def test_png_folder_round_trip_and_bad_files(tmp_path):
    rgb = RNG.integers(0, 256, (3, 5, 6, 3), dtype=np.uint8)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(rgb[::-1]):  # written in reverse: loading sorts by file name
        Image.fromarray(img).save(folder / f"{2 - i:03d}.png")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    d = I.load_images(f"folder:{folder}")
    assert d.name == "pngs" and d.labels is None
    np.testing.assert_array_equal(d.images, unit(rgb))
    gray = tmp_path / "gray"
    gray.mkdir()
    g = RNG.integers(0, 256, (2, 4, 4), dtype=np.uint8)
    for i, img in enumerate(g):
        Image.fromarray(img).save(gray / f"{i}.PNG")
    np.testing.assert_array_equal(I.load_images(f"folder:{gray}").images[..., 0], unit(g))

    Image.fromarray(rgb[0, :4]).save(folder / "100.png")  # wrong shape
    with pytest.raises(ValueError, match=r"100.png: image of shape \(4, 6, 3\)"):
        I.load_images(f"folder:{folder}")
    os.remove(folder / "100.png")
    Image.fromarray(np.zeros((5, 6), np.uint16)).save(folder / "101.png")  # 16-bit
    with pytest.raises(ValueError, match="101.png: I;16"):
        I.load_images(f"folder:{folder}")
    os.remove(folder / "101.png")
    (folder / "zzz.png").write_bytes(b"not an image")  # non-image
    with pytest.raises(ValueError, match="zzz.png: not a readable image"):
        I.load_images(f"folder:{folder}")
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    (folder / "zzz.png").write_bytes(buf.getvalue()[:-200])  # truncated
    with pytest.raises(ValueError, match="zzz.png: not a readable image"):
        I.load_images(f"folder:{folder}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no .png"):
        I.load_images(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        I.load_images(f"folder:{tmp_path / 'absent'}")


def test_unknown_sources_list_the_valid_ones():
    for source in ("imagenet", "npz:", "tfds:imagenet2012"):
        with pytest.raises(ValueError, match="valid sources|needs an argument|not supported"):
            I.load_images(source)
    with pytest.raises(ValueError, match="cifar10-binary:PATH"):
        I.load_images("cifar10")


# --------------------------------------------------------------------------------------------- TFDS
@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    """A 6 + 3 image cifar10 in TFDS's array_record format, written without TensorFlow."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.image_classification import cifar
    tfds.disable_progress_bar()
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    images = RNG.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    with tfds.core.registered.skip_registration():
        class TinyCifar10(cifar.Cifar10):
            name = "cifar10"  # writes <data_dir>/cifar10/<version>, where tfds.data_source looks

            def _split_generators(self, dl_manager):
                return {"train": self._examples(range(6)), "test": self._examples(range(6, 9))}

            def _examples(self, indices):
                # label i: unique, so the test can undo TFDS's shuffling of records
                for i in indices:
                    yield i, {"id": f"img{i}", "image": png(images[i]), "label": i}

    TinyCifar10(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir, images


def test_tfds_array_record_round_trip_without_tensorflow(tiny_tfds):
    data_dir, images = tiny_tfds
    d = I.load_images("tfds:cifar10", data_dir=data_dir)
    assert d.name == "cifar10" and sorted(d.labels) == list(range(6))
    np.testing.assert_array_equal(d.images, unit(images[d.labels]))
    t = I.load_images(
        "tfds:cifar10", data_dir=data_dir, split="test", to_grayscale=True, image_size=8
    )
    assert t.images.shape == (3, 8, 8, 1) and sorted(t.labels) == [6, 7, 8]
    np.testing.assert_allclose(
        t.images, I.resize(I.grayscale(unit(images[t.labels])), 8), atol=1e-6
    )
    with pytest.raises(
        ValueError, match=r"no split 'validation'; this dataset has \['train', 'test'\]"
    ):
        I.load_images("tfds:cifar10", data_dir=data_dir, split="validation")


def test_tfds_missing_or_tfrecord_data_says_how_to_prepare_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)not prepared under .*download_and_prepare\(\n"
                                                r"\s+file_format='array_record'\)"):
        I.load_images("tfds:celeb_a", data_dir=str(tmp_path))
    version = tmp_path / "mnist" / "3.0.1"
    version.mkdir(parents=True)
    (version / "dataset_info.json").write_text(
        json.dumps({"name": "mnist", "splits": [{"name": "train"}]})
    )
    with pytest.raises(
        ValueError, match="dataset_info.json: the dataset was prepared as 'tfrecord'"
    ):
        I.load_images("tfds:mnist", data_dir=str(tmp_path))
