"""Image datasets as float32 NHWC arrays in [-1, 1], and their K-subsets.

    data = load_images("digits")                     # 1,797 real 8x8 digits shipped with scikit-learn
    data = load_images("fmnist")                     # Fashion-MNIST IDX files (Debian dataset-fashion-mnist)
    data = load_images("cifar10-binary:/path/cifar-10-binary.tar.gz")
    data = load_images("npz:/path/images.npz")       # arrays "images" (N,H,W[,C]) uint8 or [-1,1] floats, "labels"
    data = load_images("folder:/path/pngs")          # a folder of PNG/JPEG files (sorted by name)
    data = load_images("tfds:cifar10", data_dir=...) # prepared TFDS array_record data, read without TensorFlow
    sub = k_subset(data, k=1000, seed=0)             # first K of a seeded permutation (Pham et al.)
    sub = k_subset(data, k=1000, seed=0, mode="balanced")  # K / C per class (Gu et al.)

Nothing is downloaded: a missing file stops with a message saying what to fetch and where to put it.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import os
import struct
import tarfile

import numpy as np

from diffmem.data.subsets import class_balanced, first_k_of_permutation

FMNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)  # where Debian's dataset-fashion-mnist installs
FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
TFDS_NAMES = ("cifar10", "mnist", "fashion_mnist", "celeb_a")
SOURCES = ("digits", "fmnist[:DIR]", "cifar10-binary:PATH", "npz:PATH", "folder:PATH", "tfds:NAME")


@dataclasses.dataclass(frozen=True)
class ImageData:
    """images (N, H, W, C) float32 in [-1, 1]; labels (N,) int64 or None; name of the source."""
    images: np.ndarray
    labels: np.ndarray | None
    name: str

    def __len__(self) -> int:
        return len(self.images)


# ------------------------------------------------------------------------------------------- transforms
def to_unit_range(pixels: np.ndarray, max_value: float = 255.0) -> np.ndarray:
    """Integer pixels in [0, max_value] -> float32 in [-1, 1]."""
    return (np.asarray(pixels, np.float32) / (max_value / 2.0) - 1.0).astype(np.float32)


def center_crop(images: np.ndarray) -> np.ndarray:
    """Largest centred square crop of (N, H, W, C) images."""
    h, w = images.shape[1:3]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return images[:, top:top + s, left:left + s]


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, H, W, C) float images in [-1, 1] to size x size (antialiased bilinear, PIL)."""
    from PIL import Image
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, images.shape[3]), np.float32)
    for i, img in enumerate(images):
        for c in range(images.shape[3]):
            ch = Image.fromarray(img[..., c].astype(np.float32), mode="F")
            out[i, ..., c] = np.asarray(ch.resize((size, size), Image.BILINEAR))
    return out


