"""The K-sweep report's "Published claims": what the papers show, checked on the study's results.

    found = claims(results, ks=(2, 8, 32, 128, 512, 1797), quick=False)   # a ClaimsResult
    found.verdicts()          # {"pham_memorized_falls": "holds", ...}
    section(found)            # the report section: {"title", "text", "rows", "columns"}

`claims` is a pure function of the typed stage results (diffmem.studies.k_sweep_results): one
`Claim` per published claim with its source, the numbers measured, and a verdict -- "holds", "does
not hold", or "not measured" with the reason (the stage did not run, or lacks the numbers). Every
threshold is in `TOLERANCES`, so each verdict can be recomputed by hand from report.json. With
`quick=True` a claim the --quick preset cannot show (two K, a few hundred training steps: every
claim on trained models) is "not measured at --quick", never "holds"; its reason says what the
numbers alone would give. Only the optimal (empirical) denoiser's claim, which needs no training, is
judged at --quick."""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from diffmem import report
from diffmem.studies import k_sweep_results as res

__all__ = ["TITLE", "TOLERANCES", "SOURCES", "QUICK_OK", "BOUNDARY_MACHINE", "CLAIMS", "claims",
           "section", "markdown"]

TITLE = "Published claims"
# Every threshold a verdict uses (report.json holds them beside the verdicts).
TOLERANCES = dict(
    monotone=0.05,      # "falls / rises with K": no step between neighbouring K against the
                        # trend by more than this (fractions, similarities, r), and the ends differ
    near_zero=0.2,      # a score "near 0" is <= this
    near_one=0.8,       # a score "near 1" is >= this
    gu_high=0.9,        # Gu et al.'s ratio at the smallest K: >= this (their EMM level)
    gu_low=0.05,        # ... and at the largest K: <= this
    optimal_min=0.99,   # "the optimal denoiser memorizes 100%": ratio >= this at every K
    rp_high=0.7,        # Zhang et al.'s RP "high": >= this
    rank_low=0.3,       # rank(J)/n "low" at the lowest SNR: <= this
    rank_high=0.8,      # ... and at the highest SNR: >= this
)
SOURCES = {
    "pham_memorized_falls": "Pham et al. 2025, memorized / spurious / generalized fractions vs K",
    "pham_spurious_peak": "Pham et al. 2025, memorized / spurious / generalized fractions vs K",
    "pham_critical_times": "Pham et al. 2025, critical times per class",
    "gu_ratio_ends": "Gu et al. 2023, memorization ratio vs training-set size",
    "gu_emm_inside": "Gu et al. 2023, EMM (ratio crossing 90%) vs training-set size",
    "gu_optimal": "Gu et al. 2023, the optimal (empirical) denoiser's memorization ratio",
    "zhang_generalization": "Zhang et al. 2024, generalization score vs training-set size",
    "zhang_rp_seeds": "Zhang et al. 2024, RP score between two seeds vs training-set size",
    "zhang_rp_optimal": "Zhang et al. 2024, RP score of the model vs the optimal denoiser",
    "zhang_jacobian": "Zhang et al. 2024, rank(J)/n vs SNR (their jacobian-real figure)",
    "kadkhodaie_disjoint": "Kadkhodaie et al. 2024 (ICLR), Fig. 1 and the similarity vs N figure",
    "bonnaire_tau_grows": "Bonnaire et al. 2025, tau_mem vs K",
    "bonnaire_exponent": "Bonnaire et al. 2025, tau_mem ~ K (exponent 1)",
    "kamb_bbels_rises": "Kamb & Ganguli 2025, boundary-broken ELS machine vs network agreement",
}
# The only claim the --quick preset can show: the optimal denoiser needs no training.
QUICK_OK = ("gu_optimal",)
BOUNDARY_MACHINE = "bbels"   # the boundary-aware local machine (diffmem.machines)

T = TOLERANCES
Verdict = tuple   # what each check returns: (verdict, measured, reason, numbers)


def _f(v) -> str:
    if v is None:
        return "n/a"
    v = float(v)
    return f"{v:.3g}" if math.isfinite(v) else "n/a"


