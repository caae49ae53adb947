"""The boundary between a config and everything else: `build(config) -> Experiment`.

    # network, noise process / preconditioning, loss, optimizer, members
    exp = builders.build(config)

Networks, noise processes, losses, optimizers and training sets are built from a ConfigDict here,
once, by registries keyed by the config's names (`NETWORKS`, `LOSS_BUILDERS`); the
`experiment.Experiment` built takes explicit arguments, never a config, and so does everything that
takes it. A config describes a *sweep* of models when `data.k` (or `seed`) is a tuple. Every config
has the sections of `diffmem.config_schema`; what a model is follows from them, never from a toy /
image flag: `diffusion_kind` ("sde": a score network s(x, t) trained in SDE time, the tutorial MLP;
"precond": a preconditioned denoiser), `is_vector_model` (the trainer's small-model path) and
`data_range`.

Image models combine an architecture (`model.name`) with a preconditioning (`diffusion.precond`):

    model.name   "ddpm_unet"  Ho et al.'s UNet (Pham et al.), `nets.DDPMUNet`
                 "ddpmpp"     EDM's DDPM++ with per-skip switches (Gu et al.), `nets.SongUNet`
    precond      "ddpm" | "vp" | "ve" | "edm"   (`diffmem.precond`)
    loss.name    "eps"        Ho et al.'s epsilon loss on T discrete steps (precond "ddpm" only)
                 "denoising"  EDM's lambda(sigma) |D - x0|^2 with the preconditioning's noise levels

The network always sees the preconditioned input c_in x and a noise label: the preconditioning's
c_noise (the DDPM step for "ddpm", (M-1) t for "vp"), except that the DDPM UNet under "edm" or "ve"
gets the DDPM step of sigma (`precond.StepLabels`), the kind of label its embedding is built for.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from diffmem import config_schema, configlib, experiment, losses, nets, optim, precond, schedules
from diffmem import sde as sde_lib
from diffmem.data import subsets
from diffmem.data.subsets import subset_labels  # noqa: F401 (builders.subset_labels)
from diffmem.data.pools import gmm_from_config, load_pool, load_pool_labels, molrg_from_config  # noqa: F401
from diffmem.experiment import Experiment, ModelSpec, SamplerChoice, Training

__all__ = ["IMAGE_MODELS", "BLIND_MODELS", "MODELS", "LOSSES", "SUBSETS", "LABEL_MODES",
           "ModelSpec", "VECTOR_MODELS", "DATA_RANGES", "diffusion_kind", "is_vector_model",
           "data_range", "build_sde", "build_model", "network_fn", "base_precond", "build_precond",
           "sigma_range", "denoiser", "score_fn", "build_loss", "load_pool", "load_pool_labels",
           "molrg_from_config", "gmm_from_config", "batch_size", "model_specs", "subset_labels",
           "NETWORKS", "LOSS_BUILDERS", "Experiment", "build", "build_optimizer", "sampler_choice",
           "training_settings", "snapshot_steps", "monitor_settings"]

IMAGE_MODELS = experiment.IMAGE_NETWORKS
# Kadkhodaie et al.'s bias-free blind denoisers, [0, 1] units
BLIND_MODELS = experiment.BLIND_NETWORKS
# first / last: Kadkhodaie's disjoint S1 / S2
SUBSETS = ("permutation", "balanced", "first", "last")
LABEL_MODES = subsets.LABEL_MODES


# small vector networks: one flat optimizer vector, vmapped
VECTOR_MODELS = experiment.VECTOR_NETWORKS
# what samples are clipped to, by data.name
DATA_RANGES = {"images": (-1.0, 1.0), "molrg": (-1.0, 1.0)}


def diffusion_kind(config: ml_collections.ConfigDict) -> str:
    """What the noise process is (`config.diffusion.kind`): "sde", a score network trained in SDE
    time (its Model has an `sde`), or "precond", a preconditioned denoiser on EDM's sigma scale."""
    return config.diffusion.get("kind", "precond")


