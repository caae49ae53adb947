"""Memorization vs training time (diffmem.studies.training_time) and the trainer's f_mem monitor
(diffmem.monitor)."""
import json
import os

import jax
import numpy as np
import pytest

from diffmem import builders, checkpoint, configlib, monitor, report, sampling, stats, train
from diffmem import workdir as wdlib
from diffmem.metrics import neighbours
from diffmem.studies import training_time as tt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_circle(arg="k=2+9", **over):
    c = configlib.load_config_file(os.path.join(REPO, "configs/circle.py") + ":" + arg)
    c.model.num_layers, c.model.hidden, c.model.embed = 2, 16, 16
    c.steps, c.steps_per_call, c.log_every, c.ckpt_every = 40, 10, 20, 20
    # the monitor's and the study's Euler-Maruyama steps: compiles and runs fast
    c.sample.num_steps = 20
    for k, v in over.items():
        configlib.apply_override(c, k, str(v))
    return c


def same_bits(a, b):
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


# ---------------------------------------------------------------------------------- pure statistics
def _curve(steps, tau, slope=0.1):
    """f linear in log step through (tau, 0.5), clipped to [0, 1]: the log-step interpolation is
    exact."""
    return np.clip(0.5 + slope * (np.log(steps) - np.log(tau)), 0.0, 1.0)


def test_crossing_and_fits_recover_known_answers():
    steps = np.geomspace(1, 1e6, 25).round().astype(int)
    steps = np.unique(steps)
    ks = np.array([4, 16, 64, 256, 1024])
    for c, alpha in ((3.0, 1.0), (40.0, 0.5)):
        taus = [tt.crossing_step(steps, _curve(steps, c * k ** alpha), 0.5) for k in ks]
        assert all(s == "crossed" for _, s in taus)
        np.testing.assert_allclose([t for t, _ in taus], c * ks ** alpha, rtol=1e-9)
        fit = tt.fit_tau(ks, [t for t, _ in taus])
        np.testing.assert_allclose(fit["alpha"], alpha, rtol=1e-9)
        np.testing.assert_allclose(fit["c_free"], c, rtol=1e-8)
        if alpha == 1.0:
            np.testing.assert_allclose(fit["c"], c, rtol=1e-9)
            assert fit["alpha_se"] < 1e-8
    # a level reached at the first step, and one never reached
    assert tt.crossing_step([10, 100], [0.7, 0.9], 0.5) == (10.0, "at_first")
    assert tt.crossing_step([10, 100], [0.1, 0.2], 0.5) == (None, "never")
    # the interpolation is in log step: halfway in f is the geometric mean in steps
    np.testing.assert_allclose(tt.crossing_step([10, 1000], [0.0, 1.0], 0.5)[0], 100.0)
    # fit with bootstrap replicates: intervals contain the point estimates
    reps = np.exp(np.log(3.0 * ks)[None] + np.random.default_rng(0).normal(0, 0.1, (200, len(ks))))
    fit = tt.fit_tau(ks, 3.0 * ks, reps)
    assert fit["c_lo"] < 3.0 < fit["c_hi"] and fit["alpha_lo"] < 1.0 < fit["alpha_hi"]
    assert fit["replicates_used"] == 200


def test_bootstrap_is_deterministic_and_covers():
    flags = (np.random.default_rng(1).random(150) < 0.4).astype(float)
    a, b = (stats.bootstrap(flags, num=500, seed=[0, 9, 100]),
            stats.bootstrap(flags, num=500, seed=[0, 9, 100]))
    assert (a["lo"], a["hi"], a["se"]) == (b["lo"], b["hi"], b["se"])
    assert (
        stats.bootstrap(flags, num=500, seed=1)["replicates"].tolist() != a["replicates"].tolist()
    )
    assert a["lo"] <= a["mean"] <= a["hi"]
    # coverage of the true p by the 95% interval over independent data sets
    rng, p, hits, reps = np.random.default_rng(2), 0.3, 0, 300
    for i in range(reps):
        r = stats.bootstrap((rng.random(200) < p).astype(float), num=400, seed=i)
        hits += r["lo"] <= p <= r["hi"]
    assert 0.90 <= hits / reps <= 0.99, hits / reps
    # the standard error matches the binomial one
    np.testing.assert_allclose(stats.bootstrap(flags, num=4000, seed=3)["se"],
                               np.sqrt(flags.mean() * (1 - flags.mean()) / len(flags)), rtol=0.1)


