"""A Gaussian mixture with known parameters: the exact-score oracle for losses and samplers.

    python bin/train.py --config=configs/gmm.py:k=1000,dim=2 --workdir=runs/gmm

The training set is K draws from a mixture of `components` isotropic Gaussians (means on a circle of
radius 2, std `std`); the exact score of every noisy marginal is known (diffmem.data.toy.GaussianMixture),
so the DSM loss floor and sample moments can be checked against closed forms.
Arg keys: k, dim, components, std, steps, seed, lr, batch.
"""
import ml_collections

from diffmem import configlib


def get_config(arg=None):
    a = configlib.parse_arg(arg, k=1000, dim=2, components=4, std=0.2, steps=20_000, seed=0, lr=1e-3,
                            batch=500)
    c = ml_collections.ConfigDict()
    c.seed = a.seed
    c.data = dict(name="gmm", k=a.k, dim=a.dim, components=a.components, std=a.std, radius=2.0,
                  subset_seed=0, pool_size=100_000)
    c.sde = dict(name="ve", sigma_max=5.0, t_min=1e-5)
    c.model = dict(name="mlp", num_layers=4, hidden=128, embed=128, fourier_scale=16.0)
    c.loss = dict(name="dsm")
    c.optim = dict(lr=a.lr, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0)
    c.ema = dict(decay=0.999, warmup=True)
    c.batch_size = a.batch
    c.steps = a.steps
    c.steps_per_call = 500
    c.log_every = 1000
    c.ckpt_every = 5000
    c.keep_checkpoints = 2
    c.sample = dict(num=2000, sampler="em", num_steps=1000, eps=1e-5)
    return c
