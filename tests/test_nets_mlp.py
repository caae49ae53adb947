"""The toy score network against a literal NumPy transcription of the tutorial's PyTorch
ScoreNet."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import nets, sampling
from diffmem import sde as sde_lib

SDE = sde_lib.VESDE()


def tutorial_scorenet(p: dict, x: np.ndarray, t: np.ndarray, num_layers: int) -> np.ndarray:
    """The tutorial's forward pass, layer by layer: concat(x, time embedding) -> input_proj ->
    hidden Linear/SiLU stack with LayerNorm before the last SiLU -> output, divided by std(t)."""
    silu = lambda v: v / (1.0 + np.exp(-v))
    dense = lambda q, v: v @ np.asarray(q["kernel"]) + np.asarray(q["bias"])
    phase = 2 * np.pi * t[:, None] * np.asarray(p["fourier"]["freqs"])[None, :]
    emb = np.concatenate([np.cos(phase), np.sin(phase)], axis=1)
    emb = silu(dense(p["time_dense_1"], silu(dense(p["time_dense_0"], emb))))
    h = np.concatenate([x, emb], axis=1) @ np.asarray(p["input_proj_kernel"]) + np.asarray(
        p["input_proj_bias"]
    )
    for i in range(num_layers - 1):
        h = dense(p[f"hidden_{i}"], h)
        if i == num_layers - 2:
            mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
            h = (h - mu) / np.sqrt(var + 1e-6) * np.asarray(p["norm"]["scale"]) + np.asarray(
                p["norm"]["bias"]
            )
        h = silu(h)
    return dense(p["output"], h) / np.sqrt(t)[:, None]


@pytest.mark.parametrize("num_layers", [1, 2, 4])
@pytest.mark.parametrize("batch", [7, 300])
def test_score_mlp_is_the_tutorial_network(num_layers, batch, x64):
    model = nets.ScoreMLP(SDE.marginal_std, num_layers=num_layers)
    x = jax.random.normal(jax.random.key(1), (batch, 2), jnp.float64)
    t = jax.random.uniform(jax.random.key(2), (batch,), jnp.float64, 1e-3, 1.0)
    params = model.init(jax.random.key(0), x, t)
    # Nudge the LayerNorm and biases off their initial values so every term is checked.
    params = jax.tree.map(
        lambda v: v + 0.1 * jax.random.normal(jax.random.key(3), v.shape, v.dtype), params
    )
    want = tutorial_scorenet(params["params"], np.asarray(x), np.asarray(t), num_layers)
    np.testing.assert_allclose(np.asarray(model.apply(params, x, t)), want, rtol=1e-10, atol=1e-10)
    # A shared time, t of shape (1,), is the same as that time repeated for every example.
    shared = model.apply(params, x, t[:1])
    np.testing.assert_allclose(np.asarray(shared),
                               np.asarray(model.apply(params, x, jnp.full((batch,), t[0]))),
                               rtol=1e-10, atol=1e-10)


def test_score_mlp_float32_is_the_tutorial_network():
    """float32 (jnp.sin/cos, plain Dense layers) against the float64 transcription."""
    model = nets.ScoreMLP(SDE.marginal_std)
    x = jax.random.normal(jax.random.key(1), (300, 2))
    t = jax.random.uniform(jax.random.key(2), (300,), jnp.float32, 1e-3, 1.0)
    params = model.init(jax.random.key(0), x, t)
    p64 = jax.tree.map(lambda v: np.asarray(v, np.float64), params["params"])
    want = tutorial_scorenet(p64, np.asarray(x, np.float64), np.asarray(t, np.float64), 4)
    got = np.asarray(jax.jit(model.apply)(params, x, t))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_score_mlp_rows_do_not_depend_on_the_batch():
    """Plain math, no batch-size branch: the same parameters at any init batch, and each row's score
    does not depend on the rest of the batch (to float rounding here; bit for bit in fixed sampler
    blocks, see tests/test_batch_invariance.py)."""
    model = nets.ScoreMLP(SDE.marginal_std)
    small = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.ones((1,)))
    large = model.init(jax.random.key(0), jnp.zeros((500, 2)), jnp.ones((500,)))
    assert jax.tree.structure(small) == jax.tree.structure(large)
    assert all(
        bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(small), jax.tree.leaves(large))
    )
    x = jax.random.normal(jax.random.key(1), (500, 2))
    t = jax.random.uniform(jax.random.key(2), (500,), jnp.float32, 1e-3, 1.0)
    apply = jax.jit(model.apply)
    whole = apply(small, x, t)
    np.testing.assert_allclose(
        apply(small, x[:3], t[:3]), whole[:3], rtol=1e-5, atol=1e-5 * float(jnp.abs(whole).max())
    )


def test_euler_maruyama_shared_time_gives_the_same_samples(x64):
    model = nets.ScoreMLP(SDE.marginal_std)
    params = model.init(
        jax.random.key(0), jnp.zeros((1, 2), jnp.float64), jnp.ones((1,), jnp.float64)
    )
    score = lambda x, t: model.apply(params, x, t)
    seeds = jnp.arange(200)
    x0 = sampling.tutorial_init(seeds, 2, SDE).astype(jnp.float64)
    run = lambda shared: sampling.euler_maruyama(
        score, SDE, x0, seeds, 30, eps=1e-3, shared_time=shared
    )
    np.testing.assert_allclose(np.asarray(run(True)), np.asarray(run(False)), rtol=1e-9, atol=1e-9)
