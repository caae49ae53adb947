"""Schedules in images, converted per sweep member at train time (issue 12, item 5)."""
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import configlib, image_configs, schedules, train
from diffmem.studies import memorization

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name, arg=""):
    return configlib.load_config_file(
        os.path.join(REPO, "configs", f"{name}.py") + (":" + arg if arg else "")
    )


def gu_upstream_twin(k, batch, step):
    """Gu et al.'s train.py + training_loop.py (sail-sg/DiffMemorize, --duration=2000, --ema=0.5,
    mode2), transcribed: (total steps, lr factor at `step`, EMA beta at `step`), with their literal
    512."""
    total_kimg = max(int(2000 * k / 50), 1)
    halflife_kimg, rampup_kimg, data_ratio = int(0.5 * k / 50), int(k / 5), 50000 / k
    steps = math.ceil(total_kimg * 1000 / batch)
    nimg = step * batch
    lr = min(nimg / max(rampup_kimg * 1000, 1e-8), 1)
    h = min(halflife_kimg * 1000, nimg * 0.05)
    beta = 0.5 ** (512 / max(h, 1e-8) / data_ratio)
    return steps, lr, beta


# Hand-computed: steps = ceil(40 K kimg / batch); ramp-up int(K/5) kimg; EMA half-life int(K/100)
# kimg times 50,000 / K images, decay 0.5 ** (batch / that).
@pytest.mark.parametrize("batch", [128, 256, 512])
def test_gu_schedule_per_k_and_batch_matches_hand_computed_numbers(batch):
    images = {50: 2_000_000, 250: 10_000_000, 1000: 40_000_000, 4000: 160_000_000}   # 40 K kimg
    expected_steps = {k: math.ceil(n / batch) for k, n in images.items()}
    for k, steps in expected_steps.items():
        s = image_configs.gu_schedule(k, batch)
        assert (s.k, s.batch, s.steps) == (k, batch, steps)
        assert s.lr_rampup_images == {50: 10_000, 250: 50_000, 1000: 200_000, 4000: 800_000}[k]
        assert s.warmup_steps == pytest.approx(s.lr_rampup_images / batch)
        halflife = {50: 0.0, 250: 2000 * 200, 1000: 10_000 * 50, 4000: 40_000 * 12.5}[k]
        assert s.ema_halflife_images == pytest.approx(halflife)
        assert s.ema_decay == pytest.approx(
            0.5 ** (batch / halflife) if halflife else 0.0, rel=1e-12
        )
    assert image_configs.gu_schedule(4000, 512).steps == 312_500
    assert image_configs.gu_schedule(1000, 512).steps == 78_125
    assert round(image_configs.gu_schedule(1000, 512).ema_decay, 5) == 0.99929


@pytest.mark.parametrize("k", [50, 250, 1000, 4000])
def test_compiled_lr_and_ema_factors_equal_gu_et_als_loop_at_batch_512(k):
    s = image_configs.gu_schedule(k, 512)
    steps = np.array([0, 1, 7, 100, 390, 391, 1000, 100_000])
    lr = np.asarray(schedules.lr_factor(jnp.asarray(steps), 512.0, s.lr_rampup_images))
    beta = np.asarray(
        schedules.ema_decay(jnp.asarray(steps), 512.0, s.ema_halflife_images, s.ema_rampup_ratio)
    )
    for i, step in enumerate(steps):
        total, lr_ref, beta_ref = gu_upstream_twin(k, 512, int(step))
        assert total == s.steps
        assert lr[i] == pytest.approx(lr_ref, rel=1e-6, abs=1e-7), step
        assert beta[i] == pytest.approx(beta_ref, rel=1e-6, abs=1e-7), step


def test_edm_rule_at_other_batches_keeps_the_half_life_in_images():
    """At batch 128 the decay per step is 0.5 ** (128 / h): after 500,000 images (3906.25 steps) the
    EMA weight of the initial parameters has halved, as at batch 512 (Gu et al.'s literal 512 would
    make it 4x longer)."""
    s128, s512 = image_configs.gu_schedule(1000, 128), image_configs.gu_schedule(1000, 512)
    assert s128.ema_decay ** (500_000 / 128) == pytest.approx(0.5)
    assert s512.ema_decay ** (500_000 / 512) == pytest.approx(0.5)
    assert float(
        schedules.ema_decay(
            jnp.asarray(10**6), 128.0, s128.ema_halflife_images, s128.ema_rampup_ratio
        )
    ) == pytest.approx(0.5 ** (128 / 500_000), rel=1e-6)


