"""Critical times: stop rules on a hand-made table, batched image / toy scans against brute-force
loop twins, and known outcomes with the empirical optimal denoiser of a 2-point training set."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import energy
from diffmem.metrics import critical_time as ct
from diffmem.sde import VESDE, ddpm_alpha_bar

TRAIN = np.array([[0.8, 0.8, -0.8, 0.8], [-0.8, -0.8, 0.8, -0.8]], np.float32)


def test_stop_rules_on_a_table():
    ts = np.array([1, 26, 51, 76])
    rec = np.ones((4, 2, 2), bool)                 # (t, sample, trial)
    rec[1, 0, 1] = False                           # sample 0: trial 1 fails at t = 26 (prob 0.5)
    rec[3, 1] = False                              # sample 1 fails at t = 76
    tc, stopped = ct.apply_stop_rule(rec, ts, p=0.9, stop="per_sample")
    # sample 0 stops at 26 without updating
    np.testing.assert_array_equal(tc, [[1, 1], [51, 51]])
    np.testing.assert_array_equal(stopped, [1, 3])
    tc, stopped = ct.apply_stop_rule(rec, ts, p=0.9, stop="batch")
    # sample 0's live trial rides on, to the end
    np.testing.assert_array_equal(tc, [[76, 1], [51, 51]])
    np.testing.assert_array_equal(stopped, [4, 4])            # no batch-level break
    rec[3, 0] = False
    tc, stopped = ct.apply_stop_rule(rec, ts, p=0.9, stop="batch")
    # all below p at t = 76: break before updating
    np.testing.assert_array_equal(tc, [[51, 1], [51, 51]])
    np.testing.assert_array_equal(stopped, [3, 3])
    tc, _ = ct.apply_stop_rule(
        rec, ts.astype(float) / 100, p=0.4, stop="per_sample", initial=0.0, per_trial=False
    )
    # toy rule: no sticky failed trial
    np.testing.assert_array_equal(tc, [[0.51, 0.51], [0.51, 0.51]])
    with pytest.raises(ValueError, match="valid"):
        ct.apply_stop_rule(rec, ts, stop="sticky")


def test_ddim_chain_lengths():
    assert (
        ct.ddim_chain(1) == [1] and len(ct.ddim_chain(26)) == 13 and len(ct.ddim_chain(976)) == 20
    )
    assert ct.ddim_chain(976)[:2] == [976, 927]


def _naive_image(denoiser, x0s, ts, trials, delta, p, stop, seed):
    """Loop twin of image_critical_times (one row per network call, the rule as the notes state
    it)."""
    ab = ddpm_alpha_bar()
    b = len(x0s)
    denoiser = jax.jit(denoiser)
    rec = np.zeros((len(ts), b, trials), bool)
    for ti, t in enumerate(ts):
        z = np.asarray(ct.trial_noise(seed, np.arange(b), np.full(b, ti), trials, x0s.shape[1:]))
        for i in range(b):
            for j in range(trials):
                x = np.sqrt(ab[t]) * x0s[i] + np.sqrt(1 - ab[t]) * z[i, j]
                stride = max(1, math.ceil(t / min(20, t)))
                for tau in range(t, 0, -stride):
                    a = ab[tau]
                    a_n = ab[tau - stride] if tau - stride >= 0 else 1.0
                    x0h = np.asarray(denoiser(jnp.asarray(x[None] / np.sqrt(a), jnp.float32),
                                              jnp.full((1,), np.sqrt((1 - a) / a), jnp.float32)))[0]
                    e = (x - np.sqrt(a) * x0h) / np.sqrt(1 - a)
                    x = np.sqrt(a_n) * x0h + np.sqrt(1 - a_n) * e
                rec[ti, i, j] = np.linalg.norm(x0s[i] - np.clip(x0h, -1, 1)) <= delta
    tc = np.full((b, trials), ts[0])
    alive, active = np.ones((b, trials), bool), np.ones(b, bool)
    for ti, t in enumerate(ts):
        prob = rec[ti].mean(1)
        if stop == "batch":
            alive &= rec[ti]
            if np.all(prob < p):
                break
            tc[alive] = t
        else:
            for i in range(b):
                if not active[i]:
                    continue
                alive[i] &= rec[ti, i]
                if prob[i] < p:
                    active[i] = False
                else:
                    tc[i, alive[i]] = t
    return tc


@pytest.mark.parametrize("stop", ["per_sample", "batch"])
def test_image_scan_equals_loop_twin_and_known_outcomes(stop):
    d = energy.empirical_denoiser(jnp.asarray(TRAIN))
    # memorized, between, near
    samples = np.stack([TRAIN[0], 0.5 * (TRAIN[0] + TRAIN[1]), 0.9 * TRAIN[1]])
    ts = (1, 26, 201, 401, 601, 801, 976)
    out = ct.image_critical_times(
        d, samples, trials=3, ts=ts, p=0.6, stop=stop, delta=0.1, rows_per_call=16
    )
    np.testing.assert_array_equal(out["time"], _naive_image(d, samples, ts, 3, 0.1, 0.6, stop, 0))
    assert np.all(out["time"][0] >= 401)            # a training point recovers up to large t
    if stop == "per_sample":
        assert np.all(out["time"][1] == 1)          # the midpoint is never recovered
    # radius = ||x0 - x_Tc|| with x_Tc = sqrt(ab) x0 + sqrt(1 - ab) eps: at Tc = 1 it is about
    # sqrt(1 - ab_1) sqrt(n)
    ab = ddpm_alpha_bar()
    assert out["radius"].shape == (3, 3)
    if stop == "per_sample":
        np.testing.assert_allclose(out["radius"][1], np.sqrt(1 - ab[1]) * 2, rtol=0.8)


def test_image_batch_rule_depends_on_batch_size():
    d = energy.empirical_denoiser(jnp.asarray(TRAIN))
    samples = np.stack([TRAIN[0], 0.5 * (TRAIN[0] + TRAIN[1])])
    ts = (1, 201, 401)
    per = ct.image_critical_times(d, samples, trials=2, ts=ts, stop="batch", batch_size=1)
    assert list(per["batch"]) == [0, 1] and np.all(per["time"][1] == 1)


def _naive_toy(score, sde, x0s, ts, trials, delta, p, seed, spu):
    b = len(x0s)
    t_opt = np.zeros(b)
    score = jax.jit(score)
    for i in range(b):
        for ti, t in enumerate(ts):
            z = np.asarray(ct.trial_noise(seed, [i], [ti], trials, x0s.shape[1:]))[0]
            ok = 0
            for j in range(trials):
                key = jax.random.fold_in(
                    jax.random.fold_in(jax.random.fold_in(jax.random.key(seed + 1), i), ti), j
                )
                x = x0s[i] + float(sde.marginal_std(t)) * z[j]
                num = int(spu * t)
                taus = np.linspace(t, 1e-3, num)
                dt = taus[0] - taus[1]
                for k, tau in enumerate(taus):
                    mean = (
                        x
                        + dt
                        * np.asarray(
                            score(
                                jnp.asarray(x[None], jnp.float32), jnp.full((1,), tau, jnp.float32)
                            )
                        )[0]
                    )
                    x = mean + np.sqrt(dt) * np.asarray(
                        jax.random.normal(jax.random.fold_in(key, k), x.shape)
                    )
                ok += np.linalg.norm(mean - x0s[i]) <= delta
            if ok / trials < p:
                break
            t_opt[i] = t
    return t_opt


def test_toy_scan_equals_loop_twin():
    sde = VESDE()
    train = jnp.asarray(TRAIN[:, :2])
    score = energy.empirical_score(train, sde.marginal_std)
    samples = np.stack([TRAIN[0, :2], np.zeros(2, np.float32)])
    ts = np.linspace(0.1, 0.8, 4)
    with pytest.raises(ValueError, match="required"):
        ct.toy_critical_times(score, sde, samples, delta=None)
    out = ct.toy_critical_times(
        score, sde, samples, delta=0.1, trials=2, ts=ts, p=0.5, steps_per_unit=20
    )
    np.testing.assert_allclose(out["time"], _naive_toy(score, sde, samples, ts, 2, 0.1, 0.5, 0, 20))
    # Upstream's 1000 steps per unit time: a pattern recovers, the midpoint never (t_opt = 0, radius
    # 0).
    out = ct.toy_critical_times(score, sde, samples, delta=0.1, trials=4, ts=[0.05, 0.3])
    assert out["time"][0] == 0.3 and out["time"][1] == 0.0
    assert np.all(out["radius"][1] == 0.0) and np.all(out["radius"][0] > 0.1)
