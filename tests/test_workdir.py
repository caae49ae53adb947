"""diffmem.workdir: the one model record (trained toy networks and the empirical optimal denoiser,
from a workdir or a config alone), EMA-only restore, recorded K-subsets (a changed dataset is an
error), config.json checks, the sampler registry, and split sampling jobs (sequential or concurrent)
equal to one job."""
import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import builders, checkpoint, configlib, devices, generate, report, sampling, train
from diffmem.errors import InputError
from diffmem.studies import memorization as mm
from diffmem.workdir import (DatasetChangedError, Workdir, config_differences, optimal_model,
                             write_shard)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits(k="16"):
    return configlib.load_config_file(os.path.join(REPO, "configs/digits.py") + f":k={k}")


def one_mesh():
    return devices.data_mesh(jax.devices()[:1])


def test_optimal_model_from_a_config_alone_is_the_brute_force_posterior_mean(x64):
    m = optimal_model(digits(), "16")
    assert (m.name, m.k, m.kind, m.step, m.shape, m.sde) == ("16", 16, "optimal", -1, (8, 8, 1),
                                                             None)
    y = m.train_data.reshape(16, -1).astype(np.float64)
    x = np.random.default_rng(0).normal(0, 1, (3, 64))
    sigma = np.array([0.3, 1.0, 5.0])
    logits = -((x[:, None] - y[None]) ** 2).sum(-1) / (2 * sigma[:, None] ** 2)
    w = np.exp(logits - logits.max(1, keepdims=True))
    want = (w / w.sum(1, keepdims=True)) @ y  # E[y | x] under the empirical distribution
    xs = jnp.asarray(x.reshape(3, 8, 8, 1))
    got = np.asarray(m.denoiser(xs, jnp.asarray(sigma))).reshape(3, -1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    score = np.asarray(m.score(xs, jnp.asarray(sigma))).reshape(3, -1)
    np.testing.assert_allclose(score, (want - x) / sigma[:, None] ** 2, rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match=r"\['16'\]"):
        optimal_model(digits(), "17")


def tiny_circle():
    c = configlib.load_config_file(os.path.join(REPO, "configs/circle.py") + ":k=9,steps=20")
    c.model.hidden, c.model.embed, c.model.num_layers = 16, 8, 2
    c.steps_per_call, c.log_every, c.ckpt_every = 10, 10, 10
    return c


@pytest.fixture(scope="module")
def circle(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("circle"))
    states = train.train(tiny_circle(), path, mesh=one_mesh(), progress=False)
    return path, states["9"]


def test_toy_model_is_the_trained_score_as_a_denoiser_from_ema_weights_alone(circle, monkeypatch):
    path, state = circle
    # Reading a model restores the "ema_params" item alone, never the whole training state.
    monkeypatch.setattr(
        checkpoint, "restore", lambda *a, **k: pytest.fail("training state restored")
    )
    m = Workdir(path).model("9")
    assert (m.k, m.kind, m.step, m.shape) == (9, "trained", 20, (2,))
    net = builders.build_model(tiny_circle(), (2,))
    x = jnp.asarray(np.random.default_rng(1).normal(0, 1, (5, 2)), jnp.float32)
    t = jnp.asarray([0.01, 0.1, 0.3, 0.6, 1.0], jnp.float32)
    want = net.apply(state.ema_params, x, t)
    # the EMA weights, exactly
    np.testing.assert_array_equal(np.asarray(m.time_score(x, t)), np.asarray(want))
    sigma = m.sde.sigma(t)  # VE: s(x, t) = (D(x, sigma(t)) - x) / sigma(t)^2
    np.testing.assert_allclose(
        np.asarray(m.score(x, sigma)), np.asarray(want), rtol=2e-4, atol=1e-4
    )
    np.testing.assert_allclose(np.asarray(m.denoiser(x, sigma)),
                               np.asarray(x + sigma[:, None] ** 2 * want), rtol=1e-5, atol=1e-6)
    assert m.sigma_min == pytest.approx(float(m.sde.sigma(1e-5))) and m.sigma_max == pytest.approx(
        1.0
    )
    with pytest.raises(Exception, match="step 7"):
        Workdir(path).model("9", step=7)


def test_k_subsets_are_recorded_and_a_changed_dataset_is_an_error(circle, monkeypatch):
    path, _ = circle
    wd = Workdir(path)
    stored = report.read_npz(wd.subset_path(9))
    [spec] = wd.specs()
    np.testing.assert_array_equal(stored["indices"], spec.indices)
    np.testing.assert_array_equal(spec.data, builders.model_specs(tiny_circle())[0].data)
    real = builders.load_pool

    # the same pool with the rows of the training set shuffled: another training set
    def moved(config):
        pool = real(config).copy()
        pool[spec.indices] = pool[spec.indices[::-1]]
        return pool
    monkeypatch.setattr(builders, "load_pool", moved)
    with pytest.raises(DatasetChangedError, match=os.path.join("subsets", "9.npz")):
        Workdir(path).specs()
    monkeypatch.setattr(builders, "load_pool", real)
    # A workdir written before subsets were recorded: the subset is recomputed from the config.
    old = os.path.join(path, "old")
    os.makedirs(old)
    (open(os.path.join(old, "config.json"), "w")).write(configlib.to_json(tiny_circle()))
    np.testing.assert_array_equal(Workdir(old).specs()[0].data, spec.data)


def test_config_json_rerun_keys_and_corruption(tmp_path):
    old = {"steps": 10, "sample": {"num": 1}, "optim": {"lr": 1e-3}, "data": {"k": 9}}
    assert config_differences(old, dict(old, steps=20, sample={"num": 5})) == []
    assert config_differences(old, dict(old, steps=20), keep_steps=True) == ["steps"]
    assert config_differences(old, dict(old, optim={"lr": 2e-3})) == ["optim"]
    # A schedule in images is extended through its duration; its other fields shape training.
    sched = dict(old, schedule={"duration_mimg": 1.0, "ema_halflife_mimg": 0.5})
    longer = dict(sched, schedule={"duration_mimg": 2.0, "ema_halflife_mimg": 0.5})
    assert config_differences(sched, longer) == []
    assert config_differences(sched, longer, keep_steps=True) == ["schedule"]
    assert config_differences(
        sched, dict(sched, schedule={"duration_mimg": 1.0, "ema_halflife_mimg": 1.0})
    ) == ["schedule"]
    wd = Workdir(str(tmp_path))
    wd.write_config(digits())
    with pytest.raises(configlib.ConfigError, match=r"differs in \['data'\]"):
        Workdir(str(tmp_path)).write_config(digits("32"))
    open(wd.config_path, "w").write('{"seed": 0, "data": {"k"')  # cut short
    with pytest.raises(
        configlib.ConfigError, match="config.json is corrupt or truncated.*delete config.json"
    ):
        Workdir(str(tmp_path)).config


def test_sampler_registry_feeds_config_checks_and_the_sampling_stage(tmp_path, monkeypatch):
    def zeros(model, *, level):
        """every sample is `level` (a test sampler)"""
        return lambda seeds: jnp.full((seeds.shape[0],) + model.shape, level, jnp.float32)

    monkeypatch.setitem(
        sampling.SAMPLERS, "zeros", sampling.Sampler("zeros", zeros, {"level": 0.25})
    )
    c = digits()
    c.sample.sampler = "zeros"
    configlib.check(c, train.RULES)
    c.sample.sampler = "nope"
    with pytest.raises(configlib.ConfigError, match="'zeros'"):
        configlib.check(c, train.RULES)
    [path] = generate.sample_workdir(str(tmp_path), np.arange(3), "zeros", model="optimal",
                                     config=digits(), mesh=one_mesh(), progress=False)
    out = Workdir(str(tmp_path)).read_samples("16", "optimal")
    assert (
        np.all(out["samples"] == 0.25)
        and out["settings"]["level"] == 0.25
        and out["sampler"] == "zeros"
    )
    with pytest.raises(ValueError, match="integrates an SDE"):
        generate.sample_workdir(str(tmp_path), np.arange(3), "em", model="optimal", progress=False)


KW = dict(sampler="edm_euler", model="optimal", num_steps=3, batch=4, progress=False)


def test_split_jobs_sequential_or_concurrent_equal_one_job(tmp_path):
    """Disjoint --seeds jobs into one workdir all succeed and their union is bit for bit the one-job
    set."""
    config, mesh = digits(), one_mesh()
    one = str(tmp_path / "one")
    generate.sample_workdir(one, np.arange(12), config=config, mesh=mesh, **KW)
    whole = Workdir(one).read_samples("16", "optimal")
    seq = str(tmp_path / "seq")
    generate.sample_workdir(seq, np.arange(0, 5), config=config, mesh=mesh, **KW)
    generate.sample_workdir(seq, np.arange(5, 12), config=config, mesh=mesh, **KW)
    conc = str(tmp_path / "conc")
    # create the workdir
    generate.sample_workdir(conc, np.arange(0, 1), config=config, mesh=mesh, **KW)
    errors = []

    def job(seeds):
        try:
            generate.sample_workdir(conc, seeds, config=config, mesh=mesh, **KW)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=job, args=(s,)) for s in (np.arange(1, 7), np.arange(7, 12))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    for path, shards in ((seq, 2), (conc, 3)):
        got = Workdir(path).read_samples("16", "optimal")
        assert len(got["files"]) == shards
        np.testing.assert_array_equal(got["seeds"], np.arange(12))
        np.testing.assert_array_equal(got["samples"], whole["samples"])
        assert got["settings"] == whole["settings"]
    # A job asking for seeds the set holds already samples nothing.
    before = sorted(os.listdir(Workdir(seq).samples_dir("16", "optimal")))
    generate.sample_workdir(seq, np.arange(3, 9), config=config, mesh=mesh, **KW)
    assert sorted(os.listdir(Workdir(seq).samples_dir("16", "optimal"))) == before
    # A later stage reads the union: the classification of the split set is the one-job
    # classification.
    pixel = dict(metric="pixel", delta_m=0.5, delta_s=0.5, figures=False, log=None, mesh=mesh)
    a, b = mm.run(one, **pixel)["optimal"]["16"], mm.run(seq, **pixel)["optimal"]["16"]
    assert a["num_samples"] == b["num_samples"] == 12 and a["counts"] == b["counts"]
    arrays = [report.read_npz(Workdir(w).classify_paths("16", "optimal")[0]) for w in (one, seq)]
    for key in arrays[0]:
        np.testing.assert_array_equal(arrays[0][key], arrays[1][key])


