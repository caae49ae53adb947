"""Assemble an experiment's parts from its config: noise process, network, training sets, loss, denoiser.

Networks, noise processes, losses and training sets are built from a ConfigDict here (the trainer, the
workdir and the stages read their own settings); the objects built take explicit arguments, never a config.
A config describes a *sweep* of models when `data.k` (or `seed`) is a tuple. Every config has the sections
of `diffmem.config_schema`; what a model is follows from them, never from a toy / image flag:
`diffusion_kind` ("sde": a score network s(x, t) trained in SDE time, the tutorial MLP; "precond": a
preconditioned denoiser), `is_vector_model` (the trainer's small-model path) and `data_range`.

Image models combine an architecture (`model.name`) with a preconditioning (`diffusion.precond`):

    model.name   "ddpm_unet"  Ho et al.'s UNet (Pham et al.), `nets.DDPMUNet`
                 "ddpmpp"     EDM's DDPM++ with per-skip switches (Gu et al.), `nets.SongUNet`
    precond      "ddpm" | "vp" | "ve" | "edm"   (`diffmem.precond`)
    loss.name    "eps"        Ho et al.'s epsilon loss on T discrete steps (precond "ddpm" only)
                 "denoising"  EDM's lambda(sigma) |D - x0|^2 with the preconditioning's noise levels

The network always sees the preconditioned input c_in x and a noise label: the preconditioning's c_noise
(the DDPM step for "ddpm", (M-1) t for "vp"), except that the DDPM UNet under "edm" or "ve" gets the DDPM
step of sigma (`precond.StepLabels`), the kind of label its embedding is built for.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffmem import configlib, losses, nets, precond
from diffmem import sde as sde_lib
from diffmem.data import toy

__all__ = ["IMAGE_MODELS", "BLIND_MODELS", "MODELS", "LOSSES", "SUBSETS", "LABEL_MODES",
           "ModelSpec", "VECTOR_MODELS", "DATA_RANGES", "diffusion_kind", "is_vector_model",
           "data_range", "build_sde", "build_model", "network_fn", "base_precond", "build_precond",
           "sigma_range", "denoiser", "score_fn", "build_loss", "load_pool", "load_pool_labels",
           "molrg_from_config", "gmm_from_config", "batch_size", "model_specs", "subset_labels"]

IMAGE_MODELS = ("ddpm_unet", "ddpmpp")
BLIND_MODELS = ("bf_unet", "bf_cnn")  # Kadkhodaie et al.'s bias-free blind denoisers, [0, 1] units
MODELS = ("mlp",) + IMAGE_MODELS + BLIND_MODELS
LOSSES = ("dsm", "eps", "denoising", "blind")
SUBSETS = ("permutation", "balanced", "first", "last")  # first / last: Kadkhodaie's disjoint S1 / S2
LABEL_MODES = ("none", "true", "random", "unique")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One member of a sweep: its name (checkpoint directory), K, seed and training set (K, *S).

    labels: (K,) int class labels of the training set for class-conditional models (`data.labels` =
    "true" | "random" | "unique"), else None.
    """
    name: str
    k: int
    seed: int
    data: np.ndarray
    batch_size: int
    labels: np.ndarray | None = None
    indices: np.ndarray | None = None  # rows of the dataset pool (`data = pool[indices]`)


VECTOR_MODELS = ("mlp",)  # small networks of vector data: one flat optimizer vector, vmapped sweeps, lax.scan
DATA_RANGES = {"images": (-1.0, 1.0), "molrg": (-1.0, 1.0)}  # what samples are clipped to, by data.name


def diffusion_kind(config: ml_collections.ConfigDict) -> str:
    """What the noise process is (`config.diffusion.kind`): "sde", a score network trained in SDE time (its
    Model has an `sde`), or "precond", a preconditioned denoiser on EDM's sigma scale."""
    return config.diffusion.get("kind", "precond")


