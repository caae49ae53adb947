"""Image loaders on tiny files written in each real format; bad files give errors naming the file."""
import gzip
import io
import os
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from diffmem.data import images as I


def write_idx(path, arr, compress=False):
    header = b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)


def test_digits_shape_range_and_subsets():
    d = I.load_digits()
    assert d.images.shape == (1797, 8, 8, 1) and d.images.min() == -1 and d.images.max() == 1
    a, b = I.k_subset(d, 10, 0), I.k_subset(d, 100, 0)
    np.testing.assert_array_equal(a.images, b.images[:10])  # nested in K
    bal = I.k_subset(d, 50, 3, mode="balanced")
    assert np.all(np.bincount(bal.labels) == 5)
    with pytest.raises(ValueError, match="K = 5000 is larger"):
        I.k_subset(d, 5000, 0)


@pytest.mark.parametrize("compress", [False, True])
def test_fmnist_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    imgs, labs = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)
    sfx = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", imgs, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", labs, compress)
    d = I.load_images(f"fmnist:{tmp_path}")
    np.testing.assert_allclose(d.images[..., 0], imgs / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(d.labels, labs)


def test_bad_idx_files_name_the_file(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    write_idx(p, np.zeros((4, 28, 28)))
    raw = p.read_bytes()
    p.write_bytes(raw[:-100])
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: truncated"):
        I.load_images(f"fmnist:{tmp_path}")
    p.write_bytes(b"garbage!" * 10)
    with pytest.raises(ValueError, match="bad magic"):
        I.load_images(f"fmnist:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        I.load_images(f"fmnist:{tmp_path / 'empty'}")


def write_cifar(path, n_per_batch=3, truncate=False):
    rng = np.random.default_rng(1)
    records = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            labels = rng.integers(0, 10, n_per_batch, dtype=np.uint8)
            pix = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            data = np.concatenate([labels[:, None], pix], 1).tobytes()
            if truncate and name == "data_batch_3.bin":
                data = data[:-7]
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            records[name] = (labels, pix)
    return records


def test_cifar10_binary_round_trip_and_truncation(tmp_path):
    recs = write_cifar(tmp_path / "cifar-10-binary.tar.gz")
    d = I.load_images(f"cifar10-binary:{tmp_path / 'cifar-10-binary.tar.gz'}")
    assert d.images.shape == (15, 32, 32, 3)
    labels, pix = recs["data_batch_1.bin"]
    np.testing.assert_array_equal(d.labels[:3], labels)
    chw = pix[0].reshape(3, 32, 32)
    np.testing.assert_allclose(d.images[0, 5, 7], chw[:, 5, 7] / 127.5 - 1, atol=1e-6)
    test = I.load_images(f"cifar10-binary:{tmp_path / 'cifar-10-binary.tar.gz'}", split="test")
    assert len(test) == 3
    write_cifar(tmp_path / "bad.tar.gz", truncate=True)
    with pytest.raises(ValueError, match="bad.tar.gz: truncated"):
        I.load_images(f"cifar10-binary:{tmp_path / 'bad.tar.gz'}")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="junk.tar.gz"):
        I.load_images(f"cifar10-binary:{tmp_path / 'junk.tar.gz'}")


def test_npz_and_folder_sources(tmp_path):
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.arange(4))
    d = I.load_images(f"npz:{tmp_path / 'a.npz'}")
    np.testing.assert_allclose(d.images, imgs / 127.5 - 1, atol=1e-6)
    np.savez(tmp_path / "bad.npz", images=np.full((2, 4, 4), 3.0, np.float32))
    with pytest.raises(ValueError, match="bad.npz: pixel values must be finite and in"):
        I.load_images(f"npz:{tmp_path / 'bad.npz'}")
    np.savez(tmp_path / "shape.npz", images=np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="shape.npz: expected images of shape"):
        I.load_images(f"npz:{tmp_path / 'shape.npz'}")
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(imgs):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    f = I.load_images(f"folder:{folder}", to_grayscale=True, image_size=4)
    assert f.images.shape == (4, 4, 4, 1)
    np.testing.assert_allclose(I.load_folder(str(folder)).images, d.images, atol=1e-6)
    (folder / "zzz.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="zzz.png: not a readable image"):
        I.load_images(f"folder:{folder}")
    with pytest.raises(ValueError, match="valid sources"):
        I.load_images("imagenet")


def test_missing_tfds_data_says_how_to_prepare_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="file_format='array_record'"):
        I.load_images("tfds:cifar10", data_dir=str(tmp_path))