def test_snapshot_schedule_is_log_spaced_multiples():
    s = tt.snapshot_schedule(100_000, 11, multiple=100)
    assert s[0] == 100 and s[-1] == 100_000 and all(v % 100 == 0 for v in s)
    assert list(s) == sorted(set(s))
    ratios = np.diff(np.log(s))
    # 10^3 in 10 even steps in log
    np.testing.assert_allclose(ratios, np.log(10) * 3 / 10, rtol=0.1)
    assert tt.snapshot_schedule(40, 12, multiple=10) == (10, 20, 30, 40)  # rounding merges repeats
    assert tt.snapshot_schedule(45, 3, multiple=10)[-1] == 40
    with pytest.raises(Exception, match="no multiple"):
        tt.snapshot_schedule(5, 3, multiple=10)
    c = tt.with_snapshots(tiny_circle(steps=1000), 4)
    # geomspace(10, 1000, 4) in multiples of 10
    assert tuple(c.monitor.snapshots) == (10, 50, 220, 1000)
    bad = tiny_circle()
    bad.monitor.snapshots = (15,)
    with pytest.raises(configlib.ConfigError, match="multiples of config.steps_per_call"):
        builders.snapshot_steps(bad)


def test_nearest_two_is_exact_and_copies_are_memorized():
    rng = np.random.default_rng(0)
    train_set, x = rng.normal(size=(7, 3, 2)), rng.normal(size=(20, 3, 2))
    d = np.linalg.norm(x.reshape(20, 1, -1) - train_set.reshape(1, 7, -1), axis=2)
    np.testing.assert_allclose(neighbours.nearest(x, train_set, 2).distances, np.sort(d, 1)[:, :2],
                               rtol=1e-12)
    with pytest.raises(ValueError, match="needs >= 2 training examples"):
        monitor.memorized(x, train_set[:1])
    assert monitor.memorized(train_set + 1e-6, train_set).all()
    mid = (train_set[:1] + train_set[1:2]) / 2  # equidistant from two training points: d1/d2 = 1
    assert not monitor.memorized(mid, train_set[:2]).any()


# --------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_snapshots_kept_fmem_per_snapshot_monitor_agrees_and_rerun_skips(
    tmp_path, one_device, monkeypatch
):
    """A tiny K = 8 + 9 sweep keeps its log-spaced snapshots (beyond keep_checkpoints = 2), the
    study measures f_mem at each with the snapshot's own EMA weights (= the registry sampler on
    Workdir.model(name, step)), the monitor's f_mem/<K> lines equal the study's at the same steps, a
    rerun recomputes nothing, and the monitor changes no parameter bit."""
    # one vmapped group: one compile
    config = tt.with_snapshots(tiny_circle("k=8+9", batch_size=8), 4)
    config.monitor.update(every=20, num_samples=32)
    off = tiny_circle("k=8+9", batch_size=8)
    off.monitor.snapshots = config.monitor.snapshots
    wd = str(tmp_path / "run")
    states = train.train(config, wd, progress=False)
    plain = train.train(off, str(tmp_path / "off"), progress=False)
    for name in ("8", "9"):
        assert same_bits(states[name].params, plain[name].params)
        assert same_bits(states[name].ema_params, plain[name].ema_params)
        assert sorted(checkpoint.manager(wd, name, None).all_steps()) == [10, 20, 30, 40]

    section = tt.study_section(wd, num_samples=32, num_bootstrap=200, level=0.5, progress=False)
    curves = section["data"]["curves"]
    assert curves["9"]["steps"] == [10, 20, 30, 40] and set(curves) == {"8", "9"}
    assert all(os.path.exists(f) for f in section["figures"]) and "tau_mem" in section["markdown"]
    rows = report.read_jsonl(os.path.join(wd, "metrics.jsonl"))
    for name in ("8", "9"):
        logged = {r["step"]: r[f"f_mem/{name}"] for r in rows if f"f_mem/{name}" in r}
        assert sorted(logged) == [20, 40]
        for step, f in logged.items():
            assert f == curves[name]["f_mem"][curves[name]["steps"].index(step)]
    # the stored samples are the registry sampler's on the snapshot's EMA weights
    w = wdlib.Workdir(wd)
    stored = report.read_npz(w.study_output_dir("training_time", "9", "step_000000020.npz"))
    m = w.model("9", step=20)
    settings = json.loads(str(stored["settings"]))
    run = sampling.get_sampler("em", m).build(
        m, num_steps=settings["num_steps"], eps=settings["eps"]
    )
    np.testing.assert_allclose(
        stored["samples"][:8],
        np.asarray(run(stored["seeds"][:8].astype(np.uint32))),
        # params as arguments vs constants: float32 rounding
        rtol=0,
        atol=1e-4,
    )
    assert float(stored["f_mem"]) == float(np.mean(stored["d1"] / stored["d2"] < 1 / 3))

    def no_sampling(*a, **k):
        raise AssertionError("a finished snapshot was sampled again")
    monkeypatch.setattr(monitor.ParamsSampler, "sample", no_sampling)
    again = tt.study_section(wd, num_samples=32, num_bootstrap=200, level=0.5, progress=False)
    assert again["data"]["curves"] == curves