def test_gu_recipe_trains_each_k_of_a_sweep_and_of_emm_for_its_own_duration():
    c = load("cifar10", "k=1000,arch=ddpmpp,precond=vp")
    assert c.steps == 0 and c.schedule.duration_mimg == 2000 and c.schedule.scale_with_k
    assert c.loss.reduction == "sum"
    # EMM replaces data.k: K = 4000 now gets its own 312,500 steps, not the arg string's K = 1000
    # (78,125).
    # K = 500: batch min(512, K) = 500
    for k, steps in ((500, 40_000), (1000, 78_125), (4000, 312_500)):
        ck = memorization.config_for_k(c, k)
        s = schedules.member_schedule(ck, k, min(ck.batch_size, k))
        assert (s.steps, s.lr_rampup_images) == (steps, k / 5 * 1000)
        assert s.ema_decay == pytest.approx(0.5 ** (s.batch / 500_000), rel=1e-12)
    # A sweep: each member its own schedule; batch 128 scales the steps, not the images.
    c = load("cifar10", "k=500+4000,arch=ddpmpp,batch=128")
    assert [schedules.member_schedule(c, k, 128).steps for k in (500, 4000)] == [156_250, 1_250_000]
    # An explicit `steps` trains every member that long (lr ramp-up and EMA stay per K).
    c = load("cifar10", "k=500+4000,arch=ddpmpp,steps=7")
    assert c.schedule.duration_mimg == 0
    assert [schedules.member_schedule(c, k, 512).steps for k in (500, 4000)] == [7, 7]
    assert schedules.member_schedule(c, 4000, 512).lr_rampup_images == 800_000


def test_contradicting_schedule_settings_are_clear_errors():
    c = load("cifar10", "arch=ddpmpp")
    c.steps = 100
    with pytest.raises(configlib.ConfigError, match="steps=0"):
        schedules.check(c)
    c = load("cifar10", "arch=ddpmpp")
    c.optim.warmup_steps = 10
    with pytest.raises(configlib.ConfigError, match="warmup_steps"):
        schedules.check(c)
    c = load("cifar10", "arch=ddpmpp")
    c.schedule.ema_mode = "mode2"
    with pytest.raises(configlib.ConfigError, match=r"valid: \['edm', 'gu'\]"):
        schedules.check(c)
    # Recipes without a schedule in images keep their step-based settings.
    p = load("cifar10")
    assert not schedules.has_schedule(p)
    assert schedules.member_schedule(p, 1000, 128) == schedules.MemberSchedule(1000, 128, 500_000)


def test_train_step_ramps_lr_and_ema_from_images_seen():
    """Step 0 has lr 0 (parameters unchanged, Adam's moments updated) and EMA decay 0 (EMA =
    parameters)."""
    def loss_fn(params, x0, key):
        return jnp.sum((params["w"] - x0) ** 2, axis=-1)
    opt = train.make_optimizer(0.1)
    step = jax.jit(
        train.make_train_step(loss_fn, opt, 0.0, False, lr_in_images=True, ema_in_images=True)
    )
    params = {"w": jnp.zeros(3)}
    state = train.TrainState(
        jnp.zeros((), jnp.int32), params, {"w": jnp.full(3, 5.0)}, opt.init(params)
    )
    sched = {"batch": jnp.float32(2), "lr_rampup": jnp.float32(8), "ema_halflife": jnp.float32(4),
             "ema_rampup_ratio": jnp.float32(0)}
    x0, valid = jnp.ones((2, 3)), jnp.ones(2)
    s1, _ = step(state, x0, valid, jax.random.key(0), None, sched)
    np.testing.assert_array_equal(s1.params["w"], 0.0)                        # lr * 0
    np.testing.assert_allclose(s1.ema_params["w"], 0.5 ** 0.5 * 5.0)            # 0.5 ** (2 / 4)
    # lr * (2 / 8): Adam's step 0.1 / 4
    s2, _ = step(s1, x0, valid, jax.random.key(1), None, sched)
    np.testing.assert_allclose(s2.params["w"], 0.1 * 0.25, rtol=1e-4)


def tiny_sweep(k="100+149+300"):
    c = load("circle", f"k={k},batch=100")
    c.model.hidden, c.model.embed = 16, 8
    c.steps, c.steps_per_call, c.log_every, c.ckpt_every = 0, 10, 10, 10
    # |D|-scaled, whole kimg: duration int(0.5 K / 50) = 1, 1, 3 kimg -> 10, 10, 30 steps at batch
    # 100; lr ramp-up
    # and EMA half-life int(0.7 K / 50) = 1, 2, 4 kimg (EDM's EMA rule, no EMA ramp-up).
    c.schedule = image_configs.schedule_section(
        duration_mimg=0.5, lr_rampup_mimg=0.7, ema_halflife_mimg=0.7, scale_with_k=True
    )
    return c


