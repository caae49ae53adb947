"""One readable trainer for every model in diffmem, from a single 2-D MLP to a sweep of UNets.

    states = train(config, workdir)

Sections (1) state and step, (2) batches and (3) the compiled multi-step loop over a sweep of
models are `diffmem.train_loop` (re-exported here); this module is (4), the driver: resume,
progress, metrics, checkpoints, NaN guard. The optimizer and the EMA decay are `diffmem.optim`.

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

import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffmem import (builders, checkpoint, config_schema, configlib, cpu_parallel, devices, lock,
                     monitor, multihost, report, schedules)
from diffmem import workdir as workdir_lib
from diffmem.data.batches import make_batch  # noqa: F401 (train's API)
from diffmem.experiment import Experiment
from diffmem.train_loop import (  # noqa: F401 (train's API)
    Group, TrainState, _group_labels, _group_schedule, _groups, _padded, group_step,
    make_multi_step, make_train_step, run_group)
from diffmem.optim import ema_decay, make_optimizer  # noqa: F401 (train's API)
from diffmem.errors import DiffmemError

__all__ = ["RULES", "TrainingDiverged", "TrainState", "make_train_step", "Group", "group_step",
           "run_group", "make_multi_step", "init_state", "use_one_cpu_thread_if_small", "train",
           "window_means"]

# every config value's allowed range (checked when a config is read, and here)
RULES = config_schema.RULES


class TrainingDiverged(DiffmemError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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


def _progress(total: int, start: int, names: list[str], enabled: bool):
    from tqdm.auto import tqdm
    desc = f"train K={','.join(names)}" if len(names) <= 6 else f"train {len(names)} models"
    return tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True,
                disable=not enabled or not multihost.is_main_process(),
                smoothing=0.1)
