"""Memorization versus training time (Bonnaire, Urfin, Biroli & Mezard 2025; notes E.5): f_mem(step)
for every K of a sweep, the memorization time tau_mem(K) and its fits tau_mem = c K and tau_mem = c
K^alpha.

    # train with kept snapshots (or resume), then measure
    summary = run(config, workdir)
    section = study_section(workdir, names)            # measure the snapshots a workdir already has

Snapshots: `snapshot_schedule` picks log-spaced steps (E.5: log-spaced checkpoints, rounded to round
multiples); `with_snapshots` writes them into `config.monitor.snapshots`, which the trainer keeps
besides its latest checkpoints (`diffmem.monitor`). Every checkpoint step a member has is one point
of its curve.

f_mem of a snapshot (E.5, `compute_fmem.py`): the EMA weights sample the fixed seeds 0 ..
num_samples - 1 (`diffmem.monitor.ParamsSampler`: the config's sampler, DDPM ancestral replaced by
DDIM 100 steps, eta 0, as E.5 generates); a sample is memorized iff d1 / d2 < 1/3 (pixel L2 to its
nearest and second-nearest of the K training examples); f_mem is the memorized fraction, with a
percentile bootstrap over the samples (`stats.bootstrap`, 1000 resamples, seeded by (seed, K, step):
deterministic).

tau_mem(K) (`crossing_step`): the first snapshot step where f_mem >= level, interpolated linearly in
    log step
between it and the snapshot before (E.5 defines tau_mem as the first checkpoint above a threshold;
the threshold of the paper is unverified, default here 0.5). Its uncertainty: the same crossing on
each bootstrap replicate of the curve. Fits (`fit_tau`) in log space: log tau = log c + log K (slope
fixed to 1, the paper's claim) and log tau = log c + alpha log K (free), with bootstrap percentile
intervals and alpha's OLS error.

Outputs (<workdir>/training_time/, `Workdir.study_output_dir`): <name>/step_<step>.npz per snapshot
(samples, seeds, d1, d2, memorized, f_mem and its interval, settings; finished ones are reused,
never recomputed), summary.json, f_mem_vs_step.png, tau_mem_vs_k.png, report.md.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from diffmem import builders, checkpoint, configlib, monitor, report, schedules, viz  # noqa: E402
from diffmem import stats  # noqa: E402
from diffmem import workdir as wdlib  # noqa: E402
from diffmem.metrics import neighbours  # noqa: E402
from diffmem.errors import InputError, MissingInputError  # noqa: E402

__all__ = ["STUDY", "DEFAULT_LEVEL", "snapshot_schedule", "member_steps", "with_snapshots",
           "crossing_step", "fit_tau", "evaluate_snapshot", "f_mem_curves", "tau_mem", "fit_sweep",
           "plot_curves", "plot_tau", "study_section", "run"]

STUDY = "training_time"
DEFAULT_LEVEL = 0.5


# ---------------------------------------------------------------------------------------- snapshots
def snapshot_schedule(
    total: int, num: int = 12, multiple: int = 1, first: int | None = None
) -> tuple[int, ...]:
    """Log-spaced training steps in [first, total] (first default: `multiple`), each rounded to a
    multiple of `multiple` (>= multiple), without repeats, ending at `total` rounded down (E.5's
    checkpoint grid)."""
    if total < 1 or num < 1 or multiple < 1:
        raise InputError(
            f"snapshot_schedule needs total, num, multiple >= 1; got {total}, {num}, {multiple}."
        )
    top = total // multiple * multiple
    if top < multiple:
        raise InputError(
            f"{total} training steps hold no multiple of {multiple} (steps_per_call): train longer."
        )
    first = multiple if first is None else max(int(first), multiple)
    grid = np.geomspace(first, top, num) if num > 1 and first < top else np.asarray([top], float)
    steps = np.clip(np.round(grid / multiple).astype(np.int64) * multiple, multiple, top)
    return tuple(int(s) for s in np.unique(np.append(steps, top)))


def member_steps(config) -> dict[int, int]:
    """{K: training steps} of a config's sweep members (their schedules, `diffmem.schedules`)."""
    return {
        int(k): schedules.member_schedule(config, int(k), builders.batch_size(config, int(k))).steps
        for k in configlib.sweep(config.data.k)
    }


