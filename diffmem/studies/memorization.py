"""Memorization study of one workdir, per K: Gu et al.'s memorization ratio and Pham et al.'s
classes.

    # LPIPS if its weights load, else pixel; calibrated
    summary = run("runs/digits")
    # Pham et al.'s 0.03 / 0.02
    summary = run("runs/digits", metric="lpips", thresholds="published")
    # given thresholds
    summary = run("runs/digits", metric="pixel", delta_m=2.0, delta_s=1.5, names=["16"])
    # train/sample/classify on demand
    result = emm("runs/emm", config, k_grid=[250, 500, 1000, 2000])

Inputs (bin/train.py, bin/sample.py; layout in `diffmem.workdir`):
  the config and each model's training set (K, H, W, C) the sample set of each model: samples (N, H,
  W, C) float32 in [-1, 1] with their seeds, step and sampler
    (the union of its shards), optional sets of earlier checkpoints (for the max over snapshots) and
    of the empirical optimal denoiser (step -1)
Per model (a trained K, or the optimal denoiser of the same K points):
  * pixel L2 (flattened images) to the nearest and second-nearest training image -> Gu et al.'s
    ratio: memorized iff d1 / d2 < 1/3, reported as the maximum over the snapshots (the latest and
    earlier checkpoints' samples);
  * d_m, d_s: distance to the nearest training image and to the nearest *other* sample (self
    excluded by index) in the classification metric -- LPIPS (AlexNet; `lpips.features` then the
    tiled k-NN) when its weights load (metric="auto"), or pixel L2 -- and Pham et al.'s labels
    memorized (d_m <= delta_m) / spurious (d_s <= delta_s) / generalized, with percentile-bootstrap
    intervals of the fractions (`stats.bootstrap_fractions`);
  * thresholds: "calibrated" (default; `diffmem.metrics.calibration`: the `quantile` of held-out
    real images' nearest-training and nearest-other distances, held-out = the dataset pool minus
    this model's training subset, leave-one-out when K is the whole pool), "published" (Pham et
    al.'s LPIPS 0.03 / 0.02), or given delta_m / delta_s. With LPIPS the published thresholds'
    labels are reported beside (`published`);
  * classify/<K>.npz, <K>.json (classify/optimal/... for the optimal denoiser), see `NPZ_KEYS`.
metric="auto" uses LPIPS when its weights load and pixel L2 otherwise (the summary's `metric_note`
says so). A model whose results are newer than its sample files and used the same settings is
skipped; new thresholds with the same metric relabel the stored distances; a new metric recomputes.
Then classify/summary.json, report.md and figures: ratio and class fractions vs K (optimal denoiser
beside trained), and per model an image panel (for each class a few rows: sample | nearest training
image | nearest other sample).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Sequence

import numpy as np

from diffmem import builders, configlib, generate, report, stats
from diffmem.errors import InputError, MissingInputError
from diffmem.workdir import Workdir, read_sample_files, sort_key
from diffmem.metrics import calibration, classify, memorization
from diffmem.studies import memorization_report

__all__ = ["METRICS", "DEFAULT_DELTAS", "THRESHOLDS", "KINDS", "NPZ_KEYS", "Settings",
           "make_settings", "resolve_metric", "model_thresholds", "SampleSet", "find_samples",
           "classify_model", "run", "config_for_k", "train_and_sample", "emm"]

METRICS = ("lpips", "pixel")
DEFAULT_DELTAS = {"lpips": (0.03, 0.02)}  # Pham et al.'s published example thresholds (LPIPS units)
THRESHOLDS = ("calibrated", "published", "given")
KINDS = memorization_report.KINDS
NPZ_KEYS = {
    "seeds": "(N,) int64 sample seeds",
    "labels": "(N,) int8 Pham class: 0 memorized, 1 spurious, 2 generalized (classify.NAMES)",
    "d_m": "(N,) distance to the nearest training image in the metric (LPIPS value or pixel L2)",
    "d_m_idx": "(N,) int64 index of that training image in the model's training set",
    "d_s": "(N,) distance to the nearest other sample in the metric",
    "d_s_idx": "(N,) int64 index of that sample",
    "train_dist": "(N, 2) pixel L2 to the nearest and second-nearest training image (inf if K = 1)",
    "train_idx": "(N, 2) int64 their indices (-1 if K = 1)",
    "sample_dist": "(N,) pixel L2 to the nearest other sample",
    "sample_idx": "(N,) int64 its index",
    "gu_memorized": "(N,) bool d1 / d2 < 1/3",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a classification depends on besides the sample files: the metric of d_m / d_s ("lpips"
    or "pixel"), how the thresholds are set (`thresholds`: "calibrated" with `quantile`, or
    "published" / "given" with delta_m / delta_s in the metric's units), and the LPIPS backbone."""
    metric: str = "lpips"
    delta_m: float | None = 0.03
    delta_s: float | None = 0.02
    lpips_net: str = "alexnet"
    thresholds: str = "published"
    quantile: float | None = None

    @property
    def units(self) -> str:
        return (
            f"LPIPS ({self.lpips_net})"
            if self.metric == "lpips"
            else "pixel L2 (flattened, images in [-1, 1])"
        )