def grayscale(images: np.ndarray) -> np.ndarray:
    """RGB -> luminance (ITU-R 601), keeping a channel axis."""
    if images.shape[-1] == 1:
        return images
    return (images[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def _check(images: np.ndarray, path: str) -> np.ndarray:
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or min(images.shape[1:3]) < 1:
        raise ValueError(f"{path}: expected images of shape (N, H, W, C) with C in 1, 3, 4; got {images.shape}.")
    if not np.all(np.isfinite(images)) or images.min() < -1.0001 or images.max() > 1.0001:
        raise ValueError(f"{path}: pixel values must be finite and in [-1, 1] after scaling; got range "
                         f"[{np.nanmin(images):.3g}, {np.nanmax(images):.3g}].")
    return images


# ---------------------------------------------------------------------------------------------- sources
def load_digits() -> ImageData:
    """scikit-learn's 1,797 real 8x8 handwritten digits (values 0..16), (1797, 8, 8, 1)."""
    from sklearn.datasets import load_digits as sk_digits
    d = sk_digits()
    return ImageData(to_unit_range(d.images[..., None], 16.0), d.target.astype(np.int64), "digits")


def read_idx(path: str) -> np.ndarray:
    """An IDX file (plain or .gz) as a uint8 array; a truncated or foreign file is a clear error."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read IDX file ({e}).") from e
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic number).")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated IDX file ({body.size} values, header says {int(np.prod(dims))}).")
    return body.reshape(dims)


def _find(directory: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        if os.path.exists(os.path.join(directory, name)):
            return os.path.join(directory, name)
    return None


def load_fmnist(directory: str | None = None, split: str = "train") -> ImageData:
    """Fashion-MNIST from its IDX files (Debian's dataset-fashion-mnist installs the full 70,000 images)."""
    if split not in FMNIST_FILES:
        raise ValueError(f"Fashion-MNIST split must be one of {sorted(FMNIST_FILES)}; got {split!r}.")
    dirs = (directory,) if directory else FMNIST_DIRS
    for d in dirs:
        img, lab = (_find(d, s) for s in FMNIST_FILES[split])
        if img and lab:
            images, labels = read_idx(img), read_idx(lab)
            if images.ndim != 3 or labels.shape != images.shape[:1]:
                raise ValueError(f"{img}: expected (N, 28, 28) images with N labels; got {images.shape}, {labels.shape}.")
            return ImageData(to_unit_range(images[..., None]), labels.astype(np.int64), "fmnist")
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files ({', '.join(FMNIST_FILES[split])}[.gz]) not found in {list(dirs)}. Install them "
        "with `apt-get install dataset-fashion-mnist` (Debian), or put the four IDX files in a folder and pass "
        "source='fmnist:/that/folder'.")


def load_cifar10_binary(path: str, split: str = "train") -> ImageData:
    """CIFAR-10 from the *binary* tarball (cifar-10-binary.tar.gz): records of 1 label byte + 3,072 CHW bytes."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: download cifar-10-binary.tar.gz from the CIFAR-10 page "
                                "(the binary version, not the python one) and pass its path.")
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    chunks = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = os.path.basename(member.name)
                if base in names:
                    chunks[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable CIFAR-10 binary tarball ({e}).") from e
    missing = [n for n in names if n not in chunks]
    if missing:
        raise ValueError(f"{path}: archive lacks {missing}; is it the CIFAR-10 *binary* tarball?")
    raw = np.frombuffer(b"".join(chunks[n] for n in names), np.uint8)
    if raw.size % 3073:
        raise ValueError(f"{path}: truncated records ({raw.size} bytes is not a multiple of 3,073).")
    rec = raw.reshape(-1, 3073)
    images = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return ImageData(to_unit_range(images), rec[:, 0].astype(np.int64), "cifar10")


def load_npz(path: str) -> ImageData:
    """Arrays 'images' (N, H, W[, C]) as uint8 [0, 255] or floats in [-1, 1], optional 'labels' (N,)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found.")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise ValueError(f"{path}: no 'images' array (has {z.files}).")
            images, labels = z["images"], (z["labels"] if "labels" in z.files else None)
    except (OSError, ValueError) as e:
        if isinstance(e, ValueError) and str(path) in str(e):
            raise
        raise ValueError(f"{path}: not a readable .npz file ({e}).") from e
    if images.ndim == 3:
        images = images[..., None]
    images = to_unit_range(images) if images.dtype == np.uint8 else images.astype(np.float32)
    if labels is not None and labels.shape != images.shape[:1]:
        raise ValueError(f"{path}: {labels.shape[0]} labels for {images.shape[0]} images.")
    return ImageData(_check(images, path), None if labels is None else labels.astype(np.int64), "npz")


def load_folder(path: str) -> ImageData:
    """Every PNG/JPEG in a folder (sorted by name); all must share one size and mode."""
    from PIL import Image, UnidentifiedImageError
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a folder of images.")
    files = sorted(f for f in os.listdir(path) if f.lower().endswith((".png", ".jpg", ".jpeg")))
    if not files:
        raise ValueError(f"{path}: no .png/.jpg files.")
    arrays = []
    for f in files:
        p = os.path.join(path, f)
        try:
            with Image.open(p) as im:
                a = np.asarray(im.convert("L" if im.mode in ("L", "1", "I;16") else "RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{p}: not a readable image ({e}).") from e
        arrays.append(a[..., None] if a.ndim == 2 else a)
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"{path}: images differ in size or channels: {sorted({a.shape for a in arrays})}.")
    return ImageData(to_unit_range(np.stack(arrays)), None, "folder")


def load_tfds(name: str, data_dir: str | None = None, split: str = "train") -> ImageData:
    """A TFDS dataset prepared in array_record format, read with `tfds.data_source` (no TensorFlow needed)."""
    if name not in TFDS_NAMES:
        raise ValueError(f"TFDS dataset {name!r} not supported; choose one of {list(TFDS_NAMES)}.")
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    root = os.path.join(data_dir, name)
    versions = sorted(v for v in os.listdir(root) if os.path.exists(os.path.join(root, v, "dataset_info.json"))) \
        if os.path.isdir(root) else []
    if not versions:
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared under {data_dir} (no {name}/<version>/dataset_info.json). "
            f"Prepare it once where the data can be downloaded, with TensorFlow installed "
            f"(pip install 'diffmem[tfds-build]'):\n    import tensorflow_datasets as tfds\n"
            f"    tfds.builder({name!r}, data_dir={data_dir!r}).download_and_prepare(\n"
            f"        file_format='array_record')\nthen copy {root} to this machine.")
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("Reading TFDS data needs the tfds extra: pip install 'diffmem[tfds]'.") from e
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    n = len(source)
    first = source[0]
    key = "image"
    images = np.empty((n,) + np.asarray(first[key]).shape, np.uint8)
    labels = np.empty((n,), np.int64) if "label" in first else None
    for i in range(n):
        ex = source[i]
        images[i] = np.asarray(ex[key])
        if labels is not None:
            labels[i] = int(ex["label"])
    return ImageData(to_unit_range(images), labels, name)


def load_images(source: str, *, split: str = "train", data_dir: str | None = None, image_size: int | None = None,
                center_crop_images: bool = False, to_grayscale: bool = False) -> ImageData:
    """Load a dataset by source string (see the module docstring); optional crop, grayscale and resize."""
    kind, _, arg = source.partition(":")
    if kind == "digits":
        data = load_digits()
    elif kind == "fmnist":
        data = load_fmnist(arg or None, split)
    elif kind == "cifar10-binary":
        data = load_cifar10_binary(arg, split)
    elif kind == "npz":
        data = load_npz(arg)
    elif kind == "folder":
        data = load_folder(arg)
    elif kind == "tfds":
        data = load_tfds(arg, data_dir, split)
    else:
        raise ValueError(f"Unknown image source {source!r}; valid sources: {list(SOURCES)}.")
    images = data.images
    if center_crop_images:
        images = center_crop(images)
    if to_grayscale:
        images = grayscale(images)
    if image_size:
        images = resize(images, image_size)
    return ImageData(images, data.labels, data.name)


def k_subset(data: ImageData, k: int, seed: int, mode: str = "permutation") -> ImageData:
    """The K-subset: first K of a seeded permutation ("permutation") or K / C per class ("balanced")."""
    if mode == "permutation":
        idx = first_k_of_permutation(len(data), k, seed)
    elif mode == "balanced":
        if data.labels is None:
            raise ValueError(f"A class-balanced subset needs labels; {data.name} has none.")
        idx = class_balanced(data.labels, k, seed)
    else:
        raise ValueError(f"Unknown subset mode {mode!r}; choose 'permutation' or 'balanced'.")
    return ImageData(data.images[idx], None if data.labels is None else data.labels[idx], data.name)
