"""The one-command K-sweep study: from data to a report of memorization vs training-set size K.

    report = run(config, "runs/study")                         # bin/study.py: every default stage
    report = run(config, "runs/study", quick=True)             # the --quick preset (fewer K, steps, samples)
    report = run(config, "runs/study", stages=("train", "sample", "classify", "report"))

Stages (`STAGES`, run in this order; each is resumable and skipped when its record in
<workdir>/study/stages/<stage>.json holds the same settings and the same upstream results, so a rerun does
only what is missing; a stage whose inputs changed reruns, and everything downstream of it):

    train            diffmem.train.train: the config's K sweep in one compiled loop (or reuse its checkpoints)
    sample           diffmem.generate.sample_workdir: trained models and the empirical optimal denoiser, same seeds
    classify         diffmem.studies.memorization.run: Pham et al.'s classes (held-out calibrated thresholds
                     when CALIBRATION's API is there, else pixel L2 at fixed thresholds), Gu et al.'s ratio,
                     EMM (the K where the ratio crosses 90%), and the classes at fixed thresholds beside
    reproducibility  a second training seed in the sub-workdir seed<s>/ (Workdir.sub_workdir), sampled from the
                     same seeds; Zhang et al.'s RP between the two seeds and model vs optimal denoiser, and
                     generalization scores (diffmem.studies.reproducibility, pixel features)
    disjoint         Kadkhodaie et al.'s test with the study's own network: a model per K on the disjoint
                     K-subset at the other end of the same recorded order (sub-workdir disjoint/), sampled
                     from the same seeds; mean-removed cosine similarity of same-seed pairs, and of each sample
                     to its closest own training image (diffmem.studies.disjoint helpers); K <= half the pool
    jacobian         Zhang et al.'s rank(J)/n vs SNR for three K (diffmem.studies.mechanisms.rank_vs_snr)
    critical_times   Pham et al.'s critical times of a few samples of every class (mechanisms.critical_times)
    phase_times      data-only speciation and collapse times per K (Biroli et al.; mechanisms.phase_table)
    machines         optional (off by default): diffmem.machines.agreement.study_section
    training_time    optional (off by default): diffmem.studies.training_time.study_section
    report           report.json, report.md and a self-contained report.html (figures inline, base64 PNG)

Outputs in <workdir>/study/ (`Workdir.study_output_dir("study")`): stages/<stage>.json, disjoint/<K>.npz,
figures/*.png, report.json, report.md, report.html, and xla_cache/ (XLA's persistent compilation cache while
the study runs, `compilation_cache`).

report.json keys (what notebooks/k_sweep.ipynb reads; K-indexed dicts use the model name, str(K)):
    version                 1
    workdir                 the workdir's base name
    config                  {"source", "ks" [int], "steps", "arch", "precond", "seed"}
    settings                the study settings (`Settings` as a dict; "quick" says whether the preset ran)
    sampling                {"sampler", "steps", "optimal_sampler"} the sample sets were drawn
                            with, and "not_converged": {kind: {name: count}} where sets record
                            convergence (the KS sampler: samples stopped at sample.max_iters)
    stages                  {stage: {"status": "computed" | "skipped" (in the run that wrote the report) |
                             "earlier run" (not asked for in that run, its record is an earlier run's) | "off",
                             "seconds" (of the run that computed it)}}
    ks                      [int] the sweep's K, ascending; names: [str] the same as model names
    classes                 {"metric", "units", "calibrated" (bool: thresholds from held-out images),
                             "thresholds": {name: {"delta_m", "delta_s"}},
                             "fractions": {name: {class: f}}, "fractions_ci": {name: {class: [lo, hi]}},
                             "fixed": {"delta_m", "delta_s", "units", "fractions": {name: {class: f}},
                                       "fractions_ci": {...}},
                             "published": {name: {class: f}} or {} (LPIPS 0.03 / 0.02; LPIPS runs only),
                             "optimal": {name: {class: f}}}     class in ("memorized", "spurious", "generalized")
    gu                      {"ratio": {name: r or None}, "ratio_optimal": {...}, "level": 0.9,
                             "emm": {"k": largest grid K with ratio >= 0.9 or None, "bracket": [lo, hi],
                                     "k_crossing": log-K interpolated crossing or None, "status"}}
    reproducibility         {"seed_b", "threshold", "features", "rows": {name: {"k", "rp_seeds", "generalization_a",
                             "generalization_b", "rp_optimal", "generalization_optimal", "num_pairs"}}}
    disjoint                {"pool_size", "rows": {name: {"k", "s1_vs_s2" (mean), "s1_vs_s2_quantiles" [5%, 50%,
                             95%], "closest_own" (mean over both sides), "num_pairs", "file",
                             "not_converged" (KS sampler only: paired samples stopped at max_iters)}},
                             "skipped_ks"}
    jacobian                {name: {"k", "snr" [L], "median" [L], "q25" [L], "q75" [L], "n",
                             "snr_speciation", "snr_collapse"}}
    critical_times          {"metric", "delta", "trials", "per_class", "tc": {class: {name: [per-sample median
                             Tc (DDPM step)]}}, "radius": {class: {name: [...]}}}
    phase_times             {name: {"lambda", "t_s", "t_s_index", "t_c", "t_c_index", "t_c_gaussian", ...}}
    panels                  {name: path (relative to the workdir) of the classification panel png}
    sections                {"machines": {"title", "markdown", "figures", "data"}, "training_time": {...}}
                            (only the optional stages that ran)
    figures                 {figure name: path relative to the workdir}
    key                     hash of the stage records the report was written from (same key: report skipped)
A stage that did not run leaves its key out (or empty).
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import html
import inspect
import json
import math
import os
import time
from typing import Callable, Sequence

import ml_collections
import numpy as np

from diffmem import builders, configlib, generate, report, train, viz
from diffmem.errors import InputError, MissingInputError
from diffmem.metrics import classify as classify_lib
from diffmem.metrics import memorization as gu_lib
from diffmem.workdir import Workdir, sort_names

import matplotlib.pyplot as plt  # noqa: E402  (after viz, which selects the Agg backend)

STAGES = ("train", "sample", "classify", "reproducibility", "disjoint", "jacobian", "critical_times",
          "phase_times", "machines", "training_time", "report")
OPTIONAL = ("machines", "training_time")
DEFAULT_STAGES = tuple(s for s in STAGES if s not in OPTIONAL)
# What each stage reads: it reruns when one of these was recomputed after it.
DEPENDS = {"train": (), "sample": ("train",), "classify": ("sample",), "reproducibility": ("sample",),
           "disjoint": ("sample",), "jacobian": ("train",), "critical_times": ("classify",),
           "phase_times": ("train",), "machines": ("sample",), "training_time": ("train",)}
CLASSES = classify_lib.NAMES
QUICK_KS = (8, 128)
QUICK_STEPS = 300
REPORT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the study adds to the config (all recorded in report.json).

    num_samples: seeds 0..num_samples-1 of every sampled model; sampler / sample_steps: the sampler of every
    set: "auto" = DDIM on `sample_steps` DDPM steps where the config samples with DDPM's 1000 ancestral steps
    (Pham et al.'s recipe; 10x cheaper), else the config's own sampler; "config" = always the config's
    sample.sampler and sample.optimal_sampler with their steps; any name of `sampling.SAMPLERS`; fixed_rms: the fixed
    pixel thresholds delta_m = delta_s = fixed_rms * sqrt(pixels) (an RMS pixel difference in [-1, 1] units)
    shown beside the calibrated classes; seed_offset: the second training seed is config.seed + seed_offset;
    rank_ks: the three K of the Jacobian stage (None: smallest, middle, largest); rank_latents: EDM
    trajectories per K; ct_per_class, ct_trials: samples per class and trials of the critical-time scan;
    ct_delta: its recovery distance in pixel L2 (None: the classification's median delta_m); phase_draws:
    Monte-Carlo draws of the collapse time; quick: the --quick preset ran (config K and steps replaced);
    steps: training steps of every sweep the study trains (None: the study's per-dataset default in
    `STUDY_STEPS`, else the config's; 0: the config's own): the study trains three sweeps -- the models, a
    second seed and the disjoint halves -- so on a CPU it trains each for less than a lone run would. metric:
    the classification's distance ("auto": LPIPS when its weights load, else pixel L2; "pixel" skips LPIPS).
    """
    num_samples: int = 256
    sampler: str | None = "auto"
    sample_steps: int | None = 50
    steps: int | None = None
    fixed_rms: float = 0.125
    seed_offset: int = 1
    rank_ks: tuple | None = None
    rank_latents: int = 4
    ct_per_class: int = 8
    ct_trials: int = 5
    ct_delta: float | None = None
    phase_draws: int = 2000
    quick: bool = False
    metric: str = "auto"