def with_snapshots(config, num: int = 12, first: int | None = None):
    """A copy of `config` whose `monitor.snapshots` holds `snapshot_schedule(longest member, num)`
    in multiples of steps_per_call (a config that already lists snapshots is returned unchanged)."""
    config = configlib.from_json(configlib.to_json(config))
    mon = config.get("monitor", None)
    if mon is not None and mon.get("snapshots", None):
        return config
    total = max(member_steps(config).values())
    steps = snapshot_schedule(total, num, int(config.steps_per_call), first)
    with config.unlocked():
        if mon is None:
            config.monitor = dict(monitor.DEFAULTS)
        config.monitor.snapshots = steps
    return config


# -------------------------------------------------------------------------------- statistics (pure)
def crossing_step(
    steps: Sequence[int], f: Sequence[float], level: float
) -> tuple[float | None, str]:
    """(tau, status): the first step where f >= level, interpolated linearly in log step from the
    step before.

    status "crossed"; "at_first" (f >= level already at the first step: tau = that step, an upper
    bound); "never" (tau None: f stays below the level, tau is beyond the last step)."""
    s, y = np.asarray(steps, np.float64), np.asarray(f, np.float64)
    if (
        s.ndim != 1
        or s.shape != y.shape
        or s.size == 0
        or np.any(s <= 0)
        or np.any(np.diff(s) <= 0)
    ):
        raise InputError("crossing_step needs increasing positive steps and one f value per step.")
    above = np.flatnonzero(y >= level)
    if above.size == 0:
        return None, "never"
    i = int(above[0])
    if i == 0:
        return float(s[0]), "at_first"
    a, b = np.log(s[i - 1]), np.log(s[i])
    w = (level - y[i - 1]) / (y[i] - y[i - 1])
    return float(np.exp(a + w * (b - a))), "crossed"


def fit_tau(ks: Sequence[float], taus: Sequence[float], replicates: np.ndarray | None = None,
            level: float = 0.95) -> dict:
    """Fits of tau = c K (log c = mean(log tau - log K)) and tau = c K^alpha (OLS of log tau on log
    K).

    replicates: (B, len(ks)) bootstrap taus (NaN: no crossing in that replicate; such replicates are
    dropped) for percentile intervals of c, c_free and alpha. Returns c, c_lo, c_hi, alpha, alpha_se
    (OLS; None for fewer than 3 points), alpha_lo, alpha_hi, c_free, c_free_lo, c_free_hi, n,
    replicates_used."""
    k, t = np.asarray(ks, np.float64), np.asarray(taus, np.float64)
    if k.size < 1 or k.shape != t.shape or np.any(k <= 0) or np.any(t <= 0):
        raise InputError("fit_tau needs positive K and tau of the same length >= 1.")

    def fits(tt):
        c = float(np.exp(np.mean(np.log(tt) - np.log(k))))
        if k.size < 2 or np.ptp(np.log(k)) == 0:
            return c, None, None
        alpha, logc = np.polyfit(np.log(k), np.log(tt), 1)
        return c, float(alpha), float(np.exp(logc))

    c, alpha, c_free = fits(t)
    out = dict(c=c, alpha=alpha, c_free=c_free, n=int(k.size), alpha_se=None, replicates_used=0,
               c_lo=None, c_hi=None, alpha_lo=None, alpha_hi=None, c_free_lo=None, c_free_hi=None)
    if alpha is not None and k.size >= 3:
        x, y = np.log(k), np.log(t)
        resid = y - (alpha * x + np.log(c_free))
        out["alpha_se"] = float(
            np.sqrt(np.sum(resid**2) / (k.size - 2) / np.sum((x - x.mean()) ** 2))
        )
    if replicates is not None:
        reps = np.asarray(replicates, np.float64)
        reps = reps[np.all(np.isfinite(reps) & (reps > 0), axis=1)]
        out["replicates_used"] = int(len(reps))
        if len(reps):
            a = (1.0 - level) / 2.0
            rf = [fits(r) for r in reps]
            for key, col in (("c", 0), ("alpha", 1), ("c_free", 2)):
                vals = np.asarray([r[col] for r in rf if r[col] is not None], np.float64)
                if vals.size:
                    out[f"{key}_lo"], out[f"{key}_hi"] = (
                        float(v) for v in np.quantile(vals, [a, 1 - a])
                    )
    return out


# ------------------------------------------------------------------------------------- one snapshot
def _result_path(wd: wdlib.Workdir, name: str, step: int) -> str:
    return wd.study_output_dir(STUDY, str(name), f"step_{int(step):09d}.npz")


def _sampler_for(wd: wdlib.Workdir, sampler: str | None, num_steps: int | None):
    return monitor.params_sampler(wd.experiment, wd.spec(wd.names()[0]), sampler, num_steps)


