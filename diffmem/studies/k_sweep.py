"""The one-command K-sweep study: from data to a report of memorization vs training-set size K.

    report = run(config, "runs/study")                         # bin/study.py: every default stage
    report = run(config, "runs/study", quick=True)             # the --quick preset (fewer K, steps,
    samples) report = run(config, "runs/study", stages=("train", "sample", "classify", "report"))

Stages (`STAGES`, run in this order; each is resumable and skipped when its record in
<workdir>/study/stages/<stage>.json holds the same settings and the same upstream results, so a
rerun does only what is missing; a stage whose inputs changed reruns, and everything downstream of
it):

    train            diffmem.train.train: the config's K sweep in one compiled loop (or reuse its
    checkpoints) sample           diffmem.generate.sample_workdir: trained models and the empirical
    optimal denoiser, same seeds classify         diffmem.studies.memorization.run: Pham et al.'s
    classes (held-out calibrated thresholds
                     when CALIBRATION's API is there, else pixel L2 at fixed thresholds), Gu et
                     al.'s ratio, EMM (the K where the ratio crosses 90%), and the classes at fixed
                     thresholds beside
    reproducibility  a second training seed in the sub-workdir seed<s>/ (Workdir.sub_workdir),
    sampled from the
                     same seeds; Zhang et al.'s RP between the two seeds and model vs optimal
                     denoiser, and generalization scores (diffmem.studies.reproducibility, pixel
                     features)
    disjoint         Kadkhodaie et al.'s test with the study's own network: a model per K on the
    disjoint
                     K-subset at the other end of the same recorded order (sub-workdir disjoint/),
                     sampled from the same seeds; mean-removed cosine similarity of same-seed pairs,
                     and of each sample to its closest own training image (diffmem.studies.disjoint
                     helpers); K <= half the pool
    jacobian         Zhang et al.'s rank(J)/n vs SNR for three K
    (diffmem.studies.mechanisms.rank_vs_snr) critical_times   Pham et al.'s critical times of a few
    samples of every class (mechanisms.critical_times) phase_times      data-only speciation and
    collapse times per K (Biroli et al.; mechanisms.phase_table) machines         optional (off by
    default): diffmem.machines.agreement.study_section training_time    optional (off by default):
    diffmem.studies.training_time.study_section report           report.json, report.md and a
    self-contained report.html (figures inline, base64 PNG)

Outputs in <workdir>/study/ (`Workdir.study_output_dir("study")`): stages/<stage>.json,
disjoint/<K>.npz, figures/*.png, report.json, report.md, report.html, and xla_cache/ (XLA's
persistent compilation cache while the study runs, `compilation_cache`).

report.json is {stage: result.to_json()} for every stage with a record, plus "report" (the setup,
the stage statuses and the figures) and "claims" (the published claims checked on the results,
`k_sweep_claims`): its schema is the result classes of
diffmem.studies.k_sweep_results (`load_report(path)` reads it back; dictionaries keyed by K are
keyed by int K there, str(K) in JSON). A stage that did not run leaves its key out. Stage bodies:
k_sweep_stages; figures: k_sweep_figures; the report's sections: k_sweep_report; the stage cache:
diffmem.studies.pipeline."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable, Sequence

import ml_collections

from diffmem import builders
from diffmem.errors import InputError
from diffmem.studies import k_sweep_results as res
from diffmem.studies import k_sweep_stages as st
from diffmem.studies.k_sweep_report import write_report
from diffmem.studies.k_sweep_results import CLASSES, load_report  # noqa: F401  (the public schema)
from diffmem.studies.k_sweep_stages import (Context, bootstrap_fractions, emm_on_grid,  # noqa: F401
                                            fixed_thresholds, rank_names, sampler_of, with_changes)
from diffmem.studies.pipeline import Cache, Stage
from diffmem.workdir import Workdir

__all__ = ["QUICK_KS", "QUICK_STEPS", "Settings", "STUDY_STEPS", "QUICK", "STAGE_LIST", "STAGES",
           "OPTIONAL", "DEFAULT_STAGES", "DEPENDS", "StudyRun", "quick_config", "with_steps",
           "study_config", "study_dir", "check_stages", "run", "compilation_cache"]

QUICK_KS = (8, 128)
QUICK_STEPS = 300


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the study adds to the config (all recorded in report.json).

    num_samples: seeds 0..num_samples-1 of every sampled model; sampler / sample_steps: the sampler
    of every set: "auto" = DDIM on `sample_steps` DDPM steps where the config samples with DDPM's
    1000 ancestral steps (Pham et al.'s recipe; 10x cheaper), else the config's own sampler;
    "config" = always the config's sample.sampler and sample.optimal_sampler with their steps; any
    name of `sampling.SAMPLERS`; fixed_rms: the fixed pixel thresholds delta_m = delta_s = fixed_rms
    * sqrt(pixels) (an RMS pixel difference in [-1, 1] units) shown beside the calibrated classes;
    seed_offset: the second training seed is config.seed + seed_offset; rank_ks: the three K of the
    Jacobian stage (None: smallest, middle, largest); rank_latents: EDM trajectories per K;
    ct_per_class, ct_trials: samples per class and trials of the critical-time scan; ct_delta: its
    recovery distance in pixel L2 (None: the classification's median delta_m); phase_draws:
    Monte-Carlo draws of the collapse time; quick: the --quick preset ran (config K and steps
    replaced); steps: training steps of every sweep the study trains (None: the study's per-dataset
    default in `STUDY_STEPS`, else the config's; 0: the config's own): the study trains three sweeps
    -- the models, a second seed and the disjoint halves -- so on a CPU it trains each for less than
    a lone run would. metric: the classification's distance ("auto": LPIPS when its weights load,
    else pixel L2; "pixel" skips LPIPS)."""
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
QUICK = dict(num_samples=64, sample_steps=25, rank_latents=2, ct_per_class=2, ct_trials=3,
             phase_draws=500,
             quick=True)
