"""One readable trainer for every model in diffmem, from a single 2-D MLP to a sweep of UNets.

    states = train(config, workdir)

Sections: (1) state and step, (2) batches (`diffmem.data.batches`), (3) the compiled multi-step loop
over a sweep of models, (4) the driver: resume, progress, metrics, checkpoints, NaN guard. The
optimizer and the EMA decay are `diffmem.optim`.

Design:
  * `TrainState` holds params, EMA params, optimizer state and step; `make_train_step` is pure.
  * Keys derive from (seed, step) by `fold_in`, batches from (seed, epoch), so a resumed run replays
    exactly the steps an uninterrupted one would take.
  * Many steps run per compiled call (`lax.scan`). The members of a sweep (several K or seeds) train
  in
    the same compiled loop: members with the same padded batch size are `vmap`ped together (training
    sets padded to the largest K and masked), groups with different batch sizes run side by side in
    the scan body, so a K = 2 model does not pay for a K = 1000 batch.
  * Data parallel: the batch axis is sharded over a 1-D device `Mesh` ("data") with `NamedSharding`;
    the same code runs on 1 CPU, 8 fake CPU devices or many accelerators (params are replicated).
    Under jax.distributed the mesh spans every process: each process holds the same training sets
    and keys, so builds the same global batch, and keeps its devices' rows; only process 0 writes
    config.json and metrics.jsonl (orbax checkpoints are written jointly), and a lock
    (`diffmem.lock`) keeps a second training out of the workdir.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffmem import (builders, checkpoint, config_schema, configlib, cpu_parallel, devices, lock,
                     monitor, multihost, report, schedules)
from diffmem import workdir as workdir_lib
from diffmem.data.batches import make_batch
from diffmem.experiment import Experiment
from diffmem.optim import ema_decay, make_optimizer  # noqa: F401 (train's API)
from diffmem.errors import DiffmemError

__all__ = ["RULES", "TrainingDiverged", "TrainState", "make_train_step", "Group", "group_step",
           "run_group", "make_multi_step", "init_state", "use_one_cpu_thread_if_small", "train",
           "window_means"]

# every config value's allowed range (checked when a config is read, and here)
RULES = config_schema.RULES


class TrainingDiverged(DiffmemError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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


# ------------------------------------------------------------------------------------ 4. the driver
def init_state(
    model, optimizer, spec: builders.ModelSpec, init_fn: Callable | None = None
) -> TrainState:
    """Fresh state of one sweep member: params from fold_in(key(seed), 0), EMA = params.

    init_fn: `jax.jit(model.init)`, passed by a caller that initialises several members so it
    compiles once (op-by-op init of a UNet takes tens of seconds on CPU, so init is always
    compiled).
    """
    x = jnp.asarray(spec.data[:1])
    init_fn = jax.jit(model.init) if init_fn is None else init_fn
    params = init_fn(jax.random.fold_in(jax.random.key(spec.seed), 0), x, jnp.ones((1,), x.dtype))
    return TrainState(jnp.zeros((), jnp.int32), params, params, optimizer.init(params))


def _trim_metrics(path: str, last_step: int) -> None:
    """Drop metric lines written after the checkpoint a run resumes from (and a line cut short by a
    kill)."""
    if os.path.exists(path):
        report.write_jsonl(
            path, [r for r in report.read_jsonl(path) if r.get("step", 0) <= last_step]
        )


def _resume_step(workdir: str, names: list[str]) -> int:
    steps = [checkpoint.latest_step(workdir, n) for n in names]
    if all(s is None for s in steps):
        return 0
    common = None
    for n in names:
        have = set(checkpoint.manager(workdir, n, None).all_steps())
        common = have if common is None else common & have
    if not common:
        raise checkpoint.CheckpointError(
            f"Models in {workdir} have no checkpoint step in common ({dict(zip(names, steps))}); "
            "delete the checkpoints directory to restart.")
    return max(common)


def use_one_cpu_thread_if_small(config: ml_collections.ConfigDict) -> bool:
    """The opt-in CPU policy (`bin/train.py --cpu_policy`), before JAX's first computation: one XLA
    CPU thread when every model of a toy config trains on small batches
    (`cpu_parallel.one_thread_for_small_batches`; figures in bench/results/bench_tutorial.txt).
    Image configs keep every thread. Returns whether it applied."""
    configlib.check(config, RULES)
    if not builders.is_vector_model(config):
        return False
    rows = max(builders.batch_size(config, k) for k in configlib.sweep(config.data.k))
    return cpu_parallel.one_thread_for_small_batches(rows)


def train(config: ml_collections.ConfigDict, workdir: str, *, mesh: Mesh | None = None,
          progress: bool = True) -> dict[str, TrainState]:
    """Train every member of the config's sweep, resuming from `workdir` if it holds checkpoints.

    Returns {name: TrainState} of the final states (name = K, or K_s<seed> in seed sweeps). Each
    member trains for its own schedule (`diffmem.schedules.member_schedule`: steps, lr ramp-up and
    EMA from its K and batch when the config gives them in images); members with the same number of
    steps and batch train together, and each member's checkpoints are written at its own steps.
    """
    configlib.check(config, RULES)
    schedules.check(config)
    for every in ("ckpt_every", "log_every"):
        if config[every] % config.steps_per_call:
            raise configlib.ConfigError(f"config.{every} = {config[every]} must be a multiple of "
                                        f"config.steps_per_call = {config.steps_per_call}.")
    # a different experiment is refused before the lock
    workdir_lib.Workdir(workdir).check_config(config)
    # one writer per workdir; released however this ends
    with lock.workdir_lock(workdir, "training"):
        return _train_locked(config, workdir, mesh, progress)


def _train_locked(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh | None,
                  progress: bool) -> dict[str, TrainState]:
    wd = workdir_lib.Workdir(workdir)
    wd.write_config(config)  # or refuse a rerun whose config differs beyond RERUN_KEYS
    # K-subsets recorded / checked
    exp = builders.build(config, members=wd.specs(config, record=True))
    return train_experiment(exp, workdir, config_json=workdir_lib.config_as_json(config), mesh=mesh,
                            progress=progress)


def train_experiment(exp: Experiment, workdir: str, *, config_json: dict | None = None,
                     mesh: Mesh | None = None, progress: bool = True) -> dict[str, TrainState]:
    """Train the experiment's members into `workdir` (its config already written; `train` is the
    entry point), resuming from its checkpoints. config_json: the config recorded with every
    checkpoint."""
    mesh = devices.data_mesh() if mesh is None else mesh
    n_dev = mesh.devices.size
    specs, scheds, model, optimizer, tr = (list(exp.members), exp.schedules, exp.network,
                                           exp.optimizer, exp.training)
    lr_in_images = any(sc.lr_rampup_images >= 0 for sc in scheds)
    ema_in_images = any(sc.ema_halflife_images >= 0 for sc in scheds)
    train_step = make_train_step(exp.loss, optimizer, tr.ema_decay, tr.ema_warmup,
                                 lr_in_images=lr_in_images, ema_in_images=ema_in_images)

    # Group members by padded batch size and step count; pad training sets to the group's largest K.
    groups = _groups(specs, n_dev, vmap=exp.is_vector,  # see _groups and make_multi_step
                     steps=[sc.steps for sc in scheds])
    replicated = NamedSharding(mesh, P())
    init_fn = jax.jit(model.init)  # one compilation for every member
    records, datas, states = [], [], []
    for idx in groups:
        members = [specs[i] for i in idx]
        k_max = max(s.k for s in members)
        data = np.zeros((len(members), k_max) + members[0].data.shape[1:], np.float32)
        for j, s in enumerate(members):
            data[j, : s.k] = s.data
        records.append(
            Group(
                seeds=jnp.asarray([s.seed for s in members], jnp.uint32),
                k=jnp.asarray([s.k for s in members], jnp.int32),
                batch=jnp.asarray([s.batch_size for s in members], jnp.int32),
                labels=_group_labels(members, k_max),
                sched=_group_schedule([scheds[i] for i in idx])
                if lr_in_images or ema_in_images
                else None,
                padded_batch=_padded(members[0].batch_size, n_dev),
            )
        )
        datas.append(jax.device_put(data, replicated))
        states.append([init_state(model, optimizer, s, init_fn) for s in members])

    # Resume: each group from the last checkpoint step all its members have.
    names = [s.name for s in specs]
    snapshots = tr.snapshots  # kept besides the latest keep_checkpoints (diffmem.monitor)
    managers = {n: checkpoint.manager(workdir, n, tr.keep_checkpoints, snapshots) for n in names}
    starts = [_resume_step(workdir, [specs[i].name for i in idx]) for idx in groups]
    for g, idx in enumerate(groups):
        if starts[g]:
            states[g] = [
                TrainState(**checkpoint.restore(managers[specs[i].name], starts[g], st.as_dict()))
                for i, st in zip(idx, states[g])
            ]
    # Stacked on the host: under jax.distributed a committed array (from orbax) cannot be device_put
    # onto a mesh that spans other processes, while a numpy value (the same on every process) can.
    stacked = tuple(
        jax.device_put(
            jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *sts), replicated
        )
        for sts in states
    )
    metrics_path = workdir_lib.Workdir(workdir).metrics_path
    totals = [scheds[idx[0]].steps for idx in groups]
    mon = monitor.Monitor.of(exp, workdir, groups)  # None unless config.monitor.every > 0
    if mon is not None:
        totals = mon.prepare(starts, totals)  # groups stopped at monitor.level stay stopped
    unfinished = [s for s, t in zip(starts, totals) if s < t]
    start = min(unfinished) if unfinished else max(starts)   # the sweep's clock resumes here
    _trim_metrics(metrics_path, start)

    multi_step = make_multi_step(
        train_step, records, mesh, loop="scan" if exp.is_vector else "python"
    )
    # One clock for the sweep, in chunks of steps_per_call; group g runs while its own step is below
    # min(clock, its total), so a shorter member stops at its own end (and a group resumed later
    # waits).
    group_step, last_saved = list(starts), list(starts)
    end = max(totals)
    bar = _progress(end, start, names, progress)
    step, window_t, window_steps = start, time.perf_counter(), 0
    window = [[] for _ in groups]  # per group, the chunks' metrics since the last metrics line
    with (
        report.JsonlAppender(metrics_path) as metrics_file,
        devices.matmul_precision(tr.matmul_precision),
        checkpoint.finish_saves_when_stopped(managers.values()),
    ):
        # f_mem at the resumed step (deterministic), as the uninterrupted run had it
        if mon is not None:
            end = mon.resume(starts, totals, stacked, metrics_file)
        while step < end:
            target = min((step // tr.steps_per_call + 1) * tr.steps_per_call, end)
            counts = [max(0, min(target, t) - s) for t, s in zip(totals, group_step)]
            stacked, metrics = multi_step(stacked, tuple(datas), counts)
            # {metric: (n, group size)} per group, None for groups that did not run; syncs the
            # device
            metrics = [
                None if m is None else {k: multihost.to_host(v) for k, v in m.items()}
                for m in metrics
            ]
            _nan_guard(metrics, groups, specs, group_step, last_saved, managers)
            for g, m in enumerate(metrics):  # every step since the last metrics line
                if m is not None:
                    window[g].append(m)
            group_step = [s + n for s, n in zip(group_step, counts)]
            window_steps += target - step
            bar.update(target - step)
            step = target
            if (step % tr.log_every == 0 or step == end) and any(window):
                now = time.perf_counter()
                record = {"step": step, "steps_per_s": round(window_steps / (now - window_t), 2)}
                for g, idx in enumerate(groups):
                    if window[g]:
                        steps_since = {
                            k: np.concatenate([m[k] for m in window[g]]) for k in window[g][0]
                        }
                        for j, i in enumerate(idx):
                            record.update(window_means(steps_since, j, specs[i].name))
                window = [[] for _ in groups]
                metrics_file.write(record)
                bar.set_postfix(
                    {
                        k.split("/")[-1]: f"{v:.4f}"
                        for k, v in record.items()
                        if k.startswith("loss/")
                    }
                    | {"steps/s": record["steps_per_s"]}
                )
                window_t, window_steps = now, 0
            # a failed asynchronous save stops training now, not at the end
            for m in managers.values():
                checkpoint.check(m)
            # f_mem/<name> lines; a group at monitor.level stops (checkpoint just below)
            if mon is not None:
                end = mon.after_chunk(group_step, counts, stacked, totals, metrics_file)
            for g, idx in enumerate(groups):
                at = group_step[g]
                if counts[g] and (at % tr.ckpt_every == 0 or at == totals[g] or at in snapshots):
                    for j, i in enumerate(idx):
                        member = jax.tree.map(lambda x: x[j], stacked[g])
                        checkpoint.save(
                            managers[specs[i].name], at, member.as_dict(), config=config_json
                        )
                    last_saved[g] = at
    bar.close()
    for m in managers.values():
        checkpoint.wait(m)
    return {specs[i].name: jax.tree.map(lambda x: x[j], stacked[g])
            for g, idx in enumerate(groups) for j, i in enumerate(idx)}


def window_means(metrics: dict[str, np.ndarray], member: int, name: str) -> dict[str, float]:
    """One member's metrics.jsonl entries: {"<metric>/<name>": mean over the steps since the last
    line} from the group's {metric: (steps, members)} arrays (`loss`, `grad_norm`, `l2_params`,
    `l2_updates`)."""
    return {f"{key}/{name}": float(np.mean(values[:, member])) for key, values in metrics.items()}


def _nan_guard(metrics, groups, specs, steps, last_saved, managers) -> None:
    """Stop on the first step whose loss, gradient norm, parameter norm or update norm is not
    finite.

    metrics: per group {metric: (steps, members)} or None; steps, last_saved: each group's step
    before the chunk and its last checkpoint step. A non-finite parameter norm is caught at the step
    that made it, so no checkpoint with non-finite weights is ever written; the message names the
    last checkpoint on disk.
    """
    for g, idx in enumerate(groups):
        if metrics[g] is None:
            continue
        bad = np.zeros(metrics[g]["loss"].shape, bool)
        for values in metrics[g].values():
            bad |= ~np.isfinite(values)
        if not bad.any():
            continue
        row, col = np.argwhere(bad)[0]
        name = specs[idx[col]].name
        what = ", ".join(f"{k} {metrics[g][k][row, col]:.4g}" for k in metrics[g])
        for m in managers.values():
            checkpoint.wait(m)
        kept = [s for s in managers[name].all_steps() if s <= last_saved[g]]
        if kept:
            path = os.path.join(str(managers[name].directory), str(max(kept)))
            where = (
                f"The last good checkpoint, step {max(kept)} ({path}), is kept and nothing after "
                f"it was "
                "saved; a rerun resumes from it."
            )
        else:
            where = "No checkpoint was saved before it (a rerun starts from step 0)."
        raise TrainingDiverged(
            f"Training of model {name} diverged at step {steps[g] + row + 1} ({what}). {where} "
            "Lower --config.optim.lr, set --config.optim.grad_clip=1.0, or check the data for "
            "NaN/inf."
        )


def _group_schedule(member_schedules: list[schedules.MemberSchedule]) -> dict:
    """The per-member scalars a group's train step reads (`make_train_step`'s `sched`), each
    (members,) f32."""
    def col(f):
        return jnp.asarray([f(m) for m in member_schedules], jnp.float32)
    return {"batch": col(lambda m: m.batch), "lr_rampup": col(lambda m: m.lr_rampup_images),
            "ema_halflife": col(lambda m: m.ema_halflife_images),
            "ema_rampup_ratio": col(lambda m: m.ema_rampup_ratio)}


def _progress(total: int, start: int, names: list[str], enabled: bool):
    from tqdm.auto import tqdm
    desc = f"train K={','.join(names)}" if len(names) <= 6 else f"train {len(names)} models"
    return tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True,
                disable=not enabled or not multihost.is_main_process(),
                smoothing=0.1)