def test_overlaps_conflicts_and_corrupt_shards(tmp_path):
    w = str(tmp_path)
    config, mesh = digits(), one_mesh()
    generate.sample_workdir(w, np.arange(4), config=config, mesh=mesh, **KW)
    wd = Workdir(w)
    first = wd.read_samples("16", "optimal")
    # A shard overlapping in seeds with the same settings: each seed kept once.
    write_shard(wd.shard_path("16", "optimal", None, np.arange(2, 6)), np.zeros((4, 8, 8, 1)),
                np.arange(2, 6), first["settings"])
    both = wd.read_samples("16", "optimal")
    np.testing.assert_array_equal(both["seeds"], np.arange(6))
    np.testing.assert_array_equal(both["samples"][:4], first["samples"])
    # Other settings: refused (never mixed), replaced with overwrite.
    with pytest.raises(FileExistsError, match=r"num_steps: 3 -> 4.*--overwrite"):
        generate.sample_workdir(
            w, np.arange(4, 8), config=config, mesh=mesh, **dict(KW, num_steps=4)
        )
    extra = wd.shard_path("16", "optimal", None, np.arange(8, 9))
    write_shard(
        extra, np.zeros((1, 8, 8, 1)), np.arange(8, 9), dict(first["settings"], num_steps=9)
    )
    with pytest.raises(InputError, match=r"different settings \(num_steps: 3 -> 9\)"):
        wd.read_samples("16", "optimal")
    # A truncated shard names itself and what to do; --overwrite replaces what cannot be read.
    with open(extra, "wb") as f:
        f.write(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match=r"8-8_.*npz is corrupt or truncated.*--overwrite"):
        generate.sample_workdir(w, np.arange(4), config=config, mesh=mesh, **KW)
    generate.sample_workdir(w, np.arange(4), config=config, mesh=mesh, overwrite=True, **KW)
    np.testing.assert_array_equal(wd.read_samples("16", "optimal")["seeds"], np.arange(6))
    # A corrupt finished batch of an interrupted job names itself; nothing else is touched.
    part = wd.shard_path("16", "optimal", None, np.arange(6, 10))[:-4] + ".partial"
    os.makedirs(part)
    open(os.path.join(part, "0000000000.npz"), "wb").write(b"\x00" * 10)
    with pytest.raises(InputError, match=r"0000000000.npz \(a finished batch.*delete it"):
        generate.sample_workdir(w, np.arange(10), config=config, mesh=mesh, **KW)
    np.testing.assert_array_equal(wd.read_samples("16", "optimal")["seeds"], np.arange(6))


@pytest.mark.slow
def test_sample_script_optimal_from_a_config_without_training(tmp_path):
    w = str(tmp_path / "opt")
    cmd = [sys.executable, os.path.join(REPO, "bin", "sample.py"),
           "--config=" + os.path.join(REPO, "configs/digits.py") + ":k=16", "--kind=optimal",
           f"--workdir={w}", "--seeds=0-3", "--sampler=edm_euler", "--sample_steps=2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = Workdir(w).read_samples("16", "optimal")
    np.testing.assert_array_equal(out["seeds"], np.arange(4))
    assert os.path.exists(os.path.join(w, "subsets", "16.npz"))
    proc = subprocess.run(cmd[:3] + [f"--workdir={tmp_path / 'new'}", "--seeds=0-3"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--kind=optimal" in proc.stderr