def is_vector_model(config: ml_collections.ConfigDict) -> bool:
    """Whether the network is one of the small vector models (`VECTOR_MODELS`), which the trainer runs as
    one flat parameter vector, vmapped over a sweep, many steps per lax.scan."""
    return config.model.name in VECTOR_MODELS


def data_range(config: ml_collections.ConfigDict) -> tuple[float, float] | None:
    """(lo, hi) the dataset's examples lie in and samples are clipped to (images: [-1, 1]), else None."""
    return DATA_RANGES.get(config.data.name)


def build_sde(config: ml_collections.ConfigDict) -> sde_lib.SDE:
    """The noise process of a config whose `diffusion.kind` is "sde" (`config_schema.sde_section`)."""
    if diffusion_kind(config) != "sde":
        raise configlib.ConfigError(f"config.diffusion is of kind {diffusion_kind(config)!r} (a preconditioning), "
                                    "not 'sde': this config's model has no SDE.")
    fields = {k: v for k, v in config.diffusion.items() if k not in ("kind", "sde")}
    return sde_lib.make_sde(config.diffusion.sde, **fields)


# ------------------------------------------------------------------------------------------------ network
def build_model(config: ml_collections.ConfigDict, data_shape: tuple[int, ...]):
    """The Linen module named by `config.model.name`, with explicit fields. data_shape: one example's shape."""
    m = config.model
    if m.name == "mlp":
        if len(data_shape) != 1:
            raise configlib.ConfigError(f"model.name='mlp' needs vector data; got data of shape {data_shape}.")
        return nets.ScoreMLP(marginal_std=build_sde(config).marginal_std, out_dim=data_shape[0],
                             num_layers=m.num_layers, hidden=m.hidden, embed=m.embed,
                             fourier_scale=m.fourier_scale)
    if m.name in IMAGE_MODELS and len(data_shape) != 3:
        raise configlib.ConfigError(f"model.name={m.name!r} needs images (H, W, C); got data of shape {data_shape}.")
    if m.name == "ddpm_unet":
        return nets.DDPMUNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                             attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout, num_groups=m.num_groups,
                             nin_init_scale=m.get("nin_init_scale", 1.0))
    if m.name == "ddpmpp":
        return nets.SongUNet(model_channels=m.channels, channel_mult=tuple(m.channel_mult), num_blocks=m.num_blocks,
                             attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                             embedding_type=m.get("embedding_type", "positional"), label_dim=m.get("label_dim", 0),
                             skip_connections=_optional_tuple(m.get("skip_connections"), bool),
                             keep_skips_at=_optional_tuple(m.get("keep_skips_at"), int),
                             drop_disabled_skips=m.get("drop_disabled_skips", False))
    if m.name in BLIND_MODELS:
        if len(data_shape) != 3:
            raise configlib.ConfigError(f"model.name={m.name!r} needs images (H, W, C); got data of shape {data_shape}.")
        if m.name == "bf_unet":
            return nets.BFUNet(num_kernels=m.num_kernels, num_blocks=m.num_blocks, num_enc_conv=m.num_enc_conv,
                               num_mid_conv=m.num_mid_conv, num_dec_conv=m.num_dec_conv)
        return nets.BFCNN(num_layers=m.num_layers, num_kernels=m.num_kernels, first_layer_linear=m.first_layer_linear)
    raise configlib.ConfigError(f"Unknown model.name {m.name!r}; valid: {list(MODELS)}.")


def _optional_tuple(value, kind) -> tuple | None:
    return None if value is None else tuple(kind(v) for v in configlib.sweep(value))


