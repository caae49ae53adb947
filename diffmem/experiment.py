"""An experiment as built once from its config: the record every layer below the boundary takes.

    # at the boundary: bin/ scripts, train, Workdir, the studies
    exp = builders.build(config)
    exp.network, exp.loss, exp.optimizer  # a Linen module, loss(params, x0, key, labels) -> (B,),
                                          optax
    exp.members                           # the sweep's members (`ModelSpec`: K, seed, training set)
    exp.denoiser(params)                  # D(x (B, *S), sigma (B,)) of trained parameters
    exp.model(member, params, step)       # the same as a `Model`, what samplers and metrics take
    # a sampler's settings: given, then the config's, then defaults
    exp.sampler.settings("ddim", model)

Nothing here reads a ConfigDict: `diffmem.builders.build` turns the config's sections into these
fields (network and noise process or preconditioning, loss, optimizer, members, sampler choice,
training lengths), and every function below it takes the fields it needs.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import energy, nets
from diffmem import sde as sde_lib
from diffmem.errors import ConfigError
from diffmem.model import Model

__all__ = ["ModelSpec", "SamplerChoice", "Training", "Experiment", "IMAGE_NETWORKS",
           "BLIND_NETWORKS", "VECTOR_NETWORKS", "network_fn"]

IMAGE_NETWORKS = ("ddpm_unet", "ddpmpp")   # the preconditioned image networks (`precond`)
# Kadkhodaie et al.'s bias-free blind denoisers, [0, 1] units
BLIND_NETWORKS = ("bf_unet", "bf_cnn")
# small vector networks: one flat optimizer vector, vmapped
VECTOR_NETWORKS = ("mlp",)


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSpec:
    """One member of a sweep: its name (checkpoint directory), K, seed and training set (K, *S).

    labels: (K,) int class labels of the training set for class-conditional models (`data.labels` =
    "true" | "random" | "unique"), else None. indices: rows of the dataset pool (`data =
    pool[indices]`).
    """
    name: str
    k: int
    seed: int
    data: np.ndarray = dataclasses.field(repr=False)
    batch_size: int
    labels: np.ndarray | None = dataclasses.field(default=None, repr=False)
    indices: np.ndarray | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True)
class SamplerChoice:
    """The samplers an experiment samples with and the defaults of their settings.

    name: the sampler of trained models (`sample.sampler`); optimal_name: the one of the empirical
    optimal denoiser (`sample.optimal_sampler`, None = `name`). section: the `sample` section's
    settings (they apply to `name` only). grid: the DDPM grid {timesteps, beta_start, beta_end} of
    the noise process (every sampler that takes one). batch: seeds per sharded call (None = the
    kind's default).
    """
    name: str
    optimal_name: str | None = None
    section: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    grid: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    batch: int | None = None

    def for_kind(self, kind: str) -> str:
        """The sampler of a model kind ("optimal": `optimal_name` when given)."""
        return (self.optimal_name or self.name) if kind == "optimal" else self.name

    def settings(self, name: str, model: Model, **given) -> dict:
        """A sampler's resolved settings for `model`: `given` (None = unset), then `section` if
        `name` is this experiment's sampler, the DDPM grid, the sampler's defaults. The one resolver
        bin/sample.py, `diffmem.sample`, the monitor and the studies use (JSON-plain values)."""
        from diffmem import sampling
        spec = sampling.get_sampler(name, model)
        defaults = {k: v for k, v in self.grid.items() if k in spec.settings}
        if name == self.name:
            defaults.update({k: v for k, v in self.section.items() if k in spec.settings})
        defaults.update({k: v for k, v in given.items() if v is not None})
        resolved = spec.resolve(model, **defaults)
        return json.loads(
            json.dumps(resolved, default=lambda o: o.item() if hasattr(o, "item") else str(o))
        )


@dataclasses.dataclass(frozen=True)
class Training:
    """How the trainer runs: chunk and logging cadence in steps, checkpoints kept (and the snapshot
    steps kept besides them), the EMA's fixed decay (used unless a member's schedule gives a
    half-life), the matmul precision by name, and the memorization monitor's settings (None: off;
    `diffmem.monitor`)."""
    steps_per_call: int
    log_every: int
    ckpt_every: int
    keep_checkpoints: int
    ema_decay: float
    ema_warmup: bool
    matmul_precision: str = "default"
    snapshots: frozenset = frozenset()
    monitor: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Experiment:
    """Everything a config describes, built (`builders.build`): the network and how its parameters
    become a model, the training objective and optimizer, the members and the sampler choice.

    network_name  `model.name`; network: the Linen module (`init` / `apply`)
    data_shape    one example's shape S
    sde           the noise process of SDE-time score networks (`diffusion.kind` "sde"), else None
    precond       the preconditioning as the network sees it (image networks), else None
    sigma_range   (sigma_min, sigma_max) samplers cover (preconditioned and blind networks), else
                  None
    data_range    (lo, hi) samples are clipped to (images: (-1, 1)), or None
    loss          loss(params, x0 (B, *S), key, labels=None) -> (B,) (blind: with new batch stats)
    optimizer     the optax transformation training and every reader of its checkpoints build alike
    members       the sweep's `ModelSpec`s; schedules: each member's `schedules.MemberSchedule`
    sampler       `SamplerChoice`; training: `Training`
    """
    network_name: str
    network: Any
    data_shape: tuple
    sde: Any
    precond: Any
    sigma_range: tuple | None
    data_range: tuple | None
    loss: Callable
    optimizer: Any
    members: tuple
    schedules: tuple
    sampler: SamplerChoice
    training: Training

    def __repr__(self) -> str:
        noise = (
            f"sde={self.sde!r}"
            if self.sde is not None
            else f"precond={type(self.precond).__name__}"
        )
        return (f"Experiment(network={self.network_name!r}, data_shape={self.data_shape}, {noise}, "
                f"members={[m.name for m in self.members]}, sampler={self.sampler.name!r})")

    @property
    def is_vector(self) -> bool:
        """Whether the network is a small vector model (one flat optimizer vector, vmapped
        sweeps)."""
        return self.network_name in VECTOR_NETWORKS

    def member(self, name: str) -> ModelSpec:
        found = [m for m in self.members if m.name == str(name)]
        if not found:
            raise ConfigError(f"No member {name!r}; the experiment's members are "
                              f"{[m.name for m in self.members]}.")
        return found[0]

    # ---------------------------------------------------------------- views of parameters
    def init_like(self):
        """The shapes and dtypes of the network's variables (`jax.eval_shape` of its init)."""
        x = jnp.zeros((1,) + tuple(self.data_shape), jnp.float32)
        return jax.eval_shape(
            lambda: self.network.init(jax.random.key(0), x, jnp.ones((1,), x.dtype))
        )

    def time_score(self, params) -> sde_lib.ScoreFn:
        """A score network's s(x (B, *S), t (B,)) in SDE time."""
        return lambda x, t: self.network.apply(params, x, t)

    def denoiser(self, params, *, labels=None) -> sde_lib.Denoiser:
        """Trained parameters as D(x (B, H, W, C), sigma (B,)) -> (B, H, W, C) (labels: a
        conditional DDPM++'s class labels, as `network_fn` takes them)."""
        if self.network_name in BLIND_NETWORKS:  # sigma ignored; D = 2 D_[0,1]((x + 1) / 2) - 1
            return nets.bfcnn.signed_range_denoiser(self.network, params)
        if self.network_name not in IMAGE_NETWORKS:
            raise ConfigError(f"No denoiser view for model.name {self.network_name!r}; "
                              f"image networks: {list(IMAGE_NETWORKS)}.")
        return self.precond.denoiser(
            network_fn(self.network_name, self.network, params, labels=labels)
        )

    def model(self, member: ModelSpec, params, step: int) -> Model:
        """The `Model` of trained parameters: a score in SDE time when the experiment has an SDE,
        else the (preconditioned or blind) denoiser."""
        if self.sde is not None:
            return self.as_model(member, "trained", step, time_score=self.time_score(params))
        return self.as_model(member, "trained", step, denoiser=self.denoiser(params))

    def optimal(self, member: ModelSpec, chunk: int = 4096) -> Model:
        """The empirical optimal denoiser of a member's training set (step -1)."""
        return self.as_model(
            member,
            "optimal",
            -1,
            denoiser=energy.empirical_denoiser(jnp.asarray(member.data), chunk=chunk),
        )

    def as_model(self, member: ModelSpec, kind: str, step: int, *, denoiser: Callable | None = None,
                 time_score: Callable | None = None) -> Model:
        """A `Model` of a member from either view: a denoiser, or a score in SDE time (converted by
        Tweedie's formula, `sde.denoiser_from_score`), with the experiment's noise and data
        ranges."""
        fields = dict(name=member.name, k=member.k, kind=kind, shape=tuple(member.data.shape[1:]),
                      train_data=member.data, step=int(step), seed=int(member.seed),
                      labels=member.labels, data_range=self.data_range)
        if denoiser is None:
            return Model.from_time_score(time_score, self.sde, **fields)
        return Model.from_denoiser(denoiser, sigma_range=self.sigma_range, sde=self.sde,
                                   time_score=time_score, **fields)


