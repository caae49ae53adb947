"""Mechanism drivers and CLIs on workdirs of optimal denoisers (no training): critical times
(resumable, sharded, settings guarded), Jacobian rank of MoLRG, and the relative energy against a
closed form."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import configlib, energy, report
from diffmem.errors import InputError, OutputExistsError
from diffmem.studies import mechanisms

def test_ddpm_relative_energy_matches_closed_form(x64):
    """With the empirical denoiser, the DDPM force -beta_0 s - beta_0 x / 2 is the gradient of E(x)
    = -beta_0 log p_0(x) - beta_0 |x|^2 / 4, p_0 = mean_i N(sqrt(ab_0) y_i, (1 - ab_0) I): the path
    integral must equal E(x(a)) - E(x)."""
    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.uniform(-1, 1, (5, 6)))
    # larger than DDPM's 1e-4 so the energy is smooth on the path
    beta0 = 0.02
    ab0 = 1 - beta0
    grad = mechanisms.ddpm_energy_gradient(energy.empirical_denoiser(y), beta0)
    e = lambda x: (
        -beta0 * energy.log_sum_exp_sq(x, math.sqrt(ab0) * y, 1 / (1 - ab0))
        - 0.25 * beta0 * jnp.sum(x**2, -1)
    )
    x, r = jnp.asarray(rng.normal(size=(3, 6))), y[:3]
    prof = energy.relative_energy(grad, x, r, num=201)
    a = jnp.linspace(0, math.pi / 2, 201)[::40]
    exact = jax.vmap(lambda ai: e(jnp.cos(ai) * x + jnp.sin(ai) * r) - e(x), out_axes=1)(a)
    np.testing.assert_allclose(prof[:, ::40], exact, rtol=2e-3, atol=1e-6)


@pytest.mark.slow
def test_mechanisms_on_an_optimal_digits_workdir(tmp_path, one_device):
    """Optimal-denoiser samples of 4 digits, classified in pixel L2: the memorized ones (copies of
    training images) are read in d_m order and scanned in two shards (resumable, settings guarded);
    then their energy paths to the nearest training image."""
    from diffmem import generate
    from diffmem.studies import memorization
    config = configlib.load_config_file("configs/digits.py:k=4")
    wd = str(tmp_path / "d4")
    generate.sample_workdir(
        wd, np.arange(6), "ddim", model="optimal", config=config, num_steps=10, progress=False
    )
    memorization.run(wd, metric="pixel", delta_m=1.0, delta_s=0.5, figures=False, log=None)
    sel = mechanisms.select_samples(mechanisms.open_workdir(wd), "4", "memorized", kind="optimal")
    d_m = report.read_npz(os.path.join(wd, "classify", "optimal", "4.npz"))["d_m"]
    assert len(sel["x"]) >= 2 and np.all(np.diff(np.sort(d_m)[: len(sel["x"])]) >= 0)
    logs = []
    kw = dict(samples="memorized", kind="optimal", metric="l2", delta=1.0, trials=2,
              log=logs.append, progress=False)
    shard = mechanisms.critical_times(wd, stop=1, figures=False, **kw)["4"]
    assert shard.endswith("memorized/optimal/4_0-1.npz")
    r = report.read_npz(shard)
    assert r["time"].shape == (1, 2) and int(r["k"]) == 4
    assert np.all(r["time"] > 100)                # a copy of a training image recovers far out
    mechanisms.critical_times(wd, start=1, **kw)
    merged = mechanisms.gather_critical_times(wd, kind="optimal")["memorized"][4]
    assert merged[0].shape == (len(sel["x"]), 2)
    mechanisms.critical_times(wd, stop=1, figures=False, **kw)
    assert logs[-1].startswith("4: finished")
    with pytest.raises(OutputExistsError, match="other settings"):
        mechanisms.critical_times(wd, stop=1, **{**kw, "delta": 0.5})
    with pytest.raises(InputError, match="delta is required"):
        mechanisms.critical_times(wd, **{**kw, "delta": None})
    assert os.path.exists(
        os.path.join(wd, "mechanisms", "critical_times", "critical_times_optimal.png")
    )
    res = mechanisms.energy_profiles(wd, kind="optimal", per_class=2, num=8, log=None)["4"]
    assert res["profiles"].shape[1] == 8 and np.all(res["profiles"][:, 0] == 0)
    assert np.all(res["barrier"] >= 0) and 0 in set(res["labels"].tolist())
    assert os.path.exists(os.path.join(wd, "mechanisms", "energy", "energy_optimal.png"))


@pytest.mark.slow
def test_jacobian_rank_of_a_molrg_workdir(tmp_path):
    wd = str(tmp_path / "molrg")
    config = configlib.load_config_file("configs/molrg.py:k=8")
    out = mechanisms.rank_vs_snr(
        wd, kind="optimal", num_latents=2, subset=[0, 8, 17], config=config, log=None
    )
    r = report.read_npz(os.path.join(wd, "mechanisms", "jacobian", "8_optimal.npz"))
    assert r["rank"].shape == (3, 2) and int(r["n"]) == 48
    assert np.all(r["rank"][0] <= 7)              # J = Cov(posterior) / sigma^2 has rank <= K - 1
    # sigma 0.002: the optimal D copies one point, J = 0
    assert np.all(r["rank"][-1] == 0)
    assert np.isfinite(r["snr_speciation"])
    # the population D
    np.testing.assert_array_equal(out["analytic"]["rank"], [[12, 12], [12, 12], [6, 6]])
    assert out["molrg"]["8"]["recovery_angle"] >= 0
    assert os.path.exists(os.path.join(wd, "mechanisms", "jacobian", "rank_vs_snr_optimal.png"))
