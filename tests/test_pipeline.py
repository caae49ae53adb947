"""diffmem.studies.pipeline: typed stage results round-trip through JSON (int K keys), the one stage
cache skips a stage done with the same settings and reruns it and its dependants otherwise;
report.py renders Markdown with markdown-it-py; builders.load_pool loads a data config's pool once
per process."""
import dataclasses
import json
import os

import numpy as np
import pytest

from diffmem import builders, configlib, report
from diffmem.data import pools
from diffmem.studies import k_sweep, k_sweep_results as res
from diffmem.studies.pipeline import Cache, Result, Stage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Numbers(Result):
    by_k: dict[int, float | None]
    ks: tuple[int, ...] = ()
    files: tuple[str, ...] = ()


def test_results_round_trip_with_int_k():
    r = Numbers(by_k={4: 0.5, 16: None}, ks=(4, 16))
    j = r.to_json()
    assert j == {"by_k": {"4": 0.5, "16": None}, "ks": [4, 16], "files": []}
    assert Numbers.from_json(json.loads(json.dumps(j))) == r
    dj = res.DisjointResult(pool_size=10, rows={4: {"s1_vs_s2": 0.1}}, skipped_ks=(8,),
                            sides={"S1": "."})
    assert res.from_report_json(res.report_json({"disjoint": dj})) == {"disjoint": dj}
    # Every stage of the study names its result class, and report.json's reader knows them all.
    assert {s.name: s.result for s in k_sweep.STAGE_LIST}.items() <= res.RESULTS.items()


def test_cache_skips_done_stages_and_reruns_dependants(tmp_path):
    calls = []
    settings = {"a": 1}

    def make(name):
        def run(ctx):
            calls.append(name)
            (tmp_path / f"{name}.txt").write_text(name)
            return Numbers(by_k={len(calls): 1.0}, files=(f"{name}.txt",))
        return run

    stages = [Stage("up", make("up"), Numbers, settings=lambda ctx: dict(settings)),
              Stage("down", make("down"), Numbers, dependencies=("up",))]

    def run_all():
        cache = Cache(str(tmp_path / "stages"), str(tmp_path), stages)
        cache.load()
        return [cache.run(s.name, None)[1] for s in stages], cache

    assert run_all()[0] == ["computed", "computed"]
    statuses, cache = run_all()
    assert statuses == ["skipped", "skipped"] and calls == ["up", "down"]
    assert cache.result("up") == Numbers(by_k={1: 1.0}, files=("up.txt",))   # read back typed
    os.remove(tmp_path / "down.txt")   # a missing output file: that stage reruns
    assert run_all()[0] == ["skipped", "computed"]
    settings["a"] = 2                   # new settings: the stage and everything downstream rerun
    assert run_all()[0] == ["computed", "computed"]
    (tmp_path / "stages" / "up.json").write_text("{not json")   # an unreadable record: rerun
    assert run_all()[0] == ["computed", "computed"]
    bad = Stage("bad", lambda ctx: {"not": "a result"}, Numbers)
    with pytest.raises(TypeError, match="returned dict"):
        Cache(str(tmp_path / "stages"), str(tmp_path), [bad]).run("bad", None)


def test_markdown_pages(tmp_path):
    html = report.markdown_to_html("Agreement `r2` <b>\n\n![x](x.png)\n\n"
                                   "| K | r2 |\n|---|---|\n| 4 | 0.5 |")
    assert "<code>r2</code>" in html and "&lt;b&gt;" in html and "<td>0.5</td>" in html
    assert "<img" not in html   # figures are embedded by the page, not linked
    import matplotlib.pyplot as plt
    fig_path = str(tmp_path / "f.png")
    plt.figure(figsize=(1, 1)).savefig(fig_path)
    plt.close("all")
    sections = [dict(title="T", text="some *text*", rows=[dict(K=4, v=0.25)], columns=["K", "v"],
                     figures=[fig_path])]
    page = open(report.write_sections_html(str(tmp_path / "r.html"), "Title", sections)).read()
    assert "<em>text</em>" in page and "<td>0.25</td>" in page
    assert page.count('src="data:image/png;base64,') == 1
    md = open(report.write_sections_markdown(str(tmp_path / "r.md"), "Title", sections)).read()
    assert "## T" in md and "| 4 | 0.25 |" in md and "![f.png](f.png)" in md


def test_pool_loads_once_per_data_config(monkeypatch):
    c = configlib.load_config_file(os.path.join(REPO, "configs/digits.py") + ":k=8")
    loads = []
    real = pools._load_pool
    monkeypatch.setattr(pools, "_load_pool", lambda config: loads.append(1) or real(config))
    monkeypatch.setattr(pools, "_POOLS", {})
    a = builders.load_pool(c)
    c.data.k = 32   # K does not change the pool
    assert builders.load_pool(c) is a and len(loads) == 1
    assert not a.flags.writeable
    c.data.image_size = 4   # another data config: another pool
    assert builders.load_pool(c).shape[1:3] == (4, 4) and len(loads) == 2
    np.testing.assert_array_equal(builders.load_pool(c), builders.load_pool(c))


def test_reuse_one_output_file_by_its_settings(tmp_path):
    from diffmem.errors import OutputExistsError
    npz, js = str(tmp_path / "a.npz"), str(tmp_path / "a.json")
    assert report.reuse(npz, {"n": 1}) is None                               # nothing yet
    report.write_npz(npz, x=np.arange(3), settings=np.str_(json.dumps({"n": 1, "s": [1, 2]})))
    report.write_json(js, {"settings": {"n": 1}, "row": 5})
    np.testing.assert_array_equal(report.reuse(npz, {"n": 1, "s": (1, 2)})["x"], np.arange(3))
    assert report.reuse(js, {"n": 1})["row"] == 5
    with pytest.raises(OutputExistsError, match=r"n: 1 -> 2"):
        report.reuse(js, {"n": 2})
    assert report.reuse(js, {"n": 2}, overwrite=True) is None                # recompute and replace
    open(js, "w").write("{broken")
    assert report.reuse(js, {"n": 1}) is None                                # unreadable: recompute
