"""Mechanism studies of one workdir, per model: Pham et al.'s critical times and relative energies,
Zhang et al.'s Jacobian rank vs SNR, and the data-only speciation / collapse times (Biroli et al.)
overlaid on them.

    # mechanisms/critical_times/memorized/<K>.npz
    critical_times("runs/digits", samples="memorized")
    # mechanisms/jacobian/<K>.npz + rank_vs_snr.png
    rank_vs_snr("runs/molrg", states="trajectory")
    # mechanisms/energy/<K>.npz + energy.png
    energy_profiles("runs/digits")

Samples of a class come from the classification (bin/classify.py: classify/<K>.npz, rows aligned
with the model's sample set by seed), sorted as Pham et al.: memorized ascending in d_m, spurious
ascending in d_s, generalized descending in d_s; "train" takes the first images of the K-subset.
Results are written per model (and per --start/--stop shard of the sorted list) atomically; a
finished file with the same settings is skipped, one with other settings is an error (nothing is
overwritten silently). Every model is a `diffmem.workdir.Model` (trained, or kind="optimal": the
empirical optimal denoiser).
"""
from __future__ import annotations

import json
import math
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import builders, report, viz
from diffmem.data import molrg
from diffmem.energy import ddpm_grad_energy, relative_energy
from diffmem.errors import InputError, MissingInputError
from diffmem.metrics import classify as classify_lib
from diffmem.metrics import critical_time as ct
from diffmem.metrics import jacobian, phase_times
from diffmem.workdir import Workdir

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["CLASSES", "SOURCES", "PUBLISHED_REAL", "PUBLISHED_MOLRG_ANALYTIC",
           "PUBLISHED_MOLRG_UNET", "open_workdir", "select_samples", "critical_times",
           "gather_critical_times", "critical_time_figure", "rank_vs_snr", "ddpm_energy_gradient",
           "energy_profiles", "phase_table", "molrg_metrics"]

CLASSES = classify_lib.NAMES  # the one list of Pham et al.'s classes
SOURCES = CLASSES + ("train",)
# Zhang et al.'s figures/jacobian-real.png medians (notes B.1) and the analytic MoLRG curve (n = 48,
# d = 6).
PUBLISHED_REAL = {500: 0.95, 125: 0.7, 50: 0.5, 10: 0.2, 1.67: 0.08, 0.91: 0.05, 0.3: 0.02,
                  0.12: 0.009, 0.08: 0.006, 0.04: 0.0045, 0.02: 0.005}
PUBLISHED_MOLRG_ANALYTIC = {500: 0.125, 125: 0.125, 50: 0.125, 10: 0.125, 1.67: 0.125, 0.91: 0.23,
                            0.3: 0.25, 0.12: 0.25, 0.08: 0.25, 0.04: 0.25, 0.02: 0.25, 0.01: 0.25}
PUBLISHED_MOLRG_UNET = {500: 0.98, 125: 0.96, 50: 0.94, 10: 0.22, 1.67: 0.12, 0.91: 0.19, 0.3: 0.48,
                        0.12: 0.67, 0.08: 0.67, 0.04: 0.67, 0.02: 0.67, 0.01: 0.67}


def open_workdir(workdir: str, config=None) -> Workdir:
    """The workdir; with a config (e.g. `--config` for models of kind "optimal", no training) a new
    workdir gets its config.json and an existing one must match it."""
    wd = Workdir(workdir)
    if config is not None:
        wd.write_config(config)
    elif not wd.exists():
        raise MissingInputError(
            f"{workdir} has no config.json: train there first (bin/train.py), or pass "
            "--config=... to study the optimal denoiser (--kind=optimal) without training."
        )
    return wd


def _out_dir(wd: Workdir, *parts: str) -> str:
    return wd.study_output_dir("mechanisms", *parts)


def _names(wd: Workdir, names: Sequence[str] | None) -> list[str]:
    all_names = wd.names()
    if not names:
        return all_names
    bad = [n for n in names if str(n) not in all_names]
    if bad:
        raise InputError(f"No model(s) {bad} in {wd.path}; its models: {all_names}.")
    return [str(n) for n in names]