def network_fn(config: ml_collections.ConfigDict, model, params, *, labels=None,
               dropout_rng: jax.Array | None = None) -> precond.RawNet:
    """The raw image network as F(x_in (B, H, W, C), noise_label (B,)) -> (B, H, W, C).

    labels: class labels for a DDPM++ network with `model.label_dim > 0`: None (all-zero labels, EDM's
    convention), an int (every example that class), int (B,) or one-hot / soft (B, label_dim).
    dropout_rng: None = evaluation mode; a key = training mode, dropout drawn from it.
    """
    train = dropout_rng is not None
    rngs = {"dropout": dropout_rng} if train else {}
    if config.model.name == "ddpmpp":
        def f(x, c):
            return model.apply(params, x, c, _batch_labels(labels, x.shape[0]), train=train, rngs=rngs)
        return f
    if config.model.name == "ddpm_unet":
        if labels is not None:
            raise configlib.ConfigError("model.name='ddpm_unet' is unconditional: it takes no class labels "
                                        "(use model.name='ddpmpp' with model.label_dim > 0).")
        return lambda x, c: model.apply(params, x, c, train=train, rngs=rngs)
    raise configlib.ConfigError(f"model.name={config.model.name!r} is not an image network; "
                                f"image networks: {list(IMAGE_MODELS)}.")


def _batch_labels(labels, batch: int):
    if labels is None:
        return None
    labels = jnp.asarray(labels)
    if labels.ndim == 0:
        return jnp.full((batch,), labels, jnp.int32)
    return labels


# ------------------------------------------------------------------------------------- preconditioning
def base_precond(config: ml_collections.ConfigDict):
    """The preconditioning named by `diffusion.precond`, with `diffusion.precond_fields` (the DDPM one takes
    its steps and betas from `diffusion.timesteps`, `beta_start`, `beta_end`)."""
    if diffusion_kind(config) != "precond":
        raise configlib.ConfigError(f"config.diffusion is of kind {diffusion_kind(config)!r}, not 'precond': "
                                    "this config's model has no preconditioning (its noise process is an SDE).")
    d = config.diffusion
    name = d.get("precond", "ddpm")
    if name not in precond.PRECONDITIONINGS:
        raise configlib.ConfigError(f"Unknown diffusion.precond {name!r}; valid: {list(precond.PRECONDITIONINGS)}.")
    fields = dict(d.get("precond_fields", None) or {})
    if name == "ddpm":
        fields.update(num_steps=d.timesteps, beta_start=d.beta_start, beta_end=d.beta_end)
    try:
        return precond.make(name, **fields)
    except ValueError as e:
        raise configlib.ConfigError(f"diffusion.precond_fields: {e}") from None


def build_precond(config: ml_collections.ConfigDict):
    """The preconditioning as the config's network sees it (`base_precond`, with DDPM-step noise labels for
    the DDPM UNet under "edm" and "ve")."""
    p = base_precond(config)
    if config.model.name == "ddpm_unet" and isinstance(p, (precond.EDM, precond.VE)):
        d = config.diffusion
        return precond.StepLabels(p, num_steps=d.timesteps, beta_start=d.beta_start, beta_end=d.beta_end)
    return p


def sigma_range(config: ml_collections.ConfigDict) -> tuple[float, float]:
    """(sigma_min, sigma_max) a sampler should cover for this image config: EDM's [0.002, 80]; VP's
    [sigma(epsilon_t), sigma(1)]; VE's training range; DDPM's first and last grid sigma."""
    p = base_precond(config)
    return float(p.sigma_min), float(p.sigma_max)


def denoiser(config: ml_collections.ConfigDict, model, params, *, labels=None) -> sde_lib.Denoiser:
    """A trained image network as the common denoiser D(x (B, H, W, C), sigma (B,)) -> (B, H, W, C).

    labels: class labels bound into D for a conditional DDPM++ (see `network_fn`); an int (B,) or (B, L)
    array must match the batch D is called with.
    """
    if config.model.name in BLIND_MODELS:  # blind: sigma ignored; D = 2 D_[0,1]((x + 1) / 2) - 1
        return nets.bfcnn.signed_range_denoiser(model, params)
    if config.model.name not in IMAGE_MODELS:
        raise configlib.ConfigError(f"No denoiser view for model.name {config.model.name!r}; "
                                    f"image networks: {list(IMAGE_MODELS)}.")
    return build_precond(config).denoiser(network_fn(config, model, params, labels=labels))


def score_fn(config: ml_collections.ConfigDict, model, params) -> sde_lib.ScoreFn:
    """The trained network as a batched score function s(x, t)."""
    return lambda x, t: model.apply(params, x, t)


