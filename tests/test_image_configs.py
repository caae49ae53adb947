"""Image configs (digits, mnist, fmnist, cifar10, celeba) and the builders behind them: every config
builds and its network and loss initialise (shapes only, `jax.eval_shape`), published settings and
parameter counts, errors that name the valid choices, every architecture x preconditioning trains on
the real digits, and the denoiser / sigma range / class-label views the samplers use."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import (builders, config_schema, configlib, devices, experiment, image_configs, nets,
                     precond, schedules, train)
from diffmem.data import images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1), "fmnist": (28, 28, 1), "cifar10": (32, 32, 3),
          "celeba": (80, 80, 1)}
COMBOS = [(arch, p) for arch in image_configs.ARCHS for p in image_configs.PRECONDS]


def load(name: str, arg: str = ""):
    return configlib.load_config_file(
        os.path.join(REPO, "configs", f"{name}.py") + (":" + arg if arg else "")
    )


def shapes_of(config, shape, batch=2):
    """Parameter shapes of the config's network and the shape of its per-example training loss."""
    model = builders.build_model(config, shape)
    x = jax.ShapeDtypeStruct((batch,) + shape, jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1,) + shape, jnp.float32),
                            jax.ShapeDtypeStruct((1,), jnp.float32))
    loss = jax.eval_shape(builders.build_loss(config, model), params, x, jax.random.key(1))
    return model, params, loss


def count(params) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))


# -------------------------------------------------------------------------------------- the configs
@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("arg", ["", "arch=ddpmpp,precond=vp"])
def test_every_config_builds_and_its_model_and_loss_initialise(name, arg):
    c = load(name, arg)
    assert c.data.name == "images" and c.model.name == (arg and "ddpmpp" or "ddpm_unet")
    _, params, loss = shapes_of(c, SHAPES[name])
    assert loss.shape == (2,) and loss.dtype == jnp.float32
    assert count(params) > 0
    assert c.sample.sampler == ("edm_heun" if arg else "ddpm_ancestral")
    lo, hi = builders.sigma_range(c)
    assert 0 < lo < 0.02 and 100 < hi < 200
    for every in ("log_every", "ckpt_every"):  # the trainer's rule
        assert c[every] % c.steps_per_call == 0


def test_cifar10_default_is_pham_et_als_ddpm_setting():
    c = load("cifar10")
    m = c.model
    assert (m.ch, tuple(m.ch_mult), m.num_res_blocks, tuple(m.attn_resolutions), m.dropout) == (
        128,
        (1, 2, 2, 2),
        2,
        (16,),
        0.1,
    )
    assert (c.optim.lr, c.optim.grad_clip, c.batch_size, c.ema.decay, c.ema.warmup, c.steps) == (
        2e-4, 1.0, 128, 0.9999, False, 500_000)
    assert (c.diffusion.precond, c.diffusion.timesteps, c.loss.name, c.loss.reduction) == ("ddpm",
                                                                                           1000,
                                                                                           "eps",
                                                                                           "mean")
    assert c.model.nin_init_scale == 0.1               # Pham et al.'s (score_sde) NIN init
    assert (c.sample.sampler, c.sample.optimal_sampler) == ("ddpm_ancestral",) * 2
    # Zhang et al.
    assert load("cifar10", "arch=ddpmpp,precond=edm").sample.optimal_sampler == "edm_euler"
    _, params, _ = shapes_of(c, SHAPES["cifar10"])
    assert count(params) == 35_746_307                  # Ho et al.'s 35.7M


def test_cifar10_ddpmpp_vp_is_gu_et_als_setting_with_data_size_scaling():
    c = load("cifar10", "k=1000,arch=ddpmpp,precond=vp")
    m = c.model
    assert (m.channels, tuple(m.channel_mult), m.num_blocks, tuple(m.attn_resolutions),
            m.dropout) == (128, (2, 2, 2), 2, (16,), 0.13)
    assert (c.diffusion.precond, c.loss.name, c.data.subset, c.batch_size, c.optim.lr) == (
        "vp", "denoising", "balanced", 512, 2e-4)
    # duration 2000 * K / 50 kimg, lr ramp-up K / 5 kimg, EMA half-life K / 100 kimg, per member at
    # train time (tests/test_schedules.py); EDM's summed loss.
    assert (
        c.steps == 0
        and c.optim.warmup_steps == 0
        and dict(c.ema) == {}
        and c.loss.reduction == "sum"
    )
    s = schedules.member_schedule(c, 1000, 512)
    assert (s.steps, s.lr_rampup_images, round(s.ema_decay, 5)) == (78_125, 200_000, 0.99929)
    _, params, _ = shapes_of(c, SHAPES["cifar10"])
    assert count(params) == 35_125_251                  # DDPM++ with 2 blocks per level
    # The explicit args win: every member trains `steps`.
    assert load("cifar10", "k=4000,arch=ddpmpp,steps=7,batch=64,lr=1e-4").steps == 7


