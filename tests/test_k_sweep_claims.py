"""diffmem.studies.k_sweep_claims: the report's "Published claims" on hand-built stage results (no
training, no JAX): every claim holds on numbers made to show it, does not hold on numbers made to
break it, is "not measured" (with the reason) when its stage did not run or lacks the numbers, and
is never "holds" at --quick; the section's Markdown and the JSON round trip."""
import dataclasses
import json

import pytest

from diffmem import report
from diffmem.studies import k_sweep_claims as kc
from diffmem.studies import k_sweep_results as res

KS = (2, 32, 512)
IDS = [cid for cid, _, _ in kc.CLAIMS]


def _classify(memorized, spurious, ratio, ratio_optimal, emm):
    frac = {k: {"memorized": m, "spurious": s, "generalized": 1 - m - s}
            for k, m, s in zip(KS, memorized, spurious)}
    ci = {k: {c: [v, v] for c, v in f.items()} for k, f in frac.items()}
    return res.ClassifyResult(
        metric="pixel", units="pixel L2", calibrated=True, thresholds={}, fractions=frac,
        fractions_ci=ci, published={}, optimal=frac, fixed_delta=1.0, fixed_rms=0.125,
        fixed_fractions=frac, fixed_fractions_ci=ci, ratio=dict(zip(KS, ratio)),
        ratio_optimal=dict(zip(KS, ratio_optimal)), emm=emm, panels={})


def _repro(generalization, rp_seeds, rp_optimal):
    return res.ReproducibilityResult(
        seed_b=1, threshold=0.6, features="pixel", sub_workdir="seed1",
        rows={k: {"rp_seeds": a, "generalization_a": g, "generalization_b": g, "rp_optimal": o,
                  "generalization_optimal": 0.0, "num_pairs": 8}
              for k, g, a, o in zip(KS, generalization, rp_seeds, rp_optimal)})


def _disjoint(s1_vs_s2, closest_own):
    return res.DisjointResult(pool_size=1797, rows={
        k: {"s1_vs_s2": s, "s1_vs_s2_quantiles": [s, s, s], "closest_own": c, "num_pairs": 8,
            "file": "x"} for k, s, c in zip(KS, s1_vs_s2, closest_own)})


def _jacobian(median):
    return res.JacobianResult(models={
        k: {"snr": [100.0, 0.01, 1.0], "median": [median[2], median[0], median[1]], "n": 64}
        for k in KS})   # SNR out of order: the claim sorts by SNR


def _critical(memorized, generalized):
    tc = {"memorized": memorized, "generalized": generalized}
    return res.CriticalTimesResult(metric="l2", delta=1.0, trials=2, per_class=2, tc=tc,
                                   radius={c: {k: [1.0] * len(v) for k, v in t.items()}
                                           for c, t in tc.items()})


def _training_time(taus, alpha):
    tau = {str(k): {"k": k, "tau": t, "status": "crossed" if t else "never", "lo": t, "hi": t}
           for k, t in zip(KS, taus)}
    fit = None if alpha is None else dict(zip(("alpha", "alpha_lo", "alpha_hi"), alpha))
    return res.SectionResult(title="Training time", markdown="", figures=(),
                             data={"tau": tau, "fit": fit})


def _machines(r):
    rows = {str(k): {"k": k, "machines": {"els": {"r": 0.1}, "bbels": {"r": v}}}
            for k, v in zip(KS, r)}
    return res.SectionResult(title="Machines", markdown="", figures=(),
                             data={"rows": rows, "ks": list(KS), "machines": ["els", "bbels"]})


def good() -> dict:
    """Numbers showing every claim."""
    return dict(
        classify=_classify((0.9, 0.3, 0.0), (0.05, 0.4, 0.1), (0.95, 0.5, 0.0), (1.0, 1.0, 1.0),
                           {"k": 2, "bracket": [2, 32], "k_crossing": 5.3,
                            "status": "bracketed"}),
        reproducibility=_repro((0.1, 0.5, 0.9), (0.95, 0.4, 0.9), (0.9, 0.5, 0.2)),
        disjoint=_disjoint((0.3, 0.6, 0.95), (0.9, 0.8, 0.7)),
        jacobian=_jacobian((0.1, 0.5, 0.9)),
        critical_times=_critical({2: [800.0, 700.0], 32: [600.0]},
                                 {32: [200.0], 512: [300.0, 100.0]}),
        training_time=_training_time((100.0, 1500.0, None), (1.0, 0.8, 1.2)),
        machines=_machines((0.5, 0.8, 0.97)),
    )


