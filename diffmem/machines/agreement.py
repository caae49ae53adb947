"""Machine-vs-network agreement across a K sweep, and the K-sweep study's "machines" section.

r (Kamb & Ganguli's eval_script): each output is mean-removed and scaled to unit norm, r = <a, b>, a
Pearson correlation over the pixels of one image; the papers report the median over images (whether
they square it is unverified, so both r and r^2 are reported). Two comparisons per K:
  samples    the network and the machine run the same deterministic sampler from the same seeds (the
             same starting noise): r between the two final images, per seed (the papers'
             comparison);
  denoisers  D_net and D_machine on the same noised images x0 + sigma n, per sigma: r per image.
The machines' locality (patch size per sigma) is first calibrated against the network
(`calibration`).

    # (diffmem.studies.k_sweep)
    study_section(workdir, names, **kw) -> dict(title, markdown, figures, data)
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from diffmem import builders, checkpoint, report, sampling, viz
from diffmem import workdir as wdlib
from diffmem.errors import InputError
from diffmem.machines import calibration
from diffmem.machines import models as mm
from diffmem.machines.calibration import noised, pearson_r  # noqa: F401 (agreement.pearson_r)
from diffmem.metrics.calibration import heldout_images

__all__ = ["TITLE", "TUNED", "DEFAULT_MACHINES", "sample_agreement", "denoiser_agreement",
           "output_dir", "agreement_for", "agreement_vs_k", "figures",
           "study_section", "write_report"]

TITLE = "Analytic local score machines"
# machines with a calibrated hyperparameter
TUNED = ("ls", "els", "bbels", "pspc_square", "pspc_flex")
# Compared by default: the memorizing optimum, Kamb & Ganguli's equivariant machine and its
# boundary-broken variant (zero-padded networks know where a patch is: on 8x8 digits bbELS follows
# the network at r 0.97 for K = 1797 where ELS reaches 0.48), and the Gaussian (Wiener) filter.
DEFAULT_MACHINES = ("ideal", "els", "bbels", "wiener")


def sample_agreement(model_a, model_b, seeds, sampler: str = "edm_euler", **settings) -> np.ndarray:
    """r per seed between the samples of two models drawn by the same sampler and settings (resolved
    on model_a) from the same seeds."""
    spec = sampling.get_sampler(sampler, model_a)
    resolved = spec.resolve(model_a, **settings)
    seeds = jnp.asarray(np.asarray(seeds, np.int64).astype(np.uint32))
    xa = _jit(spec.build(model_a, **resolved), model_a)(seeds)
    xb = _jit(sampling.get_sampler(sampler, model_b).build(model_b, **resolved), model_b)(seeds)
    return pearson_r(xa, xb)


def _jit(fn, model):
    """jax.jit of fn with the model's compiler options (machines: 512-bit vectors on AVX-512
    CPUs)."""
    return jax.jit(fn, compiler_options=getattr(model, "compiler_options", None))


def denoiser_agreement(
    model_a, model_b, images, sigmas: Sequence[float], seed: int = 0
) -> np.ndarray:
    """(L, M) r between D_a and D_b on images (M, *S) noised at each sigma (noise from
    fold_in(key(seed), l))."""
    images = np.asarray(images, np.float32)
    da, db = _jit(model_a.denoiser, model_a), _jit(model_b.denoiser, model_b)
    out = []
    for i, s in enumerate(sigmas):
        x = jnp.asarray(noised(images, s, seed, i))
        sig = jnp.full((len(images),), s, jnp.float32)
        out.append(pearson_r(da(x, sig), db(x, sig)))
    return np.stack(out)


def output_dir(wd: wdlib.Workdir, *parts: str) -> str:
    """<workdir>/machines/... (`Workdir.study_output_dir("machines")`)."""
    return wd.study_output_dir("machines", *parts)


def _median(v) -> float | None:
    v = np.asarray(v, np.float64)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def agreement_for(wd: wdlib.Workdir, name: str, *, machines: Sequence[str], network: str,
                  calibrate_machine: str, candidates, sigmas, num_images: int, images: str, seeds,
                  sampler: str, num_steps: int, chunk, seed: int) -> dict:
    """One K: calibration of `calibrate_machine`, then sample and denoiser agreement of every
    machine."""
    net = wd.model(name, kind=network)
    spec = wd.spec(name)
    x0 = (np.asarray(spec.data[:num_images]) if images == "train"
          else heldout_images(builders.load_pool(wd.config), spec.indices)[:num_images])
    sig = np.asarray(calibration.default_sigmas(net) if sigmas is None else sigmas, np.float64)
    cal, schedule = {}, None
    if calibrate_machine is not None:
        cal = calibration.calibrate(net, calibrate_machine, candidates=candidates, sigmas=sig,
                                    images=x0, seed=seed, chunk=chunk)
        schedule = cal.pop("schedule")
    row = dict(k=int(spec.k), calibration=cal,
               schedule=None if schedule is None else schedule.to_dict(), machines={})
    for machine in machines:
        tuned = machine in TUNED and calibrate_machine is not None
        own = (
            (
                schedule
                if machine == calibrate_machine
                else calibration.calibrate(
                    net, machine, sigmas=sig, images=x0, seed=seed, chunk=chunk
                )["schedule"]
            )
            if tuned
            else None
        )
        m = mm.machine_model(wd, name, machine, patch_size=own, tau=own, chunk=chunk)
        rs = sample_agreement(net, m, seeds, sampler, num_steps=num_steps)
        rd = denoiser_agreement(net, m, x0, sig, seed)
        row["machines"][machine] = dict(
            r_samples=rs.tolist(), r=_median(rs), r2=_median(rs**2),
            r_denoiser=[_median(v) for v in rd], r2_denoiser=[_median(v**2) for v in rd],
            schedule=None if own is None else own.to_dict())
    return row


def agreement_vs_k(workdir, names: Sequence[str] | None = None, *,
                   machines: Sequence[str] = DEFAULT_MACHINES, network: str = "trained",
                   calibrate_machine: str = "els", candidates=None,
                   sigmas: Sequence[float] | None = None, num_images: int = 16,
                   images: str = "train", num_seeds: int = 16, sampler: str = "edm_euler",
                   num_steps: int = 18, chunk: int | None = None, seed: int = 0,
                   progress: bool = True, seeds: Sequence[int] | None = None) -> dict:
    """Agreement of each machine with the network for each K of a workdir ({name: row}, rows as
    `agreement_for`), saved as machines/agreement/<name>.json and reused when a rerun asks for the
    same settings.

    network: "trained" (the checkpoint's EMA weights) or "optimal" (the empirical denoiser: how
    local is the memorizing optimum?). calibrate_machine: the machine whose hyperparameter is
    calibrated first (every tuned machine gets its own calibration); None: no calibration, the
    machines' default schedules. images: "train" or "heldout" (noised images of the denoiser
    comparison and the calibration). seeds: the seeds of the sample comparison (default
    0..num_seeds-1)."""
    wd = workdir if isinstance(workdir, wdlib.Workdir) else wdlib.Workdir(os.fspath(workdir))
    bad = [m for m in machines if m not in mm.MACHINES]
    if bad or calibrate_machine not in TUNED + (None,):
        raise InputError(
            f"Unknown machine(s) {bad or [calibrate_machine]}: machines are {list(mm.MACHINES)}, "
            f"the "
            f"calibrated one one of {list(TUNED)}."
        )
    if images not in ("train", "heldout") or network not in wdlib.KINDS:
        raise InputError(f"images must be 'train' or 'heldout' and network one of {wdlib.KINDS}.")
    names = wd.names() if names is None else [str(n) for n in names]
    seeds = np.arange(num_seeds) if seeds is None else np.asarray(seeds, np.int64).reshape(-1)
    num_seeds = len(seeds)
    settings = dict(machines=list(machines), network=network, calibrate_machine=calibrate_machine,
                    candidates=None if candidates is None else list(candidates),
                    sigmas=None if sigmas is None else [float(s) for s in sigmas],
                    num_images=num_images, images=images, num_seeds=num_seeds, sampler=sampler,
                    num_steps=num_steps, seed=seed)
    if not np.array_equal(seeds, np.arange(num_seeds)):  # 0..n-1 is recorded as num_seeds alone
        settings["seeds"] = seeds.tolist()
    rows = {}
    for name in tqdm(wdlib.sort_names(names), desc="machines vs network", disable=not progress):
        path = output_dir(wd, "agreement", f"{name}.json")
        recorded = dict(settings, step=_step(wd, name, network))   # a new checkpoint is recomputed
        if (old := report.reuse(path, recorded, overwrite=True)) is not None:
            rows[name] = old["row"]
            continue
        row = agreement_for(wd, name, machines=machines, network=network,
                            calibrate_machine=calibrate_machine, candidates=candidates,
                            sigmas=sigmas, num_images=num_images, images=images, seeds=seeds,
                            sampler=sampler, num_steps=num_steps, chunk=chunk, seed=seed)
        if wdlib.is_writer():
            report.write_json(path, dict(settings=recorded, row=row))
        rows[name] = row
    return rows


def _step(wd, name, network) -> int:
    if network == "optimal":
        return -1
    step = checkpoint.latest_step(wd.path, name)
    return -2 if step is None else int(step)


def figures(wd: wdlib.Workdir, rows: dict) -> list[str]:
    """agreement_vs_k.png (median r and r^2 of the samples vs K, per machine) and calibration.png (k
    per sigma)."""
    import matplotlib.pyplot as plt
    names = wdlib.sort_names(rows)
    ks = [rows[n]["k"] for n in names]
    machines = list(rows[names[0]]["machines"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in zip(axes, ("r", "r2")):
        for m in machines:
            ax.plot(
                ks,
                [
                    np.nan if rows[n]["machines"][m][key] is None else rows[n]["machines"][m][key]
                    for n in names
                ],
                marker="o",
                label=m,
            )
        ax.set_xscale("log"), ax.set_xlabel("training set size K"), ax.grid(alpha=0.3)
        ax.set_xticks(ks, [str(k) for k in ks]), ax.minorticks_off()
        ax.set_ylabel(f"median {'r' if key == 'r' else 'r^2'} (machine vs network samples)")
    axes[0].legend(fontsize=8)
    out = [viz.save_figure(fig, output_dir(wd, "agreement_vs_k.png"))]
    if any(rows[n]["schedule"] is None for n in names):
        return out
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for n in names:
        s = rows[n]["schedule"]
        ax.plot(s["sigmas"], s["values"], marker="o", label=f"K = {rows[n]['k']}")
    (ax.set_xscale("log"), ax.set_xlabel("sigma"), ax.set_ylabel("calibrated patch size k"),
     ax.grid(alpha=0.3))
    ax.legend(fontsize=8)
    out.append(viz.save_figure(fig, output_dir(wd, "calibration.png")))
    return out


def study_section(workdir, names: Sequence[str] | None = None, **kw) -> dict:
    """The K-sweep report's "machines" section: agreement_vs_k(workdir, names, **kw), figures and a
    table."""
    wd = workdir if isinstance(workdir, wdlib.Workdir) else wdlib.Workdir(os.fspath(workdir))
    kw.setdefault("progress", False)
    rows = agreement_vs_k(wd, names, **kw)
    if not rows:
        raise InputError("No models to compare with the machines.")
    figs = figures(wd, rows) if wdlib.is_writer() else []
    names = wdlib.sort_names(rows)
    machines = list(rows[names[0]]["machines"])
    table = []
    for n in names:
        cal_r2 = _median(rows[n]["calibration"].get("r2", []))
        r = {"K": rows[n]["k"], "calibration r^2 (median over sigma)": cal_r2}
        for m in machines:
            r[f"r {m}"] = rows[n]["machines"][m]["r"]
            r[f"r^2 {m}"] = rows[n]["machines"][m]["r2"]
        table.append(r)
    columns = list(table[0])
    markdown = (
        "Median over seeds of the per-image correlation r (and r^2) between the network's samples "
        "and each "
        "machine's from the same seeds and the same deterministic sampler; the patch size per "
        "noise level is "
        "calibrated per K against the network's denoiser (minimum MSE on noised images). "
        "Memorization shows as "
        "the ideal (empirical) machine agreeing at small K; the local equivariant machine should "
        "take over as K "
        "grows (Kamb & Ganguli 2025 report median r^2 0.94-0.96 on MNIST / FashionMNIST).\n\n"
        + report.markdown_table(
            [{c: ("-" if v is None else v) for c, v in r.items()} for r in table], columns
        )
    )
    return dict(title=TITLE, markdown=markdown, figures=figs,
                data=dict(rows=rows, ks=[rows[n]["k"] for n in names], machines=machines))


def write_report(workdir, names: Sequence[str] | None = None, **kw) -> str:
    """`study_section` written as machines/report.md (bin/machines.py agreement); returns its
    path."""
    wd = workdir if isinstance(workdir, wdlib.Workdir) else wdlib.Workdir(os.fspath(workdir))
    section = study_section(wd, names, **kw)
    path = output_dir(wd, "report.md")
    if wdlib.is_writer():
        report.write_markdown(path, section["title"],
                              [("Machine vs network agreement", section["markdown"])],
                              section["figures"])
    return path