def test_pham_recipe_for_28px_sets_and_celeba_preprocessing():
    f = load("fmnist")
    assert (f.data.source, tuple(f.model.ch_mult), f.steps, f.batch_size) == ("fmnist", (1, 2, 2),
                                                                              400_000, 128)
    assert load("mnist").data.source == "tfds:mnist"
    c = load("celeba")
    assert (c.data.source, c.data.image_size, c.data.center_crop, c.data.grayscale) == (
        "tfds:celeb_a",
        80,
        True,
        True,
    )
    # unlabelled: no balanced subsets
    assert load("celeba", "arch=ddpmpp").data.subset == "permutation"


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_unknown_arch_or_precond_names_the_valid_ones(name):
    with pytest.raises(
        configlib.ConfigError, match=r"unknown arch 'unet'; valid: \['ddpm_unet', 'ddpmpp'\]"
    ):
        load(name, "arch=unet")
    with pytest.raises(configlib.ConfigError,
                       match=r"unknown precond 'iddpm'; valid: \['ddpm', 'edm', 've', 'vp'\]"):
        load(name, "precond=iddpm")


def test_builder_errors_name_valid_choices():
    c = load("digits")
    c.model.name = "bfcnn"
    with pytest.raises(configlib.ConfigError, match=r"valid: \['mlp', 'ddpm_unet', 'ddpmpp'"):
        builders.build_model(c, (8, 8, 1))
    c = load("digits", "precond=edm")
    c.loss.name = "eps"
    with pytest.raises(configlib.ConfigError, match="needs diffusion.precond='ddpm'"):
        builders.build_loss(c, None)
    c = load("digits")
    c.loss.name = "l1"
    with pytest.raises(configlib.ConfigError, match=r"valid: \['dsm', 'eps', 'denoising'"):
        builders.build_loss(c, None)
    c = load("digits", "precond=edm")
    c.diffusion.precond_fields.sigma = 1.0
    with pytest.raises(configlib.ConfigError, match="valid fields"):
        builders.base_precond(c)


# ------------------------------------------------------------- every architecture x preconditioning
def tiny_digits(arch: str, precond_name: str):
    """The digits config with a one-level network of 8 channels (dropout kept on: its rng must be
    wired)."""
    c = load("digits", f"arch={arch},precond={precond_name}")
    if arch == "ddpm_unet":
        c.model.update(
            ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_groups=4, dropout=0.1
        )
    else:
        c.model.update(
            channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=(), dropout=0.1
        )
    return c


def random_params(model, shape, scale=0.05, seed=0):
    """Random weights everywhere (no init compile; nothing starts at zero, so the network shapes the
    loss)."""
    tree = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1,) + shape, jnp.float32),
                          jax.ShapeDtypeStruct((1,), jnp.float32))
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), jnp.float32), tree
    )


@pytest.fixture(scope="module")
def digits_batch():
    return jnp.asarray(images.load_images("digits").images[:6])


@pytest.mark.parametrize("arch,precond_name", COMBOS)
def test_every_architecture_and_preconditioning_trains_on_digits(arch, precond_name, digits_batch):
    c = tiny_digits(arch, precond_name)
    model = builders.build_model(c, (8, 8, 1))
    loss_fn = builders.build_loss(c, model)
    params = random_params(model, (8, 8, 1))

    @jax.jit
    def step(params, key):
        def objective(p):
            per_example = loss_fn(p, digits_batch, key)
            return jnp.mean(per_example), per_example
        (_, per_example), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return per_example, grads, jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)

    for i in range(2):
        per_example, grads, params = step(params, jax.random.key(i))
        assert per_example.shape == (6,) and bool(jnp.all(jnp.isfinite(per_example)))
        norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
        assert np.all(np.isfinite(norms)) and max(norms) > 0


@pytest.mark.parametrize("arch,precond_name", COMBOS)
def test_denoiser_view_of_every_combination(arch, precond_name):
    c = tiny_digits(arch, precond_name)
    model = builders.build_model(c, (8, 8, 1))
    params = random_params(model, (8, 8, 1))
    d = builders.denoiser(c, model, params)
    out = jax.eval_shape(
        d, jax.ShapeDtypeStruct((5, 8, 8, 1), jnp.float32), jax.ShapeDtypeStruct((5,), jnp.float32)
    )
    assert out.shape == (5, 8, 8, 1)
    p = builders.build_precond(c)
    # The DDPM UNet sees DDPM steps under every preconditioning; DDPM++ sees the preconditioning's
    # c_noise.
    step_like = arch == "ddpm_unet" and precond_name in ("edm", "ve")
    assert isinstance(p, precond.StepLabels) == step_like
    lo, hi = builders.sigma_range(c)
    base = builders.base_precond(c)
    assert (lo, hi) == (base.sigma_min, base.sigma_max)
    if precond_name == "edm":
        assert (lo, hi) == (0.002, 80.0)