def is_vector_model(config: ml_collections.ConfigDict) -> bool:
    """Whether the network is one of the small vector models (`VECTOR_MODELS`), which the trainer
    runs as one flat parameter vector, vmapped over a sweep, many steps per lax.scan."""
    return config.model.name in VECTOR_MODELS


def data_range(config: ml_collections.ConfigDict) -> tuple[float, float] | None:
    """(lo, hi) the dataset's examples lie in and samples are clipped to (images: [-1, 1]), else
    None."""
    return DATA_RANGES.get(config.data.name)


def build_sde(config: ml_collections.ConfigDict) -> sde_lib.SDE:
    """The noise process of a config whose `diffusion.kind` is "sde"
    (`config_schema.sde_section`)."""
    if diffusion_kind(config) != "sde":
        raise configlib.ConfigError(
            f"config.diffusion is of kind {diffusion_kind(config)!r} (a preconditioning), "
            "not 'sde': this config's model has no SDE."
        )
    fields = {k: v for k, v in config.diffusion.items() if k not in ("kind", "sde")}
    return sde_lib.make_sde(config.diffusion.sde, **fields)


# ------------------------------------------------------------------------------------------ network
def _mlp(config, m, data_shape):
    if len(data_shape) != 1:
        raise configlib.ConfigError(
            f"model.name='mlp' needs vector data; got data of shape {data_shape}."
        )
    return nets.ScoreMLP(marginal_std=build_sde(config).marginal_std, out_dim=data_shape[0],
                         num_layers=m.num_layers, hidden=m.hidden, embed=m.embed,
                         fourier_scale=m.fourier_scale)


def _ddpm_unet(config, m, data_shape):
    return nets.DDPMUNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                         attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                         num_groups=m.num_groups, nin_init_scale=m.get("nin_init_scale", 1.0))


def _ddpmpp(config, m, data_shape):
    return nets.SongUNet(model_channels=m.channels, channel_mult=tuple(m.channel_mult),
                         num_blocks=m.num_blocks, attn_resolutions=tuple(m.attn_resolutions),
                         dropout=m.dropout, embedding_type=m.get("embedding_type", "positional"),
                         label_dim=m.get("label_dim", 0),
                         skip_connections=_optional_tuple(m.get("skip_connections"), bool),
                         keep_skips_at=_optional_tuple(m.get("keep_skips_at"), int),
                         drop_disabled_skips=m.get("drop_disabled_skips", False))


def _bf_unet(config, m, data_shape):
    return nets.BFUNet(num_kernels=m.num_kernels, num_blocks=m.num_blocks,
                       num_enc_conv=m.num_enc_conv, num_mid_conv=m.num_mid_conv,
                       num_dec_conv=m.num_dec_conv)


def _bf_cnn(config, m, data_shape):
    return nets.BFCNN(num_layers=m.num_layers, num_kernels=m.num_kernels,
                      first_layer_linear=m.first_layer_linear)


NETWORKS = {"mlp": _mlp, "ddpm_unet": _ddpm_unet, "ddpmpp": _ddpmpp, "bf_unet": _bf_unet,
            "bf_cnn": _bf_cnn}
"""model.name -> builder(config, model section, data shape) of the Linen module."""
MODELS = tuple(NETWORKS)


def build_model(config: ml_collections.ConfigDict, data_shape: tuple[int, ...]):
    """The Linen module named by `config.model.name`, with explicit fields. data_shape: one
    example's shape."""
    m = config.model
    if m.name not in NETWORKS:
        raise configlib.ConfigError(f"Unknown model.name {m.name!r}; valid: {list(MODELS)}.")
    if m.name not in VECTOR_MODELS and len(data_shape) != 3:
        raise configlib.ConfigError(
            f"model.name={m.name!r} needs images (H, W, C); got data of shape {data_shape}."
        )
    return NETWORKS[m.name](config, m, tuple(data_shape))