STUDY_STEPS = {"digits": 1000}   # 17 UNets (3 sweeps of K = 2 ... 1797) in <= 30 min on 2 CPU cores
QUICK = dict(num_samples=64, sample_steps=25, rank_latents=2, ct_per_class=2, ct_trials=3, phase_draws=500,
             quick=True)


def quick_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The --quick preset's config: K in `QUICK_KS` and at most `QUICK_STEPS` training steps."""
    return with_steps(_with(config, **{"data.k": list(QUICK_KS)}), min(int(config.steps) or QUICK_STEPS, QUICK_STEPS))


def with_steps(config: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
    """config training for `steps` steps (a multiple of steps_per_call; log / checkpoint intervals capped)."""
    every = min(int(config.steps_per_call), max(1, int(steps)))
    steps = max(1, int(steps)) // every * every
    changes = {"steps": steps, "steps_per_call": every}
    for key in ("log_every", "ckpt_every"):   # multiples of steps_per_call, at most the length
        if int(config[key]) > steps or int(config[key]) % every:
            changes[key] = steps
    return _with(config, **changes)


# ---------------------------------------------------------------------------------------------- plumbing
@dataclasses.dataclass
class Context:
    """One run: the workdir, its config and settings, where the study writes, and the log."""
    wd: Workdir
    config: ml_collections.ConfigDict
    settings: Settings
    out: str
    log: Callable[[str], None]
    progress: bool
    records: dict = dataclasses.field(default_factory=dict)   # stage -> its record (this run or earlier)
    section_kw: dict = dataclasses.field(default_factory=dict)
    overwrite: bool = False   # replace the study's own stale sample sets and mechanism files

    def path(self, *parts) -> str:
        return os.path.join(self.out, *parts)

    @property
    def names(self) -> list[str]:
        return self.wd.names()

    @property
    def seeds(self) -> np.ndarray:
        return np.arange(self.settings.num_samples)


def study_dir(wd: Workdir) -> str:
    """<workdir>/study (`Workdir.study_output_dir("study")`)."""
    return wd.study_output_dir("study")


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _record_path(ctx: Context, stage: str) -> str:
    return ctx.path("stages", f"{stage}.json")


def _read_record(ctx: Context, stage: str) -> dict | None:
    path = _record_path(ctx, stage)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            rec = json.load(f)
        return rec if isinstance(rec, dict) and "key" in rec else None
    except ValueError:
        return None  # unreadable: the stage reruns


def _stage_key(ctx: Context, stage: str, settings: dict) -> str:
    """The stage's settings and the tokens of the records it depends on (a recomputed input changes its token)."""
    deps = {d: (ctx.records.get(d) or {}).get("token") for d in DEPENDS.get(stage, ())}
    return _hash(dict(stage=stage, settings=settings, deps=deps))


def _files_present(ctx: Context, rec: dict) -> bool:
    return all(os.path.exists(ctx.wd.path_of(f)) for f in rec.get("files", []))


def run_stage(ctx: Context, stage: str, settings: dict, fn: Callable[[Context], dict],
              present: Callable[[Context, dict], bool] | None = None) -> tuple[dict, str]:
    """Run one stage unless its record says it is done with these settings and inputs.

    fn returns the stage's data dict (JSON-able; "files": paths relative to the workdir it wrote). Returns
    (record, status) with status "skipped" or "computed"."""
    key = _stage_key(ctx, stage, settings)
    old = _read_record(ctx, stage)
    if old is not None and old["key"] == key and _files_present(ctx, old) and (present is None or present(ctx, old)):
        ctx.records[stage] = old
        return old, "skipped"
    t0 = time.perf_counter()
    data = fn(ctx)
    seconds = time.perf_counter() - t0
    rec = dict(stage=stage, key=key, settings=settings, data=data, files=list(data.pop("files", [])),
               seconds=round(seconds, 2), finished_at=time.time())
    rec["token"] = _hash([key, rec["finished_at"]])
    report.write_json(_record_path(ctx, stage), rec)
    ctx.records[stage] = rec
    return rec, "computed"


def _config_json(config) -> dict:
    return json.loads(configlib.to_json(config))


def _with(config, **changes) -> ml_collections.ConfigDict:
    """A copy of config with top-level or dotted keys replaced (through JSON: types may change)."""
    d = _config_json(config)
    for dotted, value in changes.items():
        node, *rest = dotted.split(".")
        target = d
        while rest:
            target, node, rest = target[node], rest[0], rest[1:]
        target[node] = value
    return configlib.from_json(json.dumps(d))


# ------------------------------------------------------------------------------------------------ stages
def _stage_train(ctx: Context) -> dict:
    train.train(ctx.config, ctx.wd.path, progress=ctx.progress)
    return dict(models=_latest_steps(ctx.wd))


def _latest_steps(wd: Workdir) -> dict:
    from diffmem import checkpoint
    return {n: checkpoint.latest_step(wd.path, n) for n in wd.names()}


def _train_present(ctx: Context, rec: dict) -> bool:
    return _latest_steps(ctx.wd) == rec["data"]["models"]


def sampler_of(config, settings: Settings) -> tuple[str | None, int | None]:
    """(sampler, num_steps) the study samples every set with; (None, None) = the config's own (`Settings`)."""
    name = settings.sampler
    if name == "auto":
        name = "ddim" if (config.get("sample", None) or {}).get("sampler", None) == "ddpm" else "config"
    if name == "config":
        return None, None
    return name, settings.sample_steps


def _sample_kw(ctx: Context) -> dict:
    sampler, steps = sampler_of(ctx.config, ctx.settings)
    return dict(sampler=sampler, num_steps=steps)


def _sample(ctx: Context, wd: Workdir, kinds=("trained",), names=None) -> dict:
    out = {}
    for kind in kinds:
        kw = _sample_kw(ctx)
        generate.sample_workdir(wd.path, ctx.seeds, names=names, model=kind, progress=ctx.progress,
                                overwrite=ctx.overwrite, **(kw if kind == "trained" or kw["sampler"] else {}))
        for name in (names or wd.names()):
            data = wd.read_samples(name, kind)
            entry = dict(num=len(data["seeds"]), sampler=data["sampler"], step=data["step"])
            converged = data.get("info", {}).get("converged")
            if converged is not None:  # the KS sampler: samples stopped at max_iters
                entry["not_converged"] = int(np.sum(~np.asarray(converged, bool)))
            out.setdefault(kind, {})[name] = entry
    return out


def _stage_sample(ctx: Context) -> dict:
    return dict(sets=_sample(ctx, ctx.wd, ("trained", "optimal")))


def _samples_present(ctx: Context, rec: dict) -> bool:
    return all(ctx.wd.has_samples(n, kind) for kind, sets in rec["data"]["sets"].items() for n in sets)


def _calibration_api() -> bool:
    """Whether memorization.run takes thresholds="calibrated" (the CALIBRATION engineer's API)."""
    from diffmem.studies import memorization
    return "thresholds" in inspect.signature(memorization.run).parameters


def fixed_thresholds(shape, rms: float) -> float:
    """Fixed pixel-L2 threshold for images of `shape`: an RMS difference `rms` per pixel, rms * sqrt(pixels)."""
    return float(rms * math.sqrt(math.prod(shape)))


def bootstrap_fractions(labels: np.ndarray, num: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap interval of each class fraction: {class: [lo, hi]} (resampling the samples)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return {c: [math.nan, math.nan] for c in CLASSES}
    idx = np.random.default_rng(seed).integers(0, len(labels), (num, len(labels)))
    boot = labels[idx]
    q = ((1 - level) / 2, (1 + level) / 2)
    return {c: [float(v) for v in np.quantile(np.mean(boot == i, axis=1), q)] for i, c in enumerate(CLASSES)}


def emm_on_grid(ratios: dict, level: float = 0.9) -> dict:
    """EMM on the sweep's grid (no new training): the last K with ratio >= level (`find_emm` on known ratios),
    and the crossing interpolated linearly in log K between the bracket's two ratios."""
    known = {int(k): float(r) for k, r in ratios.items() if r is not None}
    if not known:
        return dict(k=None, bracket=[None, None], k_crossing=None, status="no ratios")

    def unknown(k):
        raise InputError(f"K = {k} is not in the sweep")  # never called: tolerance inf, every K known

    res = gu_lib.find_emm(unknown, sorted(known), level=level, tolerance=math.inf, known=known)
    lo, hi = res["bracket"]
    crossing = None
    if lo is not None and hi is not None:
        r_lo, r_hi = known[lo], known[hi]
        frac = (r_lo - level) / (r_lo - r_hi) if r_lo != r_hi else 0.0
        crossing = float(math.exp(math.log(lo) + frac * (math.log(hi) - math.log(lo))))
    return dict(k=res["emm"], bracket=[lo, hi], k_crossing=crossing, status=res["status"])


def _stage_classify(ctx: Context) -> dict:
    from diffmem.studies import memorization
    wd, names = ctx.wd, ctx.names
    shape = wd.spec(names[0]).data.shape[1:]
    fixed = fixed_thresholds(shape, ctx.settings.fixed_rms)
    calibrated = _calibration_api()
    log = (lambda m: ctx.log(f"  {m}")) if ctx.progress else None
    if calibrated:
        summary = memorization.run(wd.path, metric=ctx.settings.metric, thresholds="calibrated", log=log)
    else:  # before CALIBRATION lands: pixel L2 at the fixed thresholds
        summary = memorization.run(wd.path, metric="pixel", delta_m=fixed, delta_s=fixed, log=log)
    metric = summary["settings"]["metric"]
    out = dict(metric=metric, units=summary.get("units", ""), calibrated=calibrated, thresholds={}, fractions={},
               fractions_ci={}, published={}, optimal={}, ratio={}, ratio_optimal={}, panels={},
               fixed=dict(delta_m=fixed, delta_s=fixed, units="pixel L2", rms=ctx.settings.fixed_rms,
                          fractions={}, fractions_ci={}))
    for name, meta in summary["trained"].items():
        arrays = report.read_npz(wd.classify_paths(name)[0])
        out["fractions"][name] = meta["fractions"]
        out["fractions_ci"][name] = meta.get("fractions_ci") or bootstrap_fractions(arrays["labels"])
        th = meta.get("thresholds") or {k: meta["settings"][k] for k in ("delta_m", "delta_s")}
        out["thresholds"][name] = {k: th[k] for k in ("delta_m", "delta_s") if k in th}
        if meta.get("published"):
            out["published"][name] = meta["published"].get("fractions", meta["published"])
        out["ratio"][name] = meta["memorization_ratio"]
        # The fixed thresholds apply to pixel distances: d_m / d_s when the metric is pixel, else the pixel
        # nearest-training / nearest-sample distances stored beside them.
        dm, ds = ((arrays["d_m"], arrays["d_s"]) if metric == "pixel"
                  else (arrays["train_dist"][:, 0], arrays["sample_dist"]))
        labels = classify_lib.classify(dm, ds, fixed, fixed)
        out["fixed"]["fractions"][name] = classify_lib.fractions(labels)
        out["fixed"]["fractions_ci"][name] = bootstrap_fractions(labels)
    for name, meta in summary["optimal"].items():
        out["optimal"][name] = meta["fractions"]
        out["ratio_optimal"][name] = meta["memorization_ratio"]
    for fig in summary.get("figures", []):
        base = os.path.basename(fig)
        if base.startswith("panels_") and "optimal" not in base:
            out["panels"][base[len("panels_"):-len(".png")]] = fig
    out["emm"] = emm_on_grid({wd.spec(n).k: r for n, r in out["ratio"].items()})
    out["files"] = [wd.relative(wd.classify_paths(n)[0]) for n in summary["trained"]]
    return out


def _seed_b(ctx: Context) -> int:
    seeds = configlib.sweep(ctx.config.seed)
    if len(seeds) != 1:
        raise InputError(f"The study trains one model per K; the config sweeps seeds {list(seeds)}: set one seed.")
    return int(seeds[0]) + ctx.settings.seed_offset


def _named(fn, name):
    def f(images):
        return fn(images)
    f.__name__ = name
    return f


def _stage_reproducibility(ctx: Context) -> dict:
    from diffmem.metrics import reproducibility as rp_metrics
    from diffmem.studies import reproducibility
    seed_b = _seed_b(ctx)
    sub = ctx.wd.sub_workdir(f"seed{seed_b}")
    config_b = _with(ctx.config, seed=seed_b)
    ctx.log(f"  training the second seed ({seed_b}) in {ctx.wd.relative(sub.path)}/")
    train.train(config_b, sub.path, progress=ctx.progress)
    _sample(ctx, sub)
    seeds = reproducibility.run(ctx.wd.path, sub.path, features=_named(rp_metrics.pixel_features, "pixel_seeds"))
    opt = reproducibility.run(ctx.wd.path, "optimal", features=_named(rp_metrics.pixel_features, "pixel_optimal"))
    rows = {}
    for name in sort_names(set(seeds) | set(opt)):
        a, b = seeds.get(name, {}), opt.get(name, {})
        rows[name] = dict(k=(a or b)["k"], rp_seeds=a.get("rp"), generalization_a=a.get("generalization_a"),
                          generalization_b=a.get("generalization_b"), rp_optimal=b.get("rp"),
                          generalization_optimal=b.get("generalization_b"), num_pairs=(a or b)["num_pairs"])
    return dict(seed_b=seed_b, threshold=0.6, features="pixel (mean removed)", rows=rows,
                sub_workdir=ctx.wd.relative(sub.path))


def _stage_disjoint(ctx: Context) -> dict:
    from diffmem.data import subsets
    from diffmem.studies import disjoint
    pool_size = len(builders.load_pool(ctx.config))
    ks = {n: ctx.wd.spec(n).k for n in ctx.names}
    ns = tuple(sorted({k for k in ks.values() if k <= pool_size // 2}))
    skipped = sorted(k for k in ks.values() if k > pool_size // 2)
    if not ns:
        return dict(pool_size=pool_size, rows={}, skipped_ks=skipped)
    seed = int(ctx.config.data.get("subset_seed", 0))
    # Side A is the study's own model when its K-subset is the first K of the recorded order, else trained.
    same_first = all(np.array_equal(ctx.wd.spec(str(n)).indices, subsets.disjoint_set(pool_size, n, seed, "first"))
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
        _sample(ctx, sub, names=[str(n) for n in ns])
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
        rows[name] = dict(k=n, s1_vs_s2=float(pair.mean()), s1_vs_s2_quantiles=np.quantile(pair, [0.05, 0.5, 0.95]).tolist(),
                          closest_own=float(np.concatenate([ca, cb]).mean()), num_pairs=int(common.size),
                          file=ctx.wd.relative(path))
        recorded = [~np.asarray(d["info"]["converged"], bool)[i] for d, i in ((a, ia), (b, ib))
                    if "converged" in d.get("info", {})]
        if recorded:  # the KS sampler: paired samples (S1 and S2) stopped at max_iters
            rows[name]["not_converged"] = int(sum(np.sum(r) for r in recorded))
    return dict(pool_size=pool_size, rows=rows, skipped_ks=skipped, files=files,
                sides={k: ctx.wd.relative(v.path) for k, v in sides.items()})


def rank_names(names: Sequence[str], ks: dict, wanted: Sequence[int] | None) -> list[str]:
    """The Jacobian stage's three models: `wanted` K values, else the smallest, a middle and the largest K."""
    if wanted:
        by_k = {k: n for n, k in ks.items()}
        bad = [k for k in wanted if int(k) not in by_k]
        if bad:
            raise InputError(f"rank_ks {bad} are not in the sweep; its K are {sorted(by_k)}.")
        return [by_k[int(k)] for k in wanted]
    names = sort_names(names)
    return list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]]))


def _stage_jacobian(ctx: Context) -> dict:
    from diffmem.studies import mechanisms
    ks = {n: ctx.wd.spec(n).k for n in ctx.names}
    names = rank_names(ctx.names, ks, ctx.settings.rank_ks)
    _remove_stale(ctx, ctx.wd.study_output_dir("mechanisms", "jacobian"), names)
    res = mechanisms.rank_vs_snr(ctx.wd.path, names=names, states="trajectory", num_latents=ctx.settings.rank_latents,
                                 float64=True, log=ctx.log if ctx.progress else None)
    out = {}
    for name, r in res["models"].items():
        order = np.argsort(r["snr"])
        ro = np.asarray(r["rank_over_n"])[order]
        out[name] = dict(k=ks[name], snr=np.asarray(r["snr"])[order].tolist(), median=np.median(ro, 1).tolist(),
                         q25=np.quantile(ro, 0.25, 1).tolist(), q75=np.quantile(ro, 0.75, 1).tolist(), n=int(r["n"]),
                         snr_speciation=_finite(r["snr_speciation"]), snr_collapse=_finite(r["snr_collapse"]))
    return dict(models=out)


def _finite(v) -> float | None:
    v = float(np.asarray(v))
    return v if math.isfinite(v) else None


def _ct_delta(ctx: Context) -> float:
    if ctx.settings.ct_delta is not None:
        return float(ctx.settings.ct_delta)
    cls = (ctx.records.get("classify") or {}).get("data") or {}
    if cls.get("metric") == "pixel" and cls.get("thresholds"):
        return float(np.median([t["delta_m"] for t in cls["thresholds"].values()]))
    return float(cls.get("fixed", {}).get("delta_m") or fixed_thresholds(ctx.wd.spec(ctx.names[0]).data.shape[1:],
                                                                          ctx.settings.fixed_rms))


def _stage_critical_times(ctx: Context) -> dict:
    from diffmem.studies import mechanisms
    s = ctx.settings
    lpips = ((ctx.records.get("classify") or {}).get("data") or {}).get("metric") == "lpips"
    metric = "lpips" if lpips else "l2"   # the classification's metric: Pham et al.'s LPIPS delta 0.1, else pixel
    delta = (0.1 if s.ct_delta is None else float(s.ct_delta)) if lpips else _ct_delta(ctx)
    tc, radius = {}, {}
    for cls in CLASSES:
        _remove_stale(ctx, ctx.wd.study_output_dir("mechanisms", "critical_times", cls), ctx.names)
        mechanisms.critical_times(ctx.wd.path, samples=cls, metric=metric, delta=delta, trials=s.ct_trials,
                                  stop=s.ct_per_class, figures=False, progress=ctx.progress, log=None)
    found = mechanisms.gather_critical_times(ctx.wd.path)
    by_k = {ctx.wd.spec(n).k: n for n in ctx.names}
    for cls in CLASSES:
        for k, (t, r) in found.get(cls, {}).items():
            if k in by_k:
                tc.setdefault(cls, {})[by_k[k]] = np.median(t, axis=1).tolist()
                radius.setdefault(cls, {})[by_k[k]] = np.median(r, axis=1).tolist()
    return dict(metric=metric, delta=delta, trials=s.ct_trials, per_class=s.ct_per_class, tc=tc, radius=radius)


def _stage_phase_times(ctx: Context) -> dict:
    from diffmem.studies import mechanisms
    table = mechanisms.phase_table(ctx.wd.path, num_draws=ctx.settings.phase_draws)
    return dict(table={n: table[n] for n in ctx.names if n in table})


def _section_stage(module: str, attr: str = "study_section") -> Callable[[Context], dict]:
    def stage(ctx: Context) -> dict:
        import importlib
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise MissingInputError(f"{module}.{attr} is not available ({e}); leave this stage out.") from None
        kw = dict(_section_defaults(ctx, module), **ctx.section_kw.get(module.rsplit(".", 1)[-1], {}))
        section = fn(ctx.wd.path, ctx.names, **kw)
        return dict(section=_section_json(ctx, section))
    return stage


def _section_defaults(ctx: Context, module: str) -> dict:
    """The study's own settings passed to a section (its keyword arguments override them): the training-time
    section samples its snapshots like the study samples its models."""
    if module.endswith("training_time"):
        sampler, steps = sampler_of(ctx.config, ctx.settings)
        return dict(num_samples=ctx.settings.num_samples, sampler=sampler, num_steps=steps, progress=ctx.progress,
                    overwrite=ctx.overwrite)
    return {}


def _section_json(ctx: Context, section: dict) -> dict:
    """A section as report.json holds it: figure paths relative to the workdir."""
    if not isinstance(section, dict) or "title" not in section:
        raise InputError("A study section must be dict(title=str, markdown=str, figures=[paths], data=dict).")
    figs = [ctx.wd.relative(p) if os.path.isabs(p) or not os.path.exists(ctx.wd.path_of(p)) else p
            for p in section.get("figures", [])]
    return dict(title=str(section["title"]), markdown=str(section.get("markdown", "")), figures=figs,
                data=json.loads(json.dumps(section.get("data", {}), default=report._default)))


_NOT_TRAINING = ("sample", "study", "log_every", "keep_checkpoints", "monitor")  # config keys training ignores


def _remove_stale(ctx: Context, folder: str, names: Sequence[str]) -> None:
    """With overwrite: delete the mechanism result files of `names` under `folder` (other settings' results
    make the mechanism functions stop, as they never overwrite silently)."""
    if not ctx.overwrite or not os.path.isdir(folder):
        return
    for f in os.listdir(folder):
        if f.endswith(".npz") and f[:-4].split("_")[0] in names:
            os.remove(os.path.join(folder, f))


SECTION_MODULES = {"machines": "diffmem.machines.agreement", "training_time": "diffmem.studies.training_time"}
STAGE_FUNCTIONS = {
    "train": (_stage_train, _train_present),
    "sample": (_stage_sample, _samples_present),
    "classify": (_stage_classify, None),
    "reproducibility": (_stage_reproducibility, None),
    "disjoint": (_stage_disjoint, None),
    "jacobian": (_stage_jacobian, None),
    "critical_times": (_stage_critical_times, None),
    "phase_times": (_stage_phase_times, None),
    "machines": (_section_stage(SECTION_MODULES["machines"]), None),
    "training_time": (_section_stage(SECTION_MODULES["training_time"]), None),
}


def _stage_settings(ctx: Context, stage: str) -> dict:
    s = dataclasses.asdict(ctx.settings)
    sampler, steps = sampler_of(ctx.config, ctx.settings)
    sample = dict(num_samples=s["num_samples"], sampler=sampler, sample_steps=steps)
    return {
        "train": dict(config={k: v for k, v in _config_json(ctx.config).items() if k not in _NOT_TRAINING}),
        "sample": sample,
        "classify": dict(fixed_rms=s["fixed_rms"], calibrated=_calibration_api(), metric=s["metric"]),
        "reproducibility": dict(sample, seed_offset=s["seed_offset"]),
        "disjoint": sample,
        "jacobian": dict(rank_ks=s["rank_ks"], rank_latents=s["rank_latents"]),
        "critical_times": dict(ct_per_class=s["ct_per_class"], ct_trials=s["ct_trials"], ct_delta=s["ct_delta"]),
        "phase_times": dict(phase_draws=s["phase_draws"]),
        "machines": dict(kw=ctx.section_kw.get("agreement", {})),
        "training_time": dict(kw=ctx.section_kw.get("training_time", {}), sample=sample),
    }[stage]


# ------------------------------------------------------------------------------------------------- run
def check_stages(stages: Sequence[str] | None) -> tuple[str, ...]:
    if stages is None:
        return DEFAULT_STAGES
    stages = tuple(stages)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise InputError(f"Unknown stage(s) {bad}; valid stages: {list(STAGES)} (default: all but {list(OPTIONAL)}).")
    return tuple(s for s in STAGES if s in stages)  # always in pipeline order


def run(config: ml_collections.ConfigDict, workdir: str, *, stages: Sequence[str] | None = None,
        quick: bool = False, settings: Settings | None = None, section_kw: dict | None = None,
        overwrite: bool = False, progress: bool = True, log: Callable[[str], None] | None = print,
        **overrides) -> dict:
    """Run the study's stages (module docstring) on `config` in `workdir`; returns the report dict
    (report.json) with "statuses": {stage: "computed" | "skipped" | "off"} of this run added.

    stages: names of `STAGES` (default `DEFAULT_STAGES`; "machines" and "training_time" are opt-in); the
    "report" stage writes report.json/md/html from every stage record there is. quick: the --quick preset
    (`quick_config` and `QUICK` settings). settings / **overrides: `Settings` fields. section_kw: keyword
    arguments of the optional sections' study_section, keyed "agreement" / "training_time". overwrite: a stage
    rerun after its inputs changed (e.g. more training steps) replaces the study's sample sets and mechanism
    files of other settings instead of stopping with an error (finished work is never replaced silently).
    """
    stages = check_stages(stages)
    base = dataclasses.asdict(settings or Settings())
    if quick:
        base.update(QUICK)
    bad = [k for k in overrides if k not in base]
    if bad:
        raise InputError(f"Unknown study setting(s) {bad}; valid: {sorted(base)}.")
    base.update({k: v for k, v in overrides.items() if v is not None})
    if base["rank_ks"] is not None:
        base["rank_ks"] = tuple(int(k) for k in base["rank_ks"])
    if base["num_samples"] < 2:
        raise InputError(f"num_samples = {base['num_samples']}: need >= 2 (nearest *other* sample).")
    config = study_config(config, stages, quick=quick, steps=base["steps"])
    base["steps"] = int(config.steps)
    settings = Settings(**base)
    if base["sampler"] not in ("auto", "config"):
        from diffmem import sampling
        sampling.get_sampler(base["sampler"])   # an unknown name stops here, naming the valid ones
    builders.load_pool(config)   # a missing dataset stops here, saying what to fetch, before anything is written
    wd = Workdir(workdir)
    say = log or (lambda m: None)
    ctx = Context(wd=wd, config=config, settings=settings, out=study_dir(wd), log=say, progress=progress,
                  section_kw=dict(section_kw or {}), overwrite=overwrite)
    for stage in STAGES:  # earlier runs' records feed the keys (and the report) of stages not run now
        if stage != "report":
            rec = _read_record(ctx, stage)
            if rec is not None:
                ctx.records[stage] = rec
    statuses = {}
    wanted = [s for s in stages if s != "report"]
    t_all = time.perf_counter()
    with compilation_cache(ctx.path("xla_cache")):
        for i, stage in enumerate(wanted):
            fn, present = STAGE_FUNCTIONS[stage]
            say(f"[study {i + 1}/{len(wanted)}] {stage} ...")
            rec, status = run_stage(ctx, stage, _stage_settings(ctx, stage), fn, present)
            statuses[stage] = status
            say(f"[study {i + 1}/{len(wanted)}] {stage}: {status}"
                + (f" in {rec['seconds']:.1f} s" if status == "computed" else ""))
    if "report" in stages:
        rep, status = write_report(ctx, statuses)
        statuses["report"] = status
        say(f"[study] report: {status} -> {wd.relative(ctx.path('report.html'))} "
            f"({time.perf_counter() - t_all:.1f} s in all)")
    else:
        rep = _read_json(ctx.path("report.json")) or {}
    return dict(rep, statuses=statuses)


def study_config(config: ml_collections.ConfigDict, stages: Sequence[str], *, quick: bool = False,
                 steps: int | None = None) -> ml_collections.ConfigDict:
    """The config the study trains: `quick_config` under --quick; `steps` per sweep (None: the dataset's
    `STUDY_STEPS` default, 0: the config's own); with "training_time" among `stages`, the log-spaced
    snapshots that stage reads (`training_time.with_snapshots`)."""
    if quick:
        config = quick_config(config)
    if steps is None and not quick:
        steps = STUDY_STEPS.get(str(config.data.get("source", "")))
    if steps:
        config = with_steps(config, int(steps))
    if "training_time" in stages:
        from diffmem.studies import training_time
        config = training_time.with_snapshots(config)
    return config


@contextlib.contextmanager
def compilation_cache(path: str):
    """XLA's persistent compilation cache in `path` while the stages run (unless the user set one): the
    disjoint halves' sweep compiles the very programs of the models' sweep (same K, seed and batch; only the
    data differ), so its UNet compilations are read back (28 s -> 4 s of CPU for two tiny UNets here), and a
    resumed study recompiles nothing it compiled before. The previous setting is restored afterwards."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc
    if jax.config.jax_compilation_cache_dir:
        yield
        return
    jax.config.update("jax_compilation_cache_dir", path)
    cc.reset_cache()   # a cache initialised earlier in this process (without a folder) is set up again
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        cc.reset_cache()


def _by_k(rows: dict) -> list[dict]:
    """A stage's {name: row} in increasing K (report.json's keys come back in string order: "128" < "2")."""
    return sorted(rows.values(), key=lambda r: r["k"])


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------ report
def _report_key(ctx: Context, stages: Sequence[str]) -> str:
    tokens = {s: (ctx.records.get(s) or {}).get("token") for s in STAGES if s != "report"}
    return _hash(dict(version=REPORT_VERSION, tokens=tokens, settings=dataclasses.asdict(ctx.settings)))


def write_report(ctx: Context, statuses: dict) -> tuple[dict, str]:
    """report.json, report.md and report.html from every stage record (skipped when nothing changed)."""
    key = _report_key(ctx, list(statuses))
    paths = [ctx.path(f"report.{ext}") for ext in ("json", "md", "html")]
    old = _read_json(paths[0]) if all(os.path.exists(p) for p in paths) else None
    if old is not None and old.get("key") == key:
        return old, "skipped"
    rep = build_report(ctx, statuses)
    rep["key"] = key
    figures = draw_figures(ctx, rep)
    rep["figures"] = {name: ctx.wd.relative(p) for name, p in figures.items()}
    sections = report_sections(ctx, rep)
    write_markdown(paths[1], ctx, rep, sections)
    write_html(paths[2], ctx, rep, sections)
    report.write_json(paths[0], rep)
    return rep, "computed"


def _data(ctx: Context, stage: str) -> dict | None:
    rec = ctx.records.get(stage)
    return None if rec is None else rec["data"]


def build_report(ctx: Context, statuses: dict) -> dict:
    """The report.json dict (module docstring) from the stage records."""
    c = ctx.config
    names = ctx.names
    ks = [ctx.wd.spec(n).k for n in names]
    model = c.get("model", {}) or {}
    rep = dict(version=REPORT_VERSION, workdir=os.path.basename(os.path.abspath(ctx.wd.path)),
               config=dict(source=str(c.data.get("source", c.data.get("name", ""))), ks=ks, steps=int(c.get("steps", 0)),
                           arch=str(model.get("name", "")), precond=str((c.get("diffusion", {}) or {}).get("precond", "")),
                           seed=_config_json(c).get("seed")),
               settings=dataclasses.asdict(ctx.settings), ks=ks, names=names, stages={}, sections={}, panels={})
    sampler, steps = sampler_of(c, ctx.settings)
    rep["sampling"] = dict(sampler=sampler or c.sample.sampler, steps=steps if sampler else c.sample.get("num_steps"),
                           optimal_sampler=sampler or c.sample.get("optimal_sampler", None) or c.sample.sampler)
    sets = (_data(ctx, "sample") or {}).get("sets", {})
    bad = {kind: {n: v["not_converged"] for n, v in by_name.items() if "not_converged" in v}
           for kind, by_name in sets.items()}
    if any(bad.values()):
        rep["sampling"]["not_converged"] = {kind: b for kind, b in bad.items() if b}
    for stage in STAGES:
        if stage == "report":
            continue
        rec = ctx.records.get(stage)
        status = statuses.get(stage, "off" if rec is None else "earlier run")
        rep["stages"][stage] = dict(status=status, seconds=None if rec is None else rec["seconds"])
    cls = _data(ctx, "classify")
    if cls:
        rep["classes"] = {k: cls[k] for k in ("metric", "units", "calibrated", "thresholds", "fractions",
                                              "fractions_ci", "fixed", "published", "optimal")}
        rep["gu"] = dict(ratio=cls["ratio"], ratio_optimal=cls["ratio_optimal"], level=0.9, emm=cls["emm"])
        rep["panels"] = cls["panels"]
    for stage in ("reproducibility", "disjoint"):
        if _data(ctx, stage):
            rep[stage] = {k: v for k, v in _data(ctx, stage).items()}
    if _data(ctx, "jacobian"):
        rep["jacobian"] = _data(ctx, "jacobian")["models"]
    if _data(ctx, "critical_times"):
        rep["critical_times"] = _data(ctx, "critical_times")
    if _data(ctx, "phase_times"):
        rep["phase_times"] = _data(ctx, "phase_times")["table"]
    for stage in OPTIONAL:
        if _data(ctx, stage):
            rep["sections"][stage] = _data(ctx, stage)["section"]
    return rep


def _series(rep: dict, table: dict) -> tuple[np.ndarray, np.ndarray]:
    """(K, value) of a {name: value} table in K order, values None dropped."""
    pts = sorted((rep["ks"][rep["names"].index(n)], v) for n, v in table.items() if n in rep["names"] and v is not None)
    return np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)


def draw_figures(ctx: Context, rep: dict) -> dict:
    """k_panels.png (every K panel on one shared log-K axis) and rank_vs_snr.png; {name: path}."""
    out = {}
    panels = [p for p in (_panel_classes, _panel_gu, _panel_scores, _panel_disjoint, _panel_critical)
              if p(None, rep)]
    if panels:
        fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 2.9 * len(panels) + 0.6), sharex=True, squeeze=False)
        for ax, panel in zip(axes[:, 0], panels):
            panel(ax, rep)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax = axes[-1, 0]
        ax.set_xscale("log")
        ax.set_xticks(rep["ks"], [str(k) for k in rep["ks"]])
        ax.minorticks_off()
        ax.set_xlabel("training-set size K (log scale)")
        fig.suptitle(f"K sweep: {rep['config']['source']}, {rep['config']['arch']}, {rep['config']['steps']} steps",
                     fontsize=10)
        fig.tight_layout()
        out["k_panels"] = viz.save_figure(fig, ctx.path("figures", "k_panels.png"), dpi=100)
    if rep.get("jacobian"):
        out["rank_vs_snr"] = _rank_figure(ctx.path("figures", "rank_vs_snr.png"), rep["jacobian"])
    return out


def _errorbars(ax, ks, fr, ci, cls, **kw):
    lo = np.array([fr[i] - ci[i][0] for i in range(len(ks))])
    hi = np.array([ci[i][1] - fr[i] for i in range(len(ks))])
    ax.errorbar(ks, fr, yerr=np.maximum(0, np.stack([lo, hi])), capsize=2, **kw)


def _panel_classes(ax, rep) -> bool:
    cls = rep.get("classes")
    if not cls or not cls.get("fractions"):
        return False
    if ax is None:
        return True
    colors = dict(zip(CLASSES, ("tab:red", "tab:orange", "tab:green")))
    main = "calibrated" if cls["calibrated"] else "fixed"
    series = [(cls["fractions"], cls["fractions_ci"], "o-", main)]
    if cls["calibrated"]:
        series.append((cls["fixed"]["fractions"], cls["fixed"]["fractions_ci"], "s--", "fixed pixel"))
    for table, ci, style, label in series:
        names = [n for n in rep["names"] if n in table]
        ks = [rep["ks"][rep["names"].index(n)] for n in names]
        for c in CLASSES:
            _errorbars(ax, ks, [table[n][c] for n in names], [ci[n][c] for n in names], c, fmt=style,
                       color=colors[c], ms=4, label=f"{c} ({label})", alpha=1.0 if style == "o-" else 0.6)
    if cls.get("published"):
        for c in CLASSES:
            ks, ys = _series(rep, {n: f[c] for n, f in cls["published"].items()})
            ax.plot(ks, ys, ":", color=colors[c], label=f"{c} (published LPIPS 0.03/0.02)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("fraction of samples")
    ax.set_title(f"Pham et al. classes ({cls['units'] or cls['metric']}; bars: 95% bootstrap)", fontsize=8)
    return True


def _panel_gu(ax, rep) -> bool:
    gu = rep.get("gu")
    if not gu or not any(v is not None for v in gu["ratio"].values()):
        return False
    if ax is None:
        return True
    ks, ys = _series(rep, gu["ratio"])
    ax.plot(ks, 100 * ys, "o-", color="tab:blue", label="trained")
    ks, ys = _series(rep, gu["ratio_optimal"])
    if len(ks):
        ax.plot(ks, 100 * ys, "s:", color="gray", label="optimal denoiser")
    ax.axhline(100 * gu["level"], color="k", ls="--", lw=0.8, label="90%")
    emm = gu["emm"]
    if emm.get("k_crossing"):
        ax.axvline(emm["k_crossing"], color="tab:purple", lw=1.2, label=f"EMM ~ {emm['k_crossing']:.0f}")
    elif emm.get("k"):
        ax.plot([emm["k"]], [100 * gu["level"]], "*", color="tab:purple", ms=12, label=f"EMM >= {emm['k']}")
    ax.set_ylim(-3, 103)
    ax.set_ylabel("memorization ratio (%)")
    ax.set_title("Gu et al.: d1/d2 < 1/3 (pixel L2)", fontsize=8)
    return True


def _panel_scores(ax, rep) -> bool:
    rows = (rep.get("reproducibility") or {}).get("rows")
    if not rows:
        return False
    if ax is None:
        return True
    for key, style, label in (("rp_seeds", "o-", "RP, seed a vs seed b"), ("rp_optimal", "s--", "RP, model vs optimal"),
                              ("generalization_a", "^-", "generalization (seed a)"),
                              ("generalization_b", "v:", "generalization (seed b)")):
        ks, ys = _series(rep, {n: r[key] for n, r in rows.items()})
        if len(ks):
            ax.plot(ks, ys, style, label=label)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("score")
    ax.set_title("Zhang et al. (pixel features, cosine > 0.6)", fontsize=8)
    return True


def _panel_disjoint(ax, rep) -> bool:
    rows = (rep.get("disjoint") or {}).get("rows")
    if not rows:
        return False
    if ax is None:
        return True
    names = [n for n in rep["names"] if n in rows]
    ks = np.array([rows[n]["k"] for n in names], float)
    mid = np.array([rows[n]["s1_vs_s2"] for n in names])
    q = np.array([rows[n]["s1_vs_s2_quantiles"] for n in names])
    ax.errorbar(ks, mid, yerr=np.maximum(0, np.stack([mid - q[:, 0], q[:, 2] - mid])), fmt="o-", capsize=2,
                label="S1 vs S2 sample, same seed (mean, 5-95%)")
    ax.plot(ks, [rows[n]["closest_own"] for n in names], "s--", label="sample vs closest own training image")
    ax.set_ylim(-0.1, 1.03)
    ax.set_ylabel("cosine similarity")
    ax.set_title("Kadkhodaie et al.: models on disjoint K-subsets", fontsize=8)
    return True


def _panel_critical(ax, rep) -> bool:
    ct = rep.get("critical_times")
    if not ct or not any(ct["tc"].values()):
        return False
    if ax is None:
        return True
    colors = dict(zip(CLASSES, ("tab:red", "tab:orange", "tab:green")))
    for j, c in enumerate(CLASSES):
        table = ct["tc"].get(c, {})
        shift = 1.08 ** (j - 1)   # side by side on the log axis
        xs, ys, med_k, med = [], [], [], []
        for n, vals in table.items():
            if n in rep["names"] and vals:
                k = rep["ks"][rep["names"].index(n)] * shift
                xs += [k] * len(vals)
                ys += vals
                med_k.append(k)
                med.append(float(np.median(vals)))
        if xs:
            ax.plot(xs, ys, ".", color=colors[c], alpha=0.4, ms=4)
            order = np.argsort(med_k)
            ax.plot(np.array(med_k)[order], np.array(med)[order], "o-", color=colors[c], label=f"{c} (median)")
    pt = rep.get("phase_times") or {}
    for key, style, label in (("t_s_index", "k_", "speciation step t_S (data)"),
                              ("t_c_index", "kx", "collapse step t_C (data)")):
        ks, ys = _series(rep, {n: (r.get(key) if r.get(key) is not None and r.get(key) >= 0 else None)
                               for n, r in pt.items()})
        if len(ks):
            ax.plot(ks, ys, style, ms=12 if style == "k_" else 6, label=label)
    ax.set_ylabel("critical time Tc (DDPM step)")
    ax.set_title(f"Pham et al. critical times ({ct['metric']}, delta {ct['delta']:.3g}, {ct['trials']} trials)", fontsize=8)
    return True


def _rank_figure(path: str, jac: dict) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, (name, r) in enumerate(sorted(jac.items(), key=lambda kv: kv[1]["k"])):
        snr = np.asarray(r["snr"])
        ax.plot(snr, r["median"], "o-", color=f"C{i}", ms=3, label=f"K = {r['k']} (median)")
        ax.fill_between(snr, np.maximum(r["q25"], 1e-4), np.maximum(r["q75"], 1e-4), color=f"C{i}", alpha=0.2)
        for key, style in (("snr_speciation", ":"), ("snr_collapse", "--")):
            if r.get(key):
                ax.axvline(r[key], color=f"C{i}", ls=style, lw=0.8)
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("SNR = 1 / sigma"), ax.set_ylabel("rank(J) / n")
    ax.set_title("Zhang et al.: Jacobian rank (dotted: speciation, dashed: collapse, data only)", fontsize=8)
    ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.tight_layout()
    return viz.save_figure(fig, path, dpi=100)


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.3g}"
    return str(v)


def _not_converged_text(rep: dict) -> str:
    """' N of M samples did not converge ...' for sets that record convergence (KS), else ''."""
    bad = rep["sampling"].get("not_converged")
    if not bad:
        return ""
    total = sum(sum(b.values()) for b in bad.values())
    per = "; ".join(f"{kind} " + ", ".join(f"K = {rep['ks'][rep['names'].index(n)]}: {v}"
                                           for n, v in b.items() if n in rep["names"])
                    for kind, b in bad.items())
    return (f" Samples that did not converge within the sampler's max_iters: {total} ({per}); "
            "they are kept, marked converged = False in the sample shards (raise "
            "sample.max_iters).")


def report_sections(ctx: Context, rep: dict) -> list[dict]:
    """[{"title", "text" (markdown paragraph), "rows" + "columns" (a table), "figures" [paths]}] in report order."""
    sections = []
    st = [dict(stage=s, status=v["status"], seconds=_fmt(v["seconds"])) for s, v in rep["stages"].items()]
    cfg = rep["config"]
    sections.append(dict(title="Setup", text=(
        f"Data `{cfg['source']}`, K = {', '.join(map(str, rep['ks']))}; network {cfg['arch']} ({cfg['precond']}), "
        f"{cfg['steps']} training steps, seed {cfg['seed']}; {rep['settings']['num_samples']} samples per model "
        f"(sampler {rep['sampling']['sampler']}"
        f"{', ' + str(rep['sampling']['steps']) + ' steps' if rep['sampling']['steps'] else ''}; optimal denoiser: "
        f"{rep['sampling']['optimal_sampler']})"
        f"{'; --quick preset' if rep['settings']['quick'] else ''}."
        f"{_not_converged_text(rep)}"), rows=st, columns=["stage", "status", "seconds"]))
    if rep.get("figures", {}).get("k_panels"):
        sections.append(dict(title="Every measure vs K", text="All panels share one log-K axis.",
                             figures=[ctx.wd.path_of(rep["figures"]["k_panels"])]))
    cls = rep.get("classes")
    if cls:
        rows = []
        for n in rep["names"]:
            if n not in cls["fractions"]:
                continue
            f, fx, th = cls["fractions"][n], cls["fixed"]["fractions"][n], cls["thresholds"].get(n, {})
            rows.append(dict(K=rep["ks"][rep["names"].index(n)], delta_m=_fmt(th.get("delta_m")),
                             delta_s=_fmt(th.get("delta_s")),
                             **{c: f"{f[c]:.3f} [{cls['fractions_ci'][n][c][0]:.2f}, {cls['fractions_ci'][n][c][1]:.2f}]"
                                for c in CLASSES},
                             **{f"{c} (fixed)": f"{fx[c]:.3f}" for c in CLASSES},
                             ratio=_fmt(rep["gu"]["ratio"].get(n)), **{"ratio (optimal)": _fmt(rep["gu"]["ratio_optimal"].get(n))}))
        emm = rep["gu"]["emm"]
        text = (f"Classes in {cls['units'] or cls['metric']} with "
                f"{'thresholds calibrated on held-out images' if cls['calibrated'] else 'fixed thresholds'}; "
                f"fixed pixel thresholds beside: delta_m = delta_s = {cls['fixed']['delta_m']:.3g} "
                f"({cls['fixed']['rms']} RMS per pixel). Brackets: 95% bootstrap intervals. Gu et al.'s ratio is the "
                f"fraction with d1/d2 < 1/3; EMM (ratio >= 90%): K = {_fmt(emm.get('k'))}, bracket {emm.get('bracket')}, "
                f"crossing ~ {_fmt(emm.get('k_crossing'))} ({emm.get('status')}).")
        if cls.get("published"):
            text += " Published LPIPS thresholds (0.03 / 0.02) in the figure, dotted."
        sections.append(dict(title="Memorized, spurious, generalized (Pham et al.) and the Gu ratio", text=text,
                             rows=rows, columns=["K", "delta_m", "delta_s", *CLASSES, *[f"{c} (fixed)" for c in CLASSES],
                                                 "ratio", "ratio (optimal)"]))
    rp = rep.get("reproducibility")
    if rp:
        rows = [dict(K=r["k"], **{k: _fmt(r[k]) for k in ("rp_seeds", "rp_optimal", "generalization_a",
                                                          "generalization_b", "generalization_optimal")},
                     pairs=r["num_pairs"]) for r in _by_k(rp["rows"])]
        sections.append(dict(title="Reproducibility (Zhang et al.)", text=(
            f"Seed a = the study's model, seed b = {rp['seed_b']} (`{rp['sub_workdir']}/`), the same samples' seeds; "
            f"{rp['features']} features, cosine > {rp['threshold']}. RP high at large K: both models draw the same "
            "image; generalization = 1 - fraction of samples closer than that to a training image."),
            rows=rows, columns=["K", "rp_seeds", "rp_optimal", "generalization_a", "generalization_b",
                                "generalization_optimal", "pairs"]))
    dj = rep.get("disjoint")
    if dj:
        rows = [dict(K=r["k"], s1_vs_s2=_fmt(r["s1_vs_s2"]), **{"5%, 50%, 95%": ", ".join(f"{v:.2f}" for v in r["s1_vs_s2_quantiles"])},
                     closest_own=_fmt(r["closest_own"]), pairs=r["num_pairs"],
                     not_converged=_fmt(r.get("not_converged"))) for r in _by_k(dj["rows"])]
        nc = ["not_converged"] if any("not_converged" in r for r in dj["rows"].values()) else []
        sections.append(dict(title="Two models on disjoint K-subsets (Kadkhodaie et al.)", text=(
            f"S1 = the first K of the recorded order, S2 = the last K (pool {dj['pool_size']}); same network, sampler "
            f"and seeds. Mean-removed cosine similarity. K above half the pool: {dj.get('skipped_ks') or 'none'}."),
            rows=rows, columns=["K", "s1_vs_s2", "5%, 50%, 95%", "closest_own", "pairs", *nc]))
    jac = rep.get("jacobian")
    if jac:
        rows = []
        for n, r in sorted(jac.items(), key=lambda kv: kv[1]["k"]):
            for s, m in zip(r["snr"], r["median"]):
                rows.append(dict(K=r["k"], SNR=f"{s:.3g}", **{"median rank/n": f"{m:.3f}"}))
        sections.append(dict(title="Jacobian rank vs SNR (Zhang et al.)", text=(
            "rank(J)/n of the denoiser along EDM Heun trajectories (float64 Jacobians), three K."),
            rows=rows, columns=["K", "SNR", "median rank/n"],
            figures=[ctx.wd.path_of(rep["figures"]["rank_vs_snr"])] if rep["figures"].get("rank_vs_snr") else []))
    ct = rep.get("critical_times")
    if ct:
        rows = []
        for c in CLASSES:
            for n in rep["names"]:
                vals = ct["tc"].get(c, {}).get(n)
                if vals:
                    rows.append(dict(K=rep["ks"][rep["names"].index(n)], **{"class": c, "samples": len(vals),
                                     "median Tc": f"{np.median(vals):.0f}",
                                     "median radius": f"{np.median(ct['radius'][c][n]):.3g}"}))
        sections.append(dict(title="Critical times per class (Pham et al.)", text=(
            f"The largest DDPM step from which DDIM still recovers the sample within {ct['metric']} distance "
            f"{ct['delta']:.3g} ({ct['trials']} trials, up to {ct['per_class']} samples per class and K)."),
            rows=rows, columns=["K", "class", "samples", "median Tc", "median radius"]))
    pt = rep.get("phase_times")
    if pt:
        rows = [dict(K=rep["ks"][rep["names"].index(n)], Lambda=_fmt(r.get("lambda")), t_S=_fmt(r.get("t_s")),
                     **{"t_S step": _fmt(r.get("t_s_index")), "t_C": _fmt(r.get("t_c")), "t_C step": _fmt(r.get("t_c_index")),
                        "t_C Gaussian": _fmt(r.get("t_c_gaussian"))}) for n, r in ((n, pt[n]) for n in rep["names"] if n in pt)]
        sections.append(dict(title="Speciation and collapse times from the data (Biroli et al.)", text=(
            "OU times; steps on the 1000-step DDPM grid. Marked on the critical-time and rank panels."),
            rows=rows, columns=["K", "Lambda", "t_S", "t_S step", "t_C", "t_C step", "t_C Gaussian"]))
    for stage in OPTIONAL:
        sec = rep["sections"].get(stage)
        if sec:
            sections.append(dict(title=sec["title"], text=sec["markdown"],
                                 figures=[ctx.wd.path_of(f) for f in sec["figures"]]))
    if rep.get("panels"):
        figs = [ctx.wd.path_of(rep["panels"][n]) for n in rep["names"] if n in rep["panels"]]
        sections.append(dict(title="Samples: sample | nearest training image | nearest other sample", text=(
            "Per K, a few samples of each class with their nearest training image and nearest other sample "
            "(from the classification stage)."), figures=figs))
    return sections


def write_markdown(path: str, ctx: Context, rep: dict, sections: list[dict]) -> str:
    parts = ["# K-sweep study: memorization vs training-set size\n"]
    base = os.path.dirname(os.path.abspath(path))
    for s in sections:
        parts.append(f"\n## {s['title']}\n\n{s.get('text', '')}\n")
        if s.get("rows"):
            parts.append("\n" + report.markdown_table(s["rows"], s["columns"]))
        for fig in s.get("figures", []):
            parts.append(f"\n![{os.path.basename(fig)}]({os.path.relpath(os.path.abspath(fig), base)})\n")
    parts.append("\nEverything above, machine-readable: `report.json`; the same page with the figures inline: "
                 "`report.html`.\n")
    from diffmem import atomic
    return atomic.write_text(path, "".join(parts))


def _png_data_uri(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def _markdown_to_html(text: str) -> str:
    """Enough Markdown for the sections' text: paragraphs, `- ` lists, `|` tables, `#` headings, `code`.
    Images are dropped (figures are embedded separately)."""
    out, table, items = [], [], []

    def inline(s):
        s = html.escape(s)
        parts = s.split("`")
        return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))

    def flush():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= set("-: ")]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells[0]) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
                       + "</table>")
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in text.splitlines():
        s = line.strip()
        if s.startswith("!["):
            continue
        if s.startswith("|"):
            table.append(s)
            continue
        if s.startswith(("- ", "* ")):
            items.append(s[2:])
            continue
        flush()
        if s.startswith("#"):
            level = min(6, len(s) - len(s.lstrip("#")) + 2)
            out.append(f"<h{level}>{inline(s.lstrip('#').strip())}</h{level}>")
        elif s:
            out.append(f"<p>{inline(s)}</p>")
    flush()
    return "\n".join(out)


def write_html(path: str, ctx: Context, rep: dict, sections: list[dict]) -> str:
    """One self-contained page: every figure inline as a base64 PNG (no file references)."""
    body = []
    for s in sections:
        body.append(f"<h2>{html.escape(s['title'])}</h2>")
        body.append(_markdown_to_html(s.get("text", "")))
        if s.get("rows"):
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in s["columns"]) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')) if not isinstance(r.get(c), str) else r[c])}</td>"
                                                   for c in s["columns"]) + "</tr>" for r in s["rows"]) + "</table>")
        for fig in s.get("figures", []):
            if fig and os.path.exists(fig) and fig.endswith(".png"):
                body.append(f'<figure><img alt="{html.escape(os.path.basename(fig))}" src="{_png_data_uri(fig)}">'
                            f"<figcaption>{html.escape(os.path.basename(fig))}</figcaption></figure>")
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>K-sweep study</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}"
            "figcaption{font-size:0.75em;color:#666}</style></head><body>\n"
            "<h1>K-sweep study: memorization vs training-set size</h1>\n" + "\n".join(body)
            + "\n<p>Machine-readable: report.json beside this page.</p></body></html>\n")
    from diffmem import atomic
    return atomic.write_text(path, page)