# keys training ignores
_NOT_TRAINING = ("sample", "study", "log_every", "keep_checkpoints", "monitor")


# --------------------------------------------------------------------------------- stage settings
def _sample_settings(ctx: Context) -> dict:
    sampler, steps = sampler_of(ctx.config, ctx.settings)
    return dict(num_samples=ctx.settings.num_samples, sampler=sampler, sample_steps=steps)


def _train_settings(ctx: Context) -> dict:
    return dict(config={k: v for k,
                        v in st.config_json(ctx.config).items() if k not in _NOT_TRAINING})


def _fields(*names) -> Callable[[Context], dict]:
    return lambda ctx: {n: getattr(ctx.settings, n) for n in names}


# The study, in order. Each stage reruns when its settings or a dependency's record changed.
STAGE_LIST = (
    Stage("train", st.stage_train, res.TrainResult, (), _train_settings, st.train_present),
    Stage("sample", st.stage_sample, res.SampleResult, ("train",), _sample_settings,
          st.samples_present),
    Stage("classify", st.stage_classify, res.ClassifyResult, ("sample",),
          lambda ctx: dict(fixed_rms=ctx.settings.fixed_rms, calibrated=st.calibration_api(),
                           metric=ctx.settings.metric)),
    Stage("reproducibility", st.stage_reproducibility, res.ReproducibilityResult, ("sample",),
          lambda ctx: dict(_sample_settings(ctx), seed_offset=ctx.settings.seed_offset)),
    Stage("disjoint", st.stage_disjoint, res.DisjointResult, ("sample",), _sample_settings),
    Stage("jacobian", st.stage_jacobian, res.JacobianResult, ("train",), _fields("rank_ks",
                                                                                 "rank_latents")),
    Stage("critical_times", st.stage_critical_times, res.CriticalTimesResult, ("classify",),
          _fields("ct_per_class", "ct_trials", "ct_delta")),
    Stage("phase_times", st.stage_phase_times, res.PhaseTimesResult, ("train",),
          _fields("phase_draws")),
    Stage("machines", st.section_stage("machines"), res.SectionResult, ("sample",),
          lambda ctx: dict(kw=ctx.section_kw.get("agreement", {}))),
    Stage("training_time", st.section_stage("training_time"), res.SectionResult, ("train",),
          lambda ctx: dict(kw=ctx.section_kw.get("training_time", {}),
                           sample=_sample_settings(ctx))),
)
STAGES = tuple(s.name for s in STAGE_LIST) + ("report",)
OPTIONAL = ("machines", "training_time")
DEFAULT_STAGES = tuple(s for s in STAGES if s not in OPTIONAL)
DEPENDS = {s.name: s.dependencies for s in STAGE_LIST}


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """What `run` returns: {stage: result} as report.json holds it (or the stage records when the
    report stage did not run), and this run's {stage: "computed" | "skipped"}."""
    results: dict
    statuses: dict

    def __getitem__(self, stage: str) -> res.Result:
        return self.results[stage]

    def get(self, stage: str, default=None):
        return self.results.get(stage, default)


# --------------------------------------------------------------------------------------- config
def quick_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The --quick preset's config: K in `QUICK_KS` and at most `QUICK_STEPS` training steps."""
    return with_steps(with_changes(config, **{"data.k": list(QUICK_KS)}),
                      min(int(config.steps) or QUICK_STEPS, QUICK_STEPS))


