"""diffmem.workdir: the one model record (trained toy networks and the empirical optimal denoiser, from a
workdir or a config alone), EMA-only restore, recorded K-subsets (a changed dataset is an error), config.json
checks, the sampler registry, and split sampling jobs (sequential or concurrent) equal to one job."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import builders, configlib, report, sampling, train
from diffmem.errors import InputError
from diffmem.workdir import DatasetChangedError, Workdir, config_differences, optimal_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits(k="16"):
    return configlib.load_config_file(os.path.join(REPO, "configs/digits.py") + f":k={k}")


def one_mesh():
    return train.data_mesh(jax.devices()[:1])


def test_optimal_model_from_a_config_alone_is_the_brute_force_posterior_mean(x64):
    m = optimal_model(digits(), "16")
    assert (m.name, m.k, m.kind, m.step, m.shape, m.sde) == ("16", 16, "optimal", -1, (8, 8, 1), None)
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
    # Reading a model builds no optimizer (orbax restores the "ema_params" item alone).
    monkeypatch.setattr(train, "optimizer_from_config", lambda c: pytest.fail("optimizer built"))
    m = Workdir(path).model("9")
    assert (m.k, m.kind, m.step, m.shape) == (9, "trained", 20, (2,))
    net = builders.build_model(tiny_circle(), (2,))
    x = jnp.asarray(np.random.default_rng(1).normal(0, 1, (5, 2)), jnp.float32)
    t = jnp.asarray([0.01, 0.1, 0.3, 0.6, 1.0], jnp.float32)
    want = net.apply(state.ema_params, x, t)
    np.testing.assert_array_equal(np.asarray(m.time_score(x, t)), np.asarray(want))  # the EMA weights, exactly
    sigma = m.sde.sigma(t)  # VE: s(x, t) = (D(x, sigma(t)) - x) / sigma(t)^2
    np.testing.assert_allclose(np.asarray(m.score(x, sigma)), np.asarray(want), rtol=2e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(m.denoiser(x, sigma)), np.asarray(x + sigma[:, None] ** 2 * want),
                               rtol=1e-5, atol=1e-6)
    assert m.sigma_min == pytest.approx(float(m.sde.sigma(1e-5))) and m.sigma_max == pytest.approx(1.0)
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

    def moved(config):  # the same pool with the rows of the training set shuffled: another training set
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
    wd = Workdir(str(tmp_path))
    wd.write_config(digits())
    with pytest.raises(configlib.ConfigError, match=r"differs in \['data'\]"):
        Workdir(str(tmp_path)).write_config(digits("32"))
    open(wd.config_path, "w").write('{"seed": 0, "data": {"k"')  # cut short
    with pytest.raises(configlib.ConfigError, match="config.json is corrupt or truncated.*delete config.json"):
        Workdir(str(tmp_path)).config


def test_sampler_registry_feeds_config_checks(monkeypatch):
    def zeros(model, *, level):
        """every sample is `level` (a test sampler)"""
        return lambda seeds: jnp.full((seeds.shape[0],) + model.shape, level, jnp.float32)
    monkeypatch.setitem(sampling.SAMPLERS, "zeros", sampling.Sampler("zeros", zeros, {"level": 0.25}))
    c = digits()
    c.sample.sampler = "zeros"
    configlib.check(c, train.RULES)
    c.sample.sampler = "nope"
    with pytest.raises(configlib.ConfigError, match="'zeros'"):
        configlib.check(c, train.RULES)
