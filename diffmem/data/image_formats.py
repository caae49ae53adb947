"""Readers for the image file formats behind `diffmem.data.images`: bytes on disk -> uint8 pixel
arrays.

Every reader returns pixels as (N, H, W, C) arrays (uint8 unless stated) and labels as (N,) int64 or
None, and raises ValueError naming the offending file when a file is truncated, of the wrong shape
or range, or not in the expected format. A file that is simply absent raises FileNotFoundError
saying what to fetch and where to put it. Nothing is ever downloaded, and nothing is unpickled.

Formats:
  * IDX (MNIST / Fashion-MNIST), plain or gzip'd: `read_idx`, `read_fmnist`.
  * The CIFAR-10 *binary* tarball, read in place with tarfile: `read_cifar10_binary`.
  * `.npz` archives (allow_pickle=False): `read_npz`.
  * Folders of PNG/JPEG files: `read_image_folder`.
  * TFDS datasets prepared in the array_record format, read without TensorFlow: `open_tfds`.
"""
from __future__ import annotations

import gzip
import json
import os
import struct
import tarfile
import zipfile
import zlib
from typing import Callable

import numpy as np
from diffmem.errors import InputError, MissingInputError

__all__ = ["FMNIST_DIRS", "FMNIST_FILES", "CIFAR10_FILES", "CIFAR10_RECORD", "TFDS_NAMES",
           "IMAGE_SUFFIXES", "TFDS_OFFLINE", "ChunkReader", "read_idx", "read_fmnist",
           "read_cifar10_binary", "read_npz", "read_image_folder", "tfds_data_dir", "open_tfds"]

# Where Debian's `dataset-fashion-mnist` package installs the four gzip'd IDX files (`dpkg -L` lists
# them).
FMNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
                 "test": ("test_batch.bin",)}
CIFAR10_RECORD = 1 + 3 * 32 * 32  # one label byte, then the 32x32 image as 3 planes (R, G, B)
TFDS_NAMES = ("cifar10", "mnist", "fashion_mnist", "celeb_a")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TFDS_OFFLINE = {  # the same data from a file that needs no TFDS
    "fashion_mnist": "\nOr use the source 'fmnist' (apt-get install dataset-fashion-mnist), no "
                     "TFDS needed.",
    "cifar10": "\nOr download cifar-10-binary.tar.gz and use the source 'cifar10-binary:PATH', no "
               "TFDS needed.",
}

ChunkReader = Callable[[int, int], tuple[np.ndarray, "np.ndarray | None"]]


# ---------------------------------------------------------------------------------------------- IDX
def read_idx(path: str) -> np.ndarray:
    """An unsigned-byte IDX file (gzip'd or plain, detected from its first bytes) as a uint8
    array."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: cannot read IDX file ({e}); is the download complete?") from e
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise InputError(
            f"{path}: not an unsigned-byte IDX file (bad magic number {raw[:4].hex()})."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise InputError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions).")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        what = "truncated" if len(raw) - header < expected else "oversized"
        raise InputError(f"{path}: {what} IDX file ({len(raw) - header} values, its header says "
                         f"{expected} for shape {dims}).")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _idx_path(directory: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    return None


def read_fmnist(
    directory: str | None = None, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (or any MNIST-style IDX pair) from `directory`, else from Debian's install
    path.

    Returns:
      images (N, H, W, 1) uint8 and labels (N,) int64 in 0..9 (N = 60,000 train / 10,000 test for
      the real set).
    """
    if split not in FMNIST_FILES:
        raise InputError(
            f"Fashion-MNIST split must be one of {sorted(FMNIST_FILES)}; got {split!r}."
        )
    dirs = (directory,) if directory else FMNIST_DIRS
    for d in dirs:
        image_path, label_path = (_idx_path(d, stem) for stem in FMNIST_FILES[split])
        if image_path and label_path:
            break
    else:
        raise MissingInputError(
            f"Fashion-MNIST IDX files {list(FMNIST_FILES[split])} (plain or .gz) not found in "
            f"{list(dirs)}. "
            "Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, puts them "
            "in "
            f"{FMNIST_DIRS[0]}), or put the four IDX files from the Fashion-MNIST GitHub page in a "
            f"folder "
            "and use the source 'fmnist:/that/folder'."
        )
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3:
        raise InputError(f"{image_path}: expected images of shape (N, H, W); got {images.shape}.")
    if labels.ndim != 1 or len(labels) != len(images):
        raise InputError(
            f"{label_path}: expected {len(images)} labels (one per image in {image_path}); "
            f"got shape {labels.shape}."
        )
    if labels.size and labels.max() > 9:
        raise InputError(f"{label_path}: labels must be in 0..9; found {labels.max()}.")
    return images[..., None], labels.astype(np.int64)