def bad() -> dict:
    """Numbers breaking every claim."""
    return dict(
        classify=_classify((0.9, 0.3, 0.4), (0.05, 0.04, 0.1), (0.8, 0.5, 0.1), (1.0, 0.9, 1.0),
                           {"k": None, "bracket": [None, 2], "k_crossing": None,
                            "status": "below_grid"}),
        reproducibility=_repro((0.3, 0.5, 0.9), (0.9, 0.95, 0.99), (0.9, 0.85, 0.8)),
        disjoint=_disjoint((0.3, 0.6, 0.65), (0.9, 0.8, 0.7)),
        jacobian=_jacobian((0.6, 0.6, 0.9)),
        critical_times=_critical({2: [100.0]}, {2: [300.0]}),
        training_time=_training_time((100.0, 50.0, None), (0.5, 0.3, 0.7)),
        machines=_machines((0.9, 0.8, 0.7)),
    )


def test_every_claim_holds_on_numbers_made_to_show_it():
    found = kc.claims(good(), KS, quick=False)
    assert [c.id for c in found.rows] == IDS
    assert found.verdicts() == {cid: "holds" for cid in IDS}
    assert all(c.source and c.claim and c.reason for c in found.rows)
    # the numbers are the inputs', recomputable by hand
    assert found["pham_memorized_falls"].numbers == {"memorized": {"2": 0.9, "32": 0.3,
                                                                   "512": 0.0}}
    assert found["pham_spurious_peak"].numbers["peak_k"] == 32
    assert found["pham_critical_times"].numbers["median_tc"] == {"memorized": 700.0,
                                                                 "generalized": 200.0}
    assert found["zhang_rp_seeds"].numbers["minimum_k"] == 32
    assert found["zhang_jacobian"].numbers["ends"]["2"] == dict(snr_low=0.01, rank_low=0.1,
                                                                snr_high=100.0, rank_high=0.9)
    assert found["bonnaire_tau_grows"].numbers == {"tau": {"2": 100.0, "32": 1500.0}}
    assert found["kamb_bbels_rises"].numbers == {"r": {"2": 0.5, "32": 0.8, "512": 0.97}}
    assert found.tolerances == kc.TOLERANCES and found.ks == KS and not found.quick


def test_every_claim_fails_on_numbers_made_to_break_it():
    found = kc.claims(bad(), KS, quick=False)
    assert found.verdicts() == {cid: "does not hold" for cid in IDS}
    assert "from K = 32 to K = 512 it rises by 0.1" in found["pham_memorized_falls"].reason
    assert "below 90% at every K" in found["gu_emm_inside"].reason
    assert "lowest ratio 0.9 (K = 32)" in found["gu_optimal"].reason
    assert "excludes 1" in found["bonnaire_exponent"].reason
    assert "not met at K = 2, 32, 512" in found["zhang_jacobian"].reason


def test_trends_allow_the_stated_tolerance():
    tol = kc.TOLERANCES["monotone"]
    r = good()
    r["classify"] = _classify((0.5, 0.5 + tol - 0.01, 0.0), (0.05, 0.4, 0.1), (0.95, 0.5, 0.0),
                              (1.0,) * 3, r["classify"].emm)
    assert kc.claims(r, KS, False)["pham_memorized_falls"].verdict == "holds"
    r["classify"] = _classify((0.5, 0.5 + tol + 0.01, 0.0), (0.05, 0.4, 0.1), (0.95, 0.5, 0.0),
                              (1.0,) * 3, r["classify"].emm)
    assert kc.claims(r, KS, False)["pham_memorized_falls"].verdict == "does not hold"
    r["classify"] = _classify((0.0, 0.0, 0.0), (0.05, 0.4, 0.1), (0.95, 0.5, 0.0), (1.0,) * 3,
                              r["classify"].emm)   # flat: does not fall
    assert kc.claims(r, KS, False)["pham_memorized_falls"].verdict == "does not hold"


def test_claims_of_stages_that_did_not_run_are_not_measured_with_the_reason():
    found = kc.claims({}, KS, quick=False)
    assert found.verdicts() == {cid: "not measured" for cid in IDS}
    why = {c.id: c.reason for c in found.rows}
    assert "classify stage did not run" in why["pham_memorized_falls"]
    assert "critical_times stage did not run" in why["pham_critical_times"]
    assert "reproducibility stage did not run" in why["zhang_rp_optimal"]
    assert "jacobian stage did not run" in why["zhang_jacobian"]
    assert "disjoint stage did not run" in why["kadkhodaie_disjoint"]
    assert "training_time stage did not run" in why["bonnaire_exponent"]
    assert "machines stage did not run" in why["kamb_bbels_rises"]
    assert all(c.measured == "-" and c.numbers == {} for c in found.rows)