def make_settings(metric: str = "lpips", delta_m: float | None = None, delta_s: float | None = None,
                  lpips_net: str = "alexnet", thresholds: str | None = None,
                  quantile: float = 0.01) -> Settings:
    """Validated Settings. thresholds=None: "given" when delta_m and delta_s are passed, else
    "calibrated". "published" is Pham et al.'s LPIPS 0.03 / 0.02 (LPIPS only). metric "auto" is
    resolved by `run`."""
    if metric not in METRICS + ("auto",):
        raise InputError(f"Unknown metric {metric!r}; choose one of {METRICS + ('auto',)}.")
    given = delta_m is not None or delta_s is not None
    thresholds = thresholds or ("given" if given else "calibrated")
    if thresholds not in THRESHOLDS:
        raise InputError(f"Unknown thresholds {thresholds!r}; choose one of {THRESHOLDS}.")
    net = lpips_net if metric != "pixel" else ""
    if thresholds == "calibrated":
        if given:
            raise InputError(
                f"thresholds='calibrated' computes delta_m / delta_s; got delta_m={delta_m}, "
                f"delta_s={delta_s}. Drop them, or pass thresholds='given'."
            )
        if not 0 < quantile < 1:
            raise InputError(f"quantile = {quantile}: give a value in (0, 1), e.g. 0.01.")
        return Settings(metric, None, None, net, thresholds, float(quantile))
    if thresholds == "published":
        if metric not in DEFAULT_DELTAS and metric != "auto":  # auto: checked again once resolved
            raise InputError(
                f"metric={metric!r} has no published thresholds (Pham et al.'s are LPIPS values): "
                "use thresholds='calibrated', give delta_m and delta_s, or use metric='lpips'."
            )
        if given:
            raise InputError(
                "thresholds='published' uses Pham et al.'s 0.03 / 0.02: drop delta_m / delta_s."
            )
        dm, ds = DEFAULT_DELTAS["lpips"]
    else:
        if delta_m is None or delta_s is None:
            raise InputError(
                f"thresholds='given' needs both delta_m and delta_s (in {metric} units, e.g. "
                "--delta_m=1.0 --delta_s=1.0); or use thresholds='calibrated'."
            )
        dm, ds = delta_m, delta_s
    fixed = calibration.fixed(dm, ds, metric, thresholds)  # validates
    return Settings(metric, fixed.delta_m, fixed.delta_s, net, thresholds, None)


def resolve_metric(metric: str, lpips_net: str = "alexnet") -> tuple[str, object, str | None]:
    """(metric, LPIPS weights or None, note): "auto" is LPIPS when its weights load, else pixel L2
    (note says why). Loading is attempted only for "auto"; "lpips" loads lazily where distances are
    computed."""
    if metric != "auto":
        return metric, None, None
    from diffmem.metrics import lpips
    try:
        return "lpips", lpips.load_weights(lpips_net), None
    except (FileNotFoundError, ImportError) as e:
        first = str(e).split(". ")[0]
        return (
            "pixel",
            None,
            f"metric='auto': LPIPS {lpips_net} weights not available ({first}); using pixel L2.",
        )


