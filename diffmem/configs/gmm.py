"""A Gaussian mixture with known parameters: the exact-score oracle for losses and samplers.

    python bin/train.py --config=configs/gmm.py:k=1000,dim=2 --workdir=runs/gmm

The training set is K draws from a mixture of `components` isotropic Gaussians (means on a circle of
radius 2, std `std`); the exact score of every noisy marginal is known
(diffmem.data.toy.GaussianMixture), so the DSM loss floor and sample moments can be checked against
closed forms. Arg keys: k, dim, components, std, steps, seed, lr, batch.
"""
from diffmem import config_schema as schema
from diffmem import configlib

__all__ = ["get_config"]


def get_config(arg=None):
    a = configlib.parse_arg(
        arg, k=1000, dim=2, components=4, std=0.2, steps=20_000, seed=0, lr=1e-3, batch=500
    )
    return schema.assemble(
        seed=a.seed,
        data=dict(name="gmm", k=a.k, dim=a.dim, components=a.components, std=a.std, radius=2.0,
                  subset_seed=0, pool_size=100_000),
        model=schema.mlp_section(),
        diffusion=schema.sde_section("ve", sigma_max=5.0, t_min=1e-5),
        loss=dict(name="dsm"),
        optim=schema.optim_section(a.lr, grad_clip=1.0),
        ema=dict(decay=0.999, warmup=True),
        batch_size=a.batch,
        steps=a.steps,
        steps_per_call=500,
        log_every=1000,
        ckpt_every=5000,
        keep_checkpoints=2,
        sample=dict(num=2000, sampler="em", num_steps=1000, eps=1e-5, batch=4096),
    )
