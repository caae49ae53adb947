"""The associative-memory tutorial's 2-D circle model (Pham et al.'s toy study).

Train one model on K = 9 points of the unit circle (about 20 s on a 2-core CPU):

    python bin/train.py --config=configs/circle.py:k=9 --workdir=runs/c9
    python bin/sample.py --workdir=runs/c9 --num=1500 --sampler=em --seed=0

Train the tutorial's three models (K = 2, 9, 1000) in one compiled loop, one checkpoint each:

    python bin/train.py --config=configs/circle.py:k=2+9+1000 --workdir=runs/circle

The whole study (train or reuse, sample, cluster, energies from the ODE likelihood, figures,
report):

    python bin/toy.py --config=configs/circle.py:k=2+9+1000 --workdir=runs/circle

Expect K = 2 to memorize (samples on the two training points), K = 9 to show spurious clusters
between training points, K = 1000 to spread samples along the whole circle. Arg keys: k (int or
a+b+c sweep), steps, seed, lr, batch (cap on the batch size; batch = min(batch, K)).
"""
from diffmem import config_schema as schema
from diffmem import configlib

__all__ = ["get_config"]


def get_config(arg=None):
    a = configlib.parse_arg(arg, k=9, steps=50_000, seed=9, lr=1e-4, batch=500)
    return schema.assemble(
        seed=a.seed,  # model init and training noise (per step: fold_in(seed, step))
        data=dict(name="circle", k=a.k, subset_seed=9, pool_size=60_000),
        model=schema.mlp_section(),
        diffusion=schema.sde_section("ve", sigma_max=1.0, t_min=1e-5),
        loss=dict(name="dsm"),
        optim=schema.optim_section(a.lr, grad_clip=0.0),  # grad_clip 0: off, as the tutorial
        ema=dict(decay=0.9999, warmup=True),
        # per model: min(batch_size, K), reshuffled every epoch like a DataLoader
        batch_size=a.batch,
        steps=a.steps,
        steps_per_call=1000,  # optimizer steps per compiled call (lax.scan)
        log_every=1000,
        ckpt_every=5000,
        keep_checkpoints=2,
        # EM ends at t = eps. The tutorial's 1e-5 makes the last step dt / sigma(t)^2 = 100 times
        # too large for a stable Euler step: even the exact score then scatters K = 2 samples off
        # the training points (0% within 0.1), and a better-trained network samples worse. 1e-4
        # keeps every step stable (97% for K = 2); --config.sample.eps=1e-5 gives the tutorial's
        # literal setting.
        sample=dict(num=1500, sampler="em", num_steps=1000, eps=1e-4, batch=4096),
        # bin/toy.py: the memorized / spurious / generalized study (tutorial thresholds, one per K
        # in order).
        study=dict(thresholds=(3.0, 2.0, 0.45), t_eval=0.15, grid=75, bounds=1.5, delta_m=0.1,
                   delta_s=0.1, min_cluster_frac=0.01, lik_tol=3e-6, empirical_eps=1e-3,
                   attractor_starts=400),
    )
