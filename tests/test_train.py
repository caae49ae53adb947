"""Trainer, losses, checkpoints and config handling (issue 2)."""
import json
import math
import os
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import builders, checkpoint, configlib, devices, losses, report, train
from diffmem import sde as sde_lib
from diffmem.data import batches, toy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_circle(arg="k=9", **over):
    c = configlib.load_config_file(os.path.join(REPO, "configs/circle.py") + ":" + arg)
    c.model.hidden, c.model.embed = 32, 16
    c.steps, c.steps_per_call, c.log_every, c.ckpt_every = 40, 10, 20, 20
    for k, v in over.items():
        configlib.apply_override(c, k, str(v))
    return c


def leaves_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# -------------------------------------------------------------------------------------- loss oracle
def test_dsm_loss_at_exact_score_equals_closed_form(x64):
    """Single Gaussian N(0, c^2 I) under VE: E||s std + z||^2 per dim at the exact score is
    c^2/(c^2+sigma^2), so the loss floor is (c^2 / smax^2) log((c^2 + smax^2) / (c^2 + smax^2 eps))
    / (1 - eps)."""
    c, smax, eps = 0.7, 3.0, 1e-3
    sde = sde_lib.VESDE(sigma_max=smax, t_min=eps)
    g = toy.GaussianMixture.isotropic(jnp.zeros((1, 3)), c)
    n = 400_000
    x0 = g.sample(jax.random.key(0), n)
    per = losses.dsm_from_key(g.score_fn(sde), x0, jax.random.key(1), sde)
    exact = c**2 / smax**2 * math.log((c**2 + smax**2) / (c**2 + smax**2 * eps)) / (1 - eps)
    se = float(jnp.std(per)) / math.sqrt(n)
    assert abs(float(jnp.mean(per)) - exact) < 4 * se, (float(jnp.mean(per)), exact, se)