def evaluate_snapshot(wd: wdlib.Workdir, name: str, step: int, seeds: np.ndarray, sampler_fn, *,
                      num_bootstrap: int = 1000, seed: int = 0, overwrite: bool = False) -> dict:
    """f_mem of model `name`'s checkpoint `step` (module docstring), from its results file when it
    holds the same settings; otherwise sampled, measured and written. Returns the file's arrays."""
    spec = wd.spec(name)
    settings = dict(sampler_fn.record, seeds_sha=wdlib._seeds_tag(seeds), num_seeds=int(len(seeds)),
                    num_bootstrap=int(num_bootstrap), bootstrap_seed=int(seed),
                    criterion="d1/d2<1/3 pixel L2")
    path = _result_path(wd, name, step)
    if (old := report.reuse(path, settings, overwrite=overwrite, what="f_mem")) is not None:
        return old
    like = sampler_fn.experiment.init_like()
    params, got = checkpoint.restore_item(
        wd.checkpoint_dir(name), "ema_params", like, int(step), workdir=wd.path
    )
    samples = sampler_fn.sample(params, seeds)
    d = neighbours.nearest(samples, spec.data, 2).distances  # exact pixel L2, (N, 2)
    d1, d2 = d[:, 0], d[:, 1]
    from diffmem.metrics import memorization
    flags = memorization.is_memorized(d1, d2, monitor.GU_THRESHOLD)
    b = stats.bootstrap(flags.astype(np.float64), num=num_bootstrap,
                        seed=[int(seed), int(spec.k), int(step)])
    out = dict(samples=samples, seeds=np.asarray(seeds, np.int64), d1=d1, d2=d2, memorized=flags,
               f_mem=np.float64(b["mean"]), se=np.float64(b["se"]), lo=np.float64(b["lo"]),
               hi=np.float64(b["hi"]), step=np.int64(got), k=np.int64(spec.k),
               settings=np.str_(json.dumps(settings, sort_keys=True)))
    if wdlib.is_writer():
        report.write_npz(path, **out)
    return out


# ------------------------------------------------------------------------------------------ a sweep
def f_mem_curves(workdir: str, names: Sequence[str] | None = None, *, num_samples: int = 256,
                 sampler: str | None = None, num_steps: int | None = None,
                 num_bootstrap: int = 1000, seed: int = 0, overwrite: bool = False,
                 progress: bool = True) -> dict:
    """{name: {k, steps, f_mem, se, lo, hi, memorized (snapshots, N) bool}} over every checkpoint
    step of each member with K >= 2 (f_mem needs a second-nearest training example)."""
    from tqdm.auto import tqdm
    wd = wdlib.Workdir(workdir)
    names = wd.names() if names is None else [str(n) for n in names]
    seeds = np.arange(int(num_samples), dtype=np.int64)
    todo = []
    for name in names:
        if wd.spec(name).k < 2:
            continue
        steps = (
            sorted(checkpoint.manager(workdir, name, None).all_steps())
            if checkpoint.latest_step(workdir, name) is not None
            else []
        )
        if not steps:
            raise MissingInputError(
                f"Model {name} of {workdir} has no checkpoints: train it first (bin/train.py, or "
                "bin/training_time.py --config=... which keeps log-spaced snapshots)."
            )
        todo += [(name, s) for s in steps]
    curves: dict = {}
    for name, step in tqdm(todo, desc="f_mem of snapshots", unit="snapshot", disable=not progress):
        r = evaluate_snapshot(wd, name, step, seeds, _sampler_for(wd, sampler, num_steps),
                              num_bootstrap=num_bootstrap, seed=seed, overwrite=overwrite)
        c = curves.setdefault(
            name, dict(k=int(r["k"]), steps=[], f_mem=[], se=[], lo=[], hi=[], memorized=[])
        )
        c["steps"].append(int(r["step"]))
        for key in ("f_mem", "se", "lo", "hi"):
            c[key].append(float(r[key]))
        c["memorized"].append(np.asarray(r["memorized"], bool))
    for c in curves.values():
        c["memorized"] = np.stack(c["memorized"])
    return curves


