"""The sampling stage: sample the models of a workdir into sample shards (+ a picture), found by K.

    # 2-D toy models
    paths = sample_workdir("runs/c9", seeds=range(1500), sampler="em")
    # image models
    paths = sample_workdir("runs/digits", seeds=range(50_000), sampler="ddpm_ancestral", batch=512)
    # empirical optimum paths = sample_workdir("runs/digits", seeds=range(256), model="optimal")
    # no training at all
    paths = sample_workdir("runs/opt64", range(256), model="optimal", config=config)

Sample i depends only on its integer seed. Each job writes the seeds it computes as one shard of the
model's sample set (`diffmem.workdir`: samples/<K>/<first>-<last>_<hash>.npz, with its settings), so
jobs with disjoint seed ranges -- one after another or at the same time, on a shared file system --
all succeed, and readers (`Workdir.read_samples`) get their union sorted by seed, the same as one
job's. Seeds a set already holds with the same settings are skipped; a set holding other settings
(sampler, steps, checkpoint step, ...) is never mixed or overwritten silently (pass overwrite=True
to replace it). Batches run sharded over every device (`sampling.sample_sharded`) and are saved as
they finish under <shard>.partial/, so an interrupted job resumes where it stopped. Under
jax.distributed every process computes, process 0 writes.

Sets: samples/<K>/ (EMA weights of the latest checkpoint), samples/<K>@<step>/ (an earlier
checkpoint, `step=`), samples/optimal/<K>/ (the empirical optimal denoiser of model K's training
set; step -1). Samplers: `diffmem.sampling.SAMPLERS`.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Sequence

import ml_collections
import numpy as np
from tqdm.auto import tqdm

from diffmem import config_schema, devices, multihost, report, sampling, viz
from diffmem import workdir as wdlib
from diffmem.errors import DiffmemError, InputError, MissingInputError, OutputExistsError

__all__ = ["MODELS", "SamplingDiverged", "open_workdir", "sample_workdir",
           "sample_set"]

MODELS = wdlib.KINDS
# (workdir, model, step, settings) -> run function, so repeated calls reuse compilations
_RUNS: dict = {}


class SamplingDiverged(DiffmemError, FloatingPointError):
    """A sampler produced non-finite samples; nothing of that batch was saved."""



def open_workdir(
    workdir: str, config: ml_collections.ConfigDict | None, model: str
) -> wdlib.Workdir:
    """The workdir to sample: its own config, or `config` (checked against config.json if there is
    one; a new workdir is created from it for the optimal denoiser, which needs no training)."""
    wd = wdlib.Workdir(workdir)
    if config is None:
        return wd
    if wd.exists():
        wd.check_config(config)
    elif model == "trained":
        raise MissingInputError(
            f"{workdir} holds no trained models (no config.json): train them first "
            f"(python bin/train.py --config=... --workdir={workdir}), or sample the empirical "
            "optimal denoiser with --kind=optimal."
        )
    else:
        wd.write_config(config)
        wd.specs(config, record=True)
    return wdlib.Workdir(workdir, config)


# ------------------------------------------------------------------------------- the workdir driver
def sample_workdir(workdir: str, seeds: Sequence[int], sampler: str | None = None, *,
                   names: Sequence[str] | None = None, model: str = "trained",
                   step: int | None = None, config: ml_collections.ConfigDict | None = None,
                   num_steps: int | None = None, eps: float | None = None, eta: float | None = None,
                   overwrite: bool = False, batch: int | None = None, mesh=None,
                   progress: bool = True) -> list[str]:
    """Sample every model of `workdir` (or the given names) with per-sample `seeds`; returns the set
    folders.

    sampler: a name of `sampling.SAMPLERS` (default: the config's sample.sampler, or for
    model='optimal' its sample.optimal_sampler when it has one). model: 'trained' (EMA weights) or
    'optimal' (the empirical optimal denoiser of each model's training set; with `config` the
    workdir need not exist). step: a checkpoint step other than the latest. num_steps, eps, eta:
    sampler settings (None = the config's or the sampler's default). batch: seeds per sharded call
    (rounded up to a multiple of the device count).
    """
    if model not in MODELS:
        raise InputError(f"Unknown model {model!r}; choose one of {MODELS}.")
    if model == "optimal" and step is not None:
        raise InputError("The optimal denoiser has no checkpoints: drop step.")
    wd = open_workdir(workdir, config, model)
    exp = wd.experiment
    # Zhang et al. sample the empirical optimum with EDM's Euler (image configs say so)
    sampler = sampler or exp.sampler.for_kind(model)
    sampling.get_sampler(sampler)
    available = wd.names()
    wanted = available if names is None else [str(n) for n in names]
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise InputError(f"No model named {unknown} in {workdir}; its models are {available}.")
    seeds = np.asarray(seeds, np.int64)
    if seeds.ndim != 1 or seeds.size == 0 or len(np.unique(seeds)) != len(seeds):
        raise InputError("Seeds must be a non-empty list without repeats.")
    mesh = mesh or devices.data_mesh()
    paths = []
    for name in wdlib.sort_names(wanted):
        m = wd.model(name, step, kind=model)
        m_batch = batch or int(exp.sampler.batch or config_schema.SAMPLE_BATCH[
            "sde" if m.sde is not None else "precond"])
        settings = exp.sampler.settings(sampler, m, num_steps=num_steps, eps=eps, eta=eta)
        record = dict(settings, sampler=sampler, model=model, step=m.step)
        key = (os.path.abspath(workdir), name, model, m.step, json.dumps(record, sort_keys=True))
        run = _RUNS.get(key)
        if run is None:
            run = _RUNS[key] = sampling.get_sampler(sampler, m).build(m, **settings)
            while len(_RUNS) > 8:
                _RUNS.pop(next(iter(_RUNS)))
        set_step = None if (step is None or model == "optimal") else m.step
        with devices.matmul_precision(exp.training.matmul_precision):
            wrote = sample_set(wd, name, model, set_step, run, seeds, record, batch=m_batch,
                               mesh=mesh, overwrite=overwrite, desc=f"K={m.k} {model} {sampler}",
                               progress=progress)
        if wrote and wdlib.is_writer():
            _picture(wd, name, model, set_step, m)
        paths.append(wd.samples_dir(name, model, set_step))
    return paths


def _picture(wd: wdlib.Workdir, name: str, kind: str, step, m) -> None:
    data = wd.read_samples(name, kind, step)
    title = f"K = {m.k}, {kind}, {data['sampler']}, step {m.step}, {len(data['seeds'])} samples"
    path = wd.picture_path(name, kind, step)
    if len(m.shape) == 3:  # (H, W, C) images
        viz.image_grid(path, data["samples"][:64], ncols=8, title=title)
    elif data["samples"].shape[1] == 2:
        viz.scatter_samples(path, data["samples"], m.train_data, title=title)


def _header(path: str, overwrite: bool) -> dict | None:
    """seeds and settings of an existing shard (None if corrupt and overwrite: it is replaced)."""
    try:
        return wdlib.read_shard(path)
    except InputError:
        if overwrite:
            return None
        raise


def sample_set(wd: wdlib.Workdir, name: str, kind: str, step: int | None, run, seeds: np.ndarray,
               record: dict, *, batch: int, mesh, overwrite: bool, desc: str,
               progress: bool) -> bool:
    """Add the samples of `seeds` the set lacks, as one new shard; returns whether anything was
    sampled.

    Shards of other settings are an error (or removed with overwrite); seeds already held with the
    same settings are skipped. Batches are saved under <shard>.partial/ as they finish and reused on
    a rerun. A sampler with per-sample diagnostics (`run.info`, `sampling.SampleInfo`: the KS
    sampler's converged and iterations) has them saved in the shard; samples that did not converge
    are counted in a warning.
    """
    files = wd.sample_files(name, kind, step)
    headers = {f: _header(f, overwrite) for f in files}
    other = {f: h for f, h in headers.items() if h is None or h["settings"] != record}
    if other:
        if not overwrite:
            f, h = next(iter(other.items()))
            raise OutputExistsError(
                f"{f} holds samples of other settings "
                f"({report.settings_difference(h['settings'], record)}); one "
                f"sample set comes from one model and sampler. Pass --overwrite to replace the "
                f"set's {len(other)} "
                "file(s) of other settings, or choose another --workdir."
            )
    held = [h["seeds"] for f, h in headers.items() if f not in other]
    # Every process runs the same batches: the plan is process 0's (a file system may lag on other
    # hosts).
    need = multihost.broadcast_from_main(
        ~np.isin(seeds, np.concatenate(held)) if held else np.ones(len(seeds), bool)
    )
    missing = seeds[np.asarray(need, bool)]
    # before process 0 changes it
    multihost.sync("diffmem.generate: every process has read the set")
    wdlib.remove_set_files(list(other))
    if missing.size == 0:
        return False
    shard = wd.shard_path(name, kind, step, missing)
    info = getattr(run, "info", None)
    fields = [f for f, _ in info.fields] if info is not None else []
    ndev = mesh.devices.size
    batch = -(-max(1, batch) // ndev) * ndev
    starts = range(0, len(missing), batch)
    # batches an earlier, interrupted job saved (read by process 0, which writes the shard)
    finished = {}
    if wdlib.is_writer():
        for start in starts:
            old = _finished_batch(wd.partial_path(shard, start), missing[start : start + batch],
                                  record, overwrite, fields)
            if old is not None:
                finished[start] = old
    done = multihost.broadcast_from_main(np.asarray([start in finished for start in starts], bool))
    chunks, done_rows, t0 = [], 0, time.perf_counter()
    bar = tqdm(total=len(missing), desc=desc, unit="sample",
               disable=not progress or not wdlib.is_writer(), dynamic_ncols=True)
    for i, start in enumerate(starts):
        part_seeds = missing[start:start + batch]
        part = wd.partial_path(shard, start)
        if done[i]:
            chunks.append(finished.get(start))
            bar.update(len(part_seeds))
            continue
        if info is None:
            x, part_info = multihost.to_host(sampling.sample_sharded(run, part_seeds, mesh)), {}
        else:
            packed = sampling.sample_sharded(info.packed, part_seeds, mesh)
            x, part_info = info.unpack(multihost.to_host(packed))
        x = np.asarray(x).astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise SamplingDiverged(
                f"Non-finite samples for seeds {part_seeds[0]}..{part_seeds[-1]} ({desc}): "
                "the model or sampler diverged; check the checkpoint and the sampler settings."
            )
        wdlib.write_shard(part, x, part_seeds, record, part_info)
        chunks.append(dict(samples=x, info=part_info))
        done_rows += len(part_seeds)
        bar.update(len(part_seeds))
        bar.set_postfix(per_s=f"{done_rows / (time.perf_counter() - t0):.1f}")
    bar.close()
    if wdlib.is_writer():
        info_all = {f: np.concatenate([c["info"][f] for c in chunks]) for f in fields}
        x_all = np.concatenate([c["samples"] for c in chunks])
        wdlib.write_shard(shard, x_all, missing, record, info_all)
        shutil.rmtree(wd.partial_path(shard), ignore_errors=True)
        if "converged" in info_all:
            message = sampling.not_converged_message(info_all["converged"],
                                                     record.get("max_iters", -1), desc,
                                                     info_all.get("iterations"))
            if message:  # one line on stderr; the samples are kept, marked converged=False
                print(f"WARNING: {message}", file=sys.stderr, flush=True)
    return True


def _finished_batch(part: str, seeds: np.ndarray, record: dict, overwrite: bool,
                    fields=()) -> dict | None:
    """{samples, info} of a batch saved by an interrupted job with these seeds and settings (and the
    per-sample diagnostics `fields`), else None."""
    if not os.path.exists(part):
        return None
    try:
        old = wdlib.read_shard(part)
    except InputError:
        if not overwrite:
            raise InputError(
                f"{part} (a finished batch of an interrupted run) is corrupt or truncated: "
                "delete it (its batch is recomputed), or rerun with --overwrite."
            ) from None
        return None
    if (old["settings"] != record or not np.array_equal(old["seeds"], seeds)
            or any(f not in old["info"] for f in fields)):
        return None
    return dict(samples=old["samples"], info={f: old["info"][f] for f in fields})