def test_claims_lacking_their_numbers_are_not_measured():
    r = good()
    one = res.ClassifyResult(**{**dataclasses.asdict(r["classify"]),
                                "fractions": {2: r["classify"].fractions[2]},
                                "ratio": {2: 0.95, 32: None, 512: None}, "ratio_optimal": {},
                                "emm": {"status": "no ratios"}})
    two = dict(r, classify=one, critical_times=_critical({2: [1.0]}, {}),
               jacobian=res.JacobianResult(models={2: {"snr": [1.0], "median": [0.5]}}),
               training_time=_training_time((None, None, None), None),
               machines=res.SectionResult(title="m", markdown="", figures=(),
                                          data={"r2": {"4": 0.5}}))   # a stand-in section
    found = kc.claims(two, KS, quick=False)
    for cid in ("pham_memorized_falls", "pham_spurious_peak", "pham_critical_times",
                "gu_ratio_ends", "gu_emm_inside", "gu_optimal", "zhang_jacobian",
                "bonnaire_tau_grows", "bonnaire_exponent", "kamb_bbels_rises"):
        assert found[cid].verdict == "not measured", cid
    assert "no generalized samples" in found["pham_critical_times"].reason
    assert "no per-K agreement rows" in found["kamb_bbels_rises"].reason
    no_bbels = _machines((0.5, 0.8, 0.97))
    for row in no_bbels.data["rows"].values():
        del row["machines"]["bbels"]
    found = kc.claims(dict(good(), machines=no_bbels), KS, quick=False)["kamb_bbels_rises"]
    assert found.verdict == "not measured" and "compared els, not bbels" in found.reason
    # two K: the spurious peak and the RP minimum need an intermediate K
    r = good()
    r["reproducibility"] = dataclasses.replace(
        r["reproducibility"], rows={k: v for k, v in r["reproducibility"].rows.items() if k != 32})
    found = kc.claims(r, KS, quick=False)
    assert found["zhang_rp_seeds"].verdict == "not measured"
    assert "three or more" in found["zhang_rp_seeds"].reason
    assert found["zhang_rp_optimal"].verdict == "holds"


@pytest.mark.parametrize("make", [good, bad])
def test_quick_never_holds_but_for_the_optimal_denoiser(make):
    full = kc.claims(make(), KS, quick=False)
    found = kc.claims(make(), KS, quick=True)
    assert found.quick
    for c, f in zip(found.rows, full.rows):
        if c.id in kc.QUICK_OK:
            assert c.verdict == f.verdict
        else:
            assert c.verdict == "not measured at --quick"
            assert f"numbers alone give '{f.verdict}'" in c.reason
    assert kc.claims({}, KS, quick=True).verdicts() == {cid: "not measured" for cid in IDS}


def test_markdown_section_and_json_round_trip(tmp_path):
    found = kc.claims(bad(), KS, quick=False)
    sec = kc.section(found)
    assert sec["title"] == "Published claims" and len(sec["rows"]) == len(IDS)
    md = kc.markdown(found)
    assert md.startswith("## Published claims\n")
    assert f"{len(IDS)} does not hold" in md and "near_zero = 0.2" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(IDS)                      # header + one row per claim
    assert all(line.count("|") == 6 for line in table)     # no stray pipes in the cells
    for c in found.rows:
        assert c.source in md and c.claim in md
    page = report.write_sections_html(str(tmp_path / "r.html"), "t", [sec])
    with open(page) as f:
        assert "<td>does not hold</td>" in f.read()
    # JSON: to_json / from_json, and inside report.json's {stage: result}
    for make in (good, bad, dict):
        found = kc.claims(make(), KS, quick=make is bad)
        back = res.ClaimsResult.from_json(json.loads(json.dumps(found.to_json())))
        assert back == found and isinstance(back.rows[0], res.Claim)
        whole = res.from_report_json(json.loads(json.dumps(res.report_json({"claims": found}))))
        assert whole == {"claims": found}
        assert all(c.verdict in res.VERDICTS for c in found.rows)


def test_report_sections_put_the_claims_after_the_setup():
    """The report builder's sections: the stored claims when report.json has them, else the claims
    checked on the stage results there (a report.json written before the claims)."""
    from diffmem.studies import k_sweep_report
    setup = res.ReportResult(version=res.REPORT_VERSION, workdir="wd", config=dict(
        source="digits", ks=list(KS), steps=10, arch="ddpm", precond="ddpm", seed=0),
        settings={"num_samples": 8, "quick": False}, sampling=dict(
            sampler="ddim", steps=3, optimal_sampler="ddim"), ks=KS, stages={}, figures={},
        key="k")
    results = dict(good(), report=setup)
    sections = k_sweep_report.report_sections(lambda p: p, results)
    assert [s["title"] for s in sections[:2]] == ["Setup", "Published claims"]
    assert [r["verdict"] for r in sections[1]["rows"]] == ["holds"] * len(IDS)
    stored = kc.claims(bad(), KS, quick=True)
    sections = k_sweep_report.report_sections(lambda p: p, dict(results, claims=stored))
    assert sections[1] == kc.section(stored)
