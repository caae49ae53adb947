"""The trainer's compiled parts: the training state, the pure per-model step, and the compiled loop
over a sweep's groups of members (`diffmem.train` drives them: resume, metrics, checkpoints).

Sections: (1) state and step, (2) batches (`diffmem.data.batches`), (3) the compiled multi-step
loop over a sweep of models. `diffmem.train` re-exports every public name.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffmem import builders, schedules
from diffmem.data.batches import make_batch
from diffmem.optim import ema_decay

__all__ = ["TrainState", "make_train_step", "Group", "group_step", "run_group", "make_multi_step"]


# -------------------------------------------------------------------------- 1. state and train step
@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any

    def as_dict(self) -> dict:
        return {"step": self.step, "params": self.params, "ema_params": self.ema_params,
                "opt_state": self.opt_state}


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, decay: float,
                    warmup: bool, *, lr_in_images: bool = False, ema_in_images: bool = False):
    """A pure step `(state, x0 (B,*S), valid (B,), key, labels=None, sched=None) -> (state,
    metrics)` for one model.

    `loss_fn(params, x0, key[, labels]) -> (B,)` gives per-example losses; padded examples (valid =
    0) are masked; labels (B,) int are passed on for class-conditional models. lr_in_images /
    ema_in_images: the learning-rate ramp-up / the EMA decay follow the member's schedule in images
    (`diffmem.schedules`), read from `sched` = {"batch", "lr_rampup", "ema_halflife",
    "ema_rampup_ratio"} (this member's scalars), instead of the optimizer's own warm-up / (decay,
    warmup). A loss with `loss_fn.mutable_collections` (e.g. ("batch_stats",) for batch norm)
    returns (per_example, {collection: new values}); those collections live in the model variables
    (`state.params`), get zero gradients (Adam leaves them unchanged) and are replaced by the new
    values after the update.
    """
    mutable = bool(getattr(loss_fn, "mutable_collections", ()))

    def step(state: TrainState, x0, valid, key, labels=None, sched=None):
        def objective(params):
            out = loss_fn(params, x0, key) if labels is None else loss_fn(params, x0, key, labels)
            per_example, new_state = out if mutable else (out, {})
            return jnp.sum(per_example * valid) / jnp.maximum(jnp.sum(valid), 1.0), new_state

        (loss, new_state), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        # Adam's update is linear in lr: scaling it is lr * factor (moments still update)
        if lr_in_images:
            f = schedules.lr_factor(state.step, sched["batch"], sched["lr_rampup"])
            updates = jax.tree.map(lambda u: u * f.astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        # running statistics (batch norm): the forward pass's values, not an optimizer update
        if new_state:
            params = {**params, **new_state}
        if ema_in_images:
            d = schedules.ema_decay(
                state.step, sched["batch"], sched["ema_halflife"], sched["ema_rampup_ratio"]
            )
        else:
            d = ema_decay(state.step, decay, warmup)
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "l2_params": optax.tree.norm(params), "l2_updates": optax.tree.norm(updates)}
        return TrainState(state.step + 1, params, ema, opt_state), metrics

    return step


# --------------------------------------------------------------------------------------- 2. batches
# `make_batch` (diffmem.data.batches): a DataLoader-style shuffled epoch over each member's K
# examples.

# -------------------------------------------------------------------- 3. compiled loop over a sweep
def _groups(specs: list[builders.ModelSpec], num_devices: int, vmap: bool = True,
            steps: list[int] | None = None) -> list[list[int]]:
    """Sweep members grouped by padded batch size (a multiple of the device count) and by their
    number of training steps (`steps`, one per member; members of a group step together to the same
    end); vmap=False puts each member in its own group (vmapped convolutions become grouped
    convolutions, which XLA's CPU backend runs about 2x slower per model than a plain loop over the
    models)."""
    if not vmap:
        return [[i] for i in range(len(specs))]
    steps = [0] * len(specs) if steps is None else steps
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(specs):
        by_size.setdefault((_padded(s.batch_size, num_devices), steps[i]), []).append(i)
    return [by_size[b] for b in sorted(by_size)]


def _group_labels(members: list[builders.ModelSpec], k_max: int) -> jax.Array | None:
    """(members, k_max) int32 class labels of a group (padding rows 0), or None when
    unconditional."""
    if all(s.labels is None for s in members):
        return None
    if any(s.labels is None for s in members):
        raise ValueError("A sweep group mixes conditional and unconditional models.")
    out = np.zeros((len(members), k_max), np.int32)
    for j, s in enumerate(members):
        out[j, : s.k] = s.labels
    return jnp.asarray(out)


def _padded(batch: int, num_devices: int) -> int:
    return -(-batch // num_devices) * num_devices


@flax.struct.dataclass
class Group:
    """The sweep members that step together (same padded batch, same number of steps), as arguments
    of the compiled step: every array has a leading member axis (M,). The arrays are arguments of
    the programs, not constants baked into them, so a second seed or a disjoint half with the same K
    runs the very same program (a hit in XLA's persistent compilation cache instead of a new
    compilation).

    seeds (M,) uint32; k (M,) int32 training-set sizes (rows >= k of the group's data are padding);
    batch (M,) int32 batch sizes; labels (M, K_max) int32 class labels or None; sched: the members'
    schedule scalars in images, {"batch", "lr_rampup", "ema_halflife", "ema_rampup_ratio"} each (M,)
    float32 (`make_train_step`), or None; padded_batch (static): the rows of every member's batch, a
    multiple of the device count.
    """
    seeds: jax.Array
    k: jax.Array
    batch: jax.Array
    labels: jax.Array | None
    sched: dict | None
    padded_batch: int = flax.struct.field(pytree_node=False)

    @property
    def lone(self) -> bool:
        """A group of one model steps without vmap (batched dots of batch 1 are slower on CPU) and
        is carried through the loop without its member axis (slicing and re-stacking every leaf each
        step costs)."""
        return self.k.shape[0] == 1


def group_step(train_step: Callable, state: TrainState, data: jax.Array, group: Group,
               batch_sharding: NamedSharding):
    """One optimizer step of every member of `group`: its batch at its own step (`make_batch`), its
    noise key
    fold_in(fold_in(key(seed), 2), step), then `train_step`. state: the members' states (a lone
        member's
    without the member axis); data (M, K_max, *S). Returns (state, metrics)."""
    steps = state.step[None] if group.lone else state.step
    base = jax.vmap(jax.random.key)(group.seeds)
    data_keys = jax.vmap(jax.random.fold_in, (0, None))(base, 1)
    noise_keys = jax.vmap(lambda b, s: jax.random.fold_in(jax.random.fold_in(b, 2), s))(base, steps)
    x0, valid, rows = jax.vmap(make_batch, (0, 0, 0, 0, 0, None))(
        data, group.k, group.batch, steps, data_keys, group.padded_batch)
    labels = None
    if group.labels is not None:
        labels = jax.lax.with_sharding_constraint(jnp.take_along_axis(group.labels, rows, axis=1),
                                                  batch_sharding)
    x0 = jax.lax.with_sharding_constraint(x0, batch_sharding)
    valid = jax.lax.with_sharding_constraint(valid, batch_sharding)
    if group.lone:
        extra = () if group.sched is None else (jax.tree.map(lambda v: v[0], group.sched),)
        return train_step(
            state, x0[0], valid[0], noise_keys[0], None if labels is None else labels[0], *extra
        )
    if group.sched is not None:
        return jax.vmap(train_step)(state, x0, valid, noise_keys, labels, group.sched)
    if labels is None:
        return jax.vmap(train_step)(state, x0, valid, noise_keys)
    return jax.vmap(train_step)(state, x0, valid, noise_keys, labels)


def run_group(train_step: Callable, state: TrainState, data: jax.Array, group: Group,
              batch_sharding: NamedSharding, num_steps: int | None):
    """`num_steps` steps of one group in one `lax.scan` (None: one step, no loop). Returns (state,
    metrics) with metrics {name: (num_steps, M)} (or (M,) for one step); a lone member's axis is
    dropped around the loop and given back (the state's in front, the metrics' last)."""
    def step(s):
        return group_step(train_step, s, data, group, batch_sharding)

    def loop(s):
        if num_steps is None:
            return step(s)
        return jax.lax.scan(lambda c, _: step(c), s, None, length=num_steps)

    if not group.lone:
        return loop(state)
    state, metrics = loop(jax.tree.map(lambda v: v[0], state))
    return jax.tree.map(lambda v: v[None], state), jax.tree.map(lambda v: v[..., None], metrics)


def make_multi_step(train_step: Callable, groups: list[Group], mesh: Mesh, loop: str = "scan"):
    """`(states, datas, num_steps) -> (states, metrics)` running `num_steps` steps of every group.

    states, datas: tuples with one entry per group; inside a group, leaves have a leading member
    axis. num_steps: an int for every group, or one int per group (0: the group is left as it is,
    its metrics None). Metrics: per group {name: (steps, members)}. loop="scan": all steps in one
    compiled `lax.scan`, one program per group run one after the other (a tight loop per model size
    beats one loop whose body steps every group; best for small MLPs, where dispatch dominates);
    loop="python": one compiled step called num_steps times. XLA's CPU backend runs convolutions
    inside a while loop about 20x slower than at top level (measured: DDPM UNet on digits, 3.2 s vs
    0.14 s a step), so convolutional networks use "python"; on accelerators both are fine.
    """
    if loop not in ("scan", "python"):
        raise ValueError(f"loop must be 'scan' or 'python'; got {loop!r}.")
    batch_sharding = NamedSharding(mesh, P(None, "data"))
    replicated = NamedSharding(mesh, P())
    groups = [jax.tree.map(lambda a: jax.device_put(np.asarray(a), replicated), g) for g in groups]
    program = jax.jit(
        functools.partial(run_group, train_step), static_argnums=(3, 4), donate_argnums=0
    )

    def counts(num_steps) -> list[int]:
        return (
            [int(num_steps)] * len(groups)
            if np.ndim(num_steps) == 0
            else [int(n) for n in num_steps]
        )

    def multi_step(states, datas, num_steps):
        out_states, out_metrics = [], []
        for group, state, data, n in zip(groups, states, datas, counts(num_steps)):
            metrics = None
            if n and loop == "scan":
                state, metrics = program(state, data, group, batch_sharding, n)
            elif n:
                per_step = []
                for _ in range(n):
                    state, m = program(state, data, group, batch_sharding, None)
                    per_step.append(m)
                metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *per_step)
            out_states.append(state)
            out_metrics.append(metrics)
        return tuple(out_states), tuple(out_metrics)

    return multi_step


def _group_schedule(member_schedules: list[schedules.MemberSchedule]) -> dict:
    """The per-member scalars a group's train step reads (`make_train_step`'s `sched`), each
    (members,) f32."""
    def col(f):
        return jnp.asarray([f(m) for m in member_schedules], jnp.float32)
    return {"batch": col(lambda m: m.batch), "lr_rampup": col(lambda m: m.lr_rampup_images),
            "ema_halflife": col(lambda m: m.ema_halflife_images),
            "ema_rampup_ratio": col(lambda m: m.ema_rampup_ratio)}