# ------------------------------------------------------------------------------------------ samples
def select_samples(wd: Workdir, name: str, source: str, kind: str = "trained") -> dict:
    """The samples of one class (sorted as Pham et al.) or the model's training images.

    Returns {"x" (N, *S), "ids" (N,) sample seeds (or training indices for "train"), "train_idx"
    (N,) index of the nearest training image (pixel L2; the image itself for "train")}.
    """
    if source not in SOURCES:
        raise InputError(f"Unknown samples {source!r}; valid: {list(SOURCES)}.")
    spec = wd.spec(name)
    if source == "train":
        k = len(spec.data)
        return {"x": np.asarray(spec.data, np.float32), "ids": np.arange(k),
                "train_idx": np.arange(k)}
    npz, _ = wd.classify_paths(name, kind)
    if not os.path.exists(npz):
        raise MissingInputError(f"{npz} does not exist: classify the samples first "
                                f"(python bin/classify.py --workdir={wd.path}).")
    cls = report.read_npz(npz)
    data = wd.read_samples(name, kind)
    if not np.array_equal(np.asarray(cls["seeds"]), np.asarray(data["seeds"])):
        raise InputError(
            f"{npz} was made from other samples than {wd.samples_dir(name, kind)} now holds: "
            "rerun bin/classify.py."
        )
    label = CLASSES.index(source)
    rows = np.nonzero(np.asarray(cls["labels"]) == label)[0]
    key = {"memorized": cls["d_m"], "spurious": cls["d_s"], "generalized": -np.asarray(cls["d_s"])}[
        source
    ]
    rows = rows[np.argsort(np.asarray(key)[rows], kind="stable")]
    return {"x": np.asarray(data["samples"], np.float32)[rows],
            "ids": np.asarray(data["seeds"])[rows],
            "train_idx": np.asarray(cls["train_idx"])[rows, 0]}