def test_ddpm_denoiser_is_the_epsilon_parameterisation_on_the_grid(digits_batch):
    """builders.denoiser for the DDPM setting: D(x, sigma_t) = x - sigma_t eps(x / sqrt(1 +
    sigma_t^2), t)."""
    c = tiny_digits("ddpm_unet", "ddpm")
    model = builders.build_model(c, (8, 8, 1))
    params = random_params(model, (8, 8, 1))
    sigma = jnp.asarray(precond.DDPM().sigmas(), jnp.float32)[
        jnp.array([3, 100, 500, 900, 950, 999])
    ]
    x = digits_batch + sigma[:, None, None, None] * 0.5
    t = jnp.array([3, 100, 500, 900, 950, 999])
    s = sigma[:, None, None, None]
    expected = x - s * model.apply(params, x / jnp.sqrt(1 + s**2), t)
    np.testing.assert_allclose(
        builders.denoiser(c, model, params)(x, sigma), expected, rtol=1e-5, atol=1e-5
    )


# ------------------------------------------------------------------------------------- class labels
def test_class_labels_reach_the_network_through_the_denoiser():
    c = tiny_digits("ddpmpp", "edm")
    c.model.label_dim = 10
    model = builders.build_model(c, (8, 8, 1))
    params = random_params(model, (8, 8, 1), scale=0.2)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    sigma = jnp.array([0.5, 1.0, 2.0])
    run = jax.jit(lambda labels: builders.denoiser(c, model, params, labels=labels)(x, sigma))
    a = run(jnp.array([1, 1, 1]))
    np.testing.assert_allclose(
        run(jax.nn.one_hot(jnp.array([1, 1, 1]), 10)), a, rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(run(jnp.array([2, 2, 2])), a)
    # an int labels every example
    np.testing.assert_array_equal(experiment._batch_labels(1, 3), [1, 1, 1])
    # The loss takes the examples' labels (the trainer gathers them with the images).
    loss = builders.build_loss(c, model)
    x0 = jnp.zeros((3,) + x.shape[1:])
    a, b = (loss(params, x0, jax.random.key(0), jnp.array(v)) for v in ([1, 1, 1], [2, 2, 2]))
    assert a.shape == (3,) and not np.allclose(a, b)
    with pytest.raises(configlib.ConfigError, match="unconditional"):
        builders.denoiser(tiny_digits("ddpm_unet", "ddpm"), None, None, labels=1)


def test_gu_label_modes_and_balanced_subsets():
    true = np.array([3, 1, 4, 1, 5, 9])
    assert builders.subset_labels("none", 6, true, 10, 0) is None
    np.testing.assert_array_equal(builders.subset_labels("true", 6, true, 10, 0), true)
    rand = builders.subset_labels("random", 6, None, 10, 0)
    assert rand.shape == (6,) and rand.min() >= 0 and rand.max() < 10
    np.testing.assert_array_equal(rand, builders.subset_labels("random", 6, None, 10, 0))
    np.testing.assert_array_equal(builders.subset_labels("unique", 6, None, 6, 0), np.arange(6))
    with pytest.raises(configlib.ConfigError, match="label_dim must be >= K"):
        builders.subset_labels("unique", 6, None, 5, 0)
    with pytest.raises(configlib.ConfigError, match="label_dim > 0"):
        builders.subset_labels("random", 6, None, 0, 0)
    with pytest.raises(
        configlib.ConfigError, match=r"valid: \['none', 'true', 'random', 'unique'\]"
    ):
        builders.subset_labels("shuffled", 6, None, 10, 0)

    c = load("digits", "k=20+40")
    c.data.subset, c.data.labels, c.model.label_dim = "balanced", "true", 10
    pool = images.load_images("digits")
    specs = builders.model_specs(c)
    for spec in specs:
        assert np.bincount(spec.labels, minlength=10).tolist() == [spec.k // 10] * 10
        # The images are the pool's images of those labels.
        idx = [
            int(np.flatnonzero((pool.images == img).all(axis=(1, 2, 3)))[0])
            for img in spec.data[:5]
        ]
        np.testing.assert_array_equal(pool.labels[idx], spec.labels[:5])
    small, large = (set(map(bytes, s.data.reshape(s.k, -1).view(np.uint8))) for s in specs)
    assert small <= large                                     # nested in K
    c.data.subset = "stratified"
    with pytest.raises(configlib.ConfigError, match=r"valid: \['permutation', 'balanced'"):
        builders.model_specs(c)


def test_gu_schedule_formula():
    s = image_configs.gu_schedule(2000)
    assert s.steps == 156_250 and s.warmup_steps == pytest.approx(781.25)
    # Gu et al.'s half-life rounds to 0 below K = 100
    assert image_configs.gu_schedule(50).ema_decay == 0.0


def test_songunet_skip_switches_from_the_config():
    c = load("cifar10", "arch=ddpmpp,precond=vp")
    c.model.keep_skips_at = (32,)
    c.model.drop_disabled_skips = True
    model = builders.build_model(c, (32, 32, 3))
    assert model.kept_skips(32) == (True,) * 3 + (False,) * 6
    assert nets.count_params(model, (1, 32, 32, 3), (1,)) < 35_125_251


def test_class_conditional_training_feeds_each_examples_label(tmp_path, one_device):
    """Gu et al.'s conditioning study: a DDPM++ with true digit labels trains through the same
    trainer."""
    c = tiny_digits("ddpmpp", "edm")
    c.model.label_dim, c.data.labels = 10, "true"
    c.data.k, c.batch_size, c.steps, c.steps_per_call, c.log_every, c.ckpt_every = 16, 8, 2, 1, 1, 2
    [spec] = builders.model_specs(c)
    assert spec.labels.shape == (16,) and set(np.unique(spec.labels)) <= set(range(10))
    states = train.train(c, str(tmp_path), progress=False)
    assert int(states["16"].step) == 2
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(states["16"].params))


def test_duration_in_steps_epochs_or_images():
    assert load("cifar10", "k=1000,steps=10ep").steps == 79          # ceil(10 * 1000 / 128)
    assert load("cifar10", "k=500+1000,steps=200kimg").steps == 1563  # ceil(200,000 / 128)
    assert load("digits", "k=64,steps=3ep,batch=16").steps == 12
    assert load("digits", "k=64,steps=300").steps == 300
    with pytest.raises(configlib.ConfigError, match="kimg"):
        load("cifar10", "steps=ten")


def test_bf16_matmul_precision_is_a_checked_config_choice():
    c = load("cifar10")
    assert c.matmul_precision == "default"
    c.matmul_precision = "bfloat16"
    with devices.matmul_precision(c.matmul_precision):
        assert jax.config.jax_default_matmul_precision == "bfloat16"
    assert devices.MATMUL_PRECISIONS == config_schema.RULES["matmul_precision"][1]
    c.matmul_precision = "bf16"
    with pytest.raises(configlib.ConfigError, match="bfloat16"):
        config_schema.validate(c)


def test_optimal_denoiser_defaults_to_zhang_et_als_edm_euler(tmp_path, one_device):
    """With no --sampler, the empirical optimal denoiser of an EDM-family config samples with EDM's
    Euler, as Zhang et al. do (`sample.optimal_sampler`; the trained model keeps `sample.sampler`,
    EDM's Heun)."""
    from diffmem import generate
    from diffmem.workdir import Workdir
    c = load("digits", "k=16,arch=ddpmpp,precond=edm")
    wd = str(tmp_path / "wd")
    generate.sample_workdir(
        wd, np.arange(2), model="optimal", config=c, num_steps=2, progress=False
    )
    assert Workdir(wd).read_samples("16", "optimal")["settings"]["sampler"] == "edm_euler"


def test_kadkhodaie_config_bf_cnn_defaults_and_explicit_sampler_cap():
    """BF-CNN as upstream trains it (main.py: 21 layers, first layer followed by ReLU), and the KS
    sampler's iteration cap stated in the sample section (upstream has none), a setting of the
    registered sampler."""
    from diffmem import config_schema, sampling
    c = load("kadkhodaie", "arch=bf_cnn")
    assert (
        c.model.name == "bf_cnn"
        and c.model.num_layers == 21
        and c.model.first_layer_linear is False
    )
    params = jax.eval_shape(builders.build_model(c, (8, 8, 1)).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))
    assert count(params["params"]) == 702_784
    assert load("kadkhodaie", "arch=bf_cnn,layers=20").model.num_layers == 20
    s = load("kadkhodaie", "max_iters=5000").sample
    assert s.sampler == "ks" and s.max_iters == 5000 and load("kadkhodaie").sample.max_iters == 3000
    assert set(sampling.SAMPLERS["ks"].settings) <= set(s.keys())
    config_schema.validate(c)