def _optional_tuple(value, kind) -> tuple | None:
    return None if value is None else tuple(kind(v) for v in configlib.sweep(value))


def network_fn(config: ml_collections.ConfigDict, model, params, *, labels=None,
               dropout_rng: jax.Array | None = None) -> precond.RawNet:
    """The raw image network as F(x_in (B, H, W, C), noise_label (B,)) (`experiment.network_fn`)."""
    return experiment.network_fn(
        config.model.name, model, params, labels=labels, dropout_rng=dropout_rng
    )


# ---------------------------------------------------------------------------------- preconditioning
def base_precond(config: ml_collections.ConfigDict):
    """The preconditioning named by `diffusion.precond`, with `diffusion.precond_fields` (the DDPM
    one takes its steps and betas from `diffusion.timesteps`, `beta_start`, `beta_end`)."""
    if diffusion_kind(config) != "precond":
        raise configlib.ConfigError(
            f"config.diffusion is of kind {diffusion_kind(config)!r}, not 'precond': "
            "this config's model has no preconditioning (its noise process is an SDE)."
        )
    d = config.diffusion
    name = d.get("precond", "ddpm")
    if name not in precond.PRECONDITIONINGS:
        raise configlib.ConfigError(
            f"Unknown diffusion.precond {name!r}; valid: {list(precond.PRECONDITIONINGS)}."
        )
    fields = dict(d.get("precond_fields", None) or {})
    if name == "ddpm":
        fields.update(num_steps=d.timesteps, beta_start=d.beta_start, beta_end=d.beta_end)
    try:
        return precond.make(name, **fields)
    except ValueError as e:
        raise configlib.ConfigError(f"diffusion.precond_fields: {e}") from None


def build_precond(config: ml_collections.ConfigDict):
    """The preconditioning as the config's network sees it (`base_precond`, with DDPM-step noise
    labels for the DDPM UNet under "edm" and "ve")."""
    p = base_precond(config)
    if config.model.name == "ddpm_unet" and isinstance(p, (precond.EDM, precond.VE)):
        d = config.diffusion
        return precond.StepLabels(
            p, num_steps=d.timesteps, beta_start=d.beta_start, beta_end=d.beta_end
        )
    return p


def sigma_range(config: ml_collections.ConfigDict) -> tuple[float, float]:
    """(sigma_min, sigma_max) a sampler should cover for this image config: EDM's [0.002, 80]; VP's
    [sigma(epsilon_t), sigma(1)]; VE's training range; DDPM's first and last grid sigma."""
    p = base_precond(config)
    return float(p.sigma_min), float(p.sigma_max)


def denoiser(config: ml_collections.ConfigDict, model, params, *, labels=None) -> sde_lib.Denoiser:
    """A trained image network as the common denoiser D(x (B, H, W, C), sigma (B,)) -> (B, H, W, C)
    (`Experiment.denoiser`; labels: a conditional DDPM++'s class labels, see `network_fn`)."""
    name = config.model.name
    p = build_precond(config) if name in IMAGE_MODELS else None
    return _view(config, model, p).denoiser(params, labels=labels)


def score_fn(config: ml_collections.ConfigDict, model, params) -> sde_lib.ScoreFn:
    """The trained network as a batched score function s(x, t)."""
    return lambda x, t: model.apply(params, x, t)


def _view(config, model, p) -> Experiment:
    """An Experiment holding only the network and its preconditioning (what parameter views
    need)."""
    return Experiment(config.model.name, model, (), None, p, None, None, None, None, (), (),
                      SamplerChoice(""), None)


# ------------------------------------------------------------------------------------------- losses
def _dsm_loss(config, model, reduction):
    sde = build_sde(config)

    def loss(params, x0, key, labels=None):
        return losses.dsm_from_key(score_fn(config, model, params), x0, key, sde)
    return loss


