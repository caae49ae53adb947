"""Memorization study of one workdir, per K: Gu et al.'s memorization ratio and Pham et al.'s classes.

    summary = run("runs/digits")                        # LPIPS if its weights load, else pixel; calibrated
    summary = run("runs/digits", metric="lpips", thresholds="published")       # Pham et al.'s 0.03 / 0.02
    summary = run("runs/digits", metric="pixel", delta_m=2.0, delta_s=1.5, names=["16"])   # given thresholds
    result = emm("runs/emm", config, k_grid=[250, 500, 1000, 2000])  # train/sample/classify on demand

Inputs (bin/train.py, bin/sample.py; layout in `diffmem.workdir`):
  the config and each model's training set (K, H, W, C)
  the sample set of each model: samples (N, H, W, C) float32 in [-1, 1] with their seeds, step and sampler
    (the union of its shards), optional sets of earlier checkpoints (for the max over snapshots) and of the
    empirical optimal denoiser (step -1)
Per model (a trained K, or the optimal denoiser of the same K points):
  * pixel L2 (flattened images) to the nearest and second-nearest training image -> Gu et al.'s ratio:
    memorized iff d1 / d2 < 1/3, reported as the maximum over the snapshots (the latest and earlier checkpoints' samples);
  * d_m, d_s: distance to the nearest training image and to the nearest *other* sample (self excluded by
    index) in the classification metric -- LPIPS (AlexNet; `lpips.features` then the tiled k-NN) when its
    weights load (metric="auto"), or pixel L2 -- and Pham et al.'s labels memorized (d_m <= delta_m) / spurious (d_s <= delta_s) /
    generalized, with percentile-bootstrap intervals of the fractions (`calibration.bootstrap_fractions`);
  * thresholds: "calibrated" (default; `diffmem.metrics.calibration`: the `quantile` of held-out real images'
    nearest-training and nearest-other distances, held-out = the dataset pool minus this model's training
    subset, leave-one-out when K is the whole pool), "published" (Pham et al.'s LPIPS 0.03 / 0.02), or
    given delta_m / delta_s. With LPIPS the published thresholds' labels are reported beside (`published`);
  * classify/<K>.npz, <K>.json (classify/optimal/... for the optimal denoiser), see `NPZ_KEYS`.
metric="auto" uses LPIPS when its weights load and pixel L2 otherwise (the summary's `metric_note` says so).
A model whose results are newer than its sample files and used the same settings is skipped; new thresholds
with the same metric relabel the stored distances; a new metric recomputes. Then classify/summary.json,
report.md and figures: ratio and class fractions vs K (optimal denoiser beside trained), and per model an
image panel (for each class a few rows: sample | nearest training image | nearest other sample).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Sequence

import numpy as np

from diffmem import builders, configlib, generate, report, viz
from diffmem.errors import InputError, MissingInputError
from diffmem.workdir import Workdir, read_sample_files, sort_key
from diffmem.metrics import calibration, classify, distances, memorization

import matplotlib.pyplot as plt  # noqa: E402  (after viz, which selects the Agg backend)

METRICS = ("lpips", "pixel")
DEFAULT_DELTAS = {"lpips": (0.03, 0.02)}  # Pham et al.'s published example thresholds (LPIPS units)
THRESHOLDS = ("calibrated", "published", "given")
KINDS = ("trained", "optimal")
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
    """What a classification depends on besides the sample files: the metric of d_m / d_s ("lpips" or
    "pixel"), how the thresholds are set (`thresholds`: "calibrated" with `quantile`, or "published" /
    "given" with delta_m / delta_s in the metric's units), and the LPIPS backbone."""
    metric: str = "lpips"
    delta_m: float | None = 0.03
    delta_s: float | None = 0.02
    lpips_net: str = "alexnet"
    thresholds: str = "published"
    quantile: float | None = None

    @property
    def units(self) -> str:
        return f"LPIPS ({self.lpips_net})" if self.metric == "lpips" else "pixel L2 (flattened, images in [-1, 1])"


def make_settings(metric: str = "lpips", delta_m: float | None = None, delta_s: float | None = None,
                  lpips_net: str = "alexnet", thresholds: str | None = None, quantile: float = 0.01) -> Settings:
    """Validated Settings. thresholds=None: "given" when delta_m and delta_s are passed, else "calibrated".
    "published" is Pham et al.'s LPIPS 0.03 / 0.02 (LPIPS only). metric "auto" is resolved by `run`."""
    if metric not in METRICS + ("auto",):
        raise InputError(f"Unknown metric {metric!r}; choose one of {METRICS + ('auto',)}.")
    given = delta_m is not None or delta_s is not None
    thresholds = thresholds or ("given" if given else "calibrated")
    if thresholds not in THRESHOLDS:
        raise InputError(f"Unknown thresholds {thresholds!r}; choose one of {THRESHOLDS}.")
    net = lpips_net if metric != "pixel" else ""
    if thresholds == "calibrated":
        if given:
            raise InputError(f"thresholds='calibrated' computes delta_m / delta_s; got delta_m={delta_m}, "
                             f"delta_s={delta_s}. Drop them, or pass thresholds='given'.")
        if not 0 < quantile < 1:
            raise InputError(f"quantile = {quantile}: give a value in (0, 1), e.g. 0.01.")
        return Settings(metric, None, None, net, thresholds, float(quantile))
    if thresholds == "published":
        if metric not in DEFAULT_DELTAS and metric != "auto":  # auto: checked again once resolved
            raise InputError(f"metric={metric!r} has no published thresholds (Pham et al.'s are LPIPS values): "
                             "use thresholds='calibrated', give delta_m and delta_s, or use metric='lpips'.")
        if given:
            raise InputError("thresholds='published' uses Pham et al.'s 0.03 / 0.02: drop delta_m / delta_s.")
        dm, ds = DEFAULT_DELTAS["lpips"]
    else:
        if delta_m is None or delta_s is None:
            raise InputError(f"thresholds='given' needs both delta_m and delta_s (in {metric} units, e.g. "
                             "--delta_m=1.0 --delta_s=1.0); or use thresholds='calibrated'.")
        dm, ds = delta_m, delta_s
    fixed = calibration.fixed(dm, ds, metric, thresholds)  # validates
    return Settings(metric, fixed.delta_m, fixed.delta_s, net, thresholds, None)


def resolve_metric(metric: str, lpips_net: str = "alexnet") -> tuple[str, object, str | None]:
    """(metric, LPIPS weights or None, note): "auto" is LPIPS when its weights load, else pixel L2 (note says
    why). Loading is attempted only for "auto"; "lpips" loads lazily where distances are computed."""
    if metric != "auto":
        return metric, None, None
    from diffmem.metrics import lpips
    try:
        return "lpips", lpips.load_weights(lpips_net), None
    except (FileNotFoundError, ImportError) as e:
        first = str(e).split(". ")[0]
        return "pixel", None, f"metric='auto': LPIPS {lpips_net} weights not available ({first}); using pixel L2."


# ------------------------------------------------------------------------------------- distances, labels
def _tiles(n: int, m: int) -> dict:
    """Tiles no larger than needed (the k-NN pads to whole tiles): powers of two up to 512 x 2048."""
    pow2 = lambda v, cap: min(cap, 1 << max(0, int(v) - 1).bit_length())
    return dict(query_tile=pow2(n, 512), ref_tile=pow2(m, 2048))


def neighbours(samples: np.ndarray, train: np.ndarray, settings: Settings, *, lpips_weights=None,
               mesh=None) -> dict[str, np.ndarray]:
    """Nearest training images and nearest other samples of `samples` (N, H, W, C) among `train` (K, H, W, C).

    Pixel distances are always computed (Gu et al.'s ratio); d_m / d_s are in `settings.metric` (LPIPS needs
    `lpips_weights`, from `lpips.load_weights`). Returns the arrays of `NPZ_KEYS` except labels, seeds and
    gu_memorized. `mesh` shards the queries of the k-NN over devices.
    """
    samples, train = np.asarray(samples, np.float32), np.asarray(train, np.float32)
    n, m = len(samples), len(train)
    if samples.shape[1:] != train.shape[1:]:
        raise InputError(f"Samples of shape {samples.shape[1:]} cannot be compared with training images of shape "
                         f"{train.shape[1:]}: were they sampled from this workdir's models?")
    if n < 2 or m < 1:
        raise InputError(f"Need >= 2 samples (nearest *other* sample) and >= 1 training image; got {n} and {m}.")
    _, i = distances.knn(samples, train, min(2, m), mesh=mesh, **_tiles(n, m))
    if m == 1:
        i = np.pad(i, ((0, 0), (0, 1)), constant_values=-1)
    _, js = distances.knn(samples, samples, 1, exclude_self_offset=0, mesh=mesh, **_tiles(n, n))
    d = np.stack([_l2(samples, train, i[:, 0]), _l2(samples, train, i[:, 1])], axis=1)
    swap = d[:, 1] < d[:, 0]  # the exact distances may reorder a near tie of the GEMM form
    d[swap], i[swap] = d[swap][:, ::-1], i[swap][:, ::-1]
    out = dict(train_dist=d, train_idx=i, sample_dist=_l2(samples, samples, js[:, 0]), sample_idx=js[:, 0])
    if settings.metric == "pixel":
        out.update(d_m=out["train_dist"][:, 0], d_m_idx=i[:, 0], d_s=out["sample_dist"], d_s_idx=js[:, 0])
    else:
        from diffmem.metrics import lpips
        if lpips_weights is None:
            raise InputError("metric='lpips' needs lpips_weights (diffmem.metrics.lpips.load_weights('alexnet')).")
        dm, im = lpips.lpips_knn(lpips_weights, samples, train, 1, mesh=mesh, **_tiles(n, m))
        dd, jd = lpips.lpips_knn(lpips_weights, samples, samples, 1, exclude_self_offset=0, mesh=mesh,
                                 **_tiles(n, n))
        out.update(d_m=dm[:, 0], d_m_idx=im[:, 0], d_s=dd[:, 0], d_s_idx=jd[:, 0])
    return out


def _l2(x: np.ndarray, refs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """||x_n - refs[idx_n]|| computed directly (N,) float32, inf where idx is -1. The k-NN's GEMM form
    ||a||^2 + ||b||^2 - 2 a.b loses ~sqrt(eps) ||a|| to cancellation (an exact copy comes out at ~1e-3, not 0);
    the neighbours' distances are recomputed exactly here."""
    out = np.full(len(x), np.inf, np.float32)
    for s in range(0, len(x), 4096):  # bounded memory for large sample sets
        j = idx[s:s + 4096]
        ok = j >= 0
        diff = x[s:s + 4096][ok].reshape(int(ok.sum()), -1).astype(np.float64) - refs[j[ok]].reshape(int(ok.sum()), -1)
        out[s:s + 4096][ok] = np.sqrt(np.sum(diff * diff, axis=1))
    return out


def label(arrays: dict[str, np.ndarray], thresholds) -> dict[str, np.ndarray]:
    """Add Pham et al.'s `labels` and Gu et al.'s `gu_memorized` to the arrays of `neighbours`; `thresholds`:
    a `calibration.Thresholds` or fixed-threshold Settings (anything with delta_m and delta_s)."""
    if thresholds.delta_m is None or thresholds.delta_s is None:
        raise InputError("Calibrated settings have no thresholds of their own: label with the model's "
                         "calibration.Thresholds (`model_thresholds`).")
    d = arrays["train_dist"]
    return dict(arrays, labels=classify.classify(arrays["d_m"], arrays["d_s"], thresholds.delta_m,
                                                 thresholds.delta_s),
                gu_memorized=memorization.is_memorized(d[:, 0], d[:, 1]))


def model_thresholds(settings: Settings, train: np.ndarray, heldout: np.ndarray | None, num_samples: int, *,
                     lpips_weights=None, mesh=None) -> calibration.Thresholds:
    """The thresholds one model's samples are labelled with: calibrated on `heldout` (the pool minus `train`)
    for N = num_samples samples, or the settings' fixed ones."""
    if settings.thresholds != "calibrated":
        return calibration.fixed(settings.delta_m, settings.delta_s, settings.metric, settings.thresholds)
    if heldout is None:
        raise InputError("thresholds='calibrated' needs the held-out images (the dataset pool minus the "
                         "training subset).")
    return calibration.calibrate(train, heldout, metric=settings.metric, lpips_weights=lpips_weights,
                                 quantile=settings.quantile, num_samples=num_samples, mesh=mesh)


def _fraction_stats(labels: np.ndarray, thresholds: calibration.Thresholds) -> dict:
    """thresholds, counts, fractions and their 95% bootstrap intervals of one labelling."""
    ci = calibration.bootstrap_fractions(labels)
    return dict(thresholds=thresholds.as_dict(), counts=classify.counts(labels),
                fractions=classify.fractions(labels), fractions_ci={c: list(v) for c, v in ci.items()})


def gu_ratio(samples: np.ndarray, train: np.ndarray, mesh=None) -> float | None:
    """Gu et al.'s memorization ratio of samples (N, *S) against train (K, *S); None for K < 2 (undefined)."""
    if len(train) < 2:
        return None
    samples, train = np.asarray(samples, np.float32), np.asarray(train, np.float32)
    _, i = distances.knn(samples, train, 2, mesh=mesh, **_tiles(len(samples), len(train)))
    d = np.sort(np.stack([_l2(samples, train, i[:, 0]), _l2(samples, train, i[:, 1])], axis=1), axis=1)
    return memorization.memorization_ratio(d[:, 0], d[:, 1])


# ------------------------------------------------------------------------------------------ one model
@dataclasses.dataclass(frozen=True)
class SampleSet:
    """A model's sample files (shards): `latest` (latest checkpoint, or the optimal denoiser) and earlier
    `snapshots` {step: files}."""
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
        raise InputError(f"{files[0]}: samples must be finite (N, H, W, C) images; got shape {x.shape}"
                         f"{'' if x.ndim != 4 else ' with non-finite values'}.")
    return data


def _existing(workdir: str, sset: SampleSet) -> dict | None:
    """The stored JSON of a model if both outputs exist, are newer than every sample file and were made from
    the same set of files; else None."""
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


def classify_model(workdir: str, sset: SampleSet, train: np.ndarray, k: int, settings: Settings, *,
                   lpips_weights: Callable[[], object], mesh=None, heldout: np.ndarray | None = None,
                   thresholds_for: Callable[[int], calibration.Thresholds] | None = None) -> tuple[dict, str]:
    """Classify one model's samples (or reuse its finished results). Returns (meta, status) where meta is
    what classify/<name>.json holds and status is "skipped", "relabelled" or "computed".

    heldout: real images not in `train` (calibrated thresholds); thresholds_for(N) may instead give the
    thresholds for N samples (a cache shared by the trained and optimal models of one training set)."""
    npz_path, json_path = _outputs(workdir, sset)
    old = _existing(workdir, sset)
    want = dataclasses.asdict(settings)
    if old is not None and old["settings"] == want and "fractions_ci" in old:
        return old, "skipped"
    data = _load_samples(sset.latest)
    same_distances = old is not None and {k_: old["settings"].get(k_) for k_ in ("metric", "lpips_net")} == {
        k_: want[k_] for k_ in ("metric", "lpips_net")}
    weights = lpips_weights() if settings.metric == "lpips" else None
    if thresholds_for is None:
        thresholds_for = lambda n: model_thresholds(settings, train, heldout, n, lpips_weights=weights, mesh=mesh)
    thresholds = thresholds_for(len(data["samples"]))
    arrays = None
    if same_distances:  # only the thresholds changed: relabel the stored distances
        stored = report.read_npz(npz_path)
        if set(NPZ_KEYS) <= set(stored) and len(stored["d_m"]) == len(data["samples"]):
            arrays, status = label(stored, thresholds), "relabelled"
            by_step = {int(s): r for s, r in old["ratio_by_step"].items()}
    if arrays is None:
        arrays = label(neighbours(data["samples"], train, settings, lpips_weights=weights, mesh=mesh), thresholds)
        status, d = "computed", arrays["train_dist"]
        by_step = {s: gu_ratio(_load_samples(p)["samples"], train, mesh) for s, p in sset.snapshots.items()}
        by_step[data["step"]] = memorization.memorization_ratio(d[:, 0], d[:, 1]) if len(train) > 1 else None
    arrays = {key: arrays[key] for key in NPZ_KEYS if key != "seeds"}
    if os.path.exists(json_path):  # the .json is written last: a crash in between leaves no stale pair
        os.remove(json_path)
    report.write_npz(npz_path, seeds=data["seeds"], **arrays)
    defined = {s: r for s, r in by_step.items() if r is not None}
    best_step, best = memorization.max_over_snapshots(defined) if defined else (None, None)
    extra = {}
    if settings.metric == "lpips":  # Pham et al.'s published thresholds beside the calibrated / given ones
        published = calibration.fixed(*DEFAULT_DELTAS["lpips"], "lpips", "published")
        extra["published"] = _fraction_stats(label(arrays, published)["labels"], published)
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
def run(workdir: str, *, metric: str = "auto", delta_m: float | None = None, delta_s: float | None = None,
        names: Sequence[str] | None = None, lpips_net: str = "alexnet", rows_per_class: int = 3,
        figures: bool = True, mesh=None, log: Callable[[str], None] | None = print,
        thresholds: str | None = None, quantile: float = 0.01) -> dict:
    """Classify every model of `workdir` with samples (or the models named by K in `names`), then write
    classify/summary.json, report.md and figures. Returns the summary:
    {"workdir", "settings", "metric_note", "units", "trained": {name: meta}, "optimal": {name: meta},
     "status": {key: ...}, "not_included": {key: reason}, "figures": [paths]} with meta as in
    classify/<name>.json: besides distances' summaries and Gu's ratio, "thresholds" (calibration.Thresholds as
    a dict), "fractions", "counts", "fractions_ci" {class: [lo, hi]} (95% bootstrap) and, with LPIPS,
    "published": {"thresholds", "fractions", "counts", "fractions_ci"} under Pham et al.'s 0.03 / 0.02.

    metric: "auto" (LPIPS if its weights load, else pixel L2), "lpips" or "pixel". thresholds: "calibrated"
    (default unless delta_m / delta_s are given; `quantile` of held-out distances), "published" (LPIPS only)
    or "given" (delta_m and delta_s).
    """
    make_settings(metric, delta_m, delta_s, lpips_net, thresholds, quantile)  # bad arguments fail before LPIPS
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
            raise MissingInputError(f"No samples for K = {missing} in {workdir} (have {have}); sample "
                                    f"them with python bin/sample.py --workdir={workdir} --k={','.join(missing)}.")
    weights = [] if auto_weights is None else [auto_weights]

    def lpips_weights():
        if not weights:
            from diffmem.metrics import lpips
            weights.append(lpips.load_weights(settings.lpips_net))
        return weights[0]

    pool, calibrated = [], {}

    def thresholds_for(spec):
        """The model's thresholds for N samples, shared by its trained and optimal sample sets; calibrated
        from the pool's features, computed once for all models."""
        def get(n: int) -> calibration.Thresholds:
            if settings.thresholds != "calibrated":
                return model_thresholds(settings, spec.data, None, n)
            if (spec.name, n) not in calibrated:
                if not pool:
                    fn, squared = calibration.metric_features(
                        settings.metric, lpips_weights() if settings.metric == "lpips" else None)
                    pool.append((calibration.PoolFeatures(builders.load_pool(wd.config), fn), squared))
                features, squared = pool[0]
                calibrated[spec.name, n] = calibration.calibrate_pool(
                    features, spec.indices, metric=settings.metric, squared=squared, quantile=settings.quantile,
                    num_samples=n, mesh=mesh)
            return calibrated[spec.name, n]
        return get

    panels: list[str | None] = []
    summary = dict(workdir=os.path.basename(os.path.abspath(workdir)), settings=dataclasses.asdict(settings),
                   metric_note=note, units=settings.units, trained={}, optimal={}, status={}, not_included={},
                   figures=[])
    for sset in sets:
        if sset.name not in specs:
            summary["not_included"][sset.key] = f"no model {sset.name!r} in the workdir's config"
            continue
        spec = specs[sset.name]
        if wanted is not None and sset.name not in wanted:
            old = _existing(workdir, sset)
            if old is not None and old["settings"] == dataclasses.asdict(settings) and "fractions_ci" in old:
                summary[sset.kind][sset.name], summary["status"][sset.key] = old, "existing"
            else:
                summary["not_included"][sset.key] = "not requested, and no finished results with these settings"
            continue
        meta, status = classify_model(workdir, sset, spec.data, spec.k, settings, lpips_weights=lpips_weights,
                                      mesh=mesh, thresholds_for=thresholds_for(spec))
        summary[sset.kind][sset.name], summary["status"][sset.key] = meta, status
        if log:
            t = meta["thresholds"]
            log(f"{sset.key}: {status}; ratio {meta['memorization_ratio']}, "
                + ", ".join(f"{c} {meta['fractions'][c]:.3f}" for c in classify.NAMES)
                + f" (delta_m {t['delta_m']:.4g}, delta_s {t['delta_s']:.4g}, {t['method']})")
        if figures:
            panel = wd.classify_file(f"panels_{sset.key.replace('/', '_')}.png")
            if status != "skipped" or not os.path.exists(panel):
                panel = draw_panels(panel, workdir, sset, spec.data, meta, rows_per_class)
            panels.append(panel)
    if figures:
        figs = _curves(wd, summary) + [p for p in panels if p]
        summary["figures"] = [wd.relative(p) for p in figs]  # reports hold no absolute paths
    report.write_json(wd.classify_file("summary.json"), summary)
    _markdown(wd.classify_file("report.md"), summary, [wd.path_of(p) for p in summary["figures"]])
    return summary


# ---------------------------------------------------------------------------------------------- figures
def draw_panels(path: str, workdir: str, sset: SampleSet, train: np.ndarray, meta: dict,
                rows_per_class: int = 3) -> str | None:
    """For each class, up to `rows_per_class` rows (the first samples of that class by index):
    sample | its nearest training image | its nearest other sample, captioned with d_m and d_s.
    Returns the path, or None if there is nothing to show."""
    data = _load_samples(sset.latest)
    arrays = report.read_npz(_outputs(workdir, sset)[0])
    rows = [(c, i) for c, name in enumerate(classify.NAMES)
            for i in np.flatnonzero(arrays["labels"] == c)[:rows_per_class]]
    if not rows:
        return None
    x, seeds = data["samples"], data["seeds"]
    show = lambda img: np.clip((img + 1) / 2, 0, 1)
    fig, axes = plt.subplots(len(rows), 3, figsize=(4.8, 1.9 * len(rows) + 0.4), squeeze=False,
                             layout="constrained")
    for r, (c, i) in enumerate(rows):
        m, s = int(arrays["d_m_idx"][i]), int(arrays["d_s_idx"][i])
        cells = ((x[i], f"{classify.NAMES[c]}\nseed {seeds[i]}"), (train[m], f"train #{m}\nd_m {arrays['d_m'][i]:.3g}"),
                 (x[s], f"seed {seeds[s]}\nd_s {arrays['d_s'][i]:.3g}"))
        for ax, (img, caption) in zip(axes[r], cells):
            ax.imshow(show(img[..., 0]) if img.shape[-1] == 1 else show(img), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([]), ax.set_xlabel(caption, fontsize=7)
    for ax, head in zip(axes[0], ("sample", "nearest training image", "nearest other sample")):
        ax.set_title(head, fontsize=8)
    who = f"K = {meta['k']}" + (" (optimal denoiser)" if sset.kind == "optimal" else f", step {meta['step']}")
    t = meta["thresholds"]
    fig.suptitle(f"{who}; {meta['units']}, delta_m {t['delta_m']:.4g}, delta_s {t['delta_s']:.4g} ({t['method']})",
                 fontsize=8)
    return viz.save_figure(fig, path)


def _series(summary: dict, value: Callable[[dict], float | None]) -> dict:
    out = {}
    for kind in KINDS:
        pts = sorted((m["k"], value(m)) for m in summary[kind].values() if value(m) is not None)
        if pts:
            out[kind] = (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
    return out


def _curves(wd: Workdir, summary: dict) -> list[str]:
    """ratio_vs_k.png (Gu et al.'s ratio) and classes_vs_k.png (Pham et al.'s fractions); the optimal
    denoiser dashed beside the trained models."""
    figs = []
    ratio = _series(summary, lambda m: m["memorization_ratio"])
    if ratio:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for kind, (ks, ys) in ratio.items():
            ax.plot(ks, 100 * ys, "o-" if kind == "trained" else "s--", label=f"{kind} (max over snapshots)"
                    if kind == "trained" else "optimal denoiser")
        ax.axhline(90, color="gray", lw=0.8, ls=":")
        ax.set_xscale("log"), ax.set_ylim(-3, 103), ax.set_xlabel("training set size K")
        ax.set_ylabel("memorization ratio (%)"), ax.set_title("Gu et al.: d1/d2 < 1/3 (pixel L2)", fontsize=9)
        ax.grid(alpha=0.3), ax.legend(fontsize=8)
        figs.append(viz.save_figure(fig, wd.classify_file("ratio_vs_k.png")))
    s = summary["settings"]
    how = (f"calibrated: {100 * s['quantile']:g}% quantiles of held-out distances"
           if s.get("thresholds") == "calibrated" else f"delta_m {s['delta_m']}, delta_s {s['delta_s']}")
    if summary["trained"] or summary["optimal"]:
        figs.append(_class_figure(wd.classify_file("classes_vs_k.png"), summary, lambda m: m,
                                  f"Pham et al.: {summary['units']}, {how}"))
    if any("published" in m for kind in KINDS for m in summary[kind].values()):
        figs.append(_class_figure(wd.classify_file("classes_vs_k_published.png"), summary,
                                  lambda m: m.get("published"),
                                  f"Pham et al.'s published thresholds: {summary['units']}, 0.03 / 0.02"))
    return figs


def _class_figure(path: str, summary: dict, part: Callable[[dict], dict | None], title: str) -> str:
    """Class fractions vs K with 95% bootstrap error bars; the optimal denoiser dashed."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for c, color in zip(classify.NAMES, ("tab:red", "tab:orange", "tab:green")):
        for kind in KINDS:
            rows = sorted((m["k"], part(m)) for m in summary[kind].values() if part(m) is not None)
            if not rows:
                continue
            ks = np.array([k for k, _ in rows])
            ys = np.array([p["fractions"][c] for _, p in rows])
            ci = np.array([p.get("fractions_ci", {}).get(c, (y, y)) for (_, p), y in zip(rows, ys)])
            err = np.clip(np.stack([ys - ci[:, 0], ci[:, 1] - ys]), 0, None)
            ax.errorbar(ks, ys, yerr=err, fmt="o-" if kind == "trained" else "s--", color=color, capsize=3,
                        ms=4, label=f"{c} ({'trained' if kind == 'trained' else 'optimal denoiser'})")
    ax.set_xscale("log"), ax.set_ylim(-0.03, 1.03), ax.set_xlabel("training set size K")
    ax.set_ylabel("fraction of samples (95% bootstrap CI)"), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    return viz.save_figure(fig, path)


def _markdown(path: str, summary: dict, figures: Sequence[str]) -> str:
    s = summary["settings"]
    cols = ["K", "name", "samples", "step", "ratio", "ratio step", "delta_m", "delta_s", "thresholds",
            "memorized", "spurious", "generalized", "median d_m", "median d_s"]
    if s.get("thresholds") == "calibrated":
        rule = (f"thresholds calibrated per model: delta_m = the {100 * s['quantile']:g}% quantile of held-out real "
                "images' distances to the nearest training image, delta_s = the same quantile of their distances "
                "to the nearest other real image among N - 1 (N = the number of samples); held-out = the dataset "
                "minus the model's training set, leave-one-out over the training set when too few remain "
                "(`diffmem.metrics.calibration`). Fresh draws of the data distribution would be labelled "
                f"memorized and spurious {100 * s['quantile']:g}% of the time each")
    else:
        rule = f"{s.get('thresholds', 'given')} thresholds delta_m = {s['delta_m']}, delta_s = {s['delta_s']}"
    sections = [("Settings", f"Pham et al. classes in {summary['units']}: memorized iff d_m <= delta_m, "
                 "spurious iff not memorized and d_s <= delta_s, generalized otherwise (d_m: nearest training "
                 f"image, d_s: nearest other sample); {rule}. Fractions with 95% percentile-bootstrap intervals. "
                 "Memorization ratio (Gu et al.): fraction of samples with d1/d2 < 1/3 in pixel L2, maximum over "
                 "the sampled snapshots." + (f" Note: {summary['metric_note']}" if summary.get("metric_note") else ""))]
    fmt = lambda p, c: f"{p['fractions'][c]:.3f} [{p['fractions_ci'][c][0]:.3f}, {p['fractions_ci'][c][1]:.3f}]"
    for kind, head in (("trained", "Trained models"), ("optimal", "Empirical optimal denoiser")):
        metas = sorted(summary[kind].values(), key=lambda m: sort_key(m["name"]))
        rows = [dict(K=m["k"], name=m["name"], samples=m["num_samples"], step=m["step"],
                     ratio="n/a (K < 2)" if m["memorization_ratio"] is None else m["memorization_ratio"],
                     **{"ratio step": m["ratio_step"], "median d_m": m["median_d_m"], "median d_s": m["median_d_s"],
                        "delta_m": m["thresholds"]["delta_m"], "delta_s": m["thresholds"]["delta_s"],
                        "thresholds": m["thresholds"]["method"]},
                     **{c: fmt(m, c) for c in classify.NAMES}) for m in metas]
        if rows:
            sections.append((head, report.markdown_table(rows, cols)))
        published = [dict(K=m["k"], name=m["name"], **{c: fmt(m["published"], c) for c in classify.NAMES})
                     for m in metas if "published" in m]
        if published:
            sections.append((f"{head}: Pham et al.'s published LPIPS thresholds (0.03 / 0.02)",
                             report.markdown_table(published, ["K", "name", *classify.NAMES])))
    if summary["not_included"]:
        sections.append(("Not included", "".join(f"- {k}: {v}\n" for k, v in summary["not_included"].items())))
    return report.write_markdown(path, "Memorization: Gu et al.'s ratio and Pham et al.'s classes", sections,
                                 figures)


# ------------------------------------------------------------------------------ effective model memorization
def config_for_k(config, k: int):
    """A copy of `config` training one model on K = `k` examples (data.k replaced; a seed sweep is refused)."""
    d = json.loads(configlib.to_json(config))
    if isinstance(d.get("seed"), list) and len(d["seed"]) != 1:
        raise configlib.ConfigError(f"EMM trains one model per K; the config sweeps seeds {d['seed']}: set one seed.")
    d["data"]["k"] = int(k)
    return configlib.from_json(json.dumps(d))


def train_and_sample(config, workdir: str, seeds: np.ndarray, sampler: str, progress: bool = True) -> None:
    """The default EMM runner: train (resuming) the config's one model into `workdir`, then sample it."""
    from diffmem import train
    train.train(config, workdir, progress=progress)
    generate.sample_workdir(workdir, seeds, sampler=sampler)


def emm(root: str, config, k_grid: Sequence[int], *, seeds: Sequence[int] | None = None,
        sampler: str | None = None, level: float = 0.9, tolerance: float = 0.05, metric: str = "auto",
        delta_m: float | None = None, delta_s: float | None = None, lpips_net: str = "alexnet",
        runner: Callable | None = None, figures: bool = True, progress: bool = True,
        log: Callable[[str], None] | None = print, thresholds: str | None = None, quantile: float = 0.01) -> dict:
    """Gu et al.'s effective model memorization: the largest K whose memorization ratio is >= `level`.

    Each K gets its own workdir root/k<K> holding one model trained with `config_for_k(config, K)`.
    `metrics.memorization.find_emm` brackets on `k_grid` and bisects in log K; a K is evaluated by
      1. its finished classification (root/k<K>/classify/<K>.json, same settings, newer than the samples), or
      2. classifying its existing samples (`run` with these settings), or
      3. `runner(config_K, workdir, seeds, sampler)` (default `train_and_sample`: diffmem.train then
         diffmem.generate) followed by 2.
    A K's workdir whose config.json differs from config_K (beyond `workdir.RERUN_KEYS`, steps included) is an
    error: its results belong to another experiment. root/emm.json is rewritten after every new K and at the end:
    {"result": find_emm's dict (emm, bracket, status, ratios, history), "runs": {K: how it was obtained},
     "settings": {...}}.

    Args:
      root: folder of the per-K workdirs and emm.json.
      config: the experiment's ConfigDict (data.k is replaced by each K).
      k_grid: K values to bracket on (each >= 2: the ratio d1/d2 needs two training images).
      seeds, sampler: what the runner samples (default: range(config.sample.num), config.sample.sampler).
      level, tolerance: see `find_emm` (tolerance=0 bisects to the exact integer K).
      metric, delta_m, delta_s, lpips_net, thresholds, quantile: the classification settings of `run`.
      runner: replaces `train_and_sample` (tests, cluster launchers); must write model K's samples.
      figures: draw each K's figures (`run`).
    """
    settings = make_settings(metric, delta_m, delta_s, lpips_net, thresholds, quantile)
    grid = sorted({int(k) for k in k_grid})
    if not grid or grid[0] < 2:
        raise InputError(f"k_grid = {list(k_grid)}: give K values >= 2 (the ratio d1/d2 needs two training images).")
    seeds = np.arange(config.sample.num) if seeds is None else np.asarray(seeds, np.int64)
    sampler = sampler or config.sample.sampler
    runner = runner or (lambda c, w, s, smp: train_and_sample(c, w, s, smp, progress))
    runs: dict[str, dict] = {}
    path = Workdir(root).emm_path
    record = dict(settings=dict(dataclasses.asdict(settings), level=level, tolerance=tolerance, k_grid=grid,
                                num_seeds=len(seeds), sampler=sampler), runs=runs)

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
                raise MissingInputError(f"The EMM runner did not write the samples of K = {k} in {workdir}.")
        given = settings.thresholds == "given"
        summary = run(workdir, metric=settings.metric, delta_m=settings.delta_m if given else None,
                      delta_s=settings.delta_s if given else None, thresholds=settings.thresholds,
                      quantile=settings.quantile or quantile, names=[name], lpips_net=lpips_net, figures=figures,
                      log=None)
        meta = summary["trained"][name]
        if summary["status"][name] == "skipped" and source == "samples reused":
            source = "classification reused"
        runs[name] = dict(workdir=os.path.relpath(workdir, root), source=source, ratio=meta["memorization_ratio"], step=meta["step"],
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
    """Refuse a K workdir of another config: its samples would mix two experiments (steps count too)."""
    try:
        Workdir(workdir).check_config(config, keep_steps=True)
    except configlib.ConfigError as e:
        raise configlib.ConfigError(f"{e} Its results would mix two experiments: use a new root.") from None