def test_training_reduces_dsm_loss_towards_mixture_floor(tmp_path, one_device):
    c = configlib.load_config_file(os.path.join(REPO, "configs/gmm.py") + ":k=2000,steps=1500")
    c.steps_per_call, c.log_every, c.ckpt_every = 500, 500, 1500
    states = train.train(c, str(tmp_path), progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    first, last = rows[0]["loss/2000"], rows[-1]["loss/2000"]
    floor, se = builders.gmm_from_config(c).dsm_loss_floor(
        jax.random.key(3), builders.build_sde(c), 20_000
    )
    # Evaluate the trained (raw) network on fresh draws: it must approach the exact-score floor.
    model = builders.build_model(c, (2,))
    x0 = builders.gmm_from_config(c).sample(jax.random.key(4), 20_000)
    trained = losses.dsm_from_key(lambda x, t: model.apply(states["2000"].params, x, t), x0,
                                  jax.random.key(5), builders.build_sde(c)).mean()
    assert last < first
    assert float(floor) <= float(trained) + 4 * float(se)
    assert float(trained) < float(floor) + 0.1, (float(trained), float(floor))


# --------------------------------------------------------------------------------------- equalities
def test_eight_devices_equal_one_device(tmp_path):
    assert len(jax.devices()) == 8
    c = small_circle("k=9", steps=20, ckpt_every=20)
    one = train.train(
        c, str(tmp_path / "one"), mesh=devices.data_mesh(jax.devices()[:1]), progress=False
    )
    eight = train.train(c, str(tmp_path / "eight"), mesh=devices.data_mesh(), progress=False)
    leaves_close(one["9"].params, eight["9"].params, rtol=1e-4, atol=1e-5)
    leaves_close(one["9"].ema_params, eight["9"].ema_params, rtol=1e-4, atol=1e-5)


def test_sweep_members_equal_solo_runs(tmp_path, one_device):
    sweep = train.train(small_circle("k=2+9", steps=20), str(tmp_path / "sweep"), progress=False)
    solo = train.train(small_circle("k=9", steps=20), str(tmp_path / "solo"), progress=False)
    assert set(sweep) == {"2", "9"}
    assert checkpoint.list_models(str(tmp_path / "sweep")) == ["2", "9"]
    leaves_close(sweep["9"].params, solo["9"].params)
    seeds = train.train(
        small_circle("k=9", seed="3+4", steps=20), str(tmp_path / "seeds"), progress=False
    )
    solo4 = train.train(
        small_circle("k=9", seed=4, steps=20), str(tmp_path / "solo4"), progress=False
    )
    assert set(seeds) == {"9_s3", "9_s4"}
    leaves_close(seeds["9_s4"].params, solo4["9"].params, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_resume_after_repeated_sigkill_gives_identical_parameters(tmp_path):
    """Kill the trainer with SIGKILL at three seeded random moments (one of them while orbax writes
    a checkpoint), rerun it to the end, and compare with a run that was never interrupted: the final
    parameters are identical bit for bit, and metrics.jsonl holds each logged step once."""
    over = ["--config.model.hidden=32", "--config.model.embed=16", "--config.steps_per_call=50",
            "--config.ckpt_every=100", "--config.log_every=100"]
    total = 3000
    cmd = [sys.executable, os.path.join(REPO, "bin/train.py"),
           "--config=" + os.path.join(REPO, "configs/circle.py") + f":k=9,steps={total}", *over,
           "--progress=false"]
    env = dict(os.environ, XLA_FLAGS="")
    killed = tmp_path / "killed"
    ckpt_dir = killed / "checkpoints" / "9"
    rng = np.random.default_rng(0)

    def entries():
        return [p.name for p in ckpt_dir.iterdir()] if ckpt_dir.is_dir() else []

    def newest():
        return max((int(n) for n in entries() if n.isdigit()), default=0)

    landed = []
    for moment in ("after a checkpoint", "during a checkpoint write", "after a checkpoint"):
        before = newest()
        proc = subprocess.Popen(cmd + [f"--workdir={killed}"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if moment.startswith("during") and any("tmp" in n for n in entries()):
                break  # orbax is writing a checkpoint into its temporary directory
            if moment.startswith("after") and newest() > before:
                time.sleep(rng.uniform(0.0, 0.05))  # somewhere in the steps or saves that follow
                break
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed.append(moment)
        proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode()[-2000:]
    print("SIGKILL landed:", landed)
    assert len(landed) >= 2, f"only {landed} landed before the run finished"
    assert checkpoint.latest_step(str(killed), "9") < total
    subprocess.run(cmd + [f"--workdir={killed}"], env=env, check=True, capture_output=True)
    clean = tmp_path / "clean"
    subprocess.run(cmd + [f"--workdir={clean}"], env=env, check=True, capture_output=True)

    c = configlib.from_json(open(clean / "config.json").read())
    specs = builders.model_specs(c)
    model = builders.build_model(c, (2,))
    like = train.init_state(model, builders.build_optimizer(c), specs[0]).as_dict()
    a, sa = checkpoint.restore_latest(str(killed), "9", like)
    b, sb = checkpoint.restore_latest(str(clean), "9", like)
    assert sa == sb == total
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    rows = [json.loads(line) for line in open(killed / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(100, total + 1, 100))
    assert all(np.isfinite(r["grad_norm/9"]) and r["grad_norm/9"] > 0 for r in rows)


# ------------------------------------------------------------------------------------------- errors
def test_config_errors_name_valid_keys_and_ranges():
    with pytest.raises(
        configlib.ConfigError, match=r"valid keys: \['batch', 'k', 'lr', 'seed', 'steps'\]"
    ):
        configlib.load_config_file(os.path.join(REPO, "configs/circle.py") + ":kk=3")
    c = small_circle()
    with pytest.raises(configlib.ConfigError, match=r"optim has no field 'lrr'.*'lr'"):
        configlib.apply_override(c, "optim.lrr", "1e-3")
    with pytest.raises(configlib.ConfigError, match="expected a value of type int"):
        configlib.apply_override(c, "steps", "many")
    configlib.apply_override(c, "optim.lr", "-1")
    with pytest.raises(configlib.ConfigError, match=r"out of range: allowed \[1e-08, 1.0\]"):
        train.train(c, "/nonexistent/never-created", progress=False)
    cfg, rest = configlib.parse_config_argv(
        ["prog", "--config=" + os.path.join(REPO, "configs/circle.py") + ":k=2+9",
         "--config.optim.lr=2e-4", "--x=1"]
    )
    assert cfg.data.k == (2, 9) and cfg.optim.lr == 2e-4 and rest == ["prog", "--x=1"]
    assert configlib.duration_to_steps("10ep", dataset_size=1000, batch_size=100) == 100
    assert configlib.duration_to_steps("200kimg", dataset_size=1000, batch_size=100) == 2000


def test_k_larger_than_pool_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="K = 70000 is larger than the circle pool"):
        train.train(small_circle("k=70000"), str(tmp_path), progress=False)


def test_rerun_with_other_config_refuses_to_overwrite(tmp_path, one_device):
    train.train(small_circle(steps=20), str(tmp_path), progress=False)
    with pytest.raises(configlib.ConfigError, match="different config"):
        train.train(small_circle(**{"optim.lr": 1e-3}), str(tmp_path), progress=False)
    # Same config with more steps extends the run.
    out = train.train(small_circle(steps=40), str(tmp_path), progress=False)
    assert int(out["9"].step) == 40


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, one_device):
    train.train(small_circle(steps=20), str(tmp_path), progress=False)
    step_dir = tmp_path / "checkpoints" / "9" / "20"
    for root, _, files in os.walk(step_dir):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "wb") as fh:
                fh.write(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="cannot be read"):
        train.train(small_circle(steps=40), str(tmp_path), progress=False)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, one_device):
    train.train(small_circle(steps=20), str(tmp_path), progress=False)
    # else the changed data below is refused (DatasetChangedError)
    os.remove(tmp_path / "subsets" / "9.npz")
    pool = toy.circle_pool()
    pool[:] = np.nan
    monkeypatch.setattr(builders, "load_pool", lambda config: pool)
    with pytest.raises(train.TrainingDiverged, match="last good checkpoint, step 20"):
        train.train(small_circle(steps=40), str(tmp_path), progress=False)
    assert checkpoint.latest_step(str(tmp_path), "9") == 20


def test_ema_warmup_follows_formula():
    steps = jnp.arange(5)
    np.testing.assert_allclose(
        train.ema_decay(steps, 0.9999, True), (1 + steps) / (10 + steps), rtol=1e-6
    )
    assert float(train.ema_decay(jnp.asarray(10**7), 0.9999, True)) == pytest.approx(0.9999)


def test_make_batch_rows_are_the_examples_taken():
    """The rows make_batch reports are exactly the examples in the batch (labels are gathered with
    them), and one epoch visits each of the K examples once."""
    data = jnp.arange(10, dtype=jnp.float32)[:, None] * jnp.ones((1, 3))  # row i holds the value i
    seen = []
    for step in range(3):  # K = 9 of 10 rows (row 9 is padding), batch 3: one epoch
        x0, valid, rows = batches.make_batch(
            data, jnp.int32(9), jnp.int32(3), jnp.int32(step), jax.random.key(0), 4
        )
        np.testing.assert_array_equal(np.asarray(x0)[:, 0], np.asarray(rows))
        np.testing.assert_array_equal(np.asarray(valid), [1, 1, 1, 0])
        seen.extend(np.asarray(rows)[:3].tolist())
    assert sorted(seen) == list(range(9))


@pytest.mark.parametrize("k_max", [7, 5000])
def test_epoch_permutation_is_uniform_with_padding_last(k_max):
    k = k_max - 2
    perms = jax.jit(jax.vmap(lambda key: batches._permutation(key, jnp.int32(k), k_max)))(
        jax.random.split(jax.random.key(1), 2000))
    perms = np.asarray(perms)
    np.testing.assert_array_equal(
        np.sort(perms[:, :k], axis=1), np.broadcast_to(np.arange(k), (2000, k))
    )
    np.testing.assert_array_equal(perms[:, k:], np.broadcast_to(np.arange(k, k_max), (2000, 2)))
    # Where row 0 lands: uniform over the k slots (chi-square over 5 bins, 4 dof, 99.99% quantile
    # 23.5).
    bins = np.bincount(np.argmax(perms == 0, axis=1) * 5 // k, minlength=5)
    assert ((bins - 400.0) ** 2 / 400.0).sum() < 23.5


def test_a_lone_scanned_model_logs_the_chunk_mean_and_its_metrics_are_steps_by_members(
    tmp_path, monkeypatch, one_device
):
    """The scan loop of a lone toy model returns metrics (steps, 1), as every group does:
    metrics.jsonl holds the mean over the steps since the last line (recomputed here from the
    per-step metrics the loop returned), not the loss of a chunk's first step."""
    chunks = []
    real = train.make_multi_step

    def keeping_metrics(*args, **kwargs):
        run = real(*args, **kwargs)

        def spy(states, datas, num_steps):
            out = run(states, datas, num_steps)
            chunks.append(jax.tree.map(np.asarray, out[1][0]))
            return out
        return spy

    monkeypatch.setattr(train, "make_multi_step", keeping_metrics)
    c = small_circle(steps=20)
    c.log_every = c.ckpt_every = 20
    train.train(c, str(tmp_path), progress=False)
    logged = report.read_jsonl(os.path.join(str(tmp_path), "metrics.jsonl"))
    # two chunks of steps_per_call = 10
    assert [m["loss"].shape for m in chunks] == [(10, 1), (10, 1)]
    assert set(chunks[0]) == {"loss", "grad_norm", "l2_params", "l2_updates"}
    assert logged[-1]["step"] == 20
    for key in chunks[0]:
        # steps 1..20, since the last line
        per_step = np.concatenate([chunks[0][key], chunks[1][key]])[:, 0]
        assert logged[-1][f"{key}/9"] == float(np.mean(per_step))
    # not the first step's loss
    assert abs(logged[-1]["loss/9"] - float(chunks[0]["loss"][0, 0])) > 1e-4


def test_nan_guard_fires_on_any_step_of_a_chunk_and_names_a_checkpoint_that_exists(tmp_path):
    """A NaN that is not on a chunk's first step (the (steps, members) layout of one lone model),
    and an infinite parameter norm with a finite loss, both stop training naming the step and the
    checkpoint on disk."""
    mngr = checkpoint.manager(str(tmp_path), "9")
    checkpoint.save(mngr, 10, {"w": np.ones(3, np.float32)})
    spec = types.SimpleNamespace(name="9")
    for key, value in (("loss", np.nan), ("l2_params", np.inf)):
        metrics = {
            k: np.ones((10, 1), np.float32)
            for k in ("loss", "grad_norm", "l2_params", "l2_updates")
        }
        metrics[key][3, 0] = value
        with pytest.raises(train.TrainingDiverged) as e:
            train._nan_guard([metrics], [[0]], [spec], [20], [10], {"9": mngr})
        message = str(e.value)
        assert "diverged at step 24" in message and f"{key} {value}" in message
        assert f"step 10 ({os.path.join(str(mngr.directory), '10')})" in message
    with pytest.raises(train.TrainingDiverged, match="No checkpoint was saved before it"):
        train._nan_guard(
            [metrics], [[0]], [spec], [0], [0], {"9": checkpoint.manager(str(tmp_path), "8")}
        )