def _num(v):
    """A JSON-stable number: float, or None for missing / non-finite."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _series(by_k: Mapping, get: Callable) -> dict[int, float]:
    """{K: value} in increasing K, values from get(entry), missing values left out."""
    out = {}
    for k in sorted(by_k, key=int):
        try:
            v = _num(get(by_k[k]))
        except (KeyError, TypeError, ValueError, AttributeError):
            v = None
        if v is not None:
            out[int(k)] = v
    return out


def _text(series: Mapping[int, float]) -> str:
    return ", ".join(f"K = {k}: {_f(v)}" for k, v in series.items())


def _json(series: Mapping[int, float]) -> dict:
    return {str(k): v for k, v in series.items()}


def _missing(why: str) -> Verdict:
    return "not measured", "", why, {}


def _trend(series: Mapping[int, float], sign: int) -> tuple[bool, str]:
    """Whether `series` falls (sign -1) or rises (+1) with K: no step against the trend by more than
    TOLERANCES["monotone"], and the largest K beyond the smallest. (ok, why)."""
    ks, v = list(series), list(series.values())
    against = [(ks[i], ks[i + 1], sign * (v[i] - v[i + 1])) for i in range(len(v) - 1)
               if sign * (v[i] - v[i + 1]) > T["monotone"]]
    word = "rises" if sign > 0 else "falls"
    if against:
        a, b, by = max(against, key=lambda x: x[2])
        return False, f"from K = {a} to K = {b} it {'falls' if sign > 0 else 'rises'} by {_f(by)}"
    if not sign * (v[-1] - v[0]) > 0:
        return False, f"it does not {word[:-1]} from K = {ks[0]} to K = {ks[-1]}"
    return True, (f"it {word} from K = {ks[0]} to K = {ks[-1]} with no step against that by more "
                  f"than {T['monotone']}")


def _verdict(ok: bool) -> str:
    return "holds" if ok else "does not hold"


# ---------------------------------------------------------------------------------- Pham et al.
def _pham_memorized(r: Mapping) -> Verdict:
    cls = r.get("classify")
    if cls is None:
        return _missing("the classify stage did not run")
    s = _series(cls.fractions, lambda f: f["memorized"])
    if len(s) < 2:
        return _missing(f"memorized fractions at {len(s)} K; the claim needs two or more")
    ok, why = _trend(s, -1)
    return _verdict(ok), "memorized " + _text(s), why, dict(memorized=_json(s))


def _pham_spurious(r: Mapping) -> Verdict:
    cls = r.get("classify")
    if cls is None:
        return _missing("the classify stage did not run")
    s = _series(cls.fractions, lambda f: f["spurious"])
    if len(s) < 3:
        return _missing(f"spurious fractions at {len(s)} K; an intermediate K needs three or more")
    ks = list(s)
    peak = max(ks[1:-1], key=lambda k: s[k])
    ok = s[peak] > s[ks[0]] and s[peak] > s[ks[-1]]
    why = (f"the largest intermediate value, K = {peak}: {_f(s[peak])}, is "
           f"{'above' if ok else 'not above'} both ends (K = {ks[0]}: {_f(s[ks[0]])}, "
           f"K = {ks[-1]}: {_f(s[ks[-1]])})")
    return _verdict(ok), "spurious " + _text(s), why, dict(spurious=_json(s), peak_k=peak)


def _pham_critical(r: Mapping) -> Verdict:
    ct = r.get("critical_times")
    if ct is None:
        return _missing("the critical_times stage did not run")
    pooled = {c: [float(t) for vals in ct.tc.get(c, {}).values() for t in vals]
              for c in ("memorized", "generalized")}
    empty = [c for c, v in pooled.items() if not v]
    if empty:
        return _missing(f"no {' and no '.join(empty)} samples had their critical time measured")
    med = {c: float(np.median(v)) for c, v in pooled.items()}
    ok = med["memorized"] > med["generalized"]
    measured = "; ".join(f"{c}: median Tc {_f(med[c])} over {len(pooled[c])} sample(s), all K"
                         for c in pooled)
    why = (f"median Tc of memorized samples {'above' if ok else 'not above'} that of generalized "
           "ones (every K pooled)")
    return _verdict(ok), measured, why, dict(median_tc=med,
                                             samples={c: len(v) for c, v in pooled.items()})


# ------------------------------------------------------------------------------------ Gu et al.
def _gu_ends(r: Mapping) -> Verdict:
    cls = r.get("classify")
    if cls is None:
        return _missing("the classify stage did not run")
    s = _series(cls.ratio, lambda v: v)
    if len(s) < 2:
        return _missing(f"Gu ratios at {len(s)} K; the claim needs two or more")
    ks = list(s)
    lo, hi = s[ks[0]], s[ks[-1]]
    ok_lo, ok_hi = lo >= T["gu_high"], hi <= T["gu_low"]
    why = (f"K = {ks[0]}: {_f(lo)} {'>=' if ok_lo else '<'} {T['gu_high']}; K = {ks[-1]}: "
           f"{_f(hi)} {'<=' if ok_hi else '>'} {T['gu_low']}")
    return _verdict(ok_lo and ok_hi), "ratio " + _text(s), why, dict(ratio=_json(s))


def _gu_emm(r: Mapping) -> Verdict:
    cls = r.get("classify")
    if cls is None:
        return _missing("the classify stage did not run")
    emm = dict(cls.emm or {})
    status = emm.get("status")
    if status in (None, "no ratios"):
        return _missing("no Gu ratios to place the EMM")
    bracket = emm.get("bracket") or [None, None]
    measured = (f"EMM K = {_f(emm.get('k'))}, bracket {bracket}, crossing ~ "
                f"{_f(emm.get('k_crossing'))} ({status})")
    inside = None not in tuple(bracket) and status not in ("below_grid", "above_grid")
    why = ("the ratio crosses 90% between two K of the grid" if inside else
           "the ratio is below 90% at every K" if status == "below_grid" else
           "the ratio is at or above 90% at every K" if status == "above_grid" else
           f"no bracket of two grid K (status {status})")
    numbers = dict(k=emm.get("k"), bracket=list(bracket), k_crossing=_num(emm.get("k_crossing")),
                   status=status)
    return _verdict(inside), measured, why, numbers


def _gu_optimal(r: Mapping) -> Verdict:
    cls = r.get("classify")
    if cls is None:
        return _missing("the classify stage did not run")
    s = _series(cls.ratio_optimal, lambda v: v)
    if not s:
        return _missing("no ratio of the optimal denoiser's samples")
    worst = min(s, key=s.get)
    ok = s[worst] >= T["optimal_min"]
    why = f"lowest ratio {_f(s[worst])} (K = {worst}) {'>=' if ok else '<'} {T['optimal_min']}"
    return _verdict(ok), "optimal ratio " + _text(s), why, dict(ratio_optimal=_json(s))


# --------------------------------------------------------------------------------- Zhang et al.
def _rp_series(r: Mapping, key: str) -> tuple[dict | None, str]:
    rp = r.get("reproducibility")
    if rp is None:
        return None, "the reproducibility stage did not run"
    return _series(rp.rows, lambda row: row[key]), ""


def _zhang_generalization(r: Mapping) -> Verdict:
    s, why = _rp_series(r, "generalization_a")
    if s is None:
        return _missing(why)
    if len(s) < 2:
        return _missing(f"generalization scores at {len(s)} K; the claim needs two or more")
    ks = list(s)
    lo, hi = s[ks[0]], s[ks[-1]]
    ok_lo, ok_hi = lo <= T["near_zero"], hi >= T["near_one"]
    why = (f"K = {ks[0]}: {_f(lo)} {'<=' if ok_lo else '>'} {T['near_zero']}; K = {ks[-1]}: "
           f"{_f(hi)} {'>=' if ok_hi else '<'} {T['near_one']}")
    return (_verdict(ok_lo and ok_hi), "generalization " + _text(s), why,
            dict(generalization=_json(s)))


def _zhang_rp_seeds(r: Mapping) -> Verdict:
    s, why = _rp_series(r, "rp_seeds")
    if s is None:
        return _missing(why)
    if len(s) < 3:
        return _missing(f"RP at {len(s)} K; a minimum in the transition needs three or more")
    ks = list(s)
    low = min(s, key=s.get)
    ends_high = s[ks[0]] >= T["rp_high"] and s[ks[-1]] >= T["rp_high"]
    inner = low not in (ks[0], ks[-1]) and s[low] < min(s[ks[0]], s[ks[-1]])
    why = (f"ends K = {ks[0]}: {_f(s[ks[0]])}, K = {ks[-1]}: {_f(s[ks[-1]])} "
           f"{'both' if ends_high else 'not both'} >= {T['rp_high']}; minimum {_f(s[low])} at "
           f"K = {low}, {'an intermediate K below both ends' if inner else 'not inside the grid'}")
    return (_verdict(ends_high and inner), "RP " + _text(s), why,
            dict(rp_seeds=_json(s), minimum_k=low))


def _zhang_rp_optimal(r: Mapping) -> Verdict:
    s, why = _rp_series(r, "rp_optimal")
    if s is None:
        return _missing(why)
    if len(s) < 2:
        return _missing(f"RP vs the optimal denoiser at {len(s)} K; the claim needs two or more")
    ks = list(s)
    ok_lo, ok_hi = s[ks[0]] >= T["rp_high"], s[ks[-1]] < T["rp_high"]
    why = (f"K = {ks[0]}: {_f(s[ks[0]])} {'>=' if ok_lo else '<'} {T['rp_high']}; K = {ks[-1]}: "
           f"{_f(s[ks[-1]])} {'<' if ok_hi else '>='} {T['rp_high']}")
    return _verdict(ok_lo and ok_hi), "RP vs optimal " + _text(s), why, dict(rp_optimal=_json(s))


def _zhang_jacobian(r: Mapping) -> Verdict:
    jac = r.get("jacobian")
    if jac is None:
        return _missing("the jacobian stage did not run")
    ends, fails = {}, []
    for k in sorted(jac.models, key=int):
        m = jac.models[k]
        pairs = sorted((float(a), float(b)) for a, b in zip(m.get("snr", []), m.get("median", [])))
        if len(pairs) < 2:
            continue
        (s0, v0), (s1, v1) = pairs[0], pairs[-1]
        ends[int(k)] = dict(snr_low=s0, rank_low=v0, snr_high=s1, rank_high=v1)
        if not (v0 <= T["rank_low"] and v1 >= T["rank_high"]):
            fails.append(int(k))
    if not ends:
        return _missing("no model has rank(J)/n at two or more SNR")
    measured = "; ".join(f"K = {k}: {_f(e['rank_low'])} at SNR {_f(e['snr_low'])} -> "
                         f"{_f(e['rank_high'])} at SNR {_f(e['snr_high'])}"
                         for k, e in ends.items())
    why = (f"median rank/n <= {T['rank_low']} at the lowest SNR and >= {T['rank_high']} at the "
           "highest: " + (f"not met at K = {', '.join(map(str, fails))}" if fails
                          else "met at every K"))
    return _verdict(not fails), measured, why, dict(ends={str(k): e for k, e in ends.items()})


# ----------------------------------------------------------------------------- Kadkhodaie et al.
def _kadkhodaie(r: Mapping) -> Verdict:
    dj = r.get("disjoint")
    if dj is None:
        return _missing("the disjoint stage did not run")
    s = _series(dj.rows, lambda row: row["s1_vs_s2"])
    own = _series(dj.rows, lambda row: row["closest_own"])
    if len(s) < 2:
        return _missing(f"disjoint-half similarity at {len(s)} K (K <= half the pool); the claim "
                        "needs two or more")
    rises, why = _trend(s, +1)
    top = list(s)[-1]
    above = top in own and s[top] > own[top]
    why += (f"; at K = {top}: {_f(s[top])} {'>' if above else '<='} closest own "
            f"{_f(own.get(top))}")
    measured = f"s1_vs_s2 {_text(s)}; closest own {_text(own)}"
    return (_verdict(rises and above), measured, why,
            dict(s1_vs_s2=_json(s), closest_own=_json(own)))


# ------------------------------------------------------------- optional sections (Bonnaire, Kamb)
def _taus(r: Mapping) -> tuple[dict | None, dict | None, str]:
    sec = r.get("training_time")
    if sec is None:
        return None, None, ("the optional training_time stage did not run (add it to the study's "
                            "stages)")
    data = sec.data if isinstance(sec.data, Mapping) else {}
    tau = data.get("tau")
    if not isinstance(tau, Mapping):
        return None, None, "the training_time section holds no tau_mem per K"
    crossed = {int(t["k"]): float(t["tau"]) for t in tau.values()
               if isinstance(t, Mapping) and t.get("status") == "crossed" and t.get("tau")}
    return dict(sorted(crossed.items())), data.get("fit"), ""


def _bonnaire_grows(r: Mapping) -> Verdict:
    taus, _, why = _taus(r)
    if taus is None:
        return _missing(why)
    if len(taus) < 2:
        return _missing(f"{len(taus)} K crossed the f_mem level; the claim needs two or more")
    ks, v = list(taus), list(taus.values())
    drops = [(ks[i], ks[i + 1]) for i in range(len(v) - 1) if v[i + 1] < v[i]]
    ok = not drops and v[-1] > v[0]
    why = ("tau_mem never falls and is larger at the largest K" if ok else
           f"tau_mem falls from K = {drops[0][0]} to K = {drops[0][1]}" if drops else
           "tau_mem is not larger at the largest K")
    return _verdict(ok), "tau_mem " + _text(taus), why, dict(tau=_json(taus))


def _bonnaire_exponent(r: Mapping) -> Verdict:
    taus, fit, why = _taus(r)
    if taus is None:
        return _missing(why)
    fit = fit if isinstance(fit, Mapping) else {}
    alpha, lo, hi = (_num(fit.get(k)) for k in ("alpha", "alpha_lo", "alpha_hi"))
    if lo is None or hi is None:
        return _missing("no bootstrap interval of the exponent (fewer than two K crossed, or no "
                        "replicate where every K crossed)")
    ok = lo <= 1.0 <= hi
    why = f"the 95% interval [{_f(lo)}, {_f(hi)}] {'contains' if ok else 'excludes'} 1"
    return (_verdict(ok), f"alpha = {_f(alpha)} [{_f(lo)}, {_f(hi)}]", why,
            dict(alpha=alpha, alpha_lo=lo, alpha_hi=hi))


def _kamb(r: Mapping) -> Verdict:
    sec = r.get("machines")
    if sec is None:
        return _missing("the optional machines stage did not run (add it to the study's stages)")
    rows = (sec.data if isinstance(sec.data, Mapping) else {}).get("rows")
    if not isinstance(rows, Mapping):
        return _missing("the machines section holds no per-K agreement rows")
    by_k = {row["k"]: row for row in rows.values() if isinstance(row, Mapping) and "k" in row}
    compared = sorted({m for row in by_k.values() for m in (row.get("machines") or {})})
    if compared and BOUNDARY_MACHINE not in compared:
        return _missing(f"the machines stage compared {', '.join(compared)}, not "
                        f"{BOUNDARY_MACHINE} (the boundary-aware local machine)")
    s = _series(by_k, lambda row: row["machines"][BOUNDARY_MACHINE]["r"])
    if len(s) < 2:
        return _missing(f"{BOUNDARY_MACHINE} agreement at {len(s)} K; the claim needs two or more")
    ok, why = _trend(s, +1)
    return _verdict(ok), f"r {BOUNDARY_MACHINE} " + _text(s), why, dict(r=_json(s))


CLAIMS = (
    ("pham_memorized_falls", "the memorized fraction falls with K", _pham_memorized),
    ("pham_spurious_peak", "the spurious fraction peaks at an intermediate K, above both ends",
     _pham_spurious),
    ("pham_critical_times", "memorized samples have a later median critical time than generalized "
     "ones", _pham_critical),
    ("gu_ratio_ends", f"ratio >= {T['gu_high']} at the smallest K and <= {T['gu_low']} at the "
     "largest", _gu_ends),
    ("gu_emm_inside", "the EMM (ratio crossing 90%) lies inside the grid", _gu_emm),
    ("gu_optimal", f"the optimal denoiser memorizes (ratio >= {T['optimal_min']} at every K)",
     _gu_optimal),
    ("zhang_generalization", f"the generalization score rises from near 0 (<= {T['near_zero']}) "
     f"to near 1 (>= {T['near_one']})", _zhang_generalization),
    ("zhang_rp_seeds", f"RP between seeds is high (>= {T['rp_high']}) at both ends, lowest in "
     "the transition", _zhang_rp_seeds),
    ("zhang_rp_optimal", f"RP model vs optimal is high (>= {T['rp_high']}) only at small K",
     _zhang_rp_optimal),
    ("zhang_jacobian", f"rank(J)/n is low (<= {T['rank_low']}) at low SNR and rises (>= "
     f"{T['rank_high']}) at high SNR", _zhang_jacobian),
    ("kadkhodaie_disjoint", "the disjoint halves' similarity rises with K and beats each sample's "
     "closest own training image at the largest K", _kadkhodaie),
    ("bonnaire_tau_grows", "tau_mem grows with K", _bonnaire_grows),
    ("bonnaire_exponent", "the exponent of tau_mem ~ K^alpha is 1 (its interval contains 1)",
     _bonnaire_exponent),
    ("kamb_bbels_rises", "the boundary-aware local machine's agreement with the network rises "
     "with K", _kamb),
)


def claims(results: Mapping[str, res.Result], ks: Sequence[int], quick: bool) -> res.ClaimsResult:
    """Every claim of `CLAIMS` checked on `results` ({stage: result}, as report.json holds them)."""
    rows = []
    for cid, text, check in CLAIMS:
        verdict, measured, reason, numbers = check(results)
        if quick and cid not in QUICK_OK and verdict != "not measured":
            reason = (f"the --quick preset ({len(ks)} K, short training) cannot show this; its "
                      f"numbers alone give '{verdict}' ({reason})")
            verdict = "not measured at --quick"
        rows.append(res.Claim(id=cid, source=SOURCES[cid], claim=text, measured=measured or "-",
                              verdict=verdict, reason=reason, numbers=numbers))
    found = res.ClaimsResult(ks=tuple(int(k) for k in ks), quick=bool(quick),
                             tolerances=dict(TOLERANCES), rows=tuple(rows))
    return res.ClaimsResult.from_json(found.to_json())   # exactly what report.json reads back


def section(found: res.ClaimsResult) -> dict:
    """The report's section: {"title", "text", "rows", "columns"} (diffmem.report renders it)."""
    counts = {v: sum(c.verdict == v for c in found.rows) for v in res.VERDICTS}
    tally = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    text = (f"Each claim checked on this study's numbers, in the sections below ({tally}). "
            "Thresholds: "
            + ", ".join(f"{k} = {v}" for k, v in found.tolerances.items())
            + ". 'Falls / rises with K': no step between neighbouring K against the trend by more "
            f"than {found.tolerances.get('monotone')}, and the largest K beyond the smallest.")
    if found.quick:
        text += (" --quick preset: a claim it cannot show is 'not measured at --quick', whatever "
                 "its numbers say.")
    rows = [dict(source=c.source, claim=c.claim, measured=_cell(c.measured), verdict=c.verdict,
                 why=_cell(c.reason)) for c in found.rows]
    return dict(title=TITLE, text=text, rows=rows,
                columns=["source", "claim", "measured", "verdict", "why"])


def markdown(found: res.ClaimsResult) -> str:
    """The section as Markdown, with its heading."""
    return f"## {TITLE}\n\n" + report.section_markdown(section(found))


def _cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")