# ----------------------------------------------------------------------------------------------- losses
def build_loss(config: ml_collections.ConfigDict, model) -> Callable[..., jax.Array]:
    """Per-example loss `loss(params, x0 (B, *S), key, labels=None) -> (B,)` of the config's network.

    Image losses run the network in training mode: `key` is split into the loss's draws (per example,
    fold_in(key, i)) and the dropout key. `labels` (B,) int are the examples' class labels for a
    class-conditional DDPM++ (`model.label_dim > 0`; the trainer gathers them with the images).
    """
    name = config.loss.name
    if name == "dsm":
        sde = build_sde(config)

        def loss(params, x0, key, labels=None):
            return losses.dsm_from_key(score_fn(config, model, params), x0, key, sde)
        return loss
    if name == "blind":
        return _blind_loss(config, model)
    if name not in LOSSES:
        raise configlib.ConfigError(f"Unknown loss.name {name!r}; valid: {list(LOSSES)}.")
    reduction = config.loss.get("reduction", "mean")  # over each example's pixels; "sum" as EDM's trainer
    if reduction not in losses.REDUCTIONS:
        raise configlib.ConfigError(f"Unknown loss.reduction {reduction!r}; valid: {list(losses.REDUCTIONS)}.")
    if name == "eps":
        d = config.diffusion
        if d.get("precond", "ddpm") != "ddpm":
            raise configlib.ConfigError(f"loss.name='eps' (Ho et al.'s epsilon loss) needs diffusion.precond="
                                        f"'ddpm', not {d.precond!r}; use loss.name='denoising'.")
        ab = jnp.asarray(sde_lib.ddpm_alpha_bar(d.timesteps, d.beta_start, d.beta_end), jnp.float32)

        def loss(params, x0, key, labels=None):
            k_loss, k_drop = jax.random.split(key)
            net = network_fn(config, model, params, dropout_rng=k_drop, labels=labels)
            return losses.ddpm_eps_from_key(net, x0, k_loss, ab, reduction)
        return loss
    p = build_precond(config)

    def loss(params, x0, key, labels=None):
        k_loss, k_drop = jax.random.split(key)
        d = p.denoiser(network_fn(config, model, params, dropout_rng=k_drop, labels=labels))
        return losses.weighted_denoising_from_key(d, x0, k_loss, p, reduction)
    return loss