def tau_mem(
    curves: dict, level: float = DEFAULT_LEVEL, num_bootstrap: int = 1000, seed: int = 0
) -> dict:
    """{name: {k, tau, status, lo, hi, replicates (B,) NaN where a replicate never crosses}} (module
    docstring): the crossing of the curve and of each bootstrap replicate (samples resampled per
    snapshot)."""
    out = {}
    for name, c in curves.items():
        steps = np.asarray(c["steps"], np.float64)
        flags = np.asarray(c["memorized"], np.float64)
        tau, status = crossing_step(steps, c["f_mem"], level)
        reps = np.stack([stats.bootstrap(flags[j], num=num_bootstrap,
                                         seed=[int(seed), int(c["k"]), int(s)])["replicates"]
                         for j, s in enumerate(c["steps"])], axis=1)  # (B, snapshots)
        taus = np.asarray([crossing_step(steps, r, level)[0] or np.nan for r in reps], np.float64)
        finite = taus[np.isfinite(taus)]
        lo, hi = (
            (float(v) for v in np.quantile(finite, [0.025, 0.975])) if finite.size else (None, None)
        )
        out[name] = dict(k=int(c["k"]), tau=tau, status=status, lo=lo, hi=hi, replicates=taus,
                         crossed_fraction=float(finite.size / len(taus)))
    return out


def fit_sweep(taus: dict) -> dict | None:
    """`fit_tau` over the members whose curve crossed the level (None with none)."""
    use = [n for n, t in taus.items() if t["status"] == "crossed"]
    if not use:
        return None
    reps = np.stack([taus[n]["replicates"] for n in use], axis=1)
    fit = fit_tau([taus[n]["k"] for n in use], [taus[n]["tau"] for n in use], reps)
    return dict(fit, names=use)


# ------------------------------------------------------------------------------------------ figures
def plot_curves(path: str, curves: dict, level: float, taus: dict | None = None) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in sorted(curves.items(), key=lambda kv: kv[1]["k"]):
        line, = ax.plot(c["steps"], c["f_mem"], "o-", ms=3, label=f"K = {c['k']}")
        ax.fill_between(c["steps"], c["lo"], c["hi"], color=line.get_color(), alpha=0.2, lw=0)
        if taus and taus.get(name, {}).get("status") == "crossed":
            ax.axvline(taus[name]["tau"], color=line.get_color(), ls=":", lw=0.8)
    ax.axhline(level, color="k", ls="--", lw=0.8, label=f"level {level:g}")
    ax.set_xscale("log"), ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step"), ax.set_ylabel("f_mem (d1/d2 < 1/3)")
    ax.set_title("Memorization vs training time (95% bootstrap bands)"), ax.legend(fontsize=7)
    return viz.save_figure(fig, path)


def plot_tau(path: str, taus: dict, fit: dict | None) -> str:
    fig, ax = plt.subplots(figsize=(5, 4))
    rows = sorted((t for t in taus.values() if t["status"] == "crossed"), key=lambda t: t["k"])
    if rows:
        k = np.asarray([t["k"] for t in rows], float)
        tau = np.asarray([t["tau"] for t in rows])
        lo = np.asarray([t["lo"] if t["lo"] is not None else t["tau"] for t in rows])
        hi = np.asarray([t["hi"] if t["hi"] is not None else t["tau"] for t in rows])
        ax.errorbar(k, tau, yerr=[np.maximum(tau - lo, 0), np.maximum(hi - tau, 0)], fmt="o",
                    capsize=3, label="tau_mem (95% bootstrap)")
        grid = np.geomspace(k.min() / 1.5, k.max() * 1.5, 50)
        if fit is not None:
            ax.plot(grid, fit["c"] * grid, "k--", lw=1, label=f"c K, c = {fit['c']:.3g}")
            if fit["alpha"] is not None:
                ax.plot(grid, fit["c_free"] * grid ** fit["alpha"], "r:", lw=1,
                        label=f"c K^alpha, alpha = {fit['alpha']:.2f}")
        ax.set_xscale("log"), ax.set_yscale("log"), ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no member crossed the level", ha="center", transform=ax.transAxes)
    ax.set_xlabel("K (training-set size)"), ax.set_ylabel("tau_mem (steps)")
    ax.set_title("Memorization time vs K")
    return viz.save_figure(fig, path)


# -------------------------------------------------------------------------------------- the section
def _fmt(v, spec=".3g"):
    return "-" if v is None else format(v, spec)


