"""The K-sweep study's stage results: frozen dataclasses, keyed by int K, with to_json / from_json.

report.json is {stage: result.to_json()} for every stage that has a record, plus "report"
(`ReportResult`: the setup, stage statuses and figures) and "claims" (`ClaimsResult`: the published
claims checked on those results, diffmem.studies.k_sweep_claims); `load_report(path)` reads it back
into these classes:

    results = load_report(os.path.join(k_sweep.study_dir(wd), "report.json"))
    results["classify"].fractions[128]["memorized"]

In JSON, dictionaries keyed by K have str(K) keys; `from_json` turns them back into int. This module
is the schema of report.json and of the stage records <workdir>/study/stages/<stage>.json."""
from __future__ import annotations

import dataclasses
import json
from typing import Mapping

from diffmem.metrics import classify as classify_lib
from diffmem.studies.pipeline import Result

__all__ = ["CLASSES", "REPORT_VERSION", "TrainResult", "SampleResult", "ClassifyResult",
           "ReproducibilityResult", "DisjointResult", "JacobianResult", "CriticalTimesResult",
           "PhaseTimesResult", "SectionResult", "ReportResult", "VERDICTS", "Claim",
           "ClaimsResult", "RESULTS", "report_json",
           "from_report_json", "load_report"]

CLASSES = classify_lib.NAMES  # the one list of Pham et al.'s classes
REPORT_VERSION = 3   # 3: the "claims" entry


@dataclasses.dataclass(frozen=True)
class TrainResult(Result):
    steps: dict[int, int | None]   # K -> latest checkpoint step


@dataclasses.dataclass(frozen=True)
class SampleResult(Result):
    # kind ("trained" / "optimal") -> K -> {"num", "sampler", "step", "not_converged" (KS sampler
    # only)}
    sets: dict[str, dict[int, dict]]

    def not_converged(self) -> dict[str, dict[int, int]]:
        """{kind: {K: count}} of the sets that record convergence and have samples stopped at
        max_iters."""
        bad = {kind: {k: v["not_converged"] for k, v in by_k.items() if "not_converged" in v}
               for kind, by_k in self.sets.items()}
        return {kind: b for kind, b in bad.items() if b}


@dataclasses.dataclass(frozen=True)
class ClassifyResult(Result):
    """Pham et al.'s classes per K (thresholds calibrated on held-out images when `calibrated`), the
    classes at the fixed pixel thresholds beside (`fixed_*`), Gu et al.'s ratio and EMM."""
    metric: str
    units: str
    calibrated: bool
    thresholds: dict[int, dict]            # K -> {"delta_m", "delta_s"}
    fractions: dict[int, dict]             # K -> {class: fraction}
    fractions_ci: dict[int, dict]          # K -> {class: [lo, hi]} (95% bootstrap)
    # K -> {class: fraction} at LPIPS 0.03 / 0.02 (LPIPS runs only)
    published: dict[int, dict]
    # K -> {class: fraction} of the optimal denoiser's samples
    optimal: dict[int, dict]
    fixed_delta: float                     # delta_m = delta_s, pixel L2
    fixed_rms: float
    fixed_fractions: dict[int, dict]
    fixed_fractions_ci: dict[int, dict]
    ratio: dict[int, float | None]         # Gu et al.: fraction with d1/d2 < 1/3
    ratio_optimal: dict[int, float | None]
    # {"k", "bracket", "k_crossing", "status"} (`emm_on_grid`)
    emm: dict
    panels: dict[int, str]                 # K -> classification panel png, relative to the workdir
    files: tuple[str, ...] = ()
    level: float = 0.9
    fixed_units: str = "pixel L2"


@dataclasses.dataclass(frozen=True)
class ReproducibilityResult(Result):
    seed_b: int
    threshold: float
    features: str
    sub_workdir: str
    # K -> {"rp_seeds", "generalization_a", "generalization_b", "rp_optimal",
    # "generalization_optimal",
    #       "num_pairs"}
    rows: dict[int, dict]