# ------------------------------------------------------------------------------------ thresholds
def model_thresholds(settings: Settings, train: np.ndarray, heldout: np.ndarray | None,
                     num_samples: int, *, lpips_weights=None, mesh=None) -> calibration.Thresholds:
    """The thresholds one model's samples are labelled with: calibrated on `heldout` (the pool minus
    `train`) for N = num_samples samples, or the settings' fixed ones."""
    if settings.thresholds != "calibrated":
        return calibration.fixed(
            settings.delta_m, settings.delta_s, settings.metric, settings.thresholds
        )
    if heldout is None:
        raise InputError(
            "thresholds='calibrated' needs the held-out images (the dataset pool minus the "
            "training subset)."
        )
    return calibration.calibrate(train, heldout, metric=settings.metric,
                                 lpips_weights=lpips_weights, quantile=settings.quantile,
                                 num_samples=num_samples, mesh=mesh)


def _fraction_stats(labels: np.ndarray, thresholds: calibration.Thresholds) -> dict:
    """thresholds, counts, fractions and their 95% bootstrap intervals of one labelling."""
    ci = stats.bootstrap_fractions(labels, classify.NAMES)
    return dict(thresholds=thresholds.as_dict(), counts=classify.counts(labels),
                fractions=classify.fractions(labels),
                fractions_ci={c: list(v) for c, v in ci.items()})


# ---------------------------------------------------------------------------------------- one model
@dataclasses.dataclass(frozen=True)
class SampleSet:
    """A model's sample files (shards): `latest` (latest checkpoint, or the optimal denoiser) and
    earlier `snapshots` {step: files}."""
    name: str
    kind: str  # "trained" | "optimal"
    latest: tuple
    snapshots: dict

    @property
    def key(self) -> str:
        return self.name if self.kind == "trained" else f"optimal/{self.name}"

    @property
    def files(self) -> list[str]:
        return [*self.latest, *(f for files in self.snapshots.values() for f in files)]


def find_samples(workdir: str) -> list[SampleSet]:
    """The sample sets of the trained models and of the optimal denoiser, sorted by K. Snapshot sets
    without their latest set (sampling unfinished) are ignored."""
    wd = Workdir(workdir)
    found: dict[tuple, dict] = {}
    for name, kind, step in wd.sample_sets():
        found.setdefault((name, kind), {})[step] = tuple(wd.sample_files(name, kind, step))
    sets = [SampleSet(name, kind, files.pop(None), dict(sorted(files.items())))
            for (name, kind), files in found.items() if None in files]
    return sorted(sets, key=lambda s: (s.kind != "trained", sort_key(s.name)))


def _outputs(workdir: str, sset: SampleSet) -> tuple[str, str]:
    return Workdir(workdir).classify_paths(sset.name, sset.kind)


def _load_samples(files: Sequence[str]) -> dict:
    """The union of a set's shards (`Workdir.read_samples`), checked to be finite images."""
    data = read_sample_files(files)
    x = data["samples"]
    if x.ndim != 4 or not np.all(np.isfinite(x)):
        raise InputError(
            f"{files[0]}: samples must be finite (N, H, W, C) images; got shape {x.shape}"
            f"{'' if x.ndim != 4 else ' with non-finite values'}."
        )
    return data


def _existing(workdir: str, sset: SampleSet) -> dict | None:
    """The stored JSON of a model if both outputs exist, are newer than every sample file and were
    made from the same set of files; else None."""
    npz, js = _outputs(workdir, sset)
    if not (os.path.exists(npz) and os.path.exists(js)):
        return None
    try:
        with open(js) as f:
            meta = json.load(f)
    except ValueError:  # unreadable: recompute
        return None
    if not isinstance(meta, dict) or not {"settings", "ratio_by_step", "inputs"} <= set(meta):
        return None  # results of another format: recompute
    inputs = sset.files
    if sorted(meta["inputs"]) != sorted(os.path.relpath(p, workdir) for p in inputs):
        return None
    newest_input = max(os.stat(p).st_mtime_ns for p in inputs)
    return meta if min(os.stat(npz).st_mtime_ns, os.stat(js).st_mtime_ns) >= newest_input else None