# ----------------------------------------------------------------------------------- critical times
def critical_times(workdir: str, *, samples: str = "memorized", names: Sequence[str] | None = None,
                   kind: str = "trained", start: int = 0, stop: int | None = None,
                   metric: str = "lpips", lpips_net: str = "alexnet", delta: float | None = None,
                   trials: int = 10, stop_rule: str = "per_sample", batch_size: int = 64,
                   seed: int = 0, rows_per_call: int = 2048, figures: bool = True,
                   progress: bool = True, config=None,
                   log: Callable[[str], None] | None = print) -> dict:
    """Critical times of the selected samples [start, stop) of each model (module docstring),
    resumable.

    Image workdirs: DDPM/DDIM scan with `metric` "lpips" (delta default 0.1) or "l2" (delta
    required). Toy workdirs: the reverse-EM scan of every training point (samples="train"),
    Euclidean delta required. Returns {name: path of its result file}.
    """
    wd = open_workdir(workdir, config)
    config = wd.config
    # a preconditioned denoiser; "sde": the toy EM scan
    image = builders.diffusion_kind(config) == "precond"
    if not image and samples != "train":
        raise InputError(
            "Toy workdirs have no sample classes here: use samples='train' (Pham et al.'s toy scan "
            "of the training points)."
        )
    if metric not in ("lpips", "l2"):
        raise InputError(f"Unknown metric {metric!r}; valid: ['lpips', 'l2'].")
    if delta is None:
        if not image or metric != "lpips":
            raise InputError(
                "delta is required for the Euclidean (l2 / toy) recovery test: Pham et al. use "
                "0.1, "
                "0.05 and 0.5 in different places (e.g. --delta=0.1)."
            )
        delta = 0.1
    if stop_rule not in ct.STOP_RULES:
        raise InputError(f"Unknown stop rule {stop_rule!r}; valid: {list(ct.STOP_RULES)}.")
    settings = dict(samples=samples, kind=kind, metric=metric if image else "l2",
                    lpips_net=lpips_net if image and metric == "lpips" else "", delta=float(delta),
                    trials=trials, stop_rule=stop_rule if image else "per_sample",
                    batch_size=batch_size if stop_rule == "batch" else 0, seed=seed, start=start,
                    stop=stop)
    distance = ct.l2_distance
    if image and metric == "lpips":
        from diffmem.metrics import lpips
        distance = ct.lpips_distance(lpips.load_weights(lpips_net))
    out = {}
    for name in _names(wd, names):
        sel = select_samples(wd, name, samples, kind)
        lo, hi = start, (len(sel["x"]) if stop is None else min(stop, len(sel["x"])))
        suffix = (
            ""
            if (start == 0 and stop is None)
            else f"_{start}-{stop if stop is not None else 'end'}"
        )
        path = _out_dir(wd, "critical_times", samples, *(("optimal",) if kind == "optimal" else ()),
                        f"{name}{suffix}.npz")
        if report.reuse(path, settings) is not None:
            if log:
                log(f"{name}: finished ({wd.relative(path)})")
            out[name] = path
            continue
        if lo >= hi:
            if log:
                log(f"{name}: no {samples} samples in [{start}, {stop})")
            continue
        model = wd.model(name, kind=kind)
        x, ids = sel["x"][lo:hi], sel["ids"][lo:hi]
        if image:
            res = ct.image_critical_times(model.denoiser, x, distance=distance, delta=delta,
                                          trials=trials, stop=stop_rule, batch_size=batch_size,
                                          seed=seed, sample_ids=ids, rows_per_call=rows_per_call,
                                          progress=progress)
        else:
            res = ct.toy_critical_times(model.time_score, model.sde, x, delta=delta, trials=trials,
                                        seed=seed, sample_ids=ids, rows_per_call=rows_per_call,
                                        progress=progress)
            res["time"] = np.repeat(res["time"][:, None], trials, 1)
        report.write_npz(path, time=res["time"], radius=res["radius"], ids=ids, ts=res["ts"],
                         batch=res.get("batch", np.zeros(len(ids), np.int64)), k=model.k,
                         rows=np.arange(lo, hi), settings=json.dumps(settings, sort_keys=True))
        if log:
            log(
                f"{name}: {len(ids)} {samples} samples, median Tc {np.median(res['time']):.3g} -> "
                f"{wd.relative(path)}"
            )
        out[name] = path
    if figures:
        critical_time_figure(workdir, kind=kind)
    return out


def gather_critical_times(workdir: str, kind: str = "trained") -> dict:
    """{source: {K: (time (N, trials), radius (N, trials))}} over every finished result file (shards
    merged)."""
    wd = Workdir(workdir)
    found: dict = {}
    for source in SOURCES:
        parts = ("critical_times", source) + (("optimal",) if kind == "optimal" else ())
        folder = _out_dir(wd, *parts)
        if not os.path.isdir(folder):
            continue
        for f in sorted(os.listdir(folder)):
            if not f.endswith(".npz"):
                continue
            r = report.read_npz(_out_dir(wd, *parts, f))
            t, rad = found.setdefault(source, {}).setdefault(int(r["k"]), ([], []))
            t.append(r["time"])
            rad.append(r["radius"])
    return {
        s: {k: (np.concatenate(t), np.concatenate(r)) for k, (t, r) in sorted(d.items())}
        for s, d in found.items()
    }