def study_section(workdir: str, names: Sequence[str] | None = None, *, level: float = DEFAULT_LEVEL,
                  num_samples: int = 256, sampler: str | None = None, num_steps: int | None = None,
                  num_bootstrap: int = 1000, seed: int = 0, overwrite: bool = False,
                  progress: bool = True) -> dict:
    """The training-time stage of a K sweep (diffmem.studies.k_sweep): f_mem of every snapshot,
    tau_mem, fits, figures, summary.json and report.md under <workdir>/training_time/. Returns
    dict(title, markdown, figures (paths), data (what summary.json holds))."""
    if not 0.0 < level <= 1.0:
        raise InputError(f"level = {level} must be in (0, 1].")
    wd = wdlib.Workdir(workdir)
    curves = f_mem_curves(workdir, names, num_samples=num_samples, sampler=sampler,
                          num_steps=num_steps, num_bootstrap=num_bootstrap, seed=seed,
                          overwrite=overwrite, progress=progress)
    taus = tau_mem(curves, level, num_bootstrap, seed)
    fit = fit_sweep(taus)
    out = wd.study_output_dir(STUDY)
    figures = [plot_curves(os.path.join(out, "f_mem_vs_step.png"), curves, level, taus),
               plot_tau(os.path.join(out, "tau_mem_vs_k.png"), taus, fit)]
    data = dict(
        level=level,
        num_samples=num_samples,
        num_bootstrap=num_bootstrap,
        seed=seed,
        curves={n: {k: v for k, v in c.items() if k != "memorized"} for n, c in curves.items()},
        tau={n: {k: v for k, v in t.items() if k != "replicates"} for n, t in taus.items()},
        fit=fit,
        skipped=[n for n in (names or wd.names()) if n not in curves],
    )
    rows = [
        dict(K=t["k"], tau_mem=_fmt(t["tau"]), ci=f"[{_fmt(t['lo'])}, {_fmt(t['hi'])}]",
             status=t["status"], snapshots=len(curves[n]["steps"]),
             last_f_mem=_fmt(curves[n]["f_mem"][-1]))
        for n, t in sorted(taus.items(), key=lambda kv: kv[1]["k"])
    ]
    lines = [
        f"f_mem: fraction of {num_samples} samples (fixed seeds 0..{num_samples - 1}) with d1/d2 < "
        f"1/3 (pixel "
        f"L2 to the K training examples) at every kept checkpoint (Bonnaire et al. 2025, notes "
        f"E.5); 95% "
        f"percentile bootstrap over samples ({num_bootstrap} resamples). tau_mem: first step with "
        f"f_mem >= "
        f"{level:g}, interpolated in log step.",
        "",
        report.markdown_table(rows, ["K", "tau_mem", "ci", "status", "snapshots", "last_f_mem"]),
    ]
    if fit is None:
        lines.append(
            "No member reached the level: no tau_mem fit (train longer, or lower the level)."
        )
    else:
        lines.append(
            f"Fit tau_mem = c K over {fit['n']} K: c = {_fmt(fit['c'])} [{_fmt(fit['c_lo'])}, "
            f"{_fmt(fit['c_hi'])}]. Free power law tau_mem = c K^alpha: alpha = "
            f"{_fmt(fit['alpha'])} "
            f"(OLS se {_fmt(fit['alpha_se'])}; bootstrap [{_fmt(fit['alpha_lo'])}, "
            f"{_fmt(fit['alpha_hi'])}], "
            f"{fit['replicates_used']} replicates where every K crossed). The paper's claim is "
            f"alpha = 1."
        )
    if data["skipped"]:
        lines.append(f"Skipped (K < 2, f_mem undefined): {data['skipped']}.")
    markdown = "\n".join(lines) + "\n"
    if wdlib.is_writer():
        report.write_json(os.path.join(out, "summary.json"), data)
        report.write_markdown(os.path.join(out, "report.md"), "Memorization vs training time",
                              [("Results", markdown)], figures)
    return dict(
        title="Memorization vs training time", markdown=markdown, figures=figures, data=data
    )


def run(config, workdir: str, *, num_snapshots: int = 12, names: Sequence[str] | None = None,
        progress: bool = True, **section_kw) -> dict:
    """Train the config's sweep keeping `num_snapshots` log-spaced snapshots (`with_snapshots`; a
    rerun resumes), then `study_section` over its members (or `names`)."""
    from diffmem import train
    config = with_snapshots(config, num_snapshots)
    wd = wdlib.Workdir(workdir)
    # a longer rerun keeps the snapshots taken so far (the manager would delete the others)
    if wd.exists():
        old = (wd.read_config().get("monitor", None) or {}).get("snapshots", None) or ()
        with config.unlocked():
            config.monitor.snapshots = tuple(
                sorted(set(config.monitor.snapshots) | {int(v) for v in old})
            )
    train.train(config, workdir, progress=progress)
    return study_section(workdir, names, progress=progress, **section_kw)