# ----------------------------------------------------------------------------------------- CIFAR-10
def read_cifar10_binary(path: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from `cifar-10-binary.tar.gz`, read in place (no extraction to disk).

    The archive holds cifar-10-batches-bin/{data_batch_1..5, test_batch}.bin, each a run of
    3,073-byte records: one label byte, then 1,024 red, 1,024 green and 1,024 blue bytes (row-major
    32x32 planes).

    Returns:
      images (N, 32, 32, 3) uint8 (N = 50,000 train / 10,000 test) and labels (N,) int64 in 0..9.
    """
    if split not in CIFAR10_FILES:
        raise InputError(f"CIFAR-10 split must be one of {sorted(CIFAR10_FILES)}; got {split!r}.")
    if not os.path.isfile(path):
        raise MissingInputError(
            f"{path} not found: download cifar-10-binary.tar.gz (the *binary* version, not the "
            f"python one) "
            "from https://www.cs.toronto.edu/~kriz/cifar.html and pass its path as "
            "'cifar10-binary:PATH'."
        )
    wanted = CIFAR10_FILES[split]
    members = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = os.path.basename(member.name)
                if member.isfile() and base in wanted:
                    members[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: not a readable CIFAR-10 binary tarball ({e}); is the download "
                         "complete?") from e
    missing = [n for n in wanted if n not in members]
    if missing:
        raise InputError(
            f"{path}: the archive lacks {missing}; is it the CIFAR-10 *binary* tarball "
            "(cifar-10-binary.tar.gz)?"
        )
    records = []
    for name in wanted:
        raw = members.pop(name)
        if not raw or len(raw) % CIFAR10_RECORD:
            raise InputError(
                f"{path}: {name} is truncated or not CIFAR-10 data ({len(raw)} bytes is not a "
                f"positive multiple of the {CIFAR10_RECORD}-byte record)."
            )
        records.append(np.frombuffer(raw, np.uint8).reshape(-1, CIFAR10_RECORD))
    records = np.concatenate(records)  # the bytes objects are freed as soon as this returns
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise InputError(
            f"{path}: label bytes must be in 0..9; found {labels.max()} (not CIFAR-10 data?)."
        )
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels  # HWC view, no copy


# --------------------------------------------------------------------------------------------- .npz
def read_npz(path: str) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Arrays 'images' and, optionally, 'labels' from an .npz file (never unpickled).

    'images' is (N, H, W) or (N, H, W, C) with C in {1, 3}: either integers in 0..255 or floats
    already in [-1, 1]. 'labels' is (N,) integers.

    Returns:
      (images, labels or None, max_value): uint8 images with max_value 255, or float32 images in
      [-1, 1] with max_value None.
    """
    if not os.path.isfile(path):
        raise MissingInputError(f"{path} not found.")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise InputError(f"{path}: a single .npy array, not an .npz archive; save it with "
                             "np.savez(path, images=..., labels=...).")
        with archive:
            if "images" not in archive.files:
                raise InputError(f"{path}: no 'images' array (it holds {archive.files}).")
            images = archive["images"]
            labels = archive["labels"] if "labels" in archive.files else None
    except ValueError as e:
        if str(e).startswith(f"{path}:"):
            raise
        raise InputError(f"{path}: not a readable .npz archive of plain arrays ({e}).") from e
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a readable .npz archive ({e}).") from e
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or 0 in images.shape:
        raise InputError(
            f"{path}: 'images' must have shape (N, H, W) or (N, H, W, C) with C in 1, 3 and "
            f"no empty axis; got {images.shape}."
        )
    if np.issubdtype(images.dtype, np.integer) and images.dtype != np.bool_:
        if images.min() < 0 or images.max() > 255:
            raise InputError(f"{path}: integer 'images' must be in 0..255; found [{images.min()}, "
                             f"{images.max()}].")
        images, max_value = images.astype(np.uint8, copy=False), 255.0
    elif np.issubdtype(images.dtype, np.floating):
        finite = np.isfinite(images)
        if not finite.all():
            raise InputError(f"{path}: float 'images' must be finite and in [-1, 1]; found "
                             f"{images.size - int(finite.sum())} NaN/inf values.")
        if images.min() < -1 or images.max() > 1:
            raise InputError(
                f"{path}: float 'images' must be finite and in [-1, 1]; found "
                f"[{images.min():.4g}, {images.max():.4g}]. Store uint8 pixels in 0..255 or "
                "scale floats to [-1, 1]."
            )
        images, max_value = images.astype(np.float32, copy=False), None
    else:
        raise InputError(
            f"{path}: 'images' must be uint8 (0..255) or float ([-1, 1]); got {images.dtype}."
        )
    if labels is not None:
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(
                f"{path}: 'labels' must be {len(images)} integers (one per image); got "
                f"{labels.dtype} of shape {labels.shape}."
            )
        labels = labels.astype(np.int64)
    return images, labels, max_value


# ------------------------------------------------------------------------------------ image folders
def _read_image(path: str) -> np.ndarray:
    """One 8-bit image file as (H, W, 1) or (H, W, 3) uint8; alpha is dropped, palettes expanded."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here, naming itself
            if im.mode.startswith(("I", "F")):
                raise InputError(
                    f"{path}: {im.mode} (16-bit or float) images are not supported; save "
                    "8-bit gray or RGB files."
                )
            pixels = np.asarray(im.convert("L" if im.mode in ("1", "L", "LA") else "RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InputError(f"{path}: not a readable image ({e}).") from e
    return pixels[..., None] if pixels.ndim == 2 else pixels


def read_image_folder(path: str) -> np.ndarray:
    """Every .png/.jpg/.jpeg file directly in `path`, sorted by file name, as (N, H, W, C) uint8.

    All files must share one size and one kind (gray -> C = 1, colour -> C = 3).
    """
    if not os.path.isdir(path):
        raise MissingInputError(f"{path} is not a folder (expected a folder of .png/.jpg images).")
    names = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise InputError(f"{path}: no {'/'.join(IMAGE_SUFFIXES)} files in this folder.")
    first = _read_image(os.path.join(path, names[0]))
    out = np.empty((len(names),) + first.shape, np.uint8)
    out[0] = first
    for i, name in enumerate(names[1:], start=1):
        pixels = _read_image(os.path.join(path, name))
        if pixels.shape != first.shape:
            raise InputError(
                f"{os.path.join(path, name)}: image of shape {pixels.shape} (H, W, C) differs "
                f"from {names[0]}'s {first.shape}; all images in a folder must match."
            )
        out[i] = pixels
    return out


# --------------------------------------------------------------------------------------------- TFDS
def tfds_data_dir(data_dir: str | None) -> str:
    """TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.path.expanduser(
        data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    )


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))


