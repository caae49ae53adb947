"""Mixture of low-rank Gaussians (Wang et al. 2024): K classes of rank-d Gaussians on orthogonal
subspaces of R^n, n = 3 res^2, trained as res x res x 3 "images" with EDM's DDPM++ and EDM
preconditioning and loss.

    # n = 48, 2 classes, d = 6
    python bin/train.py --config=configs/molrg.py --workdir=runs/molrg
    # the upstream README's d = 7
    python bin/train.py --config=configs/molrg.py:d=7 --workdir=runs/molrg-d7
    # generalization vs N
    python bin/train.py --config=configs/molrg.py:k=4+16+64+256+700 --workdir=runs/molrg-n
    # rank/n vs SNR (+ the analytic D)
    python bin/jacobian_rank.py --workdir=runs/molrg --states=trajectory

Defaults follow `huijieZH/Diffusion-Model-Generalizability:edm/trainMoLRG.py` with the README's
sizes (res 4, 2 classes, 350 samples per class, 128 channels) and d = 6, the value behind the
published Jacobian-rank figure (rank/n = 0.125 = 6/48 at high SNR). DDPM++: channel multipliers
2,2,2 (4 -> 2 -> 1 px, so no attention), 4 blocks per level, dropout 0.13; Adam 1e-3, batch 512, 6
Mimg (about 11.7k steps), EMA half-life 0.5 Mimg. **Augmentation is off**: upstream's default
`--augment 0.12` (flips, rotations, scaling of a 4x4x3 "image") moves data off the subspaces;
diffmem has no augmentation pipeline, so it cannot be on. Data are not clipped to [-1, 1]
(coordinates ~ N(0, d/n)). The K-subset takes K / classes per class. Arg keys: k (training-set size,
int or a+b sweep), d, classes, res, channels, blocks, steps ("6000kimg" = the recipe; steps or
"100ep" also work), seed, basis_seed, lr, batch.
"""
import math

from diffmem import configlib
from diffmem import image_configs as ic

__all__ = ["get_config"]

DEFAULTS = dict(k=700, d=6, classes=2, res=4, channels=128, blocks=4, steps="6000kimg", seed=0,
                basis_seed=0, lr=1e-3, batch=512)


def get_config(arg=None):
    a = configlib.parse_arg(arg, **DEFAULTS)
    n = 3 * a.res**2
    if a.classes * a.d > n:
        raise configlib.ConfigError(
            f"molrg: classes * d = {a.classes * a.d} exceeds n = 3 res^2 = {n}."
        )
    k_max = max(configlib.sweep(a.k))
    # EDM's ema_halflife_kimg = 500
    halflife_steps = 500_000 / a.batch
    model = ic.model_section("ddpmpp", channels=a.channels, channel_mult=(2, 2, 2),
                             num_blocks=a.blocks, attn_resolutions=(16,), dropout=0.13)
    data = dict(name="molrg", k=a.k, resolution=a.res, classes=a.classes, dim=a.d,
                basis_seed=a.basis_seed, sample_seed=a.basis_seed + 1,
                per_class=math.ceil(k_max / a.classes), subset="balanced", subset_seed=0,
                labels="none")
    return ic.assemble(seed=a.seed, data=data, model=model, diffusion=ic.diffusion_section("edm"),
                       loss=ic.loss_section("edm"), optim=ic.optim_section(a.lr),
                       ema=dict(decay=0.5 ** (1 / halflife_steps), warmup=True), batch_size=a.batch,
                       steps=ic.steps_of(a.steps, a.k, a.batch, 11_719), steps_per_call=100,
                       log_every=100, ckpt_every=1000,
                       sample=ic.sample_section("edm", num=1024, batch=512))