def network_fn(name: str, module, params, *, labels=None, dropout_rng: jax.Array | None = None):
    """An image network as F(x_in (B, H, W, C), noise_label (B,)) -> (B, H, W, C).

    labels: class labels for a DDPM++ network with `label_dim > 0`: None (all-zero labels, EDM's
    convention), an int (every example that class), int (B,) or one-hot / soft (B, label_dim).
    dropout_rng: None = evaluation mode; a key = training mode, dropout drawn from it.
    """
    train = dropout_rng is not None
    rngs = {"dropout": dropout_rng} if train else {}
    if name == "ddpmpp":
        def f(x, c):
            return module.apply(
                params, x, c, _batch_labels(labels, x.shape[0]), train=train, rngs=rngs
            )

        return f
    if name == "ddpm_unet":
        if labels is not None:
            raise ConfigError("model.name='ddpm_unet' is unconditional: it takes no class labels "
                              "(use model.name='ddpmpp' with model.label_dim > 0).")
        return lambda x, c: module.apply(params, x, c, train=train, rngs=rngs)
    raise ConfigError(f"model.name={name!r} is not an image network; "
                      f"image networks: {list(IMAGE_NETWORKS)}.")


def _batch_labels(labels, batch: int):
    if labels is None:
        return None
    labels = jnp.asarray(labels)
    if labels.ndim == 0:
        return jnp.full((batch,), labels, jnp.int32)
    return labels
