"""The K-sweep study's stage bodies: each takes the run's `Context` (one `Workdir` for the whole
run) and returns its frozen result (diffmem.studies.k_sweep_results), keyed by int K."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math
import os
from typing import Callable, Sequence

import ml_collections
import numpy as np

from diffmem import builders, configlib, generate, report, stats, train
from diffmem.errors import InputError, MissingInputError
from diffmem.metrics import classify as classify_lib
from diffmem.metrics import memorization as gu_lib
from diffmem.studies import k_sweep_results as res
from diffmem.studies.pipeline import Cache
from diffmem.workdir import Workdir, sort_names

__all__ = ["CLASSES", "Context", "config_json", "with_changes", "sampler_of", "latest_steps",
           "stage_train", "train_present", "sample_sets", "stage_sample", "samples_present",
           "calibration_api", "fixed_thresholds", "bootstrap_fractions", "emm_on_grid",
           "stage_classify", "seed_b", "stage_reproducibility", "stage_disjoint", "rank_names",
           "remove_stale", "stage_jacobian", "ct_delta", "stage_critical_times",
           "stage_phase_times", "SECTION_MODULES", "section_stage", "section_defaults",
           "section_result"]

CLASSES = classify_lib.NAMES


@dataclasses.dataclass
class Context:
    """One run: the workdir (built once), its config and settings, where the study writes, the log
    and the stage cache (whose records hold the results of this run's and earlier runs' stages)."""
    wd: Workdir
    config: ml_collections.ConfigDict
    settings: object   # k_sweep.Settings
    out: str
    log: Callable[[str], None]
    progress: bool
    cache: Cache | None = None
    section_kw: dict = dataclasses.field(default_factory=dict)
    overwrite: bool = False   # replace the study's own stale sample sets and mechanism files

    def path(self, *parts) -> str:
        return os.path.join(self.out, *parts)

    @property
    def names(self) -> list[str]:
        return self.wd.names()

    def k_of(self, name: str) -> int:
        return int(self.wd.spec(name).k)

    @property
    def ks(self) -> list[int]:
        return [self.k_of(n) for n in self.names]

    @property
    def seeds(self) -> np.ndarray:
        return np.arange(self.settings.num_samples)

    def result(self, stage: str):
        return None if self.cache is None else self.cache.result(stage)


def config_json(config) -> dict:
    return json.loads(configlib.to_json(config))


def with_changes(config, **changes) -> ml_collections.ConfigDict:
    """A copy of config with top-level or dotted keys replaced (through JSON: types may change)."""
    d = config_json(config)
    for dotted, value in changes.items():
        node, *rest = dotted.split(".")
        target = d
        while rest:
            target, node, rest = target[node], rest[0], rest[1:]
        target[node] = value
    return configlib.from_json(json.dumps(d))


def sampler_of(config, settings) -> tuple[str | None, int | None]:
    """(sampler, num_steps) the study samples every set with; (None, None) = the config's own
    (`k_sweep.Settings`)."""
    name = settings.sampler
    if name == "auto":
        name = (
            "ddim"
            if (config.get("sample", None) or {}).get("sampler", None) == "ddpm_ancestral"
            else "config"
        )
    if name == "config":
        return None, None
    return name, settings.sample_steps


# ------------------------------------------------------------------------------------ train and
# sample
def latest_steps(wd: Workdir) -> dict[int, int | None]:
    from diffmem import checkpoint
    return {int(wd.spec(n).k): checkpoint.latest_step(wd.path, n) for n in wd.names()}


def stage_train(ctx: Context) -> res.TrainResult:
    train.train(ctx.config, ctx.wd.path, progress=ctx.progress)
    return res.TrainResult(steps=latest_steps(ctx.wd))


def train_present(ctx: Context, result: res.TrainResult) -> bool:
    return latest_steps(ctx.wd) == result.steps


def sample_sets(ctx: Context, wd: Workdir, kinds=("trained",), names=None) -> dict:
    """Sample `kinds` of wd's models (or `names`) from the study's seeds: {kind: {K: entry}}."""
    out = {}
    sampler, steps = sampler_of(ctx.config, ctx.settings)
    kw = dict(sampler=sampler, num_steps=steps)
    for kind in kinds:
        generate.sample_workdir(wd.path, ctx.seeds, names=names, model=kind, progress=ctx.progress,
                                overwrite=ctx.overwrite,
                                **(kw if kind == "trained" or kw["sampler"] else {}))
        for name in (names or wd.names()):
            data = wd.read_samples(name, kind)
            entry = dict(num=len(data["seeds"]), sampler=data["sampler"], step=data["step"])
            converged = data.get("info", {}).get("converged")
            if converged is not None:  # the KS sampler: samples stopped at max_iters
                entry["not_converged"] = int(np.sum(~np.asarray(converged, bool)))
            out.setdefault(kind, {})[int(wd.spec(name).k)] = entry
    return out


def stage_sample(ctx: Context) -> res.SampleResult:
    return res.SampleResult(sets=sample_sets(ctx, ctx.wd, ("trained", "optimal")))


def samples_present(ctx: Context, result: res.SampleResult) -> bool:
    by_k = {ctx.k_of(n): n for n in ctx.names}
    return all(k in by_k and ctx.wd.has_samples(by_k[k], kind)
               for kind, sets in result.sets.items() for k in sets)


# ----------------------------------------------------------------------------------------- classify
def calibration_api() -> bool:
    """Whether memorization.run takes thresholds="calibrated" (the CALIBRATION engineer's API)."""
    from diffmem.studies import memorization
    return "thresholds" in inspect.signature(memorization.run).parameters


def fixed_thresholds(shape, rms: float) -> float:
    """Fixed pixel-L2 threshold for images of `shape`: an RMS difference `rms` per pixel,
    rms * sqrt(pixels)."""
    return float(rms * math.sqrt(math.prod(shape)))


def bootstrap_fractions(labels: np.ndarray, num: int = 1000, level: float = 0.95,
                        seed: int = 0) -> dict:
    """Percentile bootstrap interval of each class fraction: {class: [lo, hi]}
    (`stats.bootstrap_fractions`, resampling the samples); NaN intervals for no samples."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return {c: [math.nan, math.nan] for c in CLASSES}
    ci = stats.bootstrap_fractions(labels, CLASSES, num=num, seed=seed, level=level)
    return {c: [float(lo), float(hi)] for c, (lo, hi) in ci.items()}

def emm_on_grid(ratios: dict, level: float = 0.9) -> dict:
    """EMM on the sweep's grid (no new training): the last K with ratio >= level (`find_emm` on
    known ratios), and the crossing interpolated linearly in log K between the bracket's two
    ratios."""
    known = {int(k): float(r) for k, r in ratios.items() if r is not None}
    if not known:
        return dict(k=None, bracket=[None, None], k_crossing=None, status="no ratios")

    def unknown(k):
        # never called: tolerance inf, every K known
        raise InputError(f"K = {k} is not in the sweep")

    found = gu_lib.find_emm(unknown, sorted(known), level=level, tolerance=math.inf, known=known)
    lo, hi = found["bracket"]
    crossing = None
    if lo is not None and hi is not None:
        r_lo, r_hi = known[lo], known[hi]
        frac = (r_lo - level) / (r_lo - r_hi) if r_lo != r_hi else 0.0
        crossing = float(math.exp(math.log(lo) + frac * (math.log(hi) - math.log(lo))))
    return dict(k=found["emm"], bracket=[lo, hi], k_crossing=crossing, status=found["status"])


def stage_classify(ctx: Context) -> res.ClassifyResult:
    from diffmem.studies import memorization
    wd, names = ctx.wd, ctx.names
    shape = wd.spec(names[0]).data.shape[1:]
    fixed = fixed_thresholds(shape, ctx.settings.fixed_rms)
    calibrated = calibration_api()
    log = (lambda m: ctx.log(f"  {m}")) if ctx.progress else None
    if calibrated:
        summary = memorization.run(wd.path, metric=ctx.settings.metric, thresholds="calibrated",
                                   log=log)
    else:  # before CALIBRATION lands: pixel L2 at the fixed thresholds
        summary = memorization.run(wd.path, metric="pixel", delta_m=fixed, delta_s=fixed, log=log)
    metric = summary["settings"]["metric"]
    out = {f: {} for f in ("thresholds", "fractions", "fractions_ci", "published", "optimal",
                           "ratio",
                           "ratio_optimal", "panels", "fixed_fractions", "fixed_fractions_ci")}
    for name, meta in summary["trained"].items():
        k = ctx.k_of(name)
        arrays = report.read_npz(wd.classify_paths(name)[0])
        out["fractions"][k] = meta["fractions"]
        out["fractions_ci"][k] = meta.get("fractions_ci") or bootstrap_fractions(arrays["labels"])
        th = meta.get("thresholds") or {key: meta["settings"][key] for key in ("delta_m",
                                                                               "delta_s")}
        out["thresholds"][k] = {key: th[key] for key in ("delta_m", "delta_s") if key in th}
        if meta.get("published"):
            out["published"][k] = meta["published"].get("fractions", meta["published"])
        out["ratio"][k] = meta["memorization_ratio"]
        # The fixed thresholds apply to pixel distances: d_m / d_s when the metric is pixel, else
        # the pixel
        # nearest-training / nearest-sample distances stored beside them.
        dm, ds = ((arrays["d_m"], arrays["d_s"]) if metric == "pixel"
                  else (arrays["train_dist"][:, 0], arrays["sample_dist"]))
        labels = classify_lib.classify(dm, ds, fixed, fixed)
        out["fixed_fractions"][k] = classify_lib.fractions(labels)
        out["fixed_fractions_ci"][k] = bootstrap_fractions(labels)
    for name, meta in summary["optimal"].items():
        out["optimal"][ctx.k_of(name)] = meta["fractions"]
        out["ratio_optimal"][ctx.k_of(name)] = meta["memorization_ratio"]
    for fig in summary.get("figures", []):
        base = os.path.basename(fig)
        if base.startswith("panels_") and "optimal" not in base:
            out["panels"][ctx.k_of(base[len("panels_"):-len(".png")])] = fig
    return res.ClassifyResult(
        metric=metric, units=summary.get("units", ""), calibrated=calibrated, fixed_delta=fixed,
        fixed_rms=ctx.settings.fixed_rms, emm=emm_on_grid(out["ratio"]),
        files=tuple(wd.relative(wd.classify_paths(n)[0]) for n in summary["trained"]), **out)


# ------------------------------------------------------------------------ reproducibility and
# disjoint
def seed_b(ctx: Context) -> int:
    seeds = configlib.sweep(ctx.config.seed)
    if len(seeds) != 1:
        raise InputError("The study trains one model per K; the config sweeps seeds "
                         f"{list(seeds)}: set one "
                         "seed.")
    return int(seeds[0]) + ctx.settings.seed_offset


def _named(fn, name):
    def f(images):
        return fn(images)
    f.__name__ = name
    return f


def stage_reproducibility(ctx: Context) -> res.ReproducibilityResult:
    from diffmem.metrics import reproducibility as rp_metrics
    from diffmem.studies import reproducibility
    b = seed_b(ctx)
    sub = ctx.wd.sub_workdir(f"seed{b}")
    ctx.log(f"  training the second seed ({b}) in {ctx.wd.relative(sub.path)}/")
    train.train(with_changes(ctx.config, seed=b), sub.path, progress=ctx.progress)
    sample_sets(ctx, sub)
    seeds = reproducibility.run(ctx.wd.path, sub.path,
                                features=_named(rp_metrics.pixel_features, "pixel_seeds"))
    opt = reproducibility.run(ctx.wd.path, "optimal",
                              features=_named(rp_metrics.pixel_features, "pixel_optimal"))
    rows = {}
    for name in sort_names(set(seeds) | set(opt)):
        a, o = seeds.get(name, {}), opt.get(name, {})
        rows[int((a or o)["k"])] = dict(
            rp_seeds=a.get("rp"), generalization_a=a.get("generalization_a"),
            generalization_b=a.get("generalization_b"), rp_optimal=o.get("rp"),
            generalization_optimal=o.get("generalization_b"), num_pairs=(a or o)["num_pairs"])
    return res.ReproducibilityResult(seed_b=b, threshold=0.6, features="pixel (mean removed)",
                                     rows=rows,
                                     sub_workdir=ctx.wd.relative(sub.path))


def stage_disjoint(ctx: Context) -> res.DisjointResult:
    from diffmem.data import subsets
    from diffmem.studies import disjoint
    pool_size = len(builders.load_pool(ctx.config))
    ks = {n: ctx.k_of(n) for n in ctx.names}
    ns = tuple(sorted({k for k in ks.values() if k <= pool_size // 2}))
    skipped = tuple(sorted(k for k in ks.values() if k > pool_size // 2))
    if not ns:
        return res.DisjointResult(pool_size=pool_size, rows={}, skipped_ks=skipped)
    seed = int(ctx.config.data.get("subset_seed", 0))
    # Side A is the study's own model when its K-subset is the first K of the recorded order, else
    # trained.
    same_first = all(np.array_equal(ctx.wd.spec(str(n)).indices,
                                    subsets.disjoint_set(pool_size, n, seed, "first"))
                     for n in ns if str(n) in ctx.names)
    sides = {}
    for label, which in (("S1", "first"), ("S2", "last")):
        if label == "S1" and same_first:
            sides[label] = ctx.wd
            continue
        config = disjoint.set_config(ctx.config, which, ns)
        sub = ctx.wd.sub_workdir(os.path.join("disjoint_sweep", label))
        ctx.log(f"  training the {which}-K models ({label}) in {ctx.wd.relative(sub.path)}/")
        train.train(config, sub.path, progress=ctx.progress)
        sample_sets(ctx, sub, names=[str(n) for n in ns])
        sides[label] = sub
    rows, files = {}, []
    for n in ns:
        name = str(n)
        a, b = sides["S1"].read_samples(name), sides["S2"].read_samples(name)
        common, ia, ib = np.intersect1d(a["seeds"], b["seeds"], return_indices=True)
        xa, xb = a["samples"][ia], b["samples"][ib]
        pair = disjoint.paired_corr(xa, xb)
        _, ca = disjoint.closest(xa, sides["S1"].spec(name).data)
        _, cb = disjoint.closest(xb, sides["S2"].spec(name).data)
        path = ctx.path("disjoint", f"{name}.npz")
        report.write_npz(path, seeds=common, s1_vs_s2=pair, s1_closest=ca, s2_closest=cb)
        files.append(ctx.wd.relative(path))
        rows[n] = dict(s1_vs_s2=float(pair.mean()),
                       s1_vs_s2_quantiles=np.quantile(pair, [0.05, 0.5, 0.95]).tolist(),
                       closest_own=float(np.concatenate([ca,
                                                         cb]).mean()), num_pairs=int(common.size),
                       file=ctx.wd.relative(path))
        recorded = [~np.asarray(d["info"]["converged"], bool)[i] for d, i in ((a, ia), (b, ib))
                    if "converged" in d.get("info", {})]
        if recorded:  # the KS sampler: paired samples (S1 and S2) stopped at max_iters
            rows[n]["not_converged"] = int(sum(np.sum(r) for r in recorded))
    return res.DisjointResult(pool_size=pool_size, rows=rows, skipped_ks=skipped,
                              files=tuple(files),
                              sides={k: ctx.wd.relative(v.path) for k, v in sides.items()})


# --------------------------------------------------------------------------------------- mechanisms
def rank_names(names: Sequence[str], ks: dict, wanted: Sequence[int] | None) -> list[str]:
    """The Jacobian stage's three models: `wanted` K values, else the smallest, a middle and the
    largest K."""
    if wanted:
        by_k = {k: n for n, k in ks.items()}
        bad = [k for k in wanted if int(k) not in by_k]
        if bad:
            raise InputError(f"rank_ks {bad} are not in the sweep; its K are {sorted(by_k)}.")
        return [by_k[int(k)] for k in wanted]
    names = sort_names(names)
    return list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]]))


def remove_stale(ctx: Context, folder: str, names: Sequence[str]) -> None:
    """With overwrite: delete the mechanism result files of `names` under `folder` (other settings'
    results make the mechanism functions stop, as they never overwrite silently)."""
    if not ctx.overwrite or not os.path.isdir(folder):
        return
    for f in os.listdir(folder):
        if f.endswith(".npz") and f[:-4].split("_")[0] in names:
            os.remove(os.path.join(folder, f))


def _finite(v) -> float | None:
    v = float(np.asarray(v))
    return v if math.isfinite(v) else None


def stage_jacobian(ctx: Context) -> res.JacobianResult:
    from diffmem.studies import mechanisms
    ks = {n: ctx.k_of(n) for n in ctx.names}
    names = rank_names(ctx.names, ks, ctx.settings.rank_ks)
    remove_stale(ctx, ctx.wd.study_output_dir("mechanisms", "jacobian"), names)
    found = mechanisms.rank_vs_snr(ctx.wd.path, names=names, states="trajectory",
                                   num_latents=ctx.settings.rank_latents, float64=True,
                                   log=ctx.log if ctx.progress else None)
    out = {}
    for name, r in found["models"].items():
        order = np.argsort(r["snr"])
        ro = np.asarray(r["rank_over_n"])[order]
        out[ks[name]] = dict(snr=np.asarray(r["snr"])[order].tolist(), median=np.median(ro,
                                                                                        1).tolist(),
                             q25=np.quantile(ro, 0.25, 1).tolist(), q75=np.quantile(ro, 0.75,
                                                                                    1).tolist(),
                             n=int(r["n"]), snr_speciation=_finite(r["snr_speciation"]),
                             snr_collapse=_finite(r["snr_collapse"]))
    return res.JacobianResult(models=out)


def ct_delta(ctx: Context) -> float:
    if ctx.settings.ct_delta is not None:
        return float(ctx.settings.ct_delta)
    cls = ctx.result("classify")
    if cls is not None and cls.metric == "pixel" and cls.thresholds:
        return float(np.median([t["delta_m"] for t in cls.thresholds.values()]))
    if cls is not None and cls.fixed_delta:
        return float(cls.fixed_delta)
    return fixed_thresholds(ctx.wd.spec(ctx.names[0]).data.shape[1:], ctx.settings.fixed_rms)


def stage_critical_times(ctx: Context) -> res.CriticalTimesResult:
    from diffmem.studies import mechanisms
    s = ctx.settings
    cls = ctx.result("classify")
    lpips = cls is not None and cls.metric == "lpips"
    # the classification's: Pham et al.'s LPIPS delta 0.1, else pixel
    metric = "lpips" if lpips else "l2"
    delta = (0.1 if s.ct_delta is None else float(s.ct_delta)) if lpips else ct_delta(ctx)
    for c in CLASSES:
        remove_stale(ctx, ctx.wd.study_output_dir("mechanisms", "critical_times", c), ctx.names)
        mechanisms.critical_times(ctx.wd.path, samples=c, metric=metric, delta=delta,
                                  trials=s.ct_trials,
                                  stop=s.ct_per_class, figures=False, progress=ctx.progress,
                                  log=None)
    found = mechanisms.gather_critical_times(ctx.wd.path)
    ks = set(ctx.ks)
    tc, radius = {}, {}
    for c in CLASSES:
        for k, (t, r) in found.get(c, {}).items():
            if k in ks:
                tc.setdefault(c, {})[int(k)] = np.median(t, axis=1).tolist()
                radius.setdefault(c, {})[int(k)] = np.median(r, axis=1).tolist()
    return res.CriticalTimesResult(metric=metric, delta=delta, trials=s.ct_trials,
                                   per_class=s.ct_per_class,
                                   tc=tc, radius=radius)


def stage_phase_times(ctx: Context) -> res.PhaseTimesResult:
    from diffmem.studies import mechanisms
    table = mechanisms.phase_table(ctx.wd.path, num_draws=ctx.settings.phase_draws)
    return res.PhaseTimesResult(table={ctx.k_of(n): table[n] for n in ctx.names if n in table})


# ------------------------------------------------------------------------------------ optional
# sections
SECTION_MODULES = {"machines": "diffmem.machines.agreement",
                   "training_time": "diffmem.studies.training_time"}


def section_stage(stage: str, attr: str = "study_section") -> Callable[[Context],
                                                                       res.SectionResult]:
    module = SECTION_MODULES[stage]

    def run(ctx: Context) -> res.SectionResult:
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise MissingInputError(f"{module}.{attr} is not available ({e}); leave this stage "
                                    "out.") from None
        kw = dict(section_defaults(ctx, module), **ctx.section_kw.get(module.rsplit(".", 1)[-1],
                                                                      {}))
        return section_result(ctx, fn(ctx.wd.path, ctx.names, **kw))
    run.__name__ = f"stage_{stage}"
    return run


def section_defaults(ctx: Context, module: str) -> dict:
    """The study's own settings passed to a section (its keyword arguments override them): the
    training-time section samples its snapshots like the study samples its models."""
    if module.endswith("training_time"):
        sampler, steps = sampler_of(ctx.config, ctx.settings)
        return dict(num_samples=ctx.settings.num_samples, sampler=sampler, num_steps=steps,
                    progress=ctx.progress, overwrite=ctx.overwrite)
    return {}


def section_result(ctx: Context, section: dict) -> res.SectionResult:
    """A section as report.json holds it: figure paths relative to the workdir."""
    if not isinstance(section, dict) or "title" not in section:
        raise InputError("A study section must be dict(title=str, markdown=str, figures=[paths], "
                         "data=dict).")
    figs = tuple(ctx.wd.relative(p)
                 if os.path.isabs(p) or not os.path.exists(ctx.wd.path_of(p)) else p
                 for p in section.get("figures", []))
    return res.SectionResult(title=str(section["title"]), markdown=str(section.get("markdown", "")),
                             figures=figs,
                             data=json.loads(json.dumps(section.get("data", {}),
                                                        default=report._default)))