def critical_time_figure(workdir: str, kind: str = "trained") -> str | None:
    """Violins of the per-sample median critical time and radius per class vs K, with the data-only
    speciation / collapse indices (DDPM steps) of each K as markers. Returns the figure path."""
    data = gather_critical_times(workdir, kind)
    if not data:
        return None
    wd = Workdir(workdir)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"memorized": "C3", "spurious": "C1", "generalized": "C2", "train": "C0"}
    ks = sorted({k for d in data.values() for k in d})
    for j, source in enumerate(data):
        for ax, which in zip(axes, (0, 1)):
            vals = [np.median(data[source][k][which], axis=1) for k in ks if k in data[source]]
            pos = [ks.index(k) + 0.2 * (j - (len(data) - 1) / 2) for k in ks if k in data[source]]
            parts = ax.violinplot(vals, positions=pos, widths=0.18, showmedians=True)
            for b in parts["bodies"]:
                b.set_color(colors[source])
            ax.plot([], [], color=colors[source], label=source)
    for ax, label in zip(axes, ("critical time Tc (DDPM step)", "radius ||x0 - x_Tc||")):
        ax.set_xticks(range(len(ks)), [str(k) for k in ks])
        ax.set_xlabel("K")
        ax.set_ylabel(label)
    table = phase_table(workdir, names=[n for n in wd.names() if n in {str(k) for k in ks}])
    for i, k in enumerate(ks):  # the data-only speciation / collapse steps of each K (DDPM time)
        row = table.get(str(k))
        if row:
            axes[0].plot([i], [row["t_s_index"]], "k_", ms=14)
            if row.get("t_c_index") is not None and row["t_c_index"] >= 0:
                axes[0].plot([i], [row["t_c_index"]], "kx", ms=6)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"Critical times ({kind}); bars: speciation step t_S, crosses: collapse step t_C (data "
        f"only)"
    )
    fig.tight_layout()
    path = _out_dir(
        wd, "critical_times", f"critical_times{'_optimal' if kind == 'optimal' else ''}.png"
    )
    return viz.save_figure(fig, path, dpi=110)


# ------------------------------------------------------------------------------------ Jacobian rank
def rank_vs_snr(workdir: str, *, names: Sequence[str] | None = None, kind: str = "trained",
                states: str = "trajectory", num_latents: int = 8,
                subset: Sequence[int] | None = None, sigmas: Sequence[float] | None = None,
                seed: int = 0, float64: bool = True, config=None,
                log: Callable[[str], None] | None = print) -> dict:
    """rank(J)/n vs SNR for each model (states "trajectory" or "forward" from its first num_latents
    training images), with the data-only speciation / collapse SNRs as markers; for a MoLRG config
    the analytic population denoiser's curve too. Writes mechanisms/jacobian/<name>.npz and
    rank_vs_snr.png."""
    wd = open_workdir(workdir, config)
    config = wd.config
    settings = dict(kind=kind, states=states, num_latents=num_latents, subset=list(subset or []),
                    sigmas=list(sigmas or []), seed=seed, float64=float64)
    old_x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", bool(float64))
    results = {}
    try:
        for name in _names(wd, names):
            path = _out_dir(wd, "jacobian", f"{name}{'_optimal' if kind == 'optimal' else ''}.npz")
            if (done := report.reuse(path, settings)) is not None:
                results[name] = {k: v for k, v in done.items() if k != "settings"}
                continue
            model = wd.model(name, kind=kind)
            d = _promoted(model.denoiser) if kind == "trained" else model.denoiser
            res = jacobian.rank_vs_snr(d, states=states, shape=model.shape,
                                       data=model.train_data[:num_latents], sigmas=sigmas,
                                       num_latents=num_latents, seed=seed, subset=subset)
            pt = phase_table(workdir, names=[name])[name]
            # OU time t <-> sigma = sqrt(e^{2t} - 1) (x_t / e^{-t} = a + sigma z): SNR_S = 1 /
            # sqrt(Lambda - 1)
            t_c = pt.get("t_c")
            res.update(
                snr_speciation=1 / math.sqrt(pt["lambda"] - 1) if pt["lambda"] > 1 else np.nan,
                snr_collapse=1 / math.sqrt(math.expm1(2 * t_c))
                if t_c is not None and t_c > 0
                else np.nan,
            )
            report.write_npz(path, **res, settings=json.dumps(settings, sort_keys=True))
            results[name] = res
            if log:
                med = np.median(res["rank_over_n"], axis=1)
                log(
                    f"{name}: rank/n "
                    + " ".join(f"{s:.3g}:{m:.3f}" for s, m in zip(res["snr"], med))
                )
        analytic = None
        if config.data.name == "molrg":
            m = builders.molrg_from_config(config)
            shape = (config.data.resolution, config.data.resolution, 3)
            analytic = jacobian.rank_vs_snr(
                m.denoiser,
                states=states,
                shape=shape,
                num_latents=num_latents,
                seed=seed,
                subset=subset,
                sigmas=sigmas,
                data=m.sample(num_latents, seed=seed, shape=shape)[0][:num_latents],
            )
    finally:
        jax.config.update("jax_enable_x64", old_x64)
    _rank_figure(wd, results, analytic, kind)
    metrics = (
        molrg_metrics(workdir, names=names, kind=kind, log=log)
        if config.data.name == "molrg"
        else None
    )
    return {"models": results, "analytic": analytic, "molrg": metrics}