def classify_model(
    workdir: str,
    sset: SampleSet,
    train: np.ndarray,
    k: int,
    settings: Settings,
    *,
    lpips_weights: Callable[[], object],
    mesh=None,
    heldout: np.ndarray | None = None,
    thresholds_for: Callable[[int], calibration.Thresholds] | None = None,
) -> tuple[dict, str]:
    """Classify one model's samples (or reuse its finished results). Returns (meta, status) where
    meta is what classify/<name>.json holds and status is "skipped", "relabelled" or "computed".

    heldout: real images not in `train` (calibrated thresholds); thresholds_for(N) may instead give
    the thresholds for N samples (a cache shared by the trained and optimal models of one training
    set)."""
    npz_path, json_path = _outputs(workdir, sset)
    old = _existing(workdir, sset)
    want = dataclasses.asdict(settings)
    if old is not None and old["settings"] == want and "fractions_ci" in old:
        return old, "skipped"
    data = _load_samples(sset.latest)
    same_distances = old is not None and {
        k_: old["settings"].get(k_) for k_ in ("metric", "lpips_net")
    } == {k_: want[k_] for k_ in ("metric", "lpips_net")}
    weights = lpips_weights() if settings.metric == "lpips" else None
    if thresholds_for is None:
        thresholds_for = lambda n: model_thresholds(
            settings, train, heldout, n, lpips_weights=weights, mesh=mesh
        )
    thresholds = thresholds_for(len(data["samples"]))
    arrays = None
    if same_distances:  # only the thresholds changed: relabel the stored distances
        stored = report.read_npz(npz_path)
        if set(NPZ_KEYS) <= set(stored) and len(stored["d_m"]) == len(data["samples"]):
            arrays, status = memorization.label(stored, thresholds), "relabelled"
            by_step = {int(s): r for s, r in old["ratio_by_step"].items()}
    if arrays is None:
        near = memorization.neighbour_arrays(data["samples"], train, metric=settings.metric,
                                             lpips_weights=weights, mesh=mesh)
        arrays, status, d = memorization.label(near, thresholds), "computed", near["train_dist"]
        by_step = {s: memorization.ratio_of(_load_samples(p)["samples"], train, mesh=mesh)
                   for s, p in sset.snapshots.items()}
        by_step[data["step"]] = (
            memorization.memorization_ratio(d[:, 0], d[:, 1]) if len(train) > 1 else None
        )
    arrays = {key: arrays[key] for key in NPZ_KEYS if key != "seeds"}
    # the .json is written last: a crash in between leaves no stale pair
    if os.path.exists(json_path):
        os.remove(json_path)
    report.write_npz(npz_path, seeds=data["seeds"], **arrays)
    defined = {s: r for s, r in by_step.items() if r is not None}
    best_step, best = memorization.max_over_snapshots(defined) if defined else (None, None)
    extra = {}
    # Pham et al.'s published thresholds beside the calibrated / given ones
    if settings.metric == "lpips":
        published = calibration.fixed(*DEFAULT_DELTAS["lpips"], "lpips", "published")
        labels = memorization.label(arrays, published)["labels"]
        extra["published"] = _fraction_stats(labels, published)
    meta = dict(
        name=sset.name, k=int(k), kind=sset.kind, settings=want, units=settings.units,
        num_samples=len(data["samples"]), step=data["step"], sampler=data["sampler"],
        **_fraction_stats(arrays["labels"], thresholds), **extra,
        memorization_ratio=best, ratio_step=best_step, ratio_latest=by_step[data["step"]],
        ratio_by_step={str(s): r for s, r in sorted(by_step.items())},
        median_d_m=float(np.median(arrays["d_m"])), median_d_s=float(np.median(arrays["d_s"])),
        inputs=sorted(os.path.relpath(p, workdir) for p in sset.files),
        arrays={key: NPZ_KEYS[key] for key in NPZ_KEYS})
    report.write_json(json_path, meta)
    return meta, status


