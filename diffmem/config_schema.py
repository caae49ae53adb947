"""The one config schema: every config (toy, image, MoLRG, blind denoiser) has the same top-level
sections.

    section           meaning                                                            default
    seed              model init and training noise (per step: fold_in(seed, step))     required
    data              the dataset (`data.name`: circle | gmm | images | molrg) and K     required
    model             the network (`model.name`: mlp | ddpm | ddpmpp | bf_unet | bf_cnn) required
    diffusion         the noise process (`diffusion.kind`): "sde" (a VE / VP SDE in time  required
                      t, for score networks: `sde_section`) or "precond" (an EDM-family
                      preconditioning of a denoiser, `image_configs.diffusion_section`)
    loss              `loss.name`: dsm | eps | denoising | blind                         required
    optim             Adam, clipping, warm-up, staircase decay (`optim_section`)         required
    ema               EMA of the weights: decay, warmup                                  {}
    schedule          length / lr ramp-up / EMA half-life in images                      all 0
                      (`schedule_section`)                                              (step-based)
    batch_size, steps, steps_per_call, log_every, ckpt_every                             required
    keep_checkpoints  checkpoints kept per model                                         2
    matmul_precision  "default" | "bfloat16" | ...                                       "default"
    sample            the sampler (`sample.sampler`) and its settings                    required
    study             the settings of the config's study (bin/toy.py, bin/disjoint.py)   {}
    monitor           memorization measured during training (`every` = 0: off;          MONITOR_
                      `diffmem.monitor`)                                                 DEFAULTS

Every config is built by `assemble`, which fills the defaults and checks the result (`validate`): an
unknown section or key is a ConfigError naming the valid ones. Within `data`, `model`, `diffusion`
and `loss` the valid keys depend on the section's kind (its `name`, or `kind` for diffusion);
`study` is free-form. config.json files written before this schema (toy configs with an `sde`
section, image `diffusion` sections without `kind`, missing sections) are brought up to it on load
by `migrate` (`diffmem.workdir`).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
from typing import Any, Mapping

import ml_collections

from diffmem.errors import ConfigError

__all__ = ["REQUIRED", "MONITOR_DEFAULTS", "MONITOR_METRICS", "SCHEDULE_DEFAULTS", "OPTIONAL",
           "SECTIONS", "SAMPLE_BATCH", "DATA_KEYS", "MODEL_KEYS", "LOSS_KEYS", "DIFFUSION_KINDS",
           "PRECOND_KEYS", "OPTIM_KEYS", "EMA_KEYS", "MONITOR_KEYS", "SAMPLE_KEYS",
           "SAMPLER_SETTINGS", "samplers", "RULES", "FREE_TEXT", "sde_section", "mlp_section",
           "optim_section", "schedule_section", "assemble", "normalize", "RENAMED", "migrate",
           "validate", "check"]

REQUIRED = ("seed", "data", "model", "diffusion", "loss", "optim", "batch_size", "steps",
            "steps_per_call", "log_every", "ckpt_every", "sample")
MONITOR_DEFAULTS = dict(every=0, num_samples=256, level=0.0, metric="pixel", snapshots=())
MONITOR_METRICS = ("pixel",)
"""`diffmem.monitor`: f_mem every `every` steps (0: off), stop at `level` (0: never); `snapshots`:
checkpoint steps kept besides the latest `keep_checkpoints` (the training-time study samples
them)."""
SCHEDULE_DEFAULTS = dict(duration_mimg=0.0, lr_rampup_mimg=0.0, ema_halflife_mimg=0.0,
                         ema_rampup_ratio=0.0, ema_mode="edm", scale_with_k=False)
OPTIONAL = dict(ema={}, schedule=SCHEDULE_DEFAULTS, keep_checkpoints=2, matmul_precision="default",
                study={}, monitor=MONITOR_DEFAULTS)
SECTIONS = (
    REQUIRED[:6]
    + ("ema", "schedule")
    + REQUIRED[6:11]
    + ("keep_checkpoints", "matmul_precision", "sample", "study", "monitor")
)
"""Every top-level key, in the order configs list them."""
SAMPLE_BATCH = {"sde": 4096, "precond": 256}
"""Seeds per sharded sampling call when `sample.batch` is not given, by `diffusion.kind`."""

# Keys of the kinded sections, by kind (`name`; `kind` for diffusion). `subset` and `labels` are
# read for every dataset (`builders.model_specs`).
_SUBSET_KEYS = ("name", "k", "subset", "subset_seed", "labels")
DATA_KEYS = {
    "circle": _SUBSET_KEYS + ("pool_size",),
    "gmm": _SUBSET_KEYS + ("dim", "components", "std", "radius", "pool_size"),
    "images": _SUBSET_KEYS
    + ("source", "split", "image_size", "center_crop", "grayscale", "data_dir"),
    "molrg": _SUBSET_KEYS
    + ("resolution", "classes", "dim", "basis_seed", "sample_seed", "per_class"),
}
MODEL_KEYS = {
    "mlp": ("name", "num_layers", "hidden", "embed", "fourier_scale"),
    "ddpm_unet": (
        "name",
        "ch",
        "ch_mult",
        "num_res_blocks",
        "attn_resolutions",
        "dropout",
        "num_groups",
        "nin_init_scale",
    ),
    "ddpmpp": (
        "name",
        "channels",
        "channel_mult",
        "num_blocks",
        "attn_resolutions",
        "dropout",
        "embedding_type",
        "label_dim",
        "skip_connections",
        "keep_skips_at",
        "drop_disabled_skips",
    ),
    "bf_unet": (
        "name",
        "num_kernels",
        "num_blocks",
        "num_enc_conv",
        "num_mid_conv",
        "num_dec_conv",
    ),
    "bf_cnn": ("name", "num_layers", "num_kernels", "first_layer_linear"),
}
LOSS_KEYS = {"dsm": ("name",), "eps": ("name", "reduction"), "denoising": ("name", "reduction"),
             "blind": ("name", "images_per_step", "max_sigma_255", "units")}
DIFFUSION_KINDS = ("sde", "precond")
PRECOND_KEYS = ("kind", "precond", "timesteps", "beta_start", "beta_end", "precond_fields")
OPTIM_KEYS = ("lr", "b1", "b2", "eps", "grad_clip", "warmup_steps", "decay_every", "decay_factor")
EMA_KEYS = ("decay", "warmup")
MONITOR_KEYS = tuple(MONITOR_DEFAULTS) + ("sampler", "num_steps")
SAMPLE_KEYS = ("num", "sampler", "optimal_sampler", "batch")
"""`sample` keys besides the settings of the registered samplers (`diffmem.sampling.SAMPLERS`)."""


SAMPLER_SETTINGS = {"em": ("num_steps", "eps"), "ode": ("eps",),
                    "ddpm_ancestral": ("timesteps", "beta_start", "beta_end"),
                    "ddim": ("num_steps", "eta", "timesteps", "beta_start", "beta_end"),
                    "edm_euler": ("num_steps", "sigma_min", "sigma_max"),
                    "edm_heun": ("num_steps", "sigma_min", "sigma_max"),
                    "ks": ("h0", "beta", "sigma_L", "init_mean", "max_iters")}
"""The built-in samplers (`diffmem.sampling.SAMPLERS`) and their settings, known here without
importing JAX so a config is checked in a second (a test keeps the two equal)."""


def samplers() -> dict[str, tuple[str, ...]]:
    """{sampler: its settings}: the live registry once `diffmem.sampling` is imported (it may hold
    samplers a user registered), else the built-in ones (`SAMPLER_SETTINGS`)."""
    live = sys.modules.get("diffmem.sampling")
    if live is None:
        return SAMPLER_SETTINGS
    return {name: tuple(spec.settings) for name, spec in live.SAMPLERS.items()}


def _sampler_names() -> tuple[str, ...]:
    return tuple(samplers())

# -------------------------------------------------------------------------------------- value rules
_SEED = ("range", 0, 2**32 - 1)           # jax.random.key and numpy's RandomState take 32-bit seeds
_COUNT = ("range", 1, 1 << 40)
_SIZE = ("range", 1, 1 << 16)             # channels, widths, layers
_POSITIVE = ("range", 0.0, 1e6, "(]")
_UNIT_OPEN = ("range", 0.0, 1.0, "()")
_BOOL = ("bool",)
RULES = {
    "seed": _SEED,
    # data
    "data.k": _COUNT,
    "data.subset": ("choices", ("permutation", "balanced", "first", "last")),
    "data.subset_seed": _SEED,
    "data.labels": ("choices", ("none", "true", "random", "unique")),
    "data.pool_size": ("range", 1, 1 << 32),
    "data.dim": _SIZE,
    "data.components": _SIZE,
    "data.std": _POSITIVE,
    "data.radius": ("range", 0.0, 1e6),
    "data.image_size": ("range", 0, 4096),
    "data.center_crop": _BOOL,
    "data.grayscale": _BOOL,
    "data.resolution": ("range", 1, 4096),
    "data.classes": _SIZE,
    "data.basis_seed": _SEED,
    "data.sample_seed": _SEED,
    "data.per_class": _COUNT,
    # model
    "model.num_layers": _SIZE,
    "model.hidden": _SIZE,
    "model.embed": _SIZE,
    "model.fourier_scale": _POSITIVE,
    "model.ch": _SIZE,
    "model.ch_mult": ("range", 1, 64),
    "model.num_res_blocks": ("range", 0, 64),
    "model.attn_resolutions": ("range", 1, 4096),
    "model.dropout": ("range", 0.0, 1.0, "[)"),
    "model.num_groups": _SIZE,
    "model.nin_init_scale": ("range", 0.0, 1e3),
    "model.channels": _SIZE,
    "model.channel_mult": ("range", 1, 64),
    "model.num_blocks": ("range", 1, 64),
    "model.embedding_type": ("choices", ("positional", "fourier")),
    "model.label_dim": ("range", 0, 1 << 20),
    "model.skip_connections": _BOOL,
    "model.keep_skips_at": ("range", 1, 4096),
    "model.drop_disabled_skips": _BOOL,
    "model.num_kernels": _SIZE,
    "model.num_enc_conv": ("range", 1, 64),
    "model.num_mid_conv": ("range", 1, 64),
    "model.num_dec_conv": ("range", 1, 64),
    "model.first_layer_linear": _BOOL,
    # diffusion (an SDE's fields, or a preconditioning with its DDPM grid)
    "diffusion.sigma_max": ("range", 1e-6, 1e6),
    "diffusion.sigma_min": ("range", 1e-9, 1e6),
    "diffusion.t_min": _UNIT_OPEN,
    "diffusion.t_max": ("range", 0.0, 1.0, "(]"),
    "diffusion.beta_min": _POSITIVE,
    "diffusion.beta_max": _POSITIVE,
    "diffusion.precond": ("choices", ("ddpm", "vp", "ve", "edm")),
    "diffusion.timesteps": ("range", 1, 1 << 20),
    "diffusion.beta_start": _UNIT_OPEN,
    "diffusion.beta_end": _UNIT_OPEN,
    "diffusion.precond_fields.sigma_data": _POSITIVE,
    "diffusion.precond_fields.sigma_min": _POSITIVE,
    "diffusion.precond_fields.sigma_max": _POSITIVE,
    "diffusion.precond_fields.p_mean": ("range", -20.0, 20.0),
    "diffusion.precond_fields.p_std": ("range", 0.0, 20.0, "(]"),
    "diffusion.precond_fields.timestep": ("choices", ("nearest", "continuous")),
    "diffusion.precond_fields.beta_d": _POSITIVE,
    "diffusion.precond_fields.beta_min": _POSITIVE,
    "diffusion.precond_fields.M": ("range", 1, 1 << 20),
    "diffusion.precond_fields.epsilon_t": _UNIT_OPEN,
    # loss
    "loss.reduction": ("choices", ("sum", "mean")),
    "loss.images_per_step": ("range", 1, 1 << 20),
    "loss.max_sigma_255": ("range", 0.0, 1e4, "(]"),
    # optimizer, EMA, schedule
    "optim.lr": ("range", 1e-8, 1.0),
    "optim.b1": ("range", 0.0, 1.0, "[)"),
    "optim.b2": ("range", 0.0, 1.0, "[)"),
    "optim.eps": ("range", 0.0, 1.0, "(]"),
    "optim.grad_clip": ("range", 0.0, 1e6),
    "optim.warmup_steps": ("range", 0, 1 << 40),
    "optim.decay_every": ("range", 0, 1 << 40),
    "optim.decay_factor": ("range", 0.0, 1.0, "(]"),
    "ema.decay": ("range", 0.0, 1.0, "[)"),
    "ema.warmup": _BOOL,
    "schedule.duration_mimg": ("range", 0.0, 1e6),
    "schedule.lr_rampup_mimg": ("range", 0.0, 1e6),
    "schedule.ema_halflife_mimg": ("range", 0.0, 1e6),
    "schedule.ema_rampup_ratio": ("range", 0.0, 1e3),
    "schedule.ema_mode": ("choices", ("edm", "gu")),
    "schedule.scale_with_k": _BOOL,
    # the training loop
    "batch_size": ("range", 1, 1 << 20),
    "steps": ("range", 0, 1 << 40),  # 0: each member trains for its schedule (`diffmem.schedules`)
    "steps_per_call": ("range", 1, 1 << 20),
    "log_every": _COUNT,
    "ckpt_every": _COUNT,
    # the last checkpoint is the result: at least one is kept
    "keep_checkpoints": ("range", 1, 1 << 20),
    # devices
    "matmul_precision": ("choices", ("default", "bfloat16", "tensorfloat32", "float32", "highest")),
    # sampling (`sample.sampler` and the settings of every sampler)
    "sample.num": ("range", 1, 1 << 30),
    "sample.batch": ("range", 1, 1 << 20),
    "sample.sampler": ("choices", _sampler_names),
    "sample.optimal_sampler": ("choices", _sampler_names),
    "sample.num_steps": ("range", 1, 1 << 20),
    "sample.eps": _UNIT_OPEN,
    "sample.eta": ("range", 0.0, 1.0),
    "sample.timesteps": ("range", 1, 1 << 20),
    "sample.beta_start": _UNIT_OPEN,
    "sample.beta_end": _UNIT_OPEN,
    "sample.sigma_min": _POSITIVE,
    "sample.sigma_max": _POSITIVE,
    "sample.h0": ("range", 0.0, 1.0, "(]"),
    "sample.beta": ("range", 0.0, 1.0, "(]"),
    "sample.sigma_L": _POSITIVE,
    "sample.init_mean": ("range", -1e3, 1e3),
    "sample.max_iters": ("range", 1, 10**7),
    # memorization monitor
    "monitor.every": ("range", 0, 1 << 40),
    "monitor.num_samples": ("range", 1, 1 << 20),
    "monitor.level": ("range", 0.0, 1.0),
    "monitor.metric": ("choices", MONITOR_METRICS),
    "monitor.snapshots": _COUNT,
    "monitor.sampler": ("choices", _sampler_names),
    "monitor.num_steps": ("range", 1, 1 << 20),
}
"""The allowed value of every config key that is not free text (`check`): ("range", lo, hi[,
bounds]) with bounds "[]" (default), "[)", "(]" or "()"; ("choices", names or a function giving
them); ("bool",). A sweep (tuple) is checked item by item, and None (a documented "unset") passes.
Checked by `validate`, so a bad value is refused when the config is read, before any JAX work."""
FREE_TEXT = ("data.name", "data.source", "data.split", "data.data_dir", "model.name",
             "diffusion.kind", "diffusion.sde", "loss.name", "loss.units")
"""String keys without a fixed list of values: kinds checked by `validate`'s tables, dataset sources
and paths checked when the data is read, and notes."""


# ----------------------------------------------------------------------------------------- sections
def sde_section(name: str = "ve", **fields) -> dict:
    """`diffusion` of a score network trained in SDE time: `diffusion.sde` names a `diffmem.sde`
    process ("ve", "ve_geometric", "vp") and the other keys are its fields (sigma_max, t_min,
    ...)."""
    from diffmem import sde as sde_lib  # here, not at the top: reading a config does not load JAX
    if name not in sde_lib.SDES:
        raise ConfigError(f"Unknown SDE {name!r}; valid: {sorted(sde_lib.SDES)}.")
    return dict(kind="sde", sde=name, **fields)


def mlp_section(
    *, num_layers: int = 4, hidden: int = 128, embed: int = 128, fourier_scale: float = 16.0
) -> dict:
    """`model` of the toy configs: the tutorial's score MLP (`nets.ScoreMLP`) at its published
    sizes."""
    return dict(
        name="mlp", num_layers=num_layers, hidden=hidden, embed=embed, fourier_scale=fourier_scale
    )


def optim_section(lr: float, *, grad_clip: float = 0.0, warmup_steps: int = 0, b1: float = 0.9,
                  b2: float = 0.999, eps: float = 1e-8) -> dict:
    """`optim`: Adam (b1, b2, eps), global-norm clipping (0 = off), linear warm-up over
    `warmup_steps`."""
    return dict(lr=lr, b1=b1, b2=b2, eps=eps, grad_clip=grad_clip, warmup_steps=warmup_steps)


def schedule_section(**fields) -> dict:
    """`schedule`: training length, lr ramp-up and EMA half-life in Mimg, turned into steps per
    member at train time from its K and batch (`diffmem.schedules`; each 0 = the step-based setting:
    `steps`, `optim.warmup_steps`, `ema.decay`). Fields: SCHEDULE_DEFAULTS."""
    unknown = sorted(set(fields) - set(SCHEDULE_DEFAULTS))
    if unknown:
        raise ConfigError(f"Unknown schedule field(s) {unknown}; valid: {list(SCHEDULE_DEFAULTS)}.")
    return dict(SCHEDULE_DEFAULTS, **fields)


def assemble(*, seed, data: dict, model: dict, diffusion: dict, loss: dict, optim: dict,
             batch_size: int, steps: int, steps_per_call: int, log_every: int, ckpt_every: int,
             sample: dict, ema: dict | None = None, schedule: dict | None = None,
             keep_checkpoints: int = 2, matmul_precision: str = "default",
             study: dict | None = None, monitor: dict | None = None) -> ml_collections.ConfigDict:
    """The full config of the one schema (module docstring), defaults filled in and checked.

    batch_size: per model, min(batch_size, K). steps: optimizer steps of every member (0 = each
    member's schedule.duration_mimg). steps_per_call: optimizer steps per compiled call.
    matmul_precision "bfloat16": float32 matmuls and convolutions take bf16 inputs on GPUs/TPUs
    (params, optimizer state and accumulation stay float32; no effect on CPU; see
    `jax.default_matmul_precision`).
    """
    c = dict(seed=seed, data=data, model=model, diffusion=diffusion, loss=loss, optim=optim,
             batch_size=batch_size, steps=steps, steps_per_call=steps_per_call, log_every=log_every,
             ckpt_every=ckpt_every, sample=sample, keep_checkpoints=keep_checkpoints,
             matmul_precision=matmul_precision)
    for key, value in (("ema", ema), ("schedule", schedule), ("study", study),
                       ("monitor", monitor)):
        if value is not None:
            c[key] = value
    config = ml_collections.ConfigDict({key: c[key] for key in SECTIONS if key in c})
    normalize(config)
    validate(config)
    return config


# ------------------------------------------------------------------------------ defaults, migration
def normalize(config) -> Any:
    """Fill the schema's defaults in place (a ConfigDict or a JSON dict): missing optional sections,
    missing `monitor` / `schedule` fields, `optim.warmup_steps`, `sample.batch`. Returns
    `config`."""
    def has(node, key):
        return key in node

    def put(node, key, value):
        if isinstance(node, ml_collections.ConfigDict):
            with node.unlocked():
                node[key] = copy.deepcopy(value)
        else:  # a JSON dict: tuples as lists, as config.json holds them
            node[key] = json.loads(json.dumps(value))

    for key, default in OPTIONAL.items():
        if not has(config, key):
            put(config, key, default)
    for key, defaults in (("schedule", SCHEDULE_DEFAULTS), ("monitor", MONITOR_DEFAULTS)):
        for field, value in defaults.items():
            if not has(config[key], field):
                put(config[key], field, value)
    if "optim" in config and not has(config["optim"], "warmup_steps"):
        put(config["optim"], "warmup_steps", 0)
    if "sample" in config and "diffusion" in config and not has(config["sample"], "batch"):
        put(config["sample"], "batch", SAMPLE_BATCH[config["diffusion"].get("kind", "precond")])
    return config


_ANCESTRAL = {"ddpm": "ddpm_ancestral"}
RENAMED = {"model.name": {"ddpm": "ddpm_unet"}, "loss.name": {"ddpm": "eps"},
           "sample.sampler": _ANCESTRAL, "sample.optimal_sampler": _ANCESTRAL,
           "monitor.sampler": _ANCESTRAL}
"""Names of earlier schemas, by key: "ddpm" named a network, a loss and a sampler as well as the
preconditioning; each now has its own name, and only `diffusion.precond` keeps "ddpm"."""


def migrate(obj: dict) -> dict:
    """A config.json dict of any earlier schema in this one (a new dict): the toy `sde` section
    {name, ...} becomes `diffusion` of kind "sde", an image `diffusion` section without `kind` gets
    kind "precond", the old names are renamed (`RENAMED`), and the defaults are filled
    (`normalize`). A config of this schema comes back equal."""
    obj = copy.deepcopy(dict(obj))
    if "sde" in obj and "diffusion" not in obj:
        fields = dict(obj.pop("sde"))
        obj["diffusion"] = dict(kind="sde", sde=fields.pop("name", "ve"), **fields)
    if isinstance(obj.get("diffusion"), dict) and "kind" not in obj["diffusion"]:
        obj["diffusion"] = dict(kind="precond", **obj["diffusion"])
    for dotted, renamed in RENAMED.items():
        section, key = dotted.split(".")
        node = obj.get(section)
        if isinstance(node, dict) and node.get(key) in renamed:
            node[key] = renamed[node[key]]
    obj = {
        key: obj[key]
        for key in sorted(obj, key=lambda k: SECTIONS.index(k) if k in SECTIONS else len(SECTIONS))
    }
    return normalize(obj)


# --------------------------------------------------------------------------------------- validation
def validate(config) -> None:
    """Check the config's keys against the schema: every required section present, no unknown
    section or key (the error names the valid ones), known kinds in the kinded sections."""
    keys = list(config.keys())
    if "sde" in keys and "diffusion" not in keys:
        raise ConfigError(
            "config.sde is the old name of the noise process: write it as config.diffusion = "
            "config_schema.sde_section(name, sigma_max=..., t_min=...) (kind 'sde'; see "
            "diffmem.config_schema)."
        )
    _check_keys("config", keys, SECTIONS, "sections")
    missing = [k for k in REQUIRED if k not in keys]
    if missing:
        raise ConfigError(
            f"The config lacks the section(s) {missing}; every config has {list(REQUIRED)} "
            "(build it with diffmem.config_schema.assemble)."
        )
    _check_kinded(config, "data", "name", DATA_KEYS)
    _check_kinded(config, "model", "name", MODEL_KEYS)
    _check_kinded(config, "loss", "name", LOSS_KEYS)
    kind = config.diffusion.get("kind", "precond")
    _check_kinded(
        config,
        "diffusion",
        "kind",
        {"sde": _sde_keys(config.diffusion) if kind == "sde" else (), "precond": PRECOND_KEYS},
        default="precond",
    )
    for section, valid in (("optim", OPTIM_KEYS), ("ema", EMA_KEYS),
                           ("schedule", tuple(SCHEDULE_DEFAULTS)), ("monitor", MONITOR_KEYS)):
        if section in keys:
            _check_keys(f"config.{section}", config[section].keys(), valid, "keys")
    settings = sorted({s for names in samplers().values() for s in names})
    _check_keys("config.sample", config.sample.keys(), SAMPLE_KEYS + tuple(settings), "keys")
    check(config, RULES)


def check(config, rules: Mapping[str, tuple]) -> None:
    """Check fields against rules {dotted key: ("range", lo, hi[, bounds]) | ("choices", [..] or a
    function returning them) | ("bool",)}; bounds is "[]" (default), "[)", "(]" or "()".

    Sweep values (tuples) are checked item by item; None passes (a documented "unset"). Missing keys
    are skipped (a rule set can cover many configs). Raises a ConfigError that names the key, the
    value and the allowed range or choices.
    """
    for dotted, rule in rules.items():
        node, ok = config, True
        for part in dotted.split("."):
            if isinstance(node, (ml_collections.ConfigDict, dict)) and part in node:
                node = node[part]
            else:
                ok = False
                break
        if not ok or node is None:
            continue
        values = node if isinstance(node, (tuple, list)) else (node,)
        for v in values:
            kind = rule[0]
            if kind == "range":
                lo, hi = rule[1], rule[2]
                bounds = rule[3] if len(rule) > 3 else "[]"
                number = isinstance(v, (int, float)) and not isinstance(v, bool)
                if (
                    isinstance(lo, int)
                    and isinstance(hi, int)
                    and number
                    and not float(v).is_integer()
                ):
                    number = False
                inside = (
                    number
                    and math.isfinite(v)
                    and (lo <= v if bounds[0] == "[" else lo < v)
                    and (v <= hi if bounds[1] == "]" else v < hi)
                )
                if not inside:
                    what = " (integers)" if isinstance(lo, int) and isinstance(hi, int) else ""
                    raise ConfigError(f"config.{dotted} = {v!r} is out of range: allowed "
                                      f"{bounds[0]}{lo}, {hi}{bounds[1]}{what}.")
            elif kind == "choices":
                choices = rule[1]() if callable(rule[1]) else rule[1]
                if v not in choices:
                    raise ConfigError(
                        f"config.{dotted} = {v!r} is not valid: choose one of {list(choices)}."
                    )
            elif kind == "bool":
                if not isinstance(v, bool):
                    raise ConfigError(f"config.{dotted} = {v!r} is not valid: write true or false.")
            else:
                raise AssertionError(f"unknown rule {rule}")


def _sde_keys(diffusion) -> tuple:
    from diffmem import sde as sde_lib  # only for sde configs: this module stays free of JAX
    name = diffusion.get("sde", None)
    if name not in sde_lib.SDES:
        raise ConfigError(f"config.diffusion.sde = {name!r}: name a noise process, one of "
                                    f"{sorted(sde_lib.SDES)}.")
    return ("kind", "sde") + tuple(f.name for f in dataclasses.fields(sde_lib.SDES[name]))


def _check_kinded(
    config, section: str, kind_key: str, table: dict, default: str | None = None
) -> None:
    node = config[section]
    kind = node.get(kind_key, default)
    if kind not in table:
        raise ConfigError(
            f"config.{section}.{kind_key} = {kind!r} is not known; valid: {list(table)}."
        )
    _check_keys(f"config.{section} ({kind_key} {kind!r})", node.keys(), table[kind], "keys")


def _check_keys(where: str, keys, valid, what: str) -> None:
    unknown = [k for k in keys if k not in valid]
    if unknown:
        raise ConfigError(f"Unknown key(s) {unknown} in {where}; valid {what}: {list(valid)}.")