def _eps_loss(config, model, reduction):
    d = config.diffusion
    if d.get("precond", "ddpm") != "ddpm":
        raise configlib.ConfigError(
            f"loss.name='eps' (Ho et al.'s epsilon loss) needs diffusion.precond="
            f"'ddpm', not {d.precond!r}; use loss.name='denoising'."
        )
    ab = jnp.asarray(sde_lib.ddpm_alpha_bar(d.timesteps, d.beta_start, d.beta_end), jnp.float32)

    def loss(params, x0, key, labels=None):
        k_loss, k_drop = jax.random.split(key)
        net = network_fn(config, model, params, dropout_rng=k_drop, labels=labels)
        return losses.ddpm_eps_from_key(net, x0, k_loss, ab, reduction)
    return loss


def _denoising_loss(config, model, reduction):
    p = build_precond(config)

    def loss(params, x0, key, labels=None):
        k_loss, k_drop = jax.random.split(key)
        d = p.denoiser(network_fn(config, model, params, dropout_rng=k_drop, labels=labels))
        return losses.weighted_denoising_from_key(d, x0, k_loss, p, reduction)
    return loss


def build_loss(config: ml_collections.ConfigDict, model) -> Callable[..., jax.Array]:
    """Per-example loss `loss(params, x0 (B, *S), key, labels=None) -> (B,)` of the config's network
    (`LOSS_BUILDERS`).

    Image losses run the network in training mode: `key` is split into the loss's draws (per
    example,
    fold_in(key, i)) and the dropout key. `labels` (B,) int are the examples' class labels for a
    class-conditional DDPM++ (`model.label_dim > 0`; the trainer gathers them with the images).
    """
    name = config.loss.name
    if name not in LOSS_BUILDERS:
        raise configlib.ConfigError(f"Unknown loss.name {name!r}; valid: {list(LOSSES)}.")
    # over each example's pixels; "sum" as EDM's trainer
    reduction = config.loss.get("reduction", "mean")
    if name in ("eps", "denoising") and reduction not in losses.REDUCTIONS:
        raise configlib.ConfigError(
            f"Unknown loss.reduction {reduction!r}; valid: {list(losses.REDUCTIONS)}."
        )
    return LOSS_BUILDERS[name](config, model, reduction)