# ---------------------------------------------------------------------------------------- the study
def run(workdir: str, *, metric: str = "auto", delta_m: float | None = None,
        delta_s: float | None = None, names: Sequence[str] | None = None,
        lpips_net: str = "alexnet", rows_per_class: int = 3, figures: bool = True, mesh=None,
        log: Callable[[str], None] | None = print, thresholds: str | None = None,
        quantile: float = 0.01) -> dict:
    """Classify every model of `workdir` with samples (or the models named by K in `names`), then
    write classify/summary.json, report.md and figures. Returns the summary: {"workdir", "settings",
    "metric_note", "units", "trained": {name: meta}, "optimal": {name: meta},
     "status": {key: ...}, "not_included": {key: reason}, "figures": [paths]} with meta as in
    classify/<name>.json: besides distances' summaries and Gu's ratio, "thresholds"
    (calibration.Thresholds as a dict), "fractions", "counts", "fractions_ci" {class: [lo, hi]} (95%
    bootstrap) and, with LPIPS, "published": {"thresholds", "fractions", "counts", "fractions_ci"}
    under Pham et al.'s 0.03 / 0.02.

    metric: "auto" (LPIPS if its weights load, else pixel L2), "lpips" or "pixel". thresholds:
    "calibrated" (default unless delta_m / delta_s are given; `quantile` of held-out distances),
    "published" (LPIPS only) or "given" (delta_m and delta_s).
    """
    # bad arguments fail before LPIPS
    make_settings(metric, delta_m, delta_s, lpips_net, thresholds, quantile)
    metric, auto_weights, note = resolve_metric(metric, lpips_net)
    if note and log:
        log(note)
    settings = make_settings(metric, delta_m, delta_s, lpips_net, thresholds, quantile)
    wd = Workdir(workdir)
    specs = {s.name: s for s in wd.specs()}
    sets = find_samples(workdir)
    if not sets:
        raise MissingInputError(f"No samples in {workdir}: sample the models first "
                                f"(python bin/sample.py --workdir={workdir} --seeds=0-999).")
    wanted = None if names is None else [str(n) for n in names]
    if wanted is not None:
        missing = [n for n in wanted if n not in {s.name for s in sets}]
        if missing:
            have = sorted({s.name for s in sets}, key=sort_key)
            raise MissingInputError(
                f"No samples for K = {missing} in {workdir} (have {have}); sample "
                f"them with python bin/sample.py --workdir={workdir} --k={','.join(missing)}."
            )
    weights = [] if auto_weights is None else [auto_weights]

    def lpips_weights():
        if not weights:
            from diffmem.metrics import lpips
            weights.append(lpips.load_weights(settings.lpips_net))
        return weights[0]

    pool, calibrated = [], {}

    def thresholds_for(spec):
        """The model's thresholds for N samples, shared by its trained and optimal sample sets;
        calibrated from the pool's features, computed once for all models."""
        def get(n: int) -> calibration.Thresholds:
            if settings.thresholds != "calibrated":
                return model_thresholds(settings, spec.data, None, n)
            if (spec.name, n) not in calibrated:
                if not pool:
                    fn, squared = calibration.metric_features(
                        settings.metric, lpips_weights() if settings.metric == "lpips" else None)
                    pool.append(
                        (calibration.PoolFeatures(builders.load_pool(wd.config), fn), squared)
                    )
                features, squared = pool[0]
                calibrated[spec.name, n] = calibration.calibrate_pool(features, spec.indices,
                                                                      metric=settings.metric,
                                                                      squared=squared,
                                                                      quantile=settings.quantile,
                                                                      num_samples=n, mesh=mesh)
            return calibrated[spec.name, n]
        return get

    panels: list[str | None] = []
    summary = dict(workdir=os.path.basename(os.path.abspath(workdir)),
                   settings=dataclasses.asdict(settings), metric_note=note, units=settings.units,
                   trained={}, optimal={}, status={}, not_included={}, figures=[])
    for sset in sets:
        if sset.name not in specs:
            summary["not_included"][sset.key] = f"no model {sset.name!r} in the workdir's config"
            continue
        spec = specs[sset.name]
        if wanted is not None and sset.name not in wanted:
            old = _existing(workdir, sset)
            if (
                old is not None
                and old["settings"] == dataclasses.asdict(settings)
                and "fractions_ci" in old
            ):
                summary[sset.kind][sset.name], summary["status"][sset.key] = old, "existing"
            else:
                summary["not_included"][sset.key] = (
                    "not requested, and no finished results with these settings"
                )
            continue
        meta, status = classify_model(workdir, sset, spec.data, spec.k, settings,
                                      lpips_weights=lpips_weights, mesh=mesh,
                                      thresholds_for=thresholds_for(spec))
        summary[sset.kind][sset.name], summary["status"][sset.key] = meta, status
        if log:
            t = meta["thresholds"]
            log(f"{sset.key}: {status}; ratio {meta['memorization_ratio']}, "
                + ", ".join(f"{c} {meta['fractions'][c]:.3f}" for c in classify.NAMES)
                + f" (delta_m {t['delta_m']:.4g}, delta_s {t['delta_s']:.4g}, {t['method']})")
        if figures:
            panel = wd.classify_file(f"panels_{sset.key.replace('/', '_')}.png")
            if status != "skipped" or not os.path.exists(panel):
                arrays = report.read_npz(_outputs(workdir, sset)[0])
                panel = memorization_report.draw_panels(panel, _load_samples(sset.latest), arrays,
                                                        spec.data, meta, rows_per_class)
            panels.append(panel)
    if figures:
        figs = memorization_report.curves(summary, wd.classify_file) + [p for p in panels if p]
        summary["figures"] = [wd.relative(p) for p in figs]  # reports hold no absolute paths
    report.write_json(wd.classify_file("summary.json"), summary)
    memorization_report.markdown(wd.classify_file("report.md"), summary,
                                 [wd.path_of(p) for p in summary["figures"]])
    return summary