def _blind_loss(config: ml_collections.ConfigDict, model) -> Callable[..., tuple[jax.Array, dict]]:
    """Kadkhodaie et al.'s blind loss for a bias-free net: `loss(params, x0, key) -> ((B,), new batch_stats)`.

    x0 in diffmem's [-1, 1] is mapped to the net's [0, 1] units; each example is repeated so a step sees
    about `loss.images_per_step` noisy images (their tiling of small sets into batches of 512; 0 = none), each
    with its own sigma = (u sqrt(max_sigma_255))^2 / 255. The network runs in training mode (batch
    statistics); `mutable_collections` tells the trainer to keep the updated running sds.
    """
    if config.model.name not in BLIND_MODELS:
        raise configlib.ConfigError(f"loss.name='blind' trains a bias-free blind net (model.name in "
                                    f"{list(BLIND_MODELS)}), not {config.model.name!r}.")
    lc = config.loss
    per_step, max_sigma_255 = int(lc.get("images_per_step", 0)), float(lc.get("max_sigma_255", 255.0))

    def loss(params, x0, key, labels=None):
        copies = max(1, -(-per_step // x0.shape[0]))
        def residual(y):
            return model.apply(params, y, train=True, mutable=["batch_stats"])
        return losses.blind_denoising_from_key(residual, (x0 + 1.0) / 2.0, key, copies=copies,
                                               max_sigma_255=max_sigma_255)
    loss.mutable_collections = ("batch_stats",)
    return loss


# ------------------------------------------------------------------------------------- data and sweeps
_POOLS: dict = {}   # data config key -> read-only pool (the latest few)
_POOLS_KEPT = 4


def load_pool(config: ml_collections.ConfigDict) -> np.ndarray:
    """The pool the K-subsets are drawn from, (N, *S) float32.

    Loaded once per process for each data config (`config.data` but its K, with the size and mtime
    of a local source file or folder) and returned read-only: every stage of a study, every `Workdir`
    and its sub-workdirs share one copy. Copy it to change it."""
    key = _pool_key(config.data)
    pool = _POOLS.get(key)
    if pool is None:
        pool = np.asarray(_load_pool(config))
        pool.flags.writeable = False
        _POOLS[key] = pool
        while len(_POOLS) > _POOLS_KEPT:
            _POOLS.pop(next(iter(_POOLS)))
    return pool


def _pool_key(d: ml_collections.ConfigDict) -> str:
    import json
    import os
    data = {k: v for k, v in d.to_dict().items() if k != "k"}
    stamps = []
    for name in ("source", "data_dir"):
        value = str(data.get(name) or "")
        for path in {value, value.split(":", 1)[-1]}:
            if path and os.path.exists(path):
                st = os.stat(path)
                stamps.append([path, st.st_size, st.st_mtime_ns])
    return json.dumps([data, stamps], sort_keys=True, default=str)


def _load_pool(config: ml_collections.ConfigDict) -> np.ndarray:
    d = config.data
    if d.name == "images":
        return _load_images(d).images
    if d.name == "circle":
        return toy.circle_pool(d.pool_size)
    if d.name == "gmm":
        return np.asarray(gmm_from_config(config).sample(jax.random.key(d.subset_seed), d.pool_size))
    if d.name == "molrg":
        return _molrg_pool(config)[0]
    raise configlib.ConfigError(f"Unknown data.name {d.name!r}; valid: ['circle', 'gmm', 'images', 'molrg'].")


def load_pool_labels(config: ml_collections.ConfigDict) -> np.ndarray | None:
    """The pool's (N,) int class labels (image datasets that have them), else None."""
    if config.data.name == "molrg":
        return _molrg_pool(config)[1]
    return _load_images(config.data).labels if config.data.name == "images" else None


def molrg_from_config(config: ml_collections.ConfigDict):
    """The MoLRG of configs/molrg.py: n = 3 res^2, K classes of dimension d, basis from `data.basis_seed`."""
    from diffmem.data import molrg
    d = config.data
    return molrg.MoLRG.make(3 * d.resolution**2, d.classes, d.dim, seed=d.basis_seed)


def _molrg_pool(config: ml_collections.ConfigDict):
    """(pool (classes * per_class, res, res, 3), labels): `data.per_class` samples per class, in class order."""
    d = config.data
    return molrg_from_config(config).sample(d.per_class, seed=d.sample_seed, shape=(d.resolution, d.resolution, 3))


def _load_images(d):
    from diffmem.data import images, synthetic
    if synthetic.is_synthetic(d.source):  # C-alpha / discs / prepared CelebA-80 and LSUN crops
        return synthetic.load(d.source, image_size=d.image_size or None)
    return images.load_images(d.source, split=d.split, data_dir=d.data_dir or None, image_size=d.image_size or None,
                              center_crop_images=d.center_crop, to_grayscale=d.grayscale)


def gmm_from_config(config: ml_collections.ConfigDict) -> toy.GaussianMixture:
    """The ground-truth mixture of configs/gmm.py: means on a circle in the first two coordinates."""
    d = config.data
    angles = 2 * np.pi * np.arange(d.components) / d.components
    means = np.zeros((d.components, d.dim), np.float32)
    means[:, 0], means[:, 1 % d.dim] = d.radius * np.cos(angles), d.radius * np.sin(angles)
    return toy.GaussianMixture.isotropic(jnp.asarray(means), d.std)


def batch_size(config: ml_collections.ConfigDict, k: int) -> int:
    """The batch of a sweep member trained on K examples: config.batch_size, capped at K."""
    return min(config.batch_size, k)


def model_specs(config: ml_collections.ConfigDict, *, pool: np.ndarray | None = None,
                indices: dict | None = None) -> list[ModelSpec]:
    """The sweep's members: the product of `data.k` values and `seed` values.

    The K-subset is the first K of a seeded permutation (`data.subset` = "permutation", Pham et al.) or
    class balanced (`"balanced"`, Gu et al.; needs labelled data); both are nested in K.
    pool: the loaded `load_pool(config)` (loaded here if None); indices: {K: rows of the pool} recorded at
    train time (`diffmem.workdir`), used instead of recomputing those subsets.
    """
    from diffmem.data.subsets import check_k, class_balanced, disjoint_set, first_k_of_permutation
    d = config.data
    ks, seeds = configlib.sweep(d.k), configlib.sweep(config.seed)
    subset, label_mode = d.get("subset", "permutation"), d.get("labels", "none")
    if subset not in SUBSETS:
        raise configlib.ConfigError(f"Unknown data.subset {subset!r}; valid: {list(SUBSETS)}.")
    if label_mode not in LABEL_MODES:
        raise configlib.ConfigError(f"Unknown data.labels {label_mode!r}; valid: {list(LABEL_MODES)}.")
    pool = load_pool(config) if pool is None else pool
    pool_labels = load_pool_labels(config) if (subset == "balanced" or label_mode == "true") else None
    if (subset == "balanced" or label_mode == "true") and pool_labels is None:
        raise configlib.ConfigError(f"data.subset={subset!r} / data.labels={label_mode!r} need class labels, and "
                                    f"{d.get('source', d.name)!r} has none: use data.subset='permutation'.")
    specs = []
    for k in ks:
        check_k(k, pool.shape[0], f"the {d.name} pool")
        if indices and k in indices:
            idx = np.asarray(indices[k], np.int64)
        else:
            idx = (class_balanced(pool_labels, k, d.subset_seed) if subset == "balanced"
                   else disjoint_set(pool.shape[0], k, d.subset_seed, subset) if subset in ("first", "last")
                   else first_k_of_permutation(pool.shape[0], k, d.subset_seed))
        labels = subset_labels(label_mode, k, None if pool_labels is None else pool_labels[idx],
                               config.model.get("label_dim", 0), d.subset_seed)
        for seed in seeds:
            name = str(k) if len(seeds) == 1 else f"{k}_s{seed}"
            specs.append(ModelSpec(name, k, seed, pool[idx], batch_size(config, k), labels, idx))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise configlib.ConfigError(f"The sweep repeats a model: {names}.")
    return specs


def subset_labels(mode: str, k: int, true_labels: np.ndarray | None, label_dim: int, seed: int) -> np.ndarray | None:
    """Class labels of a K-subset for Gu et al.'s conditioning study, (K,) int64, or None for "none".

    "true": the dataset's labels; "random": labels drawn uniformly from 0..label_dim-1 once per image
    (seeded); "unique": image i is class i (label_dim >= K). Every mode but "none" needs label_dim > 0.
    """
    if mode == "none":
        return None
    if mode not in LABEL_MODES:
        raise configlib.ConfigError(f"Unknown label mode {mode!r}; valid: {list(LABEL_MODES)}.")
    if label_dim <= 0:
        raise configlib.ConfigError(f"data.labels={mode!r} needs a conditional network: set model.label_dim > 0.")
    if mode == "true":
        if true_labels is None:
            raise configlib.ConfigError("data.labels='true' needs a dataset with class labels.")
        if int(true_labels.max()) >= label_dim:
            raise configlib.ConfigError(f"data.labels='true': labels go up to {int(true_labels.max())}, but "
                                        f"model.label_dim = {label_dim}.")
        return np.asarray(true_labels, np.int64)
    if mode == "random":
        return np.random.default_rng(seed).integers(0, label_dim, k).astype(np.int64)
    if label_dim < k:
        raise configlib.ConfigError(f"data.labels='unique' gives each of the K = {k} images its own class: "
                                    f"model.label_dim must be >= K, got {label_dim}.")
    return np.arange(k, dtype=np.int64)