def _blind_loss(
    config: ml_collections.ConfigDict, model, reduction=None
) -> Callable[..., tuple[jax.Array, dict]]:
    """Kadkhodaie et al.'s blind loss for a bias-free net: `loss(params, x0, key) -> ((B,), new
    batch_stats)`.

    x0 in diffmem's [-1, 1] is mapped to the net's [0, 1] units; each example is repeated so a step
    sees about `loss.images_per_step` noisy images (their tiling of small sets into batches of 512;
    0 = none), each
    with its own sigma = (u sqrt(max_sigma_255))^2 / 255. The network runs in training mode (batch
    statistics); `mutable_collections` tells the trainer to keep the updated running sds.
    """
    if config.model.name not in BLIND_MODELS:
        raise configlib.ConfigError(
            f"loss.name='blind' trains a bias-free blind net (model.name in "
            f"{list(BLIND_MODELS)}), not {config.model.name!r}."
        )
    lc = config.loss
    per_step, max_sigma_255 = (int(lc.get("images_per_step", 0)),
                               float(lc.get("max_sigma_255", 255.0)))

    def loss(params, x0, key, labels=None):
        copies = max(1, -(-per_step // x0.shape[0]))
        def residual(y):
            return model.apply(params, y, train=True, mutable=["batch_stats"])
        return losses.blind_denoising_from_key(residual, (x0 + 1.0) / 2.0, key, copies=copies,
                                               max_sigma_255=max_sigma_255)
    loss.mutable_collections = ("batch_stats",)
    return loss


LOSS_BUILDERS = {"dsm": _dsm_loss, "eps": _eps_loss, "denoising": _denoising_loss,
                 "blind": _blind_loss}
"""loss.name -> builder(config, network, reduction) of the per-example loss."""
LOSSES = tuple(LOSS_BUILDERS)


# ----------------------------------------------------------------------------------- the experiment
def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optimizer of `config.optim` (`optim.make_optimizer`), flattened for the vector (MLP)
    models; what training and every reader of its checkpoints must build alike."""
    o = config.optim
    return optim.make_optimizer(o.lr, o.b1, o.b2, o.eps, o.grad_clip, o.get("warmup_steps", 0),
                                flatten=is_vector_model(config),
                                decay_every=o.get("decay_every", 0),
                                decay_factor=o.get("decay_factor", 0.5))


def sampler_choice(config: ml_collections.ConfigDict) -> SamplerChoice:
    """The `sample` section and the DDPM grid of `diffusion` as an `experiment.SamplerChoice`."""
    sample = (config.get("sample", None) or ml_collections.ConfigDict()).to_dict()
    diffusion = config.get("diffusion", None) or {}
    return SamplerChoice(
        name=sample.get("sampler", ""),
        optimal_name=sample.get("optimal_sampler") or None,
        section={k: v for k, v in sample.items() if k not in config_schema.SAMPLE_KEYS},
        grid={k: diffusion[k] for k in ("timesteps", "beta_start", "beta_end") if k in diffusion},
        batch=sample.get("batch"),
    )


def training_settings(config: ml_collections.ConfigDict) -> Training:
    """The trainer's cadence, EMA, snapshots and monitor (`experiment.Training`), checked."""
    ema = config.get("ema", None) or {}
    return Training(steps_per_call=int(config.steps_per_call), log_every=int(config.log_every),
                    ckpt_every=int(config.ckpt_every),
                    keep_checkpoints=int(config.keep_checkpoints),
                    ema_decay=float(ema.get("decay", 0.0)),
                    ema_warmup=bool(ema.get("warmup", False)),
                    matmul_precision=config.get("matmul_precision", "default"),
                    snapshots=snapshot_steps(config), monitor=monitor_settings(config))


def snapshot_steps(config: ml_collections.ConfigDict) -> frozenset:
    """The steps of `config.monitor.snapshots` (absent or empty: none), checked: positive multiples
    of steps_per_call."""
    steps = (config.get("monitor", None) or {}).get("snapshots", None) or ()
    steps = configlib.sweep(steps) if not isinstance(steps, (tuple, list)) else tuple(steps)
    bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
           or s % config.steps_per_call]
    if bad:
        raise configlib.ConfigError(
            f"config.monitor.snapshots holds {bad}: snapshot steps must be positive multiples of "
            f"config.steps_per_call = {config.steps_per_call} "
            "(diffmem.studies.training_time.snapshot_schedule picks such steps).")
    return frozenset(int(s) for s in steps)


def monitor_settings(config: ml_collections.ConfigDict) -> dict | None:
    """The `monitor` section with its defaults filled in, checked; None when the monitor is off."""
    section = config.get("monitor", None) or {}
    m = dict(config_schema.MONITOR_DEFAULTS, **{k: section[k] for k in section})
    if not m["every"]:
        return None
    every = config.steps_per_call
    if not isinstance(m["every"], int) or m["every"] < 0 or m["every"] % every:
        raise configlib.ConfigError(
            f"config.monitor.every = {m['every']!r} must be 0 (off) or a positive "
            f"multiple of config.steps_per_call = {every}."
        )
    if not isinstance(m["num_samples"], int) or m["num_samples"] < 1:
        raise configlib.ConfigError(
            f"config.monitor.num_samples = {m['num_samples']!r} must be a positive integer."
        )
    if not 0.0 <= float(m["level"]) <= 1.0:
        raise configlib.ConfigError(
            f"config.monitor.level = {m['level']!r} must be in [0, 1] (0: never stop)."
        )
    if m["metric"] not in config_schema.MONITOR_METRICS:
        raise configlib.ConfigError(
            f"config.monitor.metric = {m['metric']!r}; valid: "
            f"{list(config_schema.MONITOR_METRICS)} (LPIPS weights are not available "
            "to the trainer)."
        )
    return m


def build(config: ml_collections.ConfigDict, *, members=None) -> Experiment:
    """The experiment a config describes (`experiment.Experiment`), built once at the boundary (the
    trainer, `Workdir`, the studies): network, noise process or preconditioning, loss, optimizer,
    members (`model_specs`, or the given ones, e.g. a workdir's recorded subsets) with their
    schedules, sampler choice and training cadence. Nothing built reads the config again."""
    members = tuple(model_specs(config) if members is None else members)
    shape = tuple(members[0].data.shape[1:])
    network = build_model(config, shape)
    sde = build_sde(config) if diffusion_kind(config) == "sde" else None
    return Experiment(
        network_name=config.model.name, network=network, data_shape=shape, sde=sde,
        precond=build_precond(config) if config.model.name in IMAGE_MODELS else None,
        sigma_range=sigma_range(config) if sde is None else None, data_range=data_range(config),
        loss=build_loss(config, network), optimizer=build_optimizer(config), members=members,
        schedules=tuple(schedules.member_schedule(config, m.k, m.batch_size) for m in members),
        sampler=sampler_choice(config), training=training_settings(config))


# ---------------------------------------------------------------------------------- data and sweeps
def batch_size(config: ml_collections.ConfigDict, k: int) -> int:
    """The batch of a sweep member trained on K examples: config.batch_size, capped at K."""
    return min(config.batch_size, k)


def model_specs(config: ml_collections.ConfigDict, *, pool: np.ndarray | None = None,
                indices: dict | None = None) -> list[ModelSpec]:
    """The sweep's members: the product of `data.k` values and `seed` values.

    The K-subset is the first K of a seeded permutation (`data.subset` = "permutation", Pham et al.)
    or class balanced (`"balanced"`, Gu et al.; needs labelled data); both are nested in K. pool:
    the loaded `load_pool(config)` (loaded here if None); indices: {K: rows of the pool} recorded at
    train time (`diffmem.workdir`), used instead of recomputing those subsets.
    """
    from diffmem.data.subsets import check_k, class_balanced, disjoint_set, first_k_of_permutation
    d = config.data
    ks, seeds = configlib.sweep(d.k), configlib.sweep(config.seed)
    subset, label_mode = d.get("subset", "permutation"), d.get("labels", "none")
    if subset not in SUBSETS:
        raise configlib.ConfigError(f"Unknown data.subset {subset!r}; valid: {list(SUBSETS)}.")
    if label_mode not in LABEL_MODES:
        raise configlib.ConfigError(
            f"Unknown data.labels {label_mode!r}; valid: {list(LABEL_MODES)}."
        )
    pool = load_pool(config) if pool is None else pool
    pool_labels = (
        load_pool_labels(config) if (subset == "balanced" or label_mode == "true") else None
    )
    if (subset == "balanced" or label_mode == "true") and pool_labels is None:
        raise configlib.ConfigError(
            f"data.subset={subset!r} / data.labels={label_mode!r} need class labels, and "
            f"{d.get('source', d.name)!r} has none: use data.subset='permutation'."
        )
    specs = []
    for k in ks:
        check_k(k, pool.shape[0], f"the {d.name} pool")
        if indices and k in indices:
            idx = np.asarray(indices[k], np.int64)
        else:
            idx = (
                class_balanced(pool_labels, k, d.subset_seed)
                if subset == "balanced"
                else disjoint_set(pool.shape[0], k, d.subset_seed, subset)
                if subset in ("first", "last")
                else first_k_of_permutation(pool.shape[0], k, d.subset_seed)
            )
        labels = subset_labels(label_mode, k, None if pool_labels is None else pool_labels[idx],
                               config.model.get("label_dim", 0), d.subset_seed)
        for seed in seeds:
            name = str(k) if len(seeds) == 1 else f"{k}_s{seed}"
            specs.append(ModelSpec(name, k, seed, pool[idx], batch_size(config, k), labels, idx))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise configlib.ConfigError(f"The sweep repeats a model: {names}.")
    return specs