def open_tfds(
    name: str, data_dir: str | None = None, split: str = "train"
) -> tuple[int, ChunkReader]:
    """Open a TFDS dataset prepared as array_record under `data_dir`; nothing is downloaded.

    The newest prepared version (`<data_dir>/<name>/<version>/dataset_info.json`) is read through
    `tfds.data_source(..., download=False)`, which needs no TensorFlow.

    Returns:
      (num_examples, read): `read(start, stop)` gives images (stop - start, H, W, C) uint8 and
      labels (stop - start,) int64, or None for datasets without a 'label' feature (celeb_a).
    """
    if name not in TFDS_NAMES:
        raise InputError(
            f"TFDS dataset {name!r} is not supported; choose one of {list(TFDS_NAMES)}."
        )
    data_dir = tfds_data_dir(data_dir)
    root = os.path.join(data_dir, name)
    versions = sorted(
        (
            v
            for v in (os.listdir(root) if os.path.isdir(root) else [])
            if os.path.isfile(os.path.join(root, v, "dataset_info.json"))
        ),
        key=_version_key,
    )
    if not versions:
        raise MissingInputError(
            f"TFDS dataset {name!r} is not prepared under {data_dir} (no "
            f"{name}/<version>/dataset_info.json)."
            " Prepare it once on a machine that can download it, with TensorFlow installed "
            "(pip install 'diffmem[tfds-build]'):\n"
            "    import tensorflow_datasets as tfds\n"
            f"    tfds.builder({name!r}, data_dir={data_dir!r}).download_and_prepare(\n"
            "        file_format='array_record')\n"
            f"then copy the folder {root} to this machine (or pass data_dir= where it is)."
            + TFDS_OFFLINE.get(name, "")
        )
    version_dir = os.path.join(root, versions[-1])
    info_path = os.path.join(version_dir, "dataset_info.json")
    try:
        with open(info_path) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{info_path}: unreadable TFDS dataset info ({e}).") from e
    if info.get("fileFormat") != "array_record":
        raise InputError(
            f"{info_path}: the dataset was prepared as {info.get('fileFormat', 'tfrecord')!r}, "
            f"which needs "
            f"TensorFlow to read. Rebuild it with tfds.builder({name!r}, data_dir={data_dir!r})"
            ".download_and_prepare(file_format='array_record')."
        )
    splits = [s.get("name") for s in info.get("splits", [])]
    if split.split("[")[0] not in splits:
        raise InputError(f"{info_path}: no split {split!r}; this dataset has {splits}.")
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("Reading TFDS data needs the tfds extra: pip install 'diffmem[tfds]' "
                          f"(tensorflow-datasets, array_record, importlib_resources) ({e}).") from e
    try:
        source = tfds.data_source(
            f"{name}:{versions[-1]}", split=split, data_dir=data_dir, download=False
        )
    except ImportError:
        raise
    except Exception as e:  # TFDS raises assorted types for damaged data; add which folder it was
        raise InputError(
            f"{version_dir}: TFDS could not open split {split!r} ({type(e).__name__}: {e})."
        ) from e

    def read(start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        examples = source.__getitems__(list(range(start, stop)))
        images = np.stack([np.asarray(ex["image"], np.uint8) for ex in examples])
        if images.ndim == 3:
            images = images[..., None]
        has_labels = "label" in examples[0]
        labels = np.array([int(ex["label"]) for ex in examples], np.int64) if has_labels else None
        return images, labels

    return len(source), read