@dataclasses.dataclass(frozen=True)
class DisjointResult(Result):
    pool_size: int
    # K -> {"s1_vs_s2" (mean), "s1_vs_s2_quantiles" [5%, 50%, 95%], "closest_own", "num_pairs",
    # "file",
    #       "not_converged" (KS sampler only)}
    rows: dict[int, dict]
    skipped_ks: tuple[int, ...] = ()
    sides: dict[str, str] = dataclasses.field(default_factory=dict)
    files: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class JacobianResult(Result):
    # K -> {"snr" [L], "median" [L], "q25" [L], "q75" [L], "n", "snr_speciation", "snr_collapse"}
    models: dict[int, dict]


@dataclasses.dataclass(frozen=True)
class CriticalTimesResult(Result):
    metric: str
    delta: float
    trials: int
    per_class: int
    tc: dict[str, dict[int, list]]       # class -> K -> per-sample median Tc (DDPM step)
    radius: dict[str, dict[int, list]]   # class -> K -> per-sample median ||x0 - x_tc||


@dataclasses.dataclass(frozen=True)
class PhaseTimesResult(Result):
    # K -> {"lambda", "t_s", "t_s_index", "t_c", "t_c_index", "t_c_gaussian", ...}
    table: dict[int, dict]


@dataclasses.dataclass(frozen=True)
class SectionResult(Result):
    """An optional stage's section (machines, training_time): figures relative to the workdir."""
    title: str
    markdown: str
    figures: tuple[str, ...]
    data: dict


@dataclasses.dataclass(frozen=True)
class ReportResult(Result):
    """The report stage: what ran with which settings, and the figures drawn."""
    version: int
    workdir: str                 # the workdir's base name
    config: dict                 # {"source", "ks", "steps", "arch", "precond", "seed"}
    settings: dict               # the study's `Settings` as a dict
    sampling: dict               # {"sampler", "steps", "optimal_sampler"}
    ks: tuple[int, ...]
    stages: dict[str, dict]      # stage -> {"status", "seconds"}
    figures: dict[str, str]      # figure name -> path relative to the workdir
    key: str                     # hash of the stage records it was written from


# A claim's verdict; "not measured at --quick": the --quick preset cannot show the claim.
VERDICTS = ("holds", "does not hold", "not measured", "not measured at --quick")


@dataclasses.dataclass(frozen=True)
class Claim:
    """One published claim checked on the study's results (diffmem.studies.k_sweep_claims)."""
    id: str
    source: str      # paper and figure
    claim: str       # what is tested, with its thresholds
    measured: str    # the numbers the verdict is computed from, as text
    verdict: str     # one of VERDICTS
    reason: str      # why that verdict
    numbers: dict = dataclasses.field(default_factory=dict)   # the same numbers, JSON


@dataclasses.dataclass(frozen=True)
class ClaimsResult(Result):
    """The "Published claims" of the report: one `Claim` per row, from the stage results."""
    ks: tuple[int, ...]
    quick: bool
    tolerances: dict     # every threshold the verdicts use, by name
    rows: tuple[Claim, ...]

    def verdicts(self) -> dict[str, str]:
        return {c.id: c.verdict for c in self.rows}

    def __getitem__(self, claim_id: str) -> Claim:
        for c in self.rows:
            if c.id == claim_id:
                return c
        raise KeyError(claim_id)


RESULTS = {"train": TrainResult, "sample": SampleResult, "classify": ClassifyResult,
           "reproducibility": ReproducibilityResult, "disjoint": DisjointResult,
           "jacobian": JacobianResult,
           "critical_times": CriticalTimesResult, "phase_times": PhaseTimesResult,
           "machines": SectionResult, "training_time": SectionResult, "report": ReportResult,
           "claims": ClaimsResult}


def report_json(results: Mapping[str, Result]) -> dict:
    """report.json's dict: {stage: result.to_json()}."""
    return {stage: r.to_json() for stage, r in results.items()}


def from_report_json(d: Mapping) -> dict[str, Result]:
    return {stage: RESULTS[stage].from_json(v) for stage, v in d.items() if stage in RESULTS}


def load_report(path: str) -> dict[str, Result]:
    """report.json as {stage: result} (stages that did not run are absent)."""
    with open(path) as f:
        return from_report_json(json.load(f))
