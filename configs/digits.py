"""DDPM on the 8x8 handwritten digits shipped with scikit-learn: the CPU-sized image study (minutes).

    python bin/train.py --config=configs/digits.py:k=64 --workdir=runs/digits
    python bin/sample.py --workdir=runs/digits --seeds=0-255 --sampler=ddpm

1,797 real 8x8 images scaled to [-1, 1]; the K-subset is the first K of a seeded permutation.
A small DDPM UNet (ch 32, multipliers 1,2, attention at 4 px) learns them in a few thousand steps;
small K memorizes (samples copy training digits), larger K produces new digits.
Arg keys: k (int or a+b sweep), steps, seed, lr, batch, arch (ddpm | ddpmpp), precond (ddpm | vp | edm).
"""
import ml_collections

from diffmem import configlib


def get_config(arg=None):
    a = configlib.parse_arg(arg, k=64, steps=4000, seed=0, lr=1e-3, batch=64, arch="ddpm", precond="ddpm")
    if a.arch != "ddpm" or a.precond != "ddpm":
        raise configlib.ConfigError("digits: only arch=ddpm, precond=ddpm are implemented so far.")
    c = ml_collections.ConfigDict()
    c.seed = a.seed
    c.data = dict(name="images", source="digits", k=a.k, subset="permutation", subset_seed=0, split="train",
                  image_size=0, center_crop=False, grayscale=False, data_dir="")
    c.model = dict(name=a.arch, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
                   num_groups=8)
    c.diffusion = dict(precond=a.precond, timesteps=1000, beta_start=1e-4, beta_end=0.02)
    c.loss = dict(name="ddpm" if a.precond == "ddpm" else a.precond)
    c.optim = dict(lr=a.lr, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0, warmup_steps=200)
    c.ema = dict(decay=0.999, warmup=True)
    c.batch_size = a.batch
    c.steps = a.steps
    c.steps_per_call = 100
    c.log_every = 100
    c.ckpt_every = 1000
    c.keep_checkpoints = 2
    c.sample = dict(num=256, sampler="ddpm", num_steps=1000, batch=256)
    return c
