"""The K-sweep study's report stage: report.json ({stage: result.to_json()}, `k_sweep_results`, and
"claims": the published claims checked on them, `k_sweep_claims`), and the same numbers as report.md
and a self-contained report.html (diffmem.report renders both)."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Mapping

import numpy as np

from diffmem import report
from diffmem.studies import k_sweep_claims, k_sweep_figures, k_sweep_results as res
from diffmem.studies.k_sweep_results import CLASSES
from diffmem.studies.k_sweep_stages import Context, config_json, sampler_of
from diffmem.studies.pipeline import stable_hash

__all__ = ["TITLE", "FOOTER", "report_key", "write_report", "report_setup", "fmt",
           "not_converged_text", "report_sections"]

TITLE = "K-sweep study: memorization vs training-set size"
FOOTER = ("Everything above, machine-readable: `report.json`; the same page with the figures "
          "inline: "
          "`report.html`.")


def report_key(ctx: Context) -> str:
    """Hash of the stage records (their tokens) and the settings the report is written from."""
    return stable_hash(dict(version=res.REPORT_VERSION, tokens=ctx.cache.tokens(),
                            settings=dataclasses.asdict(ctx.settings)))


def _read_report(path: str) -> dict[str, res.Result] | None:
    try:
        return res.load_report(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_report(ctx: Context, stages, statuses: dict) -> tuple[dict[str, res.Result], str]:
    """report.json, report.md and report.html from every stage record (skipped when nothing
    changed). Returns ({stage: result} as report.json holds it, status)."""
    key = report_key(ctx)
    paths = [ctx.path(f"report.{ext}") for ext in ("json", "md", "html")]
    if all(os.path.exists(p) for p in paths):
        old = _read_report(paths[0])
        if old is not None and "report" in old and old["report"].key == key:
            return old, "skipped"
    results = {s.name: ctx.cache.result(s.name) for s in stages
               if ctx.cache.result(s.name) is not None}
    setup = report_setup(ctx, stages, statuses, key)
    figures = k_sweep_figures.draw_figures(ctx.path("figures"), results, setup.ks, setup.config)
    setup = dataclasses.replace(setup, figures={n: ctx.wd.relative(p) for n, p in figures.items()})
    results["report"] = setup
    results["claims"] = k_sweep_claims.claims(results, setup.ks, ctx.settings.quick)
    sections = report_sections(ctx.wd.path_of, results)
    report.write_sections_markdown(paths[1], TITLE, sections, FOOTER)
    report.write_sections_html(paths[2], TITLE, sections,
                               "Machine-readable: report.json beside this page.")
    report.write_json(paths[0], res.report_json(results))
    return results, "computed"


def report_setup(ctx: Context, stages, statuses: dict, key: str) -> res.ReportResult:
    c = ctx.config
    ks = tuple(ctx.ks)
    model = c.get("model", {}) or {}
    config = dict(source=str(c.data.get("source", c.data.get("name", ""))), ks=list(ks),
                  steps=int(c.get("steps", 0)), arch=str(model.get("name", "")),
                  precond=str((c.get("diffusion", {}) or {}).get("precond", "")),
                  seed=config_json(c).get("seed"))
    sampler, steps = sampler_of(c, ctx.settings)
    sampling = dict(sampler=sampler or c.sample.sampler,
                    steps=steps if sampler else c.sample.get("num_steps"),
                    optimal_sampler=sampler or c.sample.get("optimal_sampler",
                                                            None) or c.sample.sampler)
    table = {}
    for stage in stages:
        if stage.name == "report":
            continue
        rec = ctx.cache.records.get(stage.name)
        status = statuses.get(stage.name, "off" if rec is None else "earlier run")
        table[stage.name] = dict(status=status, seconds=None if rec is None else rec.seconds)
    return res.ReportResult(version=res.REPORT_VERSION,
                            workdir=os.path.basename(os.path.abspath(ctx.wd.path)),
                            config=config, settings=dataclasses.asdict(ctx.settings),
                            sampling=sampling,
                            ks=ks, stages=table, figures={}, key=key)


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.3g}"
    return str(v)


def not_converged_text(sample: res.SampleResult | None) -> str:
    """' N samples did not converge ...' for sets that record convergence (KS), else ''."""
    bad = {} if sample is None else sample.not_converged()
    if not bad:
        return ""
    total = sum(sum(b.values()) for b in bad.values())
    per = "; ".join(f"{kind} " + ", ".join(f"K = {k}: {v}" for k, v in sorted(b.items()))
                    for kind, b in bad.items())
    return (f" Samples that did not converge within the sampler's max_iters: {total} ({per}); "
            "they are kept, marked converged = False in the sample shards (raise "
            "sample.max_iters).")


def report_sections(path_of, results: Mapping[str, res.Result]) -> list[dict]:
    """[{"title", "text" (markdown), "rows" + "columns" (a table), "figures" [paths]}] in report
    order; path_of turns a workdir-relative path into a path."""
    setup: res.ReportResult = results["report"]
    sections = [_setup_section(setup, results.get("sample"))]
    found = results.get("claims")
    if found is None:   # a report.json written before the claims: check them now
        found = k_sweep_claims.claims(results, setup.ks, bool(setup.settings.get("quick")))
    sections.append(k_sweep_claims.section(found))
    if setup.figures.get("k_panels"):
        sections.append(dict(title="Every measure vs K", text="All panels share one log-K axis.",
                             figures=[path_of(setup.figures["k_panels"])]))
    for stage, make in (("classify", _classify_section), ("reproducibility",
                                                          _reproducibility_section),
                        ("disjoint", _disjoint_section), ("jacobian", _jacobian_section),
                        ("critical_times", _critical_section), ("phase_times", _phase_section)):
        r = results.get(stage)
        if r is not None:
            sections.append(make(r, setup, path_of))
    for stage in ("machines", "training_time"):
        sec = results.get(stage)
        if sec is not None:
            sections.append(dict(title=sec.title, text=sec.markdown,
                                 figures=[path_of(f) for f in sec.figures]))
    cls = results.get("classify")
    if cls is not None and cls.panels:
        sections.append(dict(
            title="Samples: sample | nearest training image | nearest other sample",
            text=("Per K, a few samples of each class with their nearest training image and "
                  "nearest other sample (from the classification stage)."),
            figures=[path_of(cls.panels[k]) for k in sorted(cls.panels)]))
    return sections


def _setup_section(setup: res.ReportResult, sample) -> dict:
    st = [dict(stage=s, status=v["status"], seconds=fmt(v["seconds"])) for s,
          v in setup.stages.items()]
    cfg, smp = setup.config, setup.sampling
    text = (f"Data `{cfg['source']}`, K = {', '.join(map(str, setup.ks))}; network {cfg['arch']} "
            f"({cfg['precond']}), {cfg['steps']} training steps, seed {cfg['seed']}; "
            f"{setup.settings['num_samples']} samples per model (sampler {smp['sampler']}"
            f"{', ' + str(smp['steps']) + ' steps' if smp['steps'] else ''}; optimal denoiser: "
            f"{smp['optimal_sampler']}){'; --quick preset' if setup.settings['quick'] else ''}."
            f"{not_converged_text(sample)}")
    return dict(title="Setup", text=text, rows=st, columns=["stage", "status", "seconds"])


def _classify_section(cls: res.ClassifyResult, setup, path_of) -> dict:
    rows = []
    for k in sorted(cls.fractions):
        f, fx, ci = cls.fractions[k], cls.fixed_fractions[k], cls.fractions_ci[k]
        th = cls.thresholds.get(k, {})
        rows.append(dict(K=k, delta_m=fmt(th.get("delta_m")), delta_s=fmt(th.get("delta_s")),
                         **{c: f"{f[c]:.3f} [{ci[c][0]:.2f}, {ci[c][1]:.2f}]" for c in CLASSES},
                         **{f"{c} (fixed)": f"{fx[c]:.3f}" for c in CLASSES},
                         ratio=fmt(cls.ratio.get(k)),
                         **{"ratio (optimal)": fmt(cls.ratio_optimal.get(k))}))
    emm = cls.emm
    text = (f"Classes in {cls.units or cls.metric} with "
            + ("thresholds calibrated on held-out images; " if cls.calibrated
               else "fixed thresholds; ") +
            f"fixed pixel thresholds beside: delta_m = delta_s = {cls.fixed_delta:.3g} "
            f"({cls.fixed_rms} RMS per pixel). Brackets: 95% bootstrap intervals. Gu et al.'s "
            "ratio is the "
            f"fraction with d1/d2 < 1/3; EMM (ratio >= 90%): K = {fmt(emm.get('k'))}, bracket "
            f"{emm.get('bracket')}, crossing ~ {fmt(emm.get('k_crossing'))} ({emm.get('status')}).")
    if cls.published:
        text += " Published LPIPS thresholds (0.03 / 0.02) in the figure, dotted."
    return dict(title="Memorized, spurious, generalized (Pham et al.) and the Gu ratio", text=text,
                rows=rows,
                columns=["K", "delta_m", "delta_s", *CLASSES, *[f"{c} (fixed)" for c in CLASSES],
                         "ratio",
                         "ratio (optimal)"])


def _reproducibility_section(rp: res.ReproducibilityResult, setup, path_of) -> dict:
    keys = ("rp_seeds", "rp_optimal", "generalization_a", "generalization_b",
            "generalization_optimal")
    rows = [dict(K=k, **{key: fmt(r[key]) for key in keys}, pairs=r["num_pairs"])
            for k, r in sorted(rp.rows.items())]
    return dict(title="Reproducibility (Zhang et al.)", text=(
        f"Seed a = the study's model, seed b = {rp.seed_b} (`{rp.sub_workdir}/`), the same "
        f"samples' seeds; {rp.features} features, cosine > {rp.threshold}. RP high at large K: "
        "both models draw the same "
        "image; generalization = 1 - fraction of samples closer than that to a training image."),
        rows=rows, columns=["K", *keys[:2], *keys[2:], "pairs"])


def _disjoint_section(dj: res.DisjointResult, setup, path_of) -> dict:
    rows = [dict(K=k, s1_vs_s2=fmt(r["s1_vs_s2"]),
                 **{"5%, 50%, 95%": ", ".join(f"{v:.2f}" for v in r["s1_vs_s2_quantiles"])},
                 closest_own=fmt(r["closest_own"]), pairs=r["num_pairs"],
                 not_converged=fmt(r.get("not_converged"))) for k, r in sorted(dj.rows.items())]
    nc = ["not_converged"] if any("not_converged" in r for r in dj.rows.values()) else []
    return dict(title="Two models on disjoint K-subsets (Kadkhodaie et al.)", text=(
        f"S1 = the first K of the recorded order, S2 = the last K (pool {dj.pool_size}); same "
        "network, "
        f"sampler and seeds. Mean-removed cosine similarity. K above half the pool: "
        f"{list(dj.skipped_ks) or 'none'}."),
        rows=rows, columns=["K", "s1_vs_s2", "5%, 50%, 95%", "closest_own", "pairs", *nc])


def _jacobian_section(jac: res.JacobianResult, setup, path_of) -> dict:
    rows = [dict(K=k, SNR=f"{s:.3g}", **{"median rank/n": f"{m:.3f}"})
            for k, r in sorted(jac.models.items()) for s, m in zip(r["snr"], r["median"])]
    figure = setup.figures.get("rank_vs_snr")
    return dict(title="Jacobian rank vs SNR (Zhang et al.)", text=(
        "rank(J)/n of the denoiser along EDM Heun trajectories (float64 Jacobians), three K."),
        rows=rows, columns=["K", "SNR",
                            "median rank/n"], figures=[path_of(figure)] if figure else [])


def _critical_section(ct: res.CriticalTimesResult, setup, path_of) -> dict:
    rows = []
    for c in CLASSES:
        for k, vals in sorted(ct.tc.get(c, {}).items()):
            if vals:
                rows.append(dict(K=k, **{"class": c, "samples": len(vals),
                                         "median Tc": f"{np.median(vals):.0f}",
                                         "median radius": f"{np.median(ct.radius[c][k]):.3g}"}))
    return dict(title="Critical times per class (Pham et al.)", text=(
        "The largest DDPM step from which DDIM still recovers the sample within "
        f"{ct.metric} distance "
        f"{ct.delta:.3g} ({ct.trials} trials, up to {ct.per_class} samples per class and K)."),
        rows=rows, columns=["K", "class", "samples", "median Tc", "median radius"])


def _phase_section(pt: res.PhaseTimesResult, setup, path_of) -> dict:
    rows = [dict(K=k, Lambda=fmt(r.get("lambda")), t_S=fmt(r.get("t_s")),
                 **{"t_S step": fmt(r.get("t_s_index")), "t_C": fmt(r.get("t_c")),
                    "t_C step": fmt(r.get("t_c_index")),
                    "t_C Gaussian": fmt(r.get("t_c_gaussian"))})
            for k, r in sorted(pt.table.items())]
    return dict(title="Speciation and collapse times from the data (Biroli et al.)", text=(
        "OU times; steps on the 1000-step DDPM grid. Marked on the critical-time and rank panels."),
        rows=rows, columns=["K", "Lambda", "t_S", "t_S step", "t_C", "t_C step", "t_C Gaussian"])