def _promoted(denoiser):
    """Run a float32 network on float64 states (the Jacobian is then taken through a float32
    network)."""
    def d(x, sigma):
        return denoiser(x.astype(jnp.float32), sigma.astype(jnp.float32)).astype(x.dtype)
    return d


def _rank_figure(wd: Workdir, results: dict, analytic: dict | None, kind: str) -> str | None:
    if not results:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for i, (name, r) in enumerate(results.items()):
        order = np.argsort(r["snr"])
        ax.plot(np.log10(r["snr"][order]), np.median(r["rank_over_n"][order], axis=1), ".-",
                color=f"C{i}", label=f"K = {name}")
        for key, style in (("snr_speciation", ":"), ("snr_collapse", "--")):
            if np.isfinite(float(r[key])):
                ax.axvline(np.log10(float(r[key])), ls=style, color=f"C{i}", lw=0.8)
    if analytic is not None:
        order = np.argsort(analytic["snr"])
        ax.plot(np.log10(analytic["snr"][order]), np.median(analytic["rank_over_n"][order], axis=1),
                "k--", label="analytic MoLRG")
        refs = {"published analytic": PUBLISHED_MOLRG_ANALYTIC,
                "published U-Net": PUBLISHED_MOLRG_UNET}
    else:
        refs = {"published, real data (median)": PUBLISHED_REAL}
    for (label, ref), marker in zip(refs.items(), ("r^", "mv")):
        ax.plot(
            np.log10(list(ref)), list(ref.values()), marker, ms=5, label=f"{label} (Zhang et al.)"
        )
    ax.set_yscale("log")
    ax.set_xlabel("log10 SNR = log10(1/sigma)")
    ax.set_ylabel("median rank(J)/n")
    ax.set_title(f"Jacobian rank ({kind}); dotted: speciation, dashed: collapse (data only)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = _out_dir(wd, "jacobian", f"rank_vs_snr{'_optimal' if kind == 'optimal' else ''}.png")
    return viz.save_figure(fig, path, dpi=110)


# ---------------------------------------------------------------------------------- relative energy
def ddpm_energy_gradient(denoiser, beta_0: float) -> Callable:
    """Pham et al.'s force at DDPM step 0, -beta_0 s(x) - beta_0 x / 2, with s the VP score at step
    0:
    s(x) = (sqrt(ab_0) D(x / sqrt(ab_0), sigma_0) - x) / std_0^2, ab_0 = 1 - beta_0, std_0 = sqrt(1
        - ab_0)
    (from alpha_bar, not the cumprod of the betas), sigma_0 = std_0 / sqrt(ab_0). It is the gradient
    of
    E(x) = -beta_0 log p_0(x) - beta_0 |x|^2 / 4 (tested against that closed form for the empirical
        denoiser)."""
    ab0 = 1.0 - beta_0
    sig0 = math.sqrt((1 - ab0) / ab0)

    def score(x):
        x0 = denoiser(x / math.sqrt(ab0), jnp.full(x.shape[:1], sig0, x.dtype))
        return (math.sqrt(ab0) * x0 - x) / (1 - ab0)

    return ddpm_grad_energy(score, beta_0)


def energy_profiles(workdir: str, *, names: Sequence[str] | None = None, kind: str = "trained",
                    per_class: int = 32, num: int = 20, config=None,
                    log: Callable[[str], None] | None = print) -> dict:
    """Relative energy E(a) - E(0) along x(a) = cos(a) x + sin(a) r, a in [0, pi/2] (`num` points),
    from each of up to `per_class` samples x of every class to its nearest training image r (Pham et
    al.), with the barrier max_a E(a) - E(0) and the end difference E(pi/2) - E(0). Image models use
    the DDPM force at step 0 (`ddpm_energy_gradient`); toy models -score at sigma_min. Writes
    mechanisms/energy/<name>.npz, energy.png."""
    wd = open_workdir(workdir, config)
    config = wd.config
    # DDPM force of a denoiser; "sde": the toy score
    image = builders.diffusion_kind(config) == "precond"
    settings = dict(kind=kind, per_class=per_class, num=num)
    results = {}
    for name in _names(wd, names):
        path = _out_dir(wd, "energy", f"{name}{'_optimal' if kind == 'optimal' else ''}.npz")
        if (done := report.reuse(path, settings)) is not None:
            results[name] = done
            continue
        model = wd.model(name, kind=kind)
        if image:
            grad = ddpm_energy_gradient(model.denoiser, float(config.diffusion.beta_start))
        else:
            smin = model.sigma_min
            grad = lambda x: -model.score(x, jnp.full(x.shape[:1], smin, x.dtype))
        profiles, labels = [], []
        for c, source in enumerate(CLASSES if image else ()):
            try:
                sel = select_samples(wd, name, source, kind)
            except MissingInputError:
                break
            x = sel["x"][:per_class]
            if len(x):
                r = model.train_data[sel["train_idx"][:per_class]]
                profiles.append(
                    np.asarray(relative_energy(grad, jnp.asarray(x), jnp.asarray(r), num))
                )
                labels.append(np.full(len(x), c))
        if not profiles:  # no classified samples (or a toy workdir): paths between training points
            x = model.train_data[:per_class]
            r = np.roll(model.train_data, 1, axis=0)[:per_class]
            profiles.append(np.asarray(relative_energy(grad, jnp.asarray(x), jnp.asarray(r), num)))
            labels.append(np.full(len(x), len(CLASSES)))
        prof = np.concatenate(profiles)
        res = dict(profiles=prof, labels=np.concatenate(labels), barrier=prof.max(1),
                   end=prof[:, -1], a=np.linspace(0, math.pi / 2, num), k=model.k)
        report.write_npz(path, **res, settings=json.dumps(settings, sort_keys=True))
        results[name] = res
        if log:
            log(f"{name}: {len(prof)} paths, median barrier {np.median(res['barrier']):.4g}")
    _energy_figure(wd, results, kind)
    return results


def _energy_figure(wd: Workdir, results: dict, kind: str) -> str | None:
    if not results:
        return None
    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    labels = CLASSES + ("train-train",)
    for ax, name in zip(axes[0], names):
        r = results[name]
        for c in np.unique(r["labels"]):
            p = r["profiles"][r["labels"] == c]
            ax.plot(r["a"], p.mean(0), color=f"C{int(c)}", label=f"{labels[int(c)]} ({len(p)})")
            ax.fill_between(r["a"], np.percentile(p, 25, 0), np.percentile(p, 75, 0),
                            color=f"C{int(c)}", alpha=0.2)
        ax.set_title(f"K = {name}")
        ax.set_xlabel("a: x(a) = cos(a) x + sin(a) r")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("E(a) - E(0)")
    fig.tight_layout()
    path = _out_dir(wd, "energy", f"energy{'_optimal' if kind == 'optimal' else ''}.png")
    return viz.save_figure(fig, path, dpi=110)


# -------------------------------------------------------------------------------------- phase times
def phase_table(workdir: str, *, names: Sequence[str] | None = None, num_draws: int = 2000,
                log: Callable[[str], None] | None = None) -> dict:
    """Data-only speciation and collapse times of every model's training set (Biroli et al.; see
    `metrics.phase_times`), cached in mechanisms/phase_times.json: {name: {lambda, t_s, t_s_index,
    t_c, t_c_index, t_c_gaussian, alpha, n, dim}} (OU times; indices are 0-based DDPM steps)."""
    wd = Workdir(workdir)
    path = _out_dir(wd, "phase_times.json")
    table = {}
    if os.path.exists(path):
        with open(path) as f:
            table = json.load(f)
    changed = False
    for name in _names(wd, names):
        if name in table and table[name].get("num_draws") == num_draws:
            continue
        data = wd.spec(name).data
        pt = phase_times.phase_times(data, collapse=len(data) > 1, num_draws=num_draws,
                                     ts=np.geomspace(0.01, 3.0, 40))
        table[name] = {
            k: (float(v) if np.ndim(v) == 0 else None)
            for k, v in pt.items()
            if not k.startswith("curve")
        }
        table[name]["num_draws"] = num_draws
        changed = True
        if log:
            log(
                f"{name}: t_S {pt['t_s']:.3f} (step {pt['t_s_index']}), t_C "
                f"{pt.get('t_c', float('nan')):.3f}"
            )
    if changed:
        report.write_json(path, table)
    return table


# ------------------------------------------------------------------------------------------- MoLRG
def molrg_metrics(workdir: str, *, names: Sequence[str] | None = None, kind: str = "trained",
                  sigma: float = 0.05, points: int = 4,
                  log: Callable[[str], None] | None = print) -> dict:
    """Wang et al.'s MoLRG generalization measures per model (a config with data.name = "molrg"):
    subspace error of its samples (median of min_k ||x - P_k x|| / ||x||), Gu et al.'s memorization
    ratio to its training set, and the recovery angle (largest principal angle, radians) between the
    top-d right singular vectors of J at noise `sigma` around `points` fresh population points of
    each class and that class's basis. Writes mechanisms/molrg.json and molrg.png (measures vs K:
    the generalization-vs-N sweep)."""
    wd = Workdir(workdir)
    config = wd.config
    if config.data.name != "molrg":
        raise InputError(f"{workdir} is not a MoLRG workdir (data.name = {config.data.name!r}).")
    m = builders.molrg_from_config(config)
    shape = (config.data.resolution, config.data.resolution, 3)
    table = {}
    for name in _names(wd, names):
        model = wd.model(name, kind=kind)
        row = {"k": model.k}
        if wd.has_samples(name, kind):
            s = wd.read_samples(name, kind)["samples"]
            row.update(subspace_error=float(np.median(m.subspace_error(s))),
                       memorization_ratio=molrg.memorization_ratio(s, model.train_data),
                       num_samples=len(s))
        x, labels = m.sample(points, seed=12345, shape=shape)
        noisy = x + sigma * np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
        jac = jax.jit(jax.vmap(lambda v: jacobian.denoiser_jacobian(model.denoiser, v, sigma)))(
            jnp.asarray(noisy)
        )
        angles = [molrg.subspace_recovery(j, m.bases[c]) for j, c in zip(np.asarray(jac), labels)]
        row.update(recovery_angle=float(np.median(angles)), sigma=sigma)
        table[name] = row
        if log:
            log(
                f"{name}: "
                + ", ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                )
            )
    report.write_json(_out_dir(wd, f"molrg{'_optimal' if kind == 'optimal' else ''}.json"), table)
    ks = [table[n]["k"] for n in table]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("subspace_error", "memorization_ratio", "recovery_angle"):
        vals = [table[n].get(key, np.nan) for n in table]
        ax.plot(ks, vals, "o-", label=key)
    ax.set_xscale("log")
    ax.set_xlabel("training-set size K")
    ax.set_title(f"MoLRG n = {m.n}, {m.num_classes} classes of dimension {m.dim} ({kind})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    viz.save_figure(
        fig, _out_dir(wd, f"molrg{'_optimal' if kind == 'optimal' else ''}.png"), dpi=110
    )
    return table
