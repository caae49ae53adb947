"""Image datasets as float32 NHWC arrays in [-1, 1], their preprocessing, and their K-subsets.

    # 1,797 real 8x8 digits shipped with scikit-learn
    data = load_images("digits")
    # Fashion-MNIST IDX files (Debian dataset-fashion-mnist)
    data = load_images("fmnist")
    data = load_images("fmnist:/dir/with/idx/files")  # the same four IDX files anywhere else
    data = load_images("cifar10-binary:/path/cifar-10-binary.tar.gz", split="test")
    # 'images' uint8 0..255 or floats in [-1, 1], 'labels'
    data = load_images("npz:/path/images.npz")
    data = load_images("folder:/path/pngs")           # every .png/.jpg in a folder, sorted by name
    data = load_images("tfds:celeb_a", data_dir="~/tensorflow_datasets", center_crop_images=True,
                       to_grayscale=True, image_size=80)   # prepared array_record data, no
                                                           TensorFlow
    # first K of a seeded permutation (Pham et al.)
    sub = k_subset(data, k=1000, seed=0)
    sub = k_subset(data, k=1000, seed=0, mode="balanced")  # K / C per class (Gu et al.)

Pixels stay uint8 until they are preprocessed in chunks (crop on the integers, then one conversion
to float32, grayscale, resize), so a large dataset is never held at full resolution in float32.
Nothing is downloaded: a missing file stops with a message saying what to fetch and where to put it;
a damaged one raises ValueError naming the file (see `diffmem.data.image_formats`).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from diffmem.data import image_formats as formats
from diffmem.data.subsets import class_balanced, first_k_of_permutation
from diffmem.errors import InputError

__all__ = ["SOURCES", "CHUNK", "LUMA", "ImageData", "to_unit_range", "center_crop", "grayscale",
           "resize_weights", "resize", "preprocess", "load_images", "k_subset"]

SOURCES = ("digits", "fmnist[:DIR]", "cifar10-binary:PATH", "npz:PATH", "folder:PATH",
           "tfds:NAME (NAME in " + ", ".join(formats.TFDS_NAMES) + ")")
CHUNK = 2048  # images preprocessed per step: bounds the float32 working set
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as PIL's convert("L")


@dataclasses.dataclass(frozen=True)
class ImageData:
    """A labelled (or unlabelled) image set.

    Attributes:
      images: (N, H, W, C) float32 in [-1, 1], C = 1 (gray) or 3 (RGB). labels: (N,) int64 class
      labels, or None. name: the dataset it came from ("digits", "fmnist", "cifar10", "celeb_a", or
      a file/folder name).
    """
    images: np.ndarray
    labels: np.ndarray | None
    name: str

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.float32:
            raise InputError(
                f"{self.name}: images must be (N, H, W, C) float32; got {self.images.dtype} "
                f"{self.images.shape}."
            )
        if self.labels is not None and self.labels.shape != self.images.shape[:1]:
            raise InputError(
                f"{self.name}: {self.labels.shape} labels for {len(self.images)} images."
            )

    def __len__(self) -> int:
        return len(self.images)


# --------------------------------------------------------------------------------------- transforms
def to_unit_range(pixels: np.ndarray, max_value: float = 255.0) -> np.ndarray:
    """Pixels in [0, max_value] (uint8, or digits' 0..16) -> float32 in [-1, 1], same shape.

    Each value is the correctly rounded p / (max_value / 2) - 1 (uint8 goes through a 256-entry
    table).
    """
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return (np.arange(256) / (max_value / 2.0) - 1.0).astype(np.float32)[pixels]
    return (pixels.astype(np.float64) / (max_value / 2.0) - 1.0).astype(np.float32)


def center_crop(images: np.ndarray) -> np.ndarray:
    """The largest centred square of (N, H, W, C) images: (N, S, S, C), S = min(H, W); any dtype."""
    h, w = images.shape[1:3]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return images[:, top:top + s, left:left + s]


def grayscale(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) float images -> (N, H, W, 1) luminance 0.299 R + 0.587 G + 0.114 B; gray passes
    through.

    The weights sum to 1, so the map commutes with the affine [0, 255] -> [-1, 1] scaling.
    """
    if images.shape[-1] == 1:
        return images
    return (np.asarray(images, np.float32) @ LUMA)[..., None]


def resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 rows of the antialiased bilinear (triangle) filter from n_in to n_out
    pixels.

    Pixel centres sit at half-integers; when shrinking, the triangle is widened by n_in / n_out so
    every input pixel contributes (antialiasing). Rows are normalised to sum to 1 over the pixels
    inside the image, which clamps at the borders. This is the filter of PIL's `Image.resize(...,
    BILINEAR)`.
    """
    scale = n_in / n_out
    width = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    dist = (np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / width
    w = np.maximum(0.0, 1.0 - np.abs(dist))
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, H, W, C) float images to (N, size, size, C) with `resize_weights` along each
    axis."""
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    rows = (resize_weights(h, size) @ np.asarray(images, np.float32).reshape(n, h, w * c))
    return resize_weights(w, size) @ rows.reshape(n, size, w, c)  # (size, w) @ (..., w, c)


def preprocess(pixels: np.ndarray, max_value: float | None = 255.0, *,
               center_crop_images: bool = False, to_grayscale: bool = False,
               image_size: int | None = None) -> np.ndarray:
    """Raw pixels (N, H, W, C) in [0, max_value] (or floats in [-1, 1] when max_value is None) ->
    float32 (N, H', W', C') in [-1, 1]: centre crop, then scaling, then grayscale, then resize to
    image_size."""
    if center_crop_images:
        pixels = center_crop(pixels)  # on the raw integers: cheaper than on floats
    x = (
        to_unit_range(pixels, max_value)
        if max_value is not None
        else np.asarray(pixels, np.float32)
    )
    if to_grayscale:
        x = grayscale(x)
    if image_size:
        x = resize(x, image_size)
    return np.clip(x, -1.0, 1.0)  # float rounding of the filters can step 1 ulp outside


def _assemble(n: int, read: formats.ChunkReader, max_value: float | None, name: str,
              **options) -> ImageData:
    """Preprocess `n` images read in chunks into one preallocated float32 array."""
    if n == 0:
        raise InputError(f"{name}: the dataset has no images.")
    images = labels = None
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        raw, raw_labels = read(start, stop)
        x = preprocess(raw, max_value, **options)
        if images is None:
            images = np.empty((n,) + x.shape[1:], np.float32)
            labels = None if raw_labels is None else np.empty((n,), np.int64)
        images[start:stop] = x
        if labels is not None:
            labels[start:stop] = raw_labels
    return ImageData(images, labels, name)


def _from_arrays(pixels: np.ndarray, labels: np.ndarray | None):
    return len(pixels), lambda a, b: (pixels[a:b], None if labels is None else labels[a:b])


# ------------------------------------------------------------------------------------------ loading
def load_images(source: str, *, split: str = "train", data_dir: str | None = None,
                image_size: int | None = None, center_crop_images: bool = False,
                to_grayscale: bool = False) -> ImageData:
    """Load an image dataset named by `source` as float32 (N, H, W, C) in [-1, 1] with int64 labels.

    Args:
      source: "digits" (scikit-learn's 1,797 8x8 digits, values 0..16; the offline default),
        "fmnist" or "fmnist:DIR" (Fashion-MNIST IDX files; default Debian's
        /usr/share/datasets/fashion-mnist), "cifar10-binary:PATH" (cifar-10-binary.tar.gz),
        "npz:PATH", "folder:PATH" (unlabelled), "tfds:NAME" for NAME in cifar10, mnist,
        fashion_mnist, celeb_a (prepared array_record data).
      split: "train" or "test" for fmnist / cifar10-binary; any split the TFDS dataset has
      ("validation",
        "train[:1000]", ...); digits, npz and folder have only "train" (the whole set).
      data_dir: TFDS data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets); tfds only.
      image_size: resize to image_size x image_size (antialiased bilinear); None keeps the size.
      center_crop_images: first crop the largest centred square (celeb_a: 178x178).
      to_grayscale: convert RGB to one luminance channel.
    Returns:
      ImageData; images (N, S, S, C) float32 in [-1, 1], labels (N,) int64 or None (folder, celeb_a,
      npz without 'labels').
    """
    kind, _, arg = source.partition(":")
    kind, arg = kind.strip().lower(), os.path.expanduser(arg)
    if kind in ("digits", "npz", "folder") and split != "train":
        raise InputError(
            f"Source {kind!r} has a single split, 'train' (the whole set); got split={split!r}."
        )
    if kind in ("cifar10-binary", "npz", "folder", "tfds") and not arg:
        raise InputError(f"Source {source!r} needs an argument: {kind}:PATH (or tfds:NAME).")
    options = dict(
        center_crop_images=center_crop_images, to_grayscale=to_grayscale, image_size=image_size
    )
    if image_size is not None and (not isinstance(image_size, (int, np.integer)) or image_size < 1):
        raise InputError(f"image_size must be a positive integer or None; got {image_size!r}.")
    max_value: float | None = 255.0
    if kind == "digits":
        from sklearn.datasets import load_digits
        digits = load_digits()  # float64 images holding the integers 0..16
        n, read = _from_arrays(
            digits.images.astype(np.uint8)[..., None], digits.target.astype(np.int64)
        )
        max_value, name = 16.0, "digits"
    elif kind == "fmnist":
        n, read = _from_arrays(*formats.read_fmnist(arg or None, split))
        name = "fmnist"
    elif kind == "cifar10-binary":
        n, read = _from_arrays(*formats.read_cifar10_binary(arg, split))
        name = "cifar10"
    elif kind == "npz":
        pixels, labels, max_value = formats.read_npz(arg)
        n, read = _from_arrays(pixels, labels)
        name = os.path.basename(arg)
    elif kind == "folder":
        n, read = _from_arrays(formats.read_image_folder(arg), None)
        name = os.path.basename(os.path.normpath(arg))
    elif kind == "tfds":
        n, read = formats.open_tfds(arg, data_dir, split)
        name = arg
    else:
        raise InputError(f"Unknown image source {source!r}; valid sources: {', '.join(SOURCES)}.")
    return _assemble(n, read, max_value, name, **options)


def k_subset(data: ImageData, k: int, seed: int, mode: str = "permutation") -> ImageData:
    """The K-subset of `data`, nested in K for a fixed seed.

    Args:
      k: subset size, 1 <= k <= N (for "balanced", also divisible by the number of classes). seed:
      permutation seed. mode: "permutation", the first K of a seeded permutation (Pham et al.); or
      "balanced", the first
        K / C of each class in that permutation (Gu et al.; needs labels).
    Returns:
      ImageData with (k, H, W, C) images (and labels), in selection order.
    """
    if mode == "permutation":
        idx = first_k_of_permutation(len(data), k, seed)
    elif mode == "balanced":
        if data.labels is None:
            raise InputError(f"A class-balanced K-subset needs labels; {data.name} has none. "
                             "Use mode='permutation'.")
        idx = class_balanced(data.labels, k, seed)
    else:
        raise InputError(f"Unknown K-subset mode {mode!r}; choose 'permutation' or 'balanced'.")
    return ImageData(data.images[idx], None if data.labels is None else data.labels[idx], data.name)
