"""Memorization during training: kept snapshot checkpoints and the optional f_mem monitor of the
trainer.

    config.monitor.snapshots = (100, 300, 1000, 3000)   # checkpoint steps kept besides the latest
                                                        ones
    config.monitor.update(every=500, num_samples=256, level=0.9, metric="pixel")

Snapshots: every step of `monitor.snapshots` (each a multiple of `steps_per_call`) is checkpointed
and never deleted by `keep_checkpoints` (`diffmem.checkpoint.manager(keep_steps=...)`); the
training-time study (`diffmem.studies.training_time`) samples them.

The monitor (off unless `monitor.every > 0`): every `every` steps of a sweep member it samples
`num_samples` fixed seeds (0 .. num_samples - 1) from the member's EMA weights and writes the
memorization fraction f_mem (Gu et al. / Bonnaire et al. E.5: d1 / d2 < 1/3, pixel L2 to all K
training examples) as `f_mem/<name>` in metrics.jsonl. With `level > 0` a member whose f_mem reaches
the level is recorded in <workdir>/training_time/monitor_stops.json (step, f_mem, level, reason),
and its training group stops there (its checkpoint at that step is saved). Image members each train
alone, so each stops at its own step; toy members train in vmapped groups (`diffmem.train._groups`),
and such a group stops when all its members (with K >= 2: f_mem is undefined for K = 1) have reached
the level. A rerun keeps a stopped group stopped; to train it further delete its entry (or change
monitor.level: stops of another level are dropped).

Sampler: the config's sampler with its settings, except that DDPM ancestral sampling (1000 network
evaluations) is replaced by DDIM with 100 steps, eta = 0 (Bonnaire et al.'s generation, E.5).

Exactness: the monitor reads the EMA weights only and draws its noise from its own seeds, so
training never depends on it (a run with the monitor is bit-identical to one without, until a stop).
A resumed run evaluates the monitor again at the step it resumes from (it is deterministic), so a
kill between an evaluation and the checkpoint gives the uninterrupted run's stop; a rerun of a
stopped run does nothing.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import config_schema, multihost, report, sampling
from diffmem import sde as sde_lib
from diffmem import workdir as wdlib
from diffmem.errors import InputError
from diffmem.experiment import Experiment, ModelSpec, SamplerChoice
from diffmem.model import Model

__all__ = ["GU_THRESHOLD", "METRICS", "DEFAULTS", "CHEAP_SAMPLER", "memorized", "monitor_sampler",
           "ParamsSampler", "params_sampler", "stops_path", "read_stops", "Monitor"]

GU_THRESHOLD = 1.0 / 3.0
# LPIPS weights are not shipped; Bonnaire et al. use pixel L2
METRICS = config_schema.MONITOR_METRICS
DEFAULTS = config_schema.MONITOR_DEFAULTS
CHEAP_SAMPLER = ("ddim", 100)  # what replaces DDPM ancestral sampling (E.5: DDIM, 100 steps, eta 0)


# --------------------------------------------------------------------------------- f_mem of samples
def memorized(
    samples: np.ndarray, train: np.ndarray, threshold: float = GU_THRESHOLD
) -> np.ndarray:
    """(N,) bool: d1 / d2 < threshold (Gu et al.; Bonnaire et al.'s f_mem is its mean), d1 and d2
    the exact pixel L2 distances to the nearest and second-nearest training example
    (`neighbours.nearest`). train must hold >= 2 examples."""
    from diffmem.metrics import memorization, neighbours
    if len(train) < 2:
        raise InputError(f"The d1/d2 criterion needs >= 2 training examples; got K = {len(train)}.")
    d = neighbours.nearest(samples, train, 2).distances
    return memorization.is_memorized(d[:, 0], d[:, 1], threshold)


# ------------------------------------------------------------------------- sampling from raw params
def monitor_sampler(choice: SamplerChoice, sampler: str | None = None,
                    num_steps: int | None = None) -> tuple[str, dict]:
    """(sampler name, given settings) the monitor and the training-time study use (module
    docstring): `sampler` or the experiment's, with DDPM ancestral sampling replaced by
    `CHEAP_SAMPLER`."""
    name = sampler or choice.name
    given = {} if num_steps is None else {"num_steps": int(num_steps)}
    if sampler is None and name == "ddpm_ancestral":
        name, given = CHEAP_SAMPLER[0], dict({"num_steps": CHEAP_SAMPLER[1], "eta": 0.0}, **given)
    sampling.get_sampler(name)
    return name, given


def _with_params(probe: Model, exp: Experiment, params) -> Model:
    """`probe` (a Model of this experiment and member) with the network views of `params`: traceable
    under jit (the sigma range and SDE, which need concrete values, come from the probe)."""
    if probe.sde is not None:  # a score network in SDE time
        time_score = exp.time_score(params)
        denoiser = sde_lib.denoiser_from_score(time_score, probe.sde)
    else:
        time_score, denoiser = None, exp.denoiser(params)
    score = sde_lib.score_from_denoiser(denoiser)
    return dataclasses.replace(probe, denoiser=denoiser, score=score, time_score=time_score)


@dataclasses.dataclass
class ParamsSampler:
    """`sample(ema_params, seeds) -> (N, *S)` numpy for any member of an experiment: one compiled
    program taking the parameters as an argument (snapshots and members reuse it), run on one device
    in fixed blocks of `block` seeds, seed s in slot s % block (`sampling.seed_slots`), so sample i
    depends on seed i and the parameters alone (within one process setup: see
    `sampling.sample_sharded`)."""
    experiment: Experiment
    spec: ModelSpec
    sampler: str | None = None
    num_steps: int | None = None
    block: int = sampling.SAMPLE_BLOCK

    def __post_init__(self):
        exp = self.experiment
        self.name, given = monitor_sampler(exp.sampler, self.sampler, self.num_steps)
        zeros = jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype), exp.init_like())
        probe = exp.model(self.spec, zeros, 0)
        self.settings = exp.sampler.settings(self.name, probe, **given)
        build = sampling.get_sampler(self.name, probe).build
        settings = self.settings

        def run(params, seeds):
            return build(_with_params(probe, exp, params), **settings)(seeds)
        self._run = jax.jit(run)

    @property
    def record(self) -> dict:
        """What the samples depend on besides params and seeds (stored beside results)."""
        return dict(self.settings, sampler=self.name, block=self.block)

    def sample(self, params, seeds) -> np.ndarray:
        seeds = np.asarray(seeds, np.int64)
        params = jax.tree.map(lambda v: jnp.asarray(multihost.to_host(v)), params)
        # seed s in slot s % block, as sample_sharded
        blocks, rows = sampling.seed_slots(seeds, self.block)
        x = np.concatenate([np.asarray(self._run(params, jnp.asarray(b))) for b in blocks])[rows]
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise FloatingPointError(
                f"Non-finite samples from the {self.name} sampler: the model diverged."
            )
        return x


_SAMPLERS: dict = {}


def params_sampler(exp: Experiment, spec: ModelSpec, sampler: str | None = None,
                   num_steps: int | None = None) -> ParamsSampler:
    """A `ParamsSampler`, shared by every caller with the same network, noise process, sampler and
    example shape (the monitor and the study then compile it once)."""
    key = (repr(exp.network), repr(exp.sde), repr(exp.precond), repr(exp.sampler),
           tuple(spec.data.shape[1:]), sampler, num_steps)
    if key not in _SAMPLERS:
        while len(_SAMPLERS) >= 4:
            _SAMPLERS.pop(next(iter(_SAMPLERS)))
        _SAMPLERS[key] = ParamsSampler(exp, spec, sampler, num_steps)
    return _SAMPLERS[key]


def stops_path(workdir: str) -> str:
    return wdlib.Workdir(workdir).study_output_dir("training_time", "monitor_stops.json")


def read_stops(workdir: str) -> dict:
    """{name: {"step", "f_mem", "level", "reason"}} of the members that reached the monitor's
    level."""
    path = stops_path(workdir)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise InputError(
            f"{path} is corrupt ({e}): delete it and rerun training (the monitor re-evaluates)."
        ) from None


# -------------------------------------------------------------------------------------- the monitor
class Monitor:
    """The trainer's hooks (diffmem.train): `prepare` before resuming, `resume` and `after_chunk` in
    the loop.

    groups: the trainer's groups of member indices; specs: its members. Each hook returns the new
    end of the sweep (max of the groups' totals, which a stop lowers)."""

    def __init__(self, exp: Experiment, workdir: str, groups: list[list[int]]):
        self.settings = exp.training.monitor
        self.experiment, self.workdir, self.specs, self.groups = (exp, workdir, list(exp.members),
                                                                  groups)
        self.every, self.level = int(self.settings["every"]), float(self.settings["level"])
        self.seeds = np.arange(int(self.settings["num_samples"]))
        # stops recorded at another level (monitor is a rerun key) do not apply: the next record
        # replaces them
        self.stops = {
            n: s for n, s in read_stops(workdir).items() if float(s.get("level", -1)) == self.level
        }
        self._sampler = None

    @classmethod
    def of(cls, exp: Experiment, workdir: str, groups) -> "Monitor | None":
        """The experiment's monitor; None when it is off (`monitor.every` = 0)."""
        return None if exp.training.monitor is None else cls(exp, workdir, groups)

    def _eligible(self, g: int) -> list[int]:
        return [i for i in self.groups[g] if self.specs[i].k >= 2]

    def _stopped_at(self, g: int) -> int | None:
        names = [self.specs[i].name for i in self._eligible(g)]
        if self.level <= 0 or not names or any(n not in self.stops for n in names):
            return None
        return max(int(self.stops[n]["step"]) for n in names)

    def prepare(self, starts: list[int], totals: list[int]) -> list[int]:
        """Totals with recorded stops applied; drops the f_mem lines `resume` will write again."""
        totals = [
            t if (s := self._stopped_at(g)) is None else min(t, s) for g, t in enumerate(totals)
        ]
        redo = {
            self.specs[i].name: starts[g]
            for g in range(len(self.groups))
            if self._redo(g, starts, totals)
            for i in self.groups[g]
        }
        path = wdlib.Workdir(self.workdir).metrics_path
        if redo and os.path.exists(path) and wdlib.is_writer():
            rows = []
            for r in report.read_jsonl(path):
                r = {
                    k: v
                    for k, v in r.items()
                    if not (
                        k.startswith(("f_mem/", "monitor_stop/"))
                        and redo.get(k.split("/", 1)[1]) == r.get("step")
                    )
                }
                if set(r) != {"step"}:
                    rows.append(r)
            report.write_jsonl(path, rows)
        return totals

    def _redo(self, g: int, starts, totals) -> bool:
        return 0 < starts[g] < totals[g] and starts[g] % self.every == 0

    def resume(self, starts: list[int], totals: list[int], stacked, metrics_file) -> int:
        """Evaluate at the step each unfinished group resumes from (what the interrupted run may not
        have)."""
        for g in range(len(self.groups)):
            if self._redo(g, starts, totals):
                self._evaluate(g, starts[g], stacked[g], totals, metrics_file)
        return max(totals)

    def after_chunk(
        self, group_step: list[int], counts: list[int], stacked, totals: list[int], metrics_file
    ) -> int:
        for g in range(len(self.groups)):
            if counts[g] and group_step[g] % self.every == 0:
                self._evaluate(g, group_step[g], stacked[g], totals, metrics_file)
        return max(totals)

    def f_mem(self, spec: ModelSpec, ema_params, step: int) -> float:
        """The memorized fraction of the fixed seeds' samples from these EMA weights (step: for
        stand-ins)."""
        if self._sampler is None:
            self._sampler = params_sampler(self.experiment, spec)
        return float(np.mean(memorized(self._sampler.sample(ema_params, self.seeds), spec.data)))

    def _evaluate(self, g: int, step: int, state, totals: list[int], metrics_file) -> None:
        record: dict[str, Any] = {"step": step}
        for j, i in enumerate(self.groups[g]):
            spec = self.specs[i]
            if spec.k < 2:
                continue
            f = self.f_mem(spec, jax.tree.map(lambda v: v[j], state.ema_params), step)
            record[f"f_mem/{spec.name}"] = f
            if self.level > 0 and f >= self.level and spec.name not in self.stops:
                self.stops[spec.name] = dict(
                    step=step,
                    f_mem=f,
                    level=self.level,
                    reason=(
                        f"f_mem = {f:.4f} >= monitor.level = {self.level} at step {step} "
                        f"({len(self.seeds)} samples); "
                        "delete this entry to train further"
                    ),
                )
                if wdlib.is_writer():
                    report.write_json(stops_path(self.workdir), self.stops)
        stop = self._stopped_at(g)
        if stop is not None and stop <= step:
            totals[g] = step
            record.update({f"monitor_stop/{self.specs[i].name}": step for i in self.groups[g]})
        if len(record) > 1:  # members with K < 2 have no f_mem
            metrics_file.write(record)