@pytest.mark.slow
def test_monitor_stops_at_level_and_resumes_exactly(tmp_path, one_device, monkeypatch):
    """With a stand-in f_mem (0 before step 40, 1 from it) and level 0.9 the run stops at step 40
    with a checkpoint and a recorded reason; a run cut at 30 and resumed stops at the same step with
    the same bits; a kill after the stop's checkpoint but before its record resumes to the same
    stop; a rerun does nothing."""
    monkeypatch.setattr(
        monitor.Monitor, "f_mem", lambda self, spec, params, step: float(step >= 40)
    )

    def cfg(steps):
        c = tiny_circle("k=9", steps=steps, ckpt_every=10)
        c.monitor.update(every=10, level=0.9)
        return c

    a = str(tmp_path / "a")
    full = train.train(cfg(100), a, progress=False)
    assert int(full["9"].step) == 40 and checkpoint.latest_step(a, "9") == 40
    stops = json.load(open(monitor.stops_path(a)))
    assert (
        stops["9"]["step"] == 40 and "f_mem = 1.0000 >= monitor.level = 0.9" in stops["9"]["reason"]
    )
    rows = report.read_jsonl(os.path.join(a, "metrics.jsonl"))
    assert [(r["step"], r["f_mem/9"]) for r in rows if "f_mem/9" in r] == [(10, 0.0), (20, 0.0),
                                                                           (30, 0.0), (40, 1.0)]
    assert any(r.get("monitor_stop/9") == 40 for r in rows)

    b = str(tmp_path / "b")
    train.train(cfg(30), b, progress=False)
    resumed = train.train(cfg(100), b, progress=False)
    assert int(resumed["9"].step) == 40 and same_bits(resumed["9"].params, full["9"].params)

    os.remove(monitor.stops_path(b))  # as if killed between the stop's checkpoint and its record
    again = train.train(cfg(100), b, progress=False)
    assert int(again["9"].step) == 40 and same_bits(again["9"].params, full["9"].params)
    rows = report.read_jsonl(os.path.join(b, "metrics.jsonl"))
    # each evaluation logged once
    assert [r["step"] for r in rows if "f_mem/9" in r] == [10, 20, 30, 40]

    before = open(os.path.join(b, "metrics.jsonl")).read()
    train.train(cfg(100), b, progress=False)  # stopped: nothing to do
    assert (
        open(os.path.join(b, "metrics.jsonl")).read() == before
        and checkpoint.latest_step(b, "9") == 40
    )


def test_monitor_config_errors_name_the_rule():
    c = tiny_circle()
    c.monitor.update(every=15)
    with pytest.raises(configlib.ConfigError, match="multiple of config.steps_per_call"):
        builders.monitor_settings(c)
    c.monitor.update(every=10, metric="lpips")
    with pytest.raises(configlib.ConfigError, match="valid: \\['pixel'\\]"):
        builders.monitor_settings(c)
    c.monitor.update(every=0)
    assert builders.monitor_settings(c) is None
