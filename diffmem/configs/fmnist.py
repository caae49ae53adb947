"""Pham et al.'s Fashion-MNIST study: a DDPM UNet on K-image subsets of the 60,000 28x28 training
images.

    python bin/train.py --config=configs/fmnist.py:k=1000 --workdir=runs/fmnist
    # a K sweep
    python bin/train.py --config=configs/fmnist.py:k=2+100+1000+10000 --workdir=runs/fmnist
    python bin/sample.py --workdir=runs/fmnist --seeds=0-9999

Data: the real Fashion-MNIST IDX files of Debian's `dataset-fashion-mnist` package (offline; another
location: --config.data.source=fmnist:/dir/with/idx/files). Pham et al.'s setting (their
configs/fmnist.yaml): DDPM UNet ch 128, multipliers 1,2,2, 2 blocks, attention list (16,) (no
28/14/7 px level has it; the middle block always does), dropout 0.1, NIN layers initialised at scale
0.1, epsilon loss on 1000 linear betas, Adam 2e-4 clipped at norm 1, batch 128, EMA 0.9999, 400k
iterations: a GPU job (hours). Sampler: DDPM ancestral, 1000 steps, as Pham et al.; LPIPS enlarges
the 28 px images to 32 px by nearest-exact, as their code. Small K memorizes, K in the thousands
produces spurious then generalized samples (memorized / spurious / generalized by LPIPS distances).
Arg keys: k, steps, seed, lr, batch (0 = the recipe's), arch (ddpm_unet | ddpmpp: Gu et al.'s DDPM++
recipe), precond (ddpm | vp | ve | edm); see diffmem.image_configs. res: resize the images to res x
res (0 = 28; the recipe's networks need res divisible by 4). cpu=1: the reduced-resolution CPU
preset (default res 14): the digits-sized network (32 channels, multipliers 1,2, one block,
attention at res/2), Adam 1e-3 with a 200-step warm-up, batch 64, EMA 0.999, 4000 steps, 256
samples; its K-sweep study runs on a laptop CPU:

    python bin/study.py --config=configs/fmnist.py:cpu=1,k=10+100+1000+5000
        --workdir=runs/fmnist-cpu
    # accelerators
    python bin/study.py --config=configs/fmnist.py:k=10+100+1000+10000 --workdir=runs/fmnist
"""
import dataclasses

from diffmem import configlib
from diffmem import image_configs as ic

__all__ = ["get_config", "cpu_config"]

FMNIST = ic.ImageSet(source="fmnist", ddpm_mult=(1, 2, 2), pham_steps=400_000)


def get_config(arg=None):
    a = ic.parse_args("fmnist", arg, **ic.COMMON_ARGS, res=0, cpu=0)
    if a.cpu:
        return cpu_config(a)
    if a.res and a.res % 4:
        raise configlib.ConfigError(
            f"fmnist: res={a.res}: the recipe's networks halve the image twice, so res must "
            "be divisible by 4 (e.g. 28, 16, 12); or use the CPU preset cpu=1 (res 14)."
        )
    return ic.recipe_config(a, dataclasses.replace(FMNIST, image_size=a.res) if a.res else FMNIST)


def cpu_config(a):
    """The reduced-resolution CPU preset (module docstring): digits-sized network at res x res
    (default 14)."""
    res = a.res or 14
    if res % 2:
        raise configlib.ConfigError(
            f"fmnist: cpu=1 needs an even res (the network halves the image once); got {res}."
        )
    lr, batch = a.lr or 1e-3, a.batch or 64
    model = ic.model_section(a.arch, channels=32, channel_mult=(1, 2), num_blocks=1,
                             attn_resolutions=(res // 2,), dropout=0.1, num_groups=8)
    return ic.assemble(seed=a.seed, data=ic.data_section("fmnist", a.k, image_size=res),
                       model=model, diffusion=ic.diffusion_section(a.precond),
                       loss=ic.loss_section(a.precond),
                       optim=ic.optim_section(lr, grad_clip=1.0, warmup_steps=200),
                       ema=dict(decay=0.999, warmup=True), batch_size=batch,
                       steps=ic.steps_of(a.steps, a.k, batch, 4000), steps_per_call=100,
                       log_every=100, ckpt_every=1000,
                       sample=ic.sample_section(a.precond, num=256, batch=256))