def test_sweep_members_stop_at_their_own_step_and_resume(tmp_path, one_device):
    from diffmem import checkpoint
    c = tiny_sweep()
    scheds = [schedules.member_schedule(c, k, 100) for k in (100, 149, 300)]
    assert [(s.steps, s.lr_rampup_images, s.ema_halflife_images) for s in scheds] == [
        (10, 1000, 1000), (10, 2000, 2000), (30, 4000, 4000)]
    assert train._groups(train.builders.model_specs(c), 1, steps=[10, 10, 30]) == [[0, 1], [2]]
    out = train.train(c, str(tmp_path / "sweep"), progress=False)
    assert {n: int(s.step) for n, s in out.items()} == {"100": 10, "149": 10, "300": 30}
    assert [checkpoint.latest_step(str(tmp_path / "sweep"), n) for n in ("100", "149", "300")] == [
        10,
        10,
        30,
    ]
    # K = 149 is vmapped with K = 100 but ramps its lr and averages its EMA over its own images: it
    # equals its solo run (a lone group).
    solo = train.train(tiny_sweep("149"), str(tmp_path / "solo"), progress=False)
    for a, b in zip(jax.tree.leaves((out["149"].params, out["149"].ema_params)),
                    jax.tree.leaves((solo["149"].params, solo["149"].ema_params))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # Lose K = 300's last checkpoint: a rerun resumes it alone from step 20 and ends where it did.
    shutil.rmtree(tmp_path / "sweep" / "checkpoints" / "300" / "30")
    again = train.train(c, str(tmp_path / "sweep"), progress=False)
    assert {n: int(s.step) for n, s in again.items()} == {"100": 10, "149": 10, "300": 30}
    for name in ("100", "300"):
        for a, b in zip(
            jax.tree.leaves(out[name].ema_params), jax.tree.leaves(again[name].ema_params)
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------- sampler grids (item 7)
def test_ddim_leading_spacing_is_diffusers_grid():
    """diffusers' DDIMScheduler ("leading"): step_ratio = T // n, timesteps i * step_ratio +
    steps_offset. 7 of 1000: ratio 142 -> 0, 142, ..., 852 (diffmem's floor(i T / n) grid: 0, 142,
    285, ..., 857)."""
    from diffmem import sampling
    from diffmem.sde import ddpm_alpha_bar

    np.testing.assert_array_equal(
        sampling.ddim_timesteps(7, 1000, "leading"), [0, 142, 284, 426, 568, 710, 852]
    )
    np.testing.assert_array_equal(
        sampling.ddim_timesteps(7, 1000), [0, 142, 285, 428, 571, 714, 857]
    )
    np.testing.assert_array_equal(sampling.ddim_timesteps(7, 1000, "leading", steps_offset=1),
                                  [1, 143, 285, 427, 569, 711, 853])
    np.testing.assert_array_equal(
        sampling.ddim_timesteps(20, 1000, "leading"), sampling.ddim_timesteps(20, 1000)
    )
    with pytest.raises(ValueError, match=r"valid: \['floor', 'leading'\]"):
        sampling.ddim_timesteps(7, 1000, "trailing")
    # The sampler walks that grid: a float64 transcription of DDIM (eta = 0) on it, D(y, s) = y / (1
    # + s^2).
    ab = ddpm_alpha_bar(1000, 1e-4, 0.02)
    x_T = np.asarray(jax.random.normal(jax.random.key(0), (2, 3)), np.float64)
    x, grid = x_T.copy(), [852, 710, 568, 426, 284, 142, 0]
    for i, t in enumerate(grid):
        a, an = ab[t], (ab[grid[i + 1]] if i + 1 < len(grid) else 1.0)
        x0 = (x / np.sqrt(a)) / (1 + (1 - a) / a)
        eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
        x = np.sqrt(an) * x0 + np.sqrt(1 - an) * eps
    d = lambda y, s: y / (1 + s[:, None] ** 2)  # noqa: E731
    out = np.asarray(
        sampling.ddim(d, jnp.asarray(x_T, jnp.float32), num_steps=7, spacing="leading")
    )
    np.testing.assert_allclose(out, x, rtol=1e-4, atol=1e-6)
    floor = np.asarray(sampling.ddim(d, jnp.asarray(x_T, jnp.float32), num_steps=7))
    assert np.abs(floor - x).max() > 1e-4