# --------------------------------------------------------------------- effective model memorization
def config_for_k(config, k: int):
    """A copy of `config` training one model on K = `k` examples (data.k replaced; a seed sweep is
    refused)."""
    d = json.loads(configlib.to_json(config))
    if isinstance(d.get("seed"), list) and len(d["seed"]) != 1:
        raise configlib.ConfigError(
            f"EMM trains one model per K; the config sweeps seeds {d['seed']}: set one seed."
        )
    d["data"]["k"] = int(k)
    return configlib.from_json(json.dumps(d))


def train_and_sample(
    config, workdir: str, seeds: np.ndarray, sampler: str, progress: bool = True
) -> None:
    """The default EMM runner: train (resuming) the config's one model into `workdir`, then sample
    it."""
    from diffmem import train
    train.train(config, workdir, progress=progress)
    generate.sample_workdir(workdir, seeds, sampler=sampler)


def emm(root: str, config, k_grid: Sequence[int], *, seeds: Sequence[int] | None = None,
        sampler: str | None = None, level: float = 0.9, tolerance: float = 0.05,
        metric: str = "auto", delta_m: float | None = None, delta_s: float | None = None,
        lpips_net: str = "alexnet", runner: Callable | None = None, figures: bool = True,
        progress: bool = True, log: Callable[[str], None] | None = print,
        thresholds: str | None = None, quantile: float = 0.01) -> dict:
    """Gu et al.'s effective model memorization: the largest K whose memorization ratio is >=
    `level`.

    Each K gets its own workdir root/k<K> holding one model trained with `config_for_k(config, K)`.
    `metrics.memorization.find_emm` brackets on `k_grid` and bisects in log K; a K is evaluated by
      1. its finished classification (root/k<K>/classify/<K>.json, same settings, newer than the
         samples), or
      2. classifying its existing samples (`run` with these settings), or
      3. `runner(config_K, workdir, seeds, sampler)` (default `train_and_sample`: diffmem.train then
         diffmem.generate) followed by 2.
    A K's workdir whose config.json differs from config_K (beyond `workdir.RERUN_KEYS`, steps
    included) is an error: its results belong to another experiment. root/emm.json is rewritten
    after every new K and at the end: {"result": find_emm's dict (emm, bracket, status, ratios,
    history), "runs": {K: how it was obtained},
     "settings": {...}}.

    Args:
      root: folder of the per-K workdirs and emm.json. config: the experiment's ConfigDict (data.k
      is replaced by each K). k_grid: K values to bracket on (each >= 2: the ratio d1/d2 needs two
      training images). seeds, sampler: what the runner samples (default: range(config.sample.num),
      config.sample.sampler). level, tolerance: see `find_emm` (tolerance=0 bisects to the exact
      integer K). metric, delta_m, delta_s, lpips_net, thresholds, quantile: the classification
      settings of `run`. runner: replaces `train_and_sample` (tests, cluster launchers); must write
      model K's samples. figures: draw each K's figures (`run`).
    """
    settings = make_settings(metric, delta_m, delta_s, lpips_net, thresholds, quantile)
    grid = sorted({int(k) for k in k_grid})
    if not grid or grid[0] < 2:
        raise InputError(
            f"k_grid = {list(k_grid)}: give K values >= 2 (the ratio d1/d2 needs two training "
            f"images)."
        )
    seeds = np.arange(config.sample.num) if seeds is None else np.asarray(seeds, np.int64)
    sampler = sampler or config.sample.sampler
    runner = runner or (lambda c, w, s, smp: train_and_sample(c, w, s, smp, progress))
    runs: dict[str, dict] = {}
    path = Workdir(root).emm_path
    record = dict(
        settings=dict(dataclasses.asdict(settings), level=level, tolerance=tolerance, k_grid=grid,
                      num_seeds=len(seeds), sampler=sampler),
        runs=runs,
    )

    def ratio_at(k: int) -> float:
        workdir, name = Workdir(root).emm_member(k).path, str(k)
        config_k = config_for_k(config, k)
        _check_same_experiment(workdir, config_k)
        source = "samples reused"
        if not Workdir(workdir).has_samples(name):
            if log:
                log(f"EMM: K = {k}: training and sampling into {workdir}")
            runner(config_k, workdir, seeds, sampler)
            source = "trained and sampled"
            if not Workdir(workdir).has_samples(name):
                raise MissingInputError(
                    f"The EMM runner did not write the samples of K = {k} in {workdir}."
                )
        given = settings.thresholds == "given"
        summary = run(workdir, metric=settings.metric, delta_m=settings.delta_m if given else None,
                      delta_s=settings.delta_s if given else None, thresholds=settings.thresholds,
                      quantile=settings.quantile or quantile, names=[name], lpips_net=lpips_net,
                      figures=figures, log=None)
        meta = summary["trained"][name]
        if summary["status"][name] == "skipped" and source == "samples reused":
            source = "classification reused"
        runs[name] = dict(workdir=os.path.relpath(workdir, root), source=source,
                          ratio=meta["memorization_ratio"], step=meta["step"],
                          num_samples=meta["num_samples"], fractions=meta["fractions"])
        if log:
            log(f"EMM: K = {k}: memorization ratio {meta['memorization_ratio']:.4f} ({source})")
        return meta["memorization_ratio"]

    def save(result: dict) -> None:
        report.write_json(path, dict(record, result=result))

    result = memorization.find_emm(ratio_at, grid, level=level, tolerance=tolerance, on_result=save)
    save(result)
    if log:
        log(f"EMM = {result['emm']} (bracket {result['bracket']}, {result['status']}); {path}")
    return dict(record, result=result)


def _check_same_experiment(workdir: str, config) -> None:
    """Refuse a K workdir of another config: its samples would mix two experiments (steps count
    too)."""
    try:
        Workdir(workdir).check_config(config, keep_steps=True)
    except configlib.ConfigError as e:
        raise configlib.ConfigError(
            f"{e} Its results would mix two experiments: use a new root."
        ) from None