def with_steps(config: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
    """config training for `steps` steps (a multiple of steps_per_call; log / checkpoint intervals
    capped)."""
    every = min(int(config.steps_per_call), max(1, int(steps)))
    steps = max(1, int(steps)) // every * every
    changes = {"steps": steps, "steps_per_call": every}
    for key in ("log_every", "ckpt_every"):   # multiples of steps_per_call, at most the length
        if int(config[key]) > steps or int(config[key]) % every:
            changes[key] = steps
    return with_changes(config, **changes)


def study_config(config: ml_collections.ConfigDict, stages: Sequence[str], *, quick: bool = False,
                 steps: int | None = None) -> ml_collections.ConfigDict:
    """The config the study trains: `quick_config` under --quick; `steps` per sweep (None: the
    dataset's `STUDY_STEPS` default, 0: the config's own); with "training_time" among `stages`, the
    log-spaced snapshots that stage reads (`training_time.with_snapshots`)."""
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


def study_dir(wd: Workdir) -> str:
    """<workdir>/study (`Workdir.study_output_dir("study")`)."""
    return wd.study_output_dir("study")


def check_stages(stages: Sequence[str] | None) -> tuple[str, ...]:
    if stages is None:
        return DEFAULT_STAGES
    stages = tuple(stages)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise InputError(f"Unknown stage(s) {bad}; valid stages: {list(STAGES)} (default: all but "
                         f"{list(OPTIONAL)}).")
    return tuple(s for s in STAGES if s in stages)  # always in pipeline order


def _settings(settings: Settings | None, quick: bool, overrides: dict) -> dict:
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
        raise InputError(f"num_samples = {base['num_samples']}: need >= 2 (nearest *other* "
                         "sample).")
    return base


# ------------------------------------------------------------------------------------------ run
def run(config: ml_collections.ConfigDict, workdir: str, *, stages: Sequence[str] | None = None,
        quick: bool = False, settings: Settings | None = None, section_kw: dict | None = None,
        overwrite: bool = False, progress: bool = True, log: Callable[[str], None] | None = print,
        **overrides) -> StudyRun:
    """Run the study's stages (module docstring) on `config` in `workdir`; returns a `StudyRun`: the
    results report.json holds and this run's statuses {stage: "computed" | "skipped"}.

    stages: names of `STAGES` (default `DEFAULT_STAGES`; "machines" and "training_time" are opt-in);
    the "report" stage writes report.json/md/html from every stage record there is. quick: the
    --quick preset (`quick_config` and `QUICK` settings). settings / **overrides: `Settings` fields.
    section_kw: keyword arguments of the optional sections' study_section, keyed "agreement" /
    "training_time". overwrite: a stage rerun after its inputs changed (e.g. more training steps)
    replaces the study's sample sets and mechanism files of other settings instead of stopping with
    an error (finished work is never replaced silently)."""
    stages = check_stages(stages)
    base = _settings(settings, quick, overrides)
    config = study_config(config, stages, quick=quick, steps=base["steps"])
    base["steps"] = int(config.steps)
    settings = Settings(**base)
    if base["sampler"] not in ("auto", "config"):
        from diffmem import sampling
        sampling.get_sampler(base["sampler"])   # an unknown name stops here, naming the valid ones
    # a missing dataset stops here, saying what to fetch, before any write
    builders.load_pool(config)
    wd = Workdir(workdir)
    say = log or (lambda m: None)
    ctx = Context(wd=wd, config=config, settings=settings, out=study_dir(wd), log=say,
                  progress=progress,
                  section_kw=dict(section_kw or {}), overwrite=overwrite)
    ctx.cache = Cache(ctx.path("stages"), wd.path, STAGE_LIST)
    ctx.cache.load()   # earlier runs' records feed the keys (and the report) of stages not run now
    statuses = {}
    wanted = [s for s in stages if s != "report"]
    t_all = time.perf_counter()
    with compilation_cache(ctx.path("xla_cache")):
        for i, stage in enumerate(wanted):
            say(f"[study {i + 1}/{len(wanted)}] {stage} ...")
            rec, status = ctx.cache.run(stage, ctx)
            statuses[stage] = status
            say(f"[study {i + 1}/{len(wanted)}] {stage}: {status}"
                + (f" in {rec.seconds:.1f} s" if status == "computed" else ""))
    if "report" in stages:
        results, status = write_report(ctx, STAGE_LIST, statuses)
        statuses["report"] = status
        say(f"[study] report: {status} -> {wd.relative(ctx.path('report.html'))} "
            f"({time.perf_counter() - t_all:.1f} s in all)")
    else:
        results = {name: rec.result for name, rec in ctx.cache.records.items()}
    return StudyRun(results=results, statuses=statuses)


@contextlib.contextmanager
def compilation_cache(path: str):
    """XLA's persistent compilation cache in `path` while the stages run (unless the user set one):
    the disjoint halves' sweep compiles the very programs of the models' sweep (same K, seed and
    batch; only the data differ), so its UNet compilations are read back (28 s -> 4 s of CPU for two
    tiny UNets here), and a resumed study recompiles nothing it compiled before. The previous
    setting is restored afterwards."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc
    if jax.config.jax_compilation_cache_dir:
        yield
        return
    jax.config.update("jax_compilation_cache_dir", path)
    # a cache initialised earlier in this process (without a folder) is set up again
    cc.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        cc.reset_cache()
