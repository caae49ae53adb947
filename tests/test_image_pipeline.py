"""Image models end to end on the real 8x8 digits, CPU-sized: train (loss falls, 8 devices = 1
device), sample (sharded, seed-split invariant, resumable, never overwrites silently), and the
empirical optimal denoiser as a sampler-ready model (it memorizes: every sample is a training
image)."""
import json
import os

import jax
import numpy as np
import pytest

from diffmem import configlib, devices, generate, report, sampling, train
from diffmem.workdir import Workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(
    ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, num_groups=4
)


def tiny_digits(k="16", steps=4, lr=2e-3, batch=16, **kw):
    c = configlib.load_config_file(
        os.path.join(REPO, "configs/digits.py") + f":k={k},steps={steps},lr={lr},batch={batch}"
    )
    c.model.update(TINY)
    c.optim.warmup_steps = 0
    c.steps_per_call = kw.pop("steps_per_call", 2)
    c.log_every = kw.pop("log_every", 2)
    c.ckpt_every = kw.pop("ckpt_every", steps)
    c.sample.update(batch=8, sampler="ddim")
    return c


STEPS, EVERY = 200, 50
# stage tests not about sharding: 8 devices x 128-seed blocks
ONE = lambda: devices.data_mesh(jax.devices()[:1])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One tiny digits model trained once on one device, shared by the tests below."""
    path = str(tmp_path_factory.mktemp("digits"))
    train.train(tiny_digits(steps=STEPS, steps_per_call=EVERY, log_every=EVERY), path,
                mesh=devices.data_mesh(jax.devices()[:1]), progress=False)
    return path


def _losses(path):
    rows = [json.loads(line) for line in open(os.path.join(path, "metrics.jsonl"))]
    return np.array([r["loss/16"] for r in rows])


def test_digits_training_loss_decreases(workdir):
    loss = _losses(workdir)  # mean DDPM loss over each block of EVERY steps
    assert np.all(np.isfinite(loss)) and len(loss) == STEPS // EVERY
    assert loss[-1] < 0.6 * loss[0], loss


def test_digits_eight_devices_equal_one_device(workdir, tmp_path):
    """The first EVERY steps on 8 devices (a 2-host-shaped mesh) follow the 1-device run of the
    fixture."""
    eight = str(tmp_path / "eight")
    train.train(
        tiny_digits(steps=EVERY, steps_per_call=EVERY, log_every=EVERY), eight, progress=False
    )
    np.testing.assert_allclose(_losses(eight)[0], _losses(workdir)[0], rtol=1e-4)


def test_sample_workdir_images_grid_skip_and_refuse(workdir):
    [path] = generate.sample_workdir(
        workdir, np.arange(12), "ddim", num_steps=5, batch=8, progress=False, mesh=ONE()
    )
    assert path.endswith(os.path.join("samples", "16"))
    out = Workdir(workdir).read_samples("16")
    assert out["samples"].shape == (12, 8, 8, 1) and out["samples"].dtype == np.float32
    assert np.all(np.abs(out["samples"]) <= 1) and out["step"] == STEPS
    assert out["settings"] == dict(sampler="ddim", model="trained", step=STEPS, num_steps=5,
                                   eta=0.0, timesteps=1000, beta_start=1e-4, beta_end=0.02)
    np.testing.assert_array_equal(out["seeds"], np.arange(12))
    [shard] = out["files"]
    # no .partial left
    assert os.path.exists(path + ".png") and os.listdir(path) == [os.path.basename(shard)]
    mtime = os.path.getmtime(shard)
    assert generate.sample_workdir(workdir, np.arange(12), "ddim", num_steps=5, progress=False) == [
        path
    ]
    # skipped
    assert os.path.getmtime(shard) == mtime and os.listdir(path) == [os.path.basename(shard)]
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate.sample_workdir(workdir, np.arange(12), "ddim", num_steps=6, progress=False)
    with pytest.raises(ValueError, match="ddpm"):
        generate.sample_workdir(workdir, np.arange(4), "em", progress=False)


def test_seed_splits_and_devices_give_identical_images(workdir, tmp_path):
    """Sample i depends on seed i only: one 1-device call on all seeds equals two 8-device calls on
    halves (stochastic DDIM, eta = 1: noise at every step from each sample's seed)."""
    wd = Workdir(workdir)
    model = wd.model("16")
    settings = wd.experiment.sampler.settings("ddim", model, num_steps=10, eta=1.0)
    run = sampling.SAMPLERS["ddim"].build(model, **settings)
    seeds = np.arange(100, 110)
    whole = np.asarray(
        sampling.sample_sharded(run, seeds, devices.data_mesh(jax.devices()[:1]), block=4)
    )
    halves = [
        np.asarray(sampling.sample_sharded(run, s, devices.data_mesh(), block=4))
        for s in (seeds[:3], seeds[3:])
    ]
    np.testing.assert_allclose(np.concatenate(halves), whole, rtol=1e-5, atol=1e-5)


def test_interrupted_sampling_resumes_from_saved_batches(workdir, monkeypatch):
    kw = dict(sampler="edm_euler", num_steps=4, batch=8, names=["16"], progress=False, mesh=ONE())
    seeds = np.arange(200, 224)  # three batches of 8
    calls = []
    real = sampling.sample_sharded

    def dies_on_third(fn, s, mesh, **k):
        calls.append(len(s))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(fn, s, mesh, **k)

    monkeypatch.setattr(sampling, "sample_sharded", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        generate.sample_workdir(workdir, seeds, overwrite=True, **kw)
    partial = Workdir(workdir).shard_path("16", "trained", None, seeds)[:-4] + ".partial"
    assert sorted(os.listdir(partial)) == ["0000000000.npz", "0000000008.npz"]
    calls.clear()
    monkeypatch.setattr(sampling, "sample_sharded",
                        lambda fn, s, mesh, **k: (calls.append(len(s)), real(fn, s, mesh, **k))[1])
    [path] = generate.sample_workdir(workdir, seeds, overwrite=True, **kw)
    assert calls == [8]  # only the missing batch ran
    [shard] = Workdir(workdir).sample_files("16")
    resumed = report.read_npz(shard)["samples"]
    os.remove(shard)
    calls.clear()
    generate.sample_workdir(workdir, seeds, **kw)
    assert calls == [8, 8, 8]  # a fresh run recomputes everything: the same images
    np.testing.assert_array_equal(Workdir(workdir).read_samples("16")["samples"], resumed)


def test_optimal_denoiser_samples_memorize(workdir):
    [path] = generate.sample_workdir(
        workdir, np.arange(32), "edm_heun", model="optimal", batch=16, progress=False, mesh=ONE()
    )
    assert path.endswith(os.path.join("samples", "optimal", "16"))
    out = Workdir(workdir).read_samples("16", "optimal")
    assert out["step"] == -1
    train_set = Workdir(workdir).model("16", kind="optimal").train_data.reshape(16, -1)
    x = out["samples"].reshape(32, -1)
    d = np.sort(np.linalg.norm(x[:, None] - train_set[None], axis=-1), axis=1)
    assert np.all(d[:, 0] < d[:, 1] / 3), (
        "Gu et al.'s criterion: every optimal-denoiser sample is a copy"
    )
    assert np.all(d[:, 0] < 0.05)
